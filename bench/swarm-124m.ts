/**
 * `node dist/bench/swarm-124m.js [--parts swarm,sim,pipeline] [--rounds 3] [--peers 3] [--ctx 128] [--batch 1]
 *   [--inner 2] [--pipe-steps N] [--step-ms 12000] [--max-rss-gib 11] [--keep DIR] [--out FILE] [--small]`
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
 * - sim: `tessera sim` with one SparseLoCo arm of --peers workers, --rounds rounds of --inner steps:
 *   seconds per round, the message bytes, the validation loss after every round, the final hash.
 * - pipeline: `tessera pipeline` with the 12 layers cut into 3 stages, each a `tessera stage`
 *   process (--procs), --pipe-steps (default --rounds) steps of 8 sequences (8 micro-batches of
 *   one), one validation batch: seconds and train loss per step, activation and tied-gradient
 *   bytes, peak RSS of the driver and of each stage process.
 *
 * RSS is read from /proc/PID/status every 250 ms (VmHWM, the kernel's peak) for each process
 * and the processes it started; a run whose processes together pass --max-rss-gib is stopped
 * (the machine is shared), and still records what it measured. --small runs the same at a toy
 * size (a quick check of the harness). Prints Markdown tables and writes the JSON (default
 * bench/swarm-124m.json); parts run now replace their own entries in an existing file, with
 * their command, date and load, and leave the others (an earlier swarm run) as they were.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
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
/** Pipeline optimizer steps (batch 8); default --rounds. */
const pipeSteps = Number(opt('--pipe-steps', String(rounds)));
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

/** `pid` and every process below it (a pipeline's stage processes), from /proc. */
function treeOf(pid: number): number[] {
  const parent = new Map<number, number[]>();
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const st = readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]);
      parent.set(ppid, [...(parent.get(ppid) ?? []), Number(e)]);
    } catch {
      /* gone */
    }
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) out.push(...(parent.get(out[i]) ?? []));
  return out;
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
    /** Every process seen, with its peak. */
    peaks: () => [...peak.entries()].map(([pid, bytes]) => ({ pid, bytes })),
    totalPeak: () => totalPeak,
    stop: () => clearInterval(t),
  };
}

