/**
 * `node dist/bench/swarm-124m.js [--parts swarm,sim,pipeline] [--rounds 3] [--peers 3] [--ctx 128] [--batch 1]
 *   [--inner 2] [--step-ms 12000] [--max-rss-gib 11] [--keep DIR] [--out FILE] [--small]`
 *
 * Issue 19 "Real sizes": a GPT-2-small-sized model (124M parameters: V 50257, D 768, L 12, H 12;
 * context --ctx, default 128 rather than GPT-2's 1024 so that a step fits a 2-core machine) run
 * the three ways Tessera trains, each in its own processes on this machine:
 *
 * - swarm: `tessera run create` writes a SparseLoCo manifest (overlap none, deadlines from
 *   --step-ms), then --peers `tessera node` processes (test/support's launcher, as `tessera demo`
 *   spawns them) train --rounds rounds. Per round: seconds, the SparseLoCo payload of one update
 *   (the codec's exact encoded size), bytes each peer sent, and whether every peer's weights hash
 *   agrees; per peer its peak RSS (VmHWM).
 * - sim: `tessera sim` with one SparseLoCo arm of --peers workers, one round of --inner steps.
 * - pipeline: `tessera pipeline` with the 12 layers cut into 3 stages, 2 steps of 8 sequences
 *   (8 micro-batches of one), one validation batch.
 *
 * RSS is read from /proc/PID/status every 250 ms (VmHWM, the kernel's peak, for each process);
 * a run whose processes together pass --max-rss-gib is stopped (the machine is shared). --small
 * runs the same at a toy size (a quick check of the harness). Prints a Markdown table and writes
 * the JSON (default bench/swarm-124m.json).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../src/kernels/native.js';
import { TESSERA_BIN, preparePeer, spawnPeer, stopAll, type PeerProc } from '../src/cli/launch.js';
import { getCodec } from '../src/swarm/compress/index.js';
import { paramCount } from '../src/model/params.js';
import type { RoundReport } from '../src/peer/report.js';

const args = process.argv.slice(2);
const opt = (name: string, d: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : d);
const small = args.includes('--small');
const parts = opt('--parts', 'swarm,sim,pipeline').split(',');
const rounds = Number(opt('--rounds', '3'));
const peers = Number(opt('--peers', '3'));
const ctx = Number(opt('--ctx', small ? '32' : '128'));
const batch = Number(opt('--batch', '1'));
const inner = Number(opt('--inner', '2'));
/** One inner step's expected wall time with --peers processes sharing the machine (sets the manifest's deadlines). */
const stepMs = Number(opt('--step-ms', small ? '200' : '12000'));
const maxRss = Number(opt('--max-rss-gib', '11')) * 2 ** 30;
const out = opt('--out', join(packageRoot(), 'bench', small ? 'swarm-124m-small.json' : 'swarm-124m.json'));
const keep = args.includes('--keep') ? opt('--keep', '') : null;
const MODEL = small ? { vocab: 512, dim: 64, layers: 3, heads: 4 } : { vocab: 50257, dim: 768, layers: 12, heads: 12 };
const P = paramCount({ vocabSize: MODEL.vocab, ctx, dim: MODEL.dim, layers: MODEL.layers, heads: MODEL.heads });
const SPARSE = { chunk: 1024, k: 64 }; // manifest-builder's SparseLoCo settings
const GiB = 2 ** 30;
/** A loss as printed (NaN arrives as null in a JSON line). */
const f3 = (x: number | null) => (x === null || !Number.isFinite(x) ? '-' : x.toFixed(3));

/** Peak (VmHWM) and current (VmRSS) resident set of a process, in bytes; null once it is gone. */
function rssOf(pid: number): { peak: number; now: number } | null {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(s)?.[1] ?? 0) * 1024;
    return { peak: kb('VmHWM'), now: kb('VmRSS') };
  } catch {
    return null;
  }
}

