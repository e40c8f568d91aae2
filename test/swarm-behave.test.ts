/**
 * Verification drill with real node processes (issue 6): one of three peers submits its update
 * ×100 (`tessera node --behave scaler`). With plain averaging the shared model is wrecked; with
 * the manifest's default 'clip' aggregation (every update clipped to the median norm before
 * the token-weighted mean, identically on every peer) training goes on, and all peers still
 * agree on every weights hash.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildManifest } from '../src/swarm/manifest-builder.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { dataDirFor, preparePeer, spawnPeer, stopAll, type PeerProc } from './support/swarm.js';
import type { RoundReport } from '../src/peer/node.js';

const root = mkdtempSync(join(tmpdir(), 'tessera-behave-'));
const all: PeerProc[] = [];
after(async () => {
  await stopAll(all, 2000);
  rmSync(root, { recursive: true, force: true });
});

type Scores = NonNullable<RoundReport['scores']>;
async function runWith(
  aggregate: 'mean' | 'clip',
  rounds: number,
): Promise<{ val: number[]; agreed: boolean; scores: Scores[]; ids: string[]; gainLog: string[] }> {
  const dir = join(root, aggregate);
  const { decoded } = buildManifest({
    vocab: 512,
    ctx: 32,
    dim: 32,
    layers: 1,
    heads: 2,
    batch: 2,
    inner: 8,
    lr: 3e-3,
    codec: 'fp32',
    shards: 6,
    seed: 5,
    trainMs: 600,
    submitMs: 1200,
    commitMs: 1000,
    quorum: 1,
    minPeers: 1,
    maxMissed: 2,
    cacheDir: defaultCacheDir(),
    aggregate,
  });
  const run = join(dir, 'run.json');
  const specs = await Promise.all([0, 1, 2].map((i) => preparePeer(i, dataDirFor(dir, i))));
  writeFileSync(run, JSON.stringify(decoded.manifest));
  const peers = specs.map((s) =>
    spawnPeer(s, {
      run,
      bootstrap: specs.map((x) => x.addr),
      genesisPeers: specs.map((x) => x.peerId),
      cacheDir: defaultCacheDir(),
      ...(s.index === 2 ? { behave: 'scaler' } : {}),
      env: { TESSERA_LOG: 'debug' },
      ...(s.index === 0 ? { validator: true } : {}),
    }),
  );
  all.push(...peers);
  const t0 = Date.now();
  const done = () =>
    peers.every((p) => p.reports.filter((r) => r.event === 'round' && r.included === 3).length >= rounds);
  while (!done()) {
    if (Date.now() - t0 > 60_000)
      throw new Error(
        `${aggregate}: timed out; ${peers.map((p) => p.reports.map((r) => `${r.round}/${r.included}`).join(' ')).join(' | ')}\n${peers[2].stderr.join('').slice(-500)}`,
      );
    await new Promise((r) => setTimeout(r, 100));
  }
  await stopAll(peers, 2000);
  const full = peers[0].reports.filter((r) => r.event === 'round' && r.included === 3).slice(0, rounds);
  const agreed = full.every((r) =>
    peers.every(
      (p) => p.reports.find((x) => x.event === 'round' && x.round === r.round)?.weightsHash === r.weightsHash,
    ),
  );
  const scores = peers[0].reports.flatMap((r) => (r.scores ? [r.scores] : []));
  // The validator's log lines per scored update (with the measured gains; debug level, so the
  // peers run with TESSERA_LOG=debug), for the failure message.
  const gainLog = peers[0].stderr
    .join('')
    .split('\n')
    .filter((l) => l.includes('validator flagged') || l.includes('validator scored'));
  return { val: full.map((r) => r.valLoss), agreed, scores, ids: specs.map((x) => x.peerId), gainLog };
}

test(
  'a ×100 scaler among 3 real peers wrecks plain averaging; median-norm clipping keeps training',
  { timeout: 180_000 },
  async () => {
    const mean = await runWith('mean', 4);
    const clip = await runWith('clip', 4);
    process.stderr.write(
      `swarm-behave: mean ${mean.val.map((v) => v.toFixed(2)).join(' ')} | clip ${clip.val.map((v) => v.toFixed(2)).join(' ')}\n`,
    );
    assert.ok(mean.agreed && clip.agreed, 'every peer has the same weights hash each round, attacker included');
    assert.ok(Math.max(...mean.val) > 10, `plain averaging is wrecked by the scaler (val ${mean.val.join(', ')})`);
    assert.ok(
      clip.val.every((v) => v < 6.3),
      `clipping keeps the loss below the initial ln(512) ≈ 6.24 (val ${clip.val.join(', ')})`,
    );
    assert.ok(clip.val.at(-1)! < clip.val[0], 'and it keeps falling');
    // Peer 0 also validates: every report it published flags the scaler (norm over 10× the lower median) and no honest peer.
    assert.ok(clip.scores.length >= 2, `the validator scored rounds (${clip.scores.length})`);
    const gains = `validator's measured gains:\n${clip.gainLog.join('\n')}`;
    for (const s of clip.scores) {
      const bad = s.entries.find((x) => x.peer === clip.ids[2]);
      assert.ok(
        bad?.flagged && bad.reason === 'norm' && bad.score === 0,
        `round ${s.round}: the scaler is flagged (${JSON.stringify(bad)})`,
      );
      for (const x of s.entries.filter((y) => y.peer !== clip.ids[2]))
        assert.ok(!x.flagged, `round ${s.round}: honest ${x.peer.slice(-6)} not flagged (${x.reason}); ${gains}`);
    }
    process.stderr.write(
      `swarm-behave: validator ${JSON.stringify(clip.scores.at(-1)!.entries.map((x) => ({ p: x.peer.slice(-4), s: +x.score.toFixed(4), ema: +x.ema.toFixed(4), f: x.flagged, r: x.reason })))}\n`,
    );
  },
);
