/**
 * Fetching update payloads: an announced update's bytes are downloaded by sha256 from its author
 * (or from the peers a commit names), capped at the codec's exact size for P parameters, decoded
 * with the run's codec (chunk and k from the manifest, never from the payload) and checked finite before they enter the payload store. A payload that does
 * not hash to its name, is too large, or does not decode is dropped and fetched elsewhere, up to
 * 3 passes; one fetch per hash at a time.
 *
 * Where to ask (issue 16, peers behind NATs): a payload is content-addressed, so any peer that
 * holds it can serve it, and the bytes are checked against the hash whoever sends them. Each pass
 * asks, in order: the named candidates (the author, a commit's leader and acceptors) we hold a
 * direct connection to; then up to EXTRA_HOLDERS other directly connected peers (a public peer
 * fetched the update from its NATed author first, and serves it on); then the named candidates
 * reachable only through a relay. Two home peers behind NATs, which only reach each other
 * through a relay (or not at all), thus get each other's updates from the public peers both are
 * connected to; the relay is the last resort, not the first. A peer whose fetch timed out or
 * whose stream did not open is asked last for SUSPECT_MS (a dead link under an open connection).
 */
import type { Logger } from 'pino';
import { AbortedError, HashMismatchError, HostError, TooLargeError, fetchBulk, type Host } from '../net/index.js';
import { DecodeError, type Codec, type SparseCodec } from '../swarm/compress/index.js';
import { InvalidInputError } from '../util/errors.js';
import type { RoundState, UpdateMsg } from '../swarm/round.js';
import { EarlyUpdates, RateCap, type Senders } from './admission.js';
import { transferDeadlineMs } from './deadlines.js';
import type { PayloadStore } from './payloads.js';

/** Passes over the candidate peers, the pause between passes, and the limit on one download. */
const PASSES = 3;
const PASS_PAUSE_MS = 300;
/** A payload fetch's deadline at toy sizes; larger payloads get more (deadlines.ts). */
const FETCH_MS = 5000;
/** Directly connected peers asked for a payload besides the named candidates (a NotFound is cheap). */
const EXTRA_HOLDERS = 8;

/**
 * The order in which to ask for a payload: named candidates with a direct connection, other
 * directly connected peers (at most `extra`), then named candidates without one (relayed or not
 * connected). `self` and `skip` are left out.
 */
export function fetchOrder(
  named: readonly string[],
  conns: readonly { peer: string; relayed: boolean }[],
  self: string,
  skip: ReadonlySet<string> = new Set(),
  extra = EXTRA_HOLDERS,
  demote: ReadonlySet<string> = new Set(),
): string[] {
  const direct = new Set(conns.filter((c) => !c.relayed).map((c) => c.peer));
  const ok = (p: string) => p !== self && !skip.has(p);
  const names = [...new Set(named)].filter(ok);
  const others = [...direct].filter((p) => ok(p) && !names.includes(p)).slice(0, extra);
  const order = [...names.filter((p) => direct.has(p)), ...others, ...names.filter((p) => !direct.has(p))];
  // Peers whose last fetch timed out or could not be reached go last: a connection to a peer
  // whose link went down stays open until libp2p's monitor notices, and each fetch over it
  // waits its whole limit (in the NAT lab a home peer lost rounds to that).
  return [...order.filter((p) => !demote.has(p)), ...order.filter((p) => demote.has(p))];
}

/** How long a peer whose fetch timed out (or whose stream could not be opened) is asked last. */
const SUSPECT_MS = 30_000;

export interface UpdateFetcherDeps {
  host: Host;
  codec: Codec;
  params: number;
  payloads: PayloadStore;
  /** Emulated one-way link delay (each download finishes 2× this later). */
  linkDelayMs: number;
  /** The payload of `hash` is held and decoded. */
  deliver: (hash: string, round: number, author: string) => void;
  stopped: () => boolean;
  logger: Logger;
}

export class UpdateFetcher {
  private readonly fetching = new Set<string>();
  /** peer → until when it is asked last (its fetch timed out or its stream did not open). */
  private readonly suspect = new Map<string, number>();

  constructor(private readonly d: UpdateFetcherDeps) {}

  /** Peers asked last now (at most 256 remembered; expired ones dropped). */
  private demoted(): Set<string> {
    const now = Date.now();
    for (const [p, until] of this.suspect) if (until <= now || this.suspect.size > 256) this.suspect.delete(p);
    return new Set(this.suspect.keys());
  }

