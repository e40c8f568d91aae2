/**
 * The peer's payload store: every bulk object it serves, by sha256, held once. An update's
 * entry carries its encoded bytes (served to peers), how to decode them into Δ (for apply,
 * scoring and the eager guess: decoded on each use and not kept, so a round's updates cost their
 * encoded size, not P floats each; at GPT-2 small a decoded Δ is 0.5 GB) and the update message
 * that announced it; snapshot bundles, audit traces and fraud proofs carry bytes only. Entries
 * are dropped `keepRounds` rounds after their round.
 *
 * Who fills it: this peer's own training job, update fetches that passed the codec's checks,
 * snapshot advertisements and fraud proofs. Who reads it: the bulk server (any connected peer,
 * by hash), the node's apply, the validator and the audit.
 */
import { readFile } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import type { UpdateMsg } from '../swarm/round.js';

interface Entry {
  bytes: Uint8Array | null;
  /** Or the object lives in this file (a snapshot bundle), read when served and removed when the entry is dropped. */
  file?: string;
  round: number;
  keepRounds: number;
  /** The update's Δ, decoded anew from `bytes` on each call (checked when the payload was taken in). */
  decode?: () => Float32Array;
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

  /** The bytes of bulk object `hash`, if held (what the bulk server serves; a file-backed one is read now). */
  bytes(hash: string): Uint8Array | undefined | Promise<Uint8Array | undefined> {
    const e = this.entries.get(hash);
    if (e?.file) return readFile(e.file).catch(() => undefined);
    return e?.bytes ?? undefined;
  }

  /** Holds a bulk object that lives in `file` (a snapshot bundle: 8P bytes are not kept in memory); the file is removed with the entry. */
  putFile(hash: string, file: string, round: number, keepRounds = KEEP_ROUNDS): void {
    const e = this.entry(hash, round);
    if (e.file && e.file !== file) rmSync(e.file, { force: true });
    e.file = file;
    e.bytes = null;
    e.round = round;
    e.keepRounds = keepRounds;
  }

  /** Holds an opaque bulk object (snapshot bundle, trace, fraud proof). */
  putBlob(hash: string, bytes: Uint8Array, round: number, keepRounds = KEEP_ROUNDS): void {
    const e = this.entry(hash, round);
    e.bytes = bytes;
    e.round = round;
    e.keepRounds = keepRounds;
  }

  /** Holds an update payload and how to decode it (its codec's decode of these bytes). */
  putUpdate(hash: string, bytes: Uint8Array, round: number, decode: () => Float32Array): void {
    const e = this.entry(hash, round);
    e.bytes = bytes;
    e.round = round;
    e.decode = decode;
  }

  /** The encoded bytes of update `hash`, if held. */
  updateBytes(hash: string): Uint8Array | undefined {
    const e = this.entries.get(hash);
    return e?.decode ? (e.bytes ?? undefined) : undefined;
  }

  /** Whether update `hash`'s payload is held (fetched and checked, or this peer's own). */
  hasUpdate(hash: string): boolean {
    return this.entries.get(hash)?.decode !== undefined;
  }

  /** The decoded Δ of update `hash` (a fresh array, not kept), if held. */
  delta(hash: string): Float32Array | undefined {
    return this.entries.get(hash)?.decode?.();
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
    if (!e.bytes && !e.decode && !e.file) this.entries.delete(hash);
  }

  /** Every held update of round `round`, in insertion order: its message, and its Δ decoded when `delta` is read. */
  *heldUpdates(round: number): Generator<{ hash: string; msg: UpdateMsg; readonly delta: Float32Array }> {
    for (const [hash, e] of this.entries) {
      const decode = e.decode;
      if (e.msg && decode && e.msg.round === round)
        yield {
          hash,
          msg: e.msg,
          get delta() {
            return decode();
          },
        };
    }
  }

  /** Drops every entry more than its keepRounds behind `round`. */
  prune(round: number): void {
    for (const [h, e] of this.entries)
      if (e.round < round - e.keepRounds) {
        if (e.file) rmSync(e.file, { force: true });
        this.entries.delete(h);
      }
  }
}
