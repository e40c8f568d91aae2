/**
 * The native addon built WITHOUT OpenBLAS (issue 18, item 4): a second copy built here with
 * TESSERA_NO_BLAS=1 into native/build-noblas/ (src/kernels/native-build.ts) and loaded beside the
 * package's own build. It must say it has no BLAS, match the reference kernels, compute fast mode
 * exactly as deterministic mode (both run Tessera's own GEMM), and give the same bits as the
 * OpenBLAS build's deterministic mode (the same fixed-order code). The whole kernel suite can also
 * be run on it: TESSERA_NATIVE_ADDON=$PWD/native/build-noblas/build/Release/tessera_kernels.node
 * node --test dist/test/kernels.test.js.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRefKernels } from '../src/kernels/ref.js';
import { createNativeKernels, nativeInfo, sgemmBench } from '../src/kernels/native.js';
import { buildNoBlasAddon } from '../src/kernels/native-build.js';
import type { Kernels } from '../src/kernels/api.js';
import { uniform } from '../src/util/rng.js';

const skip = process.env.TESSERA_KERNELS === 'ref' ? 'TESSERA_KERNELS=ref: native kernels disabled' : false;

function rand(n: number, seed: number, scale = 1): Float32Array {
  const r = uniform(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * scale;
  return a;
}

function bitsEqual(a: Float32Array, b: Float32Array, what: string): void {
  assert.equal(a.length, b.length, `${what}: length`);
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) assert.fail(`${what}: differs at ${i}: ${a[i]} vs ${b[i]}`);
}

/** max |a - b| over the magnitude of the summed terms (`scale`: the same product over |x|). */
function errVs(a: Float32Array, b: Float32Array, scale: Float32Array): number {
  let d = 0,
    m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Number.isNaN(a[i]) ? Infinity : Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(scale[i]));
  }
  return d / Math.max(1e-6, m);
}

const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [5, 1, 3],
  [37, 29, 41],
  [300, 17, 3],
  [210, 300, 389],
  [20, 40, 2100],
  [0, 4, 5],
];

/** Forward and backward of one matmul shape: [out, dinp, dweight, dbias]. */
function matmulAll(k: Kernels, N: number, C: number, OC: number): Float32Array[] {
  const inp = rand(N * C, 1),
    w = rand(OC * C, 2, 0.5),
    bias = rand(OC, 3);
  const out = new Float32Array(N * OC);
  k.matmulForward(out, inp, w, bias, N, C, OC);
  const di = rand(N * C, 5),
    dw = rand(OC * C, 6),
    db = rand(OC, 7);
  k.matmulBackward(di, dw, db, rand(N * OC, 4), inp, w, N, C, OC);
  return [out, di, dw, db];
}

let path = '';
test('the addon builds without OpenBLAS and says so', { skip, timeout: 600_000 }, () => {
  path = buildNoBlasAddon();
  const info = nativeInfo(path);
  assert.equal(info.blas, 'none');
  assert.match(info.blasConfig, /own blocked GEMM/);
  assert.equal(nativeInfo().blas, 'openblas', 'the package build (CI installs libopenblas-dev) still uses OpenBLAS');
});

test('no-BLAS matmuls match the reference; fast mode equals deterministic mode bit for bit', { skip }, () => {
  assert.ok(path, 'built by the previous test');
  const ref = createRefKernels();
  const fast = createNativeKernels({ addonPath: path, deterministic: false, threads: 2 });
  const det = createNativeKernels({ addonPath: path, deterministic: true, threads: 1 });
  const abs = (a: Float32Array) => a.map(Math.abs);
  for (const [N, C, OC] of SHAPES) {
    const a = matmulAll(fast, N, C, OC),
      b = matmulAll(det, N, C, OC),
      r = matmulAll(ref, N, C, OC);
    // The scale of the summed terms: the same products over absolute values.
    const inp = abs(rand(N * C, 1)),
      w = abs(rand(OC * C, 2, 0.5));
    const s0 = new Float32Array(N * OC);
    ref.matmulForward(s0, inp, w, abs(rand(OC, 3)), N, C, OC);
    const s1 = abs(rand(N * C, 5)),
      s2 = abs(rand(OC * C, 6)),
      s3 = abs(rand(OC, 7));
    ref.matmulBackward(s1, s2, s3, abs(rand(N * OC, 4)), inp, w, N, C, OC);
    const scales = [s0, s1, s2, s3];
    a.forEach((x, i) => {
      const e = errVs(x, r[i], scales[i]);
      assert.ok(e < 1e-4, `N=${N} C=${C} OC=${OC} output #${i}: error ${e.toExponential(2)}`);
      bitsEqual(x, b[i], `fast vs deterministic N=${N} C=${C} OC=${OC} output #${i}`);
    });
  }
});

