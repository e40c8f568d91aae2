/**
 * The stage service without a network (issue 14): three stage services called through the
 * in-memory transport (the wire's exact bytes and caps) train like one process; bad requests
 * and unknown operations are refused with the same typed errors as over libp2p.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { GPT } from '../src/model/gpt.js';
import { splitStages } from '../src/model/stage.js';
import { AdamW, DEFAULT_ADAMW } from '../src/train/adamw.js';
import { loadKernels } from '../src/kernels/index.js';
import type { Kernels } from '../src/kernels/api.js';
import { Rng } from '../src/util/rng.js';
import type { Batch } from '../src/data/batches.js';
import { createHost } from '../src/net/host.js';
import { PipelineDriver } from '../src/pipeline/driver.js';
import { exactBytes } from '../src/pipeline/act-codec.js';
import { StageCallError, type Reply } from '../src/pipeline/rpc.js';
import { memoryTransport, type MemoryPeer } from '../src/pipeline/memory-transport.js';
import { StageClient, libp2pTransport, type StageTransport } from '../src/pipeline/stage-client.js';
import { StageService } from '../src/pipeline/stage/service.js';
import { serveStage, type StageServiceOptions } from '../src/pipeline/stage-server.js';
import { int32Bytes, requestBodyCap } from '../src/pipeline/stage-protocol.js';

const cfg = { vocabSize: 64, ctx: 16, dim: 32, layers: 3, heads: 4 };
const B = 4,
  T = 16,
  MICRO = 2,
  S = 3;
const DRIVER = 'driver-in-memory';

function batches(n: number, seed: number): Batch[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => {
    const inputs = new Int32Array(B * T),
      targets = new Int32Array(B * T);
    for (let i = 0; i < B * T; i++) {
      inputs[i] = rng.nextInt(cfg.vocabSize);
      targets[i] = rng.nextFloat() < 0.9 ? (inputs[i] * 7 + 3) % cfg.vocabSize : rng.nextInt(cfg.vocabSize);
    }
    return { inputs, targets };
  });
}

/** S stage services in memory, started from `genesis` (or fresh: waiting for a restore). */
interface InMemory {
  peers: string[];
  svc: Map<string, StageService>;
  lookup: (p: string) => MemoryPeer | undefined;
}
function services(k: Kernels, genesis: Float32Array | null, extra: Partial<StageServiceOptions> = {}): InMemory {
  const svc = new Map<string, StageService>();
  const lookup = (p: string): MemoryPeer | undefined => {
    const s = svc.get(p);
    return s
      ? { handle: (h, b, from) => s.handle(h, b, from), maxBody: s.maxBody, bodyCap: (h, f) => s.bodyCap(h, f) }
      : undefined;
  };
  const peers = splitStages(cfg, S).map((spec) => {
    const id = `stage-peer-${spec.index}`;
    const links = { peerId: id, dial: async () => id, client: new StageClient(memoryTransport(id, lookup)) };
    const init = genesis ? (st: { loadFromFull(p: Float32Array): void }) => st.loadFromFull(genesis) : null;
    const o = {
      config: cfg,
      spec,
      kernels: k,
      adamw: DEFAULT_ADAMW,
      codec: { id: 'fp32' as const },
      init,
      drivers: [DRIVER],
      ...extra,
    };
    svc.set(id, new StageService(o, links));
    return id;
  });
  return { peers, svc, lookup };
}

