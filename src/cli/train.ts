/**
 * `tessera train`: train a GPT on the embedded Brown corpus or your own text, on this machine;
 * or, with `--init DIR`, fine-tune an existing GPT-2 or Llama checkpoint (e.g. from `tessera
 * import --hf`) on a JSONL file, fully or with a LoRA adapter (`--lora r,alpha,targets`).
 */
import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import cliProgress from 'cli-progress';
import { int, num, oneOf } from './args.js';
import { say, result } from './output.js';
import { loadKernels } from '../kernels/index.js';
import { runTraining } from '../train/run.js';
import { DEFAULT_TRAIN, TrainConfigSchema, type TrainConfig } from '../train/config.js';
import { InvalidInputError } from '../util/errors.js';
import { parseLoraFlag, runFinetune, type FinetuneConfig } from '../train/finetune.js';
import type { Kernels } from '../kernels/api.js';

export function defaultCacheDir(): string {
  return process.env.TESSERA_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'tessera');
}

/** Merge: defaults < --config file < flags given on the command line. */
function buildConfig(o: Record<string, unknown>, given: Set<string>): TrainConfig {
  let base: unknown = DEFAULT_TRAIN;
  if (typeof o.config === 'string') {
    let text: string;
    try {
      text = readFileSync(o.config, 'utf8');
    } catch (e) {
      throw new InvalidInputError(`cannot read --config ${o.config}: ${(e as Error).message}`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      throw new InvalidInputError(`--config ${o.config} is not valid JSON: ${(e as Error).message}`);
    }
    if (typeof parsed !== 'object' || parsed === null)
      throw new InvalidInputError(`--config ${o.config} must hold a JSON object`);
    const p = parsed as Partial<TrainConfig>;
    base = {
      ...DEFAULT_TRAIN,
      ...p,
      model: { ...DEFAULT_TRAIN.model, ...p.model },
      adamw: { ...DEFAULT_TRAIN.adamw, ...p.adamw },
    };
  }
  const c = structuredClone(base) as TrainConfig;
  const set = (flag: string, apply: (v: never) => void) => {
    if (given.has(flag)) apply(o[flag] as never);
  };
  set('vocab', (v: number) => {
    c.model.vocabSize = v;
  });
  set('ctx', (v: number) => {
    c.model.ctx = v;
  });
  set('dim', (v: number) => {
    c.model.dim = v;
  });
  set('layers', (v: number) => {
    c.model.layers = v;
  });
  set('heads', (v: number) => {
    c.model.heads = v;
  });
  set('data', (v: string) => {
    c.data = v;
  });
  set('batch', (v: number) => {
    c.batch = v;
  });
  set('steps', (v: number) => {
    c.steps = v;
  });
  set('minutes', (v: number) => {
    c.minutes = v;
    if (!given.has('steps')) c.steps = null;
  });
  set('lr', (v: number) => {
    c.lr = v;
  });
  set('minLrFrac', (v: number) => {
    c.minLrFrac = v;
  });
  set('warmup', (v: number) => {
    c.warmup = v;
  });
  set('schedule', (v: TrainConfig['schedule']) => {
    c.schedule = v;
  });
  set('weightDecay', (v: number) => {
    c.adamw.weightDecay = v;
  });
  set('gradClip', (v: number) => {
    c.adamw.gradClip = v;
  });
  set('seed', (v: number) => {
    c.seed = v;
  });
  set('evalEvery', (v: number) => {
    c.evalEvery = v;
  });
  set('evalBatches', (v: number) => {
    c.evalBatches = v;
  });
  set('checkpointEvery', (v: number) => {
    c.checkpointEvery = v;
  });
  set('threads', (v: number) => {
    c.threads = v;
  });
  set('deterministic', (v: boolean) => {
    c.deterministic = v;
  });
  const r = TrainConfigSchema.safeParse(c);
  if (!r.success)
    throw new InvalidInputError(
      `invalid training config: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
    );
  return r.data;
}

/** Progress bar with loss, validation loss, rate and ETA (only when stderr is a terminal). */
function startBar(total: number, start: number): cliProgress.SingleBar {
  const bar = new cliProgress.SingleBar(
    {
      format: 'train |{bar}| {value}/{total} steps | loss {loss} | val {val} | {tps} tok/s | ETA {eta_formatted}',
      etaBuffer: 50,
      hideCursor: true,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, start, { loss: '-', val: '-', tps: '-' });
  return bar;
}

/** `train --init`: fine-tuning of an existing checkpoint (src/train/finetune.ts). */
async function finetune(o: Record<string, unknown>, given: Set<string>, kernels: Kernels): Promise<void> {
  if (typeof o.jsonl !== 'string')
    throw new InvalidInputError('--init needs --jsonl <file> (text or prompt/completion lines)');
  const lora = typeof o.lora === 'string' ? parseLoraFlag(o.lora) : null;
  const steps = given.has('steps') ? (o.steps as number) : 100;
  const pick = <T>(flag: string, dflt: T): T => (given.has(flag) ? (o[flag] as T) : dflt);
  const cfg: FinetuneConfig = {
    init: resolve(o.init as string),
    data: resolve(o.jsonl),
    lora,
    merged: o.merged === true,
    steps,
    batch: pick('batch', 8),
    ctx: pick<number | null>('ctx', null),
    lr: pick('lr', lora ? 1e-3 : 1e-4),
    minLrFrac: pick('minLrFrac', 0.1),
    warmup: pick('warmup', Math.min(20, Math.floor(steps / 10))),
    schedule: pick('schedule', 'cosine'),
    adamw: { ...DEFAULT_TRAIN.adamw, weightDecay: pick('weightDecay', 0), gradClip: o.gradClip as number },
    seed: o.seed as number,
    evalEvery: pick('evalEvery', Math.max(1, Math.floor(steps / 5))),
    evalBatches: o.evalBatches as number,
    eos: pick<number | null>('eos', null),
    device: o.device as FinetuneConfig['device'],
  };
  kernels.setThreads(o.threads as number);
  kernels.setDeterministic(o.deterministic === true);
  const outDir = resolve(o.out as string);
  const ac = new AbortController();
  const onSigint = () => {
    say(o, '\ninterrupted: finishing this step and writing the result (Ctrl-C again to abort now)');
    ac.abort();
    process.once('SIGINT', () => process.exit(130));
  };
  process.once('SIGINT', onSigint);
  const tty = process.stderr.isTTY && !o.json;
  let bar: cliProgress.SingleBar | null = null;
  let lastVal = NaN,
    lastLine = -Infinity;
  try {
    const s = await runFinetune(
      cfg,
      kernels,
      outDir,
      {
        onLog: (line) => say(o, line),
        onReady: (r) => {
          say(
            o,
            `model: ${r.arch === 'gpt2' ? 'GPT-2' : 'Llama'} from ${cfg.init}, ${r.params.toLocaleString('en-US')} parameters; training ${r.trainable.toLocaleString('en-US')} (${lora ? `LoRA r=${lora.r} alpha=${lora.alpha}` : 'full fine-tuning'}), device ${r.device}`,
          );
          say(
            o,
            `data: ${r.examples} examples from ${cfg.data}, ${r.trainTokens.toLocaleString('en-US')} train / ${r.valTokens.toLocaleString('en-US')} val tokens, windows of ${r.T}`,
          );
          if (tty) bar = startBar(cfg.steps, 0);
        },
        onStep: (r) => {
          const payload = {
            loss: r.loss.toFixed(3),
            val: Number.isNaN(lastVal) ? '-' : lastVal.toFixed(3),
            tps: r.tokensPerSec.toFixed(0),
          };
          if (bar) bar.update(r.step, payload);
          else if (!o.json && (r.elapsedMs - lastLine > 10_000 || r.step === r.totalSteps || r.step === 1)) {
            lastLine = r.elapsedMs;
            say(o, `step ${r.step}/${r.totalSteps} loss ${payload.loss} val ${payload.val} ${payload.tps} tok/s`);
          }
        },
        onEval: (e) => {
          lastVal = e.valLoss;
          if (!bar) say(o, `step ${e.step}: validation loss ${e.valLoss.toFixed(4)}`);
        },
      },
      ac.signal,
    );
    (bar as cliProgress.SingleBar | null)?.stop();
    const human = [
      `done: ${s.steps} steps, ${s.tokens.toLocaleString('en-US')} tokens in ${s.seconds.toFixed(1)} s`,
      `validation loss ${s.initialValLoss.toFixed(4)} → ${s.finalValLoss.toFixed(4)} nats/token (masked to completions)`,
      ...Object.entries(s.files).map(([k, v]) => `${k.padEnd(10)} → ${v}`),
    ].join('\n');
    result(o, s, human);
  } finally {
    (bar as cliProgress.SingleBar | null)?.stop();
    process.removeListener('SIGINT', onSigint);
  }
}

export function register(program: Command): void {
  program
    .command('train')
    .description('train a GPT on this machine (default: the embedded Brown corpus for 10 minutes)')
    .option('--config <file>', 'JSON training config (flags override it)')
    .option('--data <path>', "'brown' (embedded) or a text file, directory or JSONL file", DEFAULT_TRAIN.data)
    .option('--out <dir>', 'output directory (checkpoint, metrics, plot)', 'runs/train')
    .option('--cache-dir <dir>', 'tokenizer and token cache', defaultCacheDir())
    .option('--resume', 'continue from the checkpoint in --out', false)
    .option('--vocab <n>', 'vocabulary size', int(257, 1 << 20), DEFAULT_TRAIN.model.vocabSize)
    .option('--ctx <n>', 'context length', int(1, 65536), DEFAULT_TRAIN.model.ctx)
    .option('--dim <n>', 'model width', int(1, 65536), DEFAULT_TRAIN.model.dim)
    .option('--layers <n>', 'transformer blocks', int(1, 1024), DEFAULT_TRAIN.model.layers)
    .option('--heads <n>', 'attention heads', int(1, 1024), DEFAULT_TRAIN.model.heads)
    .option('--batch <n>', 'sequences per step', int(1, 65536), DEFAULT_TRAIN.batch)
    .option('--steps <n>', 'optimizer steps (default: as many as fit in --minutes)', int(1))
    .option('--minutes <m>', 'time budget when --steps is not given', num(0.01), DEFAULT_TRAIN.minutes)
    .option('--lr <x>', 'peak learning rate', num(1e-8, 10), DEFAULT_TRAIN.lr)
    .option('--min-lr-frac <x>', 'final learning rate as a fraction of the peak', num(0, 1), DEFAULT_TRAIN.minLrFrac)
    .option('--warmup <n>', 'linear warm-up steps', int(0), DEFAULT_TRAIN.warmup)
    .option('--schedule <kind>', 'cosine | wsd | constant', oneOf('cosine', 'wsd', 'constant'), DEFAULT_TRAIN.schedule)
    .option('--weight-decay <x>', 'AdamW decoupled weight decay', num(0, 10), DEFAULT_TRAIN.adamw.weightDecay)
    .option('--grad-clip <x>', 'clip the global gradient norm (0 = off)', num(0), DEFAULT_TRAIN.adamw.gradClip)
    .option('--seed <n>', 'initialisation and sampling seed', int(0), DEFAULT_TRAIN.seed)
    .option('--eval-every <n>', 'validate every n steps', int(1), DEFAULT_TRAIN.evalEvery)
    .option(
      '--eval-batches <n>',
      'validation batches per periodic eval (the final eval uses the whole split)',
      int(1),
      DEFAULT_TRAIN.evalBatches,
    )
    .option(
      '--checkpoint-every <n>',
      'checkpoint every n steps (and at the end)',
      int(1),
      DEFAULT_TRAIN.checkpointEvery,
    )
    .option('--threads <n>', 'worker threads', int(1, 1024), DEFAULT_TRAIN.threads)
    .option('--deterministic', 'bitwise-reproducible kernels (slower)', false)
    .option('--init <dir>', 'fine-tune this checkpoint (tessera-gpt2 or tessera-llama, e.g. from import --hf)')
    .option('--lora <r,alpha,targets>', "with --init: train a LoRA adapter, e.g. 8,16,q_proj+v_proj ('all' by default)")
    .option('--jsonl <file>', 'with --init: {"text"} or {"prompt","completion"} lines (loss masked to completions)')
    .option('--merged', 'with --init: also write a merged Hugging Face model', false)
    .option('--eos <id>', 'with --init: end-of-text token id (default: from the tokenizer)', int(0))
    .option(
      '--device <kind>',
      'where the steps run: cpu | webgpu | auto (webgpu when an adapter is found, else cpu)',
      oneOf('cpu', 'webgpu', 'auto'),
      'cpu',
    )
    .option('--json', 'print one JSON summary on stdout', false)
    .action(async (o, cmd: Command) => {
      const given = new Set(Object.keys(o).filter((k) => cmd.getOptionValueSource(k) === 'cli'));
      if (o.init !== undefined)
        return finetune(o, given, loadKernels({ threads: o.threads, deterministic: o.deterministic }));
      for (const f of ['lora', 'jsonl', 'merged', 'eos'])
        if (given.has(f)) throw new InvalidInputError(`--${f} needs --init <checkpoint dir>`);
      const cfg = buildConfig(o, given);
      const outDir = resolve(o.out);
      const kernels = loadKernels({ threads: cfg.threads, deterministic: cfg.deterministic });
      const ac = new AbortController();
      const onSigint = () => {
        say(o, '\ninterrupted: finishing this step and saving a checkpoint (Ctrl-C again to abort now)');
        ac.abort();
        process.once('SIGINT', () => process.exit(130));
      };
      process.once('SIGINT', onSigint);
      const tty = process.stderr.isTTY && !o.json;
      let bar: cliProgress.SingleBar | null = null;
      let lastVal = NaN;
      let lastLine = 0;
      try {
        const summary = await runTraining(
          cfg,
          kernels,
          {
            outDir,
            cacheDir: o.cacheDir,
            resume: o.resume,
            signal: ac.signal,
            device: o.device,
            log: (line) => say(o, line),
          },
          {
            onData: (stage, done, total) => {
              if (done === 0 || done === total) say(o, `data: ${stage} ${done === total ? 'done' : '...'}`);
            },
            onReady: ({ dataset, params, startStep, resumed, device }) => {
              const s = dataset.stats;
              say(
                o,
                `data: ${dataset.corpusName}, ${s.train.tokens.toLocaleString('en-US')} train / ${s.val.tokens.toLocaleString('en-US')} val tokens, vocab ${dataset.tokenizer.vocabSize}${dataset.fromCache ? ' (cached)' : ''}`,
              );
              say(
                o,
                `model: ${params.toLocaleString('en-US')} parameters, device ${device}, ${cfg.threads} thread(s)${cfg.deterministic ? ', deterministic' : ''}${resumed ? `, resumed at step ${startStep}` : ''}`,
              );
            },
            onTotalSteps: (n) => {
              say(o, `sized to ${n} steps to fit ${cfg.minutes} min`);
              if (tty) bar = startBar(n, 0);
            },
            onStep: (r) => {
              if (r.totalSteps > 0 && !bar && tty) bar = startBar(r.totalSteps, r.step - 1); // --steps or --resume: total known up front
              const payload = {
                loss: r.loss.toFixed(3),
                val: Number.isNaN(lastVal) ? '-' : lastVal.toFixed(3),
                tps: r.tokensPerSec.toFixed(0),
              };
              if (bar) bar.update(r.step, payload);
              else if (!o.json && (r.elapsedMs - lastLine > 10_000 || r.step === r.totalSteps)) {
                lastLine = r.elapsedMs;
                say(
                  o,
                  `step ${r.step}/${r.totalSteps || '?'} loss ${payload.loss} val ${payload.val} ${payload.tps} tok/s`,
                );
              }
            },
            onEval: (e) => {
              lastVal = e.valLoss;
              if (!bar) say(o, `step ${e.step}: validation loss ${e.valLoss.toFixed(4)}`);
            },
          },
        );
        (bar as cliProgress.SingleBar | null)?.stop();
        const human = [
          `${summary.interrupted ? 'stopped early' : 'done'}: ${summary.steps} steps, ${summary.tokens.toLocaleString('en-US')} tokens in ${summary.seconds.toFixed(0)} s (${summary.tokensPerSec.toFixed(0)} tok/s)`,
          `validation loss ${summary.finalValLoss.toFixed(4)} nats/token (unigram entropy of the split: ${summary.valUnigramEntropy.toFixed(4)})`,
          `weights ${summary.weightsHash.slice(0, 16)}…`,
          `checkpoint → ${summary.files.checkpoint}`,
          `metrics    → ${summary.files.metrics}`,
          `loss plot  → ${summary.files.plot}`,
        ].join('\n');
        result(o, summary, human);
      } finally {
        (bar as cliProgress.SingleBar | null)?.stop();
        process.removeListener('SIGINT', onSigint);
      }
    });
}
