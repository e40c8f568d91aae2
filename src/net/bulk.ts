/**
 * Bulk object transfer (tensors, checkpoints, pseudo-gradients) on direct libp2p streams,
 * protocol `/tessera/bulk/1.0.0`. Never gossipsub.
 *
 * One stream per request. The requester opens a stream, sends a fixed 42-byte request and
 * half-closes its side:
 *
 *   request  = v:u8=1 | op:u8=1 (GET) | sha256:32 bytes | maxBytes:u64
 *   response = status:u8 | size:u64 | size bytes of body (when status = OK)
 *
 * status: 0 OK, 1 NOT_FOUND, 2 TOO_LARGE (size = the object's size), 3 BAD_REQUEST,
 * 4 SERVER_ERROR. The server streams the body in chunks and waits for 'drain' whenever
 * the stream is full (backpressure end to end: yamux windows, then the TCP socket). The
 * requester refuses a size above its own cap before allocating, writes each chunk straight
 * into one preallocated buffer while hashing it incrementally (no second copy of the
 * object), and resolves only when exactly `size` bytes arrived and their sha256 equals the
 * requested hash. Everything takes an AbortSignal; a timeout aborts the stream.
 *
 * Relayed connections (issue 16): a peer behind a NAT is reached through a circuit relay, and
 * libp2p marks such connections `limited`. Both the handler and the requester opt in with
 * `runOnLimitedConnection`, so bulk objects travel over relays; a requester refuses, before
 * the body, an object larger than what is left of the relayed connection's data limit (libp2p
 * tracks it in `connection.limits.bytes`; RelayLimitError: the
 * relay would cut it mid-way), so the caller asks another peer instead. A direct connection
 * (hole-punched or not) is used whenever one exists: dialling by peer id reuses it.
 */
import { createHash } from 'node:crypto';
import type { AbortOptions, Connection, PeerId, Stream } from '@libp2p/interface';
import type { Multiaddr } from '@multiformats/multiaddr';
import { InvalidInputError } from '../util/errors.js';
import {
  AbortedError,
  HashMismatchError,
  HostError,
  NotFoundError,
  ProtocolError,
  RelayLimitError,
  TooLargeError,
  abortedError,
} from './errors.js';
import { raceAbort, type Host } from './host.js';
import { consume, readExactly, sendAll } from './stream-io.js';

export const BULK_PROTOCOL = '/tessera/bulk/1.0.0';
const VERSION = 1;
const OP_GET = 1;
const REQUEST_LENGTH = 42;
const HEADER_LENGTH = 9;
const HASH_RE = /^[0-9a-f]{64}$/;

export enum BulkStatus {
  Ok = 0,
  NotFound = 1,
  TooLarge = 2,
  BadRequest = 3,
  ServerError = 4,
}

/**
 * Lower-case hex sha256 of `bytes`: the content address of bulk objects. Defined in
 * util/hash-node.ts; re-exported under this name for existing importers.
 */

/** Looks an object up by hash; `signal` aborts when the requester goes away or time runs out. */
export type BulkGetter = (
  hash: string,
  ctx: { peer: string; signal: AbortSignal },
) => Uint8Array | undefined | Promise<Uint8Array | undefined>;

export interface BulkServerOptions {
  /** Bytes per send() call. Default 256 KiB. */
  chunkSize?: number;
  /** Most bytes queued in a stream before the server waits for it to drain. Default 1 MiB. */
  highWaterMark?: number;
  /** How long a requester has to send its request. Default 10 s. */
  requestTimeoutMs?: number;
  /** How long serving one object may take. Default 10 min. */
  transferTimeoutMs?: number;
  /** Concurrent bulk streams per connection. Default 16. */
  maxInboundStreams?: number;
}

export interface BulkServer {
  /** Stops serving (in-flight transfers finish). */
  close(options?: AbortOptions): Promise<void>;
}

export interface FetchOptions extends AbortOptions {
  /** Largest object accepted, in bytes. Required: a peer must not make us allocate at will. */
  maxBytes: number;
}

export interface FetchStats {
  bytes: number;
  ms: number;
  /** Payload megabytes (1e6 bytes) per second. */
  mbPerSec: number;
}

