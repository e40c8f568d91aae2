/**
 * Pseudo-gradient codecs: accuracy, exact wire sizes, determinism, error feedback, and a fuzz
 * of every decoder (untrusted peers: anything but DecodeError or n finite values is a bug).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CODEC_IDS,
  DEFAULT_SPARSE,
  DecodeError,
  ErrorFeedback,
  decodeAny,
  encodedSize,
  f16Round,
  fp16Codec,
  fp32Codec,
  getCodec,
  int8Codec,
  peekHeader,
  sparseCodec,
  type Codec,
  type SparseParams,
} from '../src/swarm/compress/index.js';
import { f32BitsToF16Bits, f16Table } from '../src/swarm/compress/f16.js';
import { f32Key, int8Bin, int8Thresholds } from '../src/swarm/compress/int8.js';
import { InvalidInputError } from '../src/util/errors.js';
import { uniform } from '../src/util/rng.js';

const rng = uniform;

function gaussian(n: number, seed: number, sigma = 1): Float32Array {
  const r = rng(seed),
    out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = r() || 1e-12,
      v = r();
    out[i] = sigma * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return out;
}

/** Gaussian scale mixture: heavy tails like real pseudo-gradients. */
function heavy(n: number, seed: number): Float32Array {
  const g = gaussian(n, seed),
    s = gaussian(n, seed + 1);
  for (let i = 0; i < n; i++) g[i] *= 1e-3 * Math.exp(0.75 * s[i]);
  return g;
}

function relL2(x: Float32Array, y: Float32Array): number {
  let e = 0,
    s = 0;
  for (let i = 0; i < x.length; i++) {
    e += (x[i] - y[i]) ** 2;
    s += x[i] ** 2;
  }
  return s === 0 ? Math.sqrt(e) : Math.sqrt(e / s);
}

function norm(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return Math.sqrt(s);
}

const SPARSE_VARIANTS: SparseParams[] = [
  { chunk: 4096, k: 64 },
  { chunk: 2, k: 1 },
  { chunk: 2, k: 2 },
  { chunk: 8, k: 3 },
  { chunk: 1024, k: 1024 },
  { chunk: 65536, k: 100 },
  { chunk: 256, k: 7 },
];

function allCodecs(): Codec[] {
  return [fp32Codec, fp16Codec, int8Codec, ...SPARSE_VARIANTS.map((p) => sparseCodec(p))];
}

function assertValid(out: unknown, n: number): void {
  assert.ok(out instanceof Float32Array, 'decode returned a Float32Array');
  assert.equal(out.length, n);
  for (let i = 0; i < n; i++) assert.ok(Number.isFinite(out[i]), `element ${i} finite`);
}

test('fp32 round trip is bit-exact, including -0, subnormals and extremes', () => {
  const x = gaussian(1001, 1);
  x[0] = -0;
  x[1] = 1.4e-45;
  x[2] = -3.4028234663852886e38;
  x[3] = 3.4028234663852886e38;
  x[4] = 1.1754942e-38;
  const { bytes, decoded } = fp32Codec.encode(x);
  const back = fp32Codec.decode(bytes, x.length);
  assert.deepEqual(new Uint8Array(back.buffer), new Uint8Array(x.buffer));
  assert.deepEqual(decoded, back);
  assert.ok(Object.is(back[0], -0));
});