/** Runs `tessera ...args` to completion; its stdout, stderr tail, wall seconds and peak RSS. */
async function tessera(argv: string[], label: string, timeoutMs: number, tolerate = false) {
  const t0 = Date.now();
  const child = spawn(process.execPath, [TESSERA_BIN, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr = (stderr + d).slice(-20000);
    process.stderr.write(d.replace(/^(?=.)/gm, `[${label}] `));
  });
  let killedFor: string | null = null;
  const w = watchRss(
    () => (child.pid ? treeOf(child.pid) : []),
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
  const peaks = w.peaks();
  const totalPeakRss = w.totalPeak();
  const failed = code !== 0 ? `tessera ${argv[0]} failed (${killedFor ?? `exit ${code}`})` : null;
  if (failed && !tolerate) throw new Error(`${failed}:\n${stderr.slice(-3000)}`);
  return { stdout, stderr, seconds: (Date.now() - t0) / 1000, peakRss, peaks, totalPeakRss, failed };
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
  const steps = rounds * inner; // --rounds rounds of H = --inner inner steps per worker
  const r = await tessera(
    [
      'sim',
      '--arms',
      `sparseloco-${inner}`,
      '--workers',
      String(peers),
      // The swarm's SparseLoCo settings (manifest-builder's), not the sim's default chunk.
      '--sparse-chunk',
      String(SPARSE.chunk),
      '--sparse-k',
      String(SPARSE.k),
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
      // The shared weights' validation loss after every round.
      '--eval-points',
      String(rounds),
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
    3_600_000,
    true,
  );
  let j: {
    arms?: {
      name: string;
      steps: number;
      rounds: number;
      seconds: number;
      messageBytes: number;
      bytesSent: number;
      bytesReceived: number;
      finalValLoss: number;
      curve: { step: number; valLoss: number; bytesTotal: number }[];
      weightsHash: string;
    }[];
  } = {};
  try {
    j = JSON.parse(r.stdout) as typeof j;
  } catch {
    /* stopped early: no result */
  }
  const arm = j.arms?.[0];
  return {
    stopped: r.failed ? `${r.failed}: ${r.stderr.slice(-1500)}` : null,
    seconds: r.seconds,
    peakRss: r.peakRss,
    /** Seconds per round: the arm's time over its rounds (evaluations included). */
    secondsPerRound: arm ? arm.seconds / arm.rounds : null,
    arm: arm
      ? {
          name: arm.name,
          steps: arm.steps,
          rounds: arm.rounds,
          seconds: arm.seconds,
          messageBytes: arm.messageBytes,
          bytesSentPerWorker: arm.bytesSent,
          bytesReceivedPerWorker: arm.bytesReceived,
          finalValLoss: arm.finalValLoss,
          valLoss: arm.curve.map((c) => ({ step: c.step, valLoss: c.valLoss })),
          weightsHash: arm.weightsHash,
        }
      : null,
    progress: r.stderr.split('\n').filter((l) => l.includes('inner step')),
  };
}

/** JSON lines of a command's stdout (the rest skipped). */
function jsonLines(stdout: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const l of stdout.split('\n')) {
    try {
      const v = JSON.parse(l) as unknown;
      if (v && typeof v === 'object') out.push(v as Record<string, unknown>);
    } catch {
      /* not JSON */
    }
  }
  return out;
}

async function pipeline(dir: string) {
  const steps = pipeSteps;
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
      // Each stage in its own `tessera stage` process (the default past 20M parameters; --small too).
      '--procs',
      '--json',
    ],
    'pipeline',
    3_600_000,
    true,
  );
  void dir;
  const lines = jsonLines(r.stdout);
  const stepLines = lines.filter((l) => l.event === 'step') as {
    step: number;
    loss: number;
    seconds: number;
    actBytes: number;
    syncBytes: number;
  }[];
  const done = lines.find((l) => l.event === 'done') as
    | {
        seconds: number;
        stepSeconds: number[];
        evalSeconds: number;
        actBytes: number;
        syncBytes: number;
        trainLoss: number;
        valLoss: number;
        tokensPerSec: number;
        stagePids: number[];
      }
    | undefined;
  const stagePids = done?.stagePids ?? [];
  const stageRss = r.peaks.filter((p) => p.pid !== r.peaks[0]?.pid);
  return {
    stopped: r.failed ? `${r.failed}: ${r.stderr.slice(-1500)}` : null,
    seconds: r.seconds,
    steps,
    stepSeconds: done?.stepSeconds ?? stepLines.map((l) => l.seconds),
    evalSeconds: done?.evalSeconds ?? null,
    /** Per step (null: a fast step the run did not print). */
    trainLoss: Array.from({ length: steps }, (_, i) => stepLines.find((l) => l.step === i + 1)?.loss ?? null),
    valLoss: done?.valLoss ?? null,
    /** Activation (and activation-gradient) bytes through the driver, all steps and the evaluation. */
    actBytes: done?.actBytes ?? null,
    /** Per step: activation bytes, and the tied embedding's gradient sync (stage 0 ↔ the last stage, through the driver). */
    actBytesPerStep: stepLines.map((l) => l.actBytes),
    syncBytesPerStep: stepLines.map((l) => l.syncBytes),
    syncBytes: done?.syncBytes ?? null,
    tokensPerSec: done?.tokensPerSec ?? null,
    /** The `tessera pipeline` process (the driver). */
    peakRssDriver: r.peakRss,
    /** Each stage process's peak RSS (its pid in `stagePids` order where known). */
    peakRssPerStage: stagePids.length
      ? stagePids.map((pid) => stageRss.find((p) => p.pid === pid)?.bytes ?? 0)
      : stageRss.map((p) => p.bytes),
    totalPeakRss: r.totalPeakRss,
    progress: r.stderr.split('\n').filter((l) => /^step \d+\//.test(l)),
  };
}

