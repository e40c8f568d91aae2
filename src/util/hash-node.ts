/**
 * sha256 through node:crypto (OpenSSL), for bulk data outside the pure core: transferred
 * objects, token files, corpora. Same output as sha256Hex in ./hash.ts, ~15× faster on large
 * buffers; the pure core cannot import node:* (eslint.config.js), so it uses ./hash.ts.
 */
import { createHash } from 'node:crypto';

/** Lower-case hex sha256 of `data` (a string is hashed as its UTF-8 bytes). */
export function sha256HexNode(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}
