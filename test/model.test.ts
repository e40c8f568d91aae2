import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { GPT } from '../src/model/gpt.js';
import { createRefKernels } from '../src/kernels/ref.js';
import { loadKernels } from '../src/kernels/index.js';
import { paramSpecs, paramCount } from '../src/model/params.js';
import { AdamW, DEFAULT_ADAMW } from '../src/train/adamw.js';
import { Trainer } from '../src/train/trainer.js';
import { lrAt } from '../src/train/schedule.js';
import type { ModelConfig } from '../src/model/config.js';
import type { Kernels } from '../src/kernels/api.js';

const tiny: ModelConfig = { vocabSize: 23, ctx: 8, dim: 12, layers: 2, heads: 3 };

function randomTokens(n: number, V: number, seed: number): Int32Array {
  const out = new Int32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s % V;
  }
  return out;
}

test('parameter layout is contiguous and matches GPT-2 counts', () => {
  const cfg: ModelConfig = { vocabSize: 50257, ctx: 1024, dim: 768, layers: 12, heads: 12 };
  // GPT-2 small has 124,439,808 parameters with tied lm_head.
  assert.equal(paramCount(cfg), 124_439_808);
  let off = 0;
  for (const s of paramSpecs(cfg)) {
    assert.equal(s.offset, off);
    off += s.size;
  }
});

test('gradient matches centered finite differences (reference kernels)', () => {
  const k = createRefKernels();
  const gpt = new GPT(tiny, k);
  gpt.init(7);
  // Make biases and LN params non-trivial so their gradients are exercised too.
  for (let i = 0; i < gpt.params.length; i++) gpt.params[i] += 0.05 * Math.sin(i * 12.9898);
  const B = 2,
    T = 5;
  const x = randomTokens(B * T, tiny.vocabSize, 1);
  const y = randomTokens(B * T, tiny.vocabSize, 2);
  y[3] = -1; // ignored target
  gpt.zeroGrad();
  gpt.forwardBackward(x, y, B, T);
  const analytic = gpt.grads.slice();
  const h = 1e-2;
  let checked = 0;
  for (const s of paramSpecs(tiny)) {
    for (let j = 0; j < 3; j++) {
      const i = s.offset + ((j * 7919 + 13) % s.size);
      const orig = gpt.params[i];
      gpt.params[i] = orig + h;
      const lp = gpt.loss(x, y, B, T);
      gpt.params[i] = orig - h;
      const lm = gpt.loss(x, y, B, T);
      gpt.params[i] = orig;
      const numeric = (lp - lm) / (2 * h);
      const err = Math.abs(numeric - analytic[i]);
      assert.ok(
        err <= 2e-3 + 2e-2 * Math.abs(numeric),
        `${s.name}[${i - s.offset}]: analytic ${analytic[i]} numeric ${numeric}`,
      );
      checked++;
    }
  }
  assert.ok(checked > 30);
});

test('loss at init is close to ln(V) and training a tiny model overfits one batch', () => {
  const k = createRefKernels();
  const gpt = new GPT(tiny, k);
  gpt.init(3);
  const B = 2,
    T = 8;
  const x = randomTokens(B * T, tiny.vocabSize, 5),
    y = randomTokens(B * T, tiny.vocabSize, 6);
  const l0 = gpt.loss(x, y, B, T);
  assert.ok(Math.abs(l0 - Math.log(tiny.vocabSize)) < 0.1, `init loss ${l0}`);
  const opt = new AdamW(tiny, DEFAULT_ADAMW, k);
  const tr = new Trainer(
    gpt,
    opt,
    { kind: 'constant', maxLr: 1e-2, minLrFrac: 0, warmupSteps: 0, totalSteps: 100, decayFrac: 0.2 },
    B,
    T,
  );
  let last = l0;
  for (let i = 0; i < 60; i++) last = tr.step([{ inputs: x, targets: y }]).loss;
  assert.ok(last < 0.5 * l0, `loss went ${l0} -> ${last}`);
});

