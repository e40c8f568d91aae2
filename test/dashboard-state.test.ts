/**
 * The dashboard's pure aggregator (src/dashboard/state.ts): every rule the page relies on —
 * crediting contributors once per round, tokens/s, peer status (active, stale, gone), the
 * ring buffer, NaN losses, eviction, own contribution, the ownership panel built from the
 * node's ledger view — checked on hand-made reports and views.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  initialState,
  observe,
  ownContribution,
  ownership,
  peerRows,
  percentOf,
  pointsSince,
  proposalStatus,
  record,
  statusOf,
  summarize,
  type DashState,
} from '../src/dashboard/state.js';
import type { NodeView } from '../src/peer/node.js';
import type { RunSummary } from '../src/dashboard/state.js';
import { A, A_ADDR, B, B_ADDR, ME, ME_ADDR, MANIFEST, SHARES, ledgerView, report, view } from './dashboard-fixtures.js';

const row = (s: DashState, id: string) => peerRows(s).find((p) => p.id === id)!;

test('initial state: empty, starting; bad limits are rejected', () => {
  const s = initialState(1000);
  assert.equal(s.phase, 'starting');
  assert.equal(s.round, -1);
  assert.deepEqual(peerRows(s), []);
  assert.deepEqual(ownContribution(s), {
    roundsContributed: 0,
    tokens: 0,
    share: null,
    tokensPerSec: null,
    lastRound: null,
    bytesSent: 0,
    bytesReceived: 0,
    computeFraction: null,
  });
  assert.throws(() => initialState(0, { maxPoints: 0 }), RangeError);
  assert.throws(() => initialState(0, { maxPeers: 0 }), RangeError);
});

test('observe: run summary, roster, connected peers, seq grows', () => {
  const s0 = initialState(0);
  const s1 = observe(s0, view(), 10);
  assert.ok(s1.seq > s0.seq);
  assert.equal(s1.peerId, ME);
  assert.equal(s1.phase, 'training');
  assert.deepEqual(s1.roster, [A, ME].sort());
  assert.equal(s1.run!.name, 'tiny');
  assert.equal(s1.run!.params, 1234);
  assert.equal(s1.run!.kind, 'swarm');
  const run = s1.run as RunSummary;
  assert.equal(run.hyper.codec, 'sparse');
  assert.equal(run.dataset.ref, `sha256:${'b'.repeat(64)}`);
  assert.equal(run.timing.maxMissedRounds, 2);
  assert.equal(s1.stages, null, 'a swarm run has no stage map');
  // Self and connected peers are seen now; roster members not connected get a row but no sighting.
  assert.equal(row(s1, ME).lastSeenAt, 10);
  assert.equal(row(s1, A).lastSeenAt, 10);
  const s2 = observe(s1, view({ roster: [ME, A, B] }), 20);
  assert.equal(row(s2, B).lastSeenAt, null);
  assert.equal(row(s2, B).role, 'trainer');
  // The summary object is kept while the run is the same.
  assert.equal(s2.run, s1.run);
  // A dataset named by CID shows its CID.
  const m = { ...MANIFEST, dataset: { name: 'x', cid: 'bafy123456', numShards: 2 } } as unknown as NodeView['manifest'];
  assert.equal(summarize(view({ manifest: m })).dataset.ref, 'bafy123456');
});

test('record: a point per round, NaN loss → null, tokens/s = tokens / round seconds', () => {
  let s = observe(initialState(0), view(), 0);
  s = record(s, report(0, { trainLoss: NaN }), 100);
  const [p] = s.series;
  assert.equal(p.round, 0);
  assert.equal(p.trainLoss, null);
  assert.equal(p.valLoss, 6);
  assert.equal(p.tokens, 384);
  assert.equal(p.tokensPerSec, 192);
  assert.equal(s.weightsHash, 'w1');
  assert.equal(JSON.parse(JSON.stringify(p)).trainLoss, null);
  assert.equal(row(s, A).tokensPerSec, 64);
  assert.equal(row(s, ME).tokensPerSec, 128);
  // Zero-length round: no division by zero.
  s = record(s, report(1, { seconds: 0 }), 200);
  assert.equal(s.series[1].tokensPerSec, null);
  assert.equal(row(s, A).tokensPerSec, 64, 'keeps the last known rate');
});

test('contributors are credited once per round, even when a round is reported twice', () => {
  let s = observe(initialState(0), view(), 0);
  s = record(s, report(0), 1);
  s = record(s, report(0, { event: 'synced' }), 2);
  assert.equal(s.series.length, 1, 'the round is replaced, not appended');
  assert.equal(s.series[0].event, 'synced');
  assert.equal(row(s, A).roundsContributed, 1);
  assert.equal(row(s, A).tokens, 128);
  assert.equal(s.totals.rounds, 1);
  assert.equal(s.totals.tokens, 384);
  s = record(s, report(1, { contributors: [{ peer: A, tokens: 100 }] }), 3);
  assert.equal(row(s, A).roundsContributed, 2);
  assert.equal(row(s, A).lastRound, 1);
  assert.equal(row(s, ME).roundsContributed, 1);
  assert.equal(s.totals.tokens, 484);
});

test('own contribution: share of applied tokens, bytes totals, compute fraction', () => {
  let s = observe(initialState(0), view(), 0);
  s = record(s, report(0), 1);
  s = record(s, report(1, { contributors: [{ peer: A, tokens: 384 }], computeFraction: 0.5 }), 2);
  const o = ownContribution(s);
  assert.equal(o.roundsContributed, 1);
  assert.equal(o.tokens, 256);
  assert.equal(o.share, 256 / 768);
  assert.equal(o.bytesSent, 2000);
  assert.equal(o.bytesReceived, 4000);
  assert.equal(o.computeFraction, 0.5);
  assert.equal(o.lastRound, 0);
});

test('peer status: active, stale when unreachable or not contributing, gone when out of roster and topic', () => {
  let s = observe(initialState(0), view({ roster: [ME, A, B], subscribers: [A, B] }), 0);
  s = record(
    s,
    report(0, {
      contributors: [
        { peer: ME, tokens: 1 },
        { peer: A, tokens: 1 },
        { peer: B, tokens: 1 },
      ],
    }),
    1,
  );
  assert.equal(statusOf(s, s.peers[A]), 'active');
  assert.equal(row(s, B).status, 'active');
  // B disconnects but is still in the roster: stale.
  s = observe(s, view({ round: 1, roster: [ME, A, B], subscribers: [A] }), 2);
  assert.equal(row(s, B).status, 'stale');
  assert.equal(row(s, B).connected, false);
  assert.equal(row(s, B).lastSeenAt, 1, 'last seen when its update was applied');
  // A stays connected but stops contributing for more than staleRounds (2) rounds: stale.
  for (let r = 1; r <= 3; r++) s = record(s, report(r, { contributors: [{ peer: ME, tokens: 1 }] }), 10 + r);
  assert.equal(s.round, 3);
  assert.equal(row(s, A).status, 'stale');
  // B leaves the roster: gone.
  s = observe(s, view({ round: 4, roster: [ME, A], subscribers: [A] }), 20);
  assert.equal(row(s, B).status, 'gone');
  assert.equal(row(s, B).role, 'trainer', 'it did contribute');
  // Self is always active.
  assert.equal(row(s, ME).status, 'active');
  assert.equal(row(s, ME).self, true);
  // Order: self, then active, stale, gone.
  assert.deepEqual(
    peerRows(s).map((p) => p.id),
    [ME, A, B],
  );
});

test('observers: on the topic, not in the roster, never contributed', () => {
  const s = observe(initialState(0), view({ subscribers: [A, 'peer-x'] }), 0);
  const x = row(s, 'peer-x');
  assert.equal(x.role, 'observer');
  assert.equal(x.status, 'active');
});

test('ring buffer keeps the latest maxPoints rounds, in order; pointsSince gives increments', () => {
  let s = observe(initialState(0, { maxPoints: 3 }), view(), 0);
  for (const r of [0, 1, 2, 3, 4]) s = record(s, report(r), r);
  assert.deepEqual(
    s.series.map((p) => p.round),
    [2, 3, 4],
  );
  assert.equal(s.totals.rounds, 5, 'totals count every round seen');
  const cursor = s.seq;
  assert.deepEqual(pointsSince(s, cursor), []);
  s = record(s, report(5), 5);
  assert.deepEqual(
    pointsSince(s, cursor).map((p) => p.round),
    [5],
  );
  assert.deepEqual(
    pointsSince(s, -1).map((p) => p.round),
    [3, 4, 5],
  );
  // A late, older round is inserted in order (then trimmed like any other).
  s = record(initialState(0, { maxPoints: 10 }), report(7), 1);
  s = record(s, report(3), 2);
  assert.deepEqual(
    s.series.map((p) => p.round),
    [3, 7],
  );
  assert.equal(s.round, 7, 'the round never moves backwards on a late report');
});

test('eviction keeps self and roster members, drops the longest-unseen others', () => {
  let s = observe(initialState(0, { maxPeers: 3 }), view({ roster: [ME], subscribers: ['x1'] }), 1);
  s = observe(s, view({ roster: [ME], subscribers: ['x2'] }), 2);
  s = observe(s, view({ roster: [ME], subscribers: ['x3'] }), 3);
  assert.deepEqual(Object.keys(s.peers).sort(), [ME, 'x2', 'x3']);
  s = observe(s, view({ roster: [ME, 'x2'], subscribers: ['x4', 'x5'] }), 4);
  assert.ok(s.peers[ME] && s.peers.x2, 'self and roster member kept');
  assert.equal(Object.keys(s.peers).length, 3);
});

test('a large run stays cheap: 2000 rounds × 64 peers', () => {
  const ids = Array.from({ length: 64 }, (_, i) => `p${i}`);
  let s = observe(initialState(0), view({ roster: ids, subscribers: ids }), 0);
  const t0 = performance.now();
  for (let r = 0; r < 2000; r++)
    s = record(s, report(r, { contributors: ids.map((peer) => ({ peer, tokens: 64 })) }), r);
  const ms = performance.now() - t0;
  assert.equal(s.series.length, 2000);
  assert.equal(row(s, 'p5').roundsContributed, 2000);
  assert.ok(ms < 5000, `2000 rounds folded in ${ms.toFixed(0)} ms`);
});

test('validator scores fill the score column of listed peers only', () => {
  let s = initialState(0);
  s = observe(s, view({ roster: [ME, A], subscribers: [A] }), 1);
  s = observe(
    s,
    view({ roster: [ME, A], subscribers: [A], scores: { [A]: 0.0123, [ME]: 0.02, 'peer-unknown': 1 } }),
    2,
  );
  const rows = peerRows(s);
  assert.equal(rows.find((r) => r.id === A)!.score, 0.0123);
  assert.equal(rows.find((r) => r.id === ME)!.score, 0.02);
  assert.ok(!rows.some((r) => r.id === 'peer-unknown'), 'a score does not invent a peer');
  void B;
  void MANIFEST;
});

test('ownership: absent ledger → null (not linked); present → holders with percent and me, proposals with status', () => {
  let s = observe(initialState(0), view(), 1);
  assert.equal(s.ledger, null);
  assert.equal(ownership(s, 0), null, 'no chain link: the panel says so');
  const now = Date.UTC(2026, 0, 1);
  s = observe(s, view({ ledger: ledgerView() }), 2);
  const o = ownership(s, now)!;
  assert.equal(o.contract, '0x8464135c8F25Da09e49BC8782676a84730C318bC');
  assert.equal(o.chainId, 31337);
  assert.equal(o.online, true);
  assert.equal(o.totalSupply, SHARES.supply, 'amounts pass through as decimal strings, untouched');
  assert.deepEqual(
    o.holders.map((h) => [h.address, h.peer, h.percent, h.me]),
    [
      [A_ADDR, A, '62.50', false],
      // Matched case-insensitively to the view's lower-case `me`; its peer id is this node's.
      [ME_ADDR, ME, '31.25', true],
      [B_ADDR, null, '6.25', false],
    ],
  );
  assert.equal(o.holdersHidden, 0);
  assert.deepEqual(
    o.proposals.map((p) => [p.id, p.status]),
    [
      [4, 'open'],
      [3, 'passed'],
      [2, 'failed'],
      [1, 'closed'],
    ],
  );
  assert.deepEqual(o.queue, { pending: 3, submitted: 17, lastError: null });
  assert.equal(o.rounds[0].round, 12);
  // The node unlinks (or is restarted without --rpc): the panel goes back to "not linked".
  s = observe(s, view(), 3);
  assert.equal(ownership(s, now), null);
});

test('ownership: percentages in BigInt, statuses by deadline, holder rows capped with this node kept', () => {
  assert.equal(percentOf('1', '3'), '33.33');
  assert.equal(percentOf('2', '3'), '66.67', 'rounded half up');
  assert.equal(percentOf('1', '8'), '12.50');
  assert.equal(percentOf(SHARES.supply, SHARES.supply), '100.00');
  assert.equal(percentOf('5', '0'), null, 'no supply yet');
  assert.equal(percentOf('1e21', '10'), null, 'not a decimal integer string');
  // 2^64 + 1 of 2^66: Number division would lose the +1, BigInt does not need it (25.00%).
  assert.equal(percentOf((2n ** 64n + 1n).toString(), (2n ** 66n).toString()), '25.00');
  const p = { deadline: 1000, executed: false, passed: false };
  assert.equal(proposalStatus(p, 999_999), 'open');
  assert.equal(proposalStatus(p, 1_000_000), 'closed', 'voting ends at the deadline (Unix seconds)');
  assert.equal(proposalStatus({ ...p, executed: true, passed: true }, 0), 'passed');
  assert.equal(proposalStatus({ ...p, executed: true }, 0), 'failed');

  // 60 holders, this node the smallest: 50 rows (limits.maxHolders), the last one ours.
  const holders = Array.from({ length: 60 }, (_, i) => ({
    address: `0x${(i + 1).toString(16).padStart(40, '0')}`,
    peer: null,
    balance: String(1000 - i),
    claimable: '0',
  }));
  const me = holders[59].address;
  let s = observe(initialState(0), view({ ledger: ledgerView({ holders, me, totalSupply: '100000' }) }), 1);
  let o = ownership(s, 0)!;
  assert.equal(o.holders.length, 50);
  assert.equal(o.holdersHidden, 10);
  assert.equal(o.holders[49].address, me);
  assert.equal(o.holders[49].me, true);
  assert.equal(o.holders[48].balance, '952');
  s = observe(initialState(0, { maxHolders: 2 }), view({ ledger: ledgerView() }), 1);
  o = ownership(s, 0)!;
  assert.deepEqual(
    o.holders.map((h) => h.address),
    [A_ADDR, ME_ADDR],
  );
  assert.equal(o.holdersHidden, 1);
  assert.throws(() => initialState(0, { maxHolders: 0 }), RangeError);
});
