/**
 * Pipeline stages of Llama blocks (llama-stage.ts): S stages compute what one Llama computes
 * (loss and every gradient, GQA, llama3 RoPE, tied and untied heads, micro-batches), hold only
 * their own tensors, initialise as the whole model does, and 3 stage peers over libp2p train step
 * for step like one process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadKernels } from '../src/kernels/index.js';
import type { Kernels } from '../src/kernels/api.js';
import { Llama, llamaParamCount, llamaSpecs } from '../src/model/llama.js';
import { TINY_LLAMA, type LlamaConfig } from '../src/model/llama-config.js';
import { LlamaStage, llamaStageSpecs } from '../src/model/llama-stage.js';
import { anyStageSpecs, createStage, splitStages } from '../src/model/pipeline-stage.js';
import { startLocalPipeline } from '../src/pipeline/local.js';
import { defaultPipeManifest, defaultPipeModel, pipeManifest } from '../src/pipeline/run.js';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AdamW, DEFAULT_ADAMW } from '../src/train/adamw.js';
import { Rng } from '../src/util/rng.js';

const BASE: LlamaConfig = {
  ...TINY_LLAMA,
  vocabSize: 61,
  ctx: 16,
  dim: 32,
  layers: 3,
  heads: 4,
  kvHeads: 2,
  headDim: 8,
  hidden: 40,
  ropeTheta: 500,
  ropeScaling: { type: 'llama3', factor: 4, lowFreqFactor: 1, highFreqFactor: 2, originalMaxPositions: 8 },
};
const CONFIGS: [string, LlamaConfig][] = [
  ['untied', { ...BASE, tiedEmbeddings: false }],
  ['tied', { ...BASE, tiedEmbeddings: true }],
];

function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0,
    den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

for (const [name, cfg] of CONFIGS)
  test(`S Llama stages = one Llama (${name} head): same loss, same gradients, micro-batches included`, () => {
    const k = loadKernels({ threads: 1 });
    const m = new Llama(cfg, k);
    m.init(7);
    const B = 4,
      T = 12,
      rng = new Rng(3);
    const tokens = Int32Array.from({ length: B * T }, () => rng.nextInt(cfg.vocabSize));
    const targets = Int32Array.from({ length: B * T }, (_, i) => (i % 9 === 0 ? -1 : rng.nextInt(cfg.vocabSize)));
    m.zeroGrad();
    // The reference in the same two micro-batches (the loss is a mean per micro-batch).
    let want = 0;
    for (const mb of [0, 1]) {
      const sl = (x: Int32Array) => x.subarray(mb * 2 * T, (mb + 1) * 2 * T);
      want += m.forwardBackward(sl(tokens), sl(targets), 2, T, 0.5) / 2;
    }
    for (const S of [1, 2, 3]) {
      const stages = splitStages(cfg, S).map((sp) => {
        const s = createStage(cfg, sp, k);
        s.loadFromFull(m.params);
        s.zeroGrad();
        return s;
      });
      let loss = 0;
      for (const mb of [0, 1]) {
        const sl = (x: Int32Array) => x.subarray(mb * 2 * T, (mb + 1) * 2 * T);
        let x: Int32Array | Float32Array = sl(tokens);
        for (const s of stages) x = s.forward(mb, x, 2, T);
        loss += stages[S - 1].loss(mb, sl(targets), true, 0.5) / 2;
        let d: Float32Array | null = null;
        for (let i = S - 1; i >= 0; i--) d = stages[i].backward(mb, d);
      }
      assert.ok(Math.abs(loss - want) < 1e-6, `S=${S}: loss ${loss} vs ${want}`);
      const tied = S > 1 && cfg.tiedEmbeddings;
      assert.equal(stages[0].tiedGrad() !== null, cfg.tiedEmbeddings);
      if (tied) {
        const t0 = stages[0].tiedGrad()!,
          t1 = stages[S - 1].tiedGrad()!;
        for (let i = 0; i < t0.length; i++) t0[i] = t1[i] = t0[i] + t1[i];
      }
      const full = new Float32Array(llamaParamCount(cfg));
      for (const s of stages) s.writeToFull(full, s.grads);
      const e = relErr(full, m.grads);
      assert.ok(e < 1e-6, `S=${S}: gradients differ (rel ${e})`);
      const parts =
        stages.reduce((t, s) => t + s.sumSquares(), 0) - (tied ? k.sumSquares(stages[S - 1].tiedGrad()!) : 0);
      assert.ok(Math.abs(Math.sqrt(parts) - Math.sqrt(k.sumSquares(m.grads))) < 1e-5);
    }
  });

test('LlamaStage.init(seed) equals the same tensors of Llama.init(seed); stages hold only their tensors', () => {
  const k = loadKernels({ threads: 1 });
  for (const [, cfg] of CONFIGS) {
    const m = new Llama(cfg, k);
    m.init(11);
    const specs = splitStages(cfg, 3);
    const owned: string[] = [];
    for (const sp of specs) {
      const s = new LlamaStage(cfg, sp, k);
      s.init(11);
      const want = new LlamaStage(cfg, sp, k);
      want.loadFromFull(m.params);
      assert.deepEqual(s.params, want.params, `stage ${sp.index}`);
      assert.deepEqual(
        s.tensorNames(),
        anyStageSpecs(cfg, sp).map((t) => t.name),
      );
      owned.push(
        ...llamaStageSpecs(cfg, sp)
          .filter((t) => t.full !== null)
          .map((t) => t.name),
      );
      assert.ok(s.numParams < 0.75 * m.numParams, `stage ${sp.index}: ${s.numParams} of ${m.numParams}`);
    }
    assert.deepEqual(
      owned.sort(),
      llamaSpecs(cfg)
        .map((t) => t.name)
        .sort(),
      'together the stages hold the model once',
    );
  }
  const cfg = CONFIGS[0][1];
  const [s0, s1, s2] = splitStages(cfg, 3).map((sp) => new LlamaStage(cfg, sp, k));
  assert.deepEqual(
    s0.tensorNames().filter((n) => !n.startsWith('layers.0.')),
    ['embed'],
  );
  assert.ok(s1.tensorNames().every((n) => n.startsWith('layers.1.')));
  assert.deepEqual(
    s2.tensorNames().filter((n) => !n.startsWith('layers.2.')),
    ['norm', 'lm_head'],
  );
  assert.throws(() => s0.forward(0, new Int32Array([1, 2, 999]), 1, 3), /outside the vocabulary/);
  assert.throws(() => s1.forward(0, new Float32Array(5), 1, 3), /takes 96 activations/);
  assert.throws(() => s1.forward(0, new Float32Array(17 * 32), 1, 17), /bad batch shape/);
  assert.throws(() => s1.backward(42, new Float32Array(96)), /no forward pass held/);
  assert.throws(() => s1.loss(0, new Int32Array(3), true), /only the last stage/);
  assert.throws(() => new LlamaStage(cfg, { index: 1, count: 3, l0: 0, l1: 2 }, k), /must hold layers/);
});

/** One process's AdamW training on the same micro-batches: the pipeline's reference. */
function referenceStep(m: Llama, opt: AdamW, inputs: Int32Array, targets: Int32Array, B: number, T: number) {
  const MICRO = 2,
    n = (B / MICRO) * T;
  m.zeroGrad();
  let loss = 0;
  for (let i = 0; i < MICRO; i++)
    loss +=
      m.forwardBackward(
        inputs.subarray(i * n, (i + 1) * n),
        targets.subarray(i * n, (i + 1) * n),
        B / MICRO,
        T,
        1 / MICRO,
      ) / MICRO;
  const norm = opt.update(m.params, m.grads, 1e-2);
  return { loss, norm };
}