function trainHash(k: Kernels, steps: number): string {
  const cfg: ModelConfig = { vocabSize: 64, ctx: 16, dim: 32, layers: 2, heads: 4 };
  const gpt = new GPT(cfg, k);
  gpt.init(11);
  const opt = new AdamW(cfg, DEFAULT_ADAMW, k);
  const B = 4,
    T = 16;
  const tr = new Trainer(
    gpt,
    opt,
    { kind: 'cosine', maxLr: 3e-3, minLrFrac: 0.1, warmupSteps: 2, totalSteps: steps, decayFrac: 0.2 },
    B,
    T,
  );
  for (let i = 0; i < steps; i++) {
    tr.step([
      { inputs: randomTokens(B * T, cfg.vocabSize, 100 + i), targets: randomTokens(B * T, cfg.vocabSize, 200 + i) },
    ]);
  }
  return createHash('sha256')
    .update(new Uint8Array(gpt.params.buffer, gpt.params.byteOffset, gpt.params.byteLength))
    .digest('hex');
}

test('deterministic mode: two runs, and 1 vs 2 threads, give bitwise-identical weights', () => {
  const k = loadKernels({ deterministic: true, threads: 1 });
  const a = trainHash(k, 5);
  const b = trainHash(k, 5);
  k.setThreads(2);
  const c = trainHash(k, 5);
  assert.equal(a, b);
  assert.equal(a, c);
});

test('native model gradients match reference-kernel gradients', () => {
  const k = loadKernels({});
  if (k.name !== 'native') {
    assert.fail('native kernels did not load; the build is broken');
  }
  const cfg: ModelConfig = { vocabSize: 61, ctx: 16, dim: 24, layers: 2, heads: 3 };
  const B = 3,
    T = 13;
  const x = randomTokens(B * T, cfg.vocabSize, 9),
    y = randomTokens(B * T, cfg.vocabSize, 10);
  const ref = new GPT(cfg, createRefKernels()),
    nat = new GPT(cfg, k);
  ref.init(5);
  nat.init(5);
  ref.zeroGrad();
  nat.zeroGrad();
  const lr = ref.forwardBackward(x, y, B, T),
    ln = nat.forwardBackward(x, y, B, T);
  assert.ok(Math.abs(lr - ln) < 1e-5 * Math.abs(lr), `loss ${lr} vs ${ln}`);
  let maxg = 0,
    maxd = 0;
  for (let i = 0; i < ref.grads.length; i++) {
    maxg = Math.max(maxg, Math.abs(ref.grads[i]));
    maxd = Math.max(maxd, Math.abs(ref.grads[i] - nat.grads[i]));
  }
  assert.ok(maxd / maxg < 1e-4, `max grad diff ${maxd} relative to ${maxg}`);
});

test('schedules: warmup, cosine floor, WSD decay', () => {
  const s = { kind: 'cosine' as const, maxLr: 1, minLrFrac: 0.1, warmupSteps: 10, totalSteps: 110, decayFrac: 0.2 };
  assert.equal(lrAt(s, 0), 0.1);
  assert.equal(lrAt(s, 9), 1);
  assert.ok(Math.abs(lrAt(s, 10) - 1) < 1e-12);
  assert.ok(Math.abs(lrAt(s, 60) - 0.55) < 1e-12);
  assert.ok(Math.abs(lrAt(s, 110) - 0.1) < 1e-12);
  const w = { ...s, kind: 'wsd' as const };
  assert.equal(lrAt(w, 50), 1);
  assert.ok(Math.abs(lrAt(w, 99) - (1 + (0.1 - 1) * (11 / 22))) < 1e-12);
});

test('bad tokens and shapes are rejected before any compute', () => {
  const gpt = new GPT(tiny, createRefKernels());
  gpt.init(1);
  assert.throws(() => gpt.logits(new Int32Array([0, 1, 99]), 1, 3), /outside the vocabulary/);
  assert.throws(() => gpt.logits(new Int32Array(20), 1, 20), /exceeds the model context/);
  assert.throws(() => gpt.logits(new Int32Array(4), 1, 3), /expected 3 tokens/);
});
