/**
 * Small helpers for libp2p 3 streams (which are event-based MessageStreams, not the
 * duplex sink/source iterables of older versions).
 *
 * Reading: data arrives as 'message' events. We always consume synchronously inside the
 * listener, so nothing piles up. (The stream's async iterator pushes into an unbounded
 * queue and yamux re-opens its receive window on arrival, not on consumption, so a slow
 * iterator consumer would buffer without limit; only pause()/resume() stop the sender.)
 * End of data is the 'end' event (or `readableEnded`), which fires after the last
 * 'message': 'remoteCloseWrite' may fire while data is still buffered.
 *
 * Writing: `send()` returns false when the muxer or socket is full; we then wait for the
 * stream's queue to shrink before sending more (see sendAll), so about one chunk is queued
 * per stream.
 */
import type { AbortOptions, MessageStream, StreamCloseEvent, StreamMessageEvent } from '@libp2p/interface';
import { ProtocolError, abortedError } from './errors.js';

/** Iterates the contiguous pieces of a message event's data without copying. */
export function* pieces(data: Uint8Array | Iterable<Uint8Array>): Generator<Uint8Array> {
  if (data instanceof Uint8Array) yield data;
  else yield* data;
}

export interface Consumer {
  /**
   * Called synchronously for each piece of data. Return nothing to go on; return the number
   * of bytes of `piece` it used to stop listening: the unused rest goes back on the stream.
   */
  onData(piece: Uint8Array): number | void;
  /** The remote closed its writable end and all data was delivered. */
  onEnd(): void;
  /** The stream closed with an error, or was aborted by the signal. */
  onError(err: Error): void;
}

/**
 * Attaches a synchronous consumer to a stream. Returns a detach function. Exactly one of
 * onEnd/onError is called unless onData returns true (or detach is called) first.
 */
export function consume(stream: MessageStream, consumer: Consumer, options: AbortOptions = {}): () => void {
  const { signal } = options;
  let done = false;
  const finish = (): void => {
    if (done) return;
    done = true;
    stream.removeEventListener('message', onMessage);
    stream.removeEventListener('end', onEnd);
    stream.removeEventListener('close', onClose);
    signal?.removeEventListener('abort', onAbort);
  };
  const onMessage = (evt: StreamMessageEvent): void => {
    if (done) return;
    try {
      const all = [...pieces(evt.data)];
      for (let i = 0; i < all.length; i++) {
        const used = consumer.onData(all[i]);
        if (typeof used === 'number') {
          finish();
          const rest = [all[i].subarray(used), ...all.slice(i + 1)].filter((b) => b.byteLength > 0);
          if (rest.length > 0) {
            try {
              stream.unshift(rest.length === 1 ? rest[0] : Buffer.concat(rest));
            } catch {
              // the readable end closed meanwhile: nobody will read the rest anyway
            }
          }
          return;
        }
      }
    } catch (err) {
      finish();
      consumer.onError(err as Error);
    }
  };
  const onEnd = (): void => {
    if (done) return;
    finish();
    consumer.onEnd();
  };
  const onClose = (evt: StreamCloseEvent): void => {
    if (done) return;
    // A clean close with data still buffered: that data is about to be dispatched, and
    // 'end' follows it.
    if (evt.error == null && stream.readBufferLength > 0) return;
    finish();
    if (evt.error != null)
      consumer.onError(new ProtocolError(`stream closed: ${evt.error.message}`, { cause: evt.error }));
    else consumer.onEnd();
  };
  const onAbort = (): void => {
    if (done) return;
    finish();
    consumer.onError(abortedError('stream read', signal!));
  };
  if (signal?.aborted === true) {
    queueMicrotask(onAbort);
    return finish;
  }
  stream.addEventListener('message', onMessage);
  stream.addEventListener('end', onEnd);
  stream.addEventListener('close', onClose);
  signal?.addEventListener('abort', onAbort);
  if (stream.readableEnded && stream.readBufferLength === 0) queueMicrotask(onEnd);
  return finish;
}

/**
 * Reads exactly `n` bytes (a fixed-size header). Bytes beyond `n` are pushed back onto the
 * stream for the next reader.
 */
export function readExactly(stream: MessageStream, n: number, options: AbortOptions = {}): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const out = new Uint8Array(n);
    let have = 0;
    if (n === 0) {
      resolve(out);
      return;
    }
    consume(
      stream,
      {
        onData(p) {
          const take = Math.min(n - have, p.byteLength);
          out.set(p.subarray(0, take), have);
          have += take;
          if (have < n) return undefined;
          resolve(out);
          return take;
        },
        onEnd() {
          reject(new ProtocolError(`stream ended after ${have} of ${n} expected bytes`));
        },
        onError: reject,
      },
      options,
    );
  });
}

export interface SendAllOptions extends AbortOptions {
  /** Bytes per send() call. Default 256 KiB. */
  chunkSize?: number;
  /** Most bytes left queued in the stream before we wait. Default: chunkSize. */
  highWaterMark?: number;
}

/**
 * Sends `data` in chunks, never letting more than `highWaterMark` bytes queue up in the
 * stream's write buffer: we wait for 'drain'/'idle' whenever the stream is full.
 *
 * Not `stream.onDrain()`: in @libp2p/utils 7.4 it keeps its first resolved promise and
 * returns it forever after, so from the second wait on it does not wait at all and the
 * whole object piles up in the write buffer. 'drain' alone is not enough either: yamux
 * fires it on every window update while its queue may still hold megabytes.
 */
export async function sendAll(stream: MessageStream, data: Uint8Array, options: SendAllOptions = {}): Promise<void> {
  const chunk = options.chunkSize ?? 256 * 1024;
  const highWater = options.highWaterMark ?? chunk;
  const { signal } = options;
  for (let off = 0; off < data.byteLength; off += chunk) {
    if (isAborted(signal)) throw abortedError('stream send', signal!);
    stream.send(data.subarray(off, Math.min(off + chunk, data.byteLength)));
    while (stream.writableNeedsDrain || stream.writeBufferLength > highWater) {
      await writeProgress(stream, signal);
    }
  }
}

/** Resolves at the next 'drain' or 'idle' event; rejects if the stream closes or the signal aborts. */
export function writeProgress(stream: MessageStream, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      stream.removeEventListener('drain', onProgress);
      stream.removeEventListener('idle', onProgress);
      stream.removeEventListener('close', onClose);
      signal?.removeEventListener('abort', onAbort);
    };
    const onProgress = (): void => {
      cleanup();
      resolve();
    };
    const onClose = (evt: StreamCloseEvent): void => {
      cleanup();
      const why = evt.error?.message ?? 'closed';
      reject(new ProtocolError(`stream closed while sending (${why})`, { cause: evt.error }));
    };
    const onAbort = (): void => {
      cleanup();
      reject(abortedError('stream send', signal!));
    };
    if (isAborted(signal)) {
      reject(abortedError('stream send', signal!));
      return;
    }
    if (stream.status !== 'open') {
      reject(new ProtocolError(`stream is ${stream.status} while sending`));
      return;
    }
    stream.addEventListener('drain', onProgress);
    stream.addEventListener('idle', onProgress);
    stream.addEventListener('close', onClose);
    signal?.addEventListener('abort', onAbort);
  });
}

/** `signal.aborted`, read through a function so TypeScript does not keep an earlier narrowing. */
export function isAborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true;
}