/** Watches processes' RSS; calls `over` once their current total passes maxRss. */
function watchRss(pids: () => number[], over: (total: number) => void) {
  const peak = new Map<number, number>();
  let totalPeak = 0;
  let fired = false;
  const t = setInterval(() => {
    let total = 0;
    for (const pid of pids()) {
      const r = rssOf(pid);
      if (!r) continue;
      peak.set(pid, Math.max(peak.get(pid) ?? 0, r.peak));
      total += r.now;
    }
    totalPeak = Math.max(totalPeak, total);
    if (total > maxRss && !fired) {
      fired = true;
      over(total);
    }
  }, 250);
  return {
    peak: (pid: number) => peak.get(pid) ?? 0,
    totalPeak: () => totalPeak,
    stop: () => clearInterval(t),
  };
}

/** Runs `tessera ...args` to completion; its stdout, stderr tail, wall seconds and peak RSS. */
async function tessera(argv: string[], label: string, timeoutMs: number) {
  const t0 = Date.now();
  const child = spawn(process.execPath, [TESSERA_BIN, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr = (stderr + d).slice(-20000);
    process.stderr.write(d.replace(/^/gm, `[${label}] `));
  });
  let killedFor: string | null = null;
  const w = watchRss(
    () => (child.pid ? [child.pid] : []),
    (total) => {
      killedFor = `RSS ${(total / GiB).toFixed(1)} GiB over --max-rss-gib`;
      child.kill('SIGKILL');
    },
  );
  const timer = setTimeout(() => {
    killedFor = `timed out after ${timeoutMs / 1000} s`;
    child.kill('SIGKILL');
  }, timeoutMs);
  const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  clearTimeout(timer);
  w.stop();
  const peakRss = w.peak(child.pid ?? -1);
  if (code !== 0)
    throw new Error(`tessera ${argv[0]} failed (${killedFor ?? `exit ${code}`}):\n${stderr.slice(-3000)}`);
  return { stdout, stderr, seconds: (Date.now() - t0) / 1000, peakRss };
}

interface SwarmRound {
  round: number;
  seconds: number;
  innerSteps: number[];
  included: number;
  payloadBytes: number;
  bytesSentPerPeer: number[];
  trainLoss: number[];
  valLoss: number;
  hashesAgree: boolean;
  weightsHash: string;
}

