/**
 * The Llama model and its kernels: every backward kernel against float64 central differences,
 * the whole model's gradient against float32 central differences, GQA reducing to GPT-2's
 * multi-head attention when kvHeads = heads, and the properties RoPE must have (position 0 is
 * the identity, norms are kept, scores depend only on the relative position, scaling acts on
 * the frequencies it should).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRefKernels } from '../src/kernels/ref.js';
import { loadKernels } from '../src/kernels/index.js';
import { createNativeKernels } from '../src/kernels/native.js';
import type { Kernels } from '../src/kernels/api.js';
import { Llama, llamaParamCount, llamaSpecs } from '../src/model/llama.js';
import { ropeInvFreq, ropeTables, TINY_LLAMA, type LlamaConfig } from '../src/model/llama-config.js';
import {
  gqaBackward,
  gqaForward,
  rmsnormBackward,
  rmsnormForward,
  ropeBackward,
  ropeForward,
  swigluBackward,
  swigluForward,
  type Arr,
} from '../src/kernels/ref-llama.js';

function rand(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s / 0x100000000) * 2 - 1;
  };
}

function randArr(n: number, seed: number, scale = 1): Float64Array {
  const u = rand(seed);
  return Float64Array.from({ length: n }, () => u() * scale);
}

/**
 * Check an analytic gradient against central differences of a float64 scalar function `f` of
 * the buffer `x` (perturbed in place). Returns the max relative error over all coordinates.
 */
function fdCheck(x: Float64Array, grad: Float64Array, f: () => number, h = 1e-5): number {
  let worst = 0;
  for (let i = 0; i < x.length; i++) {
    const x0 = x[i];
    x[i] = x0 + h;
    const fp = f();
    x[i] = x0 - h;
    const fm = f();
    x[i] = x0;
    const num = (fp - fm) / (2 * h);
    const err = Math.abs(num - grad[i]) / Math.max(1e-6, Math.abs(num) + Math.abs(grad[i]));
    worst = Math.max(worst, err);
  }
  return worst;
}

/** Σ out ⊙ w for a fixed random w: a scalar loss whose gradient wrt out is w. */
const dotWith = (out: Arr, w: Arr) => {
  let s = 0;
  for (let i = 0; i < out.length; i++) s += out[i] * w[i];
  return s;
};

test('RMSNorm backward matches float64 finite differences', () => {
  const N = 3,
    C = 7,
    eps = 1e-5;
  const x = randArr(N * C, 1),
    w = randArr(C, 2),
    dout = randArr(N * C, 3);
  const out = new Float64Array(N * C),
    rstd = new Float64Array(N);
  const f = () => {
    rmsnormForward(out, rstd, x, w, N, C, eps);
    return dotWith(out, dout);
  };
  f();
  const dx = new Float64Array(N * C),
    dw = new Float64Array(C);
  rmsnormBackward(dx, dw, dout, x, w, rstd, N, C);
  const ex = fdCheck(x, dx, f),
    ew = fdCheck(w, dw, f);
  console.log(`rmsnorm fd rel err: dx ${ex.toExponential(2)}, dw ${ew.toExponential(2)}`);
  assert.ok(ex < 1e-7 && ew < 1e-7, `${ex} ${ew}`);
});

test('SwiGLU backward matches float64 finite differences', () => {
  const n = 20;
  const g = randArr(n, 4, 3),
    u = randArr(n, 5),
    dout = randArr(n, 6);
  const out = new Float64Array(n);
  const f = () => {
    swigluForward(out, g, u, n);
    return dotWith(out, dout);
  };
  const dg = new Float64Array(n),
    du = new Float64Array(n);
  swigluBackward(dg, du, dout, g, u, n);
  const eg = fdCheck(g, dg, f),
    eu = fdCheck(u, du, f);
  console.log(`swiglu fd rel err: dgate ${eg.toExponential(2)}, dup ${eu.toExponential(2)}`);
  assert.ok(eg < 1e-7 && eu < 1e-7, `${eg} ${eu}`);
});

