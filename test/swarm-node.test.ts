/**
 * Real `tessera node` processes on 127.0.0.1: four peers train a tiny GPT together and agree
 * on the weights hash round after round; two are killed with SIGKILL mid-round and the other
 * two go on (half of the roster, holding the tie-breaker: a quorum, see docs/ROUNDS.md); then
 * a fresh peer joins mid-run, resyncs from a snapshot (weights + outer momentum, verified by
 * hash), contributes, and ends up with the same hashes.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildManifest } from '../src/swarm/manifest-builder.js';
import { defaultCacheDir } from '../src/cli/train.js';
import {
  dataDirFor,
  preparePeer,
  spawnPeer,
  stopAll,
  type PeerProc,
  agreedRounds,
  waitFor as waitForPeers,
} from './support/swarm.js';

const root = mkdtempSync(join(tmpdir(), 'tessera-swarm-'));
const peers: PeerProc[] = [];
after(async () => {
  await stopAll(peers, 2000);
  rmSync(root, { recursive: true, force: true });
});

test(
  '4 node processes agree on weights; survive kill -9 of 2; a fresh peer syncs and joins',
  { timeout: 120_000 },
  async () => {
    const t0 = Date.now();
    const cacheDir = defaultCacheDir();
    const { decoded } = buildManifest({
      vocab: 512,
      ctx: 32,
      dim: 32,
      layers: 1,
      heads: 2,
      batch: 2,
      inner: 4,
      lr: 3e-3,
      codec: 'sparse',
      shards: 8,
      seed: 7,
      trainMs: 800,
      submitMs: 1500,
      commitMs: 1000,
      quorum: 1,
      minPeers: 1,
      maxMissed: 2,
      cacheDir,
    });
    const run = join(root, 'run.json');
    writeFileSync(run, JSON.stringify(decoded.manifest));
    const specs = await Promise.all([0, 1, 2, 3].map((i) => preparePeer(i, dataDirFor(root, i))));
    const addrs = specs.map((s) => s.addr);
    for (const s of specs)
      peers.push(spawnPeer(s, { run, bootstrap: addrs, genesisPeers: specs.map((x) => x.peerId), cacheDir }));

    // Happy path: at least 2 rounds in which all 4 report identical weights hashes.
    await waitForPeers(peers, '2 agreed rounds among 4 peers', () => agreedRounds(peers).length >= 2, 40_000);
    const first = agreedRounds(peers);
    for (const p of peers)
      assert.ok(
        p.reports.some((r) => r.event === 'round' && r.included >= 2),
        `peer ${p.index} applied rounds with several updates`,
      );
    const sample = peers[0].reports.find((r) => r.event === 'round')!;
    assert.ok(sample.bytesSent > 0 && sample.bytesReceived > 0, 'bytes are counted per round');

    // Kill -9 two peers mid-round, sparing the tie-breaker (lowest id): the two survivors are
    // half of the roster with the tie-breaker, a quorum, and keep deciding rounds.
    const killedAt = Math.max(...peers.map((p) => p.reports.at(-1)?.round ?? 0));
    await new Promise((r) => setTimeout(r, 300)); // into the next round's training
    const tie = [...specs.map((s) => s.peerId)].sort()[0];
    const victims = peers.filter((p) => p.peerId !== tie).slice(0, 2);
    for (const v of victims) v.child.kill('SIGKILL');
    const survivors = peers.filter((p) => !victims.includes(p));
    await waitForPeers(
      peers,
      '2 agreed rounds among the 2 survivors after the kill',
      () => agreedRounds(survivors, killedAt + 1).length >= 2,
      45_000,
    );
    assert.ok(
      survivors.every((p) => p.alive),
      'survivors are still running',
    );

    // A fresh peer (new identity, no genesis roster) joins mid-run: it resyncs, then agrees.
    const fresh = await preparePeer(4, dataDirFor(root, 4));
    const joinedAt = Math.max(...survivors.map((p) => p.reports.at(-1)?.round ?? 0));
    const np = spawnPeer(fresh, { run, bootstrap: survivors.map((p) => p.addr), cacheDir });
    peers.push(np);
    await waitForPeers(peers, 'the fresh peer to sync', () => np.reports.some((r) => r.event === 'synced'), 30_000);
    const synced = np.reports.find((r) => r.event === 'synced')!;
    assert.ok(synced.round > joinedAt - 1, `synced to a current round (${synced.round}, joined at ${joinedAt})`);
    await waitForPeers(
      peers,
      'a round the fresh peer agrees on with the survivors',
      () => agreedRounds([...survivors, np], synced.round).length >= 1,
      30_000,
    );
    // ...and contributes: a round whose applied set includes its update (3 updates: 2 survivors + it).
    await waitForPeers(
      peers,
      "a round with the fresh peer's update applied",
      () =>
        agreedRounds([...survivors, np], synced.round + 1).some(
          (r) => np.reports.find((x) => x.event === 'round' && x.round === r)!.included >= 3,
        ),
      30_000,
    );
    const summary = {
      first,
      afterKill: agreedRounds(survivors, killedAt + 1),
      withFresh: agreedRounds([...survivors, np], synced.round),
      seconds: (Date.now() - t0) / 1000,
    };
    process.stderr.write(`swarm-node: ${JSON.stringify(summary)}\n`);
    if (process.env.SWARM_TEST_VERBOSE)
      for (const p of peers)
        process.stderr.write(
          `peer ${p.index}: ${p.reports.map((r) => `${r.event[0]}${r.round}:${r.weightsHash.slice(0, 6)}/${r.included}/${r.roster}`).join(' ')}\n`,
        );
  },
);
