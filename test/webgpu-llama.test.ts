/**
 * The Llama family's WGSL kernels (src/kernels/webgpu/llama-wgsl.ts, dispatched by llama.ts)
 * against the reference kernels (src/kernels/ref-llama.ts through createRefKernels) to 1e-4 of
 * the output's scale, on SwiftShader as test/webgpu-kernels.test.ts runs them (no GPU needed;
 * under CI=true a missing adapter fails, locally only a missing chromium skips): RMSNorm, RoPE,
 * SwiGLU and grouped-query attention, forward and backward, on views at odd offsets of shared
 * flat buffers, plus a bitwise repeat and argument checks.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRefKernels } from '../src/kernels/ref.js';
import { WebGpuDevice, type GpuTensor } from '../src/kernels/webgpu/device.js';
import { WebGpuLlamaKernels } from '../src/kernels/webgpu/llama.js';
import { SWIFTSHADER_ICD_PATHS } from '../src/kernels/webgpu/node-icd.js';
import { ropeTables, TINY_LLAMA } from '../src/model/llama-config.js';
import { Llama, llamaSpecs } from '../src/model/llama.js';
import { WebGpuLlama } from '../src/model/llama-webgpu.js';
import { AdamW, DEFAULT_ADAMW } from '../src/train/adamw.js';
import { InvalidInputError } from '../src/util/errors.js';
import { uniform } from '../src/util/rng.js';

function swiftShaderIcd(): string | null {
  for (const pkg of ['chromium-common', 'chromium']) {
    try {
      const files = execFileSync('dpkg', ['-L', pkg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      const f = files.split('\n').find((l) => l.endsWith('vk_swiftshader_icd.json'));
      if (f && existsSync(f)) return f;
    } catch {
      /* package not installed */
    }
  }
  return SWIFTSHADER_ICD_PATHS.find((p) => existsSync(p)) ?? null;
}

const CI = process.env.CI === 'true';
const icd = process.env.VK_ICD_FILENAMES ?? swiftShaderIcd();
if (icd) process.env.VK_ICD_FILENAMES = icd; // before Dawn loads
const skip =
  !icd && !CI ? 'chromium is not installed (no SwiftShader Vulkan ICD): apt-get install chromium libvulkan1' : false;

let dev: WebGpuDevice | undefined;
async function gpu(): Promise<{ d: WebGpuDevice; k: WebGpuLlamaKernels }> {
  if (!icd) throw new Error('CI=true but no SwiftShader Vulkan ICD: install chromium (.ci/run does)');
  dev ??= await WebGpuDevice.create();
  return { d: dev, k: new WebGpuLlamaKernels(dev) };
}

const ref = createRefKernels();

function rand(n: number, seed: number, scale = 1): Float32Array {
  const r = uniform(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * scale;
  return a;
}
function maxAbs(a: Float32Array): number {
  let m = 0;
  for (const x of a) m = Math.max(m, Math.abs(x));
  return m;
}
let worst = 0;
function close(what: string, a: Float32Array, b: Float32Array, tol = 1e-4): void {
  assert.equal(a.length, b.length, what);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Number.isNaN(a[i]) ? Infinity : Math.abs(a[i] - b[i]));
  const e = d / Math.max(1e-6, maxAbs(b));
  worst = Math.max(worst, e);
  assert.ok(e < tol, `${what}: error ${e.toExponential(2)} >= ${tol}`);
}

/** Tensors in one flat buffer at odd offsets (as the model's flat buffers lay them out). */
function flat(d: WebGpuDevice, parts: Float32Array[]): GpuTensor[] {
  const total = parts.reduce((s, p) => s + p.length + 3, 3);
  const all = new Float32Array(total);
  const views: [number, number][] = [];
  let at = 3;
  for (const p of parts) {
    all.set(p, at);
    views.push([at, p.length]);
    at += p.length + 3;
  }
  const t = d.upload(all);
  return views.map(([o, n]) => d.view(t, o, n));
}

test('RMSNorm forward and backward match the reference', { skip }, async () => {
  const { d, k } = await gpu();
  for (const [N, C] of [
    [1, 1],
    [5, 37],
    [13, 130],
  ]) {
    const x = rand(N * C, 1, 2),
      w = rand(C, 2),
      dout = rand(N * C, 3),
      dx0 = rand(N * C, 4),
      dw0 = rand(C, 5);
    const [gOut, gRstd, gX, gW] = flat(d, [new Float32Array(N * C), new Float32Array(N), x, w]);
    k.rmsnormForward(gOut, gRstd, gX, gW, N, C, 1e-6);
    const o = new Float32Array(N * C),
      r = new Float32Array(N);
    ref.rmsnormForward(o, r, x, w, N, C, 1e-6);
    close(`rmsnormForward out N=${N} C=${C}`, await d.read(gOut), o);
    close(`rmsnormForward rstd N=${N} C=${C}`, await d.read(gRstd), r);
    const [gDx, gDw, gDout] = flat(d, [dx0, dw0, dout]);
    k.rmsnormBackward(gDx, gDw, gDout, gX, gW, gRstd, N, C);
    const dx = dx0.slice(),
      dw = dw0.slice();
    ref.rmsnormBackward(dx, dw, dout, x, w, r, N, C);
    close(`rmsnormBackward dinp N=${N} C=${C}`, await d.read(gDx), dx);
    close(`rmsnormBackward dweight N=${N} C=${C}`, await d.read(gDw), dw);
  }
});

