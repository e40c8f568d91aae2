/**
 * The libp2p host: one js-libp2p 3 node per Tessera peer.
 *
 * TCP transport, noise encryption, yamux multiplexing, identify, ping, a Kademlia DHT on a
 * private protocol id (so a swarm never joins the public IPFS DHT), gossipsub for small
 * control messages, optional mDNS (LAN discovery) and an optional bootstrap list. The
 * identity is persistent (identity.ts). Byte counts of every connection and protocol
 * stream go to a NetMetrics (metrics.ts).
 */
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import { createLibp2p, type Libp2p, type Libp2pOptions } from 'libp2p';
import { tcp } from '@libp2p/tcp';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { identify, type Identify } from '@libp2p/identify';
import { ping, type Ping } from '@libp2p/ping';
import { kadDHT, passthroughMapper, type KadDHT } from '@libp2p/kad-dht';
import { gossipsub, type GossipSub, type GossipsubOpts } from '@libp2p/gossipsub';
import { createPeerScoreParams, createTopicScoreParams } from '@libp2p/gossipsub/score';
import { mdns } from '@libp2p/mdns';
import { bootstrap } from '@libp2p/bootstrap';
import { peerIdFromString } from '@libp2p/peer-id';
import { pino, type Logger } from 'pino';
import type { AbortOptions, Ed25519PrivateKey, PeerId } from '@libp2p/interface';
import { loadOrCreateIdentity } from './identity.js';
import { NetMetrics } from './metrics.js';
import { AbortedError, HostError, abortedError } from './errors.js';

/** Kademlia protocol id of Tessera swarms (not the public IPFS one). */
export const TESSERA_DHT_PROTOCOL = '/tessera/kad/1.0.0';

export interface HostServices extends Record<string, unknown> {
  identify: Identify;
  ping: Ping;
  dht: KadDHT;
  pubsub: GossipSub;
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
  /** Byte accounting; a fresh NetMetrics when omitted. */
  metrics?: NetMetrics;
  /** pino logger; default: pino at level 'warn' (TESSERA_LOG overrides) on stderr. */
  logger?: Logger;
  /** Extra gossipsub options. */
  gossipsub?: Partial<GossipsubOpts>;
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
  /** Round-trip time in ms to a peer (pings over an existing or new connection). */
  ping(target: string | Multiaddr | PeerId, options?: AbortOptions): Promise<number>;
  /** Peer ids we have an open connection to. */
  connectedPeers(): string[];
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

  const peerDiscovery: NonNullable<Libp2pOptions['peerDiscovery']> = [];
  if (options.mdns === true) peerDiscovery.push(mdns());
  if (boot.length > 0) peerDiscovery.push(bootstrap({ list: boot }));

  let node: Libp2pNode;
  try {
    node = await createLibp2p<HostServices>({
      privateKey: identity.privateKey,
      addresses: { listen },
      transports: [tcp()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
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
      },
      start: false,
    });
  } catch (err) {
    throw new HostError(`cannot create libp2p node: ${(err as Error).message}`, { cause: err });
  }
  try {
    await raceAbort(Promise.resolve(node.start()), signal, 'host start');
  } catch (err) {
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
    async ping(target, opts = {}) {
      try {
        return await node.services.ping.ping(toDialTarget(target), opts);
      } catch (err) {
        if (opts.signal?.aborted === true) throw abortedError('ping', opts.signal);
        throw new HostError(`ping ${String(target)} failed: ${(err as Error).message}`, { cause: err });
      }
    },
    connectedPeers: () => [...new Set(node.getConnections().map((c) => c.remotePeer.toString()))],
    async stop(opts = {}) {
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