test('GQA attention backward matches float64 finite differences (4 query heads on 2 kv heads)', () => {
  const B = 2,
    T = 5,
    NH = 4,
    KV = 2,
    hd = 3;
  const q = randArr(B * T * NH * hd, 7),
    k = randArr(B * T * KV * hd, 8),
    v = randArr(B * T * KV * hd, 9),
    dout = randArr(B * T * NH * hd, 10);
  const out = new Float64Array(q.length),
    att = new Float64Array(B * NH * T * T);
  const f = () => {
    gqaForward(out, att, q, k, v, B, T, NH, KV, hd);
    return dotWith(out, dout);
  };
  f();
  const dq = new Float64Array(q.length),
    dk = new Float64Array(k.length),
    dv = new Float64Array(v.length),
    datt = new Float64Array(att.length);
  gqaBackward(dq, dk, dv, datt, dout, q, k, v, att, B, T, NH, KV, hd);
  const e = [fdCheck(q, dq, f), fdCheck(k, dk, f), fdCheck(v, dv, f)];
  console.log(`gqa fd rel err: dq ${e[0].toExponential(2)}, dk ${e[1].toExponential(2)}, dv ${e[2].toExponential(2)}`);
  for (const x of e) assert.ok(x < 1e-6, `${e}`);
});

test('RoPE backward is the transpose of forward (finite differences) for llama3 scaling', () => {
  const cfg = {
    headDim: 8,
    ropeTheta: 500000,
    ropeScaling: {
      type: 'llama3' as const,
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositions: 16,
    },
  };
  const B = 1,
    T = 6,
    nh = 2;
  const { cos, sin } = ropeTables(cfg, T);
  const x = randArr(B * T * nh * 8, 11),
    dout = randArr(x.length, 12);
  const y = new Float64Array(x.length);
  const f = () => {
    y.set(x);
    ropeForward(y, cos, sin, B, T, nh, 8);
    return dotWith(y, dout);
  };
  const dx = Float64Array.from(dout);
  ropeBackward(dx, cos, sin, B, T, nh, 8);
  const e = fdCheck(x, dx, f);
  console.log(`rope fd rel err: ${e.toExponential(2)}`);
  assert.ok(e < 1e-8, `${e}`);
});

test('RoPE: identity at position 0, keeps norms, scores depend only on relative position', () => {
  const cfg = { headDim: 8, ropeTheta: 10000, ropeScaling: null };
  const T = 12;
  const { cos, sin } = ropeTables(cfg, T);
  const q = randArr(8, 13),
    kk = randArr(8, 14);
  /** q rotated to position t (a 1×T×1×8 buffer with q at row t). */
  const at = (x: Float64Array, t: number) => {
    const buf = new Float64Array(T * 8);
    buf.set(x, t * 8);
    ropeForward(buf, cos, sin, 1, T, 1, 8);
    return buf.subarray(t * 8, t * 8 + 8);
  };
  const dot = (a: Arr, b: Arr) => dotWith(a, b);
  assert.deepEqual([...at(q, 0)], [...q]);
  for (let t = 0; t < T; t++) assert.ok(Math.abs(dot(at(q, t), at(q, t)) - dot(q, q)) < 1e-12);
  const ref = dot(at(q, 5), at(kk, 2));
  assert.ok(Math.abs(dot(at(q, 9), at(kk, 6)) - ref) < 1e-12);
  assert.ok(Math.abs(dot(at(q, 3), at(kk, 0)) - ref) < 1e-12);
  assert.ok(Math.abs(dot(at(q, 4), at(kk, 0)) - ref) > 1e-6, 'a different offset gives a different score');
});

test('RoPE scaling: linear divides every frequency; llama3 keeps high, divides low, blends the middle', () => {
  const base = ropeInvFreq({ headDim: 64, ropeTheta: 500000, ropeScaling: null });
  const lin = ropeInvFreq({ headDim: 64, ropeTheta: 500000, ropeScaling: { type: 'linear', factor: 4 } });
  for (let i = 0; i < base.length; i++) assert.ok(Math.abs(lin[i] - base[i] / 4) < 1e-18);
  const s = { type: 'llama3' as const, factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 };
  const l3 = ropeInvFreq({ headDim: 64, ropeTheta: 500000, ropeScaling: s });
  let kept = 0,
    divided = 0,
    blended = 0;
  for (let i = 0; i < base.length; i++) {
    const wavelen = (2 * Math.PI) / base[i];
    if (wavelen < 8192 / 4) {
      assert.equal(l3[i], base[i]);
      kept++;
    } else if (wavelen > 8192) {
      assert.ok(Math.abs(l3[i] - base[i] / 8) < 1e-18);
      divided++;
    } else {
      assert.ok(l3[i] < base[i] && l3[i] > base[i] / 8);
      blended++;
    }
  }
  assert.ok(kept > 0 && divided > 0 && blended > 0, `${kept} ${divided} ${blended}`);
});

