/**
 * The Llama family's native kernels (RMSNorm, RoPE, SwiGLU, grouped-query attention; native/src/
 * llama_impl.inc) against their reference (src/kernels/ref-llama.ts, through createRefKernels):
 * every op forward and backward to ~1e-5 of the output's scale in every mode, RoPE bit for bit
 * (same arithmetic on the same float tables), deterministic mode bitwise identical across calls,
 * thread counts and instruction sets, and argument checks that throw before touching memory.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRefKernels } from '../src/kernels/ref.js';
import { createNativeKernels, type NativeKernelOptions } from '../src/kernels/native.js';
import type { Kernels } from '../src/kernels/api.js';
import { ropeTables } from '../src/model/llama-config.js';
import { uniform } from '../src/util/rng.js';

const skip = process.env.TESSERA_KERNELS === 'ref' ? 'TESSERA_KERNELS=ref: native kernels disabled' : false;

function rand(n: number, seed: number, scale = 1): Float32Array {
  const r = uniform(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * scale;
  return a;
}

/** max|a−b| / max(1e-6, max|b|): error relative to the scale of the reference output. */
function relErr(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let d = 0,
    m = 0;
  for (let i = 0; i < a.length; i++) {
    if (Number.isNaN(a[i]) !== Number.isNaN(b[i])) return Infinity;
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / Math.max(1e-6, m);
}

let worstSeen = 0;
function close(a: Float32Array, b: Float32Array, what: string, tol = 1e-5): void {
  const e = relErr(a, b);
  worstSeen = Math.max(worstSeen, e);
  assert.ok(e < tol, `${what}: relative error ${e.toExponential(2)} >= ${tol}`);
}

function bitsEqual(a: Float32Array, b: Float32Array, what: string): void {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  assert.equal(x.length, y.length, `${what}: length`);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) assert.fail(`${what}: differs at ${i}: ${a[i]} vs ${b[i]}`);
}

const MODES: [string, NativeKernelOptions][] = [
  ['fast', { deterministic: false, threads: 2 }],
  ['deterministic', { deterministic: true, threads: 2 }],
  ['deterministic/baseline-isa/1-thread', { deterministic: true, threads: 1, isa: 'baseline' }],
];
const ref = createRefKernels();
const natives = (): [string, Kernels][] => MODES.map(([l, o]) => [l, createNativeKernels(o)]);

/** RoPE tables as the model builds them: float64 math, rounded to float32 once. */
function tables(T: number, hd: number, theta = 10000): { cos: Float32Array; sin: Float32Array } {
  const t = ropeTables({ headDim: hd, ropeTheta: theta, ropeScaling: { type: 'linear', factor: 2 } }, T);
  return { cos: Float32Array.from(t.cos), sin: Float32Array.from(t.sin) };
}

// Row shapes cross the 16-lane blocks and the 2·L column blocks of dweight; C = 1 and 515 are odd.
const ROWS: [number, number][] = [
  [1, 1],
  [26, 37],
  [7, 515],
  [210, 48],
];
// (B, T, NH, KV, hd): MHA, GQA 4:2 and 6:1, T across the attention row block (64), odd hd.
const GQA: [number, number, number, number, number][] = [
  [1, 1, 1, 1, 4],
  [2, 13, 4, 2, 6],
  [1, 9, 6, 1, 5],
  [2, 70, 4, 2, 16],
];

test('RMSNorm forward/backward match the reference', { skip }, () => {
  for (const [label, k] of natives())
    for (const [N, C] of ROWS)
      for (const eps of [1e-5, 1e-6]) {
        const what = `${label} N=${N} C=${C} eps=${eps}`;
        const x = rand(N * C, 1, 2),
          w = rand(C, 2);
        const o1 = new Float32Array(N * C),
          r1 = new Float32Array(N),
          o2 = new Float32Array(N * C),
          r2 = new Float32Array(N);
        k.rmsnormForward(o1, r1, x, w, N, C, eps);
        ref.rmsnormForward(o2, r2, x, w, N, C, eps);
        close(o1, o2, `rmsnormForward out ${what}`);
        close(r1, r2, `rmsnormForward rstd ${what}`);
        const dout = rand(N * C, 3);
        const dx1 = rand(N * C, 4),
          dw1 = rand(C, 5),
          dx2 = dx1.slice(),
          dw2 = dw1.slice();
        k.rmsnormBackward(dx1, dw1, dout, x, w, r2, N, C);
        ref.rmsnormBackward(dx2, dw2, dout, x, w, r2, N, C);
        close(dx1, dx2, `rmsnormBackward dinp ${what}`);
        close(dw1, dw2, `rmsnormBackward dweight ${what}`);
      }
});

