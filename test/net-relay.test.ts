/**
 * Circuit relay v2 on one machine (issue 16): a relay host with limits from RelayLimits, a host
 * that reserves a slot on it (`reserve: true`, as a peer behind a NAT does by itself), and a
 * third host that reaches the reserved one only through its /p2p-circuit address. Bulk objects
 * travel over that limited connection within the relay's data limit; a larger one is refused
 * before its body (RelayLimitError), not cut by the relay mid-way. No namespaces needed: the
 * real NAT lab is test/nat.test.ts.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  RelayLimitError,
  createHost,
  fetchBulk,
  listenScope,
  serveBulk,
  type Host,
  type Reachability,
} from '../src/net/index.js';
import { sha256HexNode as sha256Hex } from '../src/util/hash-node.js';
import { fetchOrder } from '../src/peer/updates.js';

const dirs: string[] = [];
const hosts: Host[] = [];
after(async () => {
  for (const h of hosts) await h.stop().catch(() => undefined);
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function until(what: string, cond: () => boolean, ms = 20_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('listenScope: loopback is neither public nor behind a NAT; private LAN addresses are', () => {
  assert.deepEqual(listenScope(['/ip4/127.0.0.1/tcp/0']), { public: false, natted: false });
  assert.deepEqual(listenScope(['/ip4/10.1.0.2/tcp/4001']), { public: false, natted: true });
  assert.deepEqual(listenScope(['/ip4/192.168.1.5/tcp/4001']), { public: false, natted: true });
  assert.deepEqual(listenScope(['/ip4/11.0.0.11/tcp/4001']), { public: true, natted: false });
  assert.deepEqual(listenScope(['/ip4/10.1.0.2/tcp/4001'], ['/dns4/example.org/tcp/4001']), {
    public: true,
    natted: false,
  });
});

test('fetchOrder: named peers with a direct connection, other direct peers, then relayed named peers', () => {
  const conns = [
    { peer: 'pubA', relayed: false },
    { peer: 'pubB', relayed: false },
    { peer: 'homeX', relayed: true },
    { peer: 'author', relayed: false },
  ];
  // The author is directly connected: asked first, then the other direct peers.
  assert.deepEqual(fetchOrder(['author'], conns, 'me'), ['author', 'pubA', 'pubB']);
  // A home author reachable only through a relay (or not connected): asked last.
  assert.deepEqual(fetchOrder(['homeX', 'homeY'], conns, 'me'), ['pubA', 'pubB', 'author', 'homeX', 'homeY']);
  // Self and peers that served bad bytes are never asked; `extra` caps the unnamed ones.
  assert.deepEqual(fetchOrder(['me', 'homeX'], conns, 'me', new Set(['pubA']), 1), ['pubB', 'homeX']);
  // A peer whose last fetch timed out (a link that went down under an open connection) goes last.
  assert.deepEqual(fetchOrder(['author'], conns, 'me', new Set(), 8, new Set(['author', 'pubA'])), [
    'pubB',
    'author',
    'pubA',
  ]);
});

test('bulk over a relayed (limited) connection, within the relay limit', { timeout: 60_000 }, async () => {
  const mk = async (o: Parameters<typeof createHost>[0]): Promise<Host> => {
    const h = await createHost(o);
    hosts.push(h);
    return h;
  };
  const dir = async (): Promise<string> => {
    const d = await mkdtemp(join(tmpdir(), 'tessera-relay-'));
    dirs.push(d);
    return d;
  };
  const relay = await mk({ dataDir: await dir(), relay: true, relayLimits: { maxBytes: 1 << 20 } });
  const seen: Reachability[] = [];
  const home = await mk({
    dataDir: await dir(),
    reserve: true,
    bootstrap: [relay.multiaddrs()[0]],
    onReachability: (r) => seen.push(r),
  });
  await until('a relay reservation', () => home.reachability().relayed && seen.at(-1)?.relayed === true);
  assert.equal(relay.relayStats().reservations, 1);
  assert.equal(home.reachability().status, 'private', 'loopback only: not public');
  assert.ok(seen.at(-1)?.relayed, 'onReachability heard the reservation');
  assert.ok(
    seen.length >= 2 && !seen[0].relayed,
    `reachability reported once per change: ${JSON.stringify(seen.map((r) => r.relayed))}`,
  );

  const small = randomBytes(200 * 1024);
  const big = randomBytes(2 << 20);
  const store = new Map([
    [sha256Hex(small), small],
    [sha256Hex(big), big],
  ]);
  await serveBulk(home, (h) => store.get(h));

  // The third host knows the home peer only by its circuit address.
  const other = await mk({ dataDir: await dir() });
  const circuit = home.reachability().relayAddrs[0];
  assert.match(circuit, /\/p2p-circuit\/p2p\//);
  await other.dial(circuit, { signal: AbortSignal.timeout(10_000) });
  const conn = other.connections().find((c) => c.peer === home.peerId);
  assert.ok(conn?.relayed && conn.limited, `relayed, limited connection: ${JSON.stringify(conn)}`);

  const before = relay.relayStats().carriedBytes;
  // Addressed by its circuit address, the fetch takes the relayed connection.
  const got = await fetchBulk(other, circuit, sha256Hex(small), {
    maxBytes: 1 << 20,
    signal: AbortSignal.timeout(10_000),
  });
  assert.equal(sha256Hex(got), sha256Hex(small));
  await until('the relay counted the bytes it carried', () => relay.relayStats().carriedBytes - before >= small.length);
  assert.ok(other.metrics.counter('bulk.fetchedRelayedBytes') >= small.length);
  await assert.rejects(
    fetchBulk(other, circuit, sha256Hex(big), { maxBytes: 4 << 20, signal: AbortSignal.timeout(10_000) }),
    (e: unknown) => e instanceof RelayLimitError && e.limit < 1 << 20, // what is left of it
  );
  // By peer id, libp2p prefers a direct connection where the peer's addresses (learnt by
  // identify over the relayed one) can be dialled: on loopback they can.
  const direct = await fetchBulk(other, home.peerId, sha256Hex(big), {
    maxBytes: 4 << 20,
    signal: AbortSignal.timeout(10_000),
  });
  assert.equal(sha256Hex(direct), sha256Hex(big));
  assert.ok(other.connections().some((c) => c.peer === home.peerId && !c.relayed));
});
