/**
 * `tessera sim` core: exact byte accounting, equal token budgets, determinism, and the sanity
 * identity "DiLoCo with one worker, outer lr 1 and no momentum is plain training".
 * A tiny model on the Brown corpus (vocab 300, the BPE minimum region) keeps it to seconds.
 */
import { test } from 'node:test';
import { InvalidInputError } from '../src/util/errors.js';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadKernels } from '../src/kernels/index.js';
import { loadCorpus, prepareDataset, BatchSampler } from '../src/data/index.js';
import { GPT } from '../src/model/gpt.js';
import { weightsHash } from '../src/model/checkpoint.js';
import type { ModelConfig } from '../src/model/config.js';
import { AdamW, DEFAULT_ADAMW } from '../src/train/adamw.js';
import { Trainer } from '../src/train/trainer.js';
import { encodedSize } from '../src/swarm/compress/index.js';
import { OuterNesterov, aggregate } from '../src/swarm/outer.js';
import { lrAt } from '../src/train/schedule.js';
import {
  DEFAULT_ARM_SETTINGS,
  DEFAULT_SIM,
  dpBytesPerStep,
  evalSchedule,
  parseArm,
  runSim,
  samplerSeed,
  type SimOptions,
} from '../src/swarm/sim.js';
import { simTable, simPlot } from '../src/cli/sim.js';

const model: ModelConfig = { vocabSize: 300, ctx: 16, dim: 16, layers: 1, heads: 2 };
const kernels = loadKernels({ threads: 1, deterministic: true });
const cacheDir = mkdtempSync(join(tmpdir(), 'tessera-sim-'));
const ds = prepareDataset({ corpus: loadCorpus('brown'), vocabSize: model.vocabSize, cacheDir });
const data = { train: ds.train, val: ds.val };

function opts(over: Partial<SimOptions>): SimOptions {
  return {
    ...DEFAULT_SIM,
    model,
    workers: 3,
    batch: 2,
    tokens: 3 * 2 * 16 * 10,
    arms: [],
    lr: 1e-2,
    warmup: 2,
    evalPoints: 3,
    evalBatches: 2,
    finalEvalBatches: 4,
    seed: 7,
    ...over,
  };
}

test('arm names parse; bad ones are rejected', () => {
  assert.deepEqual(parseArm('dp'), {
    name: 'dp',
    kind: 'dp',
    H: 1,
    codec: null,
    efBeta: null,
    outer: null,
    delayed: false,
  });
  const d = parseArm('diloco-30');
  assert.equal(d.H, 30);
  assert.equal(d.codec, 'fp32');
  assert.equal(d.efBeta, null);
  assert.deepEqual(d.outer, { lr: 0.7, momentum: 0.9 });
  const s = parseArm('diloco-30-sparse');
  assert.equal(s.codec, 'sparse');
  assert.equal(s.efBeta, 1);
  const sl = parseArm('sparseloco-30');
  assert.equal(sl.codec, 'sparse');
  assert.equal(sl.efBeta, 0.95);
  assert.deepEqual(sl.outer, { lr: 1, momentum: 0 });
  // --sparseloco-lr / --sparseloco-momentum reach the arm through ArmDefaults.
  assert.deepEqual(
    parseArm('sparseloco-30', { ...DEFAULT_ARM_SETTINGS, sparselocoOuter: { lr: 3, momentum: 0.5 } }).outer,
    { lr: 3, momentum: 0.5 },
  );
  assert.equal(d.delayed, false);
  assert.equal(s.delayed, false);
  assert.equal(sl.delayed, false);
  // '-delayed': the same arm with the one-step-delayed outer update.
  assert.deepEqual(parseArm('diloco-30-delayed'), { ...d, name: 'diloco-30-delayed', delayed: true });
  assert.deepEqual(parseArm('diloco-30-sparse-delayed'), { ...s, name: 'diloco-30-sparse-delayed', delayed: true });
  assert.deepEqual(parseArm('diloco-30-fp16-delayed').codec, 'fp16');
  assert.deepEqual(parseArm('sparseloco-30-delayed'), { ...sl, name: 'sparseloco-30-delayed', delayed: true });
  for (const bad of [
    'diloco',
    'diloco-0',
    'diloco-30-zip',
    'DP',
    'sparseloco-x',
    'dp-delayed',
    'diloco-30-delayed-sparse',
    'diloco-delayed',
    'sparseloco-30-delayed-delayed',
  ]) {
    assert.throws(() => parseArm(bad), /arm/, bad);
  }
  assert.deepEqual(evalSchedule(10, 3), [0, 3, 7, 10]);
});