test('fp16 conversion: every half round-trips, matches Math.f16round, saturates at 65504', () => {
  const t = f16Table();
  const halves: number[] = [];
  for (let h = 0; h < 65536; h++) if ((h & 0x7c00) !== 0x7c00) halves.push(h);
  const x = new Float32Array(halves.map((h) => t[h]));
  const bits = new Uint32Array(x.buffer);
  for (let i = 0; i < x.length; i++) assert.equal(f32BitsToF16Bits(bits[i]), halves[i]);
  const { bytes } = fp16Codec.encode(x);
  assert.deepEqual(fp16Codec.decode(bytes, x.length), x);

  const ref = (Math as unknown as { f16round?: (v: number) => number }).f16round;
  const r = rng(2);
  const f = new Float32Array(1),
    u = new Uint32Array(f.buffer);
  const check = (v: number) => {
    f[0] = v;
    const got = t[f32BitsToF16Bits(u[0])];
    if (Math.abs(f[0]) < 65520 && ref)
      assert.ok(Object.is(got, ref(f[0])), `f16(${f[0]}) = ${got}, expected ${ref(f[0])}`);
    if (Math.abs(f[0]) >= 65520) assert.equal(got, Math.sign(f[0]) * 65504);
  };
  for (let i = 0; i < 300_000; i++) {
    u[0] = Math.floor(r() * 4294967296);
    if (!Number.isFinite(f[0])) continue;
    check(f[0]);
  }
  // Ties (exactly halfway between halves), around 1, at the subnormal boundary, near max.
  for (let h = 0; h < 0x7bff; h += 7) check((t[h] + t[h + 1]) / 2);
  for (const v of [
    1,
    1 + 2 ** -11,
    1 + 3 * 2 ** -11,
    2 ** -24,
    2 ** -25,
    2 ** -25 * 1.0001,
    3 * 2 ** -26,
    6.1e-5,
    65504,
    65519.99,
    65520,
    1e30,
    -1e30,
    -0,
  ])
    check(v);
  assert.ok(Object.is(f16Round(-0), -0));
  assert.equal(f16Round(70000), 65504);
  assert.equal(f16Round(-Infinity), -65504); // the converter saturates; encode() rejects Inf earlier
});

test('fp16 codec: relative error bound and saturation', () => {
  const x = heavy(50_000, 3);
  x[0] = 1e6;
  x[1] = -1e9;
  const { bytes, decoded } = fp16Codec.encode(x);
  assert.deepEqual(fp16Codec.decode(bytes, x.length), decoded);
  assert.equal(decoded[0], 65504);
  assert.equal(decoded[1], -65504);
  for (let i = 2; i < x.length; i++) {
    const err = Math.abs(x[i] - decoded[i]);
    assert.ok(err <= 2 ** -11 * Math.abs(x[i]) + 2 ** -25, `element ${i}: ${x[i]} -> ${decoded[i]}`);
  }
});

test('int8 codec: INTELLECT-1 binning, per-bin means, error bound', () => {
  const n = 100_000;
  const x = heavy(n, 4);
  const { bytes, decoded } = int8Codec.encode(x);
  assert.deepEqual(int8Codec.decode(bytes, n), decoded);
  let ss = 0;
  for (let i = 0; i < n; i++) ss += x[i] * x[i];
  const scale = (6 * Math.sqrt(ss / (n - 1))) / 256;
  const sums = new Map<number, [number, number]>();
  for (let i = 0; i < n; i++) {
    const q = bytes[12 + 1024 + i];
    const s = sums.get(q) ?? [0, 0];
    s[0] += x[i];
    s[1]++;
    sums.set(q, s);
    if (q > 0 && q < 255) assert.ok(Math.abs(x[i] - decoded[i]) <= scale * (1 + 1e-6), `element ${i}`);
    else assert.ok(q === 0 ? x[i] <= -127.5 * scale : x[i] >= 126.5 * scale);
  }
  for (const [q, [s, c]] of sums) {
    const lut = new DataView(bytes.buffer, bytes.byteOffset).getFloat32(12 + 4 * q, true);
    assert.equal(lut, Math.fround(s / c));
  }
  // Gaussian: ~0.007 from the bin width, ~0.015 from the +-3 sigma clamp (tails -> tail mean).
  const g = gaussian(n, 5, 0.01);
  assert.ok(relL2(g, int8Codec.encode(g).decoded) < 0.02);
  // All-zero and tiny vectors.
  assert.deepEqual(int8Codec.encode(new Float32Array(10)).decoded, new Float32Array(10));
  assert.deepEqual(int8Codec.encode(new Float32Array([0.25])).decoded, new Float32Array([0.25]));
});

test('int8 statistics are exact integer sums: any order of the elements gives the same scale and means', () => {
  // The property that lets a parallel (GPU) encoder produce the same bytes: sums of squares and
  // bin sums are integers on a grid, so summation order cannot matter. Tiny values in the zero
  // bin, a wide range of magnitudes and huge outliers make float64 sequential sums order-dependent.
  const n = 20_000;
  const x = heavy(n, 9);
  for (let i = 0; i < n; i += 7) x[i] *= 1e-12;
  x[5] = 3e4;
  x[6] = -2e4;
  const r = rng(10);
  const perm = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [perm[i], perm[j]] = [perm[j], perm[i]];
  }
  const y = Float32Array.from(perm, (i) => x[i]);
  const a = int8Codec.encode(x).bytes,
    b = int8Codec.encode(y).bytes;
  assert.deepEqual(a.subarray(0, 12 + 1024), b.subarray(0, 12 + 1024), 'same header and lookup table');
  for (let i = 0; i < n; i++) assert.equal(b[12 + 1024 + i], a[12 + 1024 + perm[i]], `q of element ${perm[i]}`);
});

