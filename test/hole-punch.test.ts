/**
 * The punch port (src/net/hole-punch.ts) on one machine: with hole punching on, every outbound
 * TCP dial leaves from the fixed port, so every peer we dial sees us at the same address; a
 * punch port that is also a listen port is refused. The NATs and DCUtR itself are exercised in
 * test/nat-holepunch.test.ts.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostError, createHost, type Host } from '../src/net/index.js';
import { freeTcpPort } from '../src/net/hole-punch.js';

const dirs: string[] = [];
const hosts: Host[] = [];
after(async () => {
  for (const h of hosts) await h.stop().catch(() => undefined);
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}
const dir = async (): Promise<string> => {
  const d = await mkdtemp(join(tmpdir(), 'tessera-punch-'));
  dirs.push(d);
  return d;
};

test('a punch port that is also a TCP listen port is refused', async () => {
  const port = await freeTcpPort();
  await assert.rejects(
    createHost({ dataDir: await dir(), listen: [`/ip4/127.0.0.1/tcp/${port}`], holePunch: true, punchPort: port }),
    (e: unknown) => e instanceof HostError && /also a TCP listen port/.test(e.message),
  );
  await assert.rejects(
    createHost({ dataDir: await dir(), holePunch: true, punchPort: 70_000 }),
    (e: unknown) => e instanceof HostError,
  );
});

test('with hole punching on, every outbound TCP dial leaves from the punch port', { timeout: 30_000 }, async () => {
  const punchPort = await freeTcpPort();
  const a = await createHost({ dataDir: await dir(), holePunch: true, punchPort });
  const b = await createHost({ dataDir: await dir() });
  const c = await createHost({ dataDir: await dir() });
  hosts.push(a, b, c);
  for (const t of [b, c]) await a.dial(t.multiaddrs()[0], { signal: AbortSignal.timeout(10_000) });
  // The listener registers its inbound connection a moment after the dialer's resolves.
  await until(() => [b, c].every((t) => t.connections().some((x) => x.peer === a.peerId)));
  for (const t of [b, c]) {
    const seen = t.connections().filter((x) => x.peer === a.peerId);
    assert.equal(seen.length, 1);
    assert.equal(seen[0].remoteAddr, `/ip4/127.0.0.1/tcp/${punchPort}/p2p/${a.peerId}`, 'seen at the punch port');
  }
  // Without it (the default on loopback), dials leave from ephemeral ports as before.
  await b.dial(c.multiaddrs()[0], { signal: AbortSignal.timeout(10_000) });
  await until(() => c.connections().some((x) => x.peer === b.peerId));
  const fromB = c.connections().find((x) => x.peer === b.peerId)!;
  assert.doesNotMatch(fromB.remoteAddr, new RegExp(`/tcp/${punchPort}/`));
  assert.deepEqual(a.reachability().punchAddrs, [], 'loopback observations are never offered');
});
