/**
 * Content-addressed storage: one Helia 7 node per process, with a persistent blockstore and
 * datastore under the node's data directory (DATA_DIR/ipfs/{blocks,datastore}).
 *
 * Networked mode runs Helia on the swarm's own libp2p host (not a second host): Helia's
 * `createHelia` always builds its own libp2p node, so this module assembles the same pieces by
 * hand on the light core: the host as `helia.libp2p`, a content router over the host's Kademlia
 * DHT (provider records; kad-dht re-provides them before they expire), and bitswap as the block
 * broker. Bitswap hashes every block it receives and drops one that matches no want, so a peer
 * serving corrupt bytes cannot satisfy a fetch: the want stays open and another provider's
 * block completes it, or the fetch times out.
 *
 * Every read is verified against its CID (sha256 multihash) here too, not trusted to the
 * blockstore: a block corrupted on our own disk is deleted and fetched again from peers. Every
 * await takes an AbortSignal (default timeout 30 s), so a missing block can never hang a caller.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Helia, Router, Provider, Peer } from 'helia';
import { createHeliaLight } from './helia-light.js';
import { withBitswap } from '@helia/bitswap';
import { unixfs, type UnixFS } from '@helia/unixfs';
import { FsBlockstore } from 'blockstore-fs';
import { FsDatastore } from 'datastore-fs';
import * as dagJson from '@ipld/dag-json';
import { CID } from 'multiformats/cid';
import { sha256 } from 'multiformats/hashes/sha2';
import { equals } from 'multiformats/bytes';
import type { Libp2p, AbortOptions } from '@libp2p/interface';
import { peerIdFromCID } from '@libp2p/peer-id';
import { TesseraError } from '../util/errors.js';
import { raceAbort } from '../net/host.js';

/** A block want unanswered this long is sent again (see getBlock). */
const WANT_RETRY_MS = 1_500;
/** Default limit on any one fetch from peers. */
export const DEFAULT_FETCH_TIMEOUT_MS = 30_000;

/** A block's bytes do not hash to its CID. */
export class CorruptBlockError extends TesseraError {
  constructor(readonly cid: string) {
    super('CORRUPT_BLOCK', `block ${cid} does not match its hash`);
  }
}

/** A block is not in the store (and, for now, cannot be fetched from peers). */
export class MissingBlockError extends TesseraError {
  constructor(
    readonly cid: string,
    detail = '',
  ) {
    super('MISSING_BLOCK', `block ${cid} is not available${detail ? `: ${detail}` : ''}`);
  }
}

