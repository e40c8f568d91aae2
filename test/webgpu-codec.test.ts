/**
 * The pseudo-gradient codecs on the GPU (src/kernels/webgpu/codec.ts) against the CPU codecs
 * (src/swarm/compress, the definition): for fp32, fp16, int8 and SparseLoCo, with and without
 * error feedback (β = 1, 0.95, 0), the GPU's bytes must EQUAL the CPU's, and its residual the
 * CPU's `ef.residual`, bit for bit, round after round: on random data, on ties (equal magnitudes
 * across a chunk, decided by index), zeros and −0, subnormals, huge values, and chunk remainders
 * (a last chunk shorter than k). A non-finite Δ is refused like the CPU refuses it, residual
 * untouched. First the soft-float arithmetic underneath, against JavaScript's own.
 *
 * Runs on SwiftShader like test/webgpu-kernels.test.ts: under CI=true a missing adapter fails;
 * locally only a missing chromium skips. Sizes stay small (a CPU emulation).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { WebGpuDevice } from '../src/kernels/webgpu/device.js';
import { SWIFTSHADER_ICD_PATHS } from '../src/kernels/webgpu/node-icd.js';
import { WebGpuEncoder, gpuCodecRefusal } from '../src/kernels/webgpu/codec.js';
import { SOFTFLOAT_PROBE } from '../src/kernels/webgpu/wgsl/codec.js';
import { WG } from '../src/kernels/webgpu/wgsl/common.js';
import {
  ErrorFeedback,
  fp16Codec,
  fp32Codec,
  int8Codec,
  sparseCodec,
  type Codec,
  type SparseCodec,
} from '../src/swarm/compress/index.js';
import { createRefKernels } from '../src/kernels/ref.js';
import { WebGpuGPT } from '../src/model/gpt-webgpu.js';
import { GPT } from '../src/model/gpt.js';
import { DEFAULT_ADAMW } from '../src/train/adamw.js';
import { WebGpuTrainModel } from '../src/train/device-model.js';
import { InvalidInputError } from '../src/util/errors.js';
import { uniform } from '../src/util/rng.js';

const CI = process.env.CI === 'true';
const icd = process.env.VK_ICD_FILENAMES ?? SWIFTSHADER_ICD_PATHS.find((p) => existsSync(p)) ?? null;
if (icd) process.env.VK_ICD_FILENAMES = icd; // before Dawn loads
const skip = !icd && !CI ? 'chromium is not installed (no SwiftShader Vulkan ICD)' : false;

let dev: WebGpuDevice | undefined;
async function gpu(): Promise<WebGpuDevice> {
  if (!icd) throw new Error('CI=true but no SwiftShader Vulkan ICD: install chromium (.ci/run does)');
  dev ??= await WebGpuDevice.create();
  return dev;
}

const f32 = new Float32Array(1),
  u32 = new Uint32Array(f32.buffer);
const bitsOf = (x: number): number => ((f32[0] = x), u32[0]);
const f64v = new DataView(new ArrayBuffer(8));

/** A float64 spread over many binades and both signs, zeros included. */
function wild64(r: () => number): number {
  const k = r();
  if (k < 0.03) return r() < 0.5 ? 0 : -0;
  const mant = 1 + r();
  const e = Math.floor(r() * 160) - 80;
  const v = mant * 2 ** e * (r() < 0.5 ? -1 : 1);
  // Some values exactly representable as float32 (so equal exponents and ties occur).
  return k < 0.3 ? Math.fround(v) : v;
}