for (const [name, cfg] of CONFIGS)
  test(
    `3 Llama stage peers over libp2p train like one process (${name} head), each holding only its stage`,
    { timeout: 60_000 },
    async () => {
      const k: Kernels = loadKernels({ threads: 1 });
      const ref = new Llama(cfg, k);
      ref.init(5);
      const opt = new AdamW(null, DEFAULT_ADAMW, k, llamaSpecs(cfg));
      const lp = await startLocalPipeline({
        config: cfg,
        stages: 3,
        kernels: k,
        adamw: DEFAULT_ADAMW,
        codec: { id: 'fp32' },
        genesis: ref.params.slice(),
        inflight: 1,
      });
      try {
        const B = 4,
          T = 16,
          rng = new Rng(1);
        for (let step = 0; step < 5; step++) {
          const inputs = Int32Array.from({ length: B * T }, () => rng.nextInt(cfg.vocabSize));
          const targets = inputs.map((x) => (x * 7 + 3) % cfg.vocabSize);
          const got = await lp.driver.step({ inputs, targets }, B, T, 2, 1e-2);
          const want = referenceStep(ref, opt, inputs, targets, B, T);
          assert.ok(Math.abs(got.loss - want.loss) < 1e-4, `step ${step}: loss ${got.loss} vs ${want.loss}`);
          assert.ok(
            Math.abs(got.gradNorm - want.norm) < 1e-3 * Math.max(1, want.norm),
            `step ${step}: grad norm ${got.gradNorm} vs ${want.norm}`,
          );
        }
        const full = new Float32Array(ref.numParams);
        for (const row of lp.servers) row[0].stage.writeToFull(full);
        let max = 0;
        for (let i = 0; i < full.length; i++) max = Math.max(max, Math.abs(full[i] - ref.params[i]));
        console.log(`Llama pipeline (${name}) vs one process after 5 AdamW steps: max |Δθ| ${max.toExponential(2)}`);
        assert.ok(max < 2e-3, `weights differ by ${max}`);
        for (const [i, row] of lp.servers.entries())
          assert.deepEqual(
            row[0].stage.tensorNames(),
            llamaStageSpecs(cfg, splitStages(cfg, 3)[i]).map((t) => t.name),
          );
      } finally {
        await lp.close();
      }
    },
  );