test('in memory, a forward/backward/step round trip through 3 stage services matches one process', async () => {
  const k = loadKernels({ threads: 1 });
  const ref = new GPT(cfg, k);
  ref.init(5);
  const opt = new AdamW(cfg, DEFAULT_ADAMW, k);
  const { peers, svc, lookup } = services(k, ref.params.slice());
  const driver = new PipelineDriver({
    transport: memoryTransport(DRIVER, lookup),
    stages: peers.map((p) => [p]),
    dim: cfg.dim,
    vocabSize: cfg.vocabSize,
    codec: { id: 'fp32' },
    inflight: 1,
  });
  for (const [i, b] of batches(4, 1).entries()) {
    const got = await driver.step(b, B, T, MICRO, 1e-2);
    ref.zeroGrad();
    let want = 0;
    const n = (B / MICRO) * T;
    for (let m = 0; m < MICRO; m++) {
      const x = b.inputs.subarray(m * n, (m + 1) * n),
        y = b.targets.subarray(m * n, (m + 1) * n);
      want += ref.forwardBackward(x, y, B / MICRO, T, 1 / MICRO) / MICRO;
    }
    const norm = opt.update(ref.params, ref.grads, 1e-2);
    assert.ok(Math.abs(got.loss - want) < 1e-4 * Math.max(1, want), `step ${i}: loss ${got.loss} vs ${want}`);
    assert.ok(Math.abs(got.gradNorm - norm) < 1e-3 * Math.max(1, norm), `step ${i}: norm ${got.gradNorm} vs ${norm}`);
    // The same activation bytes as over libp2p (pipeline.test.ts): the transport carries the wire's bodies.
    assert.equal(got.actBytes, MICRO * 2 * 2 * 2 * exactBytes({ id: 'fp32' }, n, cfg.dim));
  }
  const full = new Float32Array(ref.params.length);
  for (const p of peers) svc.get(p)!.state.stage.writeToFull(full);
  let max = 0;
  for (let i = 0; i < full.length; i++) max = Math.max(max, Math.abs(full[i] - ref.params[i]));
  assert.ok(max < 2e-3, `weights after 4 steps differ by ${max}`);
  // Typed replies: info decodes with its schema, and counts what the stage did.
  const client = new StageClient(memoryTransport(DRIVER, lookup));
  const info = await client.control(peers[1], 'info', {}, { signal: AbortSignal.timeout(5000) });
  assert.equal(info.index, 1);
  assert.equal(info.step, 4);
  assert.equal(info.ready, true);
  assert.equal(info.stats.steps, 4);
  assert.equal(info.stats.count.fwd, 4 * MICRO);
});

/** How a call failed: its class, whether it was refused, and its message. */
async function failure(
  t: StageTransport,
  peer: string,
  head: unknown,
  body: Uint8Array = new Uint8Array(0),
  maxBody = 0,
): Promise<{ refused: boolean; message: string }> {
  let reply: Reply | undefined;
  try {
    reply = await t.call(peer, head, body, { maxBody, signal: AbortSignal.timeout(5000) });
  } catch (err) {
    assert.ok(err instanceof StageCallError, `a typed error, not ${String(err)}`);
    assert.equal(err.code, 'STAGE_CALL');
    return { refused: err.refused, message: err.message };
  }
  assert.fail(`the call succeeded: ${JSON.stringify(reply.head)}`);
}

