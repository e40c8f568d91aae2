/**
 * Public face of the pseudo-gradient codecs: the codec registry, exact size prediction, and
 * header inspection so a receiver can apply policy (allowed codecs, minimum density) before
 * decoding. Import from here; the other files are implementation.
 *
 * Exact wire sizes (bytes), n elements:
 *   fp32    12 + 4n
 *   fp16    12 + 2n
 *   int8    12 + 1024 + n
 *   sparse  20 + 8*ceil(n/C) + ceil(K*log2(C)/8) + ceil(K/4),  K = sum_chunks min(k, chunk length)
 */
import { InvalidInputError } from '../../util/errors.js';
import type { Codec } from './codec.js';
import { DecodeError } from './errors.js';
import { fp16Codec, fp32Codec } from './dense.js';
import { int8Codec } from './int8.js';
import { readSparseParams, sparseCodec, type SparseParams } from './sparse.js';
import { readTag, type CodecId } from './wire.js';

export { DecodeError } from './errors.js';
export { ErrorFeedback, type Codec, type CodecId, type CodecState, type EncodeResult } from './codec.js';
export { fp32Codec, fp16Codec } from './dense.js';
export { int8Codec } from './int8.js';
export { sparseCodec, DEFAULT_SPARSE, type SparseCodec, type SparseParams } from './sparse.js';
export { f16Round } from './f16.js';
export { MAX_N } from './wire.js';

export const CODEC_IDS: readonly CodecId[] = Object.freeze(['fp32', 'fp16', 'int8', 'sparse']);

/** A codec by id; `params` only matters for 'sparse' (defaults: chunk 4096, k 64). */
export function getCodec(id: CodecId, params?: Partial<SparseParams>): Codec {
  switch (id) {
    case 'fp32':
      return fp32Codec;
    case 'fp16':
      return fp16Codec;
    case 'int8':
      return int8Codec;
    case 'sparse':
      return sparseCodec(params);
    default:
      throw new InvalidInputError(`unknown codec ${String(id)}`);
  }
}

/** Exact byte length of the wire message for n elements. */
export function encodedSize(codec: Codec | CodecId, n: number, params?: Partial<SparseParams>): number {
  return (typeof codec === 'string' ? getCodec(codec, params) : codec).encodedSize(n);
}

export interface MessageInfo {
  codec: CodecId;
  /** Element count claimed by the sender (compare with yours before trusting anything). */
  n: number;
  /** Only for 'sparse'. */
  sparse?: SparseParams;
}

/** Reads and validates the header only (not the payload). Throws DecodeError. */
export function peekHeader(bytes: Uint8Array): MessageInfo {
  const codec = readTag(bytes);
  const n = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(8, true);
  return codec === 'sparse' ? { codec, n, sparse: readSparseParams(bytes) } : { codec, n };
}

/**
 * Decodes a message of any codec in `allowed` (default: all). Pure function of the bytes and
 * the expected n; throws DecodeError on anything malformed or disallowed.
 */
export function decodeAny(
  bytes: Uint8Array,
  n: number,
  allowed: readonly CodecId[] = CODEC_IDS,
): { codec: CodecId; values: Float32Array } {
  const codec = readTag(bytes);
  if (!allowed.includes(codec)) throw new DecodeError(`codec ${codec} is not allowed here`);
  // The sparse chunk and k come from the header here (a codec's own decode() refuses any but its
  // own): decodeAny is for callers that accept whatever parameters the sender chose.
  return { codec, values: getCodec(codec, codec === 'sparse' ? readSparseParams(bytes) : undefined).decode(bytes, n) };
}
