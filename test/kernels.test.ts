/**
 * Native kernels against the TypeScript reference (the specification), in fast and deterministic
 * modes, plus the contract details: accumulate (+=) semantics, aliasing, argument validation, and
 * bitwise determinism across repeated calls, thread counts (1 vs 2) and instruction sets
 * (baseline x86-64 vs AVX2 code paths, which stands in for "across machines").
 *
 * If the addon cannot load, these tests fail (with the reason) unless TESSERA_KERNELS=ref, in
 * which case they are skipped: a broken native build must not pass CI silently.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Kernels } from '../src/kernels/api.js';
import { createRefKernels, loadKernels } from '../src/kernels/index.js';
import { createNativeKernels, nativeInfo, sgemmBench, type NativeKernelOptions } from '../src/kernels/native.js';
import { uniform } from '../src/util/rng.js';

const skip = process.env.TESSERA_KERNELS === 'ref' ? 'TESSERA_KERNELS=ref: native kernels disabled' : false;

// ---------------------------------------------------------------------------------------------
// helpers

const rng = uniform;

function rand(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * scale;
  return a;
}

function randInt(n: number, seed: number, lo: number, hi: number): Int32Array {
  const r = rng(seed);
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = lo + Math.floor(r() * (hi - lo));
  return a;
}

/** max|a-b| / max(1e-6, max|b|): error relative to the scale of the reference output. */
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

function close(a: Float32Array, b: Float32Array, what: string, tol = 1e-4, scale?: Float32Array): void {
  const e = scale ? absErr(a, b) / Math.max(1e-6, maxAbs(scale)) : relErr(a, b);
  assert.ok(e < tol, `${what}: relative error ${e.toExponential(2)} >= ${tol}`);
}

function absErr(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++)
    d = Math.max(d, Number.isNaN(a[i]) !== Number.isNaN(b[i]) ? Infinity : Math.abs(a[i] - b[i]));
  return d;
}

function maxAbs(a: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

const abs = (a: Float32Array) => a.map(Math.abs);

function bitsEqual(a: Float32Array, b: Float32Array, what: string): void {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  assert.equal(x.length, y.length, `${what}: length`);
  for (let i = 0; i < x.length; i++) {
    if (x[i] !== y[i]) assert.fail(`${what}: differs at ${i}: ${a[i]} vs ${b[i]}`);
  }
}

interface Mode {
  label: string;
  opts: NativeKernelOptions;
}
const MODES: Mode[] = [
  { label: 'fast', opts: { deterministic: false, threads: 2 } },
  { label: 'deterministic', opts: { deterministic: true, threads: 2 } },
  { label: 'deterministic/baseline-isa/1-thread', opts: { deterministic: true, threads: 1, isa: 'baseline' } },
];

const ref = createRefKernels();
function natives(): [Mode, Kernels][] {
  return MODES.map((m) => [m, createNativeKernels(m.opts)]);
}

// Sizes: tiny, the reference-ish awkward one, and bigger ones that cross the GEMM cache blocks
// (k > 256, rows > 144, columns > 2048) and the attention row block (T > 64).
const MATMUL_SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [5, 1, 3],
  [4, 3, 1],
  [1, 5, 7],
  [26, 24, 72],
  [37, 29, 41],
  [300, 17, 3],
  [210, 300, 389],
  [20, 40, 2100],
  [0, 4, 5],
  [3, 0, 4],
];
const ATTN_SHAPES: [number, number, number, number][] = [
  [1, 1, 4, 1],
  [2, 13, 24, 3],
  [3, 70, 48, 4],
];
const ROW_SHAPES: [number, number][] = [
  [1, 1],
  [26, 37],
  [7, 515],
  [210, 48],
];

// ---------------------------------------------------------------------------------------------
// native vs reference

