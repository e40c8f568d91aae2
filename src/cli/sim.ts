/**
 * `tessera sim`: simulate an M-worker DiLoCo swarm in one process (no sockets, exact byte
 * accounting) and compare data-parallel AdamW with DiLoCo arms at an equal token budget.
 * The simulator itself is src/swarm/sim.ts; this file parses flags, shows progress and
 * renders the table, sim.json and the loss-vs-bytes plot.
 *
 * Default: a small model (vocab 1024, ctx 64, dim 128, 2 layers, 4 heads; 536k parameters,
 * ~20k training tokens/s on 2 threads) and 1M tokens per arm, so the full default comparison
 * (8 arms) takes about 7-8 minutes on 2 cores. The reference model of `tessera train` is
 *   --vocab 4096 --ctx 128 --dim 256 --layers 4 --heads 4 --batch 16
 * (about 5,400 tokens/s on 2 threads: roughly one minute per 300k tokens per arm; note that
 * --batch is per worker, so --workers 4 --batch 4 keeps `tessera train`'s global batch of 16).
 */
import type { Command } from 'commander';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import cliProgress from 'cli-progress';
import { int, num } from './args.js';
import { say, result } from './output.js';
import { defaultCacheDir } from './train.js';
import { loadKernels } from '../kernels/index.js';
import { ModelConfigSchema } from '../model/config.js';
import { checkTokenizerMatches } from '../model/checkpoint.js';
import { loadCorpus, prepareDataset, unigramEntropy } from '../data/index.js';
import { DEFAULT_ADAMW } from '../train/adamw.js';
import { lossPlotSvg } from '../train/plot.js';
import {
  DEFAULT_ARMS,
  DEFAULT_ARM_SETTINGS,
  DEFAULT_SIM,
  FORMULAS,
  dpBytesPerStep,
  parseArm,
  runSim,
  type ArmDefaults,
  type ArmResult,
  type SimResult,
} from '../swarm/sim.js';
import { InvalidInputError } from '../util/errors.js';
import { parseBehaviours } from '../verify/adversaries.js';
import { runVerifySim, type Defence } from '../verify/sim.js';

export const SIM_DEFAULT_MODEL = { vocabSize: 1024, ctx: 64, dim: 128, layers: 2, heads: 4 };
export const SIM_DEFAULT_TOKENS = 1_000_000;

const COLORS = [
  '#000000',
  '#1f77b4',
  '#ff7f0e',
  '#2ca02c',
  '#d62728',
  '#9467bd',
  '#8c564b',
  '#e377c2',
  '#7f7f7f',
  '#bcbd22',
  '#17becf',
];

