/** `tessera demo`: a local swarm of `tessera node` processes on 127.0.0.1, with per-round progress. */
import type { Command } from 'commander';
import { existsSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { int } from './args.js';
import { say, result } from './output.js';
import { buildManifest } from './run.js';
import { defaultCacheDir } from './train.js';
import { writeFileSync, mkdirSync } from 'node:fs';
import { dataDirFor, preparePeer, spawnPeer, stopAll, type PeerProc } from '../swarm/launch.js';
import type { RoundReport } from '../swarm/node.js';

export function register(program: Command): void {
  program.command('demo')
    .description('run a local swarm of peers (separate processes on 127.0.0.1) training a small GPT together')
    .option('--peers <n>', 'number of peers', int(1, 32), 4)
    .option('--rounds <n>', 'stop after this many rounds (0 = until Ctrl-C)', int(0), 10)
    .option('--dir <dir>', 'working directory (manifest, peer data dirs); wiped first', 'runs/demo')
    .option('--codec <id>', 'update codec', 'sparse')
    .option('--cache-dir <dir>', 'tokenizer and token cache', defaultCacheDir())
    .option('--json', 'one JSON object per round on stdout', false)
    .action(async (o: { peers: number; rounds: number; dir: string; codec: string; cacheDir: string; json: boolean }) => {
      const dir = resolve(o.dir);
      if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      const { decoded, params } = buildManifest({
        vocab: 512, ctx: 64, dim: 64, layers: 2, heads: 4, batch: 4, inner: 10, lr: 3e-3,
        codec: o.codec as 'sparse', shards: 16, seed: 1, trainMs: 1500, submitMs: 2500, commitMs: 1500,
        quorum: 1, minPeers: 1, maxMissed: 2, cacheDir: o.cacheDir,
      });
      const run = join(dir, 'run.json');
      writeFileSync(run, JSON.stringify(decoded.manifest, null, 2) + '\n');
      say(o, `run ${decoded.runId.slice(0, 12)}: ${params} parameters, ${o.peers} peers, manifest ${run}`);
      const specs = await Promise.all(Array.from({ length: o.peers }, (_, i) => preparePeer(i, dataDirFor(dir, i))));
      const addrs = specs.map((s) => s.addr);
      const ids = specs.map((s) => s.peerId);
      const byRound = new Map<number, Map<number, RoundReport>>();
      let printed = -1;
      let stopping = false;
      let finish!: () => void;
      const finished = new Promise<void>((r) => { finish = r; });
      const peers: PeerProc[] = [];
      const onReport = (p: PeerProc, r: RoundReport) => {
        if (r.event !== 'round') { say(o, `peer ${p.index} synced to round ${r.round} (${r.weightsHash.slice(0, 12)})`); return; }
        let m = byRound.get(r.round);
        if (!m) { m = new Map(); byRound.set(r.round, m); }
        m.set(p.index, r);
        const live = peers.filter((x) => x.alive).length;
        if (m.size >= live && r.round > printed) {
          printed = r.round;
          const rs = [...m.values()];
          const hashes = new Set(rs.map((x) => x.weightsHash));
          const mean = (f: (x: RoundReport) => number) => rs.reduce((a, x) => a + f(x), 0) / rs.length;
          const row = { round: r.round, valLoss: mean((x) => x.valLoss), peers: rs.length, applied: rs[0].included, bytesSentPerPeer: Math.round(mean((x) => x.bytesSent)), bytesReceivedPerPeer: Math.round(mean((x) => x.bytesReceived)), weightsHash: rs[0].weightsHash, agree: hashes.size === 1 };
          result(o, row, `round ${row.round}  val ${row.valLoss.toFixed(4)}  peers ${row.peers}  updates ${row.applied}  sent/peer ${(row.bytesSentPerPeer / 1024).toFixed(1)}K  recv/peer ${(row.bytesReceivedPerPeer / 1024).toFixed(1)}K  weights ${row.weightsHash.slice(0, 12)}  ${row.agree ? 'all hashes agree' : `HASHES DIFFER (${hashes.size})`}`);
          if (o.rounds > 0 && r.round + 1 >= o.rounds) finish();
        }
      };
      for (const s of specs) {
        peers.push(spawnPeer(s, {
          run, bootstrap: addrs, genesisPeers: ids, cacheDir: o.cacheDir, onReport,
          onExit: (p, code, sig) => { if (!stopping) say(o, `peer ${p.index} exited (${sig ?? code})`); if (!stopping && peers.every((x) => !x.alive)) finish(); },
        }));
      }
      const onSignal = () => { say(o, 'stopping all peers...'); finish(); };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      try {
        await finished;
      } finally {
        stopping = true;
        await stopAll(peers);
        process.removeListener('SIGINT', onSignal);
        process.removeListener('SIGTERM', onSignal);
      }
    });
}
