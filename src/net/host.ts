/**
 * The libp2p host: one js-libp2p 3 node per Tessera peer.
 *
 * TCP and WebSocket transports, noise encryption, yamux multiplexing, identify, ping, a
 * Kademlia DHT on a private protocol id (so a swarm never joins the public IPFS DHT), gossipsub
 * for small control messages, optional mDNS (LAN discovery) and an optional bootstrap list. The
 * identity is persistent (identity.ts). Byte counts of every connection and protocol stream go
 * to a NetMetrics (metrics.ts).
 *
 * Reachability (issue 16, peers at home behind NAT routers):
 * - the circuit relay v2 transport on every host, so any peer can dial `/p2p-circuit` addresses;
 * - `reserve` (default 'auto': when every address this host listens on is private, i.e. it sits
 *   behind a NAT): listen on `/p2p-circuit`, which reserves a slot on a relay among the connected
 *   peers (found through identify) and advertises `<relay>/p2p-circuit/p2p/<us>`;
 * - `relay` (default off here; `tessera node` turns it on for peers with a public address): a
 *   circuit relay v2 server with per-reservation limits (bytes and duration of each relayed
 *   connection, and how many reservations), which come from the run manifest (`network.relay`);
 * - DCUtR (hole punching: upgrades a relayed connection to a direct one where the NATs allow).
 *   Behind a NAT (`holePunch` 'auto') every TCP dial leaves from one fixed local port
 *   (`punchPort`), the address the peers we dialled observe is confirmed once several agree, and
 *   DCUtR offers it for a TCP simultaneous open (hole-punch.ts, observed-addrs.ts);
 * - AutoNAT (other peers dial our public addresses back, so an unverified public listen address
 *   is only advertised once someone could reach it), optional UPnP (`upnp`, opt-in).
 * `reachability()` says what the host believes (public / private / unknown, and whether it
 * holds a relay reservation); `onReachability` hears each change once.
 */
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import { createLibp2p, type Libp2p, type Libp2pOptions } from 'libp2p';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { identify, type Identify } from '@libp2p/identify';
import { ping, type Ping } from '@libp2p/ping';
import { kadDHT, passthroughMapper, type KadDHT } from '@libp2p/kad-dht';
import { gossipsub, type GossipSub, type GossipsubOpts } from '@libp2p/gossipsub';
import { createPeerScoreParams, createTopicScoreParams } from '@libp2p/gossipsub/score';
import { mdns } from '@libp2p/mdns';
import { bootstrap } from '@libp2p/bootstrap';
import { webSockets } from '@libp2p/websockets';
import {
  circuitRelayServer,
  circuitRelayTransport,
  RELAY_V2_HOP_CODEC,
  RELAY_V2_STOP_CODEC,
  type CircuitRelayService,
} from '@libp2p/circuit-relay-v2';
import { dcutr } from '@libp2p/dcutr';
import { tcp } from '@libp2p/tcp';
import { isPrivateIp } from '@libp2p/utils';
import { networkInterfaces } from 'node:os';
import { peerIdFromString } from '@libp2p/peer-id';
import { pino, type Logger } from 'pino';
import type { AbortOptions, Connection, Ed25519PrivateKey, PeerId } from '@libp2p/interface';
import { loadOrCreateIdentity } from './identity.js';
import { NetMetrics } from './metrics.js';
import { AbortedError, HostError, abortedError } from './errors.js';
import { freshDialBackAutoNAT } from './autonat.js';
import { createHolePunch, freeTcpPort, type HolePunch } from './hole-punch.js';

/** Kademlia protocol id of Tessera swarms (not the public IPFS one). */
export const TESSERA_DHT_PROTOCOL = '/tessera/kad/1.0.0';

export interface HostServices extends Record<string, unknown> {
  identify: Identify;
  ping: Ping;
  dht: KadDHT;
  pubsub: GossipSub;
  /** The circuit relay v2 server, when this host serves as a relay. */
  relay?: CircuitRelayService;
}

