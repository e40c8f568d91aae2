/**
 * TCP hole punching between peers behind NATs (issue 16): DCUtR on js-libp2p's own TCP transport.
 *
 * Why TCP, and why these pieces (measured in the namespace lab, docs/ROUNDS.md "Fetching across
 * NATs"): a NAT keeps an outbound flow's source port when it can (endpoint-independent mapping),
 * but js-libp2p dials TCP from a fresh ephemeral port each time, so the address a peer observes
 * is useless to anyone else, and identify drops TCP observed addresses for that reason. QUIC does
 * not help: @chainsafe/libp2p-quic dials from a second UDP socket, not its listener's (its issue
 * #68), and that socket refuses incoming handshakes. Node cannot set SO_REUSEPORT on a dialling
 * socket, so a dial cannot leave from the listen port either. What Node can do is bind every
 * dial to one fixed local port; libuv sets SO_REUSEADDR, so many connections to different peers
 * share it. Then:
 *
 * 1. `tcp()`: every outbound TCP dial leaves from `port` (falling back to an ephemeral port when
 *    the 4-tuple is taken, e.g. in TIME_WAIT). The peers we dial see us at our router's WAN
 *    address and the port the NAT mapped `port` to; a cone NAT maps it the same for every peer.
 * 2. `ObservedAddrBook` (observed-addrs.ts) collects those identify reports, one vote per
 *    reporter IP, and confirms an address several agree on.
 * 3. `dcutr()`: libp2p's DCUtR service with two components of its own:
 *    - an address manager that adds the confirmed address to what DCUtR offers in its CONNECT
 *      message. The address is never advertised anywhere else (identify, DHT): nobody listens on
 *      `port`, so a plain dial there could never succeed, and a lone dial would leave a stale NAT
 *      entry that turns the later simultaneous open into a RST (seen in the lab);
 *    - a connection manager whose DCUtR dials (libp2p priority 100, which only DCUtR uses) go
 *      straight to the transport instead of the dial queue: the queue hands a dial to a peer that
 *      is already being dialled the result of that other dial, and in a swarm two home peers dial
 *      each other through relays at the same moment, so DCUtR "succeeded" with a relayed
 *      connection and closed it (seen in the lab's 5-peer swarm). A direct connection to the
 *      peer that is already open (an earlier punch) is returned as it is, and a second DCUtR
 *      session with the same peer (each side had dialled the other through a relay) joins the
 *      first one's dial, since both would use the same 4-tuple.
 *    The transport dials those from `port` too: both SYNs cross the NATs and the kernels complete
 *    a TCP simultaneous open, one socket on each side, each from connect().
 * 4. Both ends of a simultaneous open called connect(), so both would start the multistream and
 *    noise handshakes as initiator. DCUtR asks its B side to act as responder (`initiator:
 *    false`), but libp2p 3's dial queue drops that option, and yamux takes the socket's
 *    direction anyway. So the transport decides: on a punch dial, the peer whose id sorts first
 *    is the initiator, the other upgrades as the responder (multistream listener, noise
 *    responder, yamux server). Both ends compute the same answer.
 *
 * A symmetric NAT maps `port` to a different port for every destination: its reporters disagree,
 * nothing is confirmed, DCUtR gets no address from that side, and its connections stay relayed.
 *
 * Hand-written around libp2p (not a fork): the TCP transport is wrapped (its dial gets
 * `localPort` and `initiator`, which it passes on to net.connect and the upgrader), DCUtR gets
 * proxied components. They rely on the libp2p 3 internals named above; test/nat-holepunch.test.ts
 * fails if an upgrade changes them.
 */
import { createServer } from 'node:net';
import { tcp, type TCPOptions } from '@libp2p/tcp';
import { dcutr, type DCUtRServiceComponents, type DCUtRServiceInit } from '@libp2p/dcutr';
import { peerIdFromString } from '@libp2p/peer-id';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import type { Connection, IdentifyResult, Libp2p, PeerId, Transport, Upgrader } from '@libp2p/interface';
import { HostError } from './errors.js';
import type { NetMetrics } from './metrics.js';
import { withOverrides } from './override.js';
import { ObservedAddrBook, type ObservationVerdict, type ObservedAddrOptions } from './observed-addrs.js';

/** @libp2p/dcutr's dial priority (not exported); no other libp2p dial uses it. */
export const DCUTR_DIAL_PRIORITY = 100;

