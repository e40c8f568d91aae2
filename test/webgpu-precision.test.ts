/**
 * The WebGPU precision flags (src/kernels/webgpu/wgsl/precision.ts), all off by default:
 * f16 storage of the matmul-only activations (pack2x16float, every adapter), subgroup
 * reductions (SwiftShader offers `subgroups`), and `shader-f16` (SwiftShader does not offer it:
 * refused with a typed error, and its WGSL is checked as text since it cannot compile here).
 *
 * Stated tolerances, against the f32 GPU model on the same weights and batch:
 * - f16 storage: loss within 1e-3 relative at every step, gradients within 1e-2 of the largest
 *   gradient, and after three AdamW steps (lr 1e-3) weights within 1 lr (AdamW moves a weight by
 *   about lr a step whatever its gradient's size, so a near-zero gradient rounded differently
 *   may move it the other way). Measured on this config: loss 6e-7 relative, gradients 1.4e-4,
 *   weights 0.15 lr; binary16 keeps 11 bits, a relative step of 4.9e-4.
 * - subgroups: only the order of the reductions' sums changes: loss within 1e-6 relative,
 *   gradients within 1e-5 of the largest.
 * Each flag is deterministic on one adapter (the same run twice gives the same bits), and with
 * the flags off the model gives exactly the f32 model's bits.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createRefKernels } from '../src/kernels/ref.js';
import { WebGpuDevice } from '../src/kernels/webgpu/device.js';
import { SWIFTSHADER_ICD_PATHS } from '../src/kernels/webgpu/node-icd.js';
import { buildShader } from '../src/kernels/webgpu/wgsl/common.js';
import { LAYERNORM_FWD } from '../src/kernels/webgpu/wgsl/norm.js';
import { gemmDef, withSubgroups } from '../src/kernels/webgpu/wgsl/precision.js';
import { WebGpuGPT } from '../src/model/gpt-webgpu.js';
import { GPT } from '../src/model/gpt.js';
import { f16Round } from '../src/swarm/compress/index.js';
import { DEFAULT_ADAMW } from '../src/train/adamw.js';
import { InvalidInputError, WebGpuUnavailableError } from '../src/util/errors.js';
import { uniform } from '../src/util/rng.js';

const CI = process.env.CI === 'true';
const icd = process.env.VK_ICD_FILENAMES ?? SWIFTSHADER_ICD_PATHS.find((p) => existsSync(p)) ?? null;
if (icd) process.env.VK_ICD_FILENAMES = icd; // before Dawn loads
const skip = !icd && !CI ? 'chromium is not installed (no SwiftShader Vulkan ICD)' : false;
const needIcd = () => {
  if (!icd) throw new Error('CI=true but no SwiftShader Vulkan ICD: install chromium (.ci/run does)');
};

const cfg = { vocabSize: 37, ctx: 8, dim: 16, layers: 2, heads: 2 };
const B = 2,
  T = 8;
function batch(seed: number): { x: Int32Array; y: Int32Array } {
  const r = uniform(seed);
  return {
    x: new Int32Array(B * T).map(() => Math.floor(r() * cfg.vocabSize)),
    y: new Int32Array(B * T).map(() => Math.floor(r() * cfg.vocabSize)),
  };
}
const init = (() => {
  const g = new GPT(cfg, createRefKernels());
  g.init(7);
  return g.params;
})();

interface Run {
  loss: number[];
  grads: Float32Array;
  params: Float32Array;
}
/** Loss and gradients of batch 1, then three AdamW steps (lr 1e-3) on batches 2..4. */
async function run(dev: WebGpuDevice, f16Storage: boolean): Promise<Run> {
  const g = new WebGpuGPT(dev, cfg, DEFAULT_ADAMW, 'flash', { f16Storage });
  g.setParams(init);
  g.zeroGrad();
  const b = batch(1);
  const loss = [await g.forwardBackward(b.x, b.y, B, T)];
  const grads = await dev.read(g.grads);
  for (let s = 2; s <= 4; s++) {
    const c = batch(s);
    loss.push(await g.trainStep(c.x, c.y, B, T, 1e-3));
  }
  return { loss, grads, params: await dev.read(g.params) };
}
function maxDiff(a: Float32Array, b: Float32Array): { diff: number; scale: number } {
  let diff = 0,
    scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return { diff, scale };
}
const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