test('matmul forward/backward match the reference (accumulating, with and without bias)', { skip }, () => {
  for (const [mode, k] of natives()) {
    for (const [N, C, OC] of MATMUL_SHAPES) {
      for (const withBias of [true, false]) {
        const what = `${mode.label} N=${N} C=${C} OC=${OC} bias=${withBias}`;
        const inp = rand(N * C, 1),
          w = rand(OC * C, 2, 0.5),
          bias = withBias ? rand(OC, 3) : null;
        const o1 = rand(N * OC, 99),
          o2 = new Float32Array(N * OC);
        k.matmulForward(o1, inp, w, bias, N, C, OC);
        ref.matmulForward(o2, inp, w, bias, N, C, OC);
        // Error is measured against the magnitude of the summed terms (the same sums over |x|, |w|,
        // |b|), not of the result: a float32 sum that nearly cancels (N=C=OC=1: x·w ≈ −b) is
        // legitimately off from the float64 reference by ~1e-7 of its terms, not of its result.
        const o3 = new Float32Array(N * OC);
        ref.matmulForward(o3, abs(inp), abs(w), bias ? abs(bias) : null, N, C, OC);
        close(o1, o2, `matmulForward ${what}`, 1e-4, o3);
        const dout = rand(N * OC, 4);
        const di1 = rand(N * C, 5),
          dw1 = rand(OC * C, 6),
          db1 = withBias ? rand(OC, 7) : null;
        const di2 = di1.slice(),
          dw2 = dw1.slice(),
          db2 = db1 ? db1.slice() : null;
        const di3 = abs(di1),
          dw3 = abs(dw1),
          db3 = db1 ? abs(db1) : null;
        k.matmulBackward(di1, dw1, db1, dout, inp, w, N, C, OC);
        ref.matmulBackward(di2, dw2, db2, dout, inp, w, N, C, OC);
        ref.matmulBackward(di3, dw3, db3, abs(dout), abs(inp), abs(w), N, C, OC);
        close(di1, di2, `matmulBackward dinp ${what}`, 1e-4, di3);
        close(dw1, dw2, `matmulBackward dweight ${what}`, 1e-4, dw3);
        if (db1 && db2 && db3) close(db1, db2, `matmulBackward dbias ${what}`, 1e-4, db3);
      }
    }
  }
});

test('layernorm forward/backward match the reference', { skip }, () => {
  for (const [mode, k] of natives()) {
    for (const [N, C] of ROW_SHAPES) {
      const what = `${mode.label} N=${N} C=${C}`;
      const inp = rand(N * C, 10, 2),
        w = rand(C, 11),
        b = rand(C, 12);
      const o1 = new Float32Array(N * C),
        m1 = new Float32Array(N),
        r1 = new Float32Array(N);
      const o2 = new Float32Array(N * C),
        m2 = new Float32Array(N),
        r2 = new Float32Array(N);
      k.layernormForward(o1, m1, r1, inp, w, b, N, C);
      ref.layernormForward(o2, m2, r2, inp, w, b, N, C);
      close(o1, o2, `layernormForward out ${what}`);
      close(m1, m2, `layernormForward mean ${what}`);
      close(r1, r2, `layernormForward rstd ${what}`);
      const dout = rand(N * C, 13);
      const di1 = rand(N * C, 14),
        dw1 = rand(C, 15),
        db1 = rand(C, 16);
      const di2 = di1.slice(),
        dw2 = dw1.slice(),
        db2 = db1.slice();
      k.layernormBackward(di1, dw1, db1, dout, inp, w, m2, r2, N, C);
      ref.layernormBackward(di2, dw2, db2, dout, inp, w, m2, r2, N, C);
      close(di1, di2, `layernormBackward dinp ${what}`);
      close(dw1, dw2, `layernormBackward dweight ${what}`);
      close(db1, db2, `layernormBackward dbias ${what}`);
    }
  }
});

test('gelu forward/backward match the reference, including large |x|', { skip }, () => {
  for (const [mode, k] of natives()) {
    for (const n of [1, 7, 37, 100_003]) {
      const inp = rand(n, 20, 6);
      if (n > 4) {
        inp[0] = -30;
        inp[1] = 30;
        inp[2] = 0;
        inp[3] = -12;
      }
      const o1 = new Float32Array(n),
        o2 = new Float32Array(n);
      k.geluForward(o1, inp, n);
      ref.geluForward(o2, inp, n);
      close(o1, o2, `geluForward ${mode.label} n=${n}`);
      const dout = rand(n, 21),
        d1 = rand(n, 22),
        d2 = d1.slice();
      k.geluBackward(d1, inp, dout, n);
      ref.geluBackward(d2, inp, dout, n);
      close(d1, d2, `geluBackward ${mode.label} n=${n}`);
    }
  }
});