test('int8 bin thresholds (what the GPU compares) agree with the bin function on and around every threshold', () => {
  const f = new Float32Array(1),
    u = new Uint32Array(f.buffer);
  const keyBits = (k: number) => (k & 0x80000000 ? k ^ 0x80000000 : ~k) >>> 0;
  for (const scale of [0, 1e-3, 0.37, 7e-42, 1e30]) {
    const t = int8Thresholds(scale);
    for (let j = 1; j < t.length; j++) assert.ok(t[j - 1] <= t[j], 'nondecreasing');
    const binOf = (key: number) => t.reduce((c, tj) => c + (tj <= key ? 1 : 0), 0);
    const probe = (key: number) => {
      if (key < 0x00800000 || key > 0xff7fffff) return; // not a finite float
      u[0] = keyBits(key);
      assert.equal(binOf(key), int8Bin(f[0], scale), `scale ${scale}, x ${f[0]}`);
    };
    for (const tj of t) if (tj !== 0xffffffff) for (const dk of [-2, -1, 0, 1, 2]) probe(tj + dk);
    const r = rng(3);
    for (let i = 0; i < 2000; i++) {
      f[0] = (r() - 0.5) * scale * 300;
      probe(f32Key(u[0]));
    }
    probe(f32Key(0x80000000)); // -0
    probe(f32Key(0));
  }
});

test('sparse codec: chunked top-k with index tie-break, 2-level magnitudes, signs', () => {
  const p = { chunk: 256, k: 8 };
  const c = sparseCodec(p);
  const n = 256 * 5 + 100;
  const x = gaussian(n, 6);
  const { bytes, decoded } = c.encode(x);
  assert.deepEqual(c.decode(bytes, n), decoded);
  for (let s = 0; s < n; s += p.chunk) {
    const len = Math.min(p.chunk, n - s);
    const kept: number[] = [],
      dropped: number[] = [];
    for (let i = s; i < s + len; i++) (decoded[i] !== 0 ? kept : dropped).push(i);
    assert.equal(kept.length, Math.min(p.k, len));
    const minKept = Math.min(...kept.map((i) => Math.abs(x[i])));
    const maxDropped = Math.max(0, ...dropped.map((i) => Math.abs(x[i])));
    assert.ok(minKept >= maxDropped);
    for (const i of kept) assert.equal(Math.sign(decoded[i]), Math.sign(x[i]));
    assert.ok(new Set(kept.map((i) => Math.abs(decoded[i]))).size <= 2);
  }
  // Ties: a constant vector keeps the first k of every chunk, at one level.
  const flat = new Float32Array(20).fill(-0.5);
  const d = sparseCodec({ chunk: 8, k: 3 }).encode(flat).decoded;
  assert.deepEqual(
    Array.from(d),
    [-0.5, -0.5, -0.5, 0, 0, 0, 0, 0, -0.5, -0.5, -0.5, 0, 0, 0, 0, 0, -0.5, -0.5, -0.5, 0],
  );
  // Two clear magnitude groups are reproduced exactly.
  const two = new Float32Array([1, -1, 0.001, 5, -5, 0, 0.002, 0]);
  assert.deepEqual(Array.from(sparseCodec({ chunk: 8, k: 4 }).encode(two).decoded), [1, -1, 0, 5, -5, 0, 0, 0]);
});

