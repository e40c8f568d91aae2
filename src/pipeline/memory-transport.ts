/**
 * Stage calls without a network: a StageTransport that frames each request exactly as the wire
 * does (rpc.ts), has the target service answer those bytes under the same head and body caps,
 * and reads the framed reply back, so a stage service is tested (and refuses bad calls) as it
 * would be over libp2p; a framing failure on the peer's side reads like a dropped stream.
 */
import {
  answer,
  encodeRequest,
  readReply,
  StageCallError,
  type BodyCap,
  type ReadBytes,
  type StageHandler,
} from './rpc.js';
import type { StageTransport } from './stage-client.js';

/** A stage service as the transport reaches it: its handler and its request body cap. */
export interface MemoryPeer {
  handle: StageHandler;
  maxBody: number;
  /** Per caller and head (StageService.bodyCap); default: maxBody for everyone. */
  bodyCap?: BodyCap;
}

/** Reads a buffer front to back; a read past its end fails like a stream that ended. */
function bufferReader(buf: Uint8Array): ReadBytes {
  let at = 0;
  return async (n) => {
    if (at + n > buf.length) throw new Error(`stream ended after ${buf.length} bytes`);
    const out = buf.slice(at, at + n);
    at += n;
    return out;
  };
}

/** Rejects when `signal` aborts first. */
function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/**
 * Calls, as peer `from`, the services that `peers` finds by peer id. `wrap` lets a test
 * alter the bytes either way (a request or reply as a faulty or hostile peer would send it).
 */
export function memoryTransport(
  from: string,
  peers: (peer: string) => MemoryPeer | undefined,
  wrap: { request?: (b: Uint8Array) => Uint8Array; reply?: (b: Uint8Array) => Uint8Array } = {},
): StageTransport {
  return {
    async call(peer, head, body, o) {
      const target = peers(peer);
      if (!target) throw new StageCallError(`cannot reach stage peer ${peer}: no such peer in memory`);
      const req = encodeRequest(head, body);
      let res: Uint8Array;
      try {
        const sent = bufferReader(wrap.request ? wrap.request(req) : req);
        res = await abortable(answer(sent, target.handle, from, target.maxBody, target.bodyCap), o.signal);
      } catch (err) {
        // Over libp2p the peer drops the stream (a cap exceeded, a short request): the call fails, unrefused.
        throw new StageCallError(`stage call failed: ${(err as Error).message}`, { cause: err });
      }
      try {
        return await readReply(bufferReader(wrap.reply ? wrap.reply(res) : res), o.maxBody, req.length);
      } catch (err) {
        if (err instanceof StageCallError) throw err;
        throw new StageCallError(`stage call failed: ${(err as Error).message}`, { cause: err });
      }
    },
  };
}