/** Serves objects by content hash on BULK_PROTOCOL. */
export async function serveBulk(host: Host, getter: BulkGetter, options: BulkServerOptions = {}): Promise<BulkServer> {
  const chunkSize = options.chunkSize ?? 256 * 1024;
  const highWaterMark = options.highWaterMark ?? 1024 * 1024;
  const requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
  const transferTimeoutMs = options.transferTimeoutMs ?? 600_000;
  const log = host.log.child({ protocol: BULK_PROTOCOL });
  const metrics = host.metrics;

  const handler = async (stream: Stream, connection: Pick<Connection, 'remotePeer' | 'limits'>): Promise<void> => {
    const peer = connection.remotePeer.toString();
    const respond = async (status: BulkStatus, size: number, signal: AbortSignal): Promise<void> => {
      const header = new Uint8Array(HEADER_LENGTH);
      header[0] = status;
      new DataView(header.buffer).setBigUint64(1, BigInt(size));
      await sendAll(stream, header, { signal });
    };
    let hash = '';
    // Everything below stops when the transfer times out or the stream goes away (e.g. the
    // requester gave up): a slow getter or a full stream must not pin this handler.
    const gone = new AbortController();
    const onClose = (): void => gone.abort(new ProtocolError('stream closed'));
    stream.addEventListener('close', onClose, { once: true });
    const signal = AbortSignal.any([AbortSignal.timeout(transferTimeoutMs), gone.signal]);
    try {
      const req = await readExactly(stream, REQUEST_LENGTH, {
        signal: AbortSignal.any([AbortSignal.timeout(requestTimeoutMs), gone.signal]),
      });
      if (req[0] !== VERSION || req[1] !== OP_GET) {
        metrics.increment('bulk.badRequest');
        await respond(BulkStatus.BadRequest, 0, signal);
        await stream.close({ signal });
        return;
      }
      hash = Buffer.from(req.subarray(2, 34)).toString('hex');
      const maxBytes = new DataView(req.buffer, req.byteOffset).getBigUint64(34);
      let data: Uint8Array | undefined;
      try {
        data = await raceAbort(Promise.resolve(getter(hash, { peer, signal })), signal, `bulk getter for ${hash}`);
      } catch (err) {
        if (signal.aborted) throw err;
        log.error({ err, hash, peer }, 'bulk getter failed');
        metrics.increment('bulk.serverError');
        await respond(BulkStatus.ServerError, 0, signal);
        await stream.close({ signal });
        return;
      }
      if (data == null) {
        metrics.increment('bulk.notFound');
        await respond(BulkStatus.NotFound, 0, signal);
      } else if (BigInt(data.byteLength) > maxBytes) {
        metrics.increment('bulk.tooLarge');
        await respond(BulkStatus.TooLarge, data.byteLength, signal);
      } else {
        await respond(BulkStatus.Ok, data.byteLength, signal);
        await sendAll(stream, data, { signal, chunkSize, highWaterMark });
        metrics.increment('bulk.served');
        metrics.increment('bulk.servedBytes', data.byteLength);
        if (connection.limits != null) metrics.increment('bulk.servedRelayedBytes', data.byteLength);
      }
      await stream.close({ signal });
    } catch (err) {
      log.warn({ err: (err as Error).message, hash, peer }, 'bulk request failed');
      stream.abort(err as Error);
    } finally {
      stream.removeEventListener('close', onClose);
    }
  };

  // Who may call it: any connected peer, directly or through a relay (runOnLimitedConnection).
  // Cost: a lookup by hash and the object's bytes. Cap: maxInboundStreams streams per
  // connection, a 42-byte request within requestTimeoutMs, each transfer within
  // transferTimeoutMs, and only objects the getter chooses to serve; a relayed connection is
  // further cut by the relay's own limits.
  await host.node.handle(BULK_PROTOCOL, handler, {
    maxInboundStreams: options.maxInboundStreams ?? 16,
    runOnLimitedConnection: true,
  });
  return {
    async close(opts = {}) {
      await host.node.unhandle(BULK_PROTOCOL, opts);
    },
  };
}

/**
 * Fetches the object with sha256 `hash` from `peer` (peer id string, multiaddr or PeerId).
 * Resolves to exactly the bytes whose sha256 is `hash`. Throws NotFoundError,
 * TooLargeError, HashMismatchError, ProtocolError, HostError (dial) or AbortedError.
 */
export async function fetchBulk(
  host: Host,
  peer: string | Multiaddr | PeerId,
  hash: string,
  options: FetchOptions,
): Promise<Uint8Array> {
  return (await fetchBulkWithStats(host, peer, hash, options)).data;
}