test('sparse top-k selection matches a brute-force sort, ties included', () => {
  const r = rng(15);
  for (let trial = 0; trial < 300; trial++) {
    const chunk = 2 ** (1 + Math.floor(r() * 7)),
      k = 1 + Math.floor(r() * chunk);
    const n = 1 + Math.floor(r() * 3 * chunk);
    const levels = [0, 0.5, -0.5, 1, -1, 2, 1e-3, -1e-3];
    const x = new Float32Array(n);
    for (let i = 0; i < n; i++) x[i] = r() < 0.5 ? levels[Math.floor(r() * levels.length)] : (r() - 0.5) * 4;
    const { bytes } = sparseCodec({ chunk, k }).encode(x);
    // Read the kept indices back from the wire: b-bit LSB-first stream after the scales.
    const b = Math.log2(chunk),
      chunks = Math.ceil(n / chunk);
    let bit = (20 + 8 * chunks) * 8;
    const readIdx = () => {
      let v = 0;
      for (let j = 0; j < b; j++, bit++) v |= ((bytes[bit >> 3] >> (bit & 7)) & 1) << j;
      return v;
    };
    for (let c = 0; c < chunks; c++) {
      const s = c * chunk,
        len = Math.min(chunk, n - s),
        kc = Math.min(k, len);
      const want = Array.from({ length: len }, (_, i) => i)
        .sort((i, j) => Math.abs(x[s + j]) - Math.abs(x[s + i]) || i - j)
        .slice(0, kc)
        .sort((i, j) => i - j);
      const got = Array.from({ length: kc }, readIdx);
      assert.deepEqual(got, want, `chunk=${chunk} k=${k} n=${n} c=${c}`);
    }
  }
});

test('sparse error feedback: residual stays bounded, cumulative sent sum tracks the true sum', () => {
  const n = 8192,
    rounds = 300;
  const c = sparseCodec({ chunk: 1024, k: 16 });
  const st = new ErrorFeedback(n, 1);
  const drift = gaussian(n, 7, 1e-3);
  const sumTrue = new Float64Array(n),
    sumSent = new Float64Array(n);
  const resid: number[] = [];
  for (let t = 0; t < rounds; t++) {
    const noise = gaussian(n, 1000 + t, 1e-3);
    const delta = new Float32Array(n);
    for (let i = 0; i < n; i++) delta[i] = drift[i] + noise[i];
    const { decoded } = c.encode(delta, st);
    for (let i = 0; i < n; i++) {
      sumTrue[i] += delta[i];
      sumSent[i] += decoded[i];
    }
    resid.push(norm(st.residual));
  }
  // With beta = 1 the residual is exactly what has not been sent yet (up to fp32 rounding).
  const gap = new Float64Array(n);
  for (let i = 0; i < n; i++) gap[i] = sumTrue[i] - sumSent[i] - st.residual[i];
  assert.ok(norm(gap) < 1e-4 * norm(sumTrue), `identity gap ${norm(gap)}`);
  const diff = new Float64Array(n);
  for (let i = 0; i < n; i++) diff[i] = sumTrue[i] - sumSent[i];
  const rel = norm(diff) / norm(sumTrue);
  assert.ok(rel < 0.1, `cumulative relative error ${rel}`);
  const late = Math.max(...resid.slice(200)),
    mid = Math.max(...resid.slice(100, 200));
  assert.ok(late < 1.25 * mid, `residual still growing: ${mid} -> ${late}`);
  // Decay beta < 1 also keeps the residual bounded.
  const st2 = new ErrorFeedback(n, 0.9);
  const r2: number[] = [];
  for (let t = 0; t < 150; t++) {
    c.encode(gaussian(n, 5000 + t, 1e-3), st2);
    r2.push(norm(st2.residual));
  }
  assert.ok(Math.max(...r2.slice(100)) < 1.25 * Math.max(...r2.slice(50, 100)));
});

test('error feedback works with every codec and is exactly unbiased for fp32', () => {
  const n = 3000;
  for (const c of [fp32Codec, fp16Codec, int8Codec]) {
    const st = new ErrorFeedback(n);
    const sumT = new Float64Array(n),
      sumS = new Float64Array(n);
    for (let t = 0; t < 30; t++) {
      const d = heavy(n, 200 + t);
      const { decoded } = c.encode(d, st);
      for (let i = 0; i < n; i++) {
        sumT[i] += d[i];
        sumS[i] += decoded[i];
      }
    }
    const diff = sumT.map((v, i) => v - sumS[i]);
    assert.ok(norm(diff) <= norm(st.residual) * 1.001 + 1e-9, c.id);
    if (c.id === 'fp32') assert.equal(norm(st.residual), 0);
  }
});