async function swarm(dir: string) {
  const run = join(dir, 'run.json');
  const trainMs = Math.round(inner * stepMs);
  const create = await tessera(
    [
      'run',
      'create',
      '--out',
      run,
      '--vocab',
      String(MODEL.vocab),
      '--ctx',
      String(ctx),
      '--dim',
      String(MODEL.dim),
      '--layers',
      String(MODEL.layers),
      '--heads',
      String(MODEL.heads),
      '--batch',
      String(batch),
      '--inner',
      String(inner),
      '--codec',
      'sparse',
      '--overlap',
      'none',
      '--train-ms',
      String(trainMs),
      // Collection and agreement leave room for a loaded machine: a round ends as soon as every
      // update has landed (quorum 1), so generous windows cost nothing when things go well.
      '--submit-ms',
      String(trainMs + Math.max(30_000, trainMs)),
      '--commit-ms',
      String(Math.max(10_000, stepMs)),
      '--min-peers',
      String(peers),
      '--max-missed',
      '3',
      '--max-stretch',
      '4',
      '--json',
    ],
    'run create',
    600_000,
  );
  const specs = await Promise.all(Array.from({ length: peers }, (_, i) => preparePeer(i, join(dir, `peer-${i}`))));
  const procs: PeerProc[] = [];
  const started = Date.now();
  let failure: string | null = null;
  const w = watchRss(
    () => procs.filter((p) => p.alive && p.child.pid).map((p) => p.child.pid!),
    (total) => {
      failure = `peers' RSS ${(total / GiB).toFixed(1)} GiB passed --max-rss-gib; stopped`;
    },
  );
  for (const s of specs) {
    procs.push(
      spawnPeer(s, {
        run,
        bootstrap: specs.map((x) => x.addr),
        genesisPeers: specs.map((x) => x.peerId),
        logFile: join(s.dataDir, 'node.log'),
        env: { TESSERA_LOG: process.env.TESSERA_LOG ?? 'info' },
        onReport: (p, r) =>
          process.stderr.write(
            `[peer ${p.index}] ${r.event} ${r.round}: ${r.seconds.toFixed(1)} s, ${r.innerSteps} steps, hash ${r.weightsHash.slice(0, 10)}\n`,
          ),
        onExit: (p, code, sig) => {
          if (failure === null && Date.now() - started > 0 && (code !== 0 || sig))
            failure ??= `peer ${p.index} exited (${code ?? sig}): ${p.stderr.join('').slice(-1500)}`;
        },
      }),
    );
  }
  const done = () => procs.every((p) => p.reports.filter((r) => r.event === 'round' && r.round >= 1).length >= rounds);
  const deadline = Date.now() + rounds * (trainMs * 6 + 120_000) + 300_000;
  while (!done() && failure === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
  const wall = (Date.now() - started) / 1000;
  w.stop();
  const peakRss = procs.map((p) => w.peak(p.child.pid ?? -1));
  const totalPeak = w.totalPeak();
  await stopAll(procs, 10_000);
  // A run stopped early (the RSS guard, a dead peer, the deadline) still reports what it measured.
  const stopped: string | null =
    failure ??
    (done() ? null : `timed out: ${procs.map((p) => `peer ${p.index}: ${p.reports.length} reports`).join(', ')}`);
  const payload = getCodec('sparse', SPARSE).encodedSize(P);
  const byRound = (p: PeerProc, r: number): RoundReport | undefined =>
    p.reports.find((x) => x.event === 'round' && x.round === r);
  const roundNums = [...new Set(procs[0].reports.filter((r) => r.event === 'round').map((r) => r.round))]
    .filter((r) => procs.every((p) => byRound(p, r)))
    .slice(0, rounds + 1);
  const rows: SwarmRound[] = roundNums.map((r) => {
    const rs = procs.map((p) => byRound(p, r)!);
    return {
      round: r,
      seconds: Math.max(...rs.map((x) => x.seconds)),
      innerSteps: rs.map((x) => x.innerSteps),
      included: rs[0].included,
      payloadBytes: payload,
      bytesSentPerPeer: rs.map((x) => x.bytesSent),
      trainLoss: rs.map((x) => x.trainLoss),
      valLoss: rs[0].valLoss,
      hashesAgree: rs.every((x) => x.weightsHash === rs[0].weightsHash),
      weightsHash: rs[0].weightsHash,
    };
  });
  return {
    stopped,
    /** Each peer's inner-step progress lines (`tessera node` logs a slow step with its rate). */
    progress: procs.map((p) =>
      p.stderr
        .join('')
        .split('\n')
        .filter((l) => l.includes('inner step')),
    ),
    manifest: JSON.parse(readFileSync(run, 'utf8')) as unknown,
    runCreate: { seconds: create.seconds, peakRss: create.peakRss },
    wallSeconds: wall,
    rounds: rows,
    peakRssPerPeer: peakRss,
    totalPeakRss: totalPeak,
    allHashesAgree: rows.length > 0 && rows.every((r) => r.hashesAgree),
  };
}

async function sim(dir: string) {
  const steps = inner; // one round of H inner steps per worker
  const r = await tessera(
    [
      'sim',
      '--arms',
      `sparseloco-${inner}`,
      '--workers',
      String(peers),
      '--tokens',
      String(steps * peers * batch * ctx),
      '--vocab',
      String(MODEL.vocab),
      '--ctx',
      String(ctx),
      '--dim',
      String(MODEL.dim),
      '--layers',
      String(MODEL.layers),
      '--heads',
      String(MODEL.heads),
      '--batch',
      String(batch),
      '--eval-points',
      '1',
      '--eval-batches',
      '2',
      '--final-eval-batches',
      '2',
      '--threads',
      '2',
      '--out',
      join(dir, 'sim'),
      '--json',
    ],
    'sim',
    1_800_000,
  );
  const j = JSON.parse(r.stdout) as {
    arms?: {
      name: string;
      steps: number;
      rounds: number;
      seconds: number;
      messageBytes: number;
      finalValLoss: number;
    }[];
  };
  const arm = j.arms?.[0];
  return {
    seconds: r.seconds,
    peakRss: r.peakRss,
    arm: arm
      ? {
          name: arm.name,
          steps: arm.steps,
          rounds: arm.rounds,
          seconds: arm.seconds,
          messageBytes: arm.messageBytes,
          finalValLoss: arm.finalValLoss,
        }
      : null,
  };
}

async function pipeline(dir: string) {
  const steps = 2;
  const r = await tessera(
    [
      'pipeline',
      '--stages',
      '3',
      '--layers',
      String(MODEL.layers),
      '--dim',
      String(MODEL.dim),
      '--heads',
      String(MODEL.heads),
      '--vocab',
      String(MODEL.vocab),
      '--ctx',
      String(ctx),
      '--steps',
      String(steps),
      // The batch of 8 in 8 micro-batches of one sequence: the least activation memory per hop.
      '--micro',
      '8',
      '--eval-batches',
      '1',
      '--checkpoint-every',
      '0',
      '--cache-dir',
      join(dir, '..', 'cache-unused'),
      '--json',
    ],
    'pipeline',
    1_800_000,
  );
  return {
    seconds: r.seconds,
    peakRss: r.peakRss,
    steps,
    out: r.stdout.trim().split('\n').slice(-1)[0]?.slice(0, 400),
  };
}

async function main() {
  const dir = keep ?? mkdtempSync(join(tmpdir(), 'tessera-124m-'));
  const load = loadavg()[0];
  const res: Record<string, unknown> = {
    params: P,
    model: { ...MODEL, ctx, batch },
    peers,
    inner,
    loadBefore: load,
    date: new Date().toISOString(),
  };
  const gib = (b: number) => (b / GiB).toFixed(2);
  try {
    if (parts.includes('swarm')) {
      const s = await swarm(join(dir, 'swarm'));
      res.swarm = s;
      console.log(`\n## swarm: ${P} parameters, ${peers} peers, H=${inner}, B=${batch}, T=${ctx}, SparseLoCo\n`);
      console.log(
        '| round | s/round | inner steps | payload B/update | sent B/peer | train loss | val loss | hashes agree |',
      );
      console.log('|---|---|---|---|---|---|---|---|');
      for (const r of s.rounds)
        console.log(
          `| ${r.round} | ${r.seconds.toFixed(1)} | ${r.innerSteps.join('/')} | ${r.payloadBytes} | ${r.bytesSentPerPeer.join('/')} | ${r.trainLoss.map(f3).join('/')} | ${f3(r.valLoss)} | ${r.hashesAgree ? 'yes' : 'NO'} |`,
        );
      console.log(
        `\npeak RSS per peer (GiB): ${s.peakRssPerPeer.map(gib).join(', ')}; all peers together ${gib(s.totalPeakRss)}; run create ${s.runCreate.seconds.toFixed(1)} s, ${gib(s.runCreate.peakRss)} GiB`,
      );
      for (const [i, lines] of s.progress.entries()) for (const l of lines) console.log(`peer ${i}: ${l.trim()}`);
      if (s.stopped) console.log(`\nSTOPPED EARLY: ${s.stopped}`);
    }
    if (parts.includes('sim')) {
      const s = await sim(join(dir, 'sim'));
      res.sim = s;
      console.log(
        `\n## sim: ${s.arm?.name}, ${peers} workers, ${s.arm?.steps} steps (${s.arm?.rounds} rounds): ${s.seconds.toFixed(1)} s wall (arm ${s.arm?.seconds.toFixed(1)} s), peak RSS ${gib(s.peakRss)} GiB, message ${s.arm?.messageBytes} B, val loss ${f3(s.arm?.finalValLoss ?? null)}`,
      );
    }
    if (parts.includes('pipeline')) {
      const s = await pipeline(join(dir, 'pipeline'));
      res.pipeline = s;
      console.log(
        `\n## pipeline: 3 stages, ${s.steps} steps: ${s.seconds.toFixed(1)} s wall, peak RSS ${gib(s.peakRss)} GiB (driver and stages in one process)`,
      );
    }
  } finally {
    res.loadAfter = loadavg()[0];
    writeFileSync(out, JSON.stringify(res, null, 2) + '\n');
    console.log(`\nwrote ${out}${keep ? `; run directories kept in ${dir}` : ''}`);
    if (!keep) rmSync(dir, { recursive: true, force: true });
  }
}

await main();