/** 1234567 -> "1.23 MB" (SI units, bytes). */
export function fmtBytes(n: number): string {
  if (n === 0) return '0 B';
  const units = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : n >= 100 ? 1 : 2)} ${units[i]}`;
}

function fmtRatio(r: number | null): string {
  if (r === null) return '-';
  return r >= 100 ? `${Math.round(r).toLocaleString('en-US')}×` : `${r.toFixed(2)}×`;
}

/** The comparison table (plain text, aligned columns). */
export function simTable(r: SimResult): string {
  const head = [
    'arm',
    'H',
    'codec',
    'syncs',
    'tokens',
    'val loss',
    'gap vs dp',
    'bytes/worker (sent+recv)',
    'sent/worker',
    'msg bytes',
    'dp/arm total',
    'dp/arm sent',
  ];
  const rows = r.arms.map((a: ArmResult) => [
    a.name,
    a.H === null ? '-' : String(a.H),
    a.codec ?? 'fp32 (grads)',
    String(a.rounds),
    a.tokens.toLocaleString('en-US'),
    a.finalValLoss.toFixed(4),
    a.gapPct === null ? '-' : `${a.gapPct >= 0 ? '+' : ''}${a.gapPct.toFixed(2)}%`,
    fmtBytes(a.bytesTotal),
    fmtBytes(a.bytesSent),
    a.messageBytes === null ? '-' : a.messageBytes.toLocaleString('en-US'),
    fmtRatio(a.ratioTotal),
    fmtRatio(a.ratioSent),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 || i === 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function simPlot(r: SimResult, valEntropy?: number): string {
  return lossPlotSvg(
    r.arms.map((a, i) => ({
      name: a.name,
      color: COLORS[i % COLORS.length],
      // log-x cannot show 0 bytes: checkpoints before the first exchange are left out.
      points: a.curve.filter((p) => p.bytesTotal > 0).map((p) => [p.bytesTotal, p.valLoss] as [number, number]),
    })),
    {
      title: `tessera sim: ${r.workers} workers, ${r.tokensPerArm.toLocaleString('en-US')} tokens per arm, ${r.params.toLocaleString('en-US')} params`,
      xLabel: 'bytes per worker, sent + received (log scale)',
      yLabel: 'validation loss (nats/token)',
      logX: true,
      hlines:
        valEntropy === undefined
          ? []
          : [{ y: valEntropy, label: `val unigram entropy ${valEntropy.toFixed(2)}`, color: '#2ca02c' }],
    },
  );
}

function parseArms(list: string, d: ArmDefaults) {
  const names = list
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (names.length === 0) throw new InvalidInputError('--arms is empty');
  return names.map((n) => parseArm(n, d));
}

export function register(program: Command): void {
  program
    .command('sim')
    .description(
      'simulate an M-worker DiLoCo swarm in-process (exact bytes, no sockets) and compare it with data-parallel AdamW at equal tokens',
    )
    .option('--workers <M>', 'simulated workers', int(1, 1024), DEFAULT_SIM.workers)
    .option(
      '--tokens <n>',
      'token budget per arm, all workers together (rounded down to whole global steps)',
      int(1),
      SIM_DEFAULT_TOKENS,
    )
    .option(
      '--arms <list>',
      'comma-separated: dp, diloco-<H>, diloco-<H>-<fp32|fp16|int8|sparse>, sparseloco-<H>; append -delayed to a DiLoCo arm for the one-step-delayed outer update (overlap mode)',
      DEFAULT_ARMS.join(','),
    )
    .option('--data <path>', "'brown' (embedded) or a text file, directory or JSONL file", 'brown')
    .option('--cache-dir <dir>', 'tokenizer and token cache', defaultCacheDir())
    .option('--vocab <n>', 'vocabulary size', int(257, 1 << 20), SIM_DEFAULT_MODEL.vocabSize)
    .option('--ctx <n>', 'context length', int(1, 65536), SIM_DEFAULT_MODEL.ctx)
    .option('--dim <n>', 'model width', int(1, 65536), SIM_DEFAULT_MODEL.dim)
    .option('--layers <n>', 'transformer blocks', int(1, 1024), SIM_DEFAULT_MODEL.layers)
    .option('--heads <n>', 'attention heads', int(1, 1024), SIM_DEFAULT_MODEL.heads)
    .option(
      '--batch <n>',
      'sequences per worker per step (global batch = workers × batch)',
      int(1, 65536),
      DEFAULT_SIM.batch,
    )
    .option('--lr <x>', 'peak learning rate of DP AdamW and of the inner AdamW', num(1e-8, 10), DEFAULT_SIM.lr)
    .option('--inner-lr <x>', 'peak learning rate of the DiLoCo inner AdamW (default: --lr)', num(1e-8, 10))
    .option(
      '--warm-start-steps <n>',
      'data-parallel warm start: the first n steps of every DiLoCo arm are dp steps (dense all-reduce bytes counted)',
      int(0),
      0,
    )
    .option('--min-lr-frac <x>', 'final learning rate as a fraction of the peak', num(0, 1), DEFAULT_SIM.minLrFrac)
    .option(
      '--warmup <n>',
      'linear warm-up steps (of the cosine schedule over all inner steps)',
      int(0),
      DEFAULT_SIM.warmup,
    )
    .option('--weight-decay <x>', 'AdamW decoupled weight decay', num(0, 10), DEFAULT_ADAMW.weightDecay)
    .option('--outer-lr <x>', 'DiLoCo outer Nesterov learning rate', num(1e-6, 10), DEFAULT_ARM_SETTINGS.outer.lr)
    .option(
      '--outer-momentum <x>',
      'DiLoCo outer Nesterov momentum',
      num(0, 0.999),
      DEFAULT_ARM_SETTINGS.outer.momentum,
    )
    .option('--sparse-chunk <n>', 'sparse codec chunk (power of two)', int(2, 65536), DEFAULT_SIM.sparse.chunk)
    .option('--sparse-k <n>', 'sparse codec entries kept per chunk', int(1, 65536), DEFAULT_SIM.sparse.k)
    .option('--ef-beta <x>', 'error-feedback decay for diloco-<H>-sparse', num(0, 1), DEFAULT_ARM_SETTINGS.sparseEfBeta)
    .option(
      '--sparseloco-beta <x>',
      'error-feedback decay for sparseloco-<H>',
      num(0, 1),
      DEFAULT_ARM_SETTINGS.sparselocoEfBeta,
    )
    .option(
      '--sparseloco-lr <x>',
      'outer learning rate for sparseloco-<H>',
      num(1e-6, 10),
      DEFAULT_ARM_SETTINGS.sparselocoOuter.lr,
    )
    .option(
      '--sparseloco-momentum <x>',
      'outer Nesterov momentum for sparseloco-<H> (0 = plain SGD)',
      num(0, 0.999),
      DEFAULT_ARM_SETTINGS.sparselocoOuter.momentum,
    )
    .option(
      '--eval-points <n>',
      'validation checkpoints per arm (evenly spaced, plus step 0)',
      int(1, 10000),
      DEFAULT_SIM.evalPoints,
    )
    .option(
      '--eval-batches <n>',
      'validation batches per periodic checkpoint (the final one uses the whole split)',
      int(1),
      DEFAULT_SIM.evalBatches,
    )
    .option(
      '--final-eval-batches <n>',
      'validation batches for the final checkpoint (default: the whole split)',
      int(1),
    )
    .option('--threads <n>', 'worker threads', int(1, 1024), 2)
    .option('--deterministic', 'bitwise-reproducible kernels (slower)', false)
    .option('--seed <n>', 'initialisation and sampling seed', int(0, 2 ** 32), DEFAULT_SIM.seed)
    .option('--out <dir>', 'write sim.json and sim-loss-vs-bytes.svg here')
    .option('--json', 'print one JSON document on stdout', false)
    .option(
      '--behave <spec>',
      'adversaries (issue 6): "6=scaler,7=copier" or "scaler:2" (kinds: see src/verify/adversaries.ts); runs the adversarial sim on the first DiLoCo arm (fp32) instead of the arm comparison',
    )
    .option(
      '--defence <kind>',
      'with --behave: none | robust (validator scoring + median-norm clipping + dropping flagged peers)',
      'robust',
    )
    .option('--top-g <n>', 'with --behave and --defence robust: keep the G best-scored unflagged peers', int(1, 1024))
    .action(async (o) => {
      const model = ModelConfigSchema.safeParse({
        vocabSize: o.vocab,
        ctx: o.ctx,
        dim: o.dim,
        layers: o.layers,
        heads: o.heads,
      });
      if (!model.success)
        throw new InvalidInputError(`invalid model shape: ${model.error.issues.map((i) => i.message).join('; ')}`);
      const armDefaults: ArmDefaults = {
        outer: { lr: o.outerLr, momentum: o.outerMomentum },
        sparseEfBeta: o.efBeta,
        sparselocoEfBeta: o.sparselocoBeta,
        sparselocoOuter: { lr: o.sparselocoLr, momentum: o.sparselocoMomentum },
      };
      const arms = parseArms(o.arms, armDefaults);
      if (o.sparseK > o.sparseChunk)
        throw new InvalidInputError(`--sparse-k ${o.sparseK} exceeds --sparse-chunk ${o.sparseChunk}`);
      if ((o.sparseChunk & (o.sparseChunk - 1)) !== 0)
        throw new InvalidInputError(`--sparse-chunk must be a power of two, got ${o.sparseChunk}`);
      const kernels = loadKernels({ threads: o.threads, deterministic: o.deterministic });
      const corpus = loadCorpus(o.data);
      const dataset = prepareDataset({
        corpus,
        vocabSize: model.data.vocabSize,
        cacheDir: o.cacheDir,
        onProgress: (stage, done, total) => {
          if (done === 0 || done === total) say(o, `data: ${stage} ${done === total ? 'done' : '...'}`);
        },
      });
      checkTokenizerMatches(model.data, dataset.tokenizer.vocabSize, 'the trained tokenizer');
      const opts = {
        ...DEFAULT_SIM,
        model: model.data,
        workers: o.workers,
        batch: o.batch,
        tokens: o.tokens,
        arms,
        lr: o.lr,
        innerLr: o.innerLr ?? null,
        warmStartSteps: o.warmStartSteps,
        minLrFrac: o.minLrFrac,
        warmup: o.warmup,
        adamw: { ...DEFAULT_ADAMW, weightDecay: o.weightDecay },
        sparse: { chunk: o.sparseChunk, k: o.sparseK },
        evalPoints: o.evalPoints,
        evalBatches: o.evalBatches,
        finalEvalBatches: o.finalEvalBatches ?? Infinity,
        seed: o.seed,
      };
      const perStep = o.workers * o.batch * model.data.ctx;
      const steps = Math.floor(o.tokens / perStep);
      if (o.behave !== undefined) {
        if (o.defence !== 'none' && o.defence !== 'robust')
          throw new InvalidInputError(`--defence must be none or robust, got ${o.defence}`);
        const behaviours = parseBehaviours(o.behave, o.workers);
        const arm = arms.find((a) => a.kind === 'diloco');
        if (!arm) throw new InvalidInputError('--behave needs a diloco arm in --arms (its H is used)');
        const rounds = Math.floor(steps / arm.H);
        if (rounds < 1) throw new InvalidInputError(`--tokens ${o.tokens} is less than one round of ${arm.H} steps`);
        say(o, `adversarial sim: ${behaviours.join(', ')}; defence ${o.defence}; H ${arm.H}, ${rounds} rounds`);
        const r = await runVerifySim({ train: dataset.train, val: dataset.val }, kernels, {
          model: model.data,
          behaviours,
          defence: o.defence as Defence,
          batch: o.batch,
          H: arm.H,
          rounds,
          lr: o.lr,
          warmup: o.warmup,
          seed: o.seed,
          evalK: 2,
          valBatches: o.finalEvalBatches ?? 64,
          topG: o.topG ?? null,
        });
        const human = [
          `final val loss ${r.diverged ? 'diverged' : r.finalValLoss.toFixed(4)}`,
          ...behaviours.map(
            (b, w) =>
              `worker ${w} ${b}: score ${r.earned[w].toFixed(4)}, flagged ${r.flaggedRounds[w]}/${r.rounds} rounds, first at ${r.firstFlag[w] ?? '-'}`,
          ),
          `validator ${r.validatorMs.toFixed(1)} ms per round vs one trainer's round ${r.trainerMs.toFixed(1)} ms`,
        ].join('\n');
        result(o, { behaviours, defence: o.defence, ...r, finalValLoss: r.diverged ? null : r.finalValLoss }, human);
        return;
      }
      say(
        o,
        `data: ${dataset.corpusName}, ${dataset.stats.train.tokens.toLocaleString('en-US')} train / ${dataset.stats.val.tokens.toLocaleString('en-US')} val tokens, vocab ${dataset.tokenizer.vocabSize}`,
      );
      say(
        o,
        `sim: ${o.workers} workers × batch ${o.batch} × ctx ${model.data.ctx} = ${perStep.toLocaleString('en-US')} tokens per global step; ${steps} steps (${(steps * perStep).toLocaleString('en-US')} tokens) per arm; arms: ${arms.map((a) => a.name).join(', ')}`,
      );
      say(o, `kernels: ${kernels.name}, ${o.threads} thread(s)${o.deterministic ? ', deterministic' : ''}`);

      const tty = process.stderr.isTTY && !o.json;
      const total = steps * arms.length;
      let bar: cliProgress.SingleBar | null = null;
      if (tty) {
        bar = new cliProgress.SingleBar(
          {
            format: 'sim |{bar}| {arm} step {s}/{S} | loss {loss} | val {val} | ETA {eta_formatted}',
            etaBuffer: 200,
            hideCursor: true,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total, 0, { arm: arms[0].name, s: 0, S: steps, loss: '-', val: '-' });
      }
      const t0 = performance.now();
      // Inner steps of the whole sim (a DiLoCo arm's workers step one after another), for the ETA.
      const innerTotal = arms.reduce((t, a) => t + (a.kind === 'dp' ? steps : steps * o.workers), 0);
      let innerDone = 0,
        lastInner = t0;
      let lastLine = 0;
      let lastVal = '-';
      const ac = new AbortController();
      const onSigint = () => {
        ac.abort();
        process.once('SIGINT', () => process.exit(130));
      };
      process.once('SIGINT', onSigint);
      let res: SimResult;
      try {
        res = await runSim({ train: dataset.train, val: dataset.val }, kernels, opts, {
          signal: ac.signal,
          onStep: (p) => {
            const done = p.armIndex * steps + p.step;
            if (bar) bar.update(done, { arm: p.arm, s: p.step, S: p.steps, loss: p.loss.toFixed(3), val: lastVal });
            else if (!o.json) {
              const now = performance.now() - t0;
              if (now - lastLine > 15_000) {
                lastLine = now;
                say(
                  o,
                  `${p.arm}: step ${p.step}/${p.steps} loss ${p.loss.toFixed(3)} (${((100 * done) / total).toFixed(0)}% of the sim, ${(now / 1000).toFixed(0)} s)`,
                );
              }
            }
          },
          onInnerStep: (p) => {
            innerDone++;
            const now = performance.now(),
              stepS = (now - lastInner) / 1000;
            lastInner = now;
            // A slow inner step (a real-sized model) reaches stderr with its rate and ETA, even with --json.
            if (stepS >= 2 && !bar) {
              const left = innerTotal - innerDone;
              process.stderr.write(
                `sim: ${p.arm}: worker ${p.worker} inner step ${p.step}/${p.steps}, loss ${p.loss.toFixed(3)}, ${stepS.toFixed(1)} s/step` +
                  (left > 0 ? `, ETA ${Math.round((left * (now - t0)) / 1000 / innerDone)} s` : '') +
                  '\n',
              );
            }
          },
          onEval: (e) => {
            lastVal = e.valLoss.toFixed(3);
          },
          onArmDone: (a) => {
            const line = `${a.name}: val loss ${a.finalValLoss.toFixed(4)}, ${fmtBytes(a.bytesTotal)} per worker, ${a.seconds.toFixed(0)} s`;
            if (bar) bar.update({ val: a.finalValLoss.toFixed(3) });
            else say(o, line);
          },
        });
      } finally {
        bar?.stop();
        process.removeListener('SIGINT', onSigint);
      }
      const valEntropy = unigramEntropy(dataset.val);
      const out = {
        ...res,
        valUnigramEntropy: valEntropy,
        seconds: (performance.now() - t0) / 1000,
        threads: o.threads,
        deterministic: o.deterministic,
        kernels: kernels.name,
        data: dataset.corpusName,
        files: null as null | { json: string; plot: string },
      };
      if (o.out) {
        const dir = resolve(o.out);
        mkdirSync(dir, { recursive: true });
        out.files = { json: join(dir, 'sim.json'), plot: join(dir, 'sim-loss-vs-bytes.svg') };
        writeFileSync(out.files.json, JSON.stringify(out, null, 2) + '\n');
        writeFileSync(out.files.plot, simPlot(res, valEntropy));
      }
      const P = res.params,
        M = res.workers;
      const human = [
        simTable(res),
        '',
        `${res.params.toLocaleString('en-US')} parameters (P); M = ${M} workers; ${res.stepsPerArm} steps × ${res.tokensPerStep.toLocaleString('en-US')} tokens = ${res.tokensPerArm.toLocaleString('en-US')} tokens per arm; val unigram entropy ${valEntropy.toFixed(4)}`,
        `bytes: ${FORMULAS.dp} (= ${fmtBytes(dpBytesPerStep(P, M))} per step here)`,
        `       ${FORMULAS.diloco}`,
        `       ${FORMULAS.ratio}; gap = (arm − dp) / dp of the final validation loss`,
        ...(out.files ? [`sim.json → ${out.files.json}`, `plot     → ${out.files.plot}`] : []),
      ].join('\n');
      result(o, out, human);
    });
}
