/**
 * Hole punching between home peers (issue 16), on the namespace lab of test/support/netlab.ts:
 * 2 public hosts (relays) and 3 homes, two behind port-restricted cone NATs and one behind a
 * symmetric NAT. Each host is a real libp2p host (src/net/host.ts) in its own process
 * (test/support/lab-peer.ts), dialling through the lab's real nftables NATs.
 *
 * - Each cone home learns its router's WAN address and mapped dial port from the two public
 *   peers (they agree); the symmetric home gets a different port from each and offers nothing.
 * - h1 reaches h2 through a relay; DCUtR turns that into a direct TCP connection whose remote
 *   address is h2's router's WAN address and punch port, and bulk objects travel over it both
 *   ways (the relays carry none of their bytes); the punch address does not stay in either
 *   peer store, and the connection outlives DCUtR's 5 s dial timer.
 * - h3 (symmetric) reaches h1 through a relay and stays relayed: the DCUtR exchange happens but
 *   h3 has no address to offer, so nobody dials.
 * - The cone homes' connections to the public peers stay open throughout (AutoNAT's dial-back
 *   used to close them: src/net/autonat.ts).
 *
 * Measured: 15-25 s on a machine loaded 15-22 (2 cores), most of it process start-up and one
 * deliberate 6 s wait.
 *
 * Needs root and a kernel with network namespaces, veth, bridges and nftables: without them the
 * test fails, it never skips.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { ConnectionInfo, HostOptions, Reachability } from '../src/net/index.js';
import { createLab, type Lab } from './support/netlab.js';

const LAB_PEER = fileURLToPath(new URL('./support/lab-peer.js', import.meta.url));
const PORT = 4001; // listen port (every namespace has its own ports)
const PUNCH_PORT = 4002; // the homes' fixed dial port

const root = mkdtempSync(join(tmpdir(), 'tessera-holepunch-'));
let lab: Lab | undefined;
const peers: LabPeer[] = [];
after(() => {
  for (const p of peers) p.child.kill('SIGKILL');
  lab?.destroy();
  rmSync(root, { recursive: true, force: true });
});

type Answer = Record<string, unknown> & { ok: boolean; error?: string };
interface Stats {
  counters: Record<string, number>;
  protocols: Record<string, { sent: number; received: number }>;
  relay: { carriedBytes: number };
  conns: ConnectionInfo[];
}

class LabPeer {
  readonly child: ChildProcess;
  peerId = '';
  reach: Reachability | undefined;
  /** Each distinct punch address set in turn ('' = none): it should go from none to one, once. */
  readonly punchHistory: string[] = [''];
  stderr = '';
  #next = 1;
  readonly #pending = new Map<number, (a: Answer) => void>();

  constructor(
    readonly name: string,
    ns: string,
    opts: HostOptions,
  ) {
    this.child = spawn('ip', ['netns', 'exec', ns, process.execPath, LAB_PEER, JSON.stringify(opts)], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stderr!.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-4000)));
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      let m: Record<string, unknown>;
      try {
        m = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      if (m.event === 'ready') this.peerId = m.peerId as string;
      else if (m.event === 'reach') {
        this.reach = m as unknown as Reachability;
        const now = this.reach.punchAddrs.join(' ');
        if (now !== this.punchHistory.at(-1)) this.punchHistory.push(now);
      } else if (typeof m.id === 'number') this.#pending.get(m.id)?.(m as Answer);
    });
  }

  async cmd(c: Record<string, unknown>): Promise<Answer> {
    const id = this.#next++;
    const answer = new Promise<Answer>((resolve) => this.#pending.set(id, resolve));
    this.child.stdin!.write(JSON.stringify({ ...c, id }) + '\n');
    const a = await answer;
    this.#pending.delete(id);
    assert.ok(a.ok, `${this.name} ${String(c.cmd)}: ${a.error}\n${this.stderr}`);
    return a;
  }

  async stats(): Promise<Stats> {
    return (await this.cmd({ cmd: 'stats' })) as unknown as Stats;
  }

  /** Our open direct (not relayed) connections to `peer`. */
  async direct(peer: LabPeer): Promise<ConnectionInfo[]> {
    return (await this.stats()).conns.filter((c) => c.peer === peer.peerId && !c.relayed);
  }
}

