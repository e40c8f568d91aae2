/**
 * Replicas that train on different data and sync with DiLoCo (issue 8, src/pipeline/diloco.ts):
 * 3 stages × 2 replicas on loopback libp2p form 2 pipelines, each trained on its own batches;
 * every 4 steps the replicas of each stage exchange int8 pseudo-gradients and apply the same outer
 * Nesterov step. Checks: replicas differ between syncs and are bit-identical after each; the last
 * stage's head copy equals the first stage's wte after a sync; the sync bytes are exactly the
 * codec's sizes; the loss falls; a pipeline whose peer dies is dropped and the other trains on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GPT } from '../src/model/gpt.js';
import { DEFAULT_ADAMW } from '../src/train/adamw.js';
import { loadKernels } from '../src/kernels/index.js';
import { startLocalPipeline } from '../src/pipeline/local.js';
import { DilocoPipelines } from '../src/pipeline/diloco.js';
import { StageClient, libp2pTransport } from '../src/pipeline/stage-client.js';
import { encodedSize, getCodec } from '../src/swarm/compress/index.js';
import { Rng } from '../src/util/rng.js';
import type { Batch } from '../src/data/batches.js';

const cfg = { vocabSize: 64, ctx: 16, dim: 32, layers: 3, heads: 4 };
const B = 4,
  T = 16;

test(
  '2 pipelines × 3 stages train apart and sync every 4 steps: identical replicas after each sync, exact bytes, a dead pipeline dropped',
  { timeout: 90_000 },
  async () => {
    const k = loadKernels({ threads: 1 });
    const g = new GPT(cfg, k);
    g.init(11);
    const lp = await startLocalPipeline({
      config: cfg,
      stages: 3,
      replicas: 2,
      kernels: k,
      adamw: DEFAULT_ADAMW,
      codec: { id: 'int8' },
      genesis: g.params,
    });
    const stages = lp.servers.map((row) => row.map((s) => lp.peerOf(s)));
    const dl = new DilocoPipelines({
      host: lp.driverHost,
      stages,
      dim: cfg.dim,
      vocabSize: cfg.vocabSize,
      codec: { id: 'int8' },
      diloco: { every: 4, codec: 'int8', outer: { lr: 0.7, momentum: 0.9 } },
    });
    const rngs = [new Rng(1), new Rng(2)];
    const batch = (r: number): Batch => {
      const inputs = new Int32Array(B * T),
        targets = new Int32Array(B * T);
      for (let i = 0; i < inputs.length; i++) {
        inputs[i] = rngs[r].nextInt(cfg.vocabSize);
        targets[i] = (inputs[i] * 7 + 3) % cfg.vocabSize;
      }
      return { inputs, targets };
    };
    const client = new StageClient(libp2pTransport(lp.driverHost));
    const o = () => ({ maxBody: 1 << 24, signal: AbortSignal.timeout(5000) });
    const embed = (peer: string) => client.call(peer, 'embed', { set: false }, new Uint8Array(0), o());
    const digest = async (p: string) => (await client.control(p, 'info', {}, o())).digest;
    const digests = async (i: number) => Promise.all(stages[i].map(digest));
    try {
      const losses: number[] = [];
      for (let s = 1; s <= 12; s++) {
        const r = await dl.step(batch, B, T, 2, 3e-3);
        losses.push(r.loss);
        assert.equal(r.synced !== null, s % 4 === 0, `a sync after step ${s}: ${s % 4 === 0}`);
        if (s === 2)
          for (let i = 0; i < 3; i++) {
            const [a, b] = await digests(i);
            assert.notEqual(a, b, `stage ${i}: replicas on different data differ between syncs`);
          }
        if (s % 4 === 0) {
          for (let i = 0; i < 3; i++) {
            const [a, b] = await digests(i);
            assert.equal(a, b, `stage ${i}: replicas identical after the sync of step ${s}`);
          }
          for (let r = 0; r < 2; r++) {
            const [wte, head] = await Promise.all([embed(stages[0][r]), embed(stages[2][r])]);
            assert.deepEqual(head.body, wte.body, 'the head copy is re-tied to wte');
          }
        }
      }
      // Bytes per sync: per stage, 2 replicas send Δ and receive the mean (int8, exact sizes), plus the re-tie (wte out and in, fp32, per pipeline).
      const sizes = lp.servers.map((row) => row[0].stage.numParams);
      const perSync = sizes.reduce((t, n) => t + 4 * encodedSize('int8', n), 0) + 2 * 2 * 4 * cfg.vocabSize * cfg.dim;
      assert.equal(dl.syncs, 3);
      assert.equal(dl.syncBytes, 3 * perSync);
      const early = (losses[0] + losses[1]) / 2,
        late = (losses[10] + losses[11]) / 2;
      assert.ok(late < early - 0.1, `it learned (${early.toFixed(3)} → ${late.toFixed(3)})`);

      // Pipeline 1 loses its stage-1 peer: it is dropped, pipeline 0 trains and syncs on alone.
      await lp.kill(1, 1);
      for (let s = 13; s <= 16; s++) await dl.step(batch, B, T, 2, 3e-3);
      assert.deepEqual(dl.alive, [0]);
      assert.equal(dl.dropped.length, 1);
      assert.equal(dl.dropped[0].pipeline, 1);
      assert.equal(dl.syncs, 4);
      process.stderr.write(
        `pipeline-diloco: loss ${early.toFixed(3)} → ${late.toFixed(3)}; ${perSync} sync bytes per sync (${(perSync / sizes.reduce((a, b) => a + b)).toFixed(2)} per parameter)\n`,
      );
    } finally {
      await lp.close();
    }
  },
);

test("a hostile replica's Δ (other codec parameters, a huge count) drops its pipeline; nothing is decoded from it", async () => {
  const k = loadKernels({ threads: 1 });
  const g = new GPT(cfg, k);
  g.init(12);
  const lp = await startLocalPipeline({
    config: cfg,
    stages: 2,
    replicas: 3,
    kernels: k,
    adamw: DEFAULT_ADAMW,
    codec: { id: 'int8' },
    genesis: g.params,
  });
  const stages = lp.servers.map((row) => row.map((s) => lp.peerOf(s)));
  const honest = libp2pTransport(lp.driverHost);
  const sparse = { chunk: 256, k: 8 };
  // Replica 1 of stage 0 answers `delta` with its own codec parameters (k = chunk: a dense
  // payload under a sparse tag); replica 2 claims 2^30 values.
  const transport = {
    async call(peer: string, head: unknown, body: Uint8Array, o: { maxBody: number; signal: AbortSignal }) {
      const rep = await honest.call(peer, head, body, o);
      if ((head as { op?: string }).op !== 'delta') return rep;
      const n = (rep.head as { n: number }).n;
      if (peer === stages[0][1]) {
        const bytes = getCodec('sparse', { chunk: 64, k: 64 }).encode(new Float32Array(n).fill(1)).bytes;
        return { ...rep, body: bytes };
      }
      if (peer === stages[0][2]) return { ...rep, head: { n: 1 << 30 } };
      return rep;
    },
  };
  const dl = new DilocoPipelines({
    transport,
    stages,
    dim: cfg.dim,
    vocabSize: cfg.vocabSize,
    codec: { id: 'int8' },
    diloco: { every: 1, codec: 'sparse', sparse, outer: { lr: 0.7, momentum: 0.9 } },
  });
  const rng = new Rng(3);
  const batch = (): Batch => {
    const inputs = new Int32Array(B * T),
      targets = new Int32Array(B * T);
    for (let i = 0; i < inputs.length; i++) {
      inputs[i] = rng.nextInt(cfg.vocabSize);
      targets[i] = (inputs[i] * 7 + 3) % cfg.vocabSize;
    }
    return { inputs, targets };
  };
  try {
    const r = await dl.step(batch, B, T, 2, 3e-3);
    assert.ok(r.synced, 'the sync ran');
    assert.deepEqual(dl.alive, [0], 'both hostile replicas dropped their pipelines');
    const reasons = dl.dropped.map((d) => `${d.pipeline}: ${d.reason}`).sort();
    assert.match(reasons[0], /^1: .*(sparse|chunk|bytes)/, reasons[0]);
    assert.match(reasons[1], /^2: .*over the cap/, reasons[1]);
    await dl.step(batch, B, T, 2, 3e-3);
    assert.equal(dl.syncs, 2, 'the honest pipeline syncs on alone');
  } finally {
    await lp.close();
  }
});
