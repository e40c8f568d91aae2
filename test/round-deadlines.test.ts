/**
 * Deadlines that follow the swarm (issue 16; docs/ROUNDS.md): in the reducer's simulation,
 * slow trainers and slow links first cost short and late updates; the deadlines, computed from
 * agreed data only, stretch until the updates land, and shrink back when the swarm speeds up.
 * Fixed deadlines (maxStretch 1) are measured side by side.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sim, params } from './support/round-sim.js';
import { nextStretch, trainMsOf, submitMsOf, type RoundParams } from '../src/swarm/round.js';

const PEERS = ['a', 'b', 'c', 'd'];

/** Runs `rounds` rounds; per round: updates included, and how many of them had all H steps. */
function run(p: RoundParams, speed: number, net: { minDelay: number; maxDelay: number }, rounds: number) {
  const sim = new Sim(p, 3, net);
  for (const id of PEERS) sim.add(id, { genesis: PEERS, speed });
  sim.runUntil(() => sim.peer('a').commits.size >= rounds, 600_000);
  const H = p.innerSteps * p.batch;
  const rows = [...sim.peer('a').commits.entries()]
    .sort((x, y) => x[0] - y[0])
    .slice(0, rounds)
    .map(([, k]) => ({ included: k.included.length, full: k.included.filter((u) => u.tokens === H).length }));
  return { sim, rows, stretch: sim.peer('a').state.stretch, ms: sim.now };
}

test('slow trainers: the training budget stretches until a quorum completes its H steps', () => {
  const base = params({ trainMs: 1000, submitMs: 1500, minPeers: 2, quorum: 1 });
  // speed 1.5: H steps take 0.9 s of a 1 s budget at speed 1; here 1.5 × 0.6 × 1000 = 900 ms → fine;
  // speed 2.2 needs 1.32 s: every update is short with a fixed budget.
  const fixed = run({ ...base, maxStretch: 1 }, 2.2, { minDelay: 20, maxDelay: 20 }, 12);
  const adaptive = run(base, 2.2, { minDelay: 20, maxDelay: 20 }, 12);
  const fullFixed = fixed.rows.reduce((a, r) => a + r.full, 0);
  const fullAdaptive = adaptive.rows.slice(4).reduce((a, r) => a + r.full, 0);
  process.stderr.write(
    `round-deadlines: slow trainers, full-H updates fixed ${fullFixed}/${fixed.rows.length * 4}, adaptive (rounds 4+) ${fullAdaptive}/${(adaptive.rows.length - 4) * 4}; stretch ${adaptive.stretch.join('/')}\n`,
  );
  assert.equal(fullFixed, 0, 'fixed deadlines: every update short');
  assert.ok(fullAdaptive >= 0.5 * (adaptive.rows.length - 4) * 4, 'adaptive: most updates have all H steps');
  assert.ok(adaptive.stretch[0] > 1000 && adaptive.stretch[0] <= 4000);
  assert.deepEqual(adaptive.sim.violations, []);
});

test('slow links: the collection window stretches until 3/4 of the voters land; agreement holds', () => {
  const base = params({ trainMs: 600, submitMs: 700, minPeers: 2, quorum: 1, commitMs: 600, retryMs: 300 });
  const net = { minDelay: 50, maxDelay: 600 };
  const fixed = run({ ...base, maxStretch: 1 }, 1, net, 16);
  const adaptive = run(base, 1, net, 16);
  const inc = (rows: { included: number }[]) => rows.reduce((a, r) => a + r.included, 0) / rows.length;
  process.stderr.write(
    `round-deadlines: slow links, updates per round fixed ${inc(fixed.rows).toFixed(2)}, adaptive (rounds 6+) ${inc(adaptive.rows.slice(6)).toFixed(2)} of 4; stretch ${adaptive.stretch.join('/')}; sim ms for 16 rounds fixed ${fixed.ms}, adaptive ${adaptive.ms}\n`,
  );
  assert.ok(inc(adaptive.rows.slice(6)) >= 3, 'adaptive: at least 3 of 4 updates land per round');
  assert.ok(inc(adaptive.rows.slice(6)) > inc(fixed.rows), 'more than with the fixed window');
  assert.deepEqual(adaptive.sim.violations, []);
  assert.deepEqual(fixed.sim.violations, []);
});

test('nextStretch: voters only, grows by 5/4, shrinks by 1/50, bounded; deadlines follow', () => {
  const p = { probation: 2, innerSteps: 10, batch: 4, maxStretch: 2 };
  const cur = { roster: ['a', 'b', 'c', 'd', 's'], credit: [2, 2, 2, 2, 0], stretch: [1000, 1000] as [number, number] };
  const u = (peer: string, tokens = 40) => ({ peer, updateHash: '0'.repeat(64), tokens });
  const k = (included: ReturnType<typeof u>[], live: string[]) => ({
    round: 1,
    attempt: 0,
    leader: 'a',
    included,
    joins: [],
    live,
  });
  const all = ['a', 'b', 'c', 'd', 's'];
  assert.deepEqual(nextStretch(p, cur, k([u('a'), u('b'), u('c'), u('d')], all)), [1000, 1000], 'all full and landed');
  assert.deepEqual(nextStretch(p, cur, k([u('a', 20), u('b', 20), u('c'), u('d')], all)), [1250, 1000], 'half short');
  assert.deepEqual(nextStretch(p, cur, k([u('a'), u('b')], all)), [1000, 1250], 'two of four voters landed');
  // The probationer s neither lands nor counts: a Sybil cannot stretch the run.
  assert.deepEqual(nextStretch(p, cur, k([u('a'), u('b'), u('c'), u('s', 1)], all)), [1000, 1000]);
  let st = { ...cur };
  for (let i = 0; i < 10; i++) st = { ...st, stretch: nextStretch(p, st, k([u('a', 1)], all)) };
  assert.deepEqual(st.stretch, [2000, 2000], 'capped at maxStretch');
  for (let i = 0; i < 80; i++) st = { ...st, stretch: nextStretch(p, st, k([u('a'), u('b'), u('c')], all)) };
  assert.deepEqual(st.stretch, [1000, 1000], 'back to the manifest');
  const s = {
    params: params({ trainMs: 1000, submitMs: 1500 }) as Parameters<typeof trainMsOf>[0]['params'],
    stretch: [1250, 2000] as [number, number],
  };
  assert.equal(trainMsOf(s), 1250);
  assert.equal(submitMsOf(s), 1250 + 1000);
});