/** Dial option that makes the wrapped TCP transport punch (set by our DCUtR connection manager only). */
const PUNCH = 'tesseraPunch';

/** Most addresses one punch dial tries (a CONNECT message may list dozens). */
const MAX_PUNCH_TARGETS = 4;

/** Errors of a dial whose fixed local port is taken for that peer: retried from an ephemeral port. */
const PORT_TAKEN = new Set(['EADDRINUSE', 'EADDRNOTAVAIL']);

export interface HolePunchOptions extends ObservedAddrOptions {
  /** Local port every outbound TCP dial leaves from. */
  port: number;
  /** Counters `net.punch.*` and `net.observed.*`. */
  metrics?: NetMetrics;
  /** Called when the offered addresses change. */
  onChange?: () => void;
}

export interface HolePunch {
  readonly port: number;
  /** libp2p transport factory: TCP dialling from `port`. */
  tcp(init?: TCPOptions): (components: TcpComponents) => Transport;
  /** libp2p service factory: DCUtR offering the confirmed address and punching from `port`. */
  dcutr(init?: DCUtRServiceInit): (components: DCUtRServiceComponents) => unknown;
  /** Starts listening to identify reports and connection closes. */
  attach(node: Libp2p): void;
  detach(): void;
  /** The public addresses we offer to DCUtR (confirmed observations), without /p2p. */
  addrs(): string[];
}

type TcpComponents = Parameters<ReturnType<typeof tcp>>[0] & { peerId: PeerId };

/** A free TCP port on every interface (bound and released at once; a later bind may race). */
export async function freeTcpPort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '0.0.0.0', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** The peer id string at the end of a multiaddr, if any. */
function peerOf(ma: Multiaddr): string | undefined {
  return ma.getComponents().findLast((c) => c.name === 'p2p')?.value;
}

/** The IP of a connection's remote address, if it is a plain IP address. */
function remoteIp(conn: Connection): string | undefined {
  const c = conn.remoteAddr.getComponents();
  return c[0]?.name === 'ip4' || c[0]?.name === 'ip6' ? c[0].value : undefined;
}

/** A direct (not relayed, not limited) open connection. */
const isDirect = (c: Connection): boolean =>
  c.status === 'open' && c.limits == null && !c.remoteAddr.toString().includes('/p2p-circuit');

/**
 * The upgrader, upgrading a socket we dialled as the responder: `initiator: false` makes libp2p
 * run multistream-select and noise as the listener, but yamux picks client or server from the
 * raw connection's direction (noise copies it), so that must say 'inbound' too, or both ends are
 * yamux clients ("Both endpoints are clients", seen in the lab).
 */
function asResponder(upgrader: Upgrader): Upgrader {
  return withOverrides(upgrader, {
    upgradeOutbound: (maConn, opts) => {
      (maConn as { direction: 'inbound' | 'outbound' }).direction = 'inbound';
      return upgrader.upgradeOutbound(maConn, opts);
    },
  });
}

