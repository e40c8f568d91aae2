/**
 * Per-round randomness that every peer derives identically: the round seed, and the data
 * shards each roster member trains on. Pure functions of their arguments; the order in which
 * peer ids are given never matters.
 */
import { InvalidInputError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { sha256Hex } from '../util/hash.js';
import { HEX64 } from './canonical.js';

/** The seed of round `round` of run `runId`: sha256 hex of a domain-separated string. */
export function roundSeed(runId: string, round: number): string {
  if (!HEX64.test(runId))
    throw new InvalidInputError(`runId must be 64 lowercase hex digits, got ${JSON.stringify(runId)}`);
  if (!Number.isSafeInteger(round) || round < 0)
    throw new InvalidInputError(`round must be a non-negative integer, got ${round}`);
  return sha256Hex(`tessera/round-seed/v1\n${runId}\n${round}`);
}

/** A seeded Rng for one purpose (`domain`) within a round. */
export function seededRng(seed: string, domain: string): Rng {
  return new Rng(BigInt('0x' + sha256Hex(`tessera/rng/v1\n${domain}\n${seed}`).slice(0, 16)));
}

/** Code-unit order, the one order every peer sorts ids in (independent of locale). */
export function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function shuffle<T>(xs: T[], rng: Rng): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = rng.nextInt(i + 1);
    const t = xs[i];
    xs[i] = xs[j];
    xs[j] = t;
  }
  return xs;
}

/**
 * Assigns shard indices [0, numShards) to peers for one round. Balanced: with S >= P shards
 * every shard goes to exactly one peer and loads differ by at most one; with S < P every peer
 * gets one shard and every shard goes to floor(P/S) or ceil(P/S) peers. Which peer gets which
 * (and who gets the extra shards) is reshuffled each round by `seed`. Returns a Map in sorted
 * peer order, each list ascending. Throws InvalidInputError on duplicate ids or a bad count.
 */
export function assignShards(seed: string, peerIds: readonly string[], numShards: number): Map<string, number[]> {
  if (!Number.isSafeInteger(numShards) || numShards < 1)
    throw new InvalidInputError(`numShards must be a positive integer, got ${numShards}`);
  const peers = [...peerIds].sort(compareIds);
  for (let i = 1; i < peers.length; i++)
    if (peers[i] === peers[i - 1]) throw new InvalidInputError(`duplicate peer id ${peers[i]}`);
  const out = new Map<string, number[]>();
  const P = peers.length;
  if (P === 0) return out;
  const order = shuffle([...peers], seededRng(seed, 'shard-peers'));
  const shards = shuffle(
    Array.from({ length: numShards }, (_, i) => i),
    seededRng(seed, 'shards'),
  );
  const lists = new Map<string, number[]>(order.map((p) => [p, []]));
  if (numShards >= P) {
    shards.forEach((s, k) => lists.get(order[k % P])!.push(s));
  } else {
    order.forEach((p, j) => lists.get(p)!.push(shards[j % numShards]));
  }
  for (const p of peers)
    out.set(
      p,
      lists.get(p)!.sort((a, b) => a - b),
    );
  return out;
}