/** Limits of the relay server, per reservation (each relayed connection is cut at these). */
export interface RelayLimits {
  /** Bytes each relayed connection may carry (both directions together). Default 64 MiB. */
  maxBytes?: number;
  /** How long each relayed connection may stay open, in ms. Default 10 min. */
  maxDurationMs?: number;
  /** How many peers may hold a reservation at once. Default 64. */
  maxReservations?: number;
}

export const DEFAULT_RELAY_LIMITS: Required<RelayLimits> = {
  maxBytes: 64 * 1024 * 1024,
  maxDurationMs: 10 * 60_000,
  maxReservations: 64,
};

export type ReachabilityStatus = 'public' | 'private' | 'unknown';

/** What a host believes about how others reach it. */
export interface Reachability {
  /**
   * public: an address others can dial (announced, or a public listen address that AutoNAT
   * verified); private: only private/loopback addresses (behind a NAT, or a test on one
   * machine); unknown: a public listen address nobody has dialled back yet.
   */
  status: ReachabilityStatus;
  /** This host holds a reservation on a relay and advertises its /p2p-circuit addresses. */
  relayed: boolean;
  /** The /p2p-circuit addresses we advertise. */
  relayAddrs: string[];
  /** Public (non-private, non-circuit) addresses we advertise. */
  publicAddrs: string[];
  /**
   * Our router's WAN address and mapped port as several peers we dialled agree on it
   * (hole-punch.ts): offered to DCUtR for hole punching, never advertised. Empty when not
   * punching, or behind a NAT whose mapping differs per destination (symmetric).
   */
  punchAddrs: string[];
  /** This host serves as a circuit relay. */
  relayServer: boolean;
  /**
   * Behind a NAT, as far as the host can tell: it holds a relay reservation, or it listens only
   * on private addresses other than loopback. Stays true while a lost reservation is replaced.
   */
  behindNat: boolean;
}

/** One open connection, as the tests and the round line show it. */
export interface ConnectionInfo {
  peer: string;
  remoteAddr: string;
  /** Through a relay (a /p2p-circuit address); libp2p marks such connections `limited`. */
  relayed: boolean;
  limited: boolean;
  direction: 'inbound' | 'outbound';
}

/** What this host's relay server did: current reservations and bytes carried (both directions). */
export interface RelayStats {
  serving: boolean;
  reservations: number;
  /** Bytes received on relay HOP and STOP streams, i.e. what the relay forwarded (plus small handshakes). */
  carriedBytes: number;
}

export type Libp2pNode = Libp2p<HostServices>;

export interface HostOptions extends AbortOptions {
  /** Directory for persistent state (the identity key). Created if missing. */
  dataDir: string;
  /** Listen multiaddrs. Default ['/ip4/127.0.0.1/tcp/0']. */
  listen?: string[];
  /** Multiaddrs (with /p2p/<id>) of peers to connect to at start. */
  bootstrap?: string[];
  /** LAN discovery by multicast DNS. Default false. */
  mdns?: boolean;
  /** Dial peers found by mDNS / bootstrap automatically. Default true. */
  autoDial?: boolean;
  /** Kademlia protocol id. Default TESSERA_DHT_PROTOCOL. */
  dhtProtocol?: string;
  /**
   * Peers on this host's connections may compute synchronously for minutes (pipeline stages of a
   * real-sized model): a connection-monitor ping that goes unanswered then does not abort the
   * connection (libp2p's default does, and every stage call on it fails). A dead peer is still
   * found: its socket closes, or a call to it passes its deadline. Default false.
   */
  busyPeers?: boolean;
  /** Byte accounting; a fresh NetMetrics when omitted. */
  metrics?: NetMetrics;
  /** pino logger; default: pino at level 'warn' (TESSERA_LOG overrides) on stderr. */
  logger?: Logger;
  /** Extra gossipsub options. */
  gossipsub?: Partial<GossipsubOpts>;
  /**
   * Serve as a circuit relay v2 (false / true, or true with limits). Default false. 'auto' serves
   * when the host has a public listen address (see `reserve`).
   */
  relay?: boolean | 'auto';
  /** Relay server limits (the run manifest's `network.relay`). */
  relayLimits?: RelayLimits;
  /**
   * Reserve a slot on a relay and advertise /p2p-circuit addresses. Default 'auto': when the
   * host listens on no public address but on some non-loopback one (behind a NAT).
   */
  reserve?: boolean | 'auto';
  /** Addresses to advertise instead of the listen addresses (a port forwarded by hand, a DNS name). */
  announce?: string[];
  /** Ask the router for a port mapping by UPnP. Default false (opt-in). */
  upnp?: boolean;
  /**
   * Hole punching (DCUtR) on relayed connections. Default 'auto': DCUtR runs, and behind a NAT
   * (as for `reserve`) TCP dials leave from `punchPort` so that an observed address can be
   * offered (hole-punch.ts). true: the fixed dial port whatever the addresses; false: neither.
   */
  holePunch?: boolean | 'auto';
  /** Local port of every outbound TCP dial while hole punching. Default: a free port. */
  punchPort?: number;
  /** Called with the new reachability each time it changes (and once after start). */
  onReachability?: (r: Reachability) => void;
}

