/**
 * 8-bit codec with per-bin means, after INTELLECT-1 (Prime Intellect's int8 ring all-reduce):
 * uniform bins of width s = 6*sigma/256 centred on zero, sigma = sqrt(ss / (n-1)) (no mean
 * shift), q = clamp(round(x/s) + 128, 0, 255); the sender transmits, for each of the 256
 * bins, the mean of the values that fell into it (so the clamped tails are represented by
 * their mean rather than the bin edge), and one byte per element. Reconstruction: lut[q].
 *
 * Wire: 12-byte header | lut: 256 x float32 LE | q: n x uint8   = 1036 + n bytes
 * (1 byte/element + 1036 fixed). Decoder rejects a non-finite lut entry, and a non-zero
 * lut entry for a bin no element uses (keeps the encoding canonical: no hidden payload).
 *
 * The two statistics are EXACT INTEGER SUMS, so any summation order gives the same bits (the
 * WebGPU encoder, src/kernels/webgpu/codec.ts, sums in parallel and must produce these bytes):
 * - ss = Σ v² · 2^(2·gs), v = floor(|x| / 2^gs), gs = (exponent of max|x|) − 25, so v < 2^26 keeps
 *   the top 26 bits of every element relative to the largest (the integer Σ v² is exact; ss is
 *   it rounded once to float64). The relative error of ss against the real Σ x² is below 2^-24.
 * - bin b's mean = fround((S_b · 2^gb) / count_b), S_b = Σ over the bin of sign(x)·floor(|x| / 2^gb)
 *   with gb = (exponent of scale) − 38: exact for every element of magnitude >= scale/2 (all bins
 *   but the zero bin), and within 2^-38 of scale per element of the zero bin. S_b is rounded
 *   once to float64. |x| / scale < 2^21 (sigma >= max|x| / sqrt(n − 1) and n <= 2^30), so
 *   |floor(|x| / 2^gb)| < 2^60 and |S_b| < 2^90.
 * Rounding of q is Math.round (half toward +Inf). The sequential float64 sums this codec used
 * before are not reproducible by a parallel sum (each of the n additions rounds); these are.
 */
import { encodeWith, type Codec, type ErrorFeedback } from './codec.js';
import { DecodeError } from './errors.js';
import { HEADER_BYTES, checkLength, checkN, readHeader, writeHeader } from './wire.js';

export const INT8_BINS = 256;
export const INT8_RANGE_IN_SIGMAS = 6;
const LUT_BYTES = 4 * INT8_BINS;
const HALF = INT8_BINS / 2;
/** Bits kept per element in the sum of squares (v < 2^INT8_SS_BITS). */
export const INT8_SS_BITS = 26;
/** Bits below the scale's exponent kept per element in the bin sums. */
export const INT8_SUM_BITS = 38;

export function int8Size(n: number): number {
  checkN(n);
  return HEADER_BYTES + LUT_BYTES + n;
}

const f64buf = new DataView(new ArrayBuffer(8));

/** 2^k exactly, for integer k in [-1022, 1023]. */
export function pow2(k: number): number {
  f64buf.setUint32(0, 0, true);
  f64buf.setUint32(4, (k + 1023) << 20, true);
  return f64buf.getFloat64(0, true);
}

/** Exponent of the leading bit of the binary32 magnitude with bits `ab` (> 0, finite). */
export function f32Lead(ab: number): number {
  const ex = ab >>> 23;
  return ex ? ex - 127 : 31 - Math.clz32(ab) - 149;
}

/** gs for a vector whose largest magnitude has binary32 bits amaxBits (0: all zero). */
export function int8SsGrid(amaxBits: number): number {
  return amaxBits === 0 ? 0 : f32Lead(amaxBits) - (INT8_SS_BITS - 1);
}

