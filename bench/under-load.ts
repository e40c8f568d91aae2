/**
 * `node dist/bench/under-load.js [--busy 0,2] [--rounds 12] [--peers 4] [--no-ipfs] [--out FILE] [--keep DIR] [-- demo flags]`
 *
 * The README's ledger demo under load (issue 16): for each N in --busy, starts N busy-loop
 * processes (`node -e 'for(;;){}'`, nice 0, as the issue measured), runs
 * `tessera demo --ipfs --ledger --behave 3=free-rider-zero --rounds R --json` beside them (4 peers:
 * 2 validators, an honest trainer and a free-rider; IPFS storage; a ledger on an in-process EVM),
 * stops the busy loops, and reads what the demo printed: per round the updates included and whose;
 * at the end (the demo waits for the last rounds' reports to land) which rounds were minted, paid
 * nobody or were never signed, and per peer its shares, its share of the included tokens, and what
 * the contract's rule gives for the minted reports. Prints a Markdown table and writes the JSON
 * (default bench/under-load.json). The machine's load average is recorded beside each run: on a
 * shared machine other processes add to the N busy loops. --no-ipfs runs the demo without --ipfs
 * (every peer reads the corpus from its local cache): what is left is the rounds and the ledger,
 * without the peers' shard fetches from each other.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../src/kernels/native.js';
import { TESSERA_BIN } from '../src/cli/launch.js';

const args = process.argv.slice(2);
const dash = args.indexOf('--');
const own = dash >= 0 ? args.slice(0, dash) : args;
const extra = dash >= 0 ? args.slice(dash + 1) : [];
const opt = (name: string, d: string) => (own.includes(name) ? own[own.indexOf(name) + 1] : d);
const busyList = opt('--busy', '0,2')
  .split(',')
  .map((x) => Number(x));
const rounds = Number(opt('--rounds', '12'));
const peers = Number(opt('--peers', '4'));
const out = opt('--out', join(packageRoot(), 'bench', 'under-load.json'));
/** --keep DIR: keep each run's demo directory (peer logs in peer-N/node.log) under DIR. */
const keep = own.includes('--keep') ? opt('--keep', '') : null;
const ipfs = !own.includes('--no-ipfs');

interface Row {
  round: number;
  applied: number;
  contributors: { peer: number; tokens: number }[];
  seconds: number;
  computeFraction: number;
  agree: boolean;
}
interface PeerShares {
  peer: number;
  shares: number;
  byReports: number;
  sharesFraction: number;
  tokens: number;
  tokensFraction: number;
}
interface Shares {
  printedRounds: number;
  mintedOfPrinted: number;
  unpaidOfPrinted: number;
  unsignedOfPrinted: number;
  waitingOfPrinted: number;
  standing: Record<string, string>;
  peers: PeerShares[];
}
interface RunResult {
  busy: number;
  loadBefore: number;
  loadAfter: number;
  wallSeconds: number;
  rows: Row[];
  shares: Shares | null;
  exitCode: number | null;
  stderrTail: string;
}

function busyLoops(n: number): ChildProcess[] {
  return Array.from({ length: n }, () =>
    spawn(process.execPath, ['-e', 'for(;;){}'], { stdio: 'ignore', detached: false }),
  );
}

async function runOnce(busy: number): Promise<RunResult> {
  const dir = keep ? join(keep, `busy-${busy}-${Date.now()}`) : mkdtempSync(join(tmpdir(), 'tessera-under-load-'));
  const loops = busyLoops(busy);
  const loadBefore = loadavg()[0];
  const t0 = performance.now();
  const rows: Row[] = [];
  let shares: Shares | null = null;
  let err = '';
  const child = spawn(
    process.execPath,
    [
      TESSERA_BIN,
      'demo',
      ...(ipfs ? ['--ipfs'] : []),
      '--ledger',
      '--behave',
      '3=free-rider-zero',
      '--peers',
      String(peers),
      '--rounds',
      String(rounds),
      '--json',
      '--no-dashboard',
      '--dir',
      join(dir, 'demo'),
      ...extra,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let buf = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        const j = JSON.parse(line) as Record<string, unknown>;
        if (j.event === 'shares') shares = j as unknown as Shares;
        else if (j.event === undefined && typeof j.round === 'number') {
          const r = j as unknown as Row;
          rows.push(r);
          process.stderr.write(
            `  busy ${busy}: round ${r.round}: ${r.applied} updates (${r.contributors.map((c) => `p${c.peer}`).join(' ')}), ${r.seconds.toFixed(1)} s, compute ${(100 * r.computeFraction).toFixed(0)}%\n`,
          );
        }
      } catch {
        /* not JSON */
      }
    }
  });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    err = (err + d).slice(-4000);
    if (/ledger: waiting/.test(d)) process.stderr.write(`  busy ${busy}: ${d.trim()}\n`);
  });
  const exitCode = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  const loadAfter = loadavg()[0];
  for (const l of loops) l.kill('SIGKILL');
  if (!keep) rmSync(dir, { recursive: true, force: true });
  return {
    busy,
    loadBefore,
    loadAfter,
    wallSeconds: (performance.now() - t0) / 1000,
    rows,
    shares,
    exitCode,
    stderrTail: err.slice(-1500),
  };
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

const results: RunResult[] = [];
for (const b of busyList) {
  process.stderr.write(`under-load: ${peers} peers, ${rounds} rounds, ${b} busy loops beside them...\n`);
  results.push(await runOnce(b));
}

const table: string[] = [
  `tessera demo${ipfs ? ' --ipfs' : ''} --ledger --behave 3=free-rider-zero --rounds ${rounds}, ${peers} peers (0-1 validate)`,
  '',
  '| busy loops | load avg (start → end) | rounds minted | paid nobody | not signed | updates included per round | mean | wall |',
  '|---:|---|---:|---:|---:|---|---:|---:|',
];
for (const r of results) {
  const s = r.shares;
  const ups = r.rows.map((x) => x.applied);
  const mean = ups.length ? ups.reduce((a, x) => a + x, 0) / ups.length : NaN;
  table.push(
    `| ${r.busy} | ${r.loadBefore.toFixed(1)} → ${r.loadAfter.toFixed(1)} | ${s ? `${s.mintedOfPrinted} / ${s.printedRounds}` : 'n/a'} | ${s?.unpaidOfPrinted ?? 'n/a'} | ${s ? s.unsignedOfPrinted + s.waitingOfPrinted : 'n/a'} | ${ups.join(' ')} | ${mean.toFixed(2)} | ${r.wallSeconds.toFixed(0)} s |`,
  );
}
table.push(
  '',
  '| busy loops | peer | role | shares on chain | shares the minted reports give (contract rule) | share of the shares of the printed rounds | share of their included tokens |',
  '|---:|---:|---|---:|---:|---:|---:|',
);
for (const r of results)
  for (const p of r.shares?.peers ?? [])
    table.push(
      `| ${r.busy} | ${p.peer} | ${p.peer < 2 ? 'validator + trainer' : p.peer === 3 ? 'free-rider' : 'trainer'} | ${p.shares.toFixed(1)} | ${p.byReports.toFixed(1)} | ${pct(p.sharesFraction)} | ${pct(p.tokensFraction)} |`,
    );

writeFileSync(
  out,
  JSON.stringify(
    {
      command: `node dist/bench/under-load.js ${process.argv.slice(2).join(' ')}`.trim(),
      ipfs,
      peers,
      rounds,
      results,
      table,
    },
    null,
    2,
  ) + '\n',
);
process.stdout.write(table.join('\n') + `\n\nwrote ${out}\n`);