let accounting: Awaited<ReturnType<typeof runSim>>;

test('byte accounting is exact and every arm consumes the same tokens', async () => {
  const M = 3,
    S = 10,
    H = 4; // S not a multiple of H: the last round is shorter
  const armNames = [
    'dp',
    `diloco-${H}`,
    `diloco-${H}-fp16`,
    `diloco-${H}-int8`,
    `diloco-${H}-sparse`,
    `sparseloco-${H}`,
  ];
  const sparse = { chunk: 1024, k: 16 };
  accounting = await runSim(data, kernels, opts({ workers: M, arms: armNames.map((n) => parseArm(n)), sparse }));
  const r = accounting;
  const P = r.params;
  assert.equal(r.stepsPerArm, S);
  assert.equal(r.tokensPerArm, S * M * 2 * 16);
  const rounds = Math.ceil(S / H);
  for (const a of r.arms) {
    assert.equal(a.tokens, r.tokensPerArm, `${a.name} tokens`);
    assert.equal(a.steps, S);
    assert.deepEqual(
      a.curve.map((p) => p.step),
      r.evalSteps,
      `${a.name} eval steps`,
    );
    assert.equal(a.curve[0].bytesTotal, 0);
    assert.ok(
      Number.isFinite(a.finalValLoss) && a.finalValLoss < Math.log(300) + 0.5,
      `${a.name} loss ${a.finalValLoss}`,
    );
    if (a.kind === 'dp') {
      assert.equal(a.rounds, S);
      assert.equal(a.allWorkersSent, S * 2 * (M - 1) * 4 * P);
      assert.equal(a.allWorkersReceived, a.allWorkersSent);
      assert.ok(Math.abs(a.bytesSent - S * dpBytesPerStep(P, M)) < 1e-6 * a.bytesSent);
      assert.ok(Math.abs(dpBytesPerStep(P, M) - ((2 * (M - 1)) / M) * 4 * P) < 1e-9 * P);
      assert.equal(a.ratioTotal, 1);
      assert.equal(a.gapPct, 0);
    } else {
      const size = encodedSize(a.codec!, P, sparse);
      assert.equal(a.rounds, rounds, a.name);
      assert.equal(a.messageBytes, size, `${a.name} message`);
      assert.equal(a.allWorkersSent, rounds * M * size, `${a.name} sent`);
      assert.equal(a.allWorkersReceived, rounds * M * (M - 1) * size, `${a.name} received`);
      assert.equal(a.bytesSent, rounds * size);
      assert.equal(a.bytesReceived, rounds * (M - 1) * size);
      assert.equal(a.bytesTotal, rounds * M * size);
      const dp = r.arms[0];
      assert.ok(Math.abs(a.ratioTotal! - dp.bytesTotal / a.bytesTotal) < 1e-12 * a.ratioTotal!);
      assert.ok(Math.abs(a.ratioSent! - dp.bytesSent / a.bytesSent) < 1e-12 * a.ratioSent!);
    }
  }
  assert.equal(r.arms[1].messageBytes, 12 + 4 * P);
  // Bytes along the curve only move at completed rounds: never more than the final total.
  for (const a of r.arms)
    for (let i = 1; i < a.curve.length; i++) assert.ok(a.curve[i].bytesTotal >= a.curve[i - 1].bytesTotal);
  const table = simTable(r);
  for (const n of armNames) assert.match(table, new RegExp(`^${n} `, 'm'));
  assert.match(simPlot(r), /<svg[\s\S]*polyline/);
});

test('same seed, same weights; another seed, other weights', async () => {
  const arms = ['dp', 'diloco-4', 'diloco-4-sparse'].map((n) => parseArm(n));
  const a = await runSim(data, kernels, opts({ arms }));
  const b = await runSim(data, kernels, opts({ arms }));
  const c = await runSim(data, kernels, opts({ arms, seed: 8 }));
  for (let i = 0; i < arms.length; i++) {
    assert.equal(a.arms[i].weightsHash, b.arms[i].weightsHash, arms[i].name);
    assert.equal(a.arms[i].finalValLoss, b.arms[i].finalValLoss);
    assert.notEqual(a.arms[i].weightsHash, c.arms[i].weightsHash);
  }
  // The accounting run above used the same seed and settings for these arms.
  assert.equal(a.arms[0].weightsHash, accounting.arms[0].weightsHash);
  assert.equal(a.arms[1].weightsHash, accounting.arms[1].weightsHash);
});