export interface Host {
  readonly node: Libp2pNode;
  /** Our peer id, as a string. */
  readonly peerId: string;
  readonly privateKey: Ed25519PrivateKey;
  readonly metrics: NetMetrics;
  readonly log: Logger;
  /** The addresses we listen on, each with /p2p/<peerId>. */
  multiaddrs(): string[];
  /** Connects to a peer by multiaddr (with /p2p/<id>) or peer id; resolves to its peer id. */
  dial(target: string | Multiaddr | PeerId, options?: AbortOptions): Promise<string>;
  /**
   * A connection to `target` for a protocol stream: an open one (direct first), else a new dial.
   * A peer id whose known addresses are all private (a peer behind a NAT, or one we know nothing
   * about) is tried first through the relays we are connected to
   * (`/p2p/<relay>/p2p-circuit/p2p/<peer>`: a relay answers at once if the peer holds no slot
   * there), then dialled as usual; the DHT may not have its /p2p-circuit addresses yet.
   */
  connect(target: string | Multiaddr | PeerId, options?: AbortOptions): Promise<Connection>;
  /** Round-trip time in ms to a peer (pings over an existing or new connection). */
  ping(target: string | Multiaddr | PeerId, options?: AbortOptions): Promise<number>;
  /** Peer ids we have an open connection to. */
  connectedPeers(): string[];
  /** How others reach us (see Reachability). */
  reachability(): Reachability;
  /** Every open connection: to whom, over which address, direct or relayed. */
  connections(): ConnectionInfo[];
  /** Our relay server's reservations and bytes carried. */
  relayStats(): RelayStats;
  stop(options?: AbortOptions): Promise<void>;
}

export function defaultLogger(): Logger {
  return pino({ name: 'tessera', level: process.env.TESSERA_LOG ?? 'warn' }, pino.destination(2));
}

/** Turns a multiaddr or peer id string into what libp2p dials. */
export function toDialTarget(target: string | Multiaddr | PeerId): Multiaddr | PeerId {
  if (typeof target !== 'string') return target;
  try {
    return target.startsWith('/') ? multiaddr(target) : peerIdFromString(target);
  } catch (err) {
    throw new HostError(`not a multiaddr or peer id: ${target}`, { cause: err });
  }
}

export interface ScoringOptions {
  /**
   * Peers from one IP beyond which each extra peer costs score (quadratically). Default: env
   * TESSERA_IP_COLOCATION, else 8.
   */
  ipColocationThreshold?: number;
  /** IPs never penalised for colocation. Default: loopback (127.0.0.1, ::1), where tests run whole swarms. */
  ipWhitelist?: string[];
}

/** Score below which a peer's RPCs are ignored altogether (gossipsub's graylist). */
export const GRAYLIST_THRESHOLD = -2000;

/**
 * Gossipsub peer scoring for a run's control topic (issue 15 item 5): a message the topic
 * validator rejects (pubsub.ts returns Reject for every envelope failure except replays) counts
 * as an invalid delivery against the peer it came from, squared and weighted -1, decaying by half
 * each second; first deliveries earn a little. An honest peer never sends a rejected message, so
 * its score stays >= 0; a peer that floods invalid messages (about 45 within a second or two) falls
 * below GRAYLIST_THRESHOLD and everything it sends is dropped before validation. Slow bursts of a
 * few bad messages (swarm-badinput's attacker) stay above it. Mesh delivery penalties are off:
 * small swarms with quiet rounds would penalise honest peers.
 */