test('RoPE forward and backward (llama3 scaling tables) match the reference', { skip }, async () => {
  const { d, k } = await gpu();
  const cfg = {
    headDim: 8,
    ropeTheta: 500000,
    ropeScaling: {
      type: 'llama3' as const,
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositions: 4,
    },
  };
  const [B, T, nh, hd] = [2, 9, 3, 8];
  const t = ropeTables(cfg, T + 2);
  const cos = Float32Array.from(t.cos),
    sin = Float32Array.from(t.sin);
  const x = rand(B * T * nh * hd, 6, 3);
  const [gX, gCos, gSin] = flat(d, [x, cos, sin]);
  k.ropeForward(gX, gCos, gSin, B, T, nh, hd);
  const want = x.slice();
  ref.ropeForward(want, cos, sin, B, T, nh, hd);
  close('ropeForward', await d.read(gX), want);
  k.ropeBackward(gX, gCos, gSin, B, T, nh, hd);
  ref.ropeBackward(want, cos, sin, B, T, nh, hd);
  close('ropeBackward', await d.read(gX), want);
  close('ropeBackward undoes ropeForward', await d.read(gX), x);
});

test('SwiGLU forward and backward match the reference, large |gate| included', { skip }, async () => {
  const { d, k } = await gpu();
  const n = 1000;
  const g = rand(n, 7, 12),
    u = rand(n, 8, 2),
    dout = rand(n, 9),
    dg0 = rand(n, 10),
    du0 = rand(n, 11);
  g[0] = 120;
  g[1] = -120;
  const [gOut, gG, gU, gDg, gDu, gDout] = flat(d, [new Float32Array(n), g, u, dg0, du0, dout]);
  k.swigluForward(gOut, gG, gU, n);
  const o = new Float32Array(n);
  ref.swigluForward(o, g, u, n);
  close('swigluForward', await d.read(gOut), o);
  k.swigluBackward(gDg, gDu, gDout, gG, gU, n);
  const dg = dg0.slice(),
    du = du0.slice();
  ref.swigluBackward(dg, du, dout, g, u, n);
  close('swigluBackward dgate', await d.read(gDg), dg);
  close('swigluBackward dup', await d.read(gDu), du);
});

test('grouped-query attention forward and backward match the reference (MHA, GQA, MQA)', { skip }, async (t) => {
  const { d, k } = await gpu();
  for (const [B, T, NH, KV, hd] of [
    [1, 1, 1, 1, 4],
    [2, 7, 4, 2, 6],
    [1, 9, 6, 1, 5],
    [1, 70, 4, 2, 8],
  ]) {
    const what = `B=${B} T=${T} NH=${NH} KV=${KV} hd=${hd}`;
    const nq = B * T * NH * hd,
      nk = B * T * KV * hd,
      na = B * NH * T * T;
    const q = rand(nq, 12, 1.5),
      kk = rand(nk, 13, 1.5),
      v = rand(nk, 14),
      dout = rand(nq, 15),
      dq0 = rand(nq, 16),
      dk0 = rand(nk, 17),
      dv0 = rand(nk, 18);
    const [gOut, gAtt, gQ, gK, gV] = flat(d, [new Float32Array(nq), rand(na, 19), q, kk, v]);
    k.gqaForward(gOut, gAtt, gQ, gK, gV, B, T, NH, KV, hd);
    const out = new Float32Array(nq),
      att = new Float32Array(na);
    ref.gqaForward(out, att, q, kk, v, B, T, NH, KV, hd);
    close(`gqaForward out ${what}`, await d.read(gOut), out);
    close(`gqaForward att ${what}`, await d.read(gAtt), att);
    const [gDq, gDk, gDv, gDatt, gDout] = flat(d, [dq0, dk0, dv0, new Float32Array(na), dout]);
    k.gqaBackward(gDq, gDk, gDv, gDatt, gDout, gQ, gK, gV, gAtt, B, T, NH, KV, hd);
    const dq = dq0.slice(),
      dk = dk0.slice(),
      dv = dv0.slice();
    ref.gqaBackward(dq, dk, dv, new Float32Array(na), dout, q, kk, v, att, B, T, NH, KV, hd);
    close(`gqaBackward dq ${what}`, await d.read(gDq), dq);
    close(`gqaBackward dk ${what}`, await d.read(gDk), dk);
    close(`gqaBackward dv ${what}`, await d.read(gDv), dv);
  }
  t.diagnostic(`worst error over every Llama WGSL kernel so far: ${worst.toExponential(2)}`);
});