/** Plain single-worker training with the sim's schedule and worker-0 batches. */
function plainTraining(o: SimOptions): Float32Array {
  const gpt = new GPT(o.model, kernels);
  gpt.init(o.seed);
  const S = Math.floor(o.tokens / (o.batch * o.model.ctx));
  const trainer = new Trainer(
    gpt,
    new AdamW(o.model, DEFAULT_ADAMW, kernels),
    { kind: 'cosine', maxLr: o.lr, minLrFrac: o.minLrFrac, warmupSteps: o.warmup, totalSteps: S, decayFrac: 0.2 },
    o.batch,
    o.model.ctx,
  );
  const sampler = new BatchSampler(data.train, o.batch, o.model.ctx, samplerSeed(o.seed, 0));
  for (let s = 0; s < S; s++) trainer.step([sampler.next()]);
  return gpt.params.slice();
}

test('M=1: DiLoCo with outer lr 1 and momentum 0 is plain training; DP is plain training bit for bit', async () => {
  const H = 6,
    S = 12;
  const o = opts({
    workers: 1,
    tokens: S * 2 * 16,
    arms: [
      parseArm('dp'),
      parseArm(`diloco-${H}`, {
        outer: { lr: 1, momentum: 0 },
        sparseEfBeta: 1,
        sparselocoEfBeta: 0.95,
        sparselocoOuter: { lr: 1, momentum: 0 },
      }),
    ],
  });
  const finals = new Map<string, Float32Array>();
  const r = await runSim(data, kernels, o, { onWeights: (n, p) => finals.set(n, p.slice()) });
  const ref = plainTraining(o);
  assert.equal(r.arms[0].weightsHash, weightsHash(ref), 'dp with one worker is exactly Trainer.step');
  assert.equal(r.arms[0].bytesTotal, 0);
  assert.equal(r.arms[1].rounds, 2);
  assert.equal(r.arms[1].messageBytes, 12 + 4 * r.params);
  assert.equal(r.arms[1].bytesTotal, 0, 'a lone worker sends to nobody');
  // θ − (θ − θ_local) is θ_local up to one float32 rounding per round.
  const d = finals.get(`diloco-${H}`)!;
  let maxDiff = 0,
    maxAbs = 0;
  for (let i = 0; i < d.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(d[i] - ref[i]));
    maxAbs = Math.max(maxAbs, Math.abs(ref[i]));
  }
  assert.ok(maxDiff <= 5e-5 * Math.max(1, maxAbs), `max |diloco − plain| = ${maxDiff}`);
  assert.ok(Math.abs(r.arms[1].finalValLoss - r.arms[0].finalValLoss) < 1e-4);
});