export function controlScoring(topic: string, o: ScoringOptions = {}): Partial<GossipsubOpts> {
  const env = Number(process.env.TESSERA_IP_COLOCATION);
  const threshold = o.ipColocationThreshold ?? (Number.isFinite(env) && env > 0 ? env : 8);
  return {
    scoreParams: createPeerScoreParams({
      topics: {
        [topic]: createTopicScoreParams({
          topicWeight: 1,
          timeInMeshWeight: 0.01,
          timeInMeshQuantum: 1000,
          timeInMeshCap: 100,
          firstMessageDeliveriesWeight: 0.5,
          firstMessageDeliveriesDecay: 0.9,
          firstMessageDeliveriesCap: 20,
          meshMessageDeliveriesWeight: 0,
          meshFailurePenaltyWeight: 0,
          invalidMessageDeliveriesWeight: -1,
          invalidMessageDeliveriesDecay: 0.5,
        }),
      },
      topicScoreCap: 20,
      appSpecificScore: () => 0,
      IPColocationFactorWeight: -10,
      IPColocationFactorThreshold: threshold,
      IPColocationFactorWhitelist: new Set(o.ipWhitelist ?? ['127.0.0.1', '::1']),
      behaviourPenaltyWeight: -1,
      behaviourPenaltyDecay: 0.9,
      decayInterval: 1000,
      decayToZero: 0.01,
    }),
    scoreThresholds: {
      gossipThreshold: -100,
      publishThreshold: -500,
      graylistThreshold: GRAYLIST_THRESHOLD,
      acceptPXThreshold: 10,
      opportunisticGraftThreshold: 2,
    },
  };
}

