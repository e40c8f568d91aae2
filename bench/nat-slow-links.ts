/**
 * `node dist/bench/nat-slow-links.js [--rate 20] [--rounds 30] [--budget 240] [--homes cone,cone,symmetric] [--reps 1] [--out FILE] [--logs DIR]`
 *
 * Deadlines that follow slow links (issue 16), measured: real `tessera node` processes in the
 * namespace lab (test/support/netlab.ts; needs root), 2 public peers and one home peer per
 * --homes entry behind its NAT router, every home link capped at --rate Mbit/s by tc tbf in both
 * directions. The model and payload are test/support/slow-links.ts's (fp32 updates of 1.86 MB, a
 * 1 s collection window as written, cheap inner steps), so the links bind. The same swarm runs
 * with fixed deadlines (timing.maxStretch 1) and adaptive ones (4), side by side on one lab,
 * alternating which goes first over --reps. Per run: updates included per round, rounds per
 * minute, updates included per minute, the final deadline stretch, and per peer the compute
 * fraction (time in inner steps / wall time, from its round reports), rounds applied, resyncs,
 * how often its update was included. Prints Markdown tables and writes the JSON (default
 * bench/nat-slow-links.json).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../src/kernels/native.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { createLab, type NatKind } from '../test/support/netlab.js';
import { runSlowLinks, SLOW_MODEL, type SlowLinkResult } from '../test/support/slow-links.js';

const args = process.argv.slice(2);
const opt = (name: string, d: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : d);
const rate = Number(opt('--rate', '20'));
const rounds = Number(opt('--rounds', '30'));
const budgetMs = 1000 * Number(opt('--budget', '240'));
const homes = opt('--homes', 'cone,cone,symmetric').split(',') as NatKind[];
const reps = Number(opt('--reps', '1'));
const out = opt('--out', join(packageRoot(), 'bench', 'nat-slow-links.json'));
const logDir = args.includes('--logs') ? opt('--logs', '') : undefined;

const root = mkdtempSync(join(tmpdir(), 'tessera-bench-slow-links-'));
const lab = createLab({ publicHosts: 2, homes: homes.map((nat) => ({ nat, rateMbit: rate })) });
const hosts = ['pub1', 'pub2', ...homes.map((_, i) => `h${i + 1}`)];
const runs: (SlowLinkResult & { rep: number; load: number })[] = [];
try {
  for (let rep = 0; rep < reps; rep++) {
    const order = rep % 2 === 0 ? [1, 4] : [4, 1];
    for (const maxStretch of order) {
      process.stderr.write(`nat-slow-links: rep ${rep + 1}/${reps}, maxStretch ${maxStretch}...\n`);
      const load = loadavg()[0];
      const r = await runSlowLinks({
        lab,
        dir: join(root, `rep${rep}-stretch${maxStretch}`),
        cacheDir: defaultCacheDir(),
        hosts,
        maxStretch,
        rounds,
        budgetMs,
        ...(logDir ? { logDir } : {}),
        say: (line) => process.stderr.write(line + '\n'),
      });
      runs.push({ ...r, rep, load });
    }
  }
} finally {
  lab.destroy();
  rmSync(root, { recursive: true, force: true });
}

const label = (s: number) => (s === 1 ? 'fixed (maxStretch 1)' : `adaptive (maxStretch ${s})`);
const table: string[] = [
  `Home links ${rate} Mbit/s (tc tbf, both ways); ${hosts.length} peers (${hosts.join(', ')}); fp32 updates of ${SLOW_MODEL.dim}-dim ${SLOW_MODEL.layers}-layer GPT.`,
  '',
  '| rep | deadlines | load avg | rounds | updates per round | mean | s per round | updates per minute | final stretch (train/collect) | divergent rounds |',
  '|---:|---|---:|---:|---|---:|---:|---:|---|---:|',
];
for (const r of runs)
  table.push(
    `| ${r.rep + 1} | ${label(r.maxStretch)} | ${r.load.toFixed(1)} | ${r.rounds} | ${r.includedPerRound.join(' ')} | ${r.meanIncluded.toFixed(2)} | ${r.roundSeconds.toFixed(1)} | ${((60 * r.meanIncluded) / r.roundSeconds).toFixed(1)} | ${r.finalStretch ? `×${(r.finalStretch[0] / 1000).toFixed(2)} / ×${(r.finalStretch[1] / 1000).toFixed(2)}` : '-'} | ${r.divergent.length} |`,
  );
table.push(
  '',
  '| rep | deadlines | peer | compute fraction | rounds applied | resyncs | update included | sent / round | received / round |',
  '|---:|---|---|---:|---:|---:|---:|---:|---:|',
);
for (const r of runs)
  for (const p of r.peers)
    table.push(
      `| ${r.rep + 1} | ${label(r.maxStretch)} | ${p.host} | ${(100 * p.computeFraction).toFixed(1)}% | ${p.applied} | ${p.synced} | ${p.included} / ${r.rounds} | ${(p.bytesSentPerRound / 1e6).toFixed(2)} MB | ${(p.bytesReceivedPerRound / 1e6).toFixed(2)} MB |`,
    );
writeFileSync(
  out,
  JSON.stringify(
    {
      command: `node dist/bench/nat-slow-links.js ${args.join(' ')}`.trim(),
      rateMbit: rate,
      hosts,
      model: SLOW_MODEL,
      runs,
      table,
    },
    null,
    2,
  ) + '\n',
);
process.stdout.write(table.join('\n') + `\n\nwrote ${out}\n`);
