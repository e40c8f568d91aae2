// Tessera dashboard front end: plain JS, no build step. It holds the latest status and peers
// and the per-round points (by round, capped like the server's ring buffer), fed by one
// EventSource on /api/events ('snapshot' on connect, then 'update's), and draws two uPlot
// charts and the ownership (ledger) panel. Server data only ever reaches the page as textContent.
// Ledger amounts are decimal strings of 18-decimal base units and may exceed 2^53: they are
// formatted with BigInt, never through Number.
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
    addr: (a) => (a && a.length > 12 ? `${a.slice(0, 6)}…${a.slice(-4)}` : a || '–'),
    // An amount of 18-decimal base units, cut (never rounded up) to `places` decimals, grouped by
    // thousands; `trim` drops trailing zeros. A non-zero amount below the last place shows as "<0.0001".
    units: (s, places = 4, trim = false) => {
      if (typeof s !== 'string' || !/^\d{1,78}$/.test(s)) return '–';
      const v = BigInt(s);
      const step = 10n ** BigInt(places);
      const t = v / 10n ** BigInt(18 - places);
      if (t === 0n && v > 0n) return `<${(1 / 10 ** places).toFixed(places)}`;
      let frac = (t % step).toString().padStart(places, '0');
      if (trim) frac = frac.replace(/0+$/, '');
      return (t / step).toLocaleString('en-US') + (frac ? `.${frac}` : '');
    },
    eth: (s) => fmt.units(s, 6, true),
    // Unix seconds (the chain's block time) → local date and time.
    when: (sec) => {
      const d = new Date(sec * 1000);
      return Number.isNaN(d.getTime()) ? '–' : d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
    },
    iso: (sec) => { const d = new Date(sec * 1000); return Number.isNaN(d.getTime()) ? '' : d.toISOString(); },
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
    if (r && r.kind === 'pipeline') {
      $('run-name').textContent = `${r.name || 'pipeline'} · ${r.runId.slice(0, 12)}`;
      kv($('run'), [
        ['run id', fmt.short(r.runId, 16), r.runId],
        ['mode', `pipeline · ${r.stages} stages`],
        ['model', `${fmt.num(r.params)} params · ${r.model.layers} layers · d ${r.model.dim} · ${r.model.heads} heads`],
        ['context · vocab', `${r.model.ctx} · ${r.model.vocabSize}`],
        ['activations', r.codec],
        ['batch · micro-batches', `${r.batch} · ${r.micro}`],
        ['learning rate', String(r.lr)],
        ['checkpoint shares', r.checkpointEvery > 0 ? `every ${r.checkpointEvery} steps` : 'off'],
      ]);
    } else if (r) {
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

  // ─── stages (pipeline runs) ───
  function drawStages() {
    const panel = $('stages-panel');
    const rows = status && status.stages;
    panel.hidden = !rows;
    if (!rows) return;
    const tbody = $('stages').querySelector('tbody');
    tbody.replaceChildren(...rows.map((st) => {
      const tr = el('tr', null, { 'data-stage': String(st.index), 'data-holders': String(st.holders.length) });
      const who = el('td');
      if (!st.holders.length) who.append(el('span', 'no holder', { class: 'pill pill-gone' }));
      for (const h of st.holders) {
        const span = el('span', null, { class: 'holder', 'data-peer': h.peer });
        span.append(el('code', fmt.peer(h.peer), { title: h.peer }));
        const state = !h.ready ? ['wait', 'restoring'] : h.serving ? ['active', 'serving'] : ['stale', 'idle'];
        span.append(' ', el('span', state[1], { class: `pill pill-${state[0]}` }));
        if (h.throughput !== null) span.append(el('span', ` ${fmt.num(h.throughput)} tok/s`, { class: 'muted small' }));
        if (h.self) span.append(el('span', 'you', { class: 'badge' }));
        who.append(span);
      }
      tr.append(el('td', String(st.index), { class: 'num' }), el('td', `${st.layers[1] - st.layers[0] === 1 ? st.layers[0] : `${st.layers[0]}–${st.layers[1] - 1}`}${st.index === 0 ? ' + embeddings' : ''}${st.index === rows.length - 1 ? ' + head' : ''}`),
        el('td', fmt.num(st.params), { class: 'num' }), who, el('td', fmt.num(st.throughput), { class: 'num' }));
      return tr;
    }));
  }

  // ─── ownership (ledger) ───
  function noneRow(tbody, cols, text) {
    tbody.replaceChildren(el('tr', null, { class: 'none' }));
    tbody.firstChild.append(el('td', text, { colspan: String(cols), class: 'muted' }));
  }

  function drawLedger() {
    if (!status) return;
    const l = status.ledger;
    const panel = $('ledger');
    const none = $('ledger-none');
    const body = $('ledger-body');
    if (!l) {
      panel.dataset.linked = status.peerId ? 'no' : '';
      none.replaceChildren();
      if (status.peerId) {
        none.append('This node is not linked to a chain. Start it with ', el('code', 'tessera node --rpc <url> --contract <address>'),
          ' to show the run\'s shares, revenue and proposals here.');
      } else none.append('Waiting for the node…');
      none.hidden = false;
      body.hidden = true;
      return;
    }
    panel.dataset.linked = 'yes';
    none.hidden = true;
    body.hidden = false;
    $('ledger-contract').textContent = l.contract;
    $('ledger-chain').textContent = String(l.chainId);
    const badge = $('ledger-badge');
    badge.className = `pill pill-${l.online ? 'live' : 'down'}`;
    badge.textContent = l.online ? 'online' : `chain unreachable — commitments queued: ${l.queue.pending}`;
    $('ledger-checked').textContent = `checked ${fmt.ago(l.checkedAt)}`;

    const tbody = $('shares').querySelector('tbody');
    if (!l.holders.length) noneRow(tbody, 5, 'no shares minted yet');
    else {
      tbody.replaceChildren(...l.holders.map((h) => {
        const tr = el('tr', null, { 'data-address': h.address });
        if (h.me) tr.className = 'me';
        const who = el('td');
        who.append(el('code', fmt.addr(h.address), { title: h.address }));
        if (h.me) who.append(el('span', 'me', { class: 'badge' }));
        const peer = el('td', null, { class: 'opt' });
        if (h.peer) peer.append(el('code', fmt.peer(h.peer), { title: h.peer }));
        else peer.textContent = '–';
        tr.append(who, peer,
          el('td', fmt.units(h.balance), { class: 'num', title: `${h.balance} base units` }),
          el('td', h.percent === null ? '–' : `${h.percent}%`, { class: 'num' }),
          el('td', fmt.eth(h.claimable), { class: 'num', title: `${h.claimable} wei` }));
        return tr;
      }));
    }
    $('shares-more').textContent = l.holdersHidden > 0 ? `and ${l.holdersHidden} more holders` : '';

    kv($('ledger-totals'), [
      ['supply', `${fmt.units(l.totalSupply)} shares`, `${l.totalSupply} base units`],
      ['revenue paid', `${fmt.eth(l.totalPaid)} ETH`, `${l.totalPaid} wei`],
      ['claimed', `${fmt.eth(l.totalClaimed)} ETH`, `${l.totalClaimed} wei`],
      ['validators', `${l.threshold} of ${l.validators.length} sign a round`, l.validators.join('\n')],
      ['payout address', fmt.addr(l.me), l.me],
    ]);
    kv($('ledger-queue'), [
      ['pending', fmt.num(l.queue.pending)],
      ['submitted', fmt.num(l.queue.submitted)],
      ['last error', l.queue.lastError || 'none'],
    ]);
    if (l.queue.lastError) $('ledger-queue').lastChild.classList.add('error');

    const props = $('proposals').querySelector('tbody');
    if (!l.proposals.length) noneRow(props, 7, 'no proposals');
    else {
      props.replaceChildren(...l.proposals.map((p) => {
        const tr = el('tr', null, { 'data-proposal': String(p.id), 'data-status': p.status });
        const st = el('td');
        st.append(el('span', p.status, { class: `pill pill-${p.status}`, ...(p.status === 'closed' ? { title: 'voting ended; not executed yet' } : {}) }));
        tr.append(el('td', String(p.id), { class: 'num' }), el('td', p.key), el('td', p.value),
          el('td', fmt.units(p.yes), { class: 'num', title: `${p.yes} base units` }),
          el('td', fmt.units(p.no), { class: 'num', title: `${p.no} base units` }),
          el('td', fmt.when(p.deadline), { title: fmt.iso(p.deadline) }), st);
        return tr;
      }));
    }

    const minted = $('minted').querySelector('tbody');
    if (!l.rounds.length) noneRow(minted, 3, 'none minted yet');
    else {
      minted.replaceChildren(...l.rounds.map((r) => {
        const tr = el('tr', null, { 'data-round': String(r.round) });
        const cid = el('td');
        cid.append(el('code', fmt.short(r.checkpointCid, 16), { title: r.checkpointCid }));
        tr.append(el('td', String(r.round), { class: 'num' }), el('td', fmt.units(r.minted), { class: 'num', title: `${r.minted} base units` }), cid);
        return tr;
      }));
    }
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
    drawStages();
    drawLedger();
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
    if (status && status.ledger) $('ledger-checked').textContent = `checked ${fmt.ago(status.ledger.checkedAt)}`;
  }, 1000);
})();