/** Creates and starts a host. Stop it with `host.stop()`. */
export async function createHost(options: HostOptions): Promise<Host> {
  const { signal } = options;
  signal?.throwIfAborted();
  const log = options.logger ?? defaultLogger();
  const metrics = options.metrics ?? new NetMetrics();
  const identity = await loadOrCreateIdentity(options.dataDir, { signal });
  const listen = options.listen ?? ['/ip4/127.0.0.1/tcp/0'];
  for (const a of listen) toDialTarget(a); // validate early, with a typed error
  const boot = options.bootstrap ?? [];
  for (const a of boot) {
    const ma = toDialTarget(a);
    if (!('getComponents' in ma) || ma.getComponents().every((c) => c.name !== 'p2p')) {
      throw new HostError(`bootstrap address needs a /p2p/<peer id> component: ${a}`);
    }
  }

  const announce = options.announce ?? [];
  for (const a of announce) toDialTarget(a);
  const where = listenScope(listen, announce);
  const relayServer = options.relay === 'auto' ? where.public : options.relay === true;
  // Behind a NAT (no public address, some non-loopback one): reserve a relay slot. Not on
  // loopback, where every peer of a one-machine swarm reaches every other directly.
  const reserve = options.reserve === 'auto' || options.reserve === undefined ? where.natted : options.reserve;
  const limits = { ...DEFAULT_RELAY_LIMITS, ...options.relayLimits };
  const holePunch = options.holePunch ?? 'auto';
  if (
    options.punchPort !== undefined &&
    !(Number.isInteger(options.punchPort) && options.punchPort > 0 && options.punchPort < 65536)
  )
    throw new HostError(`punchPort must be a port number (1-65535): ${options.punchPort}`);
  // A socket cannot dial from a port a listener holds (no SO_REUSEPORT in Node): every punch
  // dial would fall back to an ephemeral port and no address could ever be agreed.
  const tcpListenPorts = listen.map((a) => /\/tcp\/(\d+)(?:\/|$)/.exec(a)?.[1]).filter((p) => p !== undefined);
  if (options.punchPort !== undefined && tcpListenPorts.includes(String(options.punchPort)))
    throw new HostError(`punchPort ${options.punchPort} is also a TCP listen port: pick another`);
  let noteSoon = (): void => undefined;
  const punch: HolePunch | undefined =
    holePunch === true || (holePunch === 'auto' && where.natted)
      ? createHolePunch({ port: options.punchPort ?? (await freeTcpPort()), metrics, onChange: () => noteSoon() })
      : undefined;

  const peerDiscovery: NonNullable<Libp2pOptions['peerDiscovery']> = [];
  if (options.mdns === true) peerDiscovery.push(mdns());
  if (boot.length > 0) peerDiscovery.push(bootstrap({ list: boot }));

  let node: Libp2pNode;
  try {
    const services: Record<string, unknown> = {};
    if (relayServer)
      // Who may call it: any peer (HOP reserve / connect). Cost: one reservation slot each, and
      // the bytes it relays. Cap: maxReservations slots; each relayed connection is cut after
      // maxBytes or maxDurationMs (libp2p resets it), and hop requests time out after 30 s.
      services.relay = circuitRelayServer({
        reservations: {
          maxReservations: limits.maxReservations,
          applyDefaultLimit: true,
          defaultDataLimit: BigInt(limits.maxBytes),
          defaultDurationLimit: limits.maxDurationMs,
        },
      });
    // Who may call them: any connected peer. AutoNAT dials back only the caller's own IP (libp2p
    // refuses other targets), always on a new connection (autonat.ts), and answers 2 streams per
    // connection; DCUtR runs only on relayed connections, a few bounded messages and one dial per
    // attempt (3 attempts).
    services.autonat = freshDialBackAutoNAT();
    if (holePunch !== false) services.dcutr = punch ? punch.dcutr() : dcutr();
    // Loaded only when asked for: it pulls in an HTTP client (undici) every other peer can do without.
    if (options.upnp === true) services.upnp = (await import('@libp2p/upnp-nat')).uPnPNAT();
    node = await createLibp2p<HostServices>({
      privateKey: identity.privateKey,
      addresses: {
        listen: reserve ? [...listen, '/p2p-circuit'] : listen,
        ...(announce.length > 0 ? { announce } : {}),
      },
      transports: [
        punch ? punch.tcp() : tcp(),
        webSockets(),
        // Dial and accept relayed connections. Reservations are requested only when listening
        // on /p2p-circuit (`reserve`).
        circuitRelayTransport({ reservationCompletionTimeout: 10_000 }),
      ],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      ...(options.busyPeers ? { connectionMonitor: { abortConnectionOnPingFailure: false } } : {}),
      peerDiscovery,
      metrics: metrics.libp2pMetrics(),
      services: {
        identify: identify(),
        // Room for our own ping next to the connection monitor's (libp2p allows 1 by default, so
        // a ping that overlaps the monitor's failed with TooManyOutboundProtocolStreams).
        ping: ping({ maxOutboundStreams: 4 }),
        dht: kadDHT({
          protocol: options.dhtProtocol ?? TESSERA_DHT_PROTOCOL,
          clientMode: false,
          // Swarms run on LANs and localhost too: keep private addresses.
          peerInfoMapper: passthroughMapper,
        }),
        pubsub: gossipsub({
          // Small control messages only; bulk data uses direct streams (bulk.ts).
          maxInboundDataLength: 1024 * 1024,
          allowPublishToZeroTopicPeers: true,
          ...options.gossipsub,
        }),
        ...(services as object),
      },
      start: false,
    });
  } catch (err) {
    throw new HostError(`cannot create libp2p node: ${(err as Error).message}`, { cause: err });
  }
  // Before start: the bootstrap dials begin during it, and their identify reports count.
  punch?.attach(node);
  try {
    await raceAbort(Promise.resolve(node.start()), signal, 'host start');
  } catch (err) {
    punch?.detach();
    await Promise.resolve(node.stop()).catch(() => undefined);
    if (err instanceof AbortedError) throw err;
    throw new HostError(`cannot start libp2p node: ${(err as Error).message}`, { cause: err });
  }

  const autoDial = options.autoDial ?? true;
  if (autoDial && peerDiscovery.length > 0) {
    node.addEventListener('peer:discovery', (evt) => {
      const peer = evt.detail;
      if (peer.id.equals(node.peerId) || node.getConnections(peer.id).length > 0) return;
      node.dial(peer.id, { signal: AbortSignal.timeout(10_000) }).catch((err: unknown) => {
        log.debug({ peer: peer.id.toString(), err: (err as Error).message }, 'auto-dial failed');
      });
    });
  }

  const peerId = node.peerId.toString();
  log.info({ peerId, addrs: node.getMultiaddrs().map(String) }, 'libp2p host started');

  const reachability = (): Reachability => reachabilityOf(node, relayServer, where, punch);
  let lastReach = '';
  const noteReachability = (): void => {
    const r = reachability();
    const key = `${r.status}|${r.relayed}|${r.relayAddrs.join(',')}|${r.punchAddrs.join(',')}`;
    if (key === lastReach) return;
    lastReach = key;
    log.info({ reachability: r }, 'reachability changed');
    try {
      options.onReachability?.(r);
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'onReachability failed');
    }
  };
  // Our addresses change when a reservation is made or lost, or AutoNAT (un)confirms one. The
  // events may fire before the address list settles, so a slow poll backs them up.
  noteSoon = (): void => void setTimeout(noteReachability, 0);
  node.addEventListener('self:peer:update', noteSoon);
  node.addEventListener('transport:listening', noteSoon);
  node.addEventListener('transport:close', noteSoon);
  const reachTimer = setInterval(noteReachability, 2000);
  reachTimer.unref();
  noteReachability();

  return {
    node,
    peerId,
    privateKey: identity.privateKey,
    metrics,
    log,
    multiaddrs: () => node.getMultiaddrs().map((ma) => ma.toString()),
    async dial(target, opts = {}) {
      try {
        const conn = await node.dial(toDialTarget(target), opts);
        return conn.remotePeer.toString();
      } catch (err) {
        if (opts.signal?.aborted === true) throw abortedError('dial', opts.signal);
        throw new HostError(`dial ${String(target)} failed: ${(err as Error).message}`, { cause: err });
      }
    },
    connect: (target, opts = {}) => connectTo(node, toDialTarget(target), opts.signal),
    async ping(target, opts = {}) {
      try {
        return await node.services.ping.ping(toDialTarget(target), opts);
      } catch (err) {
        if (opts.signal?.aborted === true) throw abortedError('ping', opts.signal);
        throw new HostError(`ping ${String(target)} failed: ${(err as Error).message}`, { cause: err });
      }
    },
    connectedPeers: () => [...new Set(node.getConnections().map((c) => c.remotePeer.toString()))],
    reachability,
    connections: () =>
      node.getConnections().map((c) => ({
        peer: c.remotePeer.toString(),
        remoteAddr: c.remoteAddr.toString(),
        relayed: isCircuit(c.remoteAddr.toString()),
        limited: c.limits != null,
        direction: c.direction,
      })),
    relayStats: () => ({
      serving: relayServer,
      reservations: node.services.relay?.reservations.size ?? 0,
      carriedBytes: relayServer
        ? metrics.protocol(RELAY_V2_HOP_CODEC).received + metrics.protocol(RELAY_V2_STOP_CODEC).received
        : 0,
    }),
    async stop(opts = {}) {
      clearInterval(reachTimer);
      punch?.detach();
      node.removeEventListener('self:peer:update', noteSoon);
      node.removeEventListener('transport:listening', noteSoon);
      node.removeEventListener('transport:close', noteSoon);
      await raceAbort(Promise.resolve(node.stop()), opts.signal, 'host stop');
      log.info({ peerId }, 'libp2p host stopped');
    },
  };
}

