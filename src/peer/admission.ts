/**
 * Who may make this peer do work, and how much (issue 15, items 4 and 5): the small bounded
 * structures the node uses to keep outsiders from costing it downloads, decodes, signature
 * recoveries, re-executed steps or memory.
 *
 * - Members: the current roster, plus (for round r+1) the joins of the decided or pending commit.
 * - Validators (for fraud proofs, score reports and ledger signatures): this peer itself if it
 *   is one, NodeOptions.trustValidators, and with a ledger link the contract's validator set
 *   mapped to peer ids through their payout addresses (ledger.ts). Without trustValidators or a
 *   ledger link a peer knows no validators, so fraud proofs and score reports are also taken
 *   from roster members: the roster is agreed state every peer holds, bounded by MAX_ROSTER.
 *
 * Every structure here is only fed by senders that passed those checks, and is capped anyway.
 */
import type { RoundState, UpdateMsg } from '../swarm/round.js';

/** At most `limit` messages per sender per round (the counters reset when the round moves). */
export class RateCap {
  private round = -1;
  private readonly counts = new Map<string, number>();

  constructor(private readonly limit: number) {}

  /** Counts one message of `sender` at `round`; false once it is over the limit. */
  take(round: number, sender: string): boolean {
    if (round !== this.round) {
      this.round = round;
      this.counts.clear();
    }
    const n = (this.counts.get(sender) ?? 0) + 1;
    this.counts.set(sender, n);
    return n <= this.limit;
  }
}

/** A set of the last `cap` keys seen (oldest forgotten first): the same input is processed once. */
export class SeenSet {
  private readonly keys = new Set<string>();

  constructor(private readonly cap: number) {}

  /** True the first time `key` is seen (and remembers it). */
  first(key: string): boolean {
    if (this.keys.has(key)) return false;
    this.keys.add(key);
    if (this.keys.size > this.cap) this.keys.delete(this.keys.values().next().value!);
    return true;
  }

  /** Forgets `key` (it may be processed again). */
  forget(key: string): void {
    this.keys.delete(key);
  }

  get size(): number {
    return this.keys.size;
  }
}

/** Most early update messages held (messages only, no payload), and most per author. */
export const EARLY_MAX = 64;
export const EARLY_PER_AUTHOR = 2;

/**
 * Update messages for round r+1 whose author may not submit to r+1 as far as this peer knows yet
 * (not in the roster nor in the decided or pending commit's joins), or that arrived while this
 * peer was not synced: held as messages only, never fetched, until they become fetchable (then
 * handed back) or stale (then dropped).
 */
export class EarlyUpdates {
  private held: UpdateMsg[] = [];
  dropped = 0;

  get size(): number {
    return this.held.length;
  }

  /** Holds `msg`; false (dropped) if the buffer or the author's share of it is full. */
  hold(msg: UpdateMsg): boolean {
    if (this.held.some((m) => m.updateHash === msg.updateHash && m.from === msg.from)) return true;
    if (this.held.length >= EARLY_MAX || this.held.filter((m) => m.from === msg.from).length >= EARLY_PER_AUTHOR) {
      this.dropped++;
      return false;
    }
    this.held.push(msg);
    return true;
  }

  /** Takes every held message out (the caller re-examines each one). */
  drain(): UpdateMsg[] {
    return this.held.splice(0);
  }
}

export interface SendersDeps {
  state: () => RoundState;
  self: string;
  trustValidators: readonly string[];
  /** This peer is a validator. */
  validator: boolean;
  /** The contract's validators known as peer ids (ledger.ts: once a signature proved the key). */
  ledgerValidators: () => Iterable<string>;
}

/** Who a sender is, as far as agreed state and this peer's configuration show. */
export class Senders {
  constructor(private readonly d: SendersDeps) {}

  synced(): boolean {
    const st = this.d.state();
    return st.phase !== 'unsynced' && st.phase !== 'syncing';
  }

  /**
   * Validators, for what only validators may send (fraud proofs, ledger signatures, and the score
   * reports that select): this peer if it is one, NodeOptions.trustValidators, and with a ledger
   * link the contract's validator set mapped to peer ids through their payout addresses.
   */
  validators(): Set<string> {
    const v = new Set(this.d.trustValidators);
    if (this.d.validator) v.add(this.d.self);
    for (const p of this.d.ledgerValidators()) v.add(p);
    return v;
  }

  /** A member of this round's or the previous round's roster (agreed state). */
  isMember(peer: string): boolean {
    const st = this.d.state();
    return st.roster.includes(peer) || (st.prev?.roster.includes(peer) ?? false);
  }

  /** Whether `peer` may submit an update to round `r` as far as agreed state shows (roster, or r+1's joins). */
  mayTrain(peer: string, r: number): boolean {
    const st = this.d.state();
    if (r === st.round) return st.roster.includes(peer);
    if (r === st.round + 1)
      return (
        st.roster.includes(peer) ||
        (st.decision?.commit.joins.includes(peer) ?? false) ||
        (st.pending?.joins.includes(peer) ?? false)
      );
    if (r === st.round - 1) return st.prev?.roster.includes(peer) ?? false;
    return false;
  }
}
