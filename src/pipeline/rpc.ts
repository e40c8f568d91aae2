/**
 * The wire framing of pipeline stage calls (`/tessera/stage/1.0.0`), one request/response per
 * libp2p stream:
 *
 *   request  = u32 head length | JSON head | u32 body length | body
 *   response = u8 status (0 ok, 1 refused, 2 unavailable) | u32 head length | JSON head | u32 body length | body
 *
 * "Refused" means the call was wrong (the caller's bug); "unavailable" means the peer is alive
 * but does not serve that stage now (it is syncing, or it moved to another stage): the caller
 * treats it like a dead replica and routes elsewhere.
 *
 * Heads are size-capped (64 KiB) and zod-checked (stage-protocol.ts); bodies are capped per call
 * before any allocation. Every call takes an AbortSignal. The framing works on any byte reader,
 * so a stage service can be called in memory (memory-transport.ts) with exactly these bytes.
 */
import type { AbortOptions, PeerId, Stream } from '@libp2p/interface';
import { TesseraError } from '../util/errors.js';
import { toDialTarget, type Host } from '../net/host.js';
import { readExactly, sendAll } from '../net/stream-io.js';
import { MAX_HEAD } from './stage-protocol.js';

export const STAGE_PROTOCOL = '/tessera/stage/1.0.0';

/** A stage call failed: the peer refused it (with its reason), or the stream broke. */
export class StageCallError extends TesseraError {
  /** True when the peer answered with a refusal (bad input): the peer is alive, the call was wrong. */
  readonly refused: boolean;
  constructor(message: string, options?: { cause?: unknown; refused?: boolean }) {
    super('STAGE_CALL', message, options);
    this.refused = options?.refused ?? false;
  }
}

/** Thrown by a stage handler that cannot serve the call now; the caller sees a non-refusal. */
export class StageUnavailableError extends TesseraError {
  constructor(message: string) {
    super('STAGE_UNAVAILABLE', message);
  }
}

/** Reads exactly n bytes (from a stream, or from a buffer in memory). */
export type ReadBytes = (n: number) => Promise<Uint8Array>;

function frame(parts: Uint8Array[]): Uint8Array {
  const n = parts.reduce((t, p) => t + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
const u32 = (n: number): Uint8Array => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n, true);
  return b;
};
const readU32 = async (read: ReadBytes): Promise<number> => new DataView((await read(4)).buffer).getUint32(0, true);

async function readPart(read: ReadBytes, max: number, what: string): Promise<Uint8Array> {
  const n = await readU32(read);
  if (n > max) throw new StageCallError(`${what} of ${n} bytes exceeds the limit of ${max}`);
  return await read(n);
}

export interface Reply {
  head: unknown;
  body: Uint8Array;
  bytesIn: number;
  bytesOut: number;
}

/** A request's bytes on the wire. */
export function encodeRequest(head: unknown, body: Uint8Array): Uint8Array {
  const h = new TextEncoder().encode(JSON.stringify(head));
  return frame([u32(h.length), h, u32(body.length), body]);
}

/**
 * Reads a response (`maxBody` caps its body); a refusal or an unavailable answer throws
 * StageCallError. `sent` is the request's length, for the byte counts.
 */
export async function readReply(read: ReadBytes, maxBody: number, sent: number): Promise<Reply> {
  const status = (await read(1))[0];
  const rh = await readPart(read, MAX_HEAD, 'reply head');
  const rb = await readPart(read, maxBody, 'reply body');
  const parsed = JSON.parse(new TextDecoder().decode(rh)) as unknown;
  const reason = (dflt: string) => (parsed as { error?: string }).error ?? dflt;
  if (status === 2) throw new StageCallError(`stage peer unavailable: ${reason('unknown')}`);
  if (status !== 0) throw new StageCallError(`stage peer refused: ${reason('unknown error')}`, { refused: true });
  return { head: parsed, body: rb, bytesIn: 1 + 8 + rh.length + rb.length, bytesOut: sent };
}

/** Reads a stream's bytes, each read bounded by the signal. */
export const streamReader =
  (s: Stream, o: AbortOptions): ReadBytes =>
  (n) =>
    readExactly(s, n, o);