test('GQA with kvHeads = heads is exactly multi-head attention (GPT-2 reference kernel)', () => {
  const B = 2,
    T = 6,
    NH = 3,
    hd = 4,
    C = NH * hd;
  const q = new Float32Array(randArr(B * T * C, 15)),
    k = new Float32Array(randArr(B * T * C, 16)),
    v = new Float32Array(randArr(B * T * C, 17));
  const qkv = new Float32Array(B * T * 3 * C);
  for (let n = 0; n < B * T; n++) {
    qkv.set(q.subarray(n * C, n * C + C), n * 3 * C);
    qkv.set(k.subarray(n * C, n * C + C), n * 3 * C + C);
    qkv.set(v.subarray(n * C, n * C + C), n * 3 * C + 2 * C);
  }
  const ref = createRefKernels();
  const want = new Float32Array(B * T * C),
    watt = new Float32Array(B * NH * T * T);
  ref.attentionForward(want, watt, qkv, B, T, C, NH);
  const got = new Float32Array(B * T * C),
    gatt = new Float32Array(B * NH * T * T);
  gqaForward(got, gatt, q, k, v, B, T, NH, NH, hd);
  assert.deepEqual([...got], [...want]);
  // Backward too.
  const dout = new Float32Array(randArr(B * T * C, 18));
  const dqkv = new Float32Array(qkv.length),
    scratch = new Float32Array(watt.length);
  ref.attentionBackward(dqkv, scratch, dout, qkv, watt, B, T, C, NH);
  const dq = new Float32Array(q.length),
    dk = new Float32Array(k.length),
    dv = new Float32Array(v.length);
  gqaBackward(dq, dk, dv, scratch, dout, q, k, v, gatt, B, T, NH, NH, hd);
  let worst = 0;
  for (let n = 0; n < B * T; n++)
    for (let c = 0; c < C; c++) {
      worst = Math.max(worst, Math.abs(dq[n * C + c] - dqkv[n * 3 * C + c]));
      worst = Math.max(worst, Math.abs(dk[n * C + c] - dqkv[n * 3 * C + C + c]));
      worst = Math.max(worst, Math.abs(dv[n * C + c] - dqkv[n * 3 * C + 2 * C + c]));
    }
  assert.ok(worst < 1e-6, `${worst}`);
});

test('GQA: kv heads shared by a group equal MHA with each kv head repeated (repeat_kv)', () => {
  const B = 1,
    T = 4,
    NH = 4,
    KV = 2,
    hd = 2;
  const q = randArr(B * T * NH * hd, 19),
    k = randArr(B * T * KV * hd, 20),
    v = randArr(B * T * KV * hd, 21);
  const rep = (x: Float64Array) => {
    const out = new Float64Array(B * T * NH * hd);
    for (let n = 0; n < B * T; n++)
      for (let h = 0; h < NH; h++)
        for (let i = 0; i < hd; i++) out[(n * NH + h) * hd + i] = x[(n * KV + Math.floor(h / 2)) * hd + i];
    return out;
  };
  const a = new Float64Array(q.length),
    b = new Float64Array(q.length),
    att = new Float64Array(B * NH * T * T);
  gqaForward(a, att, q, k, v, B, T, NH, KV, hd);
  gqaForward(b, att, q, rep(k), rep(v), B, T, NH, NH, hd);
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) < 1e-14);
});

function randomLlama(cfg: LlamaConfig, seed: number, kernels: Kernels = createRefKernels()): Llama {
  const m = new Llama(cfg, kernels);
  const u = rand(seed);
  for (const s of llamaSpecs(cfg)) {
    const v = m.params.subarray(s.offset, s.offset + s.size);
    for (let i = 0; i < v.length; i++) v[i] = s.shape.length === 1 ? 1 + 0.3 * u() : 0.3 * u();
  }
  return m;
}

