/**
 * Our public address as the peers we dialled see it, for hole punching (issue 16).
 *
 * A peer behind a NAT cannot know its router's WAN address and port by itself. Every peer it
 * connects to tells it, in identify's `observedAddr`, the address the connection came from. Each
 * report is a claim by one remote peer, so the book only believes an address that several
 * peers on distinct IP addresses agree on, and only while their connections stay open:
 *
 * - one vote per reporter IP address and address claimed: a peer (or many peer ids on one
 *   machine) cannot outvote others by opening connections;
 * - an address is confirmed when at least `minAgree` (default 2) distinct reporter IPs claim it
 *   and strictly more than claim any other address of its IP family; a tie confirms nothing
 *   (a symmetric NAT, whose mapping differs per destination, never gets an agreed address);
 * - at most one confirmed address per IP family, and at most `maxTracked` observations at once
 *   (further reports are refused until connections close);
 * - only public, plain TCP addresses (`/ip4|ip6/<public ip>/tcp/<port>`), from public reporters.
 *
 * Who may call it: any peer we dialled, through identify (one observedAddr per connection).
 * What it costs them: a connection we opened. What it costs us: one map entry per connection
 * (capped). What a liar can do: with votes from more distinct IPs than the honest reporters, make
 * us *offer* a wrong address to the peers we hole-punch with (DCUtR's CONNECT message), which
 * then send a few SYNs there and fall back to the relay; never redirect our own traffic (we never
 * dial our own observed address), never reach identify or the DHT (the address is not
 * advertised), and only while its connections stay open (the vote goes when the connection goes).
 *
 * Pure: no I/O, no clock. host.ts feeds it from libp2p events (hole-punch.ts).
 */
import { isPrivateIp } from '@libp2p/utils';

export interface ObservedAddrOptions {
  /** Distinct reporter IPs that must agree on an address. Default 2 (at least 1). */
  minAgree?: number;
  /** Most observations held at once (one per connection). Default 64. */
  maxTracked?: number;
}

/** What the book did with one report (counted by the caller; stable strings). */
export type ObservationVerdict = 'accepted' | 'malformed' | 'not-public' | 'full';

interface Observation {
  reporter: string;
  addr: string;
  family: 4 | 6;
}

const TCP_ADDR = /^\/ip([46])\/([^/]+)\/tcp\/(\d{1,5})$/;

/** `/ip4|ip6/<ip>/tcp/<port>` (any trailing /p2p/<id> removed) with its parts, or undefined. */
export function parseTcpAddr(ma: string): { family: 4 | 6; ip: string; port: number; addr: string } | undefined {
  const bare = ma.replace(/\/p2p\/[^/]+$/, '');
  const m = TCP_ADDR.exec(bare);
  if (m == null) return undefined;
  const port = Number(m[3]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  const family = m[1] === '4' ? 4 : 6;
  // isPrivateIp answers undefined for a string that is not an IP of either family.
  const priv = isPrivateIp(m[2]);
  if (priv === undefined) return undefined;
  return { family, ip: m[2], port, addr: `/ip${family}/${m[2]}/tcp/${port}` };
}

/** A public IP: neither private, loopback, link-local nor unparsable. */
export function isPublicIp(ip: string): boolean {
  return isPrivateIp(ip) === false && ip !== '0.0.0.0' && ip !== '::';
}

export class ObservedAddrBook {
  readonly #minAgree: number;
  readonly #maxTracked: number;
  /** Connection id → what the peer on that connection said about us. */
  readonly #byConn = new Map<string, Observation>();

  constructor(o: ObservedAddrOptions = {}) {
    this.#minAgree = Math.max(1, Math.floor(o.minAgree ?? 2));
    this.#maxTracked = Math.max(1, Math.floor(o.maxTracked ?? 64));
  }

  /** Observations held. */
  get size(): number {
    return this.#byConn.size;
  }

  /**
   * The peer at `reporterIp` said, on connection `connId`, that it sees us at `observed`. A later
   * report on the same connection replaces the earlier one (still one vote).
   */
  report(connId: string, reporterIp: string, observed: string): ObservationVerdict {
    const parsed = parseTcpAddr(observed);
    if (parsed == null || typeof connId !== 'string' || connId === '') return 'malformed';
    if (!isPublicIp(parsed.ip) || !isPublicIp(reporterIp)) return 'not-public';
    if (!this.#byConn.has(connId) && this.#byConn.size >= this.#maxTracked) return 'full';
    this.#byConn.set(connId, { reporter: reporterIp, addr: parsed.addr, family: parsed.family });
    return 'accepted';
  }

  /** The connection closed: its vote goes. */
  drop(connId: string): void {
    this.#byConn.delete(connId);
  }

  /**
   * The agreed addresses (at most one per IP family, IPv4 first), counting only the
   * connections `eligible` accepts (default all).
   */
  confirmed(eligible: (connId: string) => boolean = () => true): string[] {
    const votes = new Map<string, { family: 4 | 6; reporters: Set<string> }>();
    for (const [id, o] of this.#byConn) {
      if (!eligible(id)) continue;
      let v = votes.get(o.addr);
      if (v == null) votes.set(o.addr, (v = { family: o.family, reporters: new Set() }));
      v.reporters.add(o.reporter);
    }
    const out: string[] = [];
    for (const family of [4, 6] as const) {
      const ranked = [...votes]
        .filter(([, v]) => v.family === family)
        .map(([addr, v]) => ({ addr, n: v.reporters.size }))
        .sort((a, b) => b.n - a.n || (a.addr < b.addr ? -1 : 1));
      const [best, second] = ranked;
      if (best != null && best.n >= this.#minAgree && (second == null || best.n > second.n)) out.push(best.addr);
    }
    return out;
  }
}
