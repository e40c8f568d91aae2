/**
 * sha256 for the pure core (canonical hashes, round seeds, leader order, replica placement):
 * @noble/hashes, no node:crypto, so the reducer and its helpers run anywhere a JS engine does.
 * Output is identical to node:crypto's (test/hash.test.ts). It is ~15× slower than OpenSSL on
 * multi-MB buffers (about 100 MB/s against 1.5 GB/s here), so code that hashes bulk data
 * (transfers, token files) uses sha256HexNode from ./hash-node.ts instead.
 */
import { sha256 } from '@noble/hashes/sha2.js';
import { bytesToHex, utf8ToBytes } from '@noble/hashes/utils.js';

/** sha256 of `data` (a string is hashed as its UTF-8 bytes). */
export function sha256Bytes(data: string | Uint8Array): Uint8Array {
  return sha256(typeof data === 'string' ? utf8ToBytes(data) : data);
}

/** Lower-case hex sha256 of `data` (a string is hashed as its UTF-8 bytes). */
export function sha256Hex(data: string | Uint8Array): string {
  return bytesToHex(sha256Bytes(data));
}
