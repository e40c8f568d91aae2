/**
 * 8-bit codec with per-bin means, after INTELLECT-1 (Prime Intellect's int8 ring all-reduce):
 * uniform bins of width s = 6*sigma/256 centred on zero, sigma = ||x|| / sqrt(n-1) (no mean
 * shift), q = clamp(round(x/s) + 128, 0, 255); the sender transmits, for each of the 256
 * bins, the mean of the values that fell into it (so the clamped tails are represented by
 * their mean rather than the bin edge), and one byte per element. Reconstruction: lut[q].
 *
 * Wire: 12-byte header | lut: 256 x float32 LE | q: n x uint8   = 1036 + n bytes
 * (1 byte/element + 1036 fixed). Decoder rejects a non-finite lut entry, and a non-zero
 * lut entry for a bin no element uses (keeps the encoding canonical: no hidden payload).
 * Rounding is Math.round (half toward +Inf); sums are float64 in index order: deterministic.
 */
import { encodeWith, type Codec, type ErrorFeedback } from './codec.js';
import { DecodeError } from './errors.js';
import { HEADER_BYTES, checkLength, checkN, readHeader, writeHeader } from './wire.js';

export const INT8_BINS = 256;
export const INT8_RANGE_IN_SIGMAS = 6;
const LUT_BYTES = 4 * INT8_BINS;

export function int8Size(n: number): number {
  checkN(n);
  return HEADER_BYTES + LUT_BYTES + n;
}

function packInt8(x: Float32Array): Uint8Array {
  const n = x.length;
  const out = new Uint8Array(int8Size(n));
  const dv = writeHeader(out, 'int8', n);
  let ss = 0;
  for (let i = 0; i < n; i++) ss += x[i] * x[i];
  const sigma = Math.sqrt(ss / Math.max(n - 1, 1));
  const scale = (INT8_RANGE_IN_SIGMAS * sigma) / INT8_BINS;
  const sums = new Float64Array(INT8_BINS);
  const counts = new Float64Array(INT8_BINS);
  const q0 = HEADER_BYTES + LUT_BYTES;
  const half = INT8_BINS / 2;
  for (let i = 0; i < n; i++) {
    let q = scale > 0 ? Math.round(x[i] / scale) + half : half;
    if (q < 0) q = 0;
    else if (q > INT8_BINS - 1) q = INT8_BINS - 1;
    out[q0 + i] = q;
    sums[q] += x[i];
    counts[q]++;
  }
  for (let b = 0; b < INT8_BINS; b++) {
    dv.setFloat32(HEADER_BYTES + 4 * b, counts[b] > 0 ? sums[b] / counts[b] : 0, true);
  }
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
  encode: (delta: Float32Array, state?: ErrorFeedback) => encodeWith('int8', packInt8, decodeInt8, delta, state),
  decode: decodeInt8,
  encodedSize: int8Size,
});