test('soft-float binary64 add, mul, div and rounding to binary32 equal JavaScript bit for bit', { skip }, async () => {
  const d = await gpu();
  const r = uniform(11);
  const N = 6000;
  const a = new Float64Array(N),
    b = new Float64Array(N);
  for (let i = 0; i < N; i++) {
    a[i] = wild64(r);
    b[i] = i % 7 === 0 ? a[i] * (1 + 2 ** -30) : i % 11 === 0 ? -a[i] : wild64(r);
  }
  // Near-ties of binary32 rounding, and the binary32 subnormal range, for op 3.
  for (let i = 0; i < 600; i++) {
    const base = Math.fround((1 + r()) * 2 ** (Math.floor(r() * 60) - 30));
    a[i] = base * (1 + 2 ** -24 * (i % 3 === 0 ? 1 : 1 + (r() - 0.5) * 2 ** -20));
    a[600 + i] = (r() - 0.5) * 2 ** -(120 + Math.floor(r() * 35));
  }
  const inp = new Uint32Array(4 * N);
  for (let i = 0; i < N; i++) {
    f64v.setFloat64(0, a[i], true);
    inp[4 * i] = f64v.getUint32(0, true);
    inp[4 * i + 1] = f64v.getUint32(4, true);
    f64v.setFloat64(0, b[i], true);
    inp[4 * i + 2] = f64v.getUint32(0, true);
    inp[4 * i + 3] = f64v.getUint32(4, true);
  }
  const tin = d.upload(inp),
    tout = d.alloc(2 * N, 'u32');
  const run = async (op: number) => {
    d.launch(SOFTFLOAT_PROBE, [tout, tin], { n: N, op }, Math.ceil(N / WG));
    return d.readU32(tout);
  };
  const same64 = (got: Uint32Array, i: number, want: number, what: string) => {
    f64v.setFloat64(0, want, true);
    const lo = f64v.getUint32(0, true),
      hi = f64v.getUint32(4, true);
    assert.ok(
      got[2 * i] === lo && got[2 * i + 1] === hi,
      `${what}(${a[i]}, ${b[i]}) = ${want}, GPU bits ${got[2 * i + 1].toString(16)}:${got[2 * i].toString(16)}`,
    );
  };
  const add = await run(0),
    mul = await run(1),
    div = await run(2),
    cvt = await run(3);
  for (let i = 0; i < N; i++) {
    same64(add, i, a[i] + b[i], 'add');
    same64(mul, i, a[i] * b[i], 'mul');
    if (b[i] !== 0) same64(div, i, a[i] / b[i], 'div');
    assert.equal(cvt[2 * i], bitsOf(a[i]), `fround(${a[i]})`);
    if (a[i] >= 0 && b[i] >= 0) assert.equal(cvt[2 * i + 1], a[i] > b[i] ? 1 : 0, `${a[i]} > ${b[i]}`);
  }
  // binary32 inputs: exact widening, and fround(a − b) with subnormal and cancelling operands.
  const x = new Float32Array(2 * N);
  for (let i = 0; i < 2 * N; i++) {
    const k = i % 5;
    x[i] =
      k === 0
        ? (r() - 0.5) * 2 ** -140
        : k === 1
          ? Math.fround((r() - 0.5) * 2 ** (Math.floor(r() * 200) - 100))
          : k === 2 && i > 0
            ? x[i - 1] * (r() < 0.5 ? 1 : -1)
            : Math.fround(wild64(r));
  }
  const xi = new Uint32Array(x.buffer);
  for (let i = 0; i < N; i++) {
    inp[4 * i] = xi[2 * i];
    inp[4 * i + 1] = xi[2 * i + 1];
  }
  d.write(tin, inp);
  const wide = await run(4),
    sub = await run(5);
  for (let i = 0; i < N; i++) {
    same64(wide, i, x[2 * i], 'widen');
    assert.equal(sub[2 * i], bitsOf(x[2 * i] - x[2 * i + 1]), `fround(${x[2 * i]} - ${x[2 * i + 1]})`);
  }
  // The error-feedback fold fround(β·r + d), β a float64: 1 and 0 take the binary32 path.
  const betas = [0.95, 1, 0, 0.5, 2 ** -60, 0.1 + 0.2];
  for (let i = 0; i < N; i++) {
    f64v.setFloat64(0, i % 7 < betas.length ? betas[i % 7] : r(), true);
    inp[4 * i + 2] = f64v.getUint32(0, true);
    inp[4 * i + 3] = f64v.getUint32(4, true);
  }
  d.write(tin, inp);
  const fold = await run(6);
  for (let i = 0; i < N; i++) {
    f64v.setUint32(0, inp[4 * i + 2], true);
    f64v.setUint32(4, inp[4 * i + 3], true);
    const beta = f64v.getFloat64(0, true);
    const want = bitsOf(beta * x[2 * i] + x[2 * i + 1]);
    assert.equal(fold[2 * i], want, `fround(${beta} * ${x[2 * i]} + ${x[2 * i + 1]})`);
  }
  tin.buffer.destroy();
  tout.buffer.destroy();
});

