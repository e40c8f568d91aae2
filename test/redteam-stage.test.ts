/**
 * Red team (issue 17 item 1, "anyone can read or wreck a sharded model"): a hostile peer — its own
 * libp2p host and IPFS store, not the run's driver — tries every stage operation against a live
 * 3-stage pipeline over real libp2p. It must get no plaintext weights (the containment scan of
 * test/pipeline-run.test.ts, 32-byte windows of each stage's weights, over every byte it received
 * and over its data directory), change nothing (the driver's next steps give the same losses as
 * an identical pipeline that was not attacked) and hold no memory on the stage (micro-batches
 * held). The outcome of every attack is printed as a table (the report's before/after).
 */
import { test } from 'node:test';
import { readdirSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { GPT } from '../src/model/gpt.js';
import { DEFAULT_ADAMW, AdamW } from '../src/train/adamw.js';
import { loadKernels } from '../src/kernels/index.js';
import { Stage, splitStages } from '../src/model/stage.js';
import { Rng } from '../src/util/rng.js';
import { createHost } from '../src/net/host.js';
import { openStore, parseCid } from '../src/store/index.js';
import { startLocalPipeline, type LocalPipeline } from '../src/pipeline/local.js';
import { StageClient, libp2pTransport } from '../src/pipeline/stage-client.js';
import { serveStageRpc, StageCallError } from '../src/pipeline/rpc.js';
import { gatherLayers, maskedPart, unmaskSum } from '../src/pipeline/rebuild.js';
import { encodeStageState } from '../src/pipeline/stage/shares.js';
import { int32Bytes, type StageOp } from '../src/pipeline/stage-protocol.js';
import { f32ToBytes } from '../src/util/packed.js';
import { ErrorFeedback, getCodec } from '../src/swarm/compress/index.js';
import type { Batch } from '../src/data/batches.js';
import { PipelineDriver } from '../src/pipeline/driver.js';
import { StageService } from '../src/pipeline/stage/service.js';
import { memoryTransport, type MemoryPeer } from '../src/pipeline/memory-transport.js';

const cfg = { vocabSize: 64, ctx: 16, dim: 32, layers: 3, heads: 4 };
const B = 4,
  T = 16,
  MICRO = 2,
  LR = 1e-2;

function batches(n: number, seed: number, rows = B): Batch[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => {
    const inputs = new Int32Array(rows * T),
      targets = new Int32Array(rows * T);
    for (let i = 0; i < rows * T; i++) {
      inputs[i] = rng.nextInt(cfg.vocabSize);
      targets[i] = (inputs[i] * 7 + 3) % cfg.vocabSize;
    }
    return { inputs, targets };
  });
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? filesUnder(join(dir, e.name)) : e.isFile() ? [join(dir, e.name)] : [],
  );
}

/** 32-byte windows of a stage's weights (8 distinct floats each), as in test/pipeline-run.test.ts. */
function fingerprint(params: Float32Array, n = 64): Buffer[] {
  const out: Buffer[] = [];
  const bytes = Buffer.from(params.buffer, params.byteOffset, params.byteLength);
  for (let k = 0; k < params.length - 8 && out.length < n; k += Math.max(8, Math.floor(params.length / (2 * n)))) {
    if (new Set(params.subarray(k, k + 8)).size < 8) continue;
    out.push(Buffer.from(bytes.subarray(4 * k, 4 * k + 32)));
  }
  return out;
}

const pipe = (genesis: Float32Array): Promise<LocalPipeline> =>
  startLocalPipeline({
    config: cfg,
    stages: 3,
    kernels: loadKernels({ threads: 1 }),
    adamw: DEFAULT_ADAMW,
    codec: { id: 'fp32' },
    genesis: genesis.slice(),
    inflight: 1,
    checkpoints: true,
  });

/** Micro-batches a stage holds between forward and backward (its activation slots). */
const slotsOf = (lp: LocalPipeline, i: number): number =>
  (lp.servers[i][0].stage as unknown as { slots: Map<number, unknown> }).slots.size;

interface Outcome {
  attack: string;
  op: StageOp;
  result: 'answered' | 'refused' | 'failed';
  got: number;
  note: string;
}

