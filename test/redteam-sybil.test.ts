/**
 * Sybil-resistant membership (issue 15; docs/ROUNDS.md "Membership"), proved in the reducer's
 * randomized simulation (delays, 2% loss, 2% replays): 100 free identities with no verified
 * work, using every message the protocol has, hold no vote and no leader slot after 50 rounds;
 * honest peers keep deciding and agree on every hash; an honest newcomer gains a vote. The
 * same attack against headcount membership (probation 0, the old rule) is measured alongside.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { params } from './support/round-sim.js';
import { runSybil, type SybilRunResult } from './support/sybil-sim.js';

const HONEST = ['h0', 'h1', 'h2', 'h3', 'h4'];

function summary(r: SybilRunResult) {
  const last = r.samples.at(-1)!;
  const maxVoteShare = Math.max(...r.samples.map((s) => s.sybilVoters / s.voters));
  const maxLeaderShare = Math.max(...r.samples.map((s) => s.sybilLeaderSlots / s.leaderSlots));
  return {
    rounds: r.rounds,
    maxVoteShare,
    maxLeaderShare,
    sybilLedRounds: r.samples.filter((s) => s.decidedBySybil).length,
    maxSybilMembers: Math.max(...r.samples.map((s) => s.sybilMembers)),
    sybilUpdatesApplied: r.samples.reduce((a, s) => a + s.sybilIncluded, 0),
    finalVoters: last.voters,
    newcomerMemberAt: r.newcomerMemberAt,
    newcomerVoterAt: r.newcomerVoterAt,
    attackerMessages: r.attackerMessages,
  };
}

test(
  '100 free identities with no verified work hold no vote and no leader slot after 50 rounds',
  { timeout: 300_000 },
  () => {
    const p = params({ minPeers: 2, quorum: 1, maxMissedRounds: 2, probation: 2, joinFraction: 0.25 });
    const r = runSybil({ params: p, honest: HONEST, count: 100, rounds: 50, newcomerAt: 5, gate: true });
    const s = summary(r);
    process.stderr.write(`redteam-sybil: defended ${JSON.stringify(s)}\n`);
    assert.deepEqual(r.violations, [], 'agreement and identical honest hashes');
    assert.ok(r.rounds >= 50, `honest peers finished 50 rounds (${r.rounds})`);
    assert.equal(s.maxVoteShare, 0, 'no Sybil identity ever votes');
    assert.equal(s.maxLeaderShare, 0, 'no Sybil identity ever holds a leader slot');
    assert.equal(s.sybilLedRounds, 0);
    assert.ok(s.maxSybilMembers > 0, 'identities were admitted (on probation), so the test exercises probation');
    assert.ok(
      s.maxSybilMembers <= HONEST.length + 1,
      `probation seats are capped by the voters (${s.maxSybilMembers})`,
    );
    assert.equal(s.sybilUpdatesApplied, 0, 'with the probation gate no garbage update is ever applied');
    assert.ok(s.newcomerVoterAt !== null, 'the honest newcomer gained a vote despite the flood');
  },
);

test('an honest newcomer votes 2 rounds after admission (3 with the validator gate)', () => {
  const p = params({ minPeers: 2, quorum: 1, maxMissedRounds: 2, probation: 2, joinFraction: 0.25 });
  for (const gate of [false, true]) {
    const r = runSybil({ params: p, honest: HONEST, count: 0, rounds: 12, newcomerAt: 2, gate });
    const s = summary(r);
    process.stderr.write(`redteam-sybil: clean gate=${gate} ${JSON.stringify(s)}\n`);
    assert.deepEqual(r.violations, []);
    assert.ok(s.newcomerMemberAt !== null && s.newcomerVoterAt !== null);
    // Member at m: its updates land in rounds m and m+1 (credit 2), so it votes from m+2; the
    // gate holds its first update back for scoring, one round more.
    assert.equal(s.newcomerVoterAt - s.newcomerMemberAt, gate ? 3 : 2);
  }
});

test('without the gate, validators that flag after the fact still keep every identity below a vote', () => {
  const p = params({ minPeers: 2, quorum: 1, maxMissedRounds: 2, probation: 2, joinFraction: 0.25 });
  const r = runSybil({ params: p, honest: HONEST, count: 100, rounds: 30, newcomerAt: null });
  const s = summary(r);
  process.stderr.write(`redteam-sybil: ungated ${JSON.stringify(s)}\n`);
  assert.deepEqual(r.violations, []);
  assert.equal(s.maxVoteShare, 0);
  assert.equal(s.maxLeaderShare, 0);
  // Each identity lands at most one garbage update (then it is flagged): the robust aggregate clips it.
  assert.ok(s.sybilUpdatesApplied <= r.samples.length, `${s.sybilUpdatesApplied} garbage updates applied`);
});

test('before: with headcount membership (probation 0) the same identities take votes and leader slots', () => {
  const p = params({ minPeers: 2, quorum: 1, maxMissedRounds: 2, probation: 0, joinFraction: 1 });
  const r = runSybil({ params: p, honest: HONEST, count: 100, rounds: 12, newcomerAt: null, limit: 120_000 });
  const s = summary(r);
  process.stderr.write(`redteam-sybil: headcount ${JSON.stringify(s)}\n`);
  assert.ok(s.maxVoteShare > 0.5, `the identities hold most votes (${s.maxVoteShare.toFixed(2)})`);
  assert.ok(s.maxLeaderShare > 0.5, `and most leader slots (${s.maxLeaderShare.toFixed(2)})`);
});