/** Random θ pairs with adversarial content mixed in, by seed. */
function pair(n: number, seed: number, chunk: number): { base: Float32Array; local: Float32Array } {
  const r = uniform(seed);
  const base = new Float32Array(n),
    local = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    base[i] = (r() - 0.5) * 0.2;
    local[i] = base[i] - (r() - 0.5) * 1e-3 * Math.exp(2 * (r() - 0.5));
  }
  const c = Math.floor(n / chunk);
  const region = (k: number) => [(k % Math.max(1, c)) * chunk, Math.min(n, (k % Math.max(1, c)) * chunk + chunk)];
  // Ties: a chunk where every Δ is ±0.5 or ±0.25 (the top-k decides by index; levels split equal values never).
  let [s, e] = region(seed);
  for (let i = s; i < e; i++) {
    base[i] = r() < 0.5 ? 0.5 : -0.25;
    local[i] = 0;
  }
  // Zeros: a chunk with Δ = +0 and −0 only (base − local with equal operands gives +0; −0 − +0 gives −0).
  [s, e] = region(seed + 1);
  for (let i = s; i < e; i++) {
    base[i] = i % 3 === 0 ? -0 : 1.5;
    local[i] = i % 3 === 0 ? 0 : 1.5;
  }
  // Subnormal and huge magnitudes, cancellation.
  for (let i = 0; i < n; i += 97) {
    base[i] = 1e-38 * (r() - 0.5);
    local[i] = 2e-39 * (r() - 0.5);
  }
  for (let i = 13; i < n; i += 389) {
    base[i] = 1e30 * (r() - 0.5);
    local[i] = -1e30 * r();
  }
  // The tail: equal magnitudes in the last (short) chunk.
  for (let i = Math.max(0, n - 5); i < n; i++) {
    base[i] = 2;
    local[i] = 1;
  }
  return { base, local };
}

interface Case {
  codec: Codec;
  n: number;
  beta: number | null;
}
const CASES: Case[] = [
  { codec: fp32Codec, n: 3000, beta: 1 },
  { codec: fp32Codec, n: 1001, beta: null },
  { codec: fp16Codec, n: 3001, beta: 0.95 },
  { codec: fp16Codec, n: 1000, beta: null },
  { codec: int8Codec, n: 5003, beta: 0.95 },
  { codec: int8Codec, n: 1, beta: 1 },
  { codec: int8Codec, n: 777, beta: null },
  { codec: sparseCodec({ chunk: 256, k: 7 }), n: 256 * 9 + 5, beta: 0.95 },
  { codec: sparseCodec({ chunk: 4096, k: 64 }), n: 4096 + 40, beta: 1 },
  { codec: sparseCodec({ chunk: 8, k: 3 }), n: 8 * 40 + 2, beta: 0 },
  { codec: sparseCodec({ chunk: 2, k: 1 }), n: 301, beta: null },
  { codec: sparseCodec({ chunk: 64, k: 64 }), n: 64 * 5 + 9, beta: 0.5 },
];

for (const c of CASES) {
  const params = c.codec.id === 'sparse' ? (c.codec as SparseCodec).params : null;
  const name = params ? `sparse ${JSON.stringify(params)}` : c.codec.id;
  test(
    `GPU ${name} encode (n=${c.n}, ef β=${c.beta}) equals the CPU codec bit for bit over 3 rounds`,
    { skip },
    async () => {
      const d = await gpu();
      const chunk = params?.chunk ?? 64;
      const ef = c.beta === null ? null : new ErrorFeedback(c.n, c.beta);
      const enc = new WebGpuEncoder(d, c.codec, c.n, ef ? { beta: ef.beta, residual: ef.residual } : null);
      const base = d.alloc(c.n),
        local = d.alloc(c.n);
      try {
        for (let round = 0; round < 3; round++) {
          const p = pair(c.n, 100 * round + c.n, chunk);
          const delta = new Float32Array(c.n);
          for (let i = 0; i < c.n; i++) delta[i] = p.base[i] - p.local[i];
          const want = c.codec.encode(delta, ef ?? undefined).bytes;
          d.write(base, p.base);
          d.write(local, p.local);
          const got = await enc.encode(local, base);
          assert.equal(got.length, want.length, `round ${round}: length`);
          let diff = -1;
          for (let i = 0; i < want.length && diff < 0; i++) if (got[i] !== want[i]) diff = i;
          assert.equal(diff, -1, `round ${round}: first differing byte ${diff} of ${want.length}`);
          if (ef) {
            const res = new Uint32Array((await enc.readResidual()).buffer);
            const cpu = new Uint32Array(ef.residual.buffer);
            let rd = -1;
            for (let i = 0; i < c.n && rd < 0; i++) if (res[i] !== cpu[i]) rd = i;
            assert.equal(rd, -1, `round ${round}: residual differs first at ${rd}: ${ef.residual[rd]}`);
          }
        }
        // Δ given directly (no base on the device) encodes the same.
        if (!ef) {
          const delta = new Float32Array(c.n).map((_, i) => Math.fround(Math.sin(i) * 1e-2));
          d.write(local, delta);
          assert.deepEqual(await enc.encode(local, null), c.codec.encode(delta).bytes);
        }
      } finally {
        enc.destroy();
        base.buffer.destroy();
        local.buffer.destroy();
      }
    },
  );
}

