/**
 * LAN discovery: two hosts started with `mdns: true` and no bootstrap list find each other by
 * multicast DNS (@libp2p/mdns: PTR queries for `_p2p._udp.local` to 224.0.0.251:5353, answered
 * with TXT `dnsaddr=<multiaddr>/p2p/<id>` records for the host's private/loopback addresses),
 * auto-dial, and exchange signed gossip control messages. A third host with the default
 * options (mDNS off) is never found.
 *
 * mDNS needs IPv4 multicast that the kernel loops back to local sockets. That is probed first,
 * the same way multicast-dns uses the network (bind 0.0.0.0:5353 with SO_REUSEADDR, join the
 * group on the first IPv4 address of every interface, send through the default multicast
 * interface); where it does not work the test is skipped with the reason, never passed. (A
 * loopback-only machine can get it with `ip link set lo multicast on; ip route add 224.0.0.0/4
 * dev lo`.)
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { z } from 'zod';
import {
  createHost,
  joinControlChannel,
  type ControlChannel,
  type Host,
  type OpenedMessage,
} from '../src/net/index.js';

const MDNS_GROUP = '224.0.0.251';
const MDNS_PORT = 5353;

function ipv4Interfaces(): string {
  return (
    Object.entries(networkInterfaces())
      .flatMap(([name, list]) =>
        (list ?? [])
          .filter((i) => i.family === 'IPv4')
          .map((i) => `${name} ${i.address}${i.internal ? ' (internal)' : ''}`),
      )
      .join(', ') || 'none'
  );
}

/** A DNS query for one TXT record (RFC 1035 wire format, id 0 as mDNS wants). */
function dnsQuery(name: string): Buffer {
  const labels = name.split('.').flatMap((l) => [Buffer.from([l.length]), Buffer.from(l, 'ascii')]);
  return Buffer.concat([
    Buffer.from([0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]), // id, flags, 1 question, no records
    ...labels,
    Buffer.from([0]),
    Buffer.from([0, 16, 0, 1]), // TXT, IN
  ]);
}

/**
 * Whether a query multicast to 224.0.0.251:5353 comes back to a local socket. Resolves to
 * undefined if it does, else to the reason it does not.
 */
async function multicastProbe(ms = 3000): Promise<string | undefined> {
  const where = `IPv4 interfaces: ${ipv4Interfaces()}; a loopback-only machine needs \`ip link set lo multicast on; ip route add 224.0.0.0/4 dev lo\``;
  const query = dnsQuery(`tessera-probe-${randomBytes(6).toString('hex')}.local`);
  const sock = createSocket({ type: 'udp4', reuseAddr: true });
  sock.on('error', () => undefined);
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(MDNS_PORT, () => {
        sock.off('error', reject);
        resolve();
      });
    });
    const joined: string[] = [];
    const failed: string[] = [];
    for (const [name, list] of Object.entries(networkInterfaces())) {
      const v4 = (list ?? []).find((i) => i.family === 'IPv4');
      if (v4 == null) continue;
      try {
        sock.addMembership(MDNS_GROUP, v4.address);
        joined.push(`${name} ${v4.address}`);
      } catch (err) {
        failed.push(`${name} ${v4.address}: ${(err as Error).message}`);
      }
    }
    if (joined.length === 0) return `cannot join ${MDNS_GROUP} on any interface (${failed.join('; ') || where})`;
    sock.setMulticastLoopback(true);
    const signal = AbortSignal.timeout(ms);
    const heard = new Promise<boolean>((resolve) => {
      sock.on('message', (msg) => {
        if (msg.equals(query)) resolve(true);
      });
      signal.addEventListener('abort', () => resolve(false), { once: true });
    });
    await new Promise<void>((resolve, reject) =>
      sock.send(query, MDNS_PORT, MDNS_GROUP, (err) => (err ? reject(err) : resolve())),
    );
    if (!(await heard))
      return `a query multicast to ${MDNS_GROUP}:${MDNS_PORT} was not looped back within ${ms} ms (joined on ${joined.join(', ')}; ${where})`;
    return undefined;
  } catch (err) {
    return `IPv4 multicast to ${MDNS_GROUP}:${MDNS_PORT} is unusable here: ${(err as Error).message} (${where})`;
  } finally {
    sock.close();
  }
}

/** A pino logger that keeps its records in memory. */
function memoryLogger(): { logger: Logger; records: Array<Record<string, unknown>> } {
  const records: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void records.push(JSON.parse(s)) });
  return { logger, records };
}

