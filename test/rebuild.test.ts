/**
 * Rebuilding a stage from its neighbours (src/pipeline/rebuild.ts): the masked parts sum exactly
 * (in fixed point) to the weighted mean, one part alone looks uniform whatever the weights, and
 * the layer map pairs the layers of two stages position for position.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  FIX_BITS,
  gatherLayers,
  layerViews,
  maskedPart,
  mixWeights,
  scatterLayers,
  unmaskSum,
} from '../src/pipeline/rebuild.js';
import { Stage, splitStages } from '../src/model/stage.js';
import { loadKernels } from '../src/kernels/index.js';
import { Rng } from '../src/util/rng.js';

const gauss = (n: number, scale: number, seed: number) => {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => scale * (r.nextFloat() * 2 - 1));
};

test('two masked parts sum to a·x + b·y within the fixed-point step; the pads cancel only together', () => {
  const n = 10_000,
    x = gauss(n, 2, 1),
    y = gauss(n, 0.05, 2);
  const seed = randomBytes(32);
  const [a, b] = mixWeights(3, 1);
  assert.deepEqual([a, b], [0.75, 0.25]);
  const pL = maskedPart(x, a, seed, 1),
    pR = maskedPart(y, b, seed, -1);
  const sum = unmaskSum([pL, pR], n);
  let worst = 0;
  for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(sum[i] - (a * x[i] + b * y[i])));
  assert.ok(worst <= 2 ** -FIX_BITS * 1.01 + 1e-7, `off by ${worst}`);
  // Each part alone decodes to noise: nothing like the weights it carries.
  const alone = unmaskSum([pL], n);
  let near = 0;
  for (let i = 0; i < n; i++) if (Math.abs(alone[i] - a * x[i]) < 1) near++;
  assert.ok(near < n * 0.05, `${near} of ${n} values of one part are within 1 of the weights`);
  // Another seed on one side: the pads do not cancel.
  const wrong = unmaskSum([pL, maskedPart(y, b, randomBytes(32), -1)], n);
  assert.ok(wrong.some((v, i) => Math.abs(v - sum[i]) > 1));
});

test('one part is uniform whatever the weights: zeros and real weights give the same bit statistics', () => {
  const n = 50_000,
    seed = randomBytes(32);
  const ones = (p: Uint8Array) => {
    let c = 0;
    for (const byte of p) for (let k = 0; k < 8; k++) c += (byte >> k) & 1;
    return c / (8 * p.length);
  };
  const top = (p: Uint8Array) => {
    let c = 0;
    for (let i = 3; i < p.length; i += 4) c += p[i] >> 7;
    return c / (p.length / 4);
  };
  for (const x of [new Float32Array(n), gauss(n, 0.02, 3), new Float32Array(n).fill(1)]) {
    const p = maskedPart(x, 0.5, seed, 1);
    assert.ok(Math.abs(ones(p) - 0.5) < 0.005, `bit balance ${ones(p)}`);
    assert.ok(Math.abs(top(p) - 0.5) < 0.02, `sign bits ${top(p)}`);
  }
});

test('bad input: seed length, weight range, values outside the fixed-point range, part sizes, norms', () => {
  const x = new Float32Array(4);
  assert.throws(() => maskedPart(x, 0.5, randomBytes(16), 1), /32 bytes/);
  assert.throws(() => maskedPart(x, 1.5, randomBytes(32), 1), /weight is in \[0, 1\]/);
  assert.throws(() => maskedPart(x, Number.NaN, randomBytes(32), 1), /weight/);
  assert.throws(() => maskedPart(Float32Array.of(0, 200), 0.5, randomBytes(32), 1), /outside the fixed-point range/);
  assert.throws(
    () => maskedPart(Float32Array.of(Number.NaN), 0.5, randomBytes(32), 1),
    /outside the fixed-point range/,
  );
  assert.throws(() => unmaskSum([new Uint8Array(12)], 4), /must be 16 bytes/);
  assert.throws(() => mixWeights(-1, 1), /finite and ≥ 0/);
  assert.throws(() => mixWeights(Infinity, 1), /finite/);
  assert.deepEqual(mixWeights(0, 0), [0.5, 0.5]);
});

test('layers pair up by position: stage 1 and stage 2 of a 3-stage cut share keys; the ends add no layer keys for their embeddings', () => {
  const k = loadKernels({ threads: 1 });
  const cfg = { vocabSize: 64, ctx: 16, dim: 32, layers: 3, heads: 4 };
  const sp = splitStages(cfg, 3);
  const [s0, s1, s2] = sp.map((p) => new Stage(cfg, p, k));
  for (const s of [s0, s1, s2]) s.init(5);
  const keys = (s: Stage) => layerViews(s).keys;
  assert.deepEqual(keys(s0), keys(s1));
  assert.deepEqual(keys(s1), keys(s2));
  assert.ok(keys(s1)[0].startsWith('0.'), 'keyed by position within the stage');
  assert.ok(!keys(s0).some((x) => x.includes('wte')) && !keys(s2).some((x) => x.includes('head')));
  // Gather from one stage, scatter into another: that stage's layers now equal the first's; nothing else moved.
  const wte = s0.tiedParam()!.slice();
  scatterLayers(s0, gatherLayers(s2));
  assert.deepEqual(gatherLayers(s0), gatherLayers(s2));
  assert.deepEqual(s0.tiedParam(), wte);
  assert.throws(() => scatterLayers(s0, new Float32Array(3)), /expected \d+, got 3/);
  // Different layer counts lay out differently.
  const cut2 = splitStages({ ...cfg, layers: 4 }, 3).map((p) => new Stage({ ...cfg, layers: 4 }, p, k));
  assert.notDeepEqual(keys(cut2[0]), keys(cut2[1]));
});
