/**
 * One libp2p host (src/net/host.ts) with a bulk server, driven over stdin/stdout, so a test can
 * run it inside a namespace of the NAT lab (netlab.ts): `ip netns exec <ns> node lab-peer.js
 * '<json options>'`.
 *
 * stdout, one JSON object per line: {event:'ready', peerId}, {event:'reach', ...Reachability}
 * on each change, and {id, ok, ...} / {id, ok: false, error} answers to commands.
 * stdin, one JSON command per line, each with an `id`:
 *   {cmd:'put', size}            store `size` random bytes, answer {hash}
 *   {cmd:'connect', peer}        Host.connect, answer {remoteAddr, relayed}
 *   {cmd:'fetch', peer, hash}    fetchBulk (cap 64 MiB, 30 s), answer {bytes}
 *   {cmd:'stats'}                answer {counters, protocols, relay: RelayStats, conns}
 *   {cmd:'addrs', peer}          answer {addrs}: the addresses our peer store holds for `peer`
 * The process exits when stdin closes.
 */
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { peerIdFromString } from '@libp2p/peer-id';
import { createHost, fetchBulk, serveBulk, type Host, type HostOptions } from '../../src/net/index.js';
import { sha256HexNode } from '../../src/util/hash-node.js';

interface Command {
  id: number;
  cmd: 'put' | 'connect' | 'fetch' | 'stats' | 'addrs';
  size?: number;
  peer?: string;
  hash?: string;
}

const out = (o: object): void => void process.stdout.write(JSON.stringify(o) + '\n');

async function main(): Promise<void> {
  const opts = JSON.parse(process.argv[2] ?? '{}') as HostOptions;
  const objects = new Map<string, Uint8Array>();
  const host: Host = await createHost({ ...opts, onReachability: (r) => out({ event: 'reach', ...r }) });
  await serveBulk(host, (hash) => objects.get(hash));
  out({ event: 'ready', peerId: host.peerId });

  const run = async (c: Command): Promise<object> => {
    const signal = AbortSignal.timeout(30_000);
    switch (c.cmd) {
      case 'put': {
        const bytes = new Uint8Array(randomBytes(c.size ?? 0));
        const hash = sha256HexNode(bytes);
        objects.set(hash, bytes);
        return { hash };
      }
      case 'connect': {
        const conn = await host.connect(c.peer!, { signal });
        return { remoteAddr: conn.remoteAddr.toString(), relayed: conn.limits != null };
      }
      case 'fetch': {
        const data = await fetchBulk(host, c.peer!, c.hash!, { maxBytes: 64 << 20, signal });
        return { bytes: data.byteLength };
      }
      case 'addrs': {
        const info = await host.node.peerStore.get(peerIdFromString(c.peer!));
        return { addrs: info.addresses.map((a) => a.multiaddr.toString()) };
      }
      case 'stats': {
        const snap = host.metrics.snapshot();
        return {
          counters: snap.counters,
          protocols: snap.protocols,
          relay: host.relayStats(),
          conns: host.connections(),
        };
      }
    }
  };
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    let c: Command;
    try {
      c = JSON.parse(line) as Command;
    } catch {
      return;
    }
    run(c).then(
      (r) => out({ id: c.id, ok: true, ...r }),
      (e: unknown) => out({ id: c.id, ok: false, error: (e as Error).message }),
    );
  });
  rl.on('close', () => {
    void host.stop().finally(() => process.exit(0));
  });
}

main().catch((e: unknown) => {
  process.stderr.write(`lab-peer: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
