/**
 * Audit by re-execution between real node processes (issue 6): every trainer commits a Merkle
 * root over its state after each inner step (signed, with its update); the validator re-runs
 * each update's steps from the round's weights on the assigned data with deterministic
 * kernels. Peer 2 trains on other data than assigned (wrong-data): its trace diverges at step
 * 1, the validator bisects to it and publishes a fraud proof, which another peer checks with
 * one re-executed step. Peer 3 trains honestly but sends its update ×100 (scaler): its trace
 * is fine, its update is not the trace's end. Peer 1 is honest and passes.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildManifest } from '../src/swarm/manifest-builder.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { dataDirFor, preparePeer, spawnPeer, stopAll, type PeerProc, waitFor } from './support/swarm.js';
import type { AuditRecord, FraudRecord, RoundReport } from '../src/peer/node.js';

const root = mkdtempSync(join(tmpdir(), 'tessera-audit-swarm-'));
const peers: PeerProc[] = [];
after(async () => {
  await stopAll(peers, 2000);
  rmSync(root, { recursive: true, force: true });
});

test(
  'real peers: an honest trace passes, a wrong-data trainer is caught at step 1 with a fraud proof another peer verifies, a scaled update is not its trace',
  { timeout: 180_000 },
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
      shards: 8,
      seed: 11,
      trainMs: 700,
      submitMs: 1800,
      commitMs: 1000,
      quorum: 1,
      minPeers: 1,
      maxMissed: 3,
      cacheDir: defaultCacheDir(),
      overlap: 'none',
      audit: 1,
    });
    const run = join(root, 'run.json');
    writeFileSync(run, JSON.stringify(decoded.manifest));
    const specs = await Promise.all([0, 1, 2, 3].map((i) => preparePeer(i, dataDirFor(root, i))));
    const behave = ['honest', 'honest', 'wrong-data', 'scaler'];
    for (const s of specs) {
      peers.push(
        spawnPeer(s, {
          run,
          bootstrap: specs.map((x) => x.addr),
          genesisPeers: specs.map((x) => x.peerId),
          cacheDir: defaultCacheDir(),
          behave: behave[s.index],
          ...(s.index === 0 ? { validator: true } : {}),
        }),
      );
    }
    const id = specs.map((s) => s.peerId);
    const audits = (): AuditRecord[] => peers[0].reports.flatMap((r) => r.audits ?? []);
    const frauds = (p: PeerProc): FraudRecord[] => p.reports.flatMap((r) => r.frauds ?? []);
    const fmt = (r: RoundReport) =>
      `${r.round}/${r.included}${r.audits ? `a${r.audits.map((a) => (a.ok ? '+' : '-')).join('')}` : ''}${r.frauds ? `f${r.frauds.length}` : ''}`;
    // Three rounds in which the validator audited all three others, and peer 1 checked a proof.
    const fullRounds = () =>
      [...new Set(audits().map((a) => a.round))].filter((r) => audits().filter((a) => a.round === r).length === 3);
    await waitFor(
      peers,
      'three fully audited rounds and a checked fraud proof',
      () => fullRounds().length >= 3 && frauds(peers[1]).length >= 1,
      120_000,
      fmt,
    );

    for (const r of fullRounds()) {
      const of = (i: number) => audits().find((a) => a.round === r && a.trainer === id[i])!;
      assert.equal(of(1).ok, true, `round ${r}: the honest trainer passes (${of(1).reason})`);
      assert.equal(of(2).ok, false);
      assert.equal(of(2).reason, 'fraud at step 1', `round ${r}: wrong data diverges at the first step`);
      assert.equal(of(2).k, 1);
      assert.equal(of(3).ok, false);
      assert.equal(
        of(3).reason,
        'update is not the end of its trace',
        `round ${r}: the scaled update is not the committed trace's end`,
      );
    }
    const checked = frauds(peers[1]);
    assert.ok(
      checked.every((f) => f.trainer === id[2] && f.by === id[0] && f.k === 1),
      JSON.stringify(checked),
    );
    assert.ok(
      checked.every((f) => f.verified),
      `peer 1 verified every fraud proof (${JSON.stringify(checked.filter((f) => !f.verified))})`,
    );
    // Scores: a failed audit earns 0 and is flagged with its reason.
    const scoredFull = () =>
      peers[0].reports.flatMap((r) => r.scored ?? []).filter((x) => fullRounds().includes(x.round));
    // A round's scores may be reported after its audits: wait for some, so the loop below checks something.
    await waitFor(peers, 'the validator to score a fully audited round', () => scoredFull().length > 0, 30_000, fmt);
    const scored = scoredFull();
    assert.ok(scored.length > 0, 'the validator scored at least one fully audited round');
    for (const s of scored) {
      for (const i of [2, 3]) {
        const e = s.entries.find((x) => x.peer === id[i]);
        assert.ok(e, `round ${s.round}: peer ${i} has a score entry`);
        assert.ok(
          e.flagged && e.score === 0,
          `round ${s.round}: peer ${i} flagged with score 0 (${JSON.stringify(e)})`,
        );
      }
    }
    // Cost: re-executed steps and time per audit, against the trainers' compute per round.
    const ok = audits().filter((a) => a.ok);
    const perAudit = ok.reduce((t, a) => t + a.ms, 0) / ok.length;
    const trainerCompute = peers[1].reports.filter((r) => r.event === 'round' && r.innerSteps > 0);
    const trainMs =
      trainerCompute.reduce((t, r) => t + r.computeFraction * r.seconds * 1000, 0) / trainerCompute.length;
    process.stderr.write(
      `audit-swarm: ${audits().length} audits in rounds ${fullRounds().join(',')}; honest audit ${perAudit.toFixed(0)} ms for ${ok[0]?.steps} steps vs a trainer's ${trainMs.toFixed(0)} ms of compute per round; ${checked.length} fraud proofs verified by peer 1\n`,
    );
  },
);
