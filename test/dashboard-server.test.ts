/**
 * The dashboard server (src/dashboard/server.ts) against a fake node: static files, the JSON
 * API, the access policy for POST /api/generate (loopback, token, read-only), its bounds (body
 * size, rate, validation), Host checks, and the SSE stream over a real socket (snapshot, then an
 * update carrying the new round; the latency from report to browser-side bytes is measured),
 * and the ownership panel (the node's ledger view) in /api/status and the stream.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { createDashboardApp, startDashboard, type DashboardSource } from '../src/dashboard/server.js';
import { freePort, portOr } from './support/swarm.js';
import type { NodeView, RoundReport } from '../src/peer/node.js';
import { ME, SHARES, ledgerView, report, view } from './dashboard-fixtures.js';

class FakeNode implements DashboardSource {
  readonly events = new EventEmitter<{ round: [RoundReport] }>();
  v: NodeView | null = view();
  calls = 0;
  view(): NodeView {
    if (!this.v) throw new TypeError('not started');
    return this.v;
  }
  generate(prompt: string, o: { maxTokens?: number }): { text: string; tokens: number } {
    this.calls++;
    return { text: ` and ${prompt.length} more (${o.maxTokens})`, tokens: 3 };
  }
}

const json = { 'content-type': 'application/json' };
const post = (body: unknown, headers: Record<string, string> = json) => ({
  method: 'POST',
  headers,
  body: typeof body === 'string' ? body : JSON.stringify(body),
});

test('static page, uPlot from node_modules, security headers', async () => {
  const { app } = createDashboardApp(new FakeNode());
  const page = await app.request('/');
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type')!, /text\/html/);
  assert.match(await page.text(), /<title>Tessera/);
  assert.match(page.headers.get('content-security-policy')!, /script-src 'self'/);
  assert.equal(page.headers.get('x-content-type-options'), 'nosniff');
  for (const p of ['/app.js', '/app.css', '/uplot.js', '/uplot.css', '/favicon.svg']) {
    const r = await app.request(p);
    assert.equal(r.status, 200, p);
    assert.ok((await r.text()).length > 100, `${p} has content`);
  }
  assert.match(await (await app.request('/uplot.js')).text(), /uPlot/);
  const missing = await app.request('/nope');
  assert.equal(missing.status, 404);
  assert.equal(((await missing.json()) as { error: { code: string } }).error.code, 'NOT_FOUND');
});

test('JSON API: status, peers, metrics (with since/limit), bad queries are 400', async () => {
  const node = new FakeNode();
  const { app, hub } = createDashboardApp(node);
  hub.start(60_000);
  try {
    node.events.emit('round', report(0));
    node.events.emit('round', report(1, { trainLoss: NaN }));
    const st = (await (await app.request('/api/status')).json()) as {
      run: { name: string };
      round: number;
      generate: string;
      ledger: null;
      own: { tokens: number };
      seq: number;
    };
    assert.equal(st.run.name, 'tiny');
    assert.equal(st.round, 1);
    assert.equal(st.generate, 'open');
    assert.equal(st.ledger, null);
    assert.equal(st.own.tokens, 512);
    const peers = (await (await app.request('/api/peers')).json()) as {
      peers: { id: string; status: string; roundsContributed: number }[];
    };
    assert.deepEqual(
      peers.peers.map((p) => [p.id, p.status, p.roundsContributed]),
      [
        ['peer-me', 'active', 2],
        ['peer-a', 'active', 2],
      ],
    );
    const m = (await (await app.request('/api/metrics')).json()) as {
      seq: number;
      points: { round: number; trainLoss: number | null }[];
    };
    assert.deepEqual(
      m.points.map((p) => p.round),
      [0, 1],
    );
    assert.equal(m.points[1].trainLoss, null);
    const since = (await (await app.request(`/api/metrics?since=${m.seq}`)).json()) as { points: unknown[] };
    assert.equal(since.points.length, 0);
    const last = (await (await app.request('/api/metrics?limit=1')).json()) as { points: { round: number }[] };
    assert.deepEqual(
      last.points.map((p) => p.round),
      [1],
    );
    for (const q of ['since=abc', 'limit=0', 'bogus=1']) {
      const r = await app.request(`/api/metrics?${q}`);
      assert.equal(r.status, 400, q);
      assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'BAD_REQUEST');
    }
  } finally {
    hub.stop();
  }
});

test('JSON API: the ledger — null when the node has no chain link, the ownership panel when it has', async () => {
  const node = new FakeNode();
  const { app, hub } = createDashboardApp(node, { now: () => Date.UTC(2026, 0, 1) });
  hub.start(60_000);
  try {
    type Status = {
      ledger: null | {
        contract: string;
        chainId: number;
        online: boolean;
        totalSupply: string;
        holdersHidden: number;
        holders: { address: string; peer: string | null; balance: string; percent: string | null; me: boolean }[];
        proposals: { id: number; value: string; status: string }[];
        queue: { pending: number; submitted: number; lastError: string | null };
      };
    };
    const get = async () => (await (await app.request('/api/status')).json()) as Status;
    assert.equal((await get()).ledger, null);
    node.v = view({
      ledger: ledgerView({ online: false, queue: { pending: 5, submitted: 2, lastError: 'fetch failed' } }),
    });
    hub.poll(false);
    const l = (await get()).ledger!;
    assert.equal(l.contract, '0x8464135c8F25Da09e49BC8782676a84730C318bC');
    assert.equal(l.chainId, 31337);
    assert.equal(l.online, false);
    assert.deepEqual(l.queue, { pending: 5, submitted: 2, lastError: 'fetch failed' });
    assert.equal(l.totalSupply, SHARES.supply, 'base units survive JSON as exact decimal strings');
    assert.deepEqual(
      l.holders.map((h) => [h.balance, h.percent, h.me, h.peer]),
      [
        [SHARES.a, '62.50', false, 'peer-a'],
        [SHARES.me, '31.25', true, ME],
        [SHARES.b, '6.25', false, null],
      ],
    );
    assert.deepEqual(
      l.proposals.map((p) => [p.id, p.status]),
      [
        [4, 'open'],
        [3, 'passed'],
        [2, 'failed'],
        [1, 'closed'],
      ],
    );
    assert.equal(
      l.proposals[0].value,
      '<img src=x onerror=alert(1)>',
      'the API carries text as text; the page escapes it',
    );
  } finally {
    hub.stop();
  }
});

test('SSE: a change in the ledger alone (no new round) is pushed to the page', async () => {
  const node = new FakeNode();
  const d = await startDashboard(node, { port: 0, pollMs: 50 });
  try {
    const res = await fetch(d.url + 'api/events');
    type Msg = { status: { ledger: null | { online: boolean; queue: { pending: number } } } };
    const first = await readEvents(res.body!, (e) => e.length >= 1);
    assert.equal((first[0].data as Msg).status.ledger, null);
    node.v = view({ ledger: ledgerView() });
    await readEvents(res.body!, (e) =>
      e.some((x) => x.event === 'update' && (x.data as Msg).status.ledger?.online === true),
    );
    node.v = view({
      ledger: ledgerView({ online: false, queue: { pending: 7, submitted: 0, lastError: 'ECONNREFUSED' } }),
    });
    await readEvents(res.body!, (e) =>
      e.some((x) => x.event === 'update' && (x.data as Msg).status.ledger?.queue.pending === 7),
    );
    await res.body!.cancel().catch(() => undefined);
  } finally {
    await d.close();
  }
});

test('loopback: foreign Host names are refused (DNS rebinding)', async () => {
  const { app } = createDashboardApp(new FakeNode());
  assert.equal((await app.request('http://127.0.0.1:9/api/status')).status, 200);
  assert.equal((await app.request('http://localhost:9/api/status')).status, 200);
  assert.equal((await app.request('http://[::1]:9/api/status')).status, 200);
  const r = await app.request('http://evil.example:9/api/status');
  assert.equal(r.status, 403);
  assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'FORBIDDEN_ORIGIN');
  // Bound beyond loopback, any Host is fine (reads are open).
  const open = createDashboardApp(new FakeNode(), { host: '0.0.0.0' });
  assert.equal((await open.app.request('http://box.lan:9/api/status')).status, 200);
});

test('generate on loopback without a token: allowed, validated, bounded', async () => {
  const node = new FakeNode();
  const { app } = createDashboardApp(node, { generateGapMs: 0 });
  const ok = await app.request('/api/generate', post({ prompt: 'The jury', maxTokens: 8 }));
  assert.equal(ok.status, 200);
  const b = (await ok.json()) as { text: string; tokens: number; ms: number; weightsHash: string };
  assert.equal(b.text, ' and 8 more (8)');
  assert.equal(b.tokens, 3);
  assert.equal(b.weightsHash, 'w0');
  const cases: [string, RequestInit, number, string][] = [
    ['too many tokens', post({ prompt: 'x', maxTokens: 1000 }), 400, 'BAD_REQUEST'],
    ['unknown field', post({ prompt: 'x', evil: 1 }), 400, 'BAD_REQUEST'],
    ['not JSON', post('{nope'), 400, 'BAD_REQUEST'],
    ['prompt too long', post({ prompt: 'x'.repeat(1001) }), 400, 'BAD_REQUEST'],
    ['body too large', post({ prompt: 'x'.repeat(5000) }), 413, 'BODY_TOO_LARGE'],
    ['form post', post('prompt=x', { 'content-type': 'application/x-www-form-urlencoded' }), 415, 'UNSUPPORTED_MEDIA'],
    ['cross-site', post({ prompt: 'x' }, { ...json, origin: 'http://evil.example' }), 403, 'FORBIDDEN_ORIGIN'],
  ];
  for (const [what, init, status, code] of cases) {
    const r = await app.request('/api/generate', init);
    assert.equal(r.status, status, what);
    assert.equal(((await r.json()) as { error: { code: string } }).error.code, code, what);
  }
  assert.equal(
    (await app.request('http://localhost/api/generate', post({ prompt: 'x' }, { ...json, origin: 'http://localhost' })))
      .status,
    200,
    'same origin',
  );
  assert.equal(node.calls, 2, 'rejected requests never reach the model');
  // Rate limit: one generate per gap.
  const slow = createDashboardApp(new FakeNode(), { generateGapMs: 60_000 });
  assert.equal((await slow.app.request('/api/generate', post({ prompt: 'a' }))).status, 200);
  assert.equal((await slow.app.request('/api/generate', post({ prompt: 'a' }))).status, 429);
  // A node still starting: 503, and the status says so.
  const starting = new FakeNode();
  starting.v = null;
  const st = createDashboardApp(starting);
  assert.equal((await st.app.request('/api/generate', post({ prompt: 'a' }))).status, 503);
  assert.equal(((await (await st.app.request('/api/status')).json()) as { phase: string }).phase, 'starting');
});

test('generate with a token needs it; beyond loopback without one, the dashboard is read-only', async () => {
  const tok = createDashboardApp(new FakeNode(), { token: 's3cret', generateGapMs: 0 });
  assert.equal(tok.mode, 'token');
  const no = await tok.app.request('/api/generate', post({ prompt: 'a' }));
  assert.equal(no.status, 401);
  assert.equal(((await no.json()) as { error: { code: string } }).error.code, 'UNAUTHORIZED');
  assert.equal(
    (await tok.app.request('/api/generate', post({ prompt: 'a' }, { ...json, authorization: 'Bearer wrong' }))).status,
    401,
  );
  assert.equal(
    (await tok.app.request('/api/generate', post({ prompt: 'a' }, { ...json, authorization: 'Bearer s3cret' }))).status,
    200,
  );
  assert.equal((await tok.app.request('/api/status')).status, 200, 'reads stay open');

  const lan = createDashboardApp(new FakeNode(), { host: '0.0.0.0' });
  assert.equal(lan.mode, 'off');
  const r = await lan.app.request('http://box.lan/api/generate', post({ prompt: 'a' }));
  assert.equal(r.status, 403);
  assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'READ_ONLY');
  const lanTok = createDashboardApp(new FakeNode(), { host: '0.0.0.0', token: 't' });
  assert.equal(
    (
      await lanTok.app.request(
        'http://box.lan/api/generate',
        post({ prompt: 'a' }, { ...json, authorization: 'Bearer t' }),
      )
    ).status,
    200,
  );
});

/** Reads SSE events from a fetch body until `want` returns true. */
async function readEvents(
  body: ReadableStream<Uint8Array>,
  want: (evs: { event: string; data: unknown; at: number }[]) => boolean,
  ms = 5000,
) {
  const reader = body.getReader();
  const dec = new TextDecoder();
  const evs: { event: string; data: unknown; at: number }[] = [];
  let buf = '';
  const deadline = Date.now() + ms;
  while (!want(evs)) {
    if (Date.now() > deadline) throw new Error(`timed out; got ${evs.map((e) => e.event).join(',')}`);
    const { done, value } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1] ?? 'message';
      const data = block
        .split('\n')
        .filter((l) => l.startsWith('data: '))
        .map((l) => l.slice(6))
        .join('\n');
      if (data) evs.push({ event, data: JSON.parse(data), at: performance.now() });
    }
  }
  reader.releaseLock();
  return evs;
}