test('attention forward/backward match the reference', { skip }, () => {
  for (const [mode, k] of natives()) {
    for (const [B, T, C, NH] of ATTN_SHAPES) {
      const what = `${mode.label} B=${B} T=${T} C=${C} NH=${NH}`;
      const inp = rand(B * T * 3 * C, 30, 1.5);
      const o1 = new Float32Array(B * T * C),
        a1 = rand(B * NH * T * T, 31); // att is fully overwritten
      const o2 = new Float32Array(B * T * C),
        a2 = new Float32Array(B * NH * T * T);
      k.attentionForward(o1, a1, inp, B, T, C, NH);
      ref.attentionForward(o2, a2, inp, B, T, C, NH);
      close(o1, o2, `attentionForward out ${what}`);
      close(a1, a2, `attentionForward att ${what}`);
      for (let i = 0; i < B * NH * T; i++) {
        const t = i % T;
        for (let u = t + 1; u < T; u++) assert.equal(a1[i * T + u], 0, 'upper triangle of att must be zero');
      }
      const dout = rand(B * T * C, 32);
      const d1 = rand(B * T * 3 * C, 33),
        d2 = d1.slice();
      const s1 = rand(B * NH * T * T, 34),
        s2 = new Float32Array(B * NH * T * T);
      k.attentionBackward(d1, s1, dout, inp, a2, B, T, C, NH);
      ref.attentionBackward(d2, s2, dout, inp, a2, B, T, C, NH);
      close(d1, d2, `attentionBackward dinp ${what}`);
    }
  }
});

test('cross-entropy (with ignored targets) and softmax match the reference', { skip }, () => {
  for (const [mode, k] of natives()) {
    for (const [N, V] of [
      [1, 1],
      [26, 37],
      [5, 4099],
      [64, 515],
    ] as [number, number][]) {
      const what = `${mode.label} N=${N} V=${V}`;
      const logits = rand(N * V, 40, 8);
      const targets = randInt(N, 41, 0, V);
      if (N > 2) targets[1] = -1;
      const scale = 1 / N;
      const l1 = new Float32Array(N),
        l2 = new Float32Array(N);
      const g1 = rand(N * V, 42),
        g2 = new Float32Array(N * V);
      k.crossEntropyForwardBackward(l1, g1, logits, targets, N, V, scale);
      ref.crossEntropyForwardBackward(l2, g2, logits, targets, N, V, scale);
      close(l1, l2, `crossEntropy losses ${what}`);
      close(g1, g2, `crossEntropy dlogits ${what}`);
      const l3 = new Float32Array(N);
      k.crossEntropyForwardBackward(l3, null, logits, targets, N, V, scale);
      bitsEqual(l3, l1, `crossEntropy losses without dlogits ${what}`);
      const p1 = new Float32Array(N * V),
        p2 = new Float32Array(N * V);
      k.softmax(p1, logits, N, V);
      ref.softmax(p2, logits, N, V);
      close(p1, p2, `softmax ${what}`);
    }
  }
});

test('embedding forward/backward match the reference (repeated tokens accumulate)', { skip }, () => {
  for (const [mode, k] of natives()) {
    for (const [B, T, C, V] of [
      [2, 13, 24, 37],
      [3, 70, 48, 5],
      [1, 1, 1, 1],
    ] as [number, number, number, number][]) {
      const what = `${mode.label} B=${B} T=${T} C=${C} V=${V}`;
      const tokens = randInt(B * T, 50, 0, V);
      const wte = rand(V * C, 51),
        wpe = rand(T * C, 52);
      const o1 = new Float32Array(B * T * C),
        o2 = new Float32Array(B * T * C);
      k.embeddingForward(o1, tokens, wte, wpe, B, T, C);
      ref.embeddingForward(o2, tokens, wte, wpe, B, T, C);
      bitsEqual(o1, o2, `embeddingForward ${what}`);
      const dout = rand(B * T * C, 53);
      const e1 = rand(V * C, 54),
        p1 = rand(T * C, 55),
        e2 = e1.slice(),
        p2 = p1.slice();
      k.embeddingBackward(e1, p1, dout, tokens, B, T, C);
      ref.embeddingBackward(e2, p2, dout, tokens, B, T, C);
      // Same order of float32 additions as the reference: exact.
      bitsEqual(e1, e2, `embeddingBackward dwte ${what}`);
      bitsEqual(p1, p2, `embeddingBackward dwpe ${what}`);
    }
  }
});

