/**
 * The Sybil flood across real processes (issue 15; docs/ROUNDS.md "Membership"): three honest
 * `tessera node` processes (peer 0 validates, all trust it) and `tessera attack sybil` with 12
 * fresh identities, each its own libp2p host, which ask to join every round, claim updates they
 * never trained, accept every commit and promise every next attempt. Identities are admitted
 * on probation (the roster grows, at most one a round), but every round is still decided by the
 * three honest voters and led by one of them, no identity's update is applied, and all three
 * agree on every weights hash.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildManifest } from '../src/swarm/manifest-builder.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { TESSERA_BIN } from '../src/cli/launch.js';
import { agreedRounds, dataDirFor, preparePeer, spawnPeer, stopAll, waitFor, type PeerProc } from './support/swarm.js';
import type { RoundReport } from '../src/peer/node.js';

const root = mkdtempSync(join(tmpdir(), 'tessera-sybil-net-'));
const peers: PeerProc[] = [];
after(async () => {
  await stopAll(peers, 2000);
  rmSync(root, { recursive: true, force: true });
});

test(
  'tessera attack sybil: 12 identities are admitted on probation but never vote, lead or land an update',
  { timeout: 240_000 },
  async () => {
    const { decoded } = buildManifest({
      vocab: 512,
      ctx: 32,
      dim: 32,
      layers: 1,
      heads: 2,
      batch: 2,
      inner: 4,
      lr: 3e-3,
      codec: 'fp32',
      shards: 4,
      seed: 13,
      trainMs: 400,
      submitMs: 1000,
      commitMs: 800,
      quorum: 1,
      minPeers: 1,
      maxMissed: 2,
      cacheDir: defaultCacheDir(),
      aggregate: 'clip',
    });
    const run = join(root, 'run.json');
    writeFileSync(run, JSON.stringify(decoded.manifest));
    const specs = await Promise.all([0, 1, 2].map((i) => preparePeer(i, dataDirFor(root, i))));
    const honest = specs.map((s) => s.peerId);
    for (const s of specs)
      peers.push(
        spawnPeer(s, {
          run,
          bootstrap: specs.map((x) => x.addr),
          genesisPeers: honest,
          cacheDir: defaultCacheDir(),
          trustValidators: [honest[0]],
          ...(s.index === 0 ? { validator: true } : {}),
        }),
      );
    await waitFor(peers, 'two agreed rounds', () => agreedRounds(peers).length >= 2, 60_000);
    const start = Math.max(...agreedRounds(peers));
    const attack = new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      const p = spawn(
        process.execPath,
        [
          TESSERA_BIN,
          'attack',
          'sybil',
          '--run',
          run,
          '--bootstrap',
          specs[0].addr,
          specs[1].addr,
          '--data-dir',
          join(root, 'sybils'),
          '--identities',
          '12',
          '--messages',
          '100000',
          '--rate',
          '200',
          '--wait',
          '1500',
          '--seconds',
          '35',
          '--json',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let out = '',
        err = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.stderr.on('data', (d: Buffer) => (err += d.toString()));
      p.on('close', (code) => resolve({ code, out, err }));
    });
    const r = await attack;
    assert.equal(r.code, 0, `attack exited ${r.code}: ${r.err.slice(-800)}`);
    const res = JSON.parse(r.out.trim().split('\n').pop()!) as {
      identities: string[];
      sent: number;
      recipients: number;
      rounds: number[];
    };
    assert.equal(res.identities.length, 12);
    assert.ok(res.sent > 100 && res.recipients > 0, `the flood reached the run (${res.sent} sent)`);
    const sybils = new Set(res.identities);
    const during = (p: PeerProc) =>
      p.reports.filter((x): x is RoundReport => x.event === 'round' && x.round > start && x.voters !== undefined);
    await waitFor(peers, 'rounds decided during the flood', () => peers.every((p) => during(p).length >= 4), 60_000);
    const fmt = (x: RoundReport) => `${x.round}:r${x.roster}v${x.voters}`;
    for (const p of peers) {
      const rs = during(p);
      assert.ok(
        rs.every((x) => x.voters === 3),
        `only the 3 honest members vote (${rs.map(fmt).join(' ')})`,
      );
      assert.ok(
        rs.every((x) => x.leader !== undefined && honest.includes(x.leader)),
        'every decided round is led by an honest voter',
      );
      assert.ok(
        rs.every((x) => x.contributors.every((c) => !sybils.has(c.peer))),
        "no identity's update is applied",
      );
    }
    const maxRoster = Math.max(...peers.flatMap((p) => during(p).map((x) => x.roster)));
    assert.ok(maxRoster > 3, `identities were admitted on probation (roster up to ${maxRoster})`);
    assert.ok(maxRoster <= 3 + 4, `probation seats capped at max(4, voters) (${maxRoster})`);
    const agreed = agreedRounds(peers).filter((x) => x > start);
    assert.ok(agreed.length >= 4, `honest peers agree on every hash (${agreed.join(',')})`);
    process.stderr.write(
      `redteam-sybil-net: ${res.sent} messages from 12 identities over rounds ${res.rounds.join(',')}; honest rounds ${during(peers[1]).map(fmt).join(' ')}\n`,
    );
  },
);
