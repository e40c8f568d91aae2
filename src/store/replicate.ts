/**
 * Who must hold what: deterministic replica placement by rendezvous (highest-random-weight)
 * hashing. Every peer ranks the roster by sha256(key ‖ peer) and the top R hold the item, so
 * all peers agree without talking, and when a holder leaves only the items it held move (each
 * to the next-ranked peer), about R/n of them, instead of a reshuffle.
 *
 * Pure: no I/O. The node (swarm/node.ts) turns a plan into pins, unpins and DHT provides.
 */
import { sha256Hex } from '../util/hash.js';

/** Default replicas per item. */
export const DEFAULT_REPLICAS = 3;

function weight(key: string, peer: string): string {
  return sha256Hex(`${key}\0${peer}`);
}

/** The min(r, n) peers of `peers` that must hold `key`, best-ranked first. */
export function holders(key: string, peers: readonly string[], r: number): string[] {
  if (!Number.isInteger(r) || r < 1) throw new RangeError(`replicas must be a positive integer, got ${r}`);
  const uniq = [...new Set(peers)];
  return uniq
    .map((p) => ({ p, w: weight(key, p) }))
    .sort((a, b) => (a.w < b.w ? 1 : a.w > b.w ? -1 : 0))
    .slice(0, r)
    .map((x) => x.p);
}

export interface PinItem {
  /** Content id (string form); also the placement key. */
  cid: string;
  /** 'all': every member holds it (small, needed by all); 'replicated': R holders. */
  scope: 'all' | 'replicated';
  /** For logs and reports. */
  label: string;
  /** Pin depth (0: the block alone); default the whole DAG. */
  depth?: number;
}

export interface PinPlan {
  /** Items `self` must hold (pin and provide). */
  hold: PinItem[];
  /** Replicated items `self` need not hold. */
  skip: PinItem[];
}

/** What `self` must hold among `items`, given the current roster. A non-member holds nothing replicated. */
export function pinPlan(items: readonly PinItem[], roster: readonly string[], self: string, r: number): PinPlan {
  const hold: PinItem[] = [];
  const skip: PinItem[] = [];
  const member = roster.includes(self);
  for (const it of items) {
    if (it.scope === 'all' || (member && holders(it.cid, roster, r).includes(self))) hold.push(it);
    else skip.push(it);
  }
  return { hold, skip };
}
