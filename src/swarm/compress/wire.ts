/**
 * The framing every codec shares, and the bit packing the sparse codec needs. Kept apart so
 * the rules an untrusted message must satisfy (magic, version, codec tag, reserved bytes,
 * element count) are checked in exactly one place.
 *
 * Common header, 12 bytes, little-endian:
 *   off 0  u8[4]  magic "TSPG" (Tessera Pseudo-Gradient)
 *   off 4  u8     version = 1
 *   off 5  u8     codec tag (1 fp32, 2 fp16, 3 int8, 4 sparse)
 *   off 6  u16    reserved, must be 0
 *   off 8  u32    n, the element count; must equal the receiver's expected n
 * Codec-specific parameters (if any) and the payload follow.
 */
import { InvalidInputError } from '../../util/errors.js';
import { DecodeError } from './errors.js';

export const MAGIC = [0x54, 0x53, 0x50, 0x47] as const; // "TSPG"
export const VERSION = 1;
export const HEADER_BYTES = 12;
/** Largest vector we agree to encode or expect (4 GiB of fp32). */
export const MAX_N = 2 ** 30;

export const TAGS = { fp32: 1, fp16: 2, int8: 3, sparse: 4 } as const;
export type CodecId = keyof typeof TAGS;

/** Host byte order; typed-array fast paths are only taken on little-endian hosts. */
export const IS_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** n comes from the caller (trusted), so a bad one is an input error, not a decode error. */
export function checkN(n: number): void {
  if (!Number.isSafeInteger(n) || n < 0 || n > MAX_N) {
    throw new InvalidInputError(`element count must be an integer in [0, ${MAX_N}], got ${n}`);
  }
}

export function writeHeader(out: Uint8Array, id: CodecId, n: number): DataView {
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  out.set(MAGIC, 0);
  out[4] = VERSION;
  out[5] = TAGS[id];
  dv.setUint16(6, 0, true);
  dv.setUint32(8, n, true);
  return dv;
}

/** The codec a message claims to be, after checking magic, version, tag and reserved bytes. */
export function readTag(bytes: Uint8Array): CodecId {
  if (!(bytes instanceof Uint8Array)) throw new DecodeError('message is not a Uint8Array');
  if (bytes.length < HEADER_BYTES)
    throw new DecodeError(`message of ${bytes.length} bytes is shorter than the ${HEADER_BYTES}-byte header`);
  for (let i = 0; i < 4; i++)
    if (bytes[i] !== MAGIC[i]) throw new DecodeError('bad magic (not a Tessera pseudo-gradient)');
  if (bytes[4] !== VERSION) throw new DecodeError(`unsupported version ${bytes[4]}`);
  if (bytes[6] !== 0 || bytes[7] !== 0) throw new DecodeError('reserved header bytes are not zero');
  const tag = bytes[5];
  for (const id of Object.keys(TAGS) as CodecId[]) if (TAGS[id] === tag) return id;
  throw new DecodeError(`unknown codec tag ${tag}`);
}

/** Validates the common header against the expected codec and n; returns a view for the rest. */
export function readHeader(bytes: Uint8Array, id: CodecId, n: number): DataView {
  checkN(n);
  const got = readTag(bytes);
  if (got !== id) throw new DecodeError(`codec mismatch: expected ${id}, message is ${got}`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const claimed = dv.getUint32(8, true);
  if (claimed !== n) throw new DecodeError(`element count mismatch: expected ${n}, header says ${claimed}`);
  return dv;
}

export function checkLength(bytes: Uint8Array, expected: number, what: string): void {
  if (bytes.length !== expected) {
    throw new DecodeError(`${what}: expected exactly ${expected} bytes, got ${bytes.length}`);
  }
}

/** Throws InvalidInputError at the first NaN/Inf: encoders refuse what decoders would reject. */
export function assertFinite(x: Float32Array, what: string): void {
  for (let i = 0; i < x.length; i++) {
    if (!Number.isFinite(x[i])) throw new InvalidInputError(`${what}[${i}] is not finite (${x[i]})`);
  }
}

/**
 * LSB-first bit stream: bit j of the m-th value of width w is stream bit m*w + j, and stream
 * bit p is bit (p & 7) of byte (p >> 3). Width at most 16. Unused bits of the last byte are 0.
 */
export class BitWriter {
  private acc = 0;
  private nbits = 0;
  constructor(
    private readonly out: Uint8Array,
    private pos: number,
  ) {}
  write(value: number, width: number): void {
    this.acc |= value << this.nbits; // acc < 2^8 before, value < 2^16: fits in 24 bits
    this.nbits += width;
    while (this.nbits >= 8) {
      this.out[this.pos++] = this.acc & 0xff;
      this.acc >>>= 8;
      this.nbits -= 8;
    }
  }
  /** Flushes the partial byte; returns the offset just past the stream. */
  finish(): number {
    if (this.nbits > 0) this.out[this.pos++] = this.acc;
    this.acc = 0;
    this.nbits = 0;
    return this.pos;
  }
}

/** Reads a BitWriter stream of `bytes` stream bytes starting at `start`; never reads past it. */
export class BitReader {
  private bit = 0;
  private readonly end: number;
  constructor(
    private readonly bytes: Uint8Array,
    private readonly start: number,
    length: number,
  ) {
    this.end = start + length;
  }
  read(width: number): number {
    const p = this.start + (this.bit >>> 3);
    const sh = this.bit & 7;
    let v = this.bytes[p];
    if (p + 1 < this.end) v |= this.bytes[p + 1] << 8;
    if (p + 2 < this.end) v |= this.bytes[p + 2] << 16;
    this.bit += width;
    return (v >>> sh) & ((1 << width) - 1);
  }
  /** After the last read: the stream must end in this byte and its spare bits must be zero. */
  checkPadding(what: string): void {
    const used = Math.ceil(this.bit / 8);
    if (this.start + used !== this.end) throw new DecodeError(`${what}: stream length mismatch`);
    const spare = this.bit & 7;
    if (spare !== 0 && this.bytes[this.end - 1] >>> spare !== 0) {
      throw new DecodeError(`${what}: padding bits are not zero`);
    }
  }
}