let base: Run | undefined;
let plain: WebGpuDevice | undefined;
async function f32Run(): Promise<Run> {
  plain ??= await WebGpuDevice.create();
  base ??= await run(plain, false);
  return base;
}

test(
  'f16 storage: the GEMM reads f16 operands, LayerNorm and GELU write f16, against the reference',
  { skip },
  async () => {
    needIcd();
    plain ??= await WebGpuDevice.create();
    const d = plain;
    const ref = createRefKernels();
    const r = uniform(3);
    const N = 6,
      C = 10,
      OC = 7;
    const inp = new Float32Array(N * C).map(() => r() * 2 - 1),
      w = new Float32Array(C).map(() => r() + 0.5),
      b = new Float32Array(C).map(() => r() - 0.5);
    // LayerNorm into f16: each element within one binary16 step of the f32 result (WGSL may round
    // to either neighbour).
    const out = new Float32Array(N * C),
      mean = new Float32Array(N),
      rstd = new Float32Array(N);
    ref.layernormForward(out, mean, rstd, inp, w, b, N, C);
    const h = d.alloc(N * C, 'f16');
    d.layernormForward(h, d.alloc(N), d.alloc(N), d.upload(inp), d.upload(w), d.upload(b), N, C);
    const got = await d.readF16(h);
    for (let i = 0; i < out.length; i++)
      assert.ok(Math.abs(got[i] - out[i]) <= 2 ** -10 * Math.abs(out[i]) + 2 ** -24, `ln[${i}] ${got[i]} vs ${out[i]}`);
    // GEMM: f16 activations times f32 weights equals the reference on the f16 values.
    const wt = new Float32Array(OC * C).map(() => r() - 0.5);
    const mm = new Float32Array(N * OC);
    ref.matmulForward(mm, got, wt, null, N, C, OC);
    const gmm = d.alloc(N * OC);
    d.matmulForward(gmm, h, d.upload(wt), null, N, C, OC);
    const e = maxDiff(await d.read(gmm), mm);
    assert.ok(e.diff <= 1e-6 * e.scale, `matmul with an f16 input: ${e.diff}`);
    // dweight += dout^T @ inp with inp in f16.
    const dout = new Float32Array(N * OC).map(() => r() - 0.5);
    const dw = new Float32Array(OC * C),
      dinp = new Float32Array(N * C);
    ref.matmulBackward(dinp, dw, null, dout, got, wt, N, C, OC);
    const gdw = d.alloc(OC * C);
    d.matmulBackward(d.alloc(N * C), gdw, null, d.upload(dout), h, d.upload(wt), N, C, OC);
    const e2 = maxDiff(await d.read(gdw), dw);
    assert.ok(e2.diff <= 1e-6 * e2.scale, `dweight with an f16 input: ${e2.diff}`);
    // GELU into f16.
    const x = new Float32Array(40).map(() => (r() - 0.5) * 8),
      gl = new Float32Array(40);
    ref.geluForward(gl, x, 40);
    const gh = d.alloc(40, 'f16');
    d.geluForward(gh, d.upload(x), 40);
    const gg = await d.readF16(gh);
    for (let i = 0; i < 40; i++)
      assert.ok(Math.abs(gg[i] - gl[i]) <= 2 ** -10 * Math.abs(gl[i]) + 2 ** -24, `gelu[${i}] ${gg[i]} vs ${gl[i]}`);
    assert.equal(f16Round(gg[3]), gg[3], 'the values are binary16');
    // An f16 tensor where a kernel wants f32 is a typed error, not a silent reinterpretation.
    assert.throws(() => d.add(h, h, h, N * C), InvalidInputError);
  },
);