async function main() {
  const dir = keep ?? mkdtempSync(join(tmpdir(), 'tessera-124m-'));
  const load = loadavg()[0];
  const meta = {
    command: `node dist/bench/swarm-124m.js ${args.join(' ')}`,
    params: P,
    model: { ...MODEL, ctx, batch },
    peers,
    inner,
    loadBefore: load,
    date: new Date().toISOString(),
  };
  // Parts run now replace their own entries; the file's other parts (an earlier swarm run) stay.
  const prev = existsSync(out) ? (JSON.parse(readFileSync(out, 'utf8')) as Record<string, unknown>) : null;
  const res: Record<string, unknown> = prev ?? { ...meta };
  /** A part's entry: its own command, date and load, when it merges into an earlier file. */
  const entry = <T extends object>(x: T) => ({ ...meta, ...x, loadAfter: loadavg()[0] });
  const gib = (b: number) => (b / GiB).toFixed(2);
  try {
    if (parts.includes('swarm')) {
      const s = await swarm(join(dir, 'swarm'));
      res.swarm = prev ? entry(s) : s;
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
      res.sim = entry(s);
      console.log(
        `\n## sim: ${s.arm?.name}, ${peers} workers, ${s.arm?.steps} steps (${s.arm?.rounds} rounds): ${s.seconds.toFixed(1)} s wall (arm ${s.arm?.seconds.toFixed(1)} s, ${s.secondsPerRound?.toFixed(1) ?? '-'} s/round), peak RSS ${gib(s.peakRss)} GiB, message ${s.arm?.messageBytes} B, sent ${s.arm?.bytesSentPerWorker ?? '-'} B/worker, val loss ${s.arm?.valLoss.map((v) => `${v.step}: ${f3(v.valLoss)}`).join(', ') ?? '-'}`,
      );
      for (const l of s.progress) console.log(l.trim());
      if (s.stopped) console.log(`\nSTOPPED EARLY: ${s.stopped}`);
    }
    if (parts.includes('pipeline')) {
      const s = await pipeline(join(dir, 'pipeline'));
      res.pipeline = entry(s);
      console.log(
        `\n## pipeline: ${P} parameters, 3 stage processes and a driver, ${s.steps} steps of 8 × ${ctx} tokens\n`,
      );
      console.log('| step | s/step | train loss |');
      console.log('|---|---|---|');
      for (const [i, sec] of s.stepSeconds.entries())
        console.log(`| ${i + 1} | ${sec.toFixed(1)} | ${f3(s.trainLoss[i] ?? null)} |`);
      console.log(
        `\n${s.seconds.toFixed(1)} s wall (start-up, steps, evaluation ${s.evalSeconds?.toFixed(1) ?? '-'} s, sample); val loss ${f3(s.valLoss)}; ${s.actBytes ?? '-'} activation bytes and ${s.syncBytes ?? '-'} tied-gradient sync bytes through the driver; peak RSS driver ${gib(s.peakRssDriver)} GiB, stages ${s.peakRssPerStage.map(gib).join(', ')} GiB, together ${gib(s.totalPeakRss)} GiB`,
      );
      for (const l of s.progress) console.log(`pipeline: ${l}`);
      if (s.stopped) console.log(`\nSTOPPED EARLY: ${s.stopped}`);
    }
  } finally {
    if (!prev) res.loadAfter = loadavg()[0];
    writeFileSync(out, JSON.stringify(res, null, 2) + '\n');
    console.log(`\nwrote ${out}${keep ? `; run directories kept in ${dir}` : ''}`);
    if (!keep) rmSync(dir, { recursive: true, force: true });
  }
}

await main();