test('encodedSize is exact for every codec over many n and parameters', () => {
  const ns = [
    0, 1, 2, 3, 7, 8, 9, 255, 256, 257, 1000, 4095, 4096, 4097, 8191, 12_289, 65_535, 65_536, 65_537, 100_003,
  ];
  for (const c of allCodecs()) {
    for (const n of ns) {
      const { bytes } = c.encode(heavy(n, n));
      assert.equal(bytes.length, c.encodedSize(n), `${c.id} n=${n}`);
      assert.equal(bytes.length, encodedSize(c, n));
    }
  }
  for (const n of ns) {
    assert.equal(encodedSize('fp32', n), 12 + 4 * n);
    assert.equal(encodedSize('fp16', n), 12 + 2 * n);
    assert.equal(encodedSize('int8', n), 1036 + n);
    for (const p of SPARSE_VARIANTS) {
      const chunks = Math.ceil(n / p.chunk),
        last = n - (chunks - 1) * p.chunk;
      const K = n === 0 ? 0 : (chunks - 1) * p.k + Math.min(p.k, last);
      const b = Math.log2(p.chunk);
      assert.equal(encodedSize('sparse', n, p), 20 + 8 * chunks + Math.ceil((K * b) / 8) + Math.ceil(K / 4));
    }
  }
  // Reference model, default sparse: 1036 chunks, K = 66,304 -> 124,340 bytes.
  assert.equal(encodedSize('sparse', 4_240_896), 124_340);
  assert.equal(encodedSize(sparseCodec(), 4096 * 10), 20 + 10 * 120);
  assert.deepEqual({ ...sparseCodec().params }, { ...DEFAULT_SPARSE });
});

test('deterministic: same input and state give identical bytes; inputs are not mutated', () => {
  const n = 20_000;
  const x = heavy(n, 9);
  const copy = x.slice();
  for (const c of allCodecs()) {
    const s1 = new ErrorFeedback(n, 0.95);
    c.encode(heavy(n, 10), s1);
    const s2 = s1.clone();
    const a = c.encode(x, s1),
      b = c.encode(x, s2);
    assert.deepEqual(a.bytes, b.bytes, c.id);
    assert.deepEqual(s1.residual, s2.residual);
    assert.deepEqual(c.encode(x).bytes, c.encode(x).bytes);
    assert.deepEqual(x, copy);
  }
});

test('decoders accept views at any byte offset (e.g. Buffer slices)', () => {
  const n = 999;
  for (const c of allCodecs()) {
    const { bytes, decoded } = c.encode(heavy(n, 11));
    const big = new Uint8Array(bytes.length + 3);
    big.set(bytes, 3);
    assert.deepEqual(c.decode(big.subarray(3), n), decoded);
    assert.deepEqual(decodeAny(Buffer.from(bytes), n).values, decoded);
  }
});

test('header inspection and codec policy', () => {
  const m = sparseCodec({ chunk: 1024, k: 16 }).encode(heavy(5000, 12)).bytes;
  assert.deepEqual(peekHeader(m), { codec: 'sparse', n: 5000, sparse: { chunk: 1024, k: 16 } });
  assert.deepEqual(peekHeader(int8Codec.encode(new Float32Array(3)).bytes), { codec: 'int8', n: 3 });
  assert.throws(() => decodeAny(m, 5000, ['fp32', 'fp16']), DecodeError);
  assert.throws(() => fp32Codec.decode(m, 5000), DecodeError);
  assert.throws(() => fp16Codec.decode(fp32Codec.encode(new Float32Array(4)).bytes, 4), DecodeError);
});

test('encoders and the trusted side reject bad input with InvalidInputError', () => {
  for (const c of allCodecs()) {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const x = new Float32Array(10);
      x[3] = bad;
      assert.throws(() => c.encode(x), InvalidInputError);
    }
    const st = new ErrorFeedback(5);
    assert.throws(() => c.encode(new Float32Array(6), st), InvalidInputError);
    assert.throws(() => c.decode(c.encode(new Float32Array(4)).bytes, -1), InvalidInputError);
    assert.throws(() => c.decode(c.encode(new Float32Array(4)).bytes, 2 ** 40), InvalidInputError);
  }
  // An overflowing residual+delta is refused and leaves the state untouched.
  const st = new ErrorFeedback(2);
  st.residual[0] = 3e38;
  assert.throws(() => fp32Codec.encode(new Float32Array([3e38, 0]), st), InvalidInputError);
  assert.equal(st.residual[0], Math.fround(3e38));
  assert.throws(() => sparseCodec({ chunk: 1000 }), InvalidInputError);
  assert.throws(() => sparseCodec({ chunk: 8, k: 9 }), InvalidInputError);
  assert.throws(() => new ErrorFeedback(3, 1.5), InvalidInputError);
});

