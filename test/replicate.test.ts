/** Deterministic replica placement (store/replicate.ts): agreement, counts, minimal movement, balance. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { holders, pinPlan, type PinItem } from '../src/store/replicate.js';

const peers = Array.from({ length: 12 }, (_, i) => `12D3KooPeer${String.fromCharCode(65 + i)}`);
const keys = Array.from({ length: 400 }, (_, i) => `bafkreikey${i}`);

/** Rendezvous placement computed independently, with node:crypto: the top r of sha256(key NUL peer), highest first. */
function expectedHolders(key: string, roster: readonly string[], r: number): string[] {
  const w = (p: string) => createHash('sha256').update(key).update('\0').update(p).digest('hex');
  return [...new Set(roster)].sort((a, b) => (w(a) < w(b) ? 1 : w(a) > w(b) ? -1 : 0)).slice(0, r);
}

test('holders: the top R peers by sha256(key NUL peer), as computed independently', () => {
  for (const r of [1, 3, 5])
    for (const k of keys.slice(0, 100)) assert.deepEqual(holders(k, peers, r), expectedHolders(k, peers, r), k);
  // Pinned (computed before the move to util/hash.ts): a different hash would move replicas.
  assert.deepEqual(holders('bafkreikey0', peers, 3), ['12D3KooPeerF', '12D3KooPeerE', '12D3KooPeerL']);
});

test('holders: min(R, n) distinct members, independent of roster order', () => {
  for (let n = 1; n <= peers.length; n++) {
    const roster = peers.slice(0, n);
    for (const r of [1, 2, 3, 5]) {
      for (const k of keys.slice(0, 50)) {
        const h = holders(k, roster, r);
        assert.equal(h.length, Math.min(r, n));
        assert.equal(new Set(h).size, h.length);
        assert.ok(h.every((p) => roster.includes(p)));
        assert.deepEqual(holders(k, [...roster].reverse(), r), h, 'every peer computes the same set');
      }
    }
  }
  assert.throws(() => holders('k', peers, 0), RangeError);
});

test('a leaving peer moves only the items it held, each to exactly one new holder', () => {
  const R = 3;
  for (const gone of peers) {
    const after = peers.filter((p) => p !== gone);
    let moved = 0;
    for (const k of keys) {
      const b = holders(k, peers, R),
        a = holders(k, after, R);
      if (!b.includes(gone)) {
        assert.deepEqual(a, b, 'untouched when the leaver did not hold it');
        continue;
      }
      moved++;
      const kept = b.filter((p) => p !== gone);
      assert.deepEqual(
        a.filter((p) => kept.includes(p)),
        kept,
        'the other holders keep it',
      );
      assert.equal(a.filter((p) => !b.includes(p)).length, 1, 'one replacement');
    }
    // About R/n of the items move.
    assert.ok(
      moved > ((keys.length * R) / peers.length) * 0.6 && moved < ((keys.length * R) / peers.length) * 1.4,
      `moved ${moved}`,
    );
  }
});

test('load is balanced: each of n peers holds about R/n of the items', () => {
  const R = 3,
    counts = new Map(peers.map((p) => [p, 0]));
  for (const k of keys) for (const h of holders(k, peers, R)) counts.set(h, counts.get(h)! + 1);
  const mean = (keys.length * R) / peers.length;
  for (const [p, c] of counts) assert.ok(c > mean * 0.6 && c < mean * 1.4, `${p} holds ${c} (mean ${mean})`);
});

test('pinPlan: every member holds "all" items; replicated ones go to their holders; a non-member holds only "all"', () => {
  const items: PinItem[] = [
    { cid: 'meta', scope: 'all', label: 'manifest' },
    ...keys.slice(0, 40).map((k, i) => ({ cid: k, scope: 'replicated' as const, label: `shard ${i}` })),
  ];
  const roster = peers.slice(0, 5);
  const held = new Map<string, number>();
  for (const self of roster) {
    const plan = pinPlan(items, roster, self, 3);
    const mine = (it: PinItem) => it.scope === 'all' || expectedHolders(it.cid, roster, 3).includes(self);
    assert.deepEqual(
      plan.hold.map((x) => x.cid),
      items.filter(mine).map((x) => x.cid),
      `${self} holds exactly its items`,
    );
    assert.deepEqual(
      plan.skip.map((x) => x.cid),
      items.filter((x) => !mine(x)).map((x) => x.cid),
      `${self} skips the rest`,
    );
    assert.ok(
      plan.hold.length > 1 && plan.skip.length > 0,
      `${self}: ${plan.hold.length} held, ${plan.skip.length} skipped`,
    );
    for (const it of plan.hold) held.set(it.cid, (held.get(it.cid) ?? 0) + 1);
  }
  for (const it of items) assert.equal(held.get(it.cid), it.scope === 'all' ? 5 : 3, it.label);
  const outsider = pinPlan(items, roster, 'stranger', 3);
  assert.deepEqual(
    outsider.hold.map((x) => x.cid),
    ['meta'],
  );
});