test('f16 storage: the GPT stays within the stated tolerance of f32, deterministically', { skip }, async (t) => {
  needIcd();
  const f32 = await f32Run();
  const f16 = await run(plain!, true);
  const again = await run(plain!, true);
  assert.deepEqual(bits(again.params), bits(f16.params), 'f16 storage twice: the same bits');
  for (let s = 0; s < f32.loss.length; s++)
    assert.ok(Math.abs(f16.loss[s] - f32.loss[s]) <= 1e-3 * f32.loss[s], `step ${s}: ${f16.loss[s]} vs ${f32.loss[s]}`);
  const g = maxDiff(f16.grads, f32.grads);
  assert.ok(g.diff <= 1e-2 * g.scale, `gradients ${g.diff} of ${g.scale}`);
  const p = maxDiff(f16.params, f32.params);
  assert.ok(p.diff <= 1e-3, `weights after 3 steps ${p.diff}`);
  assert.notDeepEqual(bits(f16.grads), bits(f32.grads), 'the flag is not a no-op');
  // Off again on the same device: the f32 model's bits exactly.
  assert.deepEqual(bits((await run(plain!, false)).params), bits(f32.params));
  t.diagnostic(
    `f16 storage: loss ${Math.abs(f16.loss[0] - f32.loss[0]).toExponential(2)}, grads ${(g.diff / g.scale).toExponential(2)} rel, weights ${p.diff.toExponential(2)}`,
  );
});

test('subgroup reductions stay within the stated tolerance of f32, deterministically', { skip }, async (t) => {
  needIcd();
  const f32 = await f32Run();
  const dev = await WebGpuDevice.create({ subgroups: true });
  try {
    assert.equal(dev.features.subgroups, true);
    const sg = await run(dev, false);
    const again = await run(dev, false);
    assert.deepEqual(bits(again.params), bits(sg.params), 'subgroups twice: the same bits');
    for (let s = 0; s < f32.loss.length; s++)
      assert.ok(Math.abs(sg.loss[s] - f32.loss[s]) <= 1e-6 * f32.loss[s], `step ${s}: ${sg.loss[s]} vs ${f32.loss[s]}`);
    const g = maxDiff(sg.grads, f32.grads);
    assert.ok(g.diff <= 1e-5 * g.scale, `gradients ${g.diff} of ${g.scale}`);
    t.diagnostic(
      `subgroups: loss ${Math.abs(sg.loss[0] - f32.loss[0]).toExponential(2)}, grads ${(g.diff / g.scale).toExponential(2)} rel`,
    );
  } finally {
    dev.destroy();
  }
});

test('shader-f16 is refused where the adapter lacks it, and its WGSL declares f16 only then', { skip }, async () => {
  needIcd();
  const d = plain ?? (plain = await WebGpuDevice.create());
  if (!d.adapterFeatures.shaderF16)
    await assert.rejects(
      WebGpuDevice.create({ shaderF16: true }),
      (e: Error) => e instanceof WebGpuUnavailableError && /shader-f16/.test(e.message),
    );
  const native = buildShader(gemmDef(true, false), [0, 1, 2, 3], true);
  const packed = buildShader(gemmDef(true, false), [0, 1, 2, 3], false);
  assert.match(native, /^enable f16;/);
  assert.match(native, /array<f16>/);
  assert.doesNotMatch(packed, /enable f16|array<f16>/);
  assert.match(packed, /unpack2x16float/);
  // A kernel without f16 arguments never enables it; subgroups only where asked.
  assert.doesNotMatch(buildShader(LAYERNORM_FWD, [0, 1, 2, 3, 4, 5], true), /enable/);
  assert.match(buildShader(withSubgroups(LAYERNORM_FWD), [0, 1, 2, 3, 4, 5]), /^enable subgroups;[\s\S]*subgroupAdd/);
});

test('closes the devices', { skip }, () => {
  plain?.destroy();
});
