/**
 * Token arrays as raw little-endian files (uint16 when the vocabulary fits, else int32), the
 * same layout on every machine, so caches and shards can be copied between hosts.
 */
import { endianness } from 'node:os';
import { InvalidInputError } from '../util/errors.js';
import type { TokenArray } from './batches.js';

export type TokenDtype = 'uint16' | 'int32';

const LITTLE = endianness() === 'LE';

export function dtypeFor(vocabSize: number): TokenDtype {
  return vocabSize <= 65536 ? 'uint16' : 'int32';
}

export function bytesPerToken(dtype: TokenDtype): number {
  return dtype === 'uint16' ? 2 : 4;
}

/** Copy ids into the compact array type for this vocabulary. */
export function toTokenArray(ids: Int32Array, vocabSize: number): TokenArray {
  return dtypeFor(vocabSize) === 'uint16' ? Uint16Array.from(ids) : Int32Array.from(ids);
}

/** Little-endian bytes of a token array (a view when the machine is little-endian). */
export function tokensToBytes(tokens: TokenArray): Uint8Array {
  const bytes = new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength);
  if (LITTLE) return bytes;
  const out = new Uint8Array(bytes.length);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < tokens.length; i++) {
    if (tokens instanceof Uint16Array) dv.setUint16(2 * i, tokens[i], true);
    else dv.setInt32(4 * i, tokens[i], true);
  }
  return out;
}

/** Parse little-endian bytes (length must be a multiple of the token size). */
export function bytesToTokens(bytes: Uint8Array, dtype: TokenDtype): TokenArray {
  const size = bytesPerToken(dtype);
  if (bytes.length % size !== 0)
    throw new InvalidInputError(`token file length ${bytes.length} is not a multiple of ${size}`);
  const n = bytes.length / size;
  const out = dtype === 'uint16' ? new Uint16Array(n) : new Int32Array(n);
  if (LITTLE) {
    new Uint8Array(out.buffer).set(bytes); // copy: also fixes alignment of pooled Buffers
  } else {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) out[i] = dtype === 'uint16' ? dv.getUint16(2 * i, true) : dv.getInt32(4 * i, true);
  }
  return out;
}
