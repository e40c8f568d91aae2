/**
 * Deterministic leader order for a round: every peer computes the same list from the round
 * seed and the (agreed) roster. Members heard from last round (missed = 0) come first, so a
 * crashed peer rarely costs more than one attempt; within each group the order is a per-round
 * pseudo-random ranking (sha256 of seed and id), so leadership rotates.
 * Attempt a of the round is led by order[a mod order.length].
 */
import { InvalidInputError } from '../util/errors.js';
import { compareIds } from './assign.js';
import { sha256Hex } from '../util/hash.js';

export function leaderRank(seed: string, peerId: string): string {
  return sha256Hex(`tessera/leader/v1\n${seed}\n${peerId}`);
}

/**
 * `missed[i]` (optional, aligned with `roster`) counts the consecutive rounds roster[i] was
 * not heard from; peers with 0 are preferred.
 */
export function leaderOrder(seed: string, roster: readonly string[], missed?: readonly number[]): string[] {
  if (missed && missed.length !== roster.length)
    throw new InvalidInputError(`leaderOrder: ${roster.length} peers but ${missed.length} miss counts`);
  const rows = roster.map((p, i) => ({ p, late: missed && missed[i] > 0 ? 1 : 0, rank: leaderRank(seed, p) }));
  rows.sort((a, b) => a.late - b.late || compareIds(a.rank, b.rank) || compareIds(a.p, b.p));
  return rows.map((r) => r.p);
}

export function leaderAt(order: readonly string[], attempt: number): string {
  if (order.length === 0) throw new InvalidInputError('leaderAt: empty roster');
  return order[attempt % order.length];
}