async function until(
  what: string,
  cond: () => boolean,
  signal: AbortSignal,
  detail: () => string = () => '',
): Promise<void> {
  while (!cond()) {
    if (signal.aborted) throw new Error(`timed out waiting for ${what}${detail() ? `\n${detail()}` : ''}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const schemas = { hello: z.object({ n: z.number().int(), note: z.string().max(100) }) };

const skip = await multicastProbe();

describe('mDNS LAN discovery', () => {
  test(
    'two hosts with mdns: true and no bootstrap find each other, connect and gossip',
    { skip: skip ?? false },
    async (t) => {
      const dirs = await Promise.all([0, 1, 2].map(() => mkdtemp(join(tmpdir(), 'tessera-mdns-'))));
      const logs = [memoryLogger(), memoryLogger(), memoryLogger()];
      const hosts: Host[] = [];
      const channels: Array<ControlChannel<typeof schemas>> = [];
      try {
        const t0 = Date.now();
        // Mdns off (the default): must stay invisible to the other two.
        const quiet = await createHost({
          dataDir: dirs[2],
          logger: logs[2].logger,
          signal: AbortSignal.timeout(10_000),
        });
        hosts.push(quiet);
        const a = await createHost({
          dataDir: dirs[0],
          mdns: true,
          logger: logs[0].logger,
          signal: AbortSignal.timeout(10_000),
        });
        hosts.push(a);
        const b = await createHost({
          dataDir: dirs[1],
          mdns: true,
          logger: logs[1].logger,
          signal: AbortSignal.timeout(10_000),
        });
        hosts.push(b);
        assert.ok(
          a.multiaddrs().every((m) => m.startsWith('/ip4/127.0.0.1/tcp/')),
          a.multiaddrs().join(' '),
        );

        // Neither host was told about the other: a connection can only come from mDNS.
        const discovered = new Map<Host, Set<string>>([
          [a, new Set()],
          [b, new Set()],
        ]);
        for (const h of [a, b])
          h.node.addEventListener('peer:discovery', (e) => void discovered.get(h)!.add(e.detail.id.toString()));
        const debug = (): string =>
          logs
            .slice(0, 2)
            .map(
              (l, i) =>
                `host ${'ab'[i]}: ${l.records.map((r) => `${String(r.msg)} ${String(r.err ?? '')}`).join(' | ')}`,
            )
            .join('\n');
        await until(
          'A and B to connect through mDNS',
          () => a.connectedPeers().includes(b.peerId) && b.connectedPeers().includes(a.peerId),
          AbortSignal.timeout(15_000),
          debug,
        );
        const connectedMs = Date.now() - t0;
        t.diagnostic(`connected through mDNS ${connectedMs} ms after the first host started`);

        // The dialing side dialed a listen address the other side announced over mDNS.
        const tcpPart = (m: string): string => m.split('/p2p/')[0];
        const outbound = (
          [
            [a, b],
            [b, a],
          ] as const
        ).flatMap(([from, to]) =>
          from.node
            .getConnections(to.node.peerId)
            .filter((c) => c.direction === 'outbound')
            .map((c) => ({ remote: tcpPart(c.remoteAddr.toString()), to })),
        );
        assert.ok(outbound.length >= 1, 'one of the two dialed the other');
        for (const { remote, to } of outbound)
          assert.ok(to.multiaddrs().map(tcpPart).includes(remote), `${remote} not in ${to.multiaddrs().join(' ')}`);
        for (const [from, to] of [
          [a, b],
          [b, a],
        ] as const) {
          const known = (await from.node.peerStore.get(to.node.peerId)).addresses.map((x) =>
            tcpPart(x.multiaddr.toString()),
          );
          assert.ok(
            to
              .multiaddrs()
              .map(tcpPart)
              .some((m) => known.includes(m)),
            `${known.join(' ')} vs ${to.multiaddrs().join(' ')}`,
          );
        }

        // Signed gossip flows both ways over the discovered connection.
        const got: Array<Array<OpenedMessage<typeof schemas>>> = [[], []];
        channels.push(
          joinControlChannel({ host: a, runId: 'mdns-test', schemas, onMessage: (m) => void got[0].push(m) }),
        );
        channels.push(
          joinControlChannel({ host: b, runId: 'mdns-test', schemas, onMessage: (m) => void got[1].push(m) }),
        );
        const [chA, chB] = channels;
        const subscribed = AbortSignal.timeout(10_000);
        await Promise.all([
          chA.waitForSubscribers(1, { signal: subscribed }),
          chB.waitForSubscribers(1, { signal: subscribed }),
        ]);
        assert.ok((await chA.publish('hello', { n: 1, note: 'from a' })).recipients >= 1);
        await until("B to receive A's message", () => got[1].length === 1, AbortSignal.timeout(10_000));
        assert.equal(got[1][0].from, a.peerId);
        assert.deepEqual(got[1][0].body, { n: 1, note: 'from a' });
        await chB.publish('hello', { n: 2, note: 'from b' });
        await until("A to receive B's message", () => got[0].length === 1, AbortSignal.timeout(10_000));
        assert.equal(got[0][0].from, b.peerId);
        assert.deepEqual(got[0][0].body, { n: 2, note: 'from b' });

        // The host without mDNS was neither found nor connected (it never answered a query).
        for (const h of [a, b]) {
          assert.ok(!h.connectedPeers().includes(quiet.peerId));
          assert.ok(!discovered.get(h)!.has(quiet.peerId));
        }
        assert.deepEqual(quiet.connectedPeers(), []);
        t.diagnostic(
          `A discovered ${discovered.get(a)!.size} peer(s), B ${discovered.get(b)!.size} (events after listeners were attached)`,
        );
      } finally {
        for (const ch of channels) ch.close();
        await Promise.allSettled(hosts.map((h) => h.stop({ signal: AbortSignal.timeout(5000) })));
        await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
      }
    },
  );
});
