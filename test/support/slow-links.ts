/**
 * A swarm on slow home links (issue 16), shared by test/nat-slow-links.test.ts and
 * bench/nat-slow-links.ts: real `tessera node` processes in the namespace lab
 * (test/support/netlab.ts), public peers on the lab's "internet" and home peers behind NAT routers
 * whose links tc tbf caps (both directions), one run per deadline setting on the same lab.
 *
 * The payload is chosen so that the link binds: a GPT of 466k parameters (vocab 512, ctx 32,
 * dim 128, 2 layers) sent in fp32, 1.86 MB per update. At 20 Mbit/s (2.5 MB/s) a home peer needs
 * about 0.75 s to upload one copy and at least two copies (one per public peer) before a majority
 * holds its update, and 3 s to download the other four updates; the round's collection window is
 * 1 s as written. The inner steps stay cheap (batch 2 × 32 tokens, 4 steps), so what the deadlines
 * must follow is the links, not the CPUs. (The demo's sparse 137k model sends 2 KB per update:
 * no home link binds on it.)
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildManifest } from '../../src/swarm/manifest-builder.js';
import type { RoundReport } from '../../src/peer/node.js';
import type { Lab } from './netlab.js';
import { preparePeer, spawnPeer, stopAll, waitFor, type PeerProc } from './swarm.js';

export const SLOW_MODEL = { vocab: 512, ctx: 32, dim: 128, layers: 2, heads: 4, batch: 2 } as const;

export interface SlowLinkOptions {
  lab: Lab;
  /** A fresh directory for this run's manifest and peers. */
  dir: string;
  cacheDir: string;
  /** Lab host names, public ones first (only those are bootstrap peers). */
  hosts: string[];
  /** timing.maxStretch: 1 = fixed deadlines. */
  maxStretch: number;
  /** Stop after this many rounds decided by the first public peer, or after budgetMs of rounds. */
  rounds: number;
  budgetMs: number;
  /** Each peer's stderr goes to `${logDir}/${host}.log` when given. */
  logDir?: string;
  /** Progress lines. */
  say?: (line: string) => void;
}

export interface PeerRow {
  host: string;
  /** Rounds it applied ('round' reports) and resyncs ('synced' reports). */
  applied: number;
  synced: number;
  /** Rounds whose decided set included its update, of the first public peer's rounds. */
  included: number;
  /** Mean over its round reports after the first: time in inner steps / wall time. */
  computeFraction: number;
  bytesSentPerRound: number;
  bytesReceivedPerRound: number;
}

export interface SlowLinkResult {
  maxStretch: number;
  /** Rounds the first public peer applied. */
  rounds: number;
  /** Per round (first public peer): updates in the decided set. */
  includedPerRound: number[];
  meanIncluded: number;
  /** Mean seconds per round (first public peer, after the first). */
  roundSeconds: number;
  /** The stretch [training, collection] (permille) after the last round. */
  finalStretch: [number, number] | null;
  /** Rounds where two peers that both applied it hold different weights hashes. */
  divergent: number[];
  peers: PeerRow[];
  seconds: number;
}

const mean = (xs: number[]) => (xs.length ? xs.reduce((a, x) => a + x, 0) / xs.length : NaN);

