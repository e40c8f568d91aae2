/**
 * Typed errors of the network driver. Everything thrown on purpose by src/net extends
 * TesseraError, so the swarm can tell an expected network failure (a peer sent garbage,
 * an object is missing, a timeout) from a bug.
 */
import { TesseraError } from '../util/errors.js';

/** Why an envelope was rejected. Stable strings: they are logged and counted. */
export type EnvelopeRejectReason =
  | 'oversized' // more bytes than the cap, checked before any parsing
  | 'malformed' // not a well-formed frame (bad magic/version, truncated, trailing bytes, bad JSON)
  | 'unsigned' // a well-formed frame that carries no signature
  | 'bad-signature' // the signature does not verify against the key embedded in `from`
  | 'bad-sender' // `from` is not an ed25519 peer id, or is not the expected sender
  | 'unknown-kind' // no schema is registered for this kind
  | 'schema' // the body fails its zod schema
  | 'replay'; // seen before, or too old for the replay window

/** An envelope (signed protocol message) was rejected. Nothing in it was used. */
export class EnvelopeError extends TesseraError {
  readonly reason: EnvelopeRejectReason;
  constructor(reason: EnvelopeRejectReason, message: string, options?: { cause?: unknown }) {
    super('ENVELOPE_REJECTED', `${reason}: ${message}`, options);
    this.reason = reason;
  }
}

/** The remote peer does not have the requested object. */
export class NotFoundError extends TesseraError {
  readonly hash: string;
  constructor(hash: string, message?: string) {
    super('NOT_FOUND', message ?? `object ${hash} not found`);
    this.hash = hash;
  }
}

/** Received bytes do not hash to the requested content hash. They were discarded. */
export class HashMismatchError extends TesseraError {
  readonly expected: string;
  readonly actual: string;
  constructor(expected: string, actual: string) {
    super('HASH_MISMATCH', `expected sha256 ${expected}, received ${actual}`);
    this.expected = expected;
    this.actual = actual;
  }
}

/** An object is larger than the cap the requester allowed. */
export class TooLargeError extends TesseraError {
  readonly size: number;
  readonly limit: number;
  constructor(size: number, limit: number, what = 'object') {
    super('TOO_LARGE', `${what} of ${size} bytes exceeds the limit of ${limit} bytes`);
    this.size = size;
    this.limit = limit;
  }
}

/** The remote peer broke the wire protocol (bad header, truncated body, extra bytes...). */
export class ProtocolError extends TesseraError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('PROTOCOL_ERROR', message, options);
  }
}

/** An operation was aborted by its AbortSignal (a timeout, or the caller gave up). */
export class AbortedError extends TesseraError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ABORTED', message, options);
  }
}

/** The libp2p host could not be created, started or used (bad multiaddr, dial failed...). */
export class HostError extends TesseraError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('HOST_ERROR', message, options);
  }
}

/**
 * An object does not fit the limits of the relayed connection it would travel on (a circuit
 * relay cuts a connection after its data limit). Fetch it from another peer, or directly.
 */
export class RelayLimitError extends TesseraError {
  readonly size: number;
  readonly limit: number;
  constructor(size: number, limit: number) {
    super(
      'RELAY_LIMIT',
      `object of ${size} bytes exceeds the ${limit} bytes left on the relayed connection's data limit`,
    );
    this.size = size;
    this.limit = limit;
  }
}

/** Wraps `signal.reason` into an AbortedError, keeping the original as the cause. */
export function abortedError(what: string, signal: AbortSignal): AbortedError {
  const reason: unknown = signal.reason;
  const why = reason instanceof Error ? `${reason.name}: ${reason.message}` : String(reason);
  return new AbortedError(`${what} aborted (${why})`, { cause: reason });
}