/** Polls `cond` (each peer's event stream updates its fields) until true, or fails with every peer's stderr. */
async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 30_000): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > ms) {
      const tails = peers.map((p) => `--- ${p.name}: reach ${JSON.stringify(p.reach)}\n${p.stderr.slice(-1500)}`);
      throw new Error(`timed out after ${ms} ms waiting for ${what}\n${tails.join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

test(
  'DCUtR hole-punches the two cone-NAT homes over TCP; the symmetric home stays relayed',
  { timeout: 90_000 },
  async (t) => {
    lab = createLab({ publicHosts: 2, homes: [{ nat: 'cone' }, { nat: 'cone' }, { nat: 'symmetric' }] });
    const start = (name: string, o: Partial<HostOptions>): LabPeer => {
      const h = lab!.host(name);
      const p = new LabPeer(name, h.ns, {
        dataDir: join(root, name),
        listen: [`/ip4/${h.ip}/tcp/${PORT}`],
        ...o,
      });
      peers.push(p);
      return p;
    };
    const [pub1, pub2] = ['pub1', 'pub2'].map((n) => start(n, { relay: true }));
    await until('the public peers', () => pub1.peerId !== '' && pub2.peerId !== '');
    const boot = [pub1, pub2].map((p) => `/ip4/${lab!.host(p.name).ip}/tcp/${PORT}/p2p/${p.peerId}`);
    const [h1, h2, h3] = ['h1', 'h2', 'h3'].map((n) => start(n, { bootstrap: boot, punchPort: PUNCH_PORT }));
    const wan = (p: LabPeer): string => lab!.host(p.name).router!.wanIp;

    // Each home holds a relay slot; a cone home's two public peers agree on where its dial port
    // maps to: its router's WAN address, port kept.
    await until(
      'relay slots on every home, and the cone homes agreeing with their observers',
      () =>
        [h1, h2, h3].every((h) => h.reach?.relayed === true) && [h1, h2].every((h) => h.reach?.punchAddrs.length === 1),
    );
    for (const h of [h1, h2]) assert.deepEqual(h.reach!.punchAddrs, [`/ip4/${wan(h)}/tcp/${PUNCH_PORT}`]);
    for (const h of [h1, h2, h3]) assert.equal(h.reach!.status, 'private', `${h.name} advertises no public address`);
    // The symmetric home heard from both public peers, each saw a different port: nothing agreed.
    await until('h3 to hear its observed address from both public peers', async () => {
      const s = await h3.stats();
      return (s.counters['net.observed.accepted'] ?? 0) >= 2;
    });
    assert.deepEqual(h3.reach!.punchAddrs, [], 'a symmetric NAT gets no agreed address');

    // h1 → h2: through a relay first (h2 is reachable no other way), then DCUtR punches through.
    const t0 = Date.now();
    const viaRelay = await h1.cmd({ cmd: 'connect', peer: h2.peerId });
    const tRelayed = Date.now();
    assert.match(viaRelay.remoteAddr as string, /\/p2p-circuit\//, 'the first connection is relayed');
    await until(
      'a direct h1–h2 connection (hole punched)',
      async () => (await h1.direct(h2)).length > 0 && (await h2.direct(h1)).length > 0,
    );
    const tDirect = Date.now();
    const [d1] = await h1.direct(h2);
    const [d2] = await h2.direct(h1);
    assert.equal(d1.remoteAddr, `/ip4/${wan(h2)}/tcp/${PUNCH_PORT}/p2p/${h2.peerId}`, "h1 sees h2's router");
    assert.equal(d2.remoteAddr, `/ip4/${wan(h1)}/tcp/${PUNCH_PORT}/p2p/${h1.peerId}`, "h2 sees h1's router");
    assert.notEqual(d1.direction, d2.direction, 'one end upgraded as initiator, the other as responder');
    const punched = (await h1.stats()).counters['net.punch.direct'] ?? 0;
    assert.ok(punched >= 1, 'h1 completed a DCUtR dial');

    // A bulk object by hash, over the punched connection: the relays carry almost none of it.
    const SIZE = 4 << 20;
    const { hash } = (await h2.cmd({ cmd: 'put', size: SIZE })) as unknown as { hash: string };
    const carried = async (): Promise<number> =>
      (await pub1.stats()).relay.carriedBytes + (await pub2.stats()).relay.carriedBytes;
    const relayBefore = await carried();
    const tFetch = Date.now();
    const got = await h1.cmd({ cmd: 'fetch', peer: h2.peerId, hash });
    const fetchMs = Date.now() - tFetch;
    assert.equal(got.bytes, SIZE);
    const relayDelta = (await carried()) - relayBefore;
    assert.ok(relayDelta < SIZE / 8, `the relays carried ${relayDelta} bytes of a ${SIZE}-byte transfer`);
    assert.equal((await h1.stats()).counters['bulk.fetchedRelayedBytes'] ?? 0, 0, 'nothing fetched over a relay');
    assert.ok((await h1.direct(h2)).length > 0, 'the punched connection is still open');
    // Both ends open streams on it (the responder is a yamux server, the initiator a client).
    const { hash: back } = (await h1.cmd({ cmd: 'put', size: 1 << 20 })) as unknown as { hash: string };
    assert.equal((await h2.cmd({ cmd: 'fetch', peer: h1.peerId, hash: back })).bytes, 1 << 20);
    assert.equal((await h2.stats()).counters['bulk.fetchedRelayedBytes'] ?? 0, 0);
    // The punch address is not kept as a dialable address of the other peer (libp2p merges a
    // dialled address into the peer store; identify on the new connection replaces it): a later
    // dial there would only time out.
    await until("identify to replace the punch address in each other's peer store", async () => {
      const a = (await h1.cmd({ cmd: 'addrs', peer: h2.peerId })).addrs as string[];
      const b = (await h2.cmd({ cmd: 'addrs', peer: h1.peerId })).addrs as string[];
      return ![...a, ...b].some((x) => x.includes(`/tcp/${PUNCH_PORT}`));
    });
    t.diagnostic(
      `h1→h2: relayed after ${tRelayed - t0} ms, direct ${tDirect - tRelayed} ms later (50 ms polls); ` +
        `${SIZE} bytes in ${fetchMs} ms over the punched connection, relays carried ${relayDelta} bytes`,
    );

    // h3 (symmetric) → h1: relayed, and it stays so. h1 is DCUtR's B side (the relayed connection
    // is inbound to it): it sends its address, h3 answers with none, h1 gives up; nobody dials.
    const dcutrIn = async (p: LabPeer): Promise<number> => (await p.stats()).protocols['/libp2p/dcutr']?.received ?? 0;
    const [h1Dcutr, h3Dials] = [await dcutrIn(h1), (await h3.stats()).counters['net.punch.dials'] ?? 0];
    const viaRelay3 = await h3.cmd({ cmd: 'connect', peer: h1.peerId });
    assert.match(viaRelay3.remoteAddr as string, /\/p2p-circuit\//);
    await until("h1 to hear h3's DCUtR answer", async () => (await dcutrIn(h1)) > h1Dcutr);
    const { hash: small } = (await h1.cmd({ cmd: 'put', size: 64 << 10 })) as unknown as { hash: string };
    assert.equal((await h3.cmd({ cmd: 'fetch', peer: h1.peerId, hash: small })).bytes, 64 << 10);
    const s3 = await h3.stats();
    assert.equal(s3.counters['bulk.fetchedRelayedBytes'], 64 << 10, 'fetched through the relay');
    assert.deepEqual(
      s3.conns.filter((c) => c.peer === h1.peerId && !c.relayed),
      [],
      'no direct h3–h1 connection',
    );
    assert.deepEqual(await h1.direct(h3), [], 'no direct h1–h3 connection either way');
    assert.equal(s3.counters['net.punch.dials'] ?? 0, h3Dials, 'h3 never got a SYNC to dial on');
    assert.equal(s3.counters['net.punch.direct'] ?? 0, 0, 'h3 never punched through to anyone');
    // The punched connection outlives DCUtR's 5 s timer: it was dialled with a signal of its own
    // (when it got DCUtR's, every punched connection was aborted 5 s after it opened). This waits
    // on a clock because the property is about one.
    const punchedAt = tDirect;
    await until('6 s after the punch', () => Date.now() - punchedAt > 6000, 15_000);
    assert.ok((await h1.direct(h2)).length > 0 && (await h2.direct(h1)).length > 0, 'still direct after 6 s');
    assert.equal((await h1.stats()).counters['net.punch.direct'], punched, 'and still the first punched connection');
    // The connections that taught the cone homes their address stayed open throughout (AutoNAT's
    // dial-back used to close them a second after they opened: src/net/autonat.ts).
    for (const h of [h1, h2]) assert.deepEqual(h.punchHistory, ['', `/ip4/${wan(h)}/tcp/${PUNCH_PORT}`], h.name);
  },
);