// The reference kernels, and the native ones (every Llama op in the addon; deterministic mode
// so that the loss is one fixed function of the parameters, fast mode's BLAS matmuls as well).
const nativeSkip = process.env.TESSERA_KERNELS === 'ref' ? 'TESSERA_KERNELS=ref: native kernels disabled' : false;
const FD_KERNELS: [string, () => Kernels, string | false][] = [
  ['ref', createRefKernels, false],
  ['native', () => createNativeKernels({ deterministic: true, threads: 2 }), nativeSkip],
  ['native fast', () => createNativeKernels({ deterministic: false, threads: 2 }), nativeSkip],
];
for (const [kname, kernels, skip] of FD_KERNELS)
  for (const tied of [false, true]) {
    test(
      `whole-model gradient matches float32 central differences (${kname} kernels, GQA, llama3 RoPE, ${tied ? 'tied' : 'untied'})`,
      { skip },
      () => {
        const cfg: LlamaConfig = {
          ...TINY_LLAMA,
          vocabSize: 11,
          dim: 8,
          heads: 4,
          kvHeads: 2,
          headDim: 4,
          hidden: 12,
          layers: 2,
          tiedEmbeddings: tied,
          ropeTheta: 100,
          ropeScaling: { type: 'llama3', factor: 4, lowFreqFactor: 1, highFreqFactor: 2, originalMaxPositions: 8 },
        };
        const m = randomLlama(cfg, tied ? 22 : 23, kernels());
        const B = 2,
          T = 5;
        const tokens = Int32Array.from({ length: B * T }, (_, i) => (i * 7 + 3) % cfg.vocabSize);
        const targets = Int32Array.from({ length: B * T }, (_, i) => (i === 4 ? -1 : (i * 5 + 1) % cfg.vocabSize));
        m.zeroGrad();
        m.forwardBackward(tokens, targets, B, T);
        const grad = m.grads.slice();
        // Central differences in float32 (the divisor is the step as float32 actually took it),
        // sampled across every tensor; relative error floored at 1e-3 so that float32 round-off
        // (~1e-7 / h) on near-zero gradients does not dominate.
        const h = 5e-2;
        let worst = 0,
          checked = 0;
        for (const s of llamaSpecs(cfg)) {
          for (let j = 0; j < s.size; j += Math.max(1, Math.floor(s.size / 12))) {
            const i = s.offset + j;
            const x0 = m.params[i];
            const central = (step: number) => {
              m.params[i] = x0 + step;
              const fp = m.loss(tokens, targets, B, T);
              m.params[i] = x0 - step;
              const fm = m.loss(tokens, targets, B, T);
              m.params[i] = x0;
              return (fp - fm) / (Math.fround(x0 + step) - Math.fround(x0 - step));
            };
            // Richardson extrapolation cancels the O(h²) truncation term of central differences.
            const num = (4 * central(h / 2) - central(h)) / 3;
            const err = Math.abs(num - grad[i]) / Math.max(1e-3, Math.abs(num) + Math.abs(grad[i]));
            worst = Math.max(worst, err);
            checked++;
          }
        }
        console.log(
          `llama (${kname}, ${tied ? 'tied' : 'untied'}) whole-model fd rel err ${worst.toExponential(2)} over ${checked}`,
        );
        assert.equal(m.grads.length, llamaParamCount(cfg));
        assert.ok(worst < 1e-2, `worst relative error ${worst}`);
      },
    );
  }

test('a few AdamW-free SGD steps reduce the loss (training runs end to end)', () => {
  const m = new Llama({ ...TINY_LLAMA, vocabSize: 16, dim: 16, hidden: 24, headDim: 4 }, createRefKernels());
  m.init(1);
  const B = 2,
    T = 8;
  const tokens = Int32Array.from({ length: B * T }, (_, i) => i % 16);
  const targets = Int32Array.from({ length: B * T }, (_, i) => (i + 1) % 16);
  const first = m.loss(tokens, targets, B, T);
  for (let s = 0; s < 30; s++) {
    m.zeroGrad();
    m.forwardBackward(tokens, targets, B, T);
    for (let i = 0; i < m.params.length; i++) m.params[i] -= 0.5 * m.grads[i];
  }
  const last = m.loss(tokens, targets, B, T);
  assert.ok(Math.abs(first - Math.log(16)) < 0.1, `initial loss ${first} ≈ ln 16`);
  assert.ok(last < first * 0.7, `${first} -> ${last}`);
});

test('the native kernels (every Llama op, matmul, loss) give the reference logits and gradients within float32 round-off', () => {
  const cfg: LlamaConfig = { ...TINY_LLAMA, ropeScaling: { type: 'linear', factor: 2 } };
  const ref = randomLlama(cfg, 31);
  const nat = new Llama(cfg, loadKernels({ threads: 1 }));
  nat.params.set(ref.params);
  const B = 2,
    T = 7;
  const tokens = Int32Array.from({ length: B * T }, (_, i) => (i * 11 + 5) % cfg.vocabSize);
  const targets = Int32Array.from({ length: B * T }, (_, i) => (i * 3 + 2) % cfg.vocabSize);
  const a = ref.logits(tokens, B, T),
    b = nat.logits(tokens, B, T);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  ref.zeroGrad();
  nat.zeroGrad();
  ref.forwardBackward(tokens, targets, B, T);
  nat.forwardBackward(tokens, targets, B, T);
  let dg = 0;
  for (let i = 0; i < ref.grads.length; i++) dg = Math.max(dg, Math.abs(ref.grads[i] - nat.grads[i]));
  console.log(
    `${nat.kernels.name} vs ref: max |logit diff| ${d.toExponential(2)}, max |grad diff| ${dg.toExponential(2)}`,
  );
  assert.ok(d < 1e-4 && dg < 1e-4, `${d} ${dg}`);
});
