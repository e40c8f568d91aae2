/**
 * How a peer enters its run: it keeps dialling its bootstrap addresses, waits briefly for the
 * peers it expects (so early gossip is not lost), and decides how the reducer starts — from its
 * own acceptor record after a restart, as a genesis member (listed in --genesis-peers, or a
 * founder with neither genesis peers nor bootstrap), or unsynced with a list of peers to sync from.
 */
import { existsSync, readFileSync } from 'node:fs';
import type { Host } from '../net/index.js';
import { DIAL_BACKOFF, dialDue, dialFailed, type DialState } from '../net/backoff.js';
import { AcceptorRecordSchema, type AcceptorRecord, type InitOptions } from '../swarm/round.js';
import type { NodeOptions } from './options.js';

/** Limits on the initial wait for expected peers: with only mDNS, and otherwise. */
const MDNS_WAIT_MS = 5_000;
const PEER_WAIT_MS = 15_000;

const peerIdOf = (addr: string): string | undefined => /\/p2p\/([^/]+)/.exec(addr)?.[1];

/** Roster members this peer keeps connections to, at least (fewer when the roster is smaller). */
export const KEEP_MEMBERS = 8;
/** Roster members dialled per second at most, besides the bootstrap addresses. */
const MEMBER_DIALS_PER_TICK = 4;

export interface KeepDialing {
  /** Stops the timer. */
  stop(): void;
  /** Per-target dial state (for tests and logs). */
  readonly state: ReadonlyMap<string, DialState>;
}

/**
 * Keeps the peer connected (issue 16, "staying connected"): every second, each bootstrap address
 * that is not connected is dialled, and while fewer than KEEP_MEMBERS roster members are
 * connected, up to MEMBER_DIALS_PER_TICK unconnected members are dialled by peer id (libp2p looks
 * up their addresses in its peer store, learned from identify and the DHT, and the host tries
 * their relay slots), so peers find each other again after the bootstrap peers are gone and
 * after their own link was down. A target whose dial fails backs off (net/backoff.ts: 1, 2, 4,
 * 8 s, then every 15 s); a connected one starts over. One dial per target at a time.
 */
export function keepDialing(
  host: Host,
  targets: readonly string[],
  stopped: () => boolean,
  members: () => readonly string[] = () => [],
  rand: () => number = Math.random,
): KeepDialing {
  const state = new Map<string, DialState>();
  const inFlight = new Set<string>();
  const dial = (key: string, target: string, how: 'dial' | 'connect') => {
    inFlight.add(key);
    const signal = AbortSignal.timeout(how === 'dial' ? 2000 : 5000);
    const p = how === 'dial' ? host.dial(target, { signal }) : host.connect(target, { signal });
    p.then(
      () => state.delete(key),
      () => state.set(key, dialFailed(state.get(key), Date.now(), DIAL_BACKOFF, rand())),
    ).finally(() => inFlight.delete(key));
  };
  const attempt = () => {
    if (stopped()) return;
    const now = Date.now();
    const connected = new Set(host.connectedPeers());
    for (const a of targets) {
      const id = peerIdOf(a);
      if (id && connected.has(id)) {
        state.delete(a);
        continue;
      }
      if (!inFlight.has(a) && dialDue(state.get(a), now)) dial(a, a, 'dial');
    }
    const roster = members().filter((p) => p !== host.peerId);
    const have = roster.filter((p) => connected.has(p)).length;
    if (have >= Math.min(KEEP_MEMBERS, roster.length)) return;
    let budget = MEMBER_DIALS_PER_TICK;
    for (const p of roster) {
      if (budget === 0) break;
      if (connected.has(p)) {
        state.delete(p);
        continue;
      }
      if (inFlight.has(p) || !dialDue(state.get(p), now)) continue;
      budget--;
      dial(p, p, 'connect');
    }
  };
  attempt();
  const timer = setInterval(attempt, 1000);
  return { stop: () => clearInterval(timer), state };
}

/** Whether the peer has only mDNS to find its run (no genesis peers, no bootstrap). */
export const mdnsOnly = (o: NodeOptions): boolean => o.mdns === true && !o.genesisPeers?.length && !o.bootstrap?.length;

/**
 * Waits (briefly) for the other genesis peers, or one bootstrap or LAN peer, to subscribe to the
 * run's topic. With only mDNS a peer that finds the run's topic joins it instead of founding a
 * second, separate roster. Only the genesis peers themselves count when they are listed (any
 * other subscriber, even a hostile one, does not help).
 */
export async function waitForPeers(o: NodeOptions, subscribers: () => string[]): Promise<void> {
  const lan = mdnsOnly(o);
  const want = o.genesisPeers?.length ? o.genesisPeers.length - 1 : o.bootstrap?.length || lan ? 1 : 0;
  const t0 = Date.now();
  const waitMs = lan ? MDNS_WAIT_MS : PEER_WAIT_MS;
  const seen = () =>
    o.genesisPeers?.length ? subscribers().filter((p) => o.genesisPeers!.includes(p)).length : subscribers().length;
  while (seen() < want && Date.now() - t0 < waitMs) await new Promise((r) => setTimeout(r, 100));
}

/** The acceptor record a previous run of this peer left (null if none or unreadable). */
export function readAcceptorRecord(path: string): AcceptorRecord | undefined {
  if (!existsSync(path)) return undefined;
  const r = AcceptorRecordSchema.safeParse(JSON.parse(readFileSync(path, 'utf8')));
  return r.success ? r.data : undefined;
}

/** How the reducer starts: genesis roster, or the peers to sync from; plus the acceptor record if any. */
export function bootChoice(
  o: NodeOptions,
  self: string,
  discovered: readonly string[],
  acceptor: AcceptorRecord | undefined,
): Pick<InitOptions, 'genesis' | 'bootstrap' | 'acceptor'> {
  const bootIds = (o.bootstrap ?? []).map(peerIdOf).filter((x): x is string => !!x);
  const founder = !o.genesisPeers?.length && !o.bootstrap?.length && discovered.length === 0;
  const genesis =
    acceptor !== undefined
      ? undefined
      : o.genesisPeers?.includes(self)
        ? { roster: o.genesisPeers }
        : founder
          ? { roster: [self] }
          : undefined;
  return {
    ...(genesis ? { genesis } : { bootstrap: [...new Set([...bootIds, ...(o.genesisPeers ?? []), ...discovered])] }),
    ...(acceptor ? { acceptor } : {}),
  };
}