test('RoPE forward/backward give the reference bits (same float tables, same arithmetic)', { skip }, () => {
  for (const [label, k] of natives())
    for (const [B, T, nh, hd] of [
      [1, 1, 1, 2],
      [2, 13, 4, 6],
      [3, 70, 2, 64],
    ]) {
      // Tables for more positions than used: the kernels read rows 0..T−1 only.
      const { cos, sin } = tables(T + 5, hd);
      const x = rand(B * T * nh * hd, 6, 3);
      const a = x.slice(),
        b = x.slice();
      k.ropeForward(a, cos, sin, B, T, nh, hd);
      ref.ropeForward(b, cos, sin, B, T, nh, hd);
      bitsEqual(a, b, `ropeForward ${label} B=${B} T=${T} nh=${nh} hd=${hd}`);
      k.ropeBackward(a, cos, sin, B, T, nh, hd);
      ref.ropeBackward(b, cos, sin, B, T, nh, hd);
      bitsEqual(a, b, `ropeBackward ${label}`);
      close(a, x, `rope backward undoes forward ${label}`, 1e-6);
    }
});

test('SwiGLU forward/backward match the reference, including large |gate|', { skip }, () => {
  for (const [label, k] of natives())
    for (const n of [1, 7, 8, 37, 5000]) {
      const g = rand(n, 7, 12),
        u = rand(n, 8, 2);
      if (n > 3) {
        g[0] = 95; // exp(−g) underflows
        g[1] = -95; // exp(−g) saturates
        g[2] = 0;
      }
      const o1 = new Float32Array(n),
        o2 = new Float32Array(n);
      k.swigluForward(o1, g, u, n);
      ref.swigluForward(o2, g, u, n);
      close(o1, o2, `swigluForward ${label} n=${n}`);
      const dout = rand(n, 9);
      const dg1 = rand(n, 10),
        du1 = rand(n, 11),
        dg2 = dg1.slice(),
        du2 = du1.slice();
      k.swigluBackward(dg1, du1, dout, g, u, n);
      ref.swigluBackward(dg2, du2, dout, g, u, n);
      close(dg1, dg2, `swigluBackward dgate ${label} n=${n}`);
      close(du1, du2, `swigluBackward dup ${label} n=${n}`);
      // In place, as the model may call it (out aliasing gate).
      const inPlace = g.slice();
      k.swigluForward(inPlace, inPlace, u, n);
      bitsEqual(inPlace, o1, `swigluForward out === gate ${label}`);
    }
});

test('grouped-query attention forward/backward match the reference (MHA, GQA, MQA)', { skip }, () => {
  for (const [label, k] of natives())
    for (const [B, T, NH, KV, hd] of GQA) {
      const what = `${label} B=${B} T=${T} NH=${NH} KV=${KV} hd=${hd}`;
      const nq = B * T * NH * hd,
        nk = B * T * KV * hd,
        na = B * NH * T * T;
      const q = rand(nq, 12, 1.5),
        kk = rand(nk, 13, 1.5),
        v = rand(nk, 14);
      const o1 = new Float32Array(nq),
        a1 = rand(na, 15), // fully overwritten
        o2 = new Float32Array(nq),
        a2 = new Float32Array(na);
      k.gqaForward(o1, a1, q, kk, v, B, T, NH, KV, hd);
      ref.gqaForward(o2, a2, q, kk, v, B, T, NH, KV, hd);
      close(o1, o2, `gqaForward out ${what}`);
      close(a1, a2, `gqaForward att ${what}`);
      for (let i = 0; i < B * NH * T; i++)
        for (let u = (i % T) + 1; u < T; u++) assert.equal(a1[i * T + u], 0, 'upper triangle of att is zero');
      const dout = rand(nq, 16);
      const dq1 = rand(nq, 17),
        dk1 = rand(nk, 18),
        dv1 = rand(nk, 19);
      const dq2 = dq1.slice(),
        dk2 = dk1.slice(),
        dv2 = dv1.slice();
      k.gqaBackward(dq1, dk1, dv1, rand(na, 20), dout, q, kk, v, a2, B, T, NH, KV, hd);
      ref.gqaBackward(dq2, dk2, dv2, new Float32Array(na), dout, q, kk, v, a2, B, T, NH, KV, hd);
      close(dq1, dq2, `gqaBackward dq ${what}`);
      close(dk1, dk2, `gqaBackward dk ${what}`);
      close(dv1, dv2, `gqaBackward dv ${what}`);
    }
  console.log(`native vs reference, worst relative error over every Llama kernel: ${worstSeen.toExponential(2)}`);
});