test('no-BLAS build gives the OpenBLAS build deterministic-mode bits', { skip }, () => {
  assert.ok(path, 'built by the first test');
  const mine = createNativeKernels({ addonPath: path, deterministic: false, threads: 2 });
  const theirs = createNativeKernels({ deterministic: true, threads: 2 });
  for (const [N, C, OC] of SHAPES) {
    const a = matmulAll(mine, N, C, OC),
      b = matmulAll(theirs, N, C, OC);
    a.forEach((x, i) => bitsEqual(x, b[i], `N=${N} C=${C} OC=${OC} output #${i}`));
  }
  // The other kernels are the same code in both builds; one training-shaped attention check.
  const B = 2,
    T = 9,
    C = 24,
    NH = 3;
  const qkv = rand(B * T * 3 * C, 9);
  const o1 = new Float32Array(B * T * C),
    o2 = new Float32Array(B * T * C),
    at1 = new Float32Array(B * NH * T * T),
    at2 = new Float32Array(B * NH * T * T);
  mine.attentionForward(o1, at1, qkv, B, T, C, NH);
  theirs.attentionForward(o2, at2, qkv, B, T, C, NH);
  bitsEqual(o1, o2, 'attention out');
  // The Llama family's kernels are built into the no-BLAS addon too: grouped-query attention
  // (its small GEMMs are the own GEMM in both builds), RMSNorm and SwiGLU, forward and backward.
  const KV = 1,
    hd = 8,
    q = rand(B * T * NH * hd, 10),
    kk = rand(B * T * KV * hd, 11),
    v = rand(B * T * KV * hd, 12);
  const outs = [mine, theirs].map((k) => {
    const out = new Float32Array(q.length),
      att = new Float32Array(B * NH * T * T),
      dq = new Float32Array(q.length),
      dk = new Float32Array(kk.length),
      dv = new Float32Array(v.length);
    k.gqaForward(out, att, q, kk, v, B, T, NH, KV, hd);
    k.gqaBackward(dq, dk, dv, new Float32Array(att.length), rand(q.length, 13), q, kk, v, att, B, T, NH, KV, hd);
    const xn = new Float32Array(B * T * C),
      rstd = new Float32Array(B * T),
      dx = new Float32Array(xn.length),
      dw = new Float32Array(C);
    k.rmsnormForward(xn, rstd, qkv.subarray(0, xn.length), rand(C, 14), B * T, C, 1e-5);
    k.rmsnormBackward(dx, dw, rand(xn.length, 15), qkv.subarray(0, xn.length), rand(C, 14), rstd, B * T, C);
    const h = new Float32Array(xn.length),
      dg = new Float32Array(xn.length),
      du = new Float32Array(xn.length);
    k.swigluForward(h, xn, dx, xn.length);
    k.swigluBackward(dg, du, rand(xn.length, 16), xn, dx, xn.length);
    return [out, att, dq, dk, dv, xn, rstd, dx, dw, h, dg, du];
  });
  outs[0].forEach((x, i) => bitsEqual(x, outs[1][i], `Llama kernels output #${i}`));
  const g = sgemmBench(64, 64, 64, 2, { addonPath: path, threads: 2, transB: true });
  assert.ok(g > 0 && Number.isFinite(g), `own-GEMM sgemmBench ${g} GFLOP/s`);
});
