/**
 * Issue 15, Sybil-resistant membership: one attacker with `--sybils` free identities (no
 * verified work; every protocol message; test/support/sybil-sim.ts) against `--honest` genesis
 * peers, in the reducer's randomized simulation, for `--rounds` rounds. Rows: membership by
 * verified work (probation 2, joins ≤ 1/4 of the voters, validators' probation gate) and the old
 * headcount rule (probation 0), side by side in one run. Columns: the largest fraction of votes
 * and of leader slots the identities held, rounds a Sybil led, garbage updates applied, the
 * rounds an honest newcomer (arriving at round 5) waited for admission and then for a vote.
 * Prints a table, and JSON with --json.
 * Usage: node dist/bench/sybil.js [--honest 5,10,20] [--sybils 100] [--rounds 50] [--json]
 */
import { params } from '../test/support/round-sim.js';
import { runSybil } from '../test/support/sybil-sim.js';

const arg = (name: string, d: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : d;
};

interface Row {
  rule: string;
  honest: number;
  sybils: number;
  rounds: number;
  voteShare: number;
  leaderShare: number;
  sybilLedRounds: number;
  garbageApplied: number;
  newcomerWait: number | null;
  newcomerToVote: number | null;
  violations: number;
  seconds: number;
}

function main(): void {
  const honestCounts = arg('honest', '5,10,20').split(',').map(Number);
  const sybils = Number(arg('sybils', '100'));
  const rounds = Number(arg('rounds', '50'));
  const rows: Row[] = [];
  for (const honest of honestCounts) {
    const ids = Array.from({ length: honest }, (_, i) => `h${String(i).padStart(2, '0')}`);
    for (const rule of ['verified-work', 'headcount'] as const) {
      const p =
        rule === 'verified-work'
          ? params({ minPeers: 2, quorum: 1, maxMissedRounds: 2, probation: 2, joinFraction: 0.25 })
          : params({ minPeers: 2, quorum: 1, maxMissedRounds: 2, probation: 0, joinFraction: 1 });
      const t0 = performance.now();
      const r = runSybil({
        params: p,
        honest: ids,
        count: sybils,
        rounds,
        newcomerAt: 5,
        gate: rule === 'verified-work',
        limit: rule === 'headcount' ? 200_000 : 2_000_000,
      });
      const s = r.samples;
      rows.push({
        rule,
        honest,
        sybils,
        rounds: r.rounds,
        voteShare: Math.max(...s.map((x) => x.sybilVoters / x.voters)),
        leaderShare: Math.max(...s.map((x) => x.sybilLeaderSlots / x.leaderSlots)),
        sybilLedRounds: s.filter((x) => x.decidedBySybil).length,
        garbageApplied: s.reduce((a, x) => a + x.sybilIncluded, 0),
        newcomerWait: r.newcomerMemberAt === null ? null : r.newcomerMemberAt - 5,
        newcomerToVote:
          r.newcomerVoterAt === null || r.newcomerMemberAt === null ? null : r.newcomerVoterAt - r.newcomerMemberAt,
        violations: r.violations.length,
        seconds: (performance.now() - t0) / 1000,
      });
    }
  }
  if (process.argv.includes('--json')) {
    process.stdout.write(JSON.stringify({ bench: 'sybil', rows }, null, 2) + '\n');
    return;
  }
  const f = (x: number | null) => (x === null ? '—' : String(x));
  process.stdout.write(
    '| rule | honest | sybils | rounds run | max vote share | max leader share | sybil-led rounds | garbage applied | newcomer wait (rounds) | then to a vote | violations |\n|---|---|---|---|---|---|---|---|---|---|---|\n',
  );
  for (const r of rows)
    process.stdout.write(
      `| ${r.rule} | ${r.honest} | ${r.sybils} | ${r.rounds} | ${r.voteShare.toFixed(2)} | ${r.leaderShare.toFixed(2)} | ${r.sybilLedRounds} | ${r.garbageApplied} | ${f(r.newcomerWait)} | ${f(r.newcomerToVote)} | ${r.violations} |\n`,
    );
}

main();