test(
  'a hostile peer calling every stage operation gets no weights, changes nothing and holds no memory',
  { timeout: 180_000 },
  async () => {
    const k = loadKernels({ threads: 1 });
    const ref = new GPT(cfg, k);
    ref.init(7);
    const genesis = ref.params.slice();
    const data = batches(6, 3);
    const root = mkdtempSync(join(tmpdir(), 'tessera-redteam-stage-'));
    const logger = pino({ level: 'silent' });
    const clean = await pipe(genesis);
    const lp = await pipe(genesis);
    const attacker = await createHost({ dataDir: join(root, 'attacker'), logger });
    const store = await openStore(join(root, 'attacker'), { libp2p: attacker.node });
    const received: Uint8Array[] = [];
    const absorbed: Uint8Array[] = [];
    // The attacker serves the stage protocol too: a lend sends its part here.
    await serveStageRpc(
      attacker,
      async (head, body) => {
        absorbed.push(body.slice());
        received.push(body.slice());
        return { head: (head as { op?: string }).op === 'absorb' ? { complete: false } : {} };
      },
      { maxBody: 1 << 26 },
    );
    const outcomes: Outcome[] = [];
    try {
      // Both pipelines: two steps and a checkpoint (shares held on the other stages).
      const run = async (p: LocalPipeline, steps: Batch[]) => {
        const out: number[] = [];
        for (const b of steps) out.push((await p.driver.step(b, B, T, MICRO, LR)).loss);
        return out;
      };
      await run(clean, data.slice(0, 2));
      await clean.driver.checkpoint();
      await run(lp, data.slice(0, 2));
      await lp.driver.checkpoint();

      const peer = (i: number) => lp.peerOf(lp.servers[i][0]);
      // Checkpoint shares: each on one holder, none left on the saver (nor both on any peer).
      const placement: string[] = [];
      for (let i = 0; i < 3; i++) {
        const cids = lp.driver.checkpoints.get(i)!.shares.map(parseCid);
        const on = await Promise.all(
          [0, 1, 2].map(async (j) => {
            const st = lp.storeOf(lp.servers[j][0])!;
            return (await Promise.all(cids.map((c) => st.has(c)))).map(Number).join('');
          }),
        );
        placement.push(`stage ${i}: ${on.map((x, j) => `peer ${j} ${x}`).join(', ')}`);
        assert.equal(on[i], '00', `the saver of stage ${i} still holds its shares`);
        assert.equal(on[(i + 1) % 3], '10', `stage ${i}'s first share is on stage ${(i + 1) % 3} alone`);
        assert.equal(on[(i + 2) % 3], '01', `stage ${i}'s second share is on stage ${(i + 2) % 3} alone`);
      }
      console.log(`share CIDs present in each blockstore (share 0, share 1):\n${placement.join('\n')}`);
      // What each stage holds when the attack starts (the windows to look for), and stage 1's layers.
      const prints = lp.servers.flatMap((row) => fingerprint(row[0].stage.params));
      const layers1 = gatherLayers(lp.servers[1][0].stage);
      for (let i = 0; i < 3; i++)
        await attacker.dial(lp.hosts[i].multiaddrs()[0], { signal: AbortSignal.timeout(5000) });
      const c = new StageClient(libp2pTransport(attacker));
      const sig = () => AbortSignal.timeout(15_000);
      const attempt = async <Op extends StageOp>(
        attack: string,
        i: number,
        op: Op,
        args: Parameters<StageClient['call']>[2],
        body: Uint8Array = new Uint8Array(0),
        after?: (r: { head: unknown; body: Uint8Array }) => Promise<string> | string,
      ) => {
        try {
          const r = await c.call(peer(i), op, args as never, body, { signal: sig(), maxBody: 1 << 26 });
          received.push(r.body, new TextEncoder().encode(JSON.stringify(r.head)));
          const note = after ? await after(r) : '';
          outcomes.push({ attack, op, result: 'answered', got: r.body.length, note });
          return r;
        } catch (err) {
          const refused = err instanceof StageCallError && err.refused;
          outcomes.push({
            attack,
            op,
            result: refused ? 'refused' : 'failed',
            got: 0,
            note: (err as Error).message.slice(0, 90),
          });
          return null;
        }
      };

      // 1. lend to the attacker with a seed it chose: unmask the part.
      const seed = Buffer.alloc(32, 7);
      let lendError = Infinity;
      const n1 = lp.servers[1][0].stage.numParams; // an upper bound; the part is the layers only
      await attempt(
        'lend {to: attacker, seed: S}',
        1,
        'lend',
        { id: 'aa'.repeat(8), to: attacker.peerId, seed: seed.toString('hex'), sign: 1, weight: 1 },
        undefined,
        () => {
          const part = absorbed[0];
          if (!part) return 'no part arrived';
          const n = part.length / 4;
          const neg = maskedPart(new Float32Array(n), 0, seed, -1);
          const x = unmaskSum([part, neg], n);
          received.push(f32ToBytes(x));
          let err = 0;
          for (let j = 0; j < n; j++) err = Math.max(err, Math.abs(x[j] - layers1[j]));
          lendError = err;
          return `unmasked ${n} floats of stage 1's layers, max error ${err.toExponential(1)} (fixed point)`;
        },
      );
      // 2. save: both share CIDs, both served by the saver's own blockstore.
      await attempt('save → fetch both shares', 0, 'save', {}, undefined, async (r) => {
        const cids = (r.head as { shares: string[] }).shares;
        const [a, b] = await Promise.all(
          cids.map((cid) => store.cat(parseCid(cid), { maxBytes: 1 << 26, signal: sig() })),
        );
        const x = new Uint8Array(a.length);
        for (let j = 0; j < x.length; j++) x[j] = a[j] ^ b[j];
        received.push(x);
        return `fetched and XORed ${x.length} bytes`;
      });
      // 3. reads of weights and gradients.
      await attempt('embed {set: false}', 0, 'embed', { set: false });
      await attempt('delta (pseudo-gradient)', 1, 'delta', { codec: 'fp32' });
      await attempt('grads {set: false}', 1, 'grads', { set: false });
      await attempt('tied {set: false}', 2, 'tied', { set: false });
      await attempt('norm', 1, 'norm', {});
      await attempt('info', 1, 'info', {});
      // 4. writes: gradients, steps, outer steps, a restore from the attacker's own shares.
      const n2 = lp.servers[2][0].stage.numParams;
      const junk = new Float32Array(n2).fill(0.5);
      await attempt('grads {set: true} (junk)', 2, 'grads', { set: true }, f32ToBytes(junk));
      await attempt('step {lr: 10}', 2, 'step', { lr: 10, globalNorm: 0 });
      const d = getCodec('fp32').encode(new Float32Array(n1).fill(0.25), new ErrorFeedback(n1)).bytes;
      await attempt('outer (junk mean Δ)', 1, 'outer', { lr: 1, momentum: 0 }, d);
      const evil = new Stage(cfg, splitStages(cfg, 3)[0], k);
      evil.init(99);
      const x = encodeStageState(evil, new AdamW(cfg, DEFAULT_ADAMW, k, evil.specs));
      const r = new Uint8Array(x.length).map((_, j) => (j * 31) & 255);
      const y = x.map((v, j) => v ^ r[j]);
      const cids: string[] = [];
      for (const part of [r, y]) {
        const cid = await store.fs.addBytes(part, { rawLeaves: true });
        await store.pin(cid);
        cids.push(cid.toString());
      }
      await attempt('restore {attacker shares}', 0, 'restore', { shares: cids, dial: attacker.multiaddrs() });
      await attempt('embed {set: true} (junk)', 2, 'embed', { set: true }, f32ToBytes(new Float32Array(64 * 32)));
      await attempt('tied {set: true} (junk)', 0, 'tied', { set: true }, f32ToBytes(new Float32Array(64 * 32)));
      await attempt('hold {attacker CID} (disk)', 1, 'hold', { stage: 2, shares: [cids[0]] });
      await attempt('expect (rebuild a serving peer)', 1, 'expect', {
        id: 'bb'.repeat(8),
        from: [attacker.peerId, peer(0)],
      });
      await attempt('absorb (unannounced part)', 1, 'absorb', { id: 'bb'.repeat(8), layout: '0'.repeat(64), step: 0 });
      await attempt('reset', 1, 'reset', {});
      await attempt('fold', 1, 'fold', { keep: [] });
      // 5. inference and compute calls.
      const tokens = int32Bytes(new Int32Array(T));
      const a0 = await attempt('fwd {train: false}', 0, 'fwd', { micro: 1 << 29, B: 1, T, train: false }, tokens);
      const a1 = a0
        ? await attempt('fwd {train: false}', 1, 'fwd', { micro: 1 << 29, B: 1, T, train: false }, a0.body)
        : null;
      const act = a1?.body ?? new Uint8Array(0);
      await attempt('bwd (no forward held)', 0, 'bwd', { micro: 12345 }, new Uint8Array(0));
      await attempt(
        'last {train: true}',
        2,
        'last',
        { micro: 1 << 29, B: 1, T, train: true, scale: 1 },
        Buffer.concat([act, new Uint8Array(4 * T)]),
      );
      await attempt('logits', 2, 'logits', { micro: (1 << 29) + 1, B: 1, T }, act);
      // 6. memory: 200 forwards kept for a backward that never comes.
      const slots0 = slotsOf(lp, 0),
        rss0 = process.memoryUsage().rss;
      let kept = 0;
      for (let m = 0; m < 200; m++) {
        try {
          await c.call(
            peer(0),
            'fwd',
            { micro: (1 << 28) + m, B: 4, T, train: true },
            int32Bytes(new Int32Array(4 * T)),
            {
              signal: sig(),
              maxBody: 1 << 26,
            },
          );
          kept++;
        } catch {
          /* refused */
        }
      }
      const flood = slotsOf(lp, 0) - slots0;
      outcomes.push({
        attack: 'fwd {train: true} × 200 fresh ids',
        op: 'fwd',
        result: kept > 0 ? 'answered' : 'refused',
        got: kept,
        note: `${flood} micro-batches held on stage 0, RSS +${((process.memoryUsage().rss - rss0) / 2 ** 20).toFixed(1)} MiB (process)`,
      });
      await lp.driver.step(data[2], B, T, MICRO, LR).catch(() => undefined); // a forward flood can break the next step
      for (let m = 0; m < 200; m++) lp.servers[0][0].stage.release((1 << 28) + m);

      // The driver's next steps: the same losses as the pipeline nobody attacked.
      const after = await run(lp, data.slice(3, 6));
      await run(clean, data.slice(2, 3));
      const want = await run(clean, data.slice(3, 6));

      // Containment: no 32-byte window of any stage's weights in what the attacker got or kept.
      const genesisPrints = splitStages(cfg, 3).flatMap((sp) => {
        const st = new Stage(cfg, sp, k);
        st.loadFromFull(genesis);
        return fingerprint(st.params);
      });
      const everything = Buffer.concat([
        ...received.map((b) => Buffer.from(b)),
        ...filesUnder(join(root, 'attacker')).map((f) => readFileSync(f)),
      ]);
      const leaked = [...prints, ...genesisPrints].filter((w) => everything.includes(w)).length;

      console.log('\nattack | op | result | bytes got | note');
      for (const o of outcomes) console.log(`${o.attack} | ${o.op} | ${o.result} | ${o.got} | ${o.note}`);
      console.log(
        `weight windows found in what the attacker received or stored: ${leaked} of ${prints.length + genesisPrints.length}`,
      );
      console.log(`losses after the attack: ${after.map((l) => l.toFixed(6)).join(' ')}`);
      console.log(`losses without it:       ${want.map((l) => l.toFixed(6)).join(' ')}`);

      assert.equal(leaked, 0, 'the attacker holds plaintext weights');
      assert.equal(lendError, Infinity, "the attacker unmasked a stage's layers");
      for (const o of outcomes.filter((o) => o.op !== 'info'))
        assert.notEqual(o.result, 'answered', `${o.attack} was served to a hostile peer`);
      assert.equal(flood, 0, 'the forward flood held memory on the stage');
      for (let s = 0; s < want.length; s++)
        assert.ok(Math.abs(after[s] - want[s]) < 1e-6, `step ${s}: loss ${after[s]} after the attack vs ${want[s]}`);
    } finally {
      await store.stop().catch(() => undefined);
      await attacker.stop().catch(() => undefined);
      await lp.close();
      await clean.close();
      rmSync(root, { recursive: true, force: true });
    }
  },
);