test('SSE over a socket: snapshot, then an update per round; client cap; close ends streams', async () => {
  const node = new FakeNode();
  const d = await startDashboard(node, { port: 0, pollMs: 50, maxClients: 2 });
  try {
    assert.match(d.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    const res = await fetch(d.url + 'api/events');
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type')!, /text\/event-stream/);
    const first = await readEvents(res.body!, (e) => e.length >= 1);
    assert.equal(first[0].event, 'snapshot');
    // A round report reaches the client as an update with that round's point.
    const lat: number[] = [];
    for (let r = 0; r < 5; r++) {
      const t0 = performance.now();
      node.events.emit('round', report(r));
      const evs = await readEvents(res.body!, (e) =>
        e.some(
          (x) => x.event === 'update' && (x.data as { points: { round: number }[] }).points.some((p) => p.round === r),
        ),
      );
      lat.push(evs.at(-1)!.at - t0);
    }
    // A peer leaving the topic is pushed by the poll, without a round.
    node.v = view({ subscribers: [] });
    const gone = await readEvents(res.body!, (e) =>
      e.some(
        (x) =>
          x.event === 'update' &&
          (x.data as { peers: { id: string; status: string }[] }).peers.find((p) => p.id === 'peer-a')?.status ===
            'stale',
      ),
    );
    assert.ok(gone.length >= 1);
    lat.sort((a, b) => a - b);
    process.stderr.write(
      `dashboard-server: SSE latency report→client median ${lat[2].toFixed(2)} ms, max ${lat[4].toFixed(2)} ms\n`,
    );
    assert.ok(lat[2] < 200, 'updates are pushed, not polled');
    // Cap: a second stream is fine, a third is refused.
    const second = await fetch(d.url + 'api/events');
    assert.equal(second.status, 200);
    const third = await fetch(d.url + 'api/events');
    assert.equal(third.status, 429);
    await third.body?.cancel();
    await second.body!.cancel();
    await res.body!.cancel().catch(() => undefined);
  } finally {
    const t0 = Date.now();
    await d.close();
    assert.ok(Date.now() - t0 < 2000, 'close() does not wait for clients');
  }
});

test('a port in use is a DashboardListenError', async () => {
  const a = await startDashboard(new FakeNode(), { port: 0 });
  try {
    await assert.rejects(
      startDashboard(new FakeNode(), { port: a.port }),
      (e: Error & { code?: string }) => e.code === 'DASHBOARD_LISTEN',
    );
  } finally {
    await a.close();
  }
});

test("the demo's dashboard port: the preferred one if free, else any free port", async () => {
  const a = await startDashboard(new FakeNode(), { port: 0 });
  try {
    assert.notEqual(await portOr(a.port), a.port, 'taken → another port');
    const free = await freePort();
    assert.equal(await portOr(free), free);
  } finally {
    await a.close();
  }
});
