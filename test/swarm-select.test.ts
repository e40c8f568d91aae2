/**
 * Selection by score with real node processes (issue 6): peer 0 validates, every peer trusts it
 * (`--trust-validators`), peer 2 sends its update ×100. Once the validator flags the scaler,
 * leaders leave its updates out of the sets they propose: the decided sets hold only honest
 * updates, the scaler stays a member (it is heard), every hash still agrees, and the loss falls.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildManifest } from '../src/swarm/manifest-builder.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { dataDirFor, preparePeer, spawnPeer, stopAll, type PeerProc, agreedRounds, waitFor } from './support/swarm.js';
import type { RoundReport } from '../src/peer/node.js';

const root = mkdtempSync(join(tmpdir(), 'tessera-select-'));
const peers: PeerProc[] = [];
after(async () => {
  await stopAll(peers, 2000);
  rmSync(root, { recursive: true, force: true });
});

test(
  "validators' flags steer the leader: a flagged scaler is left out of every decided set, and stays a member",
  { timeout: 120_000 },
  async () => {
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
      aggregate: 'clip',
    });
    const run = join(root, 'run.json');
    writeFileSync(run, JSON.stringify(decoded.manifest));
    const specs = await Promise.all([0, 1, 2].map((i) => preparePeer(i, dataDirFor(root, i))));
    const id = specs.map((s) => s.peerId);
    for (const s of specs) {
      peers.push(
        spawnPeer(s, {
          run,
          bootstrap: specs.map((x) => x.addr),
          genesisPeers: id,
          cacheDir: defaultCacheDir(),
          trustValidators: [id[0]],
          ...(s.index === 2 ? { behave: 'scaler' } : {}),
          ...(s.index === 0 ? { validator: true } : {}),
        }),
      );
    }
    const fmt = (r: RoundReport) =>
      `${r.round}/${r.included}:${r.contributors.map((c) => id.indexOf(c.peer)).join('')}`;
    const without = (p: PeerProc) =>
      p.reports.filter((r) => r.event === 'round' && r.included > 0 && !r.contributors.some((c) => c.peer === id[2]));
    await waitFor(
      peers,
      'four rounds without the scaler',
      () => peers.every((p) => without(p).length >= 4),
      90_000,
      fmt,
    );
    // From the first round it was left out, it never came back (the validator re-scores it every round).
    const rs = peers[1].reports.filter((r) => r.event === 'round' && r.included > 0);
    const firstOut = rs.findIndex((r) => !r.contributors.some((c) => c.peer === id[2]));
    assert.ok(firstOut >= 0 && firstOut <= 4, `left out within a few rounds (${rs.map(fmt).join(' ')})`);
    const back = rs.slice(firstOut).some((r) => r.contributors.some((c) => c.peer === id[2]));
    if (back)
      for (const p of peers)
        process.stderr.write(
          `--- peer ${p.index}\n${p.stderr
            .join('')
            .split('\n')
            .filter((l) => /flag|exclu|score|propos|lead/i.test(l))
            .slice(-60)
            .join('\n')}\n`,
        );
    assert.ok(!back, `and stays out (${rs.map(fmt).join(' ')})`);
    assert.ok(
      rs.slice(firstOut).every((r) => r.roster === 3),
      'the scaler is still a member',
    );
    const agreed = agreedRounds(peers);
    assert.ok(agreed.length >= 4, `all three agree on every weights hash (${agreed.join(',')})`);
    const val = rs.slice(firstOut).map((r) => r.valLoss);
    assert.ok(
      val.every((v) => v < 6.0),
      `training goes on, below the initial ln(512) ≈ 6.24 (${val.map((v) => v.toFixed(2)).join(' ')})`,
    );
    process.stderr.write(
      `swarm-select: rounds ${rs.map(fmt).join(' ')}; val after exclusion ${val.map((v) => v.toFixed(2)).join(' ')}\n`,
    );
  },
);