/** Resolves/rejects like `p`, or rejects with AbortedError as soon as `signal` aborts. */
export async function raceAbort<T>(p: Promise<T>, signal: AbortSignal | undefined, what: string): Promise<T> {
  if (signal == null) return p;
  if (signal.aborted) {
    p.catch(() => undefined);
    throw abortedError(what, signal);
  }
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(abortedError(what, signal));
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([p, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort!);
    p.catch(() => undefined);
  }
}

const isCircuit = (ma: string): boolean => ma.includes('/p2p-circuit');

/** The IP of an /ip4 or /ip6 multiaddr, else undefined. */
function ipOf(ma: string): string | undefined {
  const m = /^\/ip[46]\/([^/]+)/.exec(ma);
  return m?.[1];
}

const isLoopback = (ip: string): boolean => ip === '::1' || ip.startsWith('127.');

/**
 * Where a host's addresses are: `public` if it listens on (or announces) a public IP, `natted`
 * if it listens only on private ones but not only on loopback (a home peer). A wildcard listen
 * address (0.0.0.0, ::) stands for every interface's address.
 */
export function listenScope(listen: string[], announce: string[] = []): { public: boolean; natted: boolean } {
  const ips: string[] = [];
  for (const a of [...listen, ...announce]) {
    const ip = ipOf(a);
    if (ip == null) {
      if (/^\/dns[46a]?\//.test(a)) ips.push('dns'); // a name: assume it is public
      continue;
    }
    if (ip === '0.0.0.0' || ip === '::') {
      for (const list of Object.values(networkInterfaces()))
        for (const i of list ?? []) if ((ip === '::') === (i.family === 'IPv6') || ip === '::') ips.push(i.address);
    } else ips.push(ip);
  }
  const isPublic = (ip: string): boolean => ip === 'dns' || (!isLoopback(ip) && isPrivateIp(ip) === false);
  const pub = ips.some(isPublic);
  return { public: pub, natted: !pub && ips.some((ip) => !isLoopback(ip)) };
}

function reachabilityOf(
  node: Libp2pNode,
  relayServer: boolean,
  where: { public: boolean; natted: boolean },
  punch: HolePunch | undefined,
): Reachability {
  const addrs = node.getMultiaddrs().map(String);
  const relayAddrs = addrs.filter(isCircuit);
  const publicAddrs = addrs.filter((a) => {
    if (isCircuit(a)) return false;
    const ip = ipOf(a);
    return ip == null ? /^\/dns[46a]?\//.test(a) : !isLoopback(ip) && isPrivateIp(ip) === false;
  });
  // getMultiaddrs() lists a public transport address only once AutoNAT verified it (or it was
  // announced), so a public address there means someone reached it.
  const status: ReachabilityStatus = publicAddrs.length > 0 ? 'public' : where.public ? 'unknown' : 'private';
  const relayed = relayAddrs.length > 0;
  return {
    status,
    relayed,
    relayAddrs,
    publicAddrs,
    punchAddrs: punch?.addrs() ?? [],
    relayServer,
    behindNat: relayed || (where.natted && status !== 'public'),
  };
}

/** Host.connect: see there. */
async function connectTo(node: Libp2pNode, t: Multiaddr | PeerId, signal?: AbortSignal): Promise<Connection> {
  if (!isPeerIdTarget(t) || node.getConnections(t).length > 0) return await node.dial(t, { signal });
  let known: string[] = [];
  try {
    known = (await node.peerStore.get(t, { signal })).addresses.map((a) => a.multiaddr.toString());
  } catch {
    // not in the peer store
  }
  const reachable = known.some((a) => {
    if (isCircuit(a)) return true;
    const ip = ipOf(a);
    return ip == null || (!isLoopback(ip) && isPrivateIp(ip) === false);
  });
  const onLoopback = known.some((a) => isLoopback(ipOf(a) ?? ''));
  if (!reachable && !onLoopback) {
    const relays: string[] = [];
    for (const c of node.getConnections()) {
      if (c.limits != null || c.remotePeer.equals(t) || relays.includes(c.remotePeer.toString())) continue;
      const info = await node.peerStore.get(c.remotePeer, { signal }).catch(() => undefined);
      if (info?.protocols.includes(RELAY_V2_HOP_CODEC)) relays.push(c.remotePeer.toString());
    }
    for (const r of relays) {
      try {
        return await node.dial(multiaddr(`/p2p/${r}/p2p-circuit/p2p/${t.toString()}`), { signal });
      } catch {
        signal?.throwIfAborted(); // no slot there (NO_RESERVATION, answered at once): the next relay
      }
    }
  }
  return await node.dial(t, { signal });
}

function isPeerIdTarget(t: Multiaddr | PeerId): t is PeerId {
  return !('getComponents' in t);
}