test('bad requests and unknown ops are refused in memory exactly as over libp2p', { timeout: 30_000 }, async () => {
  const k = loadKernels({ threads: 1 });
  const ref = new GPT(cfg, k);
  ref.init(3);
  const { peers, lookup } = services(k, ref.params.slice());
  const mem = memoryTransport(DRIVER, lookup);
  const spec = splitStages(cfg, S)[2];
  const tokens = int32Bytes(new Int32Array(T));
  // Refusals: the request's fault (the same stage-2 service, and the same messages, over libp2p below).
  const refusals: [string, unknown, Uint8Array?][] = [
    ['unknown op', { op: 'explode' }],
    ['no op', { micro: 0 }],
    ['not an object', 42],
    ['an unknown field', { op: 'info', extra: 1 }],
    ['a bad field', { op: 'bwd', micro: -1 }],
    ['a bad lend seed', { op: 'lend', id: '0'.repeat(16), to: 'x'.repeat(8), seed: 'zz', sign: 1, weight: 0.5 }],
    ['fwd to the last stage', { op: 'fwd', micro: 0, B: 1, T, train: false }, tokens],
    ['a short "last" body', { op: 'last', micro: 0, B: 1, T, train: false, scale: 1 }, tokens],
    ['bwd without forward', { op: 'bwd', micro: 7 }],
    ['save without a store', { op: 'save' }],
    ['absorb without expect', { op: 'absorb', id: '0'.repeat(16), layout: '0'.repeat(64), step: 0 }],
    ['gradients of the wrong size', { op: 'grads', set: true }, new Uint8Array(8)],
  ];
  const inMemory = [];
  for (const [what, head, body] of refusals) {
    const f = await failure(mem, peers[2], head, body);
    assert.equal(f.refused, true, `${what}: refused (${f.message})`);
    assert.match(f.message, /^stage peer refused: /, what);
    inMemory.push(f);
  }
  assert.match(inMemory[0].message, /bad stage call: /);
  assert.match(inMemory[6].message, /the last stage takes "last" calls/);
  assert.match(inMemory[9].message, /no store for checkpoints/);
  // Not refusals: a fresh peer is unavailable, a body over the cap drops the call, so does a reply over
  // the caller's cap.
  const fresh = services(k, null);
  const fwd = { op: 'fwd', micro: 0, B: 1, T, train: false };
  const un = await failure(memoryTransport(DRIVER, fresh.lookup), fresh.peers[0], fwd, tokens);
  assert.equal(un.refused, false);
  assert.match(un.message, /^stage peer unavailable: not serving stage 0 yet/);
  const cap = requestBodyCap(cfg, S);
  const big = await failure(mem, peers[2], { op: 'grads', set: true }, new Uint8Array(cap + 1));
  assert.equal(big.refused, false);
  assert.match(big.message, new RegExp(`request body of ${cap + 1} bytes exceeds the limit of ${cap}`));
  const small = await failure(mem, peers[2], { op: 'grads', set: false }, new Uint8Array(0), 16);
  assert.equal(small.refused, false);
  assert.match(small.message, /reply body of \d+ bytes exceeds the limit of 16/);
  // A reply that does not fit its op's schema: the client's typed error (the peer is faulty, not refused).
  const lying: MemoryPeer = { handle: async () => ({ head: { loss: 'low' } }), maxBody: 64 };
  const liar = new StageClient(memoryTransport(DRIVER, () => lying));
  const last = { micro: 0, B: 1, T, train: false, scale: 1 };
  await assert.rejects(
    liar.call('liar-peer', 'last', last, new Uint8Array(0), { signal: AbortSignal.timeout(5000) }),
    (err: unknown) => err instanceof StageCallError && !err.refused && /sent a bad "last" reply/.test(err.message),
  );
  // An aborted signal stops the call.
  const aborted = { maxBody: 0, signal: AbortSignal.abort() };
  await assert.rejects(mem.call(peers[2], { op: 'info' }, new Uint8Array(0), aborted));

  // The same calls over libp2p to the same kind of service: the same refusals, word for word.
  const root = mkdtempSync(join(tmpdir(), 'tessera-stage-service-'));
  const logger = pino({ level: 'silent' });
  const a = await createHost({ dataDir: join(root, 'a'), logger });
  const b = await createHost({ dataDir: join(root, 'b'), logger });
  try {
    const init = (st: { loadFromFull(p: Float32Array): void }) => st.loadFromFull(ref.params);
    const drivers = [a.peerId];
    await serveStage(b, { config: cfg, spec, kernels: k, adamw: DEFAULT_ADAMW, codec: { id: 'fp32' }, init, drivers });
    await a.dial(b.multiaddrs()[0], { signal: AbortSignal.timeout(5000) });
    const net = libp2pTransport(a);
    for (const [i, [what, head, body]] of refusals.entries()) {
      assert.deepEqual(await failure(net, b.peerId, head, body), inMemory[i], what);
    }
    const overNet = await failure(net, b.peerId, { op: 'grads', set: true }, new Uint8Array(cap + 1));
    assert.equal(overNet.refused, false, 'a body over the cap drops the call over libp2p too');
    const overCaller = await failure(net, b.peerId, { op: 'grads', set: false }, new Uint8Array(0), 16);
    assert.deepEqual(overCaller, small);
  } finally {
    await Promise.allSettled([a.stop(), b.stop()]);
    rmSync(root, { recursive: true, force: true });
  }
});

