/**
 * The stage map of a pipeline run (issue 8): the pure `stageRows` (who holds which stage: routed
 * but silent peers, announced but idle peers, restoring peers, sizes that add up to the model),
 * and the dashboard API over a real local pipeline (3 stages × 2 replicas on loopback): the stage
 * map lists exactly the peers that hold each stage, a killed replica leaves it, the loss chart
 * gets one point per step, and Generate samples through the stage holders.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GPT } from '../src/model/gpt.js';
import { loadKernels } from '../src/kernels/index.js';
import { startLocalPipeline } from '../src/pipeline/local.js';
import { defaultPipeManifest, pipeManifest } from '../src/pipeline/run.js';
import { localDashSource, pipeSummary, stageRows, stageSizes } from '../src/dashboard/pipeline.js';
import { createDashboardApp } from '../src/dashboard/server.js';
import type { StageRow } from '../src/dashboard/state.js';
import type { Batch } from '../src/data/batches.js';
import { Rng } from '../src/util/rng.js';

const cfg = { vocabSize: 64, ctx: 16, dim: 32, layers: 3, heads: 4 };

test('stageRows: routed and announced holders, readiness, throughput sums, sizes', () => {
  const rows = stageRows(
    cfg,
    3,
    [
      { peer: 'b', stage: 0, ready: true, throughput: 100 },
      { peer: 'a', stage: 0, ready: true, throughput: 50 },
      { peer: 'c', stage: 1, ready: false, throughput: 70 },
      { peer: 'x', stage: 2, ready: true, throughput: 10 },
    ],
    [['b'], ['d'], []],
    'b',
  );
  assert.deepEqual(
    rows.map((r) => r.layers),
    [
      [0, 1],
      [1, 2],
      [2, 3],
    ],
  );
  // Serving holders first; an announced peer the driver does not route to is listed, not serving.
  assert.deepEqual(
    rows[0].holders.map((h) => [h.peer, h.serving, h.self]),
    [
      ['b', true, true],
      ['a', false, false],
    ],
  );
  assert.equal(rows[0].throughput, 150);
  // A routed peer that has not announced itself is serving and ready, throughput unknown.
  assert.deepEqual(
    rows[1].holders.map((h) => [h.peer, h.ready, h.serving, h.throughput]),
    [
      ['d', true, true, null],
      ['c', false, false, 70],
    ],
  );
  assert.deepEqual(
    rows[2].holders.map((h) => h.peer),
    ['x'],
  );
  const gpt = new GPT(cfg, loadKernels({ threads: 1 }));
  assert.equal(
    stageSizes(cfg, 3).reduce((a, b) => a + b, 0),
    gpt.numParams + cfg.vocabSize * cfg.dim,
    'stages hold the model once, plus the head copy of the tied embedding',
  );
  const { manifest, runId } = pipeManifest({
    ...defaultPipeManifest({ stages: 3, layers: 3, codec: { id: 'int8' } }),
    model: cfg,
  });
  assert.equal(pipeSummary(runId, manifest).params, gpt.numParams);
  assert.throws(() => stageRows(cfg, 4, [], [], null), /cannot cut 3 layers into 4 stages/);
});

test(
  'dashboard of a local pipeline: the stage map follows the replicas, one point per step, generate through the stages',
  { timeout: 60_000 },
  async () => {
    const { manifest: m, runId } = pipeManifest({
      ...defaultPipeManifest({ stages: 3, layers: 3, codec: { id: 'int8' }, checkpointEvery: 0 }),
      model: cfg,
      batch: 4,
    });
    const k = loadKernels({ threads: 1 });
    const g = new GPT(m.model, k);
    g.init(3);
    const lp = await startLocalPipeline({
      config: m.model,
      stages: 3,
      replicas: 2,
      kernels: k,
      adamw: m.adamw,
      codec: m.codec,
      genesis: g.params,
    });
    // A toy tokenizer: one character per token.
    const tok = {
      encodeOrdinary: (s: string) => [...s].map((c) => c.charCodeAt(0) % cfg.vocabSize),
      decode: (t: number[]) => t.map((x) => String.fromCharCode(97 + (x % 26))).join(''),
    };
    const { sampleThrough } = await import('../src/dashboard/pipeline.js');
    const source = localDashSource(
      lp,
      runId,
      m,
      sampleThrough(() => lp.driver, tok, cfg.ctx),
    );
    const { app, hub } = createDashboardApp(source, { generateGapMs: 0 });
    hub.start(60_000);
    const status = async () =>
      (await (await app.request('/api/status')).json()) as {
        run: { kind: string; stages: number; params: number };
        round: number;
        stages: StageRow[];
      };
    try {
      const rng = new Rng(9);
      const batch = (): Batch => {
        const inputs = new Int32Array(4 * cfg.ctx),
          targets = new Int32Array(4 * cfg.ctx);
        for (let i = 0; i < inputs.length; i++) {
          inputs[i] = rng.nextInt(cfg.vocabSize);
          targets[i] = (inputs[i] * 5 + 1) % cfg.vocabSize;
        }
        return { inputs, targets };
      };
      const step = async (s: number) => {
        const r = await lp.driver.step(batch(), 4, cfg.ctx, 2, 3e-3);
        source.report({
          step: s,
          trainLoss: r.loss,
          bytesSent: 1,
          bytesReceived: 1,
          seconds: 0.1,
          tokens: 4 * cfg.ctx,
        });
      };
      for (let s = 0; s < 3; s++) await step(s);
      hub.poll(false);
      let st = await status();
      assert.equal(st.run.kind, 'pipeline');
      assert.equal(st.run.stages, 3);
      assert.equal(st.round, 2);
      assert.equal(st.stages.length, 3);
      for (const [i, row] of st.stages.entries()) {
        assert.deepEqual(
          row.holders.map((h) => h.peer).sort(),
          lp.servers[i].map((srv) => lp.peerOf(srv)).sort(),
          `stage ${i}: exactly its two replicas`,
        );
        assert.ok(row.holders.every((h) => h.ready && h.serving && (h.throughput ?? 0) > 0));
      }
      const metrics = (await (await app.request('/api/metrics')).json()) as {
        points: { round: number; trainLoss: number }[];
      };
      assert.deepEqual(
        metrics.points.map((p) => p.round),
        [0, 1, 2],
      );
      const peers = (await (await app.request('/api/peers')).json()) as {
        peers: { id: string; roundsContributed: number }[];
      };
      assert.equal(
        peers.peers.filter((p) => p.roundsContributed === 3).length,
        6,
        'every stage peer credited for every step',
      );

      // A replica of stage 1 dies: the next step still runs, and the map drops it.
      const victim = lp.peerOf(lp.servers[1][0]);
      await lp.kill(1, 0);
      await step(3);
      hub.poll(false);
      st = await status();
      assert.deepEqual(
        st.stages[1].holders.map((h) => h.peer),
        [lp.peerOf(lp.servers[1][1])],
      );
      assert.ok(!st.stages.some((r) => r.holders.some((h) => h.peer === victim)));

      const gen = await app.request('/api/generate', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'abc', maxTokens: 5 }),
      });
      assert.equal(gen.status, 200, await gen.clone().text());
      assert.equal(((await gen.json()) as { tokens: number }).tokens, 5);
    } finally {
      hub.stop();
      await lp.close();
    }
  },
);