/** Calls `peer`: sends (head, body), returns its reply. `maxBody` caps the reply body. */
export async function callStage(
  host: Host,
  peer: string | PeerId,
  head: unknown,
  body: Uint8Array,
  o: AbortOptions & { maxBody: number },
): Promise<Reply> {
  let stream: Stream;
  try {
    stream = await host.node.dialProtocol(toDialTarget(peer), STAGE_PROTOCOL, { signal: o.signal });
  } catch (err) {
    throw new StageCallError(`cannot reach stage peer ${String(peer)}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const req = encodeRequest(head, body);
    await sendAll(stream, req, { signal: o.signal });
    stream.close({ signal: o.signal }).catch(() => undefined);
    return await readReply(streamReader(stream, o), o.maxBody, req.length);
  } catch (err) {
    stream.abort(err as Error);
    if (err instanceof StageCallError) throw err;
    throw new StageCallError(`stage call failed: ${(err as Error).message}`, { cause: err });
  }
}

/** The largest request body `from` may send with this (unchecked) head. */
export type BodyCap = (head: unknown, from: string) => number;

export type StageHandler = (
  head: unknown,
  body: Uint8Array,
  from: string,
) => Promise<{ head: unknown; body?: Uint8Array }>;

/**
 * Serves one request read from `read` (`maxBody` caps its body): the response's bytes. A handler
 * error becomes an error reply carrying its message; a framing error (a cap exceeded, a short
 * read) throws, and the binding drops the stream.
 */
export async function answer(
  read: ReadBytes,
  handler: StageHandler,
  from: string,
  maxBody: number,
  bodyCap?: BodyCap,
): Promise<Uint8Array> {
  const hb = await readPart(read, MAX_HEAD, 'request head');
  let parsed: unknown = undefined;
  try {
    parsed = JSON.parse(new TextDecoder().decode(hb)) as unknown;
  } catch {
    /* the handler refuses it */
  }
  // A caller's body cap is decided from its head and identity before the body is read (an
  // unadmitted caller gets 0: it cannot make the peer buffer a large body).
  const cap = bodyCap ? Math.min(maxBody, bodyCap(parsed, from)) : maxBody;
  const n = await readU32(read);
  if (n > maxBody) throw new StageCallError(`request body of ${n} bytes exceeds the limit of ${maxBody}`);
  let body: Uint8Array;
  if (n <= cap) body = await read(n);
  else {
    // Over this caller's cap: drained in small reads (never held), so the refusal still reaches it.
    for (let left = n; left > 0; left -= Math.min(left, 65536)) await read(Math.min(left, 65536));
    body = new Uint8Array(0);
  }
  let status = 0,
    head: unknown,
    out: Uint8Array = new Uint8Array(0);
  try {
    if (parsed === undefined) throw new Error('request head is not JSON');
    const r = await handler(parsed, body, from);
    head = r.head;
    out = r.body ?? out;
  } catch (err) {
    status = err instanceof StageUnavailableError ? 2 : 1;
    head = { error: (err as Error).message.slice(0, 500) };
  }
  const h = new TextEncoder().encode(JSON.stringify(head));
  return frame([new Uint8Array([status]), u32(h.length), h, u32(out.length), out]);
}

/** Serves stage calls on `host` (the libp2p binding of a stage service). */
export async function serveStageRpc(
  host: Host,
  handler: StageHandler,
  o: { maxBody: number; timeoutMs?: number; bodyCap?: BodyCap },
): Promise<{ close(): Promise<void> }> {
  await host.node.handle(
    STAGE_PROTOCOL,
    async (stream: Stream, connection: { remotePeer: PeerId }) => {
      const signal = AbortSignal.timeout(o.timeoutMs ?? 120_000);
      try {
        const res = await answer(
          streamReader(stream, { signal }),
          handler,
          connection.remotePeer.toString(),
          o.maxBody,
          o.bodyCap,
        );
        await sendAll(stream, res, { signal });
        await stream.close({ signal });
      } catch (err) {
        stream.abort(err as Error);
      }
    },
    { maxInboundStreams: 64 },
  );
  return { close: () => host.node.unhandle(STAGE_PROTOCOL) };
}