test('the same Llama work twice gives the same bits; bad arguments are refused', { skip }, async () => {
  const { d, k } = await gpu();
  const [B, T, NH, KV, hd] = [1, 11, 4, 2, 8];
  const nq = B * T * NH * hd,
    nk = B * T * KV * hd,
    na = B * NH * T * T;
  const run = async () => {
    const [out, att, q, kk, v, dq, dk, dv, datt, dout] = flat(d, [
      new Float32Array(nq),
      new Float32Array(na),
      rand(nq, 20),
      rand(nk, 21),
      rand(nk, 22),
      new Float32Array(nq),
      new Float32Array(nk),
      new Float32Array(nk),
      new Float32Array(na),
      rand(nq, 23),
    ]);
    k.gqaForward(out, att, q, kk, v, B, T, NH, KV, hd);
    k.gqaBackward(dq, dk, dv, datt, dout, q, kk, v, att, B, T, NH, KV, hd);
    return Promise.all([out, dq, dk, dv].map((x) => d.read(x)));
  };
  const a = await run(),
    b = await run();
  a.forEach((x, i) => assert.deepEqual(new Uint32Array(x.buffer), new Uint32Array(b[i].buffer), `output ${i}`));
  const f = (n: number) => d.alloc(n);
  assert.throws(() => k.rmsnormForward(f(6), f(1), f(6), f(3), 2, 3, 1e-5), InvalidInputError);
  assert.throws(() => k.rmsnormForward(f(6), f(2), f(6), f(3), 2, 3, 0), /eps must be in/);
  assert.throws(() => k.ropeForward(f(12), f(6), f(6), 1, 2, 2, 3), /hd must be even/);
  assert.throws(() => k.gqaForward(f(24), f(12), f(24), f(12), f(12), 1, 2, 3, 2, 4), /multiple of KV/);
  assert.throws(() => k.gqaForward(f(32), f(16), f(32), f(16), f(15), 1, 2, 4, 2, 4), /needs 16/);
  assert.throws(() => k.swigluForward(f(4), d.alloc(4, 'i32'), f(4), 4), /must be f32/);
});

test(
  'WebGpuLlama: loss and gradients of the CPU Llama, then three AdamW steps stay with it (GQA, tied and untied)',
  { skip },
  async () => {
    const { d } = await gpu();
    for (const tied of [false, true]) {
      const cfg = {
        ...TINY_LLAMA,
        vocabSize: 37,
        dim: 24,
        heads: 4,
        kvHeads: 2,
        headDim: 6,
        hidden: 40,
        layers: 2,
        tiedEmbeddings: tied,
        ropeScaling: { type: 'linear' as const, factor: 2 },
      };
      const cpu = new Llama(cfg, ref);
      cpu.init(3);
      const gpuModel = new WebGpuLlama(d, cfg);
      gpuModel.setParams(cpu.params);
      const B = 2,
        T = 9,
        rng = uniform(4);
      const tokens = Int32Array.from({ length: B * T }, () => Math.floor(rng() * cfg.vocabSize));
      const targets = Int32Array.from({ length: B * T }, (_, i) => (i === 3 ? -1 : Math.floor(rng() * cfg.vocabSize)));
      cpu.zeroGrad();
      const want = cpu.forwardBackward(tokens, targets, B, T);
      gpuModel.zeroGrad();
      const got = await gpuModel.forwardBackward(tokens, targets, B, T);
      assert.ok(Math.abs(got - want) < 1e-5 * Math.max(1, want), `loss ${got} vs ${want}`);
      close(`WebGpuLlama gradients (${tied ? 'tied' : 'untied'})`, await d.read(gpuModel.grads), cpu.grads);
      const opt = new AdamW(null, DEFAULT_ADAMW, ref, llamaSpecs(cfg));
      for (let s = 0; s < 3; s++) {
        cpu.zeroGrad();
        cpu.forwardBackward(tokens, targets, B, T);
        opt.update(cpu.params, cpu.grads, 1e-3);
        await gpuModel.trainStep(tokens, targets, B, T, 1e-3);
      }
      const pg = await d.read(gpuModel.params);
      let max = 0;
      for (let i = 0; i < pg.length; i++) max = Math.max(max, Math.abs(pg[i] - cpu.params[i]));
      console.log(
        `WebGpuLlama (${tied ? 'tied' : 'untied'}) vs CPU: loss ${got} vs ${want}; weights after 3 AdamW steps within ${max.toExponential(2)}`,
      );
      assert.ok(max < 1e-5, `weights after 3 steps differ by ${max}`);
    }
  },
);
