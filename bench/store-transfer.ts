/**
 * Storage transfer speed (issue 4): a 100 MB shard set (100 raw blocks of 1 MiB, the largest
 * shard size) fetched from one local peer by another, three ways in one run:
 *   - bitswap through the IPFS store (what trainers use for shards and checkpoints; each block
 *     verified by hash, written to the receiver's blockstore),
 *   - Tessera's bulk protocol over the same libp2p hosts (what update payloads use),
 *   - a raw TCP copy of the same bytes over loopback (the ceiling).
 * Both ends run in this process (one event loop, 2 cores shared), for all three alike.
 *
 *   node dist/bench/store-transfer.js [--mb 100] [--concurrency 16] [--json]
 */
import { createServer, connect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CID } from 'multiformats/cid';
import * as raw from 'multiformats/codecs/raw';
import { sha256 } from 'multiformats/hashes/sha2';
import { createHost, fetchBulk, serveBulk } from '../src/net/index.js';
import { sha256HexNode as sha256Hex } from '../src/util/hash-node.js';
import { openStore } from '../src/store/index.js';

const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};
const MB = arg('mb', 100),
  CONC = arg('concurrency', 16),
  BLOCK = 1 << 20;
const json = process.argv.includes('--json');

async function pool<T>(items: T[], n: number, f: (x: T) => Promise<unknown>): Promise<void> {
  let i = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (i < items.length) await f(items[i++]);
    }),
  );
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'tessera-bench-store-'));
  const blocks: Uint8Array[] = [];
  for (let b = 0; b < MB; b++) {
    const x = new Uint8Array(BLOCK);
    let s = (b + 1) * 2654435761;
    for (let i = 0; i < BLOCK; i += 4) {
      s = (s * 1664525 + 1013904223) >>> 0;
      x[i] = s & 255;
      x[i + 1] = (s >>> 8) & 255;
      x[i + 2] = (s >>> 16) & 255;
      x[i + 3] = s >>> 24;
    }
    blocks.push(x);
  }
  const bytes = MB * BLOCK;
  const rows: { method: string; seconds: number; MBps: number; vsTcp?: number }[] = [];

  // Raw TCP: one connection, the same bytes.
  {
    const server = createServer((sock) => {
      (async () => {
        for (const b of blocks) if (!sock.write(b)) await new Promise((r) => sock.once('drain', r));
        sock.end();
      })();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    const t0 = performance.now();
    let got = 0;
    await new Promise<void>((resolve, reject) => {
      const c = connect(port, '127.0.0.1');
      c.on('data', (d: Buffer) => {
        got += d.length;
      });
      c.on('end', resolve);
      c.on('error', reject);
    });
    const s = (performance.now() - t0) / 1000;
    if (got !== bytes) throw new Error(`tcp got ${got}`);
    rows.push({ method: 'raw TCP (loopback)', seconds: s, MBps: bytes / 1e6 / s });
    server.close();
  }

  const ha = await createHost({ dataDir: join(dir, 'a') }),
    hb = await createHost({ dataDir: join(dir, 'b') });
  await hb.dial(ha.multiaddrs()[0]);
  // Bulk protocol (libp2p stream, sha256-named objects).
  {
    const byHash = new Map(blocks.map((b) => [sha256Hex(b), b]));
    await serveBulk(ha, (h) => byHash.get(h));
    const t0 = performance.now();
    await pool([...byHash.keys()], CONC, (h) =>
      fetchBulk(hb, ha.peerId, h, { maxBytes: BLOCK, signal: AbortSignal.timeout(120_000) }),
    );
    const s = (performance.now() - t0) / 1000;
    rows.push({ method: `libp2p bulk stream (${CONC} at a time)`, seconds: s, MBps: bytes / 1e6 / s });
  }
  // Bitswap through the stores.
  {
    const sa = await openStore(join(dir, 'a'), { libp2p: ha.node }),
      sb = await openStore(join(dir, 'b'), { libp2p: hb.node });
    const cids: CID[] = [];
    for (const b of blocks) {
      const c = CID.createV1(raw.code, await sha256.digest(b));
      await sa.putBlock(c, b);
      cids.push(c);
    }
    const t0 = performance.now();
    await pool(cids, CONC, (c) => sb.getBlock(c, { signal: AbortSignal.timeout(120_000) }));
    const s = (performance.now() - t0) / 1000;
    for (const c of cids) if (!(await sb.has(c))) throw new Error('missing after fetch');
    rows.push({ method: `IPFS store, bitswap (${CONC} at a time)`, seconds: s, MBps: bytes / 1e6 / s });
    await sa.stop();
    await sb.stop();
  }
  await ha.stop();
  await hb.stop();
  rmSync(dir, { recursive: true, force: true });
  const tcp = rows[0].MBps;
  for (const r of rows) r.vsTcp = r.MBps / tcp;
  if (json) {
    process.stdout.write(JSON.stringify({ mb: MB, blockBytes: BLOCK, concurrency: CONC, rows }) + '\n');
    return;
  }
  process.stdout.write(
    `${MB} MiB in ${MB} blocks of 1 MiB, both peers in one process on this machine\n\n| method | seconds | MB/s | vs raw TCP |\n|---|---|---|---|\n`,
  );
  for (const r of rows)
    process.stdout.write(
      `| ${r.method} | ${r.seconds.toFixed(2)} | ${r.MBps.toFixed(0)} | ${(100 * r.vsTcp!).toFixed(0)}% |\n`,
    );
}

await main();
