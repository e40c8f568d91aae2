/**
 * No single host (issue 4): peer A adds a dataset to its IPFS store and founds a run whose
 * manifest names the dataset, tokenizer and genesis weights by CID; B, C and D join and fetch
 * what they must hold (R = 3 deterministic replicas) from A. A is then killed with SIGKILL and
 * its data directory deleted. A fresh peer E joins from B–D only: it loads the latest state by
 * CID, fetches every shard it is assigned or must hold, and training goes on with it, all
 * peers agreeing on the weights hash.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultCacheDir } from '../src/cli/train.js';
import { decodeManifest } from '../src/swarm/manifest.js';
import {
  TESSERA_BIN,
  dataDirFor,
  preparePeer,
  spawnPeer,
  stopAll,
  type PeerProc,
  agreedRounds,
  waitFor as waitForPeers,
} from './support/swarm.js';

const root = mkdtempSync(join(tmpdir(), 'tessera-store-swarm-'));
const peers: PeerProc[] = [];
after(async () => {
  await stopAll(peers, 2000);
  rmSync(root, { recursive: true, force: true });
});

const waitFor = (what: string, cond: () => boolean, ms: number) =>
  waitForPeers(
    peers,
    what,
    cond,
    ms,
    (r) => `${r.event[0]}${r.round}:${r.weightsHash.slice(0, 6)}/${r.roster}/${r.storage?.held}of${r.storage?.needed}`,
    () => {
      if (process.env.STORE_TEST_DEBUG)
        for (const p of peers) writeFileSync(`/tmp/sst-${p.index}.log`, p.stderr.join(''));
    },
  );

function tessera(args: string[]): unknown {
  return JSON.parse(
    execFileSync(process.execPath, [TESSERA_BIN, ...args, '--json'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
}

/**
 * p reported holding everything it must as a member of a roster of `n`: with R = 3 of 4, that
 * is about 3/4 of the training shards plus what every member holds (so more than half).
 */
const replicated = (p: PeerProc, n: number, numShards: number) =>
  p.reports.some(
    (r) =>
      r.event === 'round' &&
      r.roster === n &&
      r.storage !== undefined &&
      r.storage.needed > numShards / 2 &&
      r.storage.held === r.storage.needed,
  );

test(
  'no single host: A adds the data and founds the run, B–D replicate, A is killed and wiped, fresh E trains from the others',
  { timeout: 180_000 },
  async () => {
    const t0 = Date.now();
    const cacheDir = defaultCacheDir();
    const specs = await Promise.all([0, 1, 2, 3, 4].map((i) => preparePeer(i, dataDirFor(root, i))));
    const [a, b, c, d, e] = specs;
    const added = tessera([
      'data',
      'add',
      'brown',
      '--vocab',
      '512',
      '--shard-tokens',
      '65536',
      '--data-dir',
      a.dataDir,
      '--cache-dir',
      cacheDir,
    ]) as { cid: string; shards: number };
    const run = join(root, 'run.json');
    tessera([
      'run',
      'create',
      '--out',
      run,
      '--dataset',
      added.cid,
      '--data-dir',
      a.dataDir,
      '--ctx',
      '32',
      '--dim',
      '32',
      '--layers',
      '1',
      '--heads',
      '2',
      '--batch',
      '2',
      '--inner',
      '4',
      '--train-ms',
      '800',
      '--submit-ms',
      '1500',
      '--commit-ms',
      '1000',
      '--replicas',
      '3',
      '--checkpoint-every',
      '2',
      '--keep-checkpoints',
      '2',
    ]);
    const m = decodeManifest(readFileSync(run, 'utf8')).manifest;
    assert.equal(m.dataset.cid, added.cid);
    assert.ok(m.genesisCid && m.tokenizerCid, 'the manifest names genesis and tokenizer by CID');
    const numShards = m.dataset.numShards;
    assert.ok(numShards >= 20, `enough shards to spread (${numShards})`);

    // A founds the run alone; B–D join through A.
    const pa = spawnPeer(a, { run, bootstrap: [], cacheDir });
    peers.push(pa);
    await waitFor('A to train a round', () => pa.reports.some((r) => r.event === 'round'), 40_000);
    for (const s of [b, c, d])
      peers.push(
        spawnPeer(s, {
          run,
          bootstrap: [a.addr],
          cacheDir,
          ...(process.env.STORE_TEST_DEBUG ? { env: { TESSERA_NODE_DEBUG: '1' } } : {}),
        }),
      );
    const [pb, pc, pd] = peers.slice(1);
    await waitFor(
      'B–D to join and hold their replicas',
      () => [pa, pb, pc, pd].every((p) => replicated(p, 4, numShards)),
      60_000,
    );
    const before = agreedRounds([pa, pb, pc, pd], 0);
    assert.ok(before.length >= 1, 'the four agree on some round');

    // Kill -9 A and wipe its data directory: its blocks, keys and snapshots are gone.
    pa.child.kill('SIGKILL');
    await new Promise((r) => pa.child.once('exit', r));
    rmSync(a.dataDir, { recursive: true, force: true });
    const killedAt = Math.max(...[pb, pc, pd].map((p) => p.reports.at(-1)?.round ?? 0));

    // E knows only B–D.
    const pe = spawnPeer(e, { run, bootstrap: [b.addr, c.addr, d.addr], cacheDir });
    peers.push(pe);
    const tE = Date.now();
    await waitFor('E to load the latest state', () => pe.reports.some((r) => r.event === 'synced'), 45_000);
    const eSyncMs = Date.now() - tE;
    const synced = pe.reports.find((r) => r.event === 'synced')!;
    assert.equal(synced.via, 'ipfs', 'E loaded the state by CID from the other peers');
    assert.ok(synced.round > killedAt - 1, `E synced to a current round (${synced.round}; A killed at ${killedAt})`);
    const group = [pb, pc, pd, pe];
    await waitFor(
      "a round with E's update applied, agreed by B–E",
      () =>
        agreedRounds(group, synced.round + 1).some((r) =>
          pe.reports.find((x) => x.event === 'round' && x.round === r)!.contributors.some((u) => u.peer === e.peerId),
        ),
      60_000,
    );
    await waitFor('E to hold its replicas under the new roster', () => replicated(pe, 4, numShards), 40_000);
    const es = pe.reports.filter((r) => r.event === 'round').at(-1)!.storage!;
    assert.ok(es.shardsFetched >= 1, 'E fetched the shards it trained on');
    assert.ok(
      pe.reports.filter((r) => r.event === 'round').some((r) => r.roster === 4 && !Number.isNaN(r.valLoss)),
      'E evaluates on the validation shards',
    );
    const summary = {
      killedAt,
      eSyncedAt: synced.round,
      eSyncedAfterMs: eSyncMs,
      shards: numShards,
      before,
      afterKill: agreedRounds([pb, pc, pd], killedAt + 1),
      withE: agreedRounds(group, synced.round),
      eStorage: es,
      seconds: (Date.now() - t0) / 1000,
    };
    process.stderr.write(`store-swarm: ${JSON.stringify(summary)}\n`);
  },
);