test('a non-finite Δ is refused like the CPU refuses it, and the device residual is untouched', { skip }, async () => {
  const d = await gpu();
  for (const codec of [fp32Codec, fp16Codec, int8Codec, sparseCodec({ chunk: 64, k: 4 })]) {
    const n = 500;
    const ef = new ErrorFeedback(n, 0.95);
    const enc = new WebGpuEncoder(d, codec, n, { beta: ef.beta, residual: ef.residual });
    const base = d.alloc(n),
      local = d.alloc(n);
    const p = pair(n, 5, 64);
    d.write(base, p.base);
    d.write(local, p.local);
    await enc.encode(local, base); // a residual worth keeping
    const before = await enc.readResidual();
    for (const [i, b, l] of [
      [321, NaN, 0],
      [17, 3e38, -3e38], // overflows binary32: Infinity
      [499, Infinity, 1],
    ] as const) {
      const bb = p.base.slice(),
        ll = p.local.slice();
      bb[i] = b;
      ll[i] = l;
      d.write(base, bb);
      d.write(local, ll);
      const delta = bb.map((v, j) => v - ll[j]);
      assert.throws(() => codec.encode(delta, ef.clone()), InvalidInputError);
      await assert.rejects(
        enc.encode(local, base),
        (e: Error) => e instanceof InvalidInputError && e.message.includes(`[${i}]`),
      );
      assert.deepEqual(
        new Uint32Array((await enc.readResidual()).buffer),
        new Uint32Array(before.buffer),
        `${codec.id}: residual kept`,
      );
    }
    enc.destroy();
    base.buffer.destroy();
    local.buffer.destroy();
  }
});

test(
  'through the training model: base, steps, a mid-job shift, then encodeUpdate equals the host encode of base − θ',
  { skip },
  async () => {
    const d = await gpu();
    const cfg = { vocabSize: 37, ctx: 8, dim: 16, layers: 1, heads: 2 };
    const m = new WebGpuTrainModel(d, new WebGpuGPT(d, cfg, DEFAULT_ADAMW));
    const codec = sparseCodec({ chunk: 256, k: 9 });
    const ef = new ErrorFeedback(m.numParams, 0.95),
      host = ef.clone();
    assert.equal(m.deviceCodecRefusal(codec, ef), null);
    await m.warmUp(2, 8, { codec, ef }); // compiles the codec kernels without touching ef
    const g = new GPT(cfg, createRefKernels());
    g.init(1);
    const x = new Int32Array(16).map((_, i) => (i * 5) % 37);
    for (let job = 0; job < 2; job++) {
      const base = g.params.map((v, i) => v + 1e-3 * job * Math.sin(i));
      await m.setParams(base, true);
      await m.forwardBackward(x, x, 2, 8, 1);
      await m.update(1e-3);
      // 'shift': the job moves onto a new base mid-way; Δ is then against the new base.
      const now = base.map((v, i) => v + 1e-4 * Math.cos(i));
      m.shiftParams(now, base);
      await m.forwardBackward(x, x, 2, 8, 1);
      await m.update(1e-3);
      const got = await m.encodeUpdate(codec, ef);
      const theta = await m.getParams();
      const want = codec.encode(
        now.map((v, i) => v - theta[i]),
        host,
      ).bytes;
      assert.deepEqual(got, want, `job ${job}`);
    }
  },
);

test('what the GPU encoder refuses, it says why (the caller then encodes on the host)', () => {
  assert.equal(gpuCodecRefusal(sparseCodec(), 1000, 0.95), null);
  assert.equal(gpuCodecRefusal(int8Codec, 10, null), null);
  assert.match(gpuCodecRefusal(fp32Codec, 10, 1e-30)!, /beta/);
  assert.match(gpuCodecRefusal(fp32Codec, 0, null)!, /element count/);
  assert.match(gpuCodecRefusal(sparseCodec({ chunk: 65536, k: 65536 }), 2 ** 30, null)!, /k 65536 > 512/);
  assert.match(gpuCodecRefusal(sparseCodec({ chunk: 1024, k: 512 }), 2 ** 30, null)!, /512 MiB/);
});

test('closes the device', { skip }, () => {
  dev?.destroy();
});
