/**
 * Fetching update payloads: an announced update's bytes are downloaded by sha256 from its author
 * (or from the peers a commit names), capped at the codec's exact size for P parameters, decoded
 * with the run's codec (chunk and k from the manifest, never from the payload) and checked finite before they enter the payload store. A payload that does
 * not hash to its name, is too large, or does not decode is dropped and fetched elsewhere, up to
 * 3 passes; one fetch per hash at a time.
 */
import type { Logger } from 'pino';
import { HashMismatchError, TooLargeError, fetchBulk, type Host } from '../net/index.js';
import { DecodeError, type Codec } from '../swarm/compress/index.js';
import { InvalidInputError } from '../util/errors.js';
import type { PayloadStore } from './payloads.js';

/** Passes over the candidate peers, the pause between passes, and the limit on one download. */
const PASSES = 3;
const PASS_PAUSE_MS = 300;
const FETCH_MS = 5000;

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

  constructor(private readonly d: UpdateFetcherDeps) {}

  async fetch(hash: string, from: string[], round: number, author: string): Promise<void> {
    const { payloads, logger } = this.d;
    if (payloads.delta(hash)) {
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
        const peers = [...new Set(from)].filter((p) => p !== this.d.host.peerId && !liars.has(p));
        if (peers.length === 0) break;
        for (const peer of peers) {
          try {
            const bytes = await fetchBulk(this.d.host, peer, hash, {
              maxBytes: max,
              signal: AbortSignal.timeout(FETCH_MS),
            });
            if (this.d.linkDelayMs > 0) await new Promise((r) => setTimeout(r, 2 * this.d.linkDelayMs)); // request + response
            if (bytes.length !== max)
              throw new DecodeError(`payload of ${bytes.length} bytes, the run's codec makes ${max}`);
            const delta = this.d.codec.decode(bytes, P);
            if (!delta.every(Number.isFinite)) throw new InvalidInputError('non-finite Δ');
            payloads.putUpdate(hash, bytes, round, delta);
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
      if (!payloads.delta(hash)) payloads.forgetMsg(hash); // never fetched: forget the claim
    } finally {
      this.fetching.delete(hash);
    }
  }
}
