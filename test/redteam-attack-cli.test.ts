/**
 * `tessera attack` against a live run of real processes: every attack kind is sent, as an
 * outsider, through the command a user would run, and the two honest peers keep deciding rounds
 * with identical weights hashes throughout. (What each defence costs the attacker and the honest
 * peers is measured by the per-attack red-team tests; this one shows the user's tool reaches a
 * real run and that no attack stops it.)
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildManifest } from '../src/swarm/manifest-builder.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { ATTACK_NAMES } from '../src/redteam/attacks.js';
import { TESSERA_BIN } from '../src/cli/launch.js';
import { agreedRounds, dataDirFor, preparePeer, spawnPeer, stopAll, waitFor, type PeerProc } from './support/swarm.js';

const root = mkdtempSync(join(tmpdir(), 'tessera-attack-'));
const peers: PeerProc[] = [];
after(async () => {
  await stopAll(peers, 2000);
  rmSync(root, { recursive: true, force: true });
});

/** Runs `tessera attack …` to completion (asynchronously: the honest peers' output must keep flowing). */
function attack(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [TESSERA_BIN, 'attack', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '',
      err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('close', (code) => resolve({ code, out, err }));
  });
}

test(
  'tessera attack: every kind reaches a live run as an outsider, and the run keeps agreeing',
  { timeout: 180_000 },
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
      codec: 'sparse',
      shards: 4,
      seed: 11,
      trainMs: 400,
      submitMs: 900,
      commitMs: 800,
      quorum: 1,
      minPeers: 1,
      maxMissed: 2,
      cacheDir: defaultCacheDir(),
    });
    const run = join(root, 'run.json');
    writeFileSync(run, JSON.stringify(decoded.manifest));
    const specs = await Promise.all([0, 1].map((i) => preparePeer(i, dataDirFor(root, i))));
    for (const s of specs) {
      peers.push(
        spawnPeer(s, {
          run,
          bootstrap: specs.map((x) => x.addr),
          genesisPeers: specs.map((x) => x.peerId),
          cacheDir: defaultCacheDir(),
        }),
      );
    }
    await waitFor(peers, 'two agreed rounds', () => agreedRounds(peers).length >= 2, 60_000);
    const sent: Record<string, number> = {};
    // Four attackers at a time, each its own process and identity: run one by one, the eight
    // took three minutes of the suite; together they still each reach the run, and the run
    // must still decide rounds after every batch.
    for (let i = 0; i < ATTACK_NAMES.length; i += 4) {
      const batch = ATTACK_NAMES.slice(i, i + 4);
      const before = Math.max(...agreedRounds(peers));
      const results = await Promise.all(
        batch.map((kind) =>
          attack([
            kind,
            '--run',
            run,
            '--bootstrap',
            specs[0].addr,
            '--data-dir',
            join(root, `attacker-${kind}`),
            '--messages',
            '40',
            '--rate',
            '40',
            '--wait',
            '2500',
            '--json',
          ]),
        ),
      );
      batch.forEach((kind, j) => {
        const r = results[j];
        assert.equal(r.code, 0, `attack ${kind} exited ${r.code}: ${r.err.slice(-500)}`);
        const res = JSON.parse(r.out.trim().split('\n').pop()!) as { sent: number; recipients: number; round: number };
        assert.ok(res.sent > 0 && res.recipients > 0, `attack ${kind} reached the run (${r.out})`);
        assert.ok(res.round >= 1, `attack ${kind} learnt the run's round from its gossip (${res.round})`);
        sent[kind] = res.sent;
      });
      await waitFor(
        peers,
        `a round agreed after ${batch.join(', ')}`,
        () => Math.max(...agreedRounds(peers)) >= before + 2,
        60_000,
      );
    }
    console.log(`redteam-attack-cli: sent ${JSON.stringify(sent)}; ${agreedRounds(peers).length} agreed rounds`);
    // Every round both peers completed has one weights hash: nothing an attacker sent split them.
    const completed = new Set(peers.flatMap((p) => p.reports.filter((x) => x.event === 'round').map((x) => x.round)));
    const both = [...completed].filter((r) =>
      peers.every((p) => p.reports.some((x) => x.event === 'round' && x.round === r)),
    );
    assert.deepEqual(
      agreedRounds(peers).filter((r) => both.includes(r)),
      both,
      'identical hashes in every shared round',
    );
  },
);