/** fetchBulk, plus how long it took. */
export async function fetchBulkWithStats(
  host: Host,
  peer: string | Multiaddr | PeerId,
  hash: string,
  options: FetchOptions,
): Promise<{ data: Uint8Array; stats: FetchStats }> {
  const { signal, maxBytes } = options;
  if (typeof hash !== 'string' || !HASH_RE.test(hash))
    throw new InvalidInputError(`not a lower-case sha256 hex: ${hash}`);
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new InvalidInputError(`invalid maxBytes ${maxBytes}`);
  signal?.throwIfAborted();
  const t0 = performance.now();

  let stream: Stream;
  let conn: Connection;
  try {
    // An existing connection is reused (a direct one first); else a new one, through a relay
    // if that is the only way to reach the peer (Host.connect).
    conn = await host.connect(peer, { signal });
    stream = await conn.newStream(BULK_PROTOCOL, { signal, runOnLimitedConnection: true });
  } catch (err) {
    if (signal?.aborted === true) throw abortedError(`fetch ${hash}`, signal);
    throw new HostError(`cannot open ${BULK_PROTOCOL} stream to ${String(peer)}: ${(err as Error).message}`, {
      cause: err,
    });
  }

  try {
    const limit = conn.limits?.bytes;
    const received = receiveObject(stream, hash, maxBytes, signal, limit == null ? undefined : Number(limit));
    received.catch(() => undefined); // awaited below; may settle before we get there
    const req = new Uint8Array(REQUEST_LENGTH);
    req[0] = VERSION;
    req[1] = OP_GET;
    req.set(Buffer.from(hash, 'hex'), 2);
    new DataView(req.buffer).setBigUint64(34, BigInt(maxBytes));
    stream.send(req);
    // Half-close: that was our whole request. Not awaited: the response decides the outcome.
    stream.close({ signal }).catch(() => undefined);
    const data = await received;
    const ms = performance.now() - t0;
    host.metrics.increment('bulk.fetched');
    host.metrics.increment('bulk.fetchedBytes', data.byteLength);
    if (conn.limits != null) host.metrics.increment('bulk.fetchedRelayedBytes', data.byteLength);
    return { data, stats: { bytes: data.byteLength, ms, mbPerSec: data.byteLength / 1e6 / (ms / 1e3) } };
  } catch (err) {
    stream.abort(err as Error);
    if (signal?.aborted === true && !(err instanceof AbortedError)) throw abortedError(`fetch ${hash}`, signal);
    throw err;
  }
}

/** Reads the response header and body off `stream`, verifying size and hash. */
function receiveObject(
  stream: Stream,
  hash: string,
  maxBytes: number,
  signal: AbortSignal | undefined,
  relayLimit?: number,
): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const header = new Uint8Array(HEADER_LENGTH);
    let headerHave = 0;
    let body: Uint8Array | undefined;
    let size = 0;
    let have = 0;
    const hasher = createHash('sha256');

    const complete = (): void => {
      const actual = hasher.digest('hex');
      if (actual !== hash) reject(new HashMismatchError(hash, actual));
      else resolve(body!);
    };

    const onHeader = (): boolean => {
      const status = header[0];
      const big = new DataView(header.buffer).getBigUint64(1);
      if (status === BulkStatus.NotFound) throw new NotFoundError(hash, `peer has no object ${hash}`);
      if (status === BulkStatus.TooLarge) throw new TooLargeError(Number(big), maxBytes);
      if (status === BulkStatus.BadRequest) throw new ProtocolError('peer rejected our bulk request as malformed');
      if (status === BulkStatus.ServerError) throw new ProtocolError('peer failed to read the object');
      if (status !== BulkStatus.Ok) throw new ProtocolError(`unknown bulk status ${status}`);
      if (big > BigInt(maxBytes)) throw new TooLargeError(Number(big), maxBytes, 'announced object');
      if (relayLimit != null && big + BigInt(HEADER_LENGTH) > BigInt(relayLimit))
        throw new RelayLimitError(Number(big), relayLimit);
      size = Number(big);
      // allocUnsafe: every byte is overwritten before the buffer is returned.
      const buf = Buffer.allocUnsafeSlow(size);
      body = new Uint8Array(buf.buffer, buf.byteOffset, size);
      if (size === 0) {
        complete();
        return true;
      }
      return false;
    };

    consume(
      stream,
      {
        onData(p) {
          let off = 0;
          if (body == null) {
            const take = Math.min(HEADER_LENGTH - headerHave, p.byteLength);
            header.set(p.subarray(0, take), headerHave);
            headerHave += take;
            off = take;
            if (headerHave < HEADER_LENGTH) return undefined;
            if (onHeader()) {
              if (off < p.byteLength) throw new ProtocolError('bytes after an empty object');
              return off;
            }
          }
          const n = p.byteLength - off;
          if (n === 0) return undefined;
          if (have + n > size) throw new ProtocolError(`peer sent more than the announced ${size} bytes`);
          const piece = off === 0 ? p : p.subarray(off);
          body!.set(piece, have);
          hasher.update(piece);
          have += n;
          if (have === size) {
            complete();
            return p.byteLength;
          }
          return undefined;
        },
        onEnd() {
          if (body == null) reject(new ProtocolError(`stream ended inside the response header (${headerHave} bytes)`));
          else reject(new ProtocolError(`stream ended after ${have} of ${size} bytes`));
        },
        onError: reject,
      },
      { signal },
    );
  });
}
