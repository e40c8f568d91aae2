/**
 * One binary layout for "a small JSON header plus equal-length float32 arrays" (a trainer's
 * audit trace, a pipeline stage's checkpoint):
 *
 *   u32 LE header length | JSON header | arrays[0] | arrays[1] | …   (float32, little endian)
 *
 * Decoding checks the exact total length before reading and leaves the header's schema to the
 * caller; it never evaluates anything (the bytes may come from untrusted peers).
 */
import { InvalidInputError } from './errors.js';

export function packF32(head: unknown, arrays: readonly Float32Array[]): Uint8Array {
  const n = arrays[0]?.length ?? 0;
  if (arrays.some((a) => a.length !== n)) throw new InvalidInputError('packF32: arrays differ in length');
  const h = new TextEncoder().encode(JSON.stringify(head));
  const out = new Uint8Array(4 + h.length + 4 * n * arrays.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, h.length, true);
  out.set(h, 4);
  let o = 4 + h.length;
  for (const a of arrays) {
    for (let i = 0; i < n; i++) dv.setFloat32(o + 4 * i, a[i], true);
    o += 4 * n;
  }
  return out;
}

/** Splits bytes made by packF32 into the parsed JSON header and `count` arrays of `length` floats. */
export function unpackF32(
  bytes: Uint8Array,
  count: number,
  length: number,
  what: string,
): { head: unknown; arrays: Float32Array[] } {
  if (bytes.length < 4) throw new InvalidInputError(`${what}: ${bytes.length} bytes is too short`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const hl = dv.getUint32(0, true);
  const want = 4 + hl + 4 * count * length;
  if (bytes.length !== want)
    throw new InvalidInputError(`${what} has ${bytes.length} bytes, expected ${want} for ${length} parameters`);
  let head: unknown;
  try {
    head = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + hl)));
  } catch (err) {
    throw new InvalidInputError(`${what} header: ${(err as Error).message.slice(0, 200)}`);
  }
  const arrays = Array.from({ length: count }, (_, k) => {
    const a = new Float32Array(length),
      o = 4 + hl + 4 * length * k;
    for (let i = 0; i < length; i++) a[i] = dv.getFloat32(o + 4 * i, true);
    return a;
  });
  return { head, arrays };
}

const LITTLE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** One float32 array as little-endian bytes (a copy): a tensor sent whole over a stage call. */
export function f32ToBytes(a: Float32Array): Uint8Array {
  if (LITTLE) return new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
  const out = new Uint8Array(4 * a.length),
    dv = new DataView(out.buffer);
  for (let i = 0; i < a.length; i++) dv.setFloat32(4 * i, a[i], true);
  return out;
}

/** Little-endian float32 bytes back to an array (a copy) of exactly `n` values. */
export function bytesToF32(b: Uint8Array, n: number, what: string): Float32Array {
  if (b.length !== 4 * n) throw new InvalidInputError(`${what} must be ${4 * n} bytes, got ${b.length}`);
  if (LITTLE) return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  const out = new Float32Array(n),
    dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
  return out;
}