  async fetch(hash: string, from: string[], round: number, author: string): Promise<void> {
    const { payloads, logger } = this.d;
    if (payloads.hasUpdate(hash)) {
      this.d.deliver(hash, round, author);
      return;
    }
    if (this.fetching.has(hash)) return;
    this.fetching.add(hash);
    try {
      const P = this.d.params;
      // Every codec's size is exact for P parameters (the run's codec parameters, not the sender's).
      const max = this.d.codec.encodedSize(P);
      // A peer that served bad bytes (wrong hash, size or encoding) is not asked again for this hash.
      const liars = new Set<string>();
      for (let attempt = 0; attempt < PASSES && !this.d.stopped(); attempt++) {
        const peers = fetchOrder(
          from,
          this.d.host.connections(),
          this.d.host.peerId,
          liars,
          EXTRA_HOLDERS,
          this.demoted(),
        );
        if (peers.length === 0) break;
        for (const peer of peers) {
          try {
            const bytes = await fetchBulk(this.d.host, peer, hash, {
              maxBytes: max,
              signal: AbortSignal.timeout(transferDeadlineMs(max, FETCH_MS)),
            });
            if (this.d.linkDelayMs > 0) await new Promise((r) => setTimeout(r, 2 * this.d.linkDelayMs)); // request + response
            if (bytes.length !== max)
              throw new DecodeError(`payload of ${bytes.length} bytes, the run's codec makes ${max}`);
            // The decode check (a sparse payload's entries only: no n-float array for it).
            const c = this.d.codec;
            const vals = c.id === 'sparse' ? (c as SparseCodec).entries(bytes, P).val : c.decode(bytes, P);
            for (let i = 0; i < vals.length; i++)
              if (!Number.isFinite(vals[i])) throw new InvalidInputError('non-finite Δ');
            this.suspect.delete(peer);
            payloads.putUpdate(hash, bytes, round, () => this.d.codec.decode(bytes, P));
            this.d.deliver(hash, round, author);
            return;
          } catch (err) {
            // Network failures (peer gone, stream reset) are routine and only logged at debug.
            const bad =
              err instanceof HashMismatchError ||
              err instanceof TooLargeError ||
              err instanceof InvalidInputError ||
              err instanceof DecodeError;
            if (bad) liars.add(peer);
            if (err instanceof AbortedError || err instanceof HostError)
              this.suspect.set(peer, Date.now() + SUSPECT_MS);
            if (bad)
              logger.warn(
                { reason: 'bad-payload', detail: (err as Error).message, from: peer, update: hash, round },
                'rejected update payload',
              );
            else
              logger.debug({ detail: (err as Error).message, from: peer, update: hash, round }, 'update fetch failed');
          }
        }
        await new Promise((r) => setTimeout(r, PASS_PAUSE_MS));
      }
      if (!payloads.hasUpdate(hash)) payloads.forgetMsg(hash); // never fetched: forget the claim
    } finally {
      this.fetching.delete(hash);
    }
  }
}

/**
 * Update payloads fetched per author per round from gossip: at most this many attempts, and none
 * once one of the author's updates for the round is held (the reducer keeps one per member; a
 * second one is only needed if a commit names it, and the commit's fetch effect gets it).
 */
const FETCHES_PER_AUTHOR = 8;

export interface UpdateIntakeDeps {
  senders: Senders;
  state: () => RoundState;
  payloads: PayloadStore;
  fetcher: UpdateFetcher;
  /** Hands an update message to the reducer. */
  toReducer: (msg: UpdateMsg) => void;
  stopped: () => boolean;
  logger: Logger;
}

/**
 * Which announced updates are worth a download. A payload is fetched and decoded only if the
 * reducer could accept it: a member of this round, or for round r+1 a member or a join of the
 * decided/pending commit (at most FETCHES_PER_AUTHOR payloads per author and round). Other
 * round-r+1 updates, and every update heard while not synced, are held as messages only
 * (EarlyUpdates, bounded) and looked at again when the round or the sync state moves;
 * everything else goes straight to the reducer, which rejects it with its reason, and costs no
 * download.
 */
export class UpdateIntake {
  private readonly early = new EarlyUpdates();
  private readonly fetchCap = new RateCap(FETCHES_PER_AUTHOR);
  private revisitScheduled = false;

  constructor(private readonly d: UpdateIntakeDeps) {}

  onUpdate(msg: UpdateMsg, revisit = false): void {
    const { senders, payloads, logger } = this.d;
    const st = this.d.state();
    if (!senders.synced()) {
      this.early.hold(msg);
      // The reducer rejects it 'not-synced' (and learns a sync source); a revisit only re-holds it.
      if (!revisit) this.d.toReducer(msg);
      return;
    }
    if (
      msg.round < st.round ||
      msg.round > st.round + 1 ||
      (msg.round === st.round && !senders.mayTrain(msg.from, st.round))
    ) {
      this.d.toReducer(msg);
      return;
    }
    if (msg.round === st.round + 1 && !senders.mayTrain(msg.from, msg.round)) {
      if (!this.early.hold(msg))
        logger.debug({ reason: 'early-full', from: msg.from, round: msg.round }, 'dropped early update');
      return;
    }
    if (payloads.hasUpdate(msg.updateHash)) {
      payloads.noteMsg(msg);
      this.d.toReducer(msg);
      return;
    }
    const holdsOne = [...payloads.heldUpdates(msg.round)].some((u) => u.msg.from === msg.from);
    if (holdsOne || !this.fetchCap.take(st.round, `${msg.round}:${msg.from}`)) {
      logger.warn(
        { reason: 'fetch-cap', from: msg.from, round: msg.round },
        'dropped update: too many from this author',
      );
      return;
    }
    payloads.noteMsg(msg);
    void this.d.fetcher.fetch(msg.updateHash, [msg.from], msg.round, msg.from);
  }

  /**
   * The reducer's state went from `was` to `next`: if the round, the sync state, the decision or
   * the pending commit moved, held early updates are looked at again — later, not now (this runs
   * inside a reducer step), and once however many steps ask for it.
   */
  stateMoved(was: RoundState, next: RoundState): void {
    if (this.early.size === 0 || this.revisitScheduled) return;
    const synced = (s: RoundState) => s.phase !== 'unsynced' && s.phase !== 'syncing';
    const moved =
      next.round !== was.round ||
      synced(next) !== synced(was) ||
      next.decision?.commitHash !== was.decision?.commitHash ||
      next.pending !== was.pending;
    if (!moved) return;
    this.revisitScheduled = true;
    setImmediate(() => {
      this.revisitScheduled = false;
      this.revisit();
    });
  }

  /** Early updates that became fetchable are fetched, stale ones dropped. */
  private revisit(): void {
    if (this.d.stopped() || this.early.size === 0) return;
    for (const m of this.early.drain()) {
      if (this.d.senders.synced() && m.round < this.d.state().round) continue;
      this.onUpdate(m, true);
    }
  }
}
