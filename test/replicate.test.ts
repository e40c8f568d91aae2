/** Deterministic replica placement (store/replicate.ts): agreement, counts, minimal movement, balance. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { holders, pinPlan, type PinItem } from '../src/store/replicate.js';

const peers = Array.from({ length: 12 }, (_, i) => `12D3KooPeer${String.fromCharCode(65 + i)}`);
const keys = Array.from({ length: 400 }, (_, i) => `bafkreikey${i}`);

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
      const b = holders(k, peers, R), a = holders(k, after, R);
      if (!b.includes(gone)) { assert.deepEqual(a, b, 'untouched when the leaver did not hold it'); continue; }
      moved++;
      const kept = b.filter((p) => p !== gone);
      assert.deepEqual(a.filter((p) => kept.includes(p)), kept, 'the other holders keep it');
      assert.equal(a.filter((p) => !b.includes(p)).length, 1, 'one replacement');
    }
    // About R/n of the items move.
    assert.ok(moved > keys.length * R / peers.length * 0.6 && moved < keys.length * R / peers.length * 1.4, `moved ${moved}`);
  }
});

test('load is balanced: each of n peers holds about R/n of the items', () => {
  const R = 3, counts = new Map(peers.map((p) => [p, 0]));
  for (const k of keys) for (const h of holders(k, peers, R)) counts.set(h, counts.get(h)! + 1);
  const mean = keys.length * R / peers.length;
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
    assert.ok(plan.hold.some((x) => x.cid === 'meta'));
    assert.equal(plan.hold.length + plan.skip.length, items.length);
    for (const it of plan.hold) held.set(it.cid, (held.get(it.cid) ?? 0) + 1);
  }
  for (const it of items) assert.equal(held.get(it.cid), it.scope === 'all' ? 5 : 3, it.label);
  const outsider = pinPlan(items, roster, 'stranger', 3);
  assert.deepEqual(outsider.hold.map((x) => x.cid), ['meta']);
});