test('a pipeline manifest holds a Llama config (its run id covers it); a bad one is refused', () => {
  const codec = { id: 'int8' as const };
  const a = pipeManifest(
    defaultPipeManifest({ stages: 2, layers: 2, codec, model: defaultPipeModel({ layers: 2, arch: 'llama' }) }),
  );
  assert.equal((a.manifest.model as LlamaConfig).arch, 'llama');
  const b = pipeManifest(defaultPipeManifest({ stages: 2, layers: 2, codec }));
  assert.notEqual(a.runId, b.runId);
  const c = pipeManifest(
    defaultPipeManifest({
      stages: 2,
      layers: 2,
      codec,
      model: defaultPipeModel({ layers: 2, arch: 'llama', kvHeads: 1 }),
    }),
  );
  assert.notEqual(a.runId, c.runId);
  assert.throws(
    () => pipeManifest(defaultPipeManifest({ stages: 2, layers: 2, codec, model: { ...BASE, kvHeads: 3 } })),
    /invalid pipeline manifest/,
  );
  assert.throws(
    () => pipeManifest(defaultPipeManifest({ stages: 4, layers: 3, codec, model: BASE })),
    /more stages than layers/,
  );
});

test(
  'tessera pipeline --arch llama: Llama stage peers train, a killed stage comes back from its checkpoint shares',
  { timeout: 120_000 },
  () => {
    const bin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'tessera.js');
    const r = spawnSync(
      process.execPath,
      [
        bin,
        'pipeline',
        '--arch',
        'llama',
        '--stages',
        '3',
        '--layers',
        '3',
        '--steps',
        '10',
        '--checkpoint-every',
        '4',
        '--kill',
        '1@9',
        '--json',
      ],
      { encoding: 'utf8', timeout: 110_000 },
    );
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as {
      steps: number;
      valLoss: number;
      recoveries: { stage: number; fromStep: number }[];
      usagePerStage: number[];
    };
    assert.equal(j.steps, 10);
    assert.ok(j.valLoss < Math.log(512) - 0.3, `val loss ${j.valLoss}`);
    assert.deepEqual(
      j.recoveries.map((x) => [x.stage, x.fromStep]),
      [[1, 8]],
    );
    assert.equal(j.usagePerStage.length, 3);
    console.log(
      `tessera pipeline --arch llama: val loss ${j.valLoss.toFixed(3)} after 10 steps, stage 1 restored from step 8`,
    );
  },
);
