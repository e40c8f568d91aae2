/**
 * Pipeline stages (issue 8): S stages compute exactly what one GPT computes, and hold only their
 * own tensors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GPT } from '../src/model/gpt.js';
import { Stage, splitStages, stageSpecs } from '../src/model/stage.js';
import { paramCount, paramSpecs } from '../src/model/params.js';
import { loadKernels } from '../src/kernels/index.js';
import { Rng } from '../src/util/rng.js';
import { subspaceBasis } from '../src/pipeline/act-codec.js';

const cfg = { vocabSize: 97, ctx: 16, dim: 32, layers: 3, heads: 4 };

function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0,
    den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

test('splitStages: contiguous, balanced, every layer once; bad counts refused', () => {
  assert.deepEqual(
    splitStages({ ...cfg, layers: 5 }, 3).map((s) => [s.l0, s.l1]),
    [
      [0, 2],
      [2, 4],
      [4, 5],
    ],
  );
  assert.throws(() => splitStages(cfg, 4), /cannot cut 3 layers into 4/);
  assert.throws(() => splitStages(cfg, 0));
  // Every tensor of the model is owned by exactly one stage (the head is the one extra copy).
  for (const S of [1, 2, 3]) {
    const owned = splitStages(cfg, S).flatMap((st) =>
      stageSpecs(cfg, st)
        .filter((t) => t.full !== null)
        .map((t) => t.name),
    );
    assert.deepEqual(
      owned.sort(),
      paramSpecs(cfg)
        .map((t) => t.name)
        .sort(),
    );
    const total = splitStages(cfg, S).reduce((t, st) => t + stageSpecs(cfg, st).reduce((u, x) => u + x.size, 0), 0);
    assert.equal(total, paramCount(cfg) + (S > 1 ? cfg.vocabSize * cfg.dim : 0));
  }
});

test('S stages = one GPT: same loss, same gradients (tied head summed), micro-batches included', () => {
  const k = loadKernels({ threads: 1 });
  const gpt = new GPT(cfg, k);
  gpt.init(7);
  const B = 4,
    T = 12,
    rng = new Rng(3);
  const tokens = Int32Array.from({ length: B * T }, () => rng.nextInt(cfg.vocabSize));
  const targets = Int32Array.from({ length: B * T }, () => rng.nextInt(cfg.vocabSize));
  gpt.zeroGrad();
  const want = gpt.forwardBackward(tokens, targets, B, T);
  for (const S of [1, 2, 3]) {
    const stages = splitStages(cfg, S).map((sp) => {
      const s = new Stage(cfg, sp, k);
      s.loadFromFull(gpt.params);
      s.zeroGrad();
      return s;
    });
    // Two micro-batches of 2 sequences, each scaled by 1/2 (equal token counts).
    let loss = 0;
    for (const mb of [0, 1]) {
      const tk = tokens.subarray(mb * 2 * T, (mb + 1) * 2 * T),
        tg = targets.subarray(mb * 2 * T, (mb + 1) * 2 * T);
      let x: Int32Array | Float32Array = tk;
      for (const s of stages) x = s.forward(mb, x, 2, T);
      loss += stages[S - 1].loss(mb, tg, true, 0.5) / 2;
      let d: Float32Array | null = null;
      for (let i = S - 1; i >= 0; i--) d = stages[i].backward(mb, d);
    }
    assert.ok(Math.abs(loss - want) < 1e-5, `S=${S}: loss ${loss} vs ${want}`);
    if (S > 1) {
      const t0 = stages[0].tiedGrad()!,
        t1 = stages[S - 1].tiedGrad()!;
      for (let i = 0; i < t0.length; i++) {
        const s = t0[i] + t1[i];
        t0[i] = s;
        t1[i] = s;
      }
    }
    const full = new Float32Array(paramCount(cfg));
    for (const s of stages) s.writeToFull(full, s.grads);
    assert.ok(relErr(full, gpt.grads) < 1e-5, `S=${S}: gradients differ (rel ${relErr(full, gpt.grads)})`);
    // Global norm from the parts = the whole's (the head copy's gradient counted once).
    const parts =
      stages.reduce((t, s) => t + s.sumSquares(), 0) - (S > 1 ? k.sumSquares(stages[S - 1].tiedGrad()!) : 0);
    assert.ok(Math.abs(Math.sqrt(parts) - Math.sqrt(k.sumSquares(gpt.grads))) < 1e-4);
  }
});

test('a stage holds only its own tensors and checks its inputs', () => {
  const k = loadKernels({ threads: 1 });
  const [s0, s1, s2] = splitStages(cfg, 3).map((sp) => new Stage(cfg, sp, k));
  assert.deepEqual(
    s0.tensorNames().filter((n) => !n.startsWith('h.0.')),
    ['wte', 'wpe'],
  );
  assert.ok(s1.tensorNames().every((n) => n.startsWith('h.1.')));
  assert.deepEqual(
    s2.tensorNames().filter((n) => !n.startsWith('h.2.')),
    ['lnf.w', 'lnf.b', 'head'],
  );
  assert.throws(() => s0.forward(0, new Int32Array([1, 2, 999]), 1, 3), /outside the vocabulary/);
  assert.throws(() => s1.forward(0, new Float32Array(5), 1, 3), /takes 96 activations/);
  assert.throws(() => s1.backward(42, new Float32Array(96)), /no forward pass held/);
  assert.throws(() => s1.loss(0, new Int32Array(3), true), /only the last stage/);
  assert.throws(() => new Stage(cfg, { index: 1, count: 3, l0: 0, l1: 2 }, k), /must hold layers/);
});

test('stage credits: by parameters held, split among replicas by tokens processed', async () => {
  const { stageCredits } = await import('../src/pipeline/credit.js');
  const c = stageCredits([
    { peer: 'a', stage: 0, params: 300, tokens: 100 },
    { peer: 'b', stage: 1, params: 100, tokens: 60 },
    { peer: 'c', stage: 1, params: 100, tokens: 20 },
  ]);
  assert.deepEqual(
    c.map((x) => [x.peer, +x.score.toFixed(4)]),
    [
      ['a', 0.75],
      ['b', 0.1875],
      ['c', 0.0625],
    ],
  );
  assert.ok(Math.abs(c.reduce((t, x) => t + x.score, 0) - 1) < 1e-12);
  assert.throws(
    () =>
      stageCredits([
        { peer: 'a', stage: 0, params: 1, tokens: 1 },
        { peer: 'b', stage: 0, params: 2, tokens: 1 },
      ]),
    /disagree/,
  );
});

test('Stage.init(seed) equals the same tensors of GPT.init(seed), without the rest of the model', () => {
  const k = loadKernels({ threads: 1 });
  const gpt = new GPT(cfg, k);
  gpt.init(11);
  for (const S of [1, 2, 3]) {
    for (const sp of splitStages(cfg, S)) {
      const a = new Stage(cfg, sp, k),
        b = new Stage(cfg, sp, k);
      a.init(11);
      b.loadFromFull(gpt.params);
      assert.deepEqual(a.params, b.params, `S=${S} stage ${sp.index}`);
    }
  }
});

test('placement: a joiner takes the weakest stage; ties go to fewer peers, then the lower index', async () => {
  const { chooseStage } = await import('../src/pipeline/placement.js');
  assert.equal(
    chooseStage([
      { peers: 1, throughput: 10 },
      { peers: 0, throughput: 0 },
      { peers: 1, throughput: 5 },
    ]),
    1,
  );
  assert.equal(
    chooseStage([
      { peers: 2, throughput: 5 },
      { peers: 1, throughput: 5 },
    ]),
    1,
  );
  assert.equal(
    chooseStage([
      { peers: 1, throughput: 5 },
      { peers: 1, throughput: 5 },
    ]),
    0,
  );
  // 40 joiners of random speed, one by one: every stage is served, and totals end within 25% of the mean.
  let seed = 42;
  const rnd = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const loads = Array.from({ length: 4 }, () => ({ peers: 0, throughput: 0 }));
  for (let j = 0; j < 40; j++) {
    const t = 1 + 9 * rnd();
    const s = chooseStage(loads);
    loads[s].peers++;
    loads[s].throughput += t;
  }
  const mean = loads.reduce((a, l) => a + l.throughput, 0) / 4;
  assert.ok(
    loads.every((l) => l.peers > 0 && Math.abs(l.throughput - mean) < 0.25 * mean),
    JSON.stringify(loads),
  );
  assert.throws(() => chooseStage([]), /no stages/);
});

test('learned bottleneck: k = C with a complete basis computes the GPT exactly; k < C has correct gradients (finite differences) and only k values cross', () => {
  const k = loadKernels({ threads: 1 });
  const gpt = new GPT(cfg, k);
  gpt.init(4);
  const B = 2,
    T = 8,
    rng = new Rng(6);
  const tokens = Int32Array.from({ length: B * T }, () => rng.nextInt(cfg.vocabSize));
  const targets = Int32Array.from({ length: B * T }, () => rng.nextInt(cfg.vocabSize));
  const make = (K: number) =>
    splitStages(cfg, 2).map((sp) => {
      const s = new Stage(cfg, { ...sp, bottleneck: K }, k);
      s.loadFromFull(gpt.params);
      s.initBottleneck(subspaceBasis(cfg.dim, K));
      s.zeroGrad();
      return s;
    });
  const run = (st: Stage[], grad: boolean) => {
    const x = st[0].forward(0, tokens, B, T);
    const sent = x.slice();
    st[1].forward(0, sent, B, T);
    const loss = st[1].loss(0, targets, grad);
    if (grad) st[0].backward(0, st[1].backward(0, null));
    else {
      st[0].release(0);
      st[1].release(0);
    }
    return { loss, width: sent.length / (B * T) };
  };
  // Complete basis: up·down = U·Uᵀ = I, so the bottleneck changes nothing (up to rounding).
  const full = make(cfg.dim);
  assert.ok(Math.abs(run(full, false).loss - gpt.loss(tokens, targets, B, T)) < 1e-4);
  // Narrow: 4 values per token cross; tensors named; gradients match finite differences.
  const st = make(4);
  assert.deepEqual(
    st[0].tensorNames().filter((n) => n.startsWith('bneck')),
    ['bneck.down'],
  );
  assert.deepEqual(
    st[1].tensorNames().filter((n) => n.startsWith('bneck')),
    ['bneck.up'],
  );
  const r = run(st, true);
  assert.equal(r.width, 4);
  for (const [s, name] of [
    [st[0], 'bneck.down'],
    [st[1], 'bneck.up'],
  ] as const) {
    const spec = s.specs.find((t) => t.name === name)!;
    for (const j of [0, 5, spec.size - 1]) {
      const i = spec.offset + j,
        h = 1e-2,
        keep = s.params[i];
      s.params[i] = keep + h;
      const up = run(st, false).loss;
      s.params[i] = keep - h;
      const dn = run(st, false).loss;
      s.params[i] = keep;
      const num = (up - dn) / (2 * h),
        ana = s.grads[i];
      assert.ok(Math.abs(num - ana) < 2e-3 + 0.05 * Math.abs(ana), `${name}[${j}]: numeric ${num} vs analytic ${ana}`);
    }
  }
  assert.throws(() => stageSpecs(cfg, { ...splitStages(cfg, 2)[0], bottleneck: cfg.dim + 1 }), /bottleneck must be/);
});