export function createHolePunch(o: HolePunchOptions): HolePunch {
  const book = new ObservedAddrBook(o);
  /** Connections we dialled from `port`: only their observations say where `port` maps to. */
  const fromPort = new Set<string>();
  let offered = '';
  let node: Libp2p | undefined;
  const addrs = (): string[] => book.confirmed((id) => fromPort.has(id));
  const changed = (): void => {
    const now = addrs().join(',');
    if (now === offered) return;
    offered = now;
    o.onChange?.();
  };

  const onIdentify = (evt: CustomEvent<IdentifyResult>): void => {
    const { connection, observedAddr } = evt.detail;
    if (observedAddr == null || connection.direction !== 'outbound' || connection.limits != null) return;
    const ip = remoteIp(connection);
    if (ip == null) return;
    const verdict: ObservationVerdict = book.report(connection.id, ip, observedAddr.toString());
    o.metrics?.increment(`net.observed.${verdict}`);
    changed();
  };
  const onClose = (evt: CustomEvent<Connection>): void => {
    fromPort.delete(evt.detail.id);
    book.drop(evt.detail.id);
    changed();
  };

  return {
    port: o.port,
    tcp(init = {}) {
      const make = tcp(init);
      return (components) => {
        const inner = make(components);
        const self = components.peerId.toString();
        const plainDial = inner.dial.bind(inner);
        const dial: Transport['dial'] = async (ma, options) => {
          // A DCUtR dial: a simultaneous open, roles by peer id order.
          if ((options as { [PUNCH]?: boolean })[PUNCH] === true) {
            const remote = peerOf(ma);
            const initiator = remote === undefined || self < remote;
            o.metrics?.increment('net.punch.dials');
            try {
              const upgrader = initiator ? options.upgrader : asResponder(options.upgrader);
              const conn = await plainDial(ma, {
                ...options,
                upgrader,
                localPort: o.port,
                initiator,
              } as typeof options);
              o.metrics?.increment('net.punch.direct');
              return conn;
            } catch (err) {
              o.metrics?.increment('net.punch.failed');
              throw err;
            }
          }
          try {
            const conn = await plainDial(ma, { ...options, localPort: o.port } as typeof options);
            fromPort.add(conn.id);
            changed();
            return conn;
          } catch (err) {
            const code = (err as NodeJS.ErrnoException).code;
            if (code === undefined || !PORT_TAKEN.has(code) || options.signal?.aborted === true) throw err;
            o.metrics?.increment('net.punch.portTaken');
            return await plainDial(ma, options);
          }
        };
        return withOverrides(inner, { dial });
      };
    },
    dcutr(init = {}) {
      const make = dcutr(init);
      return (components) => {
        const am = components.addressManager;
        const cm = components.connectionManager;
        const tm = components.transportManager;
        /** Punch dials in flight, by peer id. */
        const punching = new Map<string, Promise<Connection>>();
        const addressManager = withOverrides(am, {
          getAddresses: () => {
            const id = node?.peerId.toString();
            const extra = id === undefined ? [] : addrs().map((a) => multiaddr(`${a}/p2p/${id}`));
            return [...am.getAddresses(), ...extra];
          },
        });
        const connectionManager = withOverrides(cm, {
          openConnection: async (target, options = {}) => {
            if (options.priority !== DCUTR_DIAL_PRIORITY) return await cm.openConnection(target, options);
            // Who gives us these: the peer on the other end of a relayed connection (its CONNECT
            // message, up to 4 KiB; libp2p keeps only public addresses we can dial). Cap: the first
            // MAX_PUNCH_TARGETS, tried one after the other within DCUtR's 5 s, 3 attempts a session.
            const targets = ((Array.isArray(target) ? target : [target]) as Multiaddr[]).slice(0, MAX_PUNCH_TARGETS);
            const peer = targets.map(peerOf).find((p) => p !== undefined);
            if (peer === undefined) throw new HostError('hole punch: no peer id in the addresses to dial');
            const open = cm.getConnections(peerIdFromString(peer)).find(isDirect);
            if (open != null) return open;
            // Two relayed connections to one peer (each side dialled the other) run two DCUtR
            // sessions at once; both use the one 4-tuple, so the second joins the first's dial.
            const pending = punching.get(peer);
            if (pending != null) return await pending;
            const attempt = (async () => {
              // DCUtR's signal is AbortSignal.timeout(5 s); the new connection keeps listening to
              // the signal it was dialled with, so it gets one that follows DCUtR's only until the
              // dial is done (the dial queue does the same with its own signals). Given DCUtR's
              // own, every punched connection was aborted 5 s after it opened (seen in the lab).
              const dialSignal = new AbortController();
              const follow = (): void => dialSignal.abort(options.signal?.reason);
              if (options.signal?.aborted === true) follow();
              options.signal?.addEventListener('abort', follow, { once: true });
              let last: unknown = new HostError('hole punch: no address to dial');
              try {
                for (const ma of targets) {
                  try {
                    return await tm.dial(ma, { signal: dialSignal.signal, [PUNCH]: true } as { signal: AbortSignal });
                  } catch (err) {
                    last = err;
                    if (dialSignal.signal.aborted) break;
                  }
                }
              } finally {
                options.signal?.removeEventListener('abort', follow);
              }
              throw last;
            })();
            punching.set(peer, attempt);
            try {
              return await attempt;
            } finally {
              punching.delete(peer);
            }
          },
        });
        return make({
          peerStore: components.peerStore,
          registrar: components.registrar,
          transportManager: tm,
          logger: components.logger,
          addressManager,
          connectionManager,
        });
      };
    },
    attach(n) {
      node = n;
      n.addEventListener('peer:identify', onIdentify);
      n.addEventListener('connection:close', onClose);
    },
    detach() {
      node?.removeEventListener('peer:identify', onIdentify);
      node?.removeEventListener('connection:close', onClose);
    },
    addrs,
  };
}
