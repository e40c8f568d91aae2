/**
 * Exact byte accounting, so the swarm can report bytes per round.
 *
 * Two layers are counted:
 *  - `protocols[<protocol id>]`: payload bytes of every negotiated libp2p protocol stream
 *    (our bulk protocol, gossipsub, identify, kad-dht, ping...). Counted at the stream API:
 *    bytes accepted by `stream.send()` and bytes delivered as 'message' events (bytes a
 *    reader pushes back with `unshift()` are counted once, when delivered again). Excludes
 *    the multistream-select negotiation (before libp2p hands the stream over) and the
 *    yamux/noise framing.
 *  - `wire`: bytes of the raw connections (TCP payload: noise-encrypted, yamux-framed,
 *    handshakes included), the true network cost, not split per protocol.
 * Plus free-form counters (`counters`) that the modules bump (messages delivered/rejected,
 * objects served...).
 *
 * NetMetrics plugs into js-libp2p through its `metrics` hook (see `libp2pMetrics`), which
 * libp2p calls with every raw connection and every negotiated protocol stream.
 */
import type { MessageStream, Metrics, MultiaddrConnection, Stream, StreamMessageEvent } from '@libp2p/interface';

export interface ByteCounts {
  sent: number;
  received: number;
}

export interface MetricsSnapshot {
  /** Date.now() when taken. */
  at: number;
  wire: ByteCounts;
  protocols: Record<string, ByteCounts>;
  counters: Record<string, number>;
}

export class NetMetrics {
  readonly #wire: ByteCounts = { sent: 0, received: 0 };
  readonly #protocols = new Map<string, ByteCounts>();
  readonly #counters = new Map<string, number>();

  /** Counts `bytes` sent on `protocol` (use WIRE for raw connection bytes). */
  addSent(protocol: string, bytes: number): void {
    this.#counts(protocol).sent += bytes;
  }

  addReceived(protocol: string, bytes: number): void {
    this.#counts(protocol).received += bytes;
  }

  increment(counter: string, by = 1): void {
    this.#counters.set(counter, (this.#counters.get(counter) ?? 0) + by);
  }

  /** Bytes so far on one protocol (zeros if never seen). */
  protocol(protocol: string): ByteCounts {
    const c = this.#protocols.get(protocol);
    return c == null ? { sent: 0, received: 0 } : { ...c };
  }

  counter(name: string): number {
    return this.#counters.get(name) ?? 0;
  }

  snapshot(): MetricsSnapshot {
    const protocols: Record<string, ByteCounts> = {};
    for (const [k, v] of [...this.#protocols].sort(([a], [b]) => a.localeCompare(b))) protocols[k] = { ...v };
    const counters: Record<string, number> = {};
    for (const [k, v] of [...this.#counters].sort(([a], [b]) => a.localeCompare(b))) counters[k] = v;
    return { at: Date.now(), wire: { ...this.#wire }, protocols, counters };
  }

  /** What happened between two snapshots (e.g. the bytes of one round). */
  static diff(after: MetricsSnapshot, before: MetricsSnapshot): MetricsSnapshot {
    const sub = (a: ByteCounts, b: ByteCounts | undefined): ByteCounts => ({
      sent: a.sent - (b?.sent ?? 0),
      received: a.received - (b?.received ?? 0),
    });
    const protocols: Record<string, ByteCounts> = {};
    for (const [k, v] of Object.entries(after.protocols)) protocols[k] = sub(v, before.protocols[k]);
    const counters: Record<string, number> = {};
    for (const [k, v] of Object.entries(after.counters)) counters[k] = v - (before.counters[k] ?? 0);
    return { at: after.at, wire: sub(after.wire, before.wire), protocols, counters };
  }

  /** Counts every byte sent and delivered on a raw connection or protocol stream. */
  track(stream: MessageStream, key: string | (() => string)): void {
    const name = typeof key === 'string' ? () => key : key;
    const send = stream.send.bind(stream);
    stream.send = (data) => {
      const ok = send(data); // throws (and counts nothing) when the stream is closed
      this.addSent(name(), data.byteLength);
      return ok;
    };
    // Counting at dispatchEvent, not with a 'message' listener: a listener would make the
    // stream emit data before its real consumer attached, and that data would be lost.
    const dispatch = stream.dispatchEvent.bind(stream);
    stream.dispatchEvent = (evt: Event): boolean => {
      if (evt.type === 'message') this.addReceived(name(), (evt as StreamMessageEvent).data.byteLength);
      return dispatch(evt);
    };
    // A reader that read ahead (multistream-select, noise's handshake reader) puts bytes it
    // does not own back with unshift(): they were counted when first delivered and will be
    // delivered again, so un-count them here.
    const unshift = stream.unshift.bind(stream);
    stream.unshift = (data) => {
      unshift(data);
      this.addReceived(name(), -data.byteLength);
    };
  }

  /** A factory for createLibp2p's `metrics` option that feeds this object. */
  libp2pMetrics(): (components: unknown) => Metrics {
    return () => new Libp2pMetricsAdapter(this);
  }

  #counts(protocol: string): ByteCounts {
    if (protocol === WIRE) return this.#wire;
    let c = this.#protocols.get(protocol);
    if (c == null) {
      c = { sent: 0, received: 0 };
      this.#protocols.set(protocol, c);
    }
    return c;
  }
}

/** The key under which raw connection bytes are counted. */
export const WIRE = 'wire';

/** Accepts every libp2p metric registration and ignores it; only byte counts are kept. */
const NOOP = {
  update(): void {},
  increment(): void {},
  decrement(): void {},
  reset(): void {},
  observe(): void {},
  timer: () => (): void => {},
};

class Libp2pMetricsAdapter implements Metrics {
  readonly #m: NetMetrics;
  constructor(m: NetMetrics) {
    this.#m = m;
  }

  trackMultiaddrConnection(maConn: MultiaddrConnection): void {
    this.#m.track(maConn, WIRE);
  }

  trackProtocolStream(stream: Stream): void {
    this.#m.track(stream, () => stream.protocol || 'unknown');
  }

  registerMetric = (): typeof NOOP => NOOP;
  registerMetricGroup = (): typeof NOOP => NOOP;
  registerCounter = (): typeof NOOP => NOOP;
  registerCounterGroup = (): typeof NOOP => NOOP;
  registerHistogram = (): typeof NOOP => NOOP;
  registerHistogramGroup = (): typeof NOOP => NOOP;
  registerSummary = (): typeof NOOP => NOOP;
  registerSummaryGroup = (): typeof NOOP => NOOP;
  traceFunction = (<F>(_name: string, fn: F): F => fn) as Metrics['traceFunction'];
  createTrace(): undefined {
    return undefined;
  }
}