/** One run on the lab with the given deadline setting; stops its peers before returning. */
export async function runSlowLinks(o: SlowLinkOptions): Promise<SlowLinkResult> {
  const t0 = Date.now();
  mkdirSync(o.dir, { recursive: true });
  const { decoded } = buildManifest({
    ...SLOW_MODEL,
    inner: 4,
    lr: 3e-3,
    codec: 'fp32',
    shards: 8,
    seed: 11,
    trainMs: 1000,
    submitMs: 2000,
    commitMs: 1500,
    quorum: 1,
    minPeers: 1,
    maxMissed: 2,
    maxStretch: o.maxStretch,
    // Relayed home-to-home fetches carry whole fp32 updates: room for a few hundred of them.
    relay: { maxBytes: 512 * 1024 * 1024, maxSeconds: 900 },
    cacheDir: o.cacheDir,
  });
  const run = join(o.dir, 'run.json');
  writeFileSync(run, JSON.stringify(decoded.manifest));
  const hosts = o.hosts.map((n) => o.lab.host(n));
  const nPub = hosts.filter((h) => h.kind === 'public').length;
  const specs = await Promise.all(hosts.map((_, i) => preparePeer(i, join(o.dir, `peer-${i}`))));
  const PORT = 4001; // every namespace has its own ports
  const addr = (i: number) => `/ip4/${hosts[i].ip}/tcp/${PORT}/p2p/${specs[i].peerId}`;
  const boot = hosts
    .map((_, i) => i)
    .filter((i) => i < nPub)
    .map(addr);
  const peers: PeerProc[] = new Array<PeerProc>(specs.length);
  // Home peers start first, and the public ones once every home peer has started. A home peer
  // takes seconds longer to start (it learns its reachability first), and two fast public peers
  // alone run 1 s rounds: each round then decides more fp32 bytes than a 20 Mbit/s home link
  // downloads in a round, so a home peer that starts a round or two late never catches up and is
  // dropped from the roster before its deadlines could stretch (the test failed that way on a
  // quiet machine: the home peers never applied a round in either run). Started first, the home
  // peers hold θ0 and wait at round 0 (no majority without the public peers), so all four
  // genesis members begin together, which is what this test compares: members on slow links.
  const started = new Set<number>();
  const home = [...specs.keys()].filter((i) => i >= nPub);
  try {
    for (const i of [...home, ...specs.keys()].filter((j, k, all) => all.indexOf(j) === k)) {
      const s = specs[i];
      if (i < nPub && home.length > 0 && !home.every((j) => started.has(j)))
        await waitFor(
          home.map((j) => peers[j]),
          'the home peers to start',
          () => home.every((j) => started.has(j)),
          60_000,
        );
      const p = spawnPeer(
        { ...s, addr: addr(i) },
        {
          run,
          bootstrap: boot,
          genesisPeers: specs.map((x) => x.peerId),
          cacheDir: o.cacheDir,
          prefix: o.lab.execPrefix(hosts[i].ns),
          listen: `/ip4/${hosts[i].ip}/tcp/${PORT}`,
          onStarted: () => started.add(i),
          ...(o.logDir ? { logFile: join(o.logDir, `${o.hosts[i]}-stretch${o.maxStretch}.log`) } : {}),
        },
      );
      peers[i] = p;
    }
    const ref = peers[0];
    const applied = () => ref.reports.filter((r) => r.event === 'round');
    const tStart = Date.now();
    let said = 0;
    await waitFor(
      peers,
      `${o.rounds} rounds (or ${o.budgetMs / 1000} s of rounds)`,
      () => {
        const n = applied().length;
        if (o.say && n > said) {
          said = n;
          const r = applied().at(-1)!;
          o.say(
            `  maxStretch ${o.maxStretch}: round ${r.round}: ${r.included} updates, ${r.seconds.toFixed(1)} s${r.stretch ? `, deadlines ×${(r.stretch[0] / 1000).toFixed(2)}/×${(r.stretch[1] / 1000).toFixed(2)}` : ''}`,
          );
        }
        return n >= o.rounds || (Date.now() - tStart > o.budgetMs && n >= 3);
      },
      o.budgetMs + 60_000,
    );
    const rounds = applied();
    // No divergence: every round two peers both applied carries one hash.
    const byRound = new Map<number, Set<string>>();
    for (const p of peers)
      for (const r of p.reports.filter((x) => x.event === 'round')) {
        const s = byRound.get(r.round) ?? new Set<string>();
        s.add(r.weightsHash);
        byRound.set(r.round, s);
      }
    const divergent = [...byRound].filter(([, s]) => s.size > 1).map(([r]) => r);
    const rows: PeerRow[] = peers.map((p, i) => {
      const own = p.reports.filter((r): r is RoundReport => r.event === 'round');
      const later = own.slice(1);
      return {
        host: o.hosts[i],
        applied: own.length,
        synced: p.reports.filter((r) => r.event === 'synced').length,
        included: rounds.filter((r) => r.contributors.some((c) => c.peer === p.peerId)).length,
        computeFraction: mean(later.map((r) => r.computeFraction)),
        bytesSentPerRound: mean(later.map((r) => r.bytesSent)),
        bytesReceivedPerRound: mean(later.map((r) => r.bytesReceived)),
      };
    });
    const last = rounds.at(-1);
    return {
      maxStretch: o.maxStretch,
      rounds: rounds.length,
      includedPerRound: rounds.map((r) => r.included),
      meanIncluded: mean(rounds.map((r) => r.included)),
      roundSeconds: mean(rounds.slice(1).map((r) => r.seconds)),
      finalStretch: last?.stretch ?? null,
      divergent,
      peers: rows,
      seconds: (Date.now() - t0) / 1000,
    };
  } finally {
    await stopAll(
      peers.filter((p) => p !== undefined),
      3000,
    );
  }
}
