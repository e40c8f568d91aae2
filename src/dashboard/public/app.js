// Tessera dashboard front end: plain JS, no build step. It holds the latest status and peers
// and the per-round points (by round, capped like the server's ring buffer), fed by one
// EventSource on /api/events ('snapshot' on connect, then 'update's), and draws two uPlot
// charts. Server data only ever reaches the page as textContent.
'use strict';

(function main() {
  const MAX_POINTS = 2000;
  const $ = (id) => document.getElementById(id);
  const points = new Map(); // round → point
  let status = null;
  let peers = [];
  let offset = 0; // server clock − browser clock, ms
  let lastMessage = 0;
  let charts = null;

  // ─── formatting ───
  const fmt = {
    num: (x, d = 0) => (x === null || x === undefined || !Number.isFinite(x) ? '–' : x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d })),
    bytes: (n) => {
      if (n === null || n === undefined || !Number.isFinite(n)) return '–';
      const u = ['B', 'KB', 'MB', 'GB', 'TB'];
      let i = 0;
      while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
      return `${n.toFixed(i === 0 ? 0 : 1)} ${u[i]}`;
    },
    pct: (x) => (x === null || x === undefined || !Number.isFinite(x) ? '–' : `${(100 * x).toFixed(1)}%`),
    short: (s, n = 12) => (s ? (s.length > n ? `${s.slice(0, n)}…` : s) : '–'),
    peer: (id) => (id && id.length > 12 ? `…${id.slice(-10)}` : id || '–'),
    ago: (t) => {
      if (t === null || t === undefined) return 'never';
      const s = Math.max(0, (Date.now() + offset - t) / 1000);
      if (s < 2) return 'now';
      if (s < 90) return `${Math.round(s)} s ago`;
      if (s < 5400) return `${Math.round(s / 60)} min ago`;
      return `${Math.round(s / 3600)} h ago`;
    },
  };

  function el(tag, text, attrs) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (attrs) for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  }

  function kv(dl, rows) {
    dl.replaceChildren();
    for (const [k, v, title] of rows) {
      dl.append(el('dt', k));
      const dd = el('dd', v);
      if (title) dd.title = title;
      dl.append(dd);
    }
  }

  // ─── charts ───
  function chartSize(div) {
    const w = Math.max(200, Math.floor(div.clientWidth));
    return { width: w, height: w < 500 ? 200 : 240 };
  }

  function makeCharts() {
    const lossDiv = $('loss-chart');
    const bytesDiv = $('bytes-chart');
    const axis = { stroke: getComputedStyle(document.body).color, grid: { stroke: 'rgba(128,128,128,.15)' }, ticks: { stroke: 'rgba(128,128,128,.3)' } };
    // Rounds are integers: no 0.5 ticks.
    const x = { label: 'round', ...axis, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000], values: (u, vals) => vals.map((v) => String(v)) };
    const loss = new uPlot({
      ...chartSize(lossDiv),
      scales: { x: { time: false } },
      axes: [x, { ...axis, size: 50 }],
      series: [
        { label: 'round' },
        { label: 'train', stroke: '#3b6fd8', width: 2, spanGaps: true, points: { size: 4 } },
        { label: 'validation', stroke: '#e0a526', width: 2, spanGaps: true, points: { size: 4 } },
      ],
    }, [[], [], []], lossDiv);
    const bytes = new uPlot({
      ...chartSize(bytesDiv),
      scales: { x: { time: false } },
      axes: [x, { ...axis, size: 64, values: (u, vals) => vals.map(fmt.bytes) }],
      series: [
        { label: 'round' },
        { label: 'sent', stroke: '#2f9e6e', width: 2, value: (u, v) => fmt.bytes(v), points: { size: 4 } },
        { label: 'received', stroke: '#c8503c', width: 2, value: (u, v) => fmt.bytes(v), points: { size: 4 } },
      ],
    }, [[], [], []], bytesDiv);
    const ro = new ResizeObserver(() => {
      loss.setSize(chartSize(lossDiv));
      bytes.setSize(chartSize(bytesDiv));
    });
    ro.observe(lossDiv);
    ro.observe(bytesDiv);
    return { loss, bytes };
  }

  function drawCharts() {
    if (!charts) return;
    const ps = [...points.values()].sort((a, b) => a.round - b.round);
    const xs = ps.map((p) => p.round);
    charts.loss.setData([xs, ps.map((p) => p.trainLoss), ps.map((p) => p.valLoss)]);
    charts.bytes.setData([xs, ps.map((p) => p.bytesSent), ps.map((p) => p.bytesReceived)]);
    const withLoss = ps.filter((p) => p.valLoss !== null || p.trainLoss !== null).length;
    $('loss-chart').dataset.rounds = String(withLoss);
    $('bytes-chart').dataset.rounds = String(ps.length);
  }

  // ─── panels ───
  function drawStatus() {
    if (!status) return;
    const s = status;
    const r = s.run;
    $('round').textContent = s.round >= 0 ? String(s.round) : '–';
    $('phase').textContent = s.phase;
    $('peer-count').textContent = `${s.connected + 1} connected · roster ${s.roster}`;
    $('peer-id').textContent = s.peerId || '–';
    if (r) {
      $('run-name').textContent = `${r.name || 'run'} · ${r.runId.slice(0, 12)}`;
      kv($('run'), [
        ['run id', fmt.short(r.runId, 16), r.runId],
        ['name', r.name || '–'],
        ['model', `${fmt.num(r.params)} params · ${r.model.layers} layers · d ${r.model.dim} · ${r.model.heads} heads`],
        ['context · vocab', `${r.model.ctx} · ${r.model.vocabSize}`],
        ['data', `${r.dataset.name} · ${r.dataset.numShards} shards`, r.dataset.ref],
        ['inner steps H', `${r.hyper.innerSteps} × batch ${r.hyper.batch}`],
        ['codec · overlap', `${r.hyper.codec} · ${r.hyper.overlap}`],
        ['outer step', `lr ${r.hyper.outerLr} · momentum ${r.hyper.outerMomentum}`],
        ['round timing', `train ${r.timing.trainMs} ms · submit ${r.timing.submitMs} ms · commit ${r.timing.commitMs} ms`],
        ['quorum', `${r.timing.quorum} · min peers ${r.timing.minPeers} · max missed ${r.timing.maxMissedRounds}`],
      ]);
    }
    const o = s.own;
    kv($('own'), [
      ['rounds contributed', fmt.num(o.roundsContributed)],
      ['tokens contributed', fmt.num(o.tokens)],
      ['share of applied tokens', fmt.pct(o.share)],
      ['tokens/s (last)', fmt.num(o.tokensPerSec)],
      ['compute (last round)', fmt.pct(o.computeFraction)],
      ['sent · received', `${fmt.bytes(o.bytesSent)} · ${fmt.bytes(o.bytesReceived)}`],
      ['last contribution', o.lastRound === null ? '–' : `round ${o.lastRound}`],
    ]);
    kv($('weights'), [
      ['round', s.round >= 0 ? String(s.round) : '–'],
      ['weights hash', fmt.short(s.weightsHash, 16), s.weightsHash || ''],
      ['checkpoint CID', s.checkpointCid ? fmt.short(s.checkpointCid, 20) : 'none published yet', s.checkpointCid || ''],
      ['rounds seen', fmt.num(s.totals.rounds)],
      ['tokens applied', fmt.num(s.totals.tokens)],
    ]);
    $('weights').querySelectorAll('dd')[1].id = 'weights-hash';
    const tokenInput = $('gen-token');
    tokenInput.hidden = s.generate !== 'token';
    const go = $('gen-go');
    if (s.generate === 'off') { go.disabled = true; go.title = 'read-only: bound beyond loopback without a token'; }
  }

  function drawPeers() {
    const tbody = $('peers').querySelector('tbody');
    const rows = peers.map((p) => {
      const tr = el('tr', null, { 'data-peer': p.id, 'data-status': p.status });
      const id = el('td');
      id.append(el('code', fmt.peer(p.id), { title: p.id }));
      if (p.self) id.append(el('span', 'you', { class: 'badge' }));
      tr.append(id, el('td', p.role, { class: 'opt' }));
      const st = el('td');
      st.append(el('span', p.status, { class: `pill pill-${p.status}` }));
      tr.append(st,
        el('td', fmt.num(p.roundsContributed), { class: 'num' }),
        el('td', fmt.num(p.tokensPerSec), { class: 'num' }),
        el('td', p.connected ? 'now' : fmt.ago(p.lastSeenAt)),
        el('td', p.score === null ? '–' : fmt.num(p.score, 3), { class: 'num opt' }));
      return tr;
    });
    tbody.replaceChildren(...rows);
  }

  function setLive(kind, text) {
    const live = $('live');
    live.className = `pill pill-${kind}`;
    live.textContent = text;
  }

  function apply(msg, reset) {
    lastMessage = Date.now();
    offset = msg.status.now - Date.now();
    status = msg.status;
    peers = msg.peers;
    if (reset) points.clear();
    for (const p of msg.points) points.set(p.round, p);
    while (points.size > MAX_POINTS) points.delete(Math.min(...points.keys()));
    drawStatus();
    drawPeers();
    drawCharts();
    $('updated').textContent = new Date(status.updatedAt).toLocaleTimeString();
    setLive('live', 'live');
  }

  function connect() {
    const es = new EventSource('/api/events');
    es.addEventListener('snapshot', (e) => apply(JSON.parse(e.data), true));
    es.addEventListener('update', (e) => apply(JSON.parse(e.data), false));
    es.addEventListener('ping', () => { lastMessage = Date.now(); setLive('live', 'live'); });
    es.addEventListener('error', () => setLive(es.readyState === EventSource.CLOSED ? 'down' : 'wait', es.readyState === EventSource.CLOSED ? 'disconnected' : 'reconnecting'));
  }

  // ─── generate ───
  async function generate(ev) {
    ev.preventDefault();
    const out = $('gen-out');
    const go = $('gen-go');
    const prompt = $('gen-prompt').value;
    go.disabled = true;
    out.classList.remove('error');
    out.textContent = '…';
    $('gen-meta').textContent = '';
    try {
      const headers = { 'Content-Type': 'application/json' };
      const token = $('gen-token').value;
      if (status && status.generate === 'token' && token) headers.Authorization = `Bearer ${token}`;
      const t0 = performance.now();
      const res = await fetch('/api/generate', { method: 'POST', headers, body: JSON.stringify({ prompt, maxTokens: 40 }) });
      const body = await res.json();
      if (!res.ok) throw new Error(body && body.error ? body.error.message : `HTTP ${res.status}`);
      out.replaceChildren(el('b', prompt), document.createTextNode(body.text));
      out.dataset.tokens = String(body.tokens);
      $('gen-meta').textContent = `${body.tokens} tokens in ${body.ms} ms on the node (${Math.round(performance.now() - t0)} ms round trip) · round ${body.round} · weights ${fmt.short(body.weightsHash, 12)}`;
    } catch (e) {
      out.classList.add('error');
      out.textContent = e instanceof Error ? e.message : String(e);
    } finally {
      go.disabled = !!(status && status.generate === 'off');
    }
  }

  charts = makeCharts();
  $('gen').addEventListener('submit', generate);
  connect();
  // Keep relative times fresh, and flag a stream that has gone quiet (heartbeats come every 15 s).
  setInterval(() => {
    if (lastMessage && Date.now() - lastMessage > 40_000) setLive('wait', 'quiet');
    if (peers.length) drawPeers();
  }, 1000);
})();