test('only the admitted driver may call a stage: a stranger is refused every op but info, before its body is read; held forwards are bounded and expire', async () => {
  const k = loadKernels({ threads: 1 });
  const ref = new GPT(cfg, k);
  ref.init(3);
  const { peers, svc, lookup } = services(k, ref.params.slice(), { held: { count: 3, ttlMs: 60_000 } });
  const stranger = memoryTransport('a-stranger', lookup);
  const tokens = int32Bytes(new Int32Array(T));
  const heads: Record<string, unknown> = {
    fwd: { op: 'fwd', micro: 0, B: 1, T, train: true },
    bwd: { op: 'bwd', micro: 0 },
    norm: { op: 'norm' },
    tied: { op: 'tied', set: false },
    step: { op: 'step', lr: 1, globalNorm: 0 },
    reset: { op: 'reset' },
    save: { op: 'save' },
    hold: { op: 'hold', stage: 1, shares: ['b'.repeat(59)] },
    delta: { op: 'delta', codec: 'fp32' },
    outer: { op: 'outer', lr: 1, momentum: 0 },
    embed: { op: 'embed', set: false },
    fold: { op: 'fold', keep: [] },
    grads: { op: 'grads', set: false },
    restore: { op: 'restore', shares: ['b'.repeat(59), 'c'.repeat(59)] },
    expect: { op: 'expect', id: '0'.repeat(16), from: ['x'.repeat(8), 'y'.repeat(8)] },
    lend: { op: 'lend', id: '0'.repeat(16), to: 'a-stranger', seed: '0'.repeat(64), sign: 1, weight: 1 },
    forget: { op: 'forget', shares: ['b'.repeat(59)] },
  };
  for (const [op, head] of Object.entries(heads)) {
    const f = await failure(stranger, peers[0], head, op === 'fwd' ? tokens : undefined);
    assert.equal(f.refused, true, `${op}: ${f.message}`);
    assert.match(f.message, new RegExp(`"${op}" is only for this run's driver; a-stranger is not admitted`));
  }
  const absorb = await failure(stranger, peers[1], {
    op: 'absorb',
    id: '0'.repeat(16),
    layout: '0'.repeat(64),
    step: 0,
  });
  assert.match(absorb.message, /"absorb" is taken only from a lender the driver announced/);
  // A large body from a stranger is drained, not held, and still refused (typed).
  const big = await failure(stranger, peers[1], { op: 'grads', set: true }, new Uint8Array(requestBodyCap(cfg, S)));
  assert.equal(big.refused, true);
  assert.match(big.message, /only for this run's driver/);
  const info = await new StageClient(stranger).control(peers[0], 'info', {}, { signal: AbortSignal.timeout(5000) });
  assert.equal(info.stats.calls, 1, "a stranger's refused calls are not counted as the run's work (only this info)");
  // The driver: at most 3 forwards held for a backward; the 4th is refused, and held ones expire.
  const driver = new StageClient(memoryTransport(DRIVER, lookup));
  const fwd = (micro: number) =>
    driver.call(peers[0], 'fwd', { micro, B: 1, T, train: true }, tokens, {
      signal: AbortSignal.timeout(5000),
      maxBody: 1 << 20,
    });
  for (let m = 0; m < 3; m++) await fwd(m);
  await assert.rejects(
    fwd(3),
    (e: unknown) => e instanceof StageCallError && e.refused && /too much held for backward/.test(e.message),
  );
  const st = svc.get(peers[0])!.state;
  assert.equal(st.rows.size, 3);
  for (const m of st.heldAt.keys()) st.heldAt.set(m, Date.now() - 120_000); // as if 2 minutes old
  await fwd(3);
  assert.equal(st.rows.size, 1, 'expired forwards were dropped');
  assert.equal(st.heldTokens, T);
});

test('open inference (the manifest says so): any peer may run a forward that keeps nothing, in small calls; nothing else', async () => {
  const k = loadKernels({ threads: 1 });
  const ref = new GPT(cfg, k);
  ref.init(3);
  const { peers, lookup } = services(k, ref.params.slice(), { openInference: true });
  const guest = new StageClient(memoryTransport('a-guest', lookup));
  const o = { signal: AbortSignal.timeout(5000), maxBody: 1 << 20 };
  const r = await guest.call(peers[0], 'fwd', { micro: 0, B: 1, T, train: false }, int32Bytes(new Int32Array(T)), o);
  assert.ok(r.body.length > 0);
  const refusedWith = async (head: unknown, body: Uint8Array, re: RegExp) => {
    const f = await failure(memoryTransport('a-guest', lookup), peers[0], head, body);
    assert.equal(f.refused, true, f.message);
    assert.match(f.message, re);
  };
  await refusedWith(
    { op: 'fwd', micro: 1, B: 1, T, train: true },
    int32Bytes(new Int32Array(T)),
    /only for this run's driver/,
  );
  await refusedWith({ op: 'grads', set: false }, new Uint8Array(0), /only for this run's driver/);
  // More than 16 sequences: its body is over a guest's cap (drained), and the call is refused.
  await refusedWith(
    { op: 'fwd', micro: 2, B: 17, T, train: false },
    int32Bytes(new Int32Array(17 * T)),
    /at most 16 sequences/,
  );
});
