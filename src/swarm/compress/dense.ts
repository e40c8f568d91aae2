/**
 * The two dense codecs: fp32 (lossless, the baseline every ratio is measured against) and
 * fp16 (half the bytes, ~3 significant digits, saturating at +-65504).
 *
 *   fp32: 12-byte header + n x float32 LE   = 12 + 4n bytes (4 bytes/element)
 *   fp16: 12-byte header + n x binary16 LE  = 12 + 2n bytes (2 bytes/element)
 * Decoders reject any NaN/Inf element (fp16: exponent field 31).
 */
import { encodeWith, type Codec, type ErrorFeedback } from './codec.js';
import { DecodeError } from './errors.js';
import { f16Table, f32BitsToF16Bits } from './f16.js';
import { HEADER_BYTES, IS_LE, checkLength, checkN, readHeader, writeHeader } from './wire.js';

export function fp32Size(n: number): number {
  checkN(n);
  return HEADER_BYTES + 4 * n;
}

export function fp16Size(n: number): number {
  checkN(n);
  return HEADER_BYTES + 2 * n;
}

function packFp32(x: Float32Array): Uint8Array {
  const n = x.length;
  const out = new Uint8Array(fp32Size(n));
  const dv = writeHeader(out, 'fp32', n);
  if (IS_LE) out.set(new Uint8Array(x.buffer, x.byteOffset, 4 * n), HEADER_BYTES);
  else for (let i = 0; i < n; i++) dv.setFloat32(HEADER_BYTES + 4 * i, x[i], true);
  return out;
}

function decodeFp32(bytes: Uint8Array, n: number): Float32Array {
  const dv = readHeader(bytes, 'fp32', n);
  checkLength(bytes, fp32Size(n), 'fp32');
  const out = new Float32Array(n);
  if (IS_LE) new Uint8Array(out.buffer).set(bytes.subarray(HEADER_BYTES));
  else for (let i = 0; i < n; i++) out[i] = dv.getFloat32(HEADER_BYTES + 4 * i, true);
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(out[i])) throw new DecodeError(`fp32: element ${i} is not finite`);
  }
  return out;
}

function packFp16(x: Float32Array): Uint8Array {
  const n = x.length;
  const out = new Uint8Array(fp16Size(n));
  writeHeader(out, 'fp16', n);
  const bits = new Uint32Array(x.buffer, x.byteOffset, n); // host order on both sides: portable
  for (let i = 0, o = HEADER_BYTES; i < n; i++, o += 2) {
    const h = f32BitsToF16Bits(bits[i]);
    out[o] = h & 0xff;
    out[o + 1] = h >>> 8;
  }
  return out;
}

function decodeFp16(bytes: Uint8Array, n: number): Float32Array {
  readHeader(bytes, 'fp16', n);
  checkLength(bytes, fp16Size(n), 'fp16');
  const t = f16Table();
  const out = new Float32Array(n);
  for (let i = 0, o = HEADER_BYTES; i < n; i++, o += 2) {
    const h = bytes[o] | (bytes[o + 1] << 8);
    if ((h & 0x7c00) === 0x7c00) throw new DecodeError(`fp16: element ${i} is Inf or NaN`);
    out[i] = t[h];
  }
  return out;
}

export const fp32Codec: Codec = Object.freeze({
  id: 'fp32' as const,
  encode: (delta: Float32Array, state?: ErrorFeedback, scratch?: boolean) =>
    encodeWith('fp32', packFp32, decodeFp32, delta, state, scratch),
  decode: decodeFp32,
  encodedSize: fp32Size,
});

export const fp16Codec: Codec = Object.freeze({
  id: 'fp16' as const,
  encode: (delta: Float32Array, state?: ErrorFeedback, scratch?: boolean) =>
    encodeWith('fp16', packFp16, decodeFp16, delta, state, scratch),
  decode: decodeFp16,
  encodedSize: fp16Size,
});