test('an inflated throughput announcement gains nothing: balanced routing follows measured service times', async () => {
  const k = loadKernels({ threads: 1 });
  const ref = new GPT(cfg, k);
  ref.init(5);
  const genesis = ref.params.slice();
  const specs = splitStages(cfg, 3);
  const svc = new Map<string, StageService>();
  const slow = new Set(['liar']);
  const lookup = (p: string): MemoryPeer | undefined => {
    const s = svc.get(p);
    if (!s) return undefined;
    return {
      // The liar serves each call 40 ms late (a slow machine) while announcing 10¹² tokens/s.
      handle: async (h, b, from) => {
        if (slow.has(p)) await new Promise((r) => setTimeout(r, 40));
        return s.handle(h, b, from);
      },
      maxBody: s.maxBody,
    };
  };
  const ids = [['s0'], ['honest', 'liar'], ['s2']];
  for (const [i, row] of ids.entries())
    for (const id of row) {
      const links = { peerId: id, dial: async () => id, client: new StageClient(memoryTransport(id, lookup)) };
      const o = {
        config: cfg,
        spec: specs[i],
        kernels: k,
        adamw: DEFAULT_ADAMW,
        codec: { id: 'fp32' as const },
        init: (st: Stage) => st.loadFromFull(genesis),
        drivers: ['driver'],
      };
      svc.set(id, new StageService(o as never, links));
    }
  const driver = new PipelineDriver({
    transport: memoryTransport('driver', lookup),
    stages: ids,
    dim: cfg.dim,
    vocabSize: cfg.vocabSize,
    codec: { id: 'fp32' },
    routing: 'balance',
    inflight: 2,
    throughputOf: (p) => (p === 'liar' ? 1e12 : 1000),
  });
  for (const b of batches(6, 2, 8)) await driver.step(b, 8, T, 8, LR);
  const got = (p: string) => svc.get(p)!.state.stats.count.fwd;
  const share = got('liar') / (got('liar') + got('honest'));
  console.log(
    `micro-batches through stage 1: liar (announces 1e12 tok/s, 40 ms slower per call) ${got('liar')}, honest (announces 1000) ${got('honest')}: liar's share ${(100 * share).toFixed(0)}%`,
  );
  assert.ok(share < 0.5, `the liar took ${(100 * share).toFixed(0)}% of the micro-batches`);
});