/** Every Llama kernel once, training-shaped: the outputs in a fixed order. */
function runAll(k: Kernels): Float32Array[] {
  const B = 3,
    T = 70,
    NH = 6,
    KV = 2,
    hd = 16,
    C = 72,
    H = 200,
    N = B * T;
  const outs: Float32Array[] = [];
  const x = rand(N * C, 40),
    w = rand(C, 41);
  const xn = new Float32Array(N * C),
    rstd = new Float32Array(N);
  k.rmsnormForward(xn, rstd, x, w, N, C, 1e-6);
  const dx = rand(N * C, 42),
    dw = rand(C, 43);
  k.rmsnormBackward(dx, dw, rand(N * C, 44), x, w, rstd, N, C);
  outs.push(xn, rstd, dx, dw);
  const { cos, sin } = tables(T, hd, 500000);
  const q = rand(N * NH * hd, 45),
    kk = rand(N * KV * hd, 46),
    v = rand(N * KV * hd, 47);
  k.ropeForward(q, cos, sin, B, T, NH, hd);
  k.ropeForward(kk, cos, sin, B, T, KV, hd);
  const out = new Float32Array(N * NH * hd),
    att = new Float32Array(B * NH * T * T);
  k.gqaForward(out, att, q, kk, v, B, T, NH, KV, hd);
  const dq = rand(q.length, 48),
    dk = rand(kk.length, 49),
    dv = rand(v.length, 50);
  k.gqaBackward(dq, dk, dv, new Float32Array(att.length), rand(out.length, 51), q, kk, v, att, B, T, NH, KV, hd);
  k.ropeBackward(dq, cos, sin, B, T, NH, hd);
  k.ropeBackward(dk, cos, sin, B, T, KV, hd);
  outs.push(q, kk, out, att, dq, dk, dv);
  const gate = rand(N * H, 52, 4),
    up = rand(N * H, 53);
  const h = new Float32Array(N * H);
  k.swigluForward(h, gate, up, N * H);
  const dg = rand(N * H, 54),
    du = rand(N * H, 55);
  k.swigluBackward(dg, du, rand(N * H, 56), gate, up, N * H);
  outs.push(h, dg, du);
  return outs;
}

test('deterministic mode: the Llama kernels give the same bits across calls, thread counts and ISAs', { skip }, () => {
  const base = runAll(createNativeKernels({ deterministic: true, threads: 1 }));
  const variants: [string, NativeKernelOptions][] = [
    ['threads=1 again', { deterministic: true, threads: 1 }],
    ['threads=2', { deterministic: true, threads: 2 }],
    ['threads=3 (oversubscribed)', { deterministic: true, threads: 3 }],
    ['threads=7', { deterministic: true, threads: 7 }],
    ['baseline x86-64 code path', { deterministic: true, threads: 2, isa: 'baseline' }],
  ];
  for (const [label, opts] of variants) {
    const outs = runAll(createNativeKernels(opts));
    outs.forEach((o, i) => bitsEqual(o, base[i], `${label}: output #${i}`));
  }
});

test('bad arguments to the Llama kernels throw clear errors instead of touching memory', { skip }, () => {
  const k = createNativeKernels();
  const f = (n: number) => new Float32Array(n);
  assert.throws(() => k.rmsnormForward(f(6), f(1), f(6), f(3), 2, 3, 1e-5), /rstd has 1 elements but needs N/);
  assert.throws(() => k.rmsnormForward(f(6), f(2), f(6), f(3), 2, 3, 0), /eps must be in/);
  assert.throws(() => k.rmsnormForward(f(6), f(2), f(6), f(2), 2, 3, 1e-5), /weight has 2 elements/);
  assert.throws(() => k.rmsnormBackward(f(6), f(3), f(6), f(5), f(3), f(2), 2, 3), /inp has 5 elements/);
  assert.throws(() => k.ropeForward(f(12), f(6), f(6), 1, 2, 2, 3), /hd must be even/);
  assert.throws(() => k.ropeForward(f(16), f(3), f(4), 1, 2, 2, 4), /cos has 3 elements but needs T\*hd\/2/);
  assert.throws(() => k.swigluBackward(f(4), f(4), f(3), f(4), f(4), 4), /dout has 3 elements/);
  assert.throws(() => k.gqaForward(f(24), f(12), f(24), f(12), f(12), 1, 2, 3, 2, 4), /multiple of KV/);
  assert.throws(() => k.gqaForward(f(32), f(16), f(32), f(16), f(15), 1, 2, 4, 2, 4), /v has 15 elements/);
  assert.throws(
    () => k.gqaBackward(f(32), f(16), f(16), f(15), f(32), f(32), f(16), f(16), f(16), 1, 2, 4, 2, 4),
    /datt has 15 elements but needs B\*NH\*T\*T/,
  );
  // Outputs sharing memory with inputs.
  const buf = f(200);
  assert.throws(
    () => k.gqaForward(buf.subarray(0, 32), f(16), buf.subarray(16, 48), f(16), f(16), 1, 2, 4, 2, 4),
    /overlaps/,
  );
  assert.throws(() => k.ropeForward(buf.subarray(0, 16), buf.subarray(8, 12), f(4), 1, 2, 2, 4), /overlaps/);
  assert.throws(() => k.swigluForward(f(4), new Float64Array(4) as unknown as Float32Array, f(4), 4), TypeError);
});