test('warm start: the first N steps are dp steps with dense bytes counted exactly; inner lr applies to DiLoCo only', async () => {
  const M = 3,
    S = 10,
    H = 4,
    N = 3;
  const sparse = { chunk: 1024, k: 16 };
  const arms = ['dp', `diloco-${H}`, `sparseloco-${H}`].map((n) => parseArm(n));
  const r = await runSim(data, kernels, opts({ workers: M, arms, sparse, warmStartSteps: N, innerLr: 5e-3 }));
  const P = r.params;
  assert.equal(r.warmStartSteps, N);
  assert.equal(r.innerLr, 5e-3);
  const rounds = Math.ceil((S - N) / H);
  // dp is unaffected by both options.
  assert.equal(r.arms[0].weightsHash, accounting.arms[0].weightsHash);
  for (const a of r.arms.slice(1)) {
    const size = encodedSize(a.codec!, P, sparse);
    assert.equal(a.tokens, r.tokensPerArm);
    assert.equal(a.rounds, rounds, a.name);
    assert.deepEqual(
      a.curve.map((p) => p.step),
      r.evalSteps,
    );
    assert.equal(a.allWorkersSent, N * 2 * (M - 1) * 4 * P + rounds * M * size, `${a.name} sent`);
    assert.equal(a.allWorkersReceived, N * 2 * (M - 1) * 4 * P + rounds * M * (M - 1) * size, `${a.name} received`);
    assert.ok(Math.abs(a.bytesSent - (N * dpBytesPerStep(P, M) + rounds * size)) < 1e-9 * a.bytesSent);
    // The checkpoint at step 3 (= N) sees exactly the warm-start weights and bytes.
    const p3 = a.curve.find((p) => p.step === 3)!;
    assert.equal(p3.bytesSent, N * dpBytesPerStep(P, M));
    assert.ok(Number.isFinite(a.finalValLoss));
  }
  // Every DiLoCo arm's warm start is the same dp trajectory: equal loss at step N.
  assert.equal(r.arms[1].curve.find((p) => p.step === 3)!.valLoss, r.arms[2].curve.find((p) => p.step === 3)!.valLoss);
  assert.equal(r.arms[1].curve.find((p) => p.step === 3)!.valLoss, r.arms[0].curve.find((p) => p.step === 3)!.valLoss);
  // warm start = S: every DiLoCo arm is dp.
  const all = await runSim(data, kernels, opts({ workers: M, arms: arms.slice(0, 2), warmStartSteps: 99 }));
  assert.equal(all.arms[1].weightsHash, all.arms[0].weightsHash);
  assert.equal(all.arms[1].bytesTotal, all.arms[0].bytesTotal);
  assert.equal(all.arms[1].rounds, 0);
  // A different inner lr changes DiLoCo, not dp.
  const lo = await runSim(data, kernels, opts({ workers: M, arms: arms.slice(0, 2), sparse, innerLr: 1e-3 }));
  assert.equal(lo.arms[0].weightsHash, accounting.arms[0].weightsHash);
  assert.notEqual(lo.arms[1].weightsHash, accounting.arms[1].weightsHash);
  await assert.rejects(runSimSync({ warmStartSteps: -1 }), /warmStartSteps/);
});

function runSimSync(over: Partial<SimOptions>) {
  return runSim(data, kernels, opts({ arms: [parseArm('dp')], ...over }));
}

test('-delayed: one round equals the plain arm; later rounds train from θ_{r−1} and differ, bytes unchanged', async () => {
  const M = 3,
    H = 4;
  const sparse = { chunk: 1024, k: 16 };
  const names = [`diloco-${H}`, `diloco-${H}-sparse`, `sparseloco-${H}`];
  const arms = names.flatMap((n) => [parseArm(n), parseArm(`${n}-delayed`)]);
  // (a) A single round (S = H): round 0 starts from θ_0 in both variants, so they are identical.
  const one = await runSim(data, kernels, opts({ workers: M, tokens: M * 2 * 16 * H, arms, sparse }));
  for (let i = 0; i < arms.length; i += 2) {
    const [a, b] = [one.arms[i], one.arms[i + 1]];
    assert.equal(a.rounds, 1);
    assert.equal(b.rounds, 1);
    assert.equal(a.delayed, false);
    assert.equal(b.delayed, true);
    assert.equal(b.weightsHash, a.weightsHash, b.name);
    assert.equal(b.finalValLoss, a.finalValLoss, b.name);
    assert.deepEqual(b.curve, a.curve, b.name);
  }
  // (b) Three rounds: rounds 1 and 2 start from stale weights, so the result differs; the bytes
  // (the same messages) do not; everything stays finite.
  const S = 3 * H;
  const three = await runSim(data, kernels, opts({ workers: M, tokens: M * 2 * 16 * S, arms, sparse }));
  for (let i = 0; i < arms.length; i += 2) {
    const [a, b] = [three.arms[i], three.arms[i + 1]];
    assert.equal(b.rounds, 3);
    assert.notEqual(b.weightsHash, a.weightsHash, b.name);
    assert.notEqual(b.finalValLoss, a.finalValLoss, b.name);
    assert.ok(
      Number.isFinite(b.finalValLoss) && b.finalValLoss < Math.log(300) + 0.5,
      `${b.name} loss ${b.finalValLoss}`,
    );
    for (const p of b.curve) assert.ok(Number.isFinite(p.valLoss), `${b.name} step ${p.step}`);
    assert.equal(b.allWorkersSent, a.allWorkersSent, `${b.name} sent`);
    assert.equal(b.allWorkersReceived, a.allWorkersReceived, `${b.name} received`);
    assert.equal(b.messageBytes, a.messageBytes);
  }
});