/** The bin width from the exact integer Σ v² on grid gs. */
export function int8Scale(ssInt: bigint, gs: number, n: number): number {
  const ss = Number(ssInt) * pow2(2 * gs);
  const sigma = Math.sqrt(ss / Math.max(n - 1, 1));
  return (INT8_RANGE_IN_SIGMAS * sigma) / INT8_BINS;
}

/** gb for a bin width (0 when scale is 0: then every x is 0). */
export function int8SumGrid(scale: number): number {
  if (scale === 0) return 0;
  f64buf.setFloat64(0, scale, true);
  return ((f64buf.getUint32(4, true) >>> 20) & 0x7ff) - 1023 - INT8_SUM_BITS;
}

/** The bin of x. */
export function int8Bin(x: number, scale: number): number {
  let q = scale > 0 ? Math.round(x / scale) + HALF : HALF;
  if (q < 0) q = 0;
  else if (q > INT8_BINS - 1) q = INT8_BINS - 1;
  return q;
}

/** The order-preserving u32 image of a finite binary32 (by bits), and back. */
export function f32Key(bits: number): number {
  return (bits & 0x80000000 ? ~bits : bits ^ 0x80000000) >>> 0;
}
function keyBits(key: number): number {
  return (key & 0x80000000 ? key ^ 0x80000000 : ~key) >>> 0;
}

/**
 * The bins as thresholds on keys: bin(x) = #{j < 255 : f32Key(x) >= t[j]} for every finite x,
 * t[j] the smallest key whose value falls in bin j+1 or above (0xffffffff if none does). Valid
 * because int8Bin is nondecreasing in x (float64 division by scale > 0 and rounding are monotone)
 * and equal for -0 and +0. What the GPU compares against; found here by bisection over keys.
 */
export function int8Thresholds(scale: number): Uint32Array {
  const t = new Uint32Array(INT8_BINS - 1);
  const f = new Float32Array(1),
    u = new Uint32Array(f.buffer);
  const binOfKey = (key: number): number => {
    u[0] = keyBits(key);
    return int8Bin(f[0], scale);
  };
  const lo0 = f32Key(0xff7fffff), // -max finite
    hi0 = f32Key(0x7f7fffff); // +max finite
  for (let j = 0; j < INT8_BINS - 1; j++) {
    if (binOfKey(hi0) < j + 1) {
      t[j] = 0xffffffff;
      continue;
    }
    let lo = lo0,
      hi = hi0; // binOfKey(hi) >= j+1
    if (binOfKey(lo) >= j + 1) {
      t[j] = 0;
      continue;
    }
    while (hi - lo > 1) {
      const mid = lo + Math.floor((hi - lo) / 2);
      if (binOfKey(mid) >= j + 1) hi = mid;
      else lo = mid;
    }
    t[j] = hi;
  }
  return t;
}

/** lut[b] from the exact bin sums S_b (on grid gb) and counts. */
export function int8Lut(sums: readonly bigint[], counts: ArrayLike<number>, gb: number): Float32Array {
  const lut = new Float32Array(INT8_BINS);
  for (let b = 0; b < INT8_BINS; b++) {
    if (counts[b] > 0) lut[b] = (Number(sums[b]) * pow2(gb)) / counts[b];
  }
  return lut;
}

const P20 = 2 ** 20,
  P26 = 2 ** 26,
  P40 = 2 ** 40;
/** Flush the float64 partial sums into BigInt before they can pass 2^53. */
const FLUSH = 1 << 26;

