/**
 * The peer's payload store: every bulk object it serves, by sha256, held once. An update's
 * entry carries its encoded bytes (served to peers), its decoded Δ (for apply, scoring and the
 * eager guess) and the update message that announced it; snapshot bundles, audit traces and
 * fraud proofs carry bytes only. Entries are dropped `keepRounds` rounds after their round.
 *
 * Who fills it: this peer's own training job, update fetches that passed the codec's checks,
 * snapshot advertisements and fraud proofs. Who reads it: the bulk server (any connected peer,
 * by hash), the node's apply, the validator and the audit.
 */
import type { UpdateMsg } from '../swarm/round.js';

interface Entry {
  bytes: Uint8Array | null;
  round: number;
  keepRounds: number;
  delta?: Float32Array;
  msg?: UpdateMsg;
}

/** Rounds an update payload is kept after its round, unless an entry says otherwise. */
const KEEP_ROUNDS = 2;

export class PayloadStore {
  private readonly entries = new Map<string, Entry>();

  private entry(hash: string, round: number): Entry {
    let e = this.entries.get(hash);
    if (!e) {
      e = { bytes: null, round, keepRounds: KEEP_ROUNDS };
      this.entries.set(hash, e);
    }
    return e;
  }

  /** The bytes of bulk object `hash`, if held (what the bulk server serves). */
  bytes(hash: string): Uint8Array | undefined {
    return this.entries.get(hash)?.bytes ?? undefined;
  }

  /** Holds an opaque bulk object (snapshot bundle, trace, fraud proof). */
  putBlob(hash: string, bytes: Uint8Array, round: number, keepRounds = KEEP_ROUNDS): void {
    const e = this.entry(hash, round);
    e.bytes = bytes;
    e.round = round;
    e.keepRounds = keepRounds;
  }

  /** Holds an update payload and its decoded Δ. */
  putUpdate(hash: string, bytes: Uint8Array, round: number, delta: Float32Array): void {
    const e = this.entry(hash, round);
    e.bytes = bytes;
    e.round = round;
    e.delta = delta;
  }

  /** The decoded Δ of update `hash`, if held. */
  delta(hash: string): Float32Array | undefined {
    return this.entries.get(hash)?.delta;
  }

  /** Remembers the update message announcing `msg.updateHash` (its payload may not be held yet). */
  noteMsg(msg: UpdateMsg): void {
    this.entry(msg.updateHash, msg.round).msg = msg;
  }

  /** The update message seen for `hash`, if any. */
  msg(hash: string): UpdateMsg | undefined {
    return this.entries.get(hash)?.msg;
  }

  /** Forgets the claim of an update whose payload could not be fetched. */
  forgetMsg(hash: string): void {
    const e = this.entries.get(hash);
    if (!e) return;
    delete e.msg;
    if (!e.bytes && !e.delta) this.entries.delete(hash);
  }

  /** Every held update (message and decoded Δ) of round `round`, in insertion order. */
  *heldUpdates(round: number): Generator<{ hash: string; msg: UpdateMsg; delta: Float32Array }> {
    for (const [hash, e] of this.entries) {
      if (e.msg && e.delta && e.msg.round === round) yield { hash, msg: e.msg, delta: e.delta };
    }
  }

  /** Drops every entry more than its keepRounds behind `round`. */
  prune(round: number): void {
    for (const [h, e] of this.entries) if (e.round < round - e.keepRounds) this.entries.delete(h);
  }
}