test('-delayed follows the rule exactly: base_r = θ_{max(r−1,0)}, Δ = base_r − θ_local, θ_{r+1} = Outer(θ_r, mean Δ)', async () => {
  const M = 2,
    H = 3,
    S = 10; // 4 rounds, the last one shorter
  const outerSettings = { lr: 0.9, momentum: 0.5 };
  const arm = parseArm(`diloco-${H}-delayed`, { ...DEFAULT_ARM_SETTINGS, outer: outerSettings });
  const o = opts({ workers: M, tokens: M * 2 * 16 * S, arms: [arm] });
  const r = await runSim(data, kernels, o);
  // Reference: the same primitives, written out.
  const gpt = new GPT(o.model, kernels);
  gpt.init(o.seed);
  const theta = gpt.params.slice();
  let prev: Float32Array | null = null;
  const P = theta.length;
  const sched = {
    kind: 'cosine' as const,
    maxLr: o.lr,
    minLrFrac: o.minLrFrac,
    warmupSteps: o.warmup,
    totalSteps: S,
    decayFrac: 0.2,
  };
  const opts_ = Array.from({ length: M }, () => new AdamW(o.model, o.adamw, kernels));
  const samplers = Array.from(
    { length: M },
    (_, w) => new BatchSampler(data.train, o.batch, o.model.ctx, samplerSeed(o.seed, w)),
  );
  const outer = new OuterNesterov(P, outerSettings);
  for (let start = 0; start < S; start += H) {
    const base = prev ?? theta;
    const deltas: Float32Array[] = [];
    for (let w = 0; w < M; w++) {
      gpt.params.set(base);
      for (let s = start; s < Math.min(S, start + H); s++) {
        const b = samplers[w].next();
        gpt.zeroGrad();
        gpt.forwardBackward(b.inputs, b.targets, o.batch, o.model.ctx);
        opts_[w].update(gpt.params, gpt.grads, lrAt(sched, s));
      }
      deltas.push(base.map((x, i) => x - gpt.params[i]));
    }
    prev = theta.slice();
    outer.step(theta, aggregate(deltas, [1, 1]));
  }
  assert.equal(r.arms[0].rounds, 4);
  assert.equal(r.arms[0].weightsHash, weightsHash(theta));
});

test('-shift<k>: parsed; one round equals the plain arm; later rounds begin k steps on θ_{r−1}, differ, bytes unchanged', async () => {
  assert.equal(parseArm('diloco-4-sparse-shift2').shift, 2);
  assert.equal(parseArm('sparseloco-30-shift5').shift, 5);
  assert.equal(parseArm('diloco-30').shift, undefined);
  assert.deepEqual([parseArm('sparseloco-30-eager5').shift, parseArm('sparseloco-30-eager5').eager], [5, true]);
  for (const bad of ['dp-shift1', 'diloco-4-shift5', 'diloco-4-shift0', 'diloco-4-delayed-shift1'])
    assert.throws(() => parseArm(bad), InvalidInputError, bad);
  const M = 2,
    H = 4;
  const arms = [parseArm(`diloco-${H}`), parseArm(`diloco-${H}-shift2`), parseArm(`diloco-${H}-shift${H}`)];
  const eager = parseArm(`diloco-${H}-eager2`);
  const one = await runSim(data, kernels, opts({ workers: M, tokens: M * 2 * 16 * H, arms: [...arms, eager] }));
  for (const b of one.arms.slice(1))
    assert.equal(b.weightsHash, one.arms[0].weightsHash, `${b.name}: round 0 has nothing to overlap`);
  const e3 = await runSim(data, kernels, opts({ workers: M, tokens: M * 2 * 16 * 3 * H, arms: [arms[1], eager] }));
  assert.notEqual(e3.arms[1].weightsHash, e3.arms[0].weightsHash, 'eager begins on a different point than shift');
  assert.ok(Number.isFinite(e3.arms[1].finalValLoss) && e3.arms[1].eager);
  const three = await runSim(data, kernels, opts({ workers: M, tokens: M * 2 * 16 * 3 * H, arms }));
  const [a, b, c] = three.arms;
  assert.notEqual(b.weightsHash, a.weightsHash);
  assert.notEqual(c.weightsHash, b.weightsHash);
  for (const x of [b, c]) {
    assert.ok(Number.isFinite(x.finalValLoss), x.name);
    assert.equal(x.allWorkersSent, a.allWorkersSent);
    assert.equal(x.shift, x === b ? 2 : H);
  }
});