function packInt8(x: Float32Array): Uint8Array {
  const n = x.length;
  const out = new Uint8Array(int8Size(n));
  const dv = writeHeader(out, 'int8', n);
  const bits = new Uint32Array(x.buffer, x.byteOffset, n);
  let amax = 0;
  for (let i = 0; i < n; i++) {
    const a = bits[i] & 0x7fffffff;
    if (a > amax) amax = a;
  }
  // ss: Σ v², v < 2^26; v² < 2^52 is exact, split at 2^26 so each partial stays exact.
  const gs = int8SsGrid(amax),
    ugs = pow2(-gs);
  let ssInt = 0n,
    hi = 0,
    lo = 0;
  for (let i = 0; i < n; i++) {
    const v = Math.trunc(Math.abs(x[i]) * ugs);
    const sq = v * v;
    const h = Math.floor(sq / P26);
    hi += h;
    lo += sq - h * P26;
    if ((i + 1) % FLUSH === 0) {
      ssInt += BigInt(hi) * BigInt(P26) + BigInt(lo);
      hi = lo = 0;
    }
  }
  ssInt += BigInt(hi) * BigInt(P26) + BigInt(lo);
  const scale = amax === 0 ? 0 : int8Scale(ssInt, gs, n);
  // Bin sums: sign(x)·floor(|x| / 2^gb) < 2^60 in three 20-bit digits, each partial exact.
  const gb = int8SumGrid(scale),
    ugb = pow2(-gb);
  const d0 = new Float64Array(INT8_BINS),
    d1 = new Float64Array(INT8_BINS),
    d2 = new Float64Array(INT8_BINS);
  const sums: bigint[] = Array.from({ length: INT8_BINS }, () => 0n);
  const counts = new Float64Array(INT8_BINS);
  const q0 = HEADER_BYTES + LUT_BYTES;
  const flush = () => {
    for (let b = 0; b < INT8_BINS; b++) {
      if (d0[b] || d1[b] || d2[b]) sums[b] += BigInt(d2[b]) * BigInt(P40) + BigInt(d1[b]) * BigInt(P20) + BigInt(d0[b]);
    }
    d0.fill(0);
    d1.fill(0);
    d2.fill(0);
  };
  for (let i = 0; i < n; i++) {
    const q = int8Bin(x[i], scale);
    out[q0 + i] = q;
    counts[q]++;
    const v = Math.trunc(Math.abs(x[i]) * ugb);
    if (v !== 0) {
      const v2 = Math.floor(v / P40),
        r = v - v2 * P40,
        v1 = Math.floor(r / P20),
        v0 = r - v1 * P20;
      if (x[i] < 0) {
        d0[q] -= v0;
        d1[q] -= v1;
        d2[q] -= v2;
      } else {
        d0[q] += v0;
        d1[q] += v1;
        d2[q] += v2;
      }
    }
    if ((i + 1) % FLUSH === 0) flush();
  }
  flush();
  const lut = int8Lut(sums, counts, gb);
  for (let b = 0; b < INT8_BINS; b++) dv.setFloat32(HEADER_BYTES + 4 * b, lut[b], true);
  return out;
}

function decodeInt8(bytes: Uint8Array, n: number): Float32Array {
  const dv = readHeader(bytes, 'int8', n);
  checkLength(bytes, int8Size(n), 'int8');
  const lut = new Float32Array(INT8_BINS);
  for (let b = 0; b < INT8_BINS; b++) {
    lut[b] = dv.getFloat32(HEADER_BYTES + 4 * b, true);
    if (!Number.isFinite(lut[b])) throw new DecodeError(`int8: lookup entry ${b} is not finite`);
  }
  const used = new Uint8Array(INT8_BINS);
  const out = new Float32Array(n);
  const q0 = HEADER_BYTES + LUT_BYTES;
  for (let i = 0; i < n; i++) {
    const q = bytes[q0 + i];
    used[q] = 1;
    out[i] = lut[q];
  }
  for (let b = 0; b < INT8_BINS; b++) {
    if (!used[b] && dv.getUint32(HEADER_BYTES + 4 * b, true) !== 0) {
      throw new DecodeError(`int8: lookup entry ${b} is unused but not zero`);
    }
  }
  return out;
}

export const int8Codec: Codec = Object.freeze({
  id: 'int8' as const,
  encode: (delta: Float32Array, state?: ErrorFeedback, scratch?: boolean) =>
    encodeWith('int8', packInt8, decodeInt8, delta, state, scratch),
  decode: decodeInt8,
  encodedSize: int8Size,
});