test('add, scale, sumSquares and AdamW match the reference', { skip }, () => {
  for (const [mode, k] of natives()) {
    for (const n of [0, 1, 37, 200_001]) {
      const what = `${mode.label} n=${n}`;
      const a = rand(n, 60),
        b = rand(n, 61);
      const o1 = new Float32Array(n),
        o2 = new Float32Array(n);
      k.add(o1, a, b, n);
      ref.add(o2, a, b, n);
      bitsEqual(o1, o2, `add ${what}`);
      const s1 = a.slice(),
        s2 = a.slice();
      k.scale(s1, 0.37);
      ref.scale(s2, 0.37);
      bitsEqual(s1, s2, `scale ${what}`);
      const ss = k.sumSquares(a),
        sr = ref.sumSquares(a);
      assert.ok(Math.abs(ss - sr) <= 1e-9 * Math.max(1, sr), `sumSquares ${what}: ${ss} vs ${sr}`);
      const p1 = rand(n, 62),
        m1 = new Float32Array(n),
        v1 = new Float32Array(n);
      const p2 = p1.slice(),
        m2 = m1.slice(),
        v2 = v1.slice();
      for (let step = 1; step <= 3; step++) {
        const g = rand(n, 63 + step, 0.1);
        k.adamw(p1, g, m1, v1, 1e-3, 0.9, 0.95, 1e-8, 0.1, step);
        ref.adamw(p2, g, m2, v2, 1e-3, 0.9, 0.95, 1e-8, 0.1, step);
      }
      close(p1, p2, `adamw params ${what}`, 1e-6);
      close(m1, m2, `adamw m ${what}`);
      close(v1, v2, `adamw v ${what}`);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// aliasing

test('aliasing: crossEntropy dlogits === logits, add out === a, in-place gelu and softmax', { skip }, () => {
  for (const [mode, k] of natives()) {
    const N = 26,
      V = 37;
    const logits = rand(N * V, 70, 5),
      targets = randInt(N, 71, 0, V);
    const l1 = new Float32Array(N),
      g1 = new Float32Array(N * V);
    k.crossEntropyForwardBackward(l1, g1, logits, targets, N, V, 0.5);
    const inplace = logits.slice(),
      l2 = new Float32Array(N);
    k.crossEntropyForwardBackward(l2, inplace, inplace, targets, N, V, 0.5);
    bitsEqual(l2, l1, `${mode.label} losses with dlogits aliasing logits`);
    bitsEqual(inplace, g1, `${mode.label} dlogits aliasing logits`);
    const a = rand(1000, 72),
      b = rand(1000, 73),
      sum = new Float32Array(1000);
    k.add(sum, a, b, 1000);
    const a2 = a.slice();
    k.add(a2, a2, b, 1000);
    bitsEqual(a2, sum, `${mode.label} add out === a`);
    const gx = rand(999, 74, 4),
      gy = new Float32Array(999);
    k.geluForward(gy, gx, 999);
    k.geluForward(gx, gx, 999);
    bitsEqual(gx, gy, `${mode.label} gelu in place`);
    const p = new Float32Array(N * V);
    k.softmax(p, logits, N, V);
    const q = logits.slice();
    k.softmax(q, q, N, V);
    bitsEqual(q, p, `${mode.label} softmax in place`);
  }
});

// ---------------------------------------------------------------------------------------------
// determinism

/** Runs every kernel once on fixed inputs (reference-like shapes) and returns all outputs. */
function runAll(k: Kernels): Float32Array[] {
  const B = 3,
    T = 70,
    C = 48,
    NH = 4,
    V = 515,
    N = B * T,
    OC = 4 * C;
  const outs: Float32Array[] = [];
  const x = rand(N * C, 80),
    w = rand(OC * C, 81, 0.3),
    bias = rand(OC, 82);
  const y = new Float32Array(N * OC);
  k.matmulForward(y, x, w, bias, N, C, OC);
  const dy = rand(N * OC, 83),
    dx = rand(N * C, 84),
    dw = rand(OC * C, 85),
    db = rand(OC, 86);
  k.matmulBackward(dx, dw, db, dy, x, w, N, C, OC);
  // A matmul with k > 256 (several k blocks) and N not a multiple of 16.
  const K2 = 700,
    x2 = rand(N * K2, 87),
    w2 = rand(37 * K2, 88),
    y2 = new Float32Array(N * 37);
  k.matmulForward(y2, x2, w2, null, N, K2, 37);
  outs.push(y, dx, dw, db, y2);
  const lo = new Float32Array(N * C),
    mean = new Float32Array(N),
    rstd = new Float32Array(N);
  const lw = rand(C, 89),
    lb = rand(C, 90);
  k.layernormForward(lo, mean, rstd, x, lw, lb, N, C);
  const ldx = rand(N * C, 91),
    ldw = rand(C, 92),
    ldb = rand(C, 93);
  k.layernormBackward(ldx, ldw, ldb, rand(N * C, 94), x, lw, mean, rstd, N, C);
  outs.push(lo, mean, rstd, ldx, ldw, ldb);
  const g = new Float32Array(N * OC),
    gd = rand(N * OC, 95);
  k.geluForward(g, y, N * OC);
  k.geluBackward(gd, y, dy, N * OC);
  outs.push(g, gd);
  const qkv = rand(N * 3 * C, 96),
    ao = new Float32Array(N * C),
    att = new Float32Array(B * NH * T * T);
  k.attentionForward(ao, att, qkv, B, T, C, NH);
  const adq = rand(N * 3 * C, 97),
    datt = new Float32Array(B * NH * T * T);
  k.attentionBackward(adq, datt, rand(N * C, 98), qkv, att, B, T, C, NH);
  outs.push(ao, att, adq);
  const logits = rand(N * V, 99, 6),
    targets = randInt(N, 100, 0, V);
  const losses = new Float32Array(N),
    dl = new Float32Array(N * V),
    probs = new Float32Array(N * V);
  k.crossEntropyForwardBackward(losses, dl, logits, targets, N, V, 1 / N);
  k.softmax(probs, logits, N, V);
  outs.push(losses, dl, probs);
  const tokens = randInt(N, 101, 0, V),
    wte = rand(V * C, 102),
    wpe = rand(T * C, 103);
  const emb = new Float32Array(N * C),
    dwte = rand(V * C, 104),
    dwpe = rand(T * C, 105);
  k.embeddingForward(emb, tokens, wte, wpe, B, T, C);
  k.embeddingBackward(dwte, dwpe, rand(N * C, 106), tokens, B, T, C);
  outs.push(emb, dwte, dwpe);
  const big = rand(300_001, 107);
  outs.push(new Float32Array(new Float64Array([k.sumSquares(big)]).buffer)); // the float64's bits
  const p = rand(50_000, 108),
    m = new Float32Array(50_000),
    v = new Float32Array(50_000);
  k.adamw(p, rand(50_000, 109, 0.1), m, v, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1);
  k.adamw(p, rand(50_000, 110, 0.1), m, v, 1e-3, 0.9, 0.95, 1e-8, 0.1, 2);
  outs.push(p, m, v);
  return outs;
}

test('deterministic mode is bitwise identical across calls, thread counts and instruction sets', { skip }, () => {
  const base = runAll(createNativeKernels({ deterministic: true, threads: 1 }));
  const variants: [string, NativeKernelOptions][] = [
    ['threads=1 again', { deterministic: true, threads: 1 }],
    ['threads=2', { deterministic: true, threads: 2 }],
    ['threads=2 again', { deterministic: true, threads: 2 }],
    ['threads=3 (oversubscribed)', { deterministic: true, threads: 3 }],
    ['baseline x86-64 code path', { deterministic: true, threads: 2, isa: 'baseline' }],
  ];
  for (const [label, opts] of variants) {
    const outs = runAll(createNativeKernels(opts));
    outs.forEach((o, i) => bitsEqual(o, base[i], `${label}: output #${i}`));
  }
});

test('fast mode is reproducible run to run at a fixed thread count', { skip }, () => {
  const k = createNativeKernels({ deterministic: false, threads: 2 });
  const a = runAll(k),
    b = runAll(k);
  a.forEach((o, i) => bitsEqual(o, b[i], `fast threads=2 output #${i}`));
});

// ---------------------------------------------------------------------------------------------
// validation

test('bad arguments throw clear errors instead of touching memory', { skip }, () => {
  const k = createNativeKernels();
  const f = (n: number) => new Float32Array(n);
  assert.throws(
    () => k.matmulForward(f(5), f(6), f(6), null, 2, 3, 3),
    (e: Error) => e instanceof RangeError && /out has 5 elements but needs N\*OC = 6/.test(e.message),
  );
  assert.throws(() => k.matmulBackward(f(6), f(9), f(3), f(6), f(6), f(8), 2, 3, 3), RangeError);
  assert.throws(() => k.layernormForward(f(6), f(2), f(1), f(6), f(3), f(3), 2, 3), /rstd has 1 elements/);
  assert.throws(() => k.geluForward(f(10), f(9), 10), RangeError);
  assert.throws(() => k.attentionForward(f(2 * 4 * 8), f(2 * 2 * 16 - 1), f(2 * 4 * 24), 2, 4, 8, 2), /att has/);
  assert.throws(() => k.attentionForward(f(2 * 4 * 8), f(2 * 3 * 16), f(2 * 4 * 24), 2, 4, 8, 3), /divisible/);
  assert.throws(
    () => k.crossEntropyForwardBackward(f(2), null, f(10), new Int32Array([0, 5]), 2, 5, 1),
    /targets\[1\] = 5 is out of range/,
  );
  assert.throws(
    () => k.embeddingForward(f(8), new Int32Array([0, 3]), f(6), f(8), 1, 2, 2),
    /tokens\[1\] = 3 is out of range/,
  );
  assert.throws(() => k.embeddingBackward(f(6), f(3), f(4), new Int32Array([0, 1]), 1, 2, 2), /dwpe has 3/);
  assert.throws(() => k.adamw(f(4), f(4), f(3), f(4), 1e-3, 0.9, 0.95, 1e-8, 0, 1), /m has 3 elements/);
  assert.throws(() => k.adamw(f(4), f(4), f(4), f(4), 1e-3, 0.9, 0.95, 1e-8, 0, 0), RangeError);
  assert.throws(() => k.add(f(4), f(4), f(4), -1), RangeError);
  assert.throws(() => k.add(f(4), f(4), f(4), 2.5), RangeError);
  // Wrong element types.
  assert.throws(() => k.add(new Float64Array(4) as unknown as Float32Array, f(4), f(4), 4), TypeError);
  assert.throws(
    () => k.embeddingForward(f(4), new Float32Array(2) as unknown as Int32Array, f(4), f(4), 1, 2, 2),
    /must be an Int32Array/,
  );
  // Overlapping output and input views of one buffer.
  const buf = f(100);
  assert.throws(() => k.matmulForward(buf.subarray(0, 6), buf.subarray(4, 10), f(9), null, 2, 3, 3), /overlaps/);
  assert.throws(
    () =>
      k.crossEntropyForwardBackward(f(2), buf.subarray(1, 11), buf.subarray(0, 10), new Int32Array([0, 1]), 2, 5, 1),
    /overlaps/,
  );
  // Views at an offset are fine.
  const x = buf.subarray(10, 16),
    y = buf.subarray(20, 26),
    z = buf.subarray(30, 36);
  x.fill(1);
  y.fill(2);
  k.add(z, x, y, 6);
  assert.deepEqual(Array.from(z), [3, 3, 3, 3, 3, 3]);
});

// ---------------------------------------------------------------------------------------------
// loading

test('loadKernels returns native kernels with options applied; TESSERA_KERNELS=ref forces ref', { skip }, () => {
  const k = loadKernels({ threads: 1, deterministic: true });
  assert.equal(k.name, 'native');
  assert.equal(k.getThreads(), 1);
  assert.equal(k.getDeterministic(), true);
  assert.equal(loadKernels({ prefer: 'ref' }).name, 'ref');
  const saved = process.env.TESSERA_KERNELS;
  try {
    process.env.TESSERA_KERNELS = 'ref';
    assert.equal(loadKernels({ prefer: 'native' }).name, 'ref');
  } finally {
    if (saved === undefined) delete process.env.TESSERA_KERNELS;
    else process.env.TESSERA_KERNELS = saved;
  }
  const info = nativeInfo();
  assert.match(info.blasConfig, /OpenBLAS/);
  assert.ok(sgemmBench(64, 64, 64, 2) > 0);
});