test('decoders: hand-made lies are DecodeErrors', () => {
  const n = 100;
  const x = heavy(n, 13);
  const u32 = (b: Uint8Array, off: number, v: number) => new DataView(b.buffer, b.byteOffset).setUint32(off, v, true);
  const f32 = (b: Uint8Array, off: number, v: number) => new DataView(b.buffer, b.byteOffset).setFloat32(off, v, true);
  const bad = (c: Codec, b: Uint8Array, why: RegExp, nn = n) =>
    assert.throws(
      () => c.decode(b, nn),
      (e: unknown) => e instanceof DecodeError && why.test(e.message),
    );
  for (const c of allCodecs()) {
    const m = c.encode(x).bytes;
    bad(c, new Uint8Array(0), /shorter/);
    bad(c, m.slice(0, m.length - 1), /exactly|shorter/);
    bad(c, Uint8Array.from([...m, 0]), /exactly/);
    let b = m.slice();
    b[0] ^= 1;
    bad(c, b, /magic/);
    b = m.slice();
    b[4] = 2;
    bad(c, b, /version/);
    b = m.slice();
    b[5] = 9;
    bad(c, b, /tag/);
    b = m.slice();
    b[7] = 1;
    bad(c, b, /reserved/);
    b = m.slice();
    u32(b, 8, 0xffffffff);
    bad(c, b, /count/);
    bad(c, m, /count/, n + 1);
    // A header that claims (and is expected to have) a huge n with a tiny body: no allocation.
    b = m.slice();
    u32(b, 8, 2 ** 30);
    bad(c, b, /exactly/, 2 ** 30);
  }
  let b = fp32Codec.encode(x).bytes;
  f32(b, 12 + 4 * 7, NaN);
  bad(fp32Codec, b, /finite/);
  b = fp32Codec.encode(x).bytes;
  f32(b, 12, -Infinity);
  bad(fp32Codec, b, /finite/);
  b = fp16Codec.encode(x).bytes;
  b[12 + 2 * 5 + 1] = 0x7c;
  bad(fp16Codec, b, /Inf or NaN/);
  b = int8Codec.encode(x).bytes;
  f32(b, 12 + 4 * b[1036], Infinity);
  bad(int8Codec, b, /not finite/);
  b = int8Codec.encode(new Float32Array(n)).bytes;
  f32(b, 12 + 4 * 3, 1);
  bad(int8Codec, b, /unused/);
  const sc = sparseCodec({ chunk: 64, k: 4 });
  const sm = sc.encode(x).bytes;
  for (const [chunk, k] of [
    [0, 4],
    [1, 1],
    [3, 1],
    [2 ** 17, 4],
    [2 ** 31, 4],
    [64, 0],
    [64, 65],
    [64, 0xffffffff],
  ]) {
    b = sm.slice();
    u32(b, 12, chunk);
    u32(b, 16, k);
    bad(sc, b, /chunk|k must/);
  }
  b = sm.slice();
  u32(b, 16, 5);
  bad(sc, b, /this run's codec/); // valid parameters, but not this codec's
  assert.throws(() => decodeAny(b, n), /exactly/); // decodeAny takes them from the header
  b = sm.slice();
  f32(b, 20, -1);
  bad(sc, b, /scales/);
  b = sm.slice();
  f32(b, 20, NaN);
  bad(sc, b, /scales/);
  b = sm.slice();
  f32(b, 20, 2);
  f32(b, 24, 1);
  bad(sc, b, /scales/);
  // Indices: chunk 64 -> 6-bit indices starting after 2 chunks of scales at byte 36.
  b = sm.slice();
  b[36] = 0xff;
  b[37] = 0x0f;
  bad(sc, b, /index/); // first two indices 63, 63
  const tail = sparseCodec({ chunk: 64, k: 4 }).encode(heavy(65, 1)).bytes; // last chunk has 1 element
  // K = 5 indices x 6 bits = 30 bits: 4 bytes, 2 padding bits; codes 10 bits: 2 bytes, 6 padding bits.
  b = tail.slice();
  b[36 + 3] |= 0x80;
  bad(sc, b, /padding|index/, 65);
  b = tail.slice();
  b[b.length - 1] |= 0x80;
  bad(sc, b, /padding/, 65);
});

test('decoder fuzz: random bytes, truncations, bit flips and lying headers never escape as other errors', () => {
  const r = rng(14);
  let ok = 0,
    rejected = 0;
  const attempt = (c: Codec, bytes: Uint8Array, n: number) => {
    for (const dec of [(b: Uint8Array) => c.decode(b, n), (b: Uint8Array) => decodeAny(b, n).values]) {
      let out: Float32Array;
      try {
        out = dec(bytes);
      } catch (e) {
        if (!(e instanceof DecodeError)) throw new Error(`${c.id}: non-DecodeError ${String(e)}`, { cause: e });
        rejected++;
        continue;
      }
      assertValid(out, n);
      ok++;
    }
  };
  const t0 = Date.now();
  for (const c of allCodecs()) {
    for (const n of [0, 1, 5, 64, 65, 300]) {
      const msg = c.encode(heavy(n, n + 77)).bytes;
      attempt(c, msg, n);
      // Pure noise, with and without a valid prefix.
      for (let i = 0; i < 150; i++) {
        const len = Math.floor(r() * (msg.length + 40));
        const b = new Uint8Array(len);
        for (let j = 0; j < len; j++) b[j] = Math.floor(r() * 256);
        attempt(c, b, n);
        const keep = Math.floor(r() * Math.min(len, 20));
        b.set(msg.subarray(0, keep));
        attempt(c, b, n);
      }
      // Every truncation of small messages, random ones of larger; trailing garbage.
      const cuts = msg.length <= 200 ? msg.length : 100;
      for (let i = 0; i < cuts; i++) attempt(c, msg.slice(0, msg.length <= 200 ? i : Math.floor(r() * msg.length)), n);
      attempt(c, Uint8Array.from([...msg, 0]), n);
      // Bit flips (1-4 bits), anywhere, and concentrated on the header.
      for (let i = 0; i < 150; i++) {
        const b = msg.slice();
        const flips = 1 + Math.floor(r() * 4);
        for (let f = 0; f < flips && b.length > 0; f++) {
          const pos = r() < 0.5 ? Math.floor(r() * Math.min(b.length, 24)) : Math.floor(r() * b.length);
          b[pos] ^= 1 << Math.floor(r() * 8);
        }
        attempt(c, b, n);
      }
      // Lying 32-bit header fields (n, chunk, k) and random tags.
      for (let i = 0; i < 40; i++) {
        const b = msg.slice();
        if (b.length < 20) break;
        const dv = new DataView(b.buffer);
        const vals = [0, 1, 2, 3, n + 1, 4096, 65536, 65537, 2 ** 30, 2 ** 31, 0xffffffff, Math.floor(r() * 2 ** 32)];
        dv.setUint32([8, 12, 16][i % 3], vals[Math.floor(r() * vals.length)], true);
        if (r() < 0.2) b[5] = 1 + Math.floor(r() * 5);
        attempt(c, b, n);
      }
    }
  }
  assert.ok(Date.now() - t0 < 10_000, 'fuzz took too long');
  assert.ok(rejected > 10_000, `rejected ${rejected}`);
  assert.ok(ok > 50, `accepted ${ok}`);
});

test('codec registry covers every id', () => {
  for (const id of CODEC_IDS) assert.equal(getCodec(id).id, id);
});

test("a codec's decode refuses another chunk/k before allocating (the run's parameters, not the sender's)", () => {
  const n = 1 << 20;
  const run = sparseCodec({ chunk: 1024, k: 64 });
  // The cheapest valid message for n: one index per 65536-element chunk, 176 bytes for 4 MB of Δ.
  const tiny = sparseCodec({ chunk: 65536, k: 1 }).encode(new Float32Array(n).fill(1e-3)).bytes;
  assert.ok(tiny.length < 256, `${tiny.length} bytes`);
  assert.throws(
    () => run.decode(tiny, n),
    (e: unknown) => e instanceof DecodeError && /this run's codec/.test(String(e)),
  );
  // And the run's own message is exactly encodedSize(n).
  assert.equal(run.encode(new Float32Array(n).fill(1e-3)).bytes.length, run.encodedSize(n));
});
