/**
 * Staying in the swarm across NATs (issue 16), the pure parts: a peer whose payloads come late
 * catches up by replaying the decided set instead of resyncing (swarm/round.ts catchUpUntil,
 * docs/ROUNDS.md "Catching up"), and dialling an unreachable peer backs off, exponentially and
 * capped (net/backoff.ts, used by peer/boot.ts keepDialing). The NAT lab runs the real thing
 * (test/nat.test.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CATCH_UP_ROUNDS, catchUpUntil, submitMsOf, type RoundState } from '../src/swarm/round.js';
import { DIAL_BACKOFF, backoffDelay, dialDue, dialFailed } from '../src/net/backoff.js';
import { Sim, params } from './support/round-sim.js';

const PEERS4 = ['a', 'b', 'c', 'd'];

test('a peer whose fetches come late replays each decided set: same hashes, no resync, its updates land', () => {
  const p = params({ commitMs: 300, retryMs: 300 });
  const sim = new Sim(p, 5);
  // d hears no update by gossip; each fetch is answered 600 ms late: 2 fetch retries, and the
  // others apply and announce the round's result before d holds its set.
  for (const id of PEERS4) sim.add(id, id === 'd' ? { genesis: PEERS4, fetchMs: 600 } : { genesis: PEERS4 });
  sim.runUntil(() => sim.peer('a').state.round >= 8, 60_000);
  const d = sim.peer('d');
  sim.runUntil(() => d.state.round >= 8, sim.now + 10_000);
  assert.deepEqual(
    d.effects.filter((e) => e.type === 'resync'),
    [],
    'd never resynced',
  );
  for (let r = 0; r < 7; r++) assert.equal(d.results.get(r), sim.peer('a').results.get(r), `round ${r}: same hash`);
  // The others announced before d applied (so the old rule would have resynced it).
  assert.ok(
    d.effects.filter((e) => e.type === 'fetch').length > 8,
    'd fetched every round, retrying while the others moved on',
  );
  // Its own updates kept landing in the decided sets.
  const withD = [...Array(7).keys()].filter((r) => sim.decisionOf('a', r).included.some((u) => u.peer === 'd'));
  assert.ok(withD.length >= 5, `d included in ${withD.length} of 7 rounds`);
  assert.deepEqual(sim.violations, []);
});

test('a peer whose fetches never come resyncs once the catch-up window is over', () => {
  const p = params({ commitMs: 300, retryMs: 300 });
  const sim = new Sim(p, 6);
  for (const id of PEERS4) sim.add(id, id === 'd' ? { genesis: PEERS4, fetchMs: 1e9 } : { genesis: PEERS4 });
  sim.runUntil(() => sim.peer('a').state.round >= 6, 60_000);
  const d = sim.peer('d');
  const rs = d.effects.filter((e) => e.type === 'resync');
  assert.ok(rs.length > 0, 'd resynced');
  for (const e of rs)
    assert.ok(e.type === 'resync' && e.round !== null && e.weightsHash !== null, 'to a certified target');
  sim.runUntil(() => d.state.phase !== 'syncing' && d.state.round >= sim.peer('a').state.round - 1, sim.now + 5000);
  assert.deepEqual(sim.violations, []);
});

test('catchUpUntil: CATCH_UP_ROUNDS rounds of submit + commit time from the round start, stretched with it', () => {
  const p = params();
  const s = { params: p, stretch: [1000, 1000] as [number, number], startedAt: 5000 } as Pick<
    RoundState,
    'params' | 'stretch' | 'startedAt'
  >;
  assert.equal(catchUpUntil(s), 5000 + CATCH_UP_ROUNDS * (p.submitMs + p.commitMs));
  const slow = { ...s, stretch: [2000, 2000] as [number, number] };
  assert.equal(catchUpUntil(slow), 5000 + CATCH_UP_ROUNDS * (submitMsOf(slow) + p.commitMs));
  assert.ok(catchUpUntil(slow) > catchUpUntil(s));
});

test('dial backoff: 1, 2, 4, 8 s, then capped at 15 s; jitter within ±20%; reset by success', () => {
  const mid = [1, 2, 3, 4, 5, 6, 10, 100, 1e6].map((n) => backoffDelay(n));
  assert.deepEqual(mid, [1000, 2000, 4000, 8000, 15_000, 15_000, 15_000, 15_000, 15_000]);
  assert.equal(backoffDelay(0), 0, 'nothing failed: dial now');
  assert.equal(backoffDelay(-3), 0);
  assert.equal(backoffDelay(NaN), 0);
  for (const n of [1, 3, 7, 50])
    for (const r of [0, 0.25, 0.5, 0.999, 1, -1, 2]) {
      const d = backoffDelay(n, DIAL_BACKOFF, r);
      const base = backoffDelay(n);
      assert.ok(d >= base * 0.8 - 1 && d <= base * 1.2 + 1, `failures ${n}, rand ${r}: ${d}`);
      assert.ok(d <= DIAL_BACKOFF.maxMs * (1 + DIAL_BACKOFF.jitter), 'never beyond the cap');
    }
  // Monotone without jitter.
  for (let n = 1; n < 20; n++) assert.ok(backoffDelay(n + 1) >= backoffDelay(n));
  // The per-target state a dialler keeps.
  assert.equal(dialDue(undefined, 0), true, 'never dialled: due');
  let st = dialFailed(undefined, 10_000);
  assert.deepEqual(st, { failures: 1, nextAt: 11_000 });
  assert.equal(dialDue(st, 10_999), false);
  assert.equal(dialDue(st, 11_000), true);
  for (let i = 0; i < 10; i++) st = dialFailed(st, 20_000);
  assert.deepEqual(st, { failures: 11, nextAt: 35_000 });
  // Another policy: its own numbers.
  assert.equal(backoffDelay(3, { baseMs: 100, factor: 3, maxMs: 500, jitter: 0 }), 500);
  assert.equal(backoffDelay(2, { baseMs: 100, factor: 3, maxMs: 500, jitter: 0 }), 300);
});