/** A file is larger than the caller allows. */
export class TooBigError extends TesseraError {
  constructor(
    readonly cid: string,
    max: number,
  ) {
    super('TOO_BIG', `${cid} is larger than the ${max}-byte limit`);
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
  /** True when blocks can be fetched from and served to peers. */
  networked: boolean;
  /**
   * The verified bytes of one block: from the local store, else (networked) from any peer that
   * has it, within the signal's deadline. MissingBlockError when it cannot be had in time;
   * CorruptBlockError only offline, for a local copy that fails its hash (networked, the bad
   * copy is deleted and the block fetched again).
   */
  getBlock(cid: CID, options?: AbortOptions & { offline?: boolean }): Promise<Uint8Array>;
  putBlock(cid: CID, bytes: Uint8Array, options?: AbortOptions): Promise<void>;
  has(cid: CID, options?: AbortOptions): Promise<boolean>;
  /** Announce to the DHT that this node holds `cid` (re-provided by kad-dht until cancelled). */
  provide(cid: CID, options?: AbortOptions): Promise<void>;
  /** Fetch every block of the DAG under `cid` (to `depth` links; default all) and pin it against GC. */
  pin(cid: CID, options?: AbortOptions & { depth?: number }): Promise<void>;
  /** Removes this node's pin rooted at `cid` (a no-op if there is none). */
  unpin(cid: CID, options?: AbortOptions): Promise<void>;
  /** A whole UnixFS file (or raw block) of at most maxBytes, fetched from peers if needed. */
  cat(cid: CID, options: AbortOptions & { maxBytes: number }): Promise<Uint8Array>;
  isPinned(cid: CID, options?: AbortOptions): Promise<boolean>;
  /** Delete every block that is not under a pin. */
  gc(options?: AbortOptions): Promise<void>;
  /** Counts since open: blocks found corrupt on local disk (and deleted). */
  readonly stats: { corruptLocal: number; fetched: number };
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
  if (cid.multihash.code !== sha256.code)
    throw new BadCidError(`${cid} uses hash 0x${cid.multihash.code.toString(16)}; only sha2-256 is accepted`);
  const mh = await sha256.digest(bytes);
  if (!equals(mh.digest, cid.multihash.digest)) throw new CorruptBlockError(cid.toString());
}

export interface OpenStoreOptions {
  /** Serve and fetch blocks over this (started) libp2p host: bitswap + its DHT as content router. */
  libp2p?: Libp2p;
  /** Called when a block is found corrupt (local disk), before it is refetched. */
  onCorrupt?: (cid: string, where: 'local') => void;
}

/** A Helia content router over a libp2p host's content and peer routing (its DHT). */
function hostRouter(libp2p: Libp2p): Router {
  return {
    name: 'tessera-host-router',
    async provide(cid: CID, options?: AbortOptions) {
      await libp2p.contentRouting.provide(cid, options);
    },
    async cancelReprovide(cid: CID, options?: AbortOptions) {
      await libp2p.contentRouting.cancelReprovide(cid, options);
    },
    async *findProviders(cid: CID, options?: AbortOptions): AsyncGenerator<Provider> {
      for await (const p of libp2p.contentRouting.findProviders(cid, options)) {
        yield { id: p.id.toCID(), multiaddrs: p.multiaddrs, router: 'tessera-host-router' } as Provider;
      }
    },
    async findPeer(id: CID, options?: AbortOptions) {
      const info = await libp2p.peerRouting.findPeer(peerIdFromCID(id), options);
      return { id: info.id.toCID(), multiaddrs: info.multiaddrs, router: 'tessera-host-router' } as Peer;
    },
  };
}

export async function openStore(dataDir: string, options: OpenStoreOptions = {}): Promise<Store> {
  const dir = join(dataDir, 'ipfs');
  mkdirSync(join(dir, 'blocks'), { recursive: true });
  mkdirSync(join(dir, 'datastore'), { recursive: true });
  const blockstore = new FsBlockstore(join(dir, 'blocks'));
  const datastore = new FsDatastore(join(dir, 'datastore'));
  await blockstore.open();
  await datastore.open();
  const libp2p = options.libp2p;
  const helia = createHeliaLight({ blockstore, datastore, codecs: [dagJson] });
  if (libp2p) {
    // What withLibp2p would do, but with the host we already run.
    Object.defineProperty(helia, 'libp2p', { value: libp2p, enumerable: true, configurable: true });
    helia.addRouter(hostRouter(libp2p));
    // A peer re-asking for a block (say, after finding its copy corrupt) gets it again soon.
    // Blocks also travel over relayed (limited) connections, to and from peers behind NATs
    // (issue 16), within the relay's limits; bitswap refuses those connections by default.
    withBitswap(helia as Helia & { libp2p: Libp2p }, { doNotResendBlockWindow: 200, runOnLimitedConnections: true });
  }
  await helia.start();
  const signalOf = (o?: AbortOptions) => o?.signal ?? AbortSignal.timeout(DEFAULT_FETCH_TIMEOUT_MS);
  const stats = { corruptLocal: 0, fetched: 0 };
  const fs = unixfs(helia);
  const isRoot = async (cid: CID): Promise<boolean> =>
    await helia.pins.get(cid).then(
      () => true,
      () => false,
    );
  const readLocal = async (cid: CID, signal: AbortSignal): Promise<Uint8Array | null> => {
    if (!(await blockstore.has(cid))) return null;
    const bytes = await concat(blockstore.get(cid, { signal }));
    try {
      await verifyBlock(cid, bytes);
      return bytes;
    } catch (err) {
      if (!(err instanceof CorruptBlockError) || !libp2p) throw err;
      stats.corruptLocal++;
      options.onCorrupt?.(cid.toString(), 'local');
      await blockstore.delete(cid);
      return null;
    }
  };
  return {
    helia,
    fs,
    dir,
    networked: libp2p !== undefined,
    stats,
    async getBlock(cid, o) {
      const signal = signalOf(o);
      const local = await readLocal(cid, signal);
      if (local) return local;
      if (!libp2p || o?.offline === true) throw new MissingBlockError(cid.toString(), 'not in the local store');
      let bytes: Uint8Array | null = null;
      // Networked storage asks bitswap (connected peers, then DHT providers) and stores the block.
      // A want is sent once; bitswap does not repeat it, and a peer that sent us this block
      // recently ignores it for a while. So ask again in slices of WANT_RETRY_MS until the
      // caller's deadline: each slice is a fresh want. (The slice timer is a normal, ref'd
      // timer: a pending fetch keeps the process alive; AbortSignal.timeout would not.)
      while (bytes === null) {
        const ac = new AbortController();
        const timer = setTimeout(() => ac.abort(), WANT_RETRY_MS);
        const slice = AbortSignal.any([signal, ac.signal]);
        try {
          // Raced against the slice ourselves: a get stuck in a routing query must not outlive it.
          bytes = await raceAbort(concat(helia.blockstore.get(cid, { signal: slice })), slice, `fetch ${cid}`);
        } catch (err) {
          if (signal.aborted) throw new MissingBlockError(cid.toString(), 'no peer provided it before the deadline');
          if (!slice.aborted) throw new MissingBlockError(cid.toString(), (err as Error).message);
        } finally {
          clearTimeout(timer);
        }
      }
      await verifyBlock(cid, bytes);
      stats.fetched++;
      return bytes;
    },
    async putBlock(cid, bytes, o) {
      await verifyBlock(cid, bytes);
      await helia.blockstore.put(cid, bytes, { signal: signalOf(o) });
    },
    async has(cid) {
      return await blockstore.has(cid);
    },
    async provide(cid, o) {
      if (!libp2p) return;
      await helia.routing.provide(cid, { signal: signalOf(o) });
    },
    async pin(cid, o) {
      const signal = signalOf(o);
      if (await isRoot(cid)) return;
      try {
        for await (const _ of helia.pins.add(cid, { signal, ...(o?.depth !== undefined ? { depth: o.depth } : {}) })) {
          /* walks and fetches the DAG */
        }
      } catch (err) {
        if (signal.aborted)
          throw new MissingBlockError(cid.toString(), 'could not fetch every block to pin before the deadline');
        throw err;
      }
    },
    async unpin(cid, o) {
      if (!(await isRoot(cid))) return;
      for await (const _ of helia.pins.rm(cid, { signal: signalOf(o) })) {
        /* drain */
      }
    },
    async cat(cid, o) {
      const signal = signalOf(o);
      const parts: Uint8Array[] = [];
      let n = 0;
      try {
        for await (const chunk of fs.cat(cid, { signal })) {
          n += chunk.length;
          if (n > o.maxBytes) throw new TooBigError(cid.toString(), o.maxBytes);
          parts.push(chunk);
        }
      } catch (err) {
        if (err instanceof TooBigError) throw err;
        throw new MissingBlockError(
          cid.toString(),
          signal.aborted ? 'not fetched before the deadline' : (err as Error).message,
        );
      }
      return concat(parts);
    },
    async isPinned(cid, o) {
      return await helia.pins.isPinned(cid, { signal: signalOf(o) });
    },
    async gc(o) {
      await helia.gc({ signal: signalOf(o) });
    },
    async stop() {
      await helia.stop();
      await blockstore.close();
      await datastore.close();
    },
  };
}

/** Blockstore.get may return bytes or a stream of chunks depending on the implementation. */
async function concat(
  x: Uint8Array | AsyncIterable<Uint8Array> | Iterable<Uint8Array> | Promise<Uint8Array>,
): Promise<Uint8Array> {
  const v = await x;
  if (v instanceof Uint8Array) return v;
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const p of v as AsyncIterable<Uint8Array>) {
    parts.push(p);
    n += p.length;
  }
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
