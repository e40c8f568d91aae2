/**
 * The networked IPFS store (Helia on the swarm's libp2p host, bitswap): integrity and
 * liveness against real peers on loopback.
 *  - a peer serving a corrupted block cannot satisfy a fetch: the bytes fail their hash and
 *    the block comes from another peer; with no honest peer the fetch fails after its deadline;
 *  - a block corrupted on our own disk is found by its hash, deleted and refetched;
 *  - a node whose run manifest names a dataset nobody has exits with a clear error after its
 *    fetch timeout instead of hanging.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CID } from 'multiformats/cid';
import * as raw from 'multiformats/codecs/raw';
import * as dagJson from '@ipld/dag-json';
import { sha256 } from 'multiformats/hashes/sha2';
import { FsBlockstore } from 'blockstore-fs';
import { createHost, type Host } from '../src/net/index.js';
import { MissingBlockError, openStore, type Store } from '../src/store/index.js';
import { readManifest } from '../src/store/dataset.js';
import { buildManifest } from '../src/swarm/manifest-builder.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { TESSERA_BIN } from './support/swarm.js';
import { createManifest } from '../src/swarm/manifest.js';

const tmp = mkdtempSync(join(tmpdir(), 'tessera-store-net-'));
const open: { host: Host; store: Store }[] = [];
after(async () => {
  for (const p of open) {
    await p.store.stop().catch(() => undefined);
    await p.host.stop().catch(() => undefined);
  }
  rmSync(tmp, { recursive: true, force: true });
});

async function peer(name: string): Promise<{ host: Host; store: Store; dir: string }> {
  const dir = join(tmp, name);
  const host = await createHost({ dataDir: dir });
  const store = await openStore(dir, { libp2p: host.node });
  open.push({ host, store });
  return { host, store, dir };
}

/** Overwrite a stored block's bytes underneath the store, as a bad disk or a liar would. */
async function corruptOnDisk(dir: string, cid: CID): Promise<void> {
  const bs = new FsBlockstore(join(dir, 'ipfs', 'blocks'));
  await bs.open();
  await bs.put(cid, new Uint8Array(4096).fill(0xee));
  await bs.close();
}

test(
  'a corrupted block served by one peer is refused by hash and fetched from another; a missing one times out',
  { timeout: 60_000 },
  async () => {
    const [liar, honest, me] = [await peer('liar'), await peer('honest'), await peer('me')];
    const bytes = new Uint8Array(300_000).map((_, i) => (i * 31 + 7) & 255);
    const cid = CID.createV1(raw.code, await sha256.digest(bytes));
    await liar.store.putBlock(cid, bytes);
    await honest.store.putBlock(cid, bytes);
    await corruptOnDisk(liar.dir, cid); // the liar now serves wrong bytes under this CID

    // Only the liar connected: its bytes never satisfy the want, so the fetch fails at its deadline.
    await me.host.dial(liar.host.multiaddrs()[0]);
    let t0 = Date.now();
    await assert.rejects(
      me.store.getBlock(cid, { signal: AbortSignal.timeout(2000) }),
      (e: unknown) => e instanceof MissingBlockError && /deadline/.test(e.message),
    );
    const waited = Date.now() - t0;
    assert.ok(waited >= 1900 && waited < 6000, `failed at the deadline, not before and not hanging (${waited} ms)`);
    assert.equal(await me.store.has(cid), false, 'nothing was stored from the liar');

    // With an honest peer too, the same fetch succeeds with the right bytes.
    await me.host.dial(honest.host.multiaddrs()[0]);
    t0 = Date.now();
    const got = await me.store.getBlock(cid, { signal: AbortSignal.timeout(10_000) });
    assert.deepEqual(got, bytes);
    process.stderr.write(
      `store-net: liar-only fetch failed after ${waited} ms; with an honest peer fetched in ${Date.now() - t0} ms\n`,
    );

    // Our own copy corrupted on disk: found by its hash on read, deleted, refetched from the honest peer.
    await corruptOnDisk(me.dir, cid);
    const again = await me.store.getBlock(cid, { signal: AbortSignal.timeout(10_000) });
    assert.deepEqual(again, bytes);
    assert.equal(me.store.stats.corruptLocal, 1);

    // A manifest that links to a CID nobody has: a typed error at the deadline.
    const ghost = CID.createV1(dagJson.code, await sha256.digest(new TextEncoder().encode('no such manifest')));
    t0 = Date.now();
    await assert.rejects(readManifest(me.store, ghost, { signal: AbortSignal.timeout(1500) }), MissingBlockError);
    assert.ok(Date.now() - t0 < 5000);
  },
);

test(
  'tessera node with a run whose dataset CID nobody holds exits with a clear error after --fetch-timeout',
  { timeout: 60_000 },
  () => {
    const { decoded } = buildManifest({
      vocab: 512,
      ctx: 32,
      dim: 32,
      layers: 1,
      heads: 2,
      batch: 2,
      inner: 2,
      lr: 3e-3,
      codec: 'sparse',
      shards: 4,
      seed: 3,
      trainMs: 500,
      submitMs: 800,
      commitMs: 500,
      quorum: 1,
      minPeers: 1,
      maxMissed: 2,
      cacheDir: defaultCacheDir(),
    });
    const m = structuredClone(decoded.manifest) as Record<string, unknown> & { dataset: Record<string, unknown> };
    delete m.dataset.trainTokensSha256;
    m.dataset.cid = 'baguqeeraz2vxbnebmqlyf3ce3xz2n7pq7bqfurmg4tqjwzn6i3nzhzp5kbza';
    const run = join(tmp, 'ghost-run.json');
    writeFileSync(run, JSON.stringify(createManifest(m as never).manifest));
    const t0 = Date.now();
    const r = spawnSync(
      process.execPath,
      [TESSERA_BIN, 'node', '--run', run, '--data-dir', join(tmp, 'ghost-node'), '--fetch-timeout', '2000'],
      { encoding: 'utf8', timeout: 45_000 },
    );
    const ms = Date.now() - t0;
    assert.notEqual(r.status, 0, 'the node exits with an error');
    assert.equal(r.signal, null, 'it exits on its own, not killed by the test timeout');
    assert.match(r.stderr, /block baguqeeraz2vxbnebmqlyf3ce3xz2n7pq7bqfurmg4tqjwzn6i3nzhzp5kbza is not available/);
    process.stderr.write(
      `store-net: node with a missing dataset exited after ${ms} ms: ${r.stderr.trim().split('\n').at(-1)}\n`,
    );
  },
);
