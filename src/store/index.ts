/**
 * Content-addressed storage: one Helia node per process, with a persistent blockstore and
 * datastore under the node's data directory (DATA_DIR/ipfs/{blocks,datastore}).
 *
 * This first step is local (`createHeliaLight`: no routing, no block exchange); serving and
 * fetching blocks from peers over the swarm's libp2p host is the next one. Every read is
 * verified against its CID (sha256 multihash) here, not trusted to the blockstore, and every
 * await takes an AbortSignal so that a missing block can never hang a caller.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createHeliaLight, type Helia } from 'helia';
import { unixfs, type UnixFS } from '@helia/unixfs';
import { FsBlockstore } from 'blockstore-fs';
import { FsDatastore } from 'datastore-fs';
import { CID } from 'multiformats/cid';
import { sha256 } from 'multiformats/hashes/sha2';
import { equals } from 'multiformats/bytes';
import { TesseraError } from '../util/errors.js';

/** A block's bytes do not hash to its CID. */
export class CorruptBlockError extends TesseraError {
  constructor(readonly cid: string) {
    super('CORRUPT_BLOCK', `block ${cid} does not match its hash`);
  }
}

/** A block is not in the store (and, for now, cannot be fetched from peers). */
export class MissingBlockError extends TesseraError {
  constructor(readonly cid: string, detail = '') {
    super('MISSING_BLOCK', `block ${cid} is not available${detail ? `: ${detail}` : ''}`);
  }
}

/** A string that is not a CID, or a CID with a hash we cannot verify. */
export class BadCidError extends TesseraError {
  constructor(message: string) {
    super('BAD_CID', message);
  }
}

export interface Store {
  helia: Helia;
  fs: UnixFS;
  dir: string;
  /** The verified bytes of one block. */
  getBlock(cid: CID, options?: { signal?: AbortSignal }): Promise<Uint8Array>;
  putBlock(cid: CID, bytes: Uint8Array, options?: { signal?: AbortSignal }): Promise<void>;
  has(cid: CID, options?: { signal?: AbortSignal }): Promise<boolean>;
  stop(): Promise<void>;
}

export function parseCid(s: string): CID {
  try {
    return CID.parse(s.trim());
  } catch (err) {
    throw new BadCidError(`not a CID: ${JSON.stringify(s)} (${(err as Error).message})`);
  }
}

/** Recompute the multihash of `bytes` and compare it with the CID's (sha2-256 only). */
export async function verifyBlock(cid: CID, bytes: Uint8Array): Promise<void> {
  if (cid.multihash.code !== sha256.code) throw new BadCidError(`${cid} uses hash 0x${cid.multihash.code.toString(16)}; only sha2-256 is accepted`);
  const mh = await sha256.digest(bytes);
  if (!equals(mh.digest, cid.multihash.digest)) throw new CorruptBlockError(cid.toString());
}

export async function openStore(dataDir: string): Promise<Store> {
  const dir = join(dataDir, 'ipfs');
  mkdirSync(join(dir, 'blocks'), { recursive: true });
  mkdirSync(join(dir, 'datastore'), { recursive: true });
  const blockstore = new FsBlockstore(join(dir, 'blocks'));
  const datastore = new FsDatastore(join(dir, 'datastore'));
  await blockstore.open();
  await datastore.open();
  const helia = createHeliaLight({ blockstore, datastore });
  await helia.start();
  const signalOf = (o?: { signal?: AbortSignal }) => o?.signal ?? AbortSignal.timeout(30_000);
  return {
    helia,
    fs: unixfs(helia),
    dir,
    async getBlock(cid, options) {
      const signal = signalOf(options);
      // Read the local store directly: the offline check comes first, so a missing block fails
      // at once instead of waiting for a block broker.
      if (!(await blockstore.has(cid))) throw new MissingBlockError(cid.toString(), 'not in the local store');
      let bytes: Uint8Array;
      try {
        bytes = await concat(blockstore.get(cid, { signal }));
      } catch (err) {
        throw new MissingBlockError(cid.toString(), (err as Error).message);
      }
      await verifyBlock(cid, bytes);
      return bytes;
    },
    async putBlock(cid, bytes, options) {
      await verifyBlock(cid, bytes);
      await blockstore.put(cid, bytes, { signal: signalOf(options) });
    },
    async has(cid) {
      return await blockstore.has(cid);
    },
    async stop() {
      await helia.stop();
      await blockstore.close();
      await datastore.close();
    },
  };
}

/** Blockstore.get may return bytes or a stream of chunks depending on the implementation. */
async function concat(x: Uint8Array | AsyncIterable<Uint8Array> | Iterable<Uint8Array> | Promise<Uint8Array>): Promise<Uint8Array> {
  const v = await x;
  if (v instanceof Uint8Array) return v;
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const p of v as AsyncIterable<Uint8Array>) { parts.push(p); n += p.length; }
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}
