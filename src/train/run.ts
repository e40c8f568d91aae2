/**
 * The single-machine training driver behind `tessera train`: data → tokenizer → GPT →
 * steps with periodic validation, metrics, plots and atomic checkpoints, resumable.
 * The CLI only parses flags and renders progress through the hooks.
 */
import { existsSync, mkdirSync, appendFileSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Kernels } from '../kernels/api.js';
import { GPT } from '../model/gpt.js';
import { saveCheckpoint, loadCheckpoint, checkTokenizerMatches } from '../model/checkpoint.js';
import {
  loadCorpus,
  prepareDataset,
  BatchSampler,
  evalBatches,
  unigramEntropy,
  type Dataset,
  type DatasetStage,
} from '../data/index.js';
import { AdamW } from './adamw.js';
import { Trainer, type StepResult } from './trainer.js';
import { openTrainModel, type DeviceChoice, type TrainModel } from './device-model.js';
import { innerStepOn } from './inner-step.js';
import type { TrainConfig } from './config.js';
import { lossPlotSvg } from './plot.js';
import { MismatchError, CorruptFileError } from '../util/errors.js';
import { z } from 'zod';

export interface RunIO {
  outDir: string;
  cacheDir: string;
  resume: boolean;
  signal?: AbortSignal;
  /**
   * Where the steps run (default cpu). On webgpu, θ, gradients and AdamW state live on the GPU;
   * validation and checkpoints copy θ (and m, v) back to the host CPU model first.
   */
  device?: DeviceChoice;
  /** Told which device 'auto' chose. */
  log?: (line: string) => void;
}

export interface RunHooks {
  onData?(stage: DatasetStage, done: number, total: number): void;
  onReady?(info: { dataset: Dataset; params: number; startStep: number; resumed: boolean; device: string }): void;
  onTotalSteps?(totalSteps: number): void;
  onStep?(r: StepResult & { totalSteps: number; tokensPerSec: number; elapsedMs: number }): void;
  onEval?(e: { step: number; valLoss: number; trainLoss: number | null }): void;
  onCheckpoint?(c: { step: number; dir: string; weightsHash: string }): void;
}

export interface TrainSummary {
  steps: number;
  tokens: number;
  seconds: number;
  tokensPerSec: number;
  finalValLoss: number;
  valUnigramEntropy: number;
  trainLossEma: number;
  weightsHash: string;
  interrupted: boolean;
  outDir: string;
  files: { checkpoint: string; tokenizer: string; metrics: string; plot: string; config: string };
}

/** What a checkpoint's `meta` must hold for `--resume`. */
const ResumeMeta = z
  .object({
    step: z.number().int().min(0),
    totalSteps: z.number().int().min(1),
    sampler: z.tuple([z.number(), z.number(), z.number(), z.number()]),
    tokenizerHash: z.string(),
    trainConfig: z.unknown(),
  })
  .passthrough();

const CALIBRATION_STEPS = 3;

export async function runTraining(
  cfg: TrainConfig,
  kernels: Kernels,
  io: RunIO,
  hooks: RunHooks = {},
): Promise<TrainSummary> {
  kernels.setThreads(cfg.threads);
  kernels.setDeterministic(cfg.deterministic);
  mkdirSync(io.outDir, { recursive: true });
  const files = {
    checkpoint: join(io.outDir, 'checkpoint'),
    tokenizer: join(io.outDir, 'checkpoint', 'tokenizer.json'),
    metrics: join(io.outDir, 'metrics.jsonl'),
    plot: join(io.outDir, 'loss.svg'),
    config: join(io.outDir, 'train-config.json'),
  };

  const corpus = loadCorpus(cfg.data);
  const dataset = prepareDataset({
    corpus,
    vocabSize: cfg.model.vocabSize,
    cacheDir: io.cacheDir,
    onProgress: hooks.onData,
  });
  checkTokenizerMatches(cfg.model, dataset.tokenizer.vocabSize, 'the trained tokenizer');
  const B = cfg.batch,
    T = cfg.model.ctx;
  if (dataset.train.length < B * T + 1)
    throw new MismatchError(`training split has ${dataset.train.length} tokens, fewer than one batch (${B}×${T + 1})`);

  const gpt = new GPT(cfg.model, kernels);
  const opt = new AdamW(cfg.model, cfg.adamw, kernels);
  const sampler = new BatchSampler(dataset.train, B, T, cfg.seed);
  let totalSteps = cfg.steps ?? 0; // 0 = to be sized after calibration
  let startStep = 0;
  const resumed = io.resume && existsSync(join(files.checkpoint, 'config.json'));
  if (resumed) {
    const ck = await loadCheckpoint(files.checkpoint, { expectConfig: cfg.model });
    const meta = ResumeMeta.safeParse(ck.meta);
    if (!meta.success)
      throw new CorruptFileError(
        files.checkpoint,
        `checkpoint has no resumable training state: ${meta.error.issues[0]?.message}`,
      );
    if (meta.data.tokenizerHash !== dataset.tokenizer.hash())
      throw new MismatchError(
        `checkpoint in ${files.checkpoint} was trained with a different tokenizer/data; use a new --out or drop --resume`,
      );
    if (!ck.optimizer) throw new CorruptFileError(files.checkpoint, 'checkpoint has no optimizer state to resume from');
    gpt.params.set(ck.params);
    opt.m.set(ck.optimizer.m);
    opt.v.set(ck.optimizer.v);
    opt.step = ck.optimizer.step;
    sampler.rng.setState(meta.data.sampler);
    startStep = meta.data.step;
    totalSteps = cfg.steps ?? meta.data.totalSteps;
  } else {
    gpt.init(cfg.seed);
    writeFileSync(files.metrics, '');
  }
  writeFileSync(files.config, JSON.stringify(cfg, null, 2) + '\n');

  const schedule = {
    kind: cfg.schedule,
    maxLr: cfg.lr,
    minLrFrac: cfg.minLrFrac,
    warmupSteps: cfg.warmup,
    totalSteps: Math.max(1, totalSteps),
    decayFrac: 0.2,
  };
  const trainer = new Trainer(gpt, opt, schedule, B, T);
  trainer.stepCount = startStep;
  // A GPU model (null: the CPU trainer steps gpt/opt in place, as before devices).
  let dm: TrainModel | null = null;
  if ((io.device ?? 'cpu') !== 'cpu') {
    const m = await openTrainModel(io.device!, { config: cfg.model, adamw: cfg.adamw, kernels, log: io.log });
    if (m.device === 'cpu') m.close();
    else {
      dm = m;
      await dm.warmUp(B, T);
      await dm.setParams(gpt.params);
      await dm.setOptimizerState({ m: opt.m, v: opt.v, step: opt.step });
    }
  }
  /** Brings θ and AdamW's state back to the host model before validation or a checkpoint. */
  const pull = async () => {
    if (!dm) return;
    gpt.params.set(await dm.getParams());
    const s = await dm.optimizerState();
    opt.m.set(s.m);
    opt.v.set(s.v);
    opt.step = s.step;
  };
  const device = dm ? `webgpu (${dm.label})` : `cpu (${kernels.name} kernels)`;
  hooks.onReady?.({ dataset, params: gpt.numParams, startStep, resumed, device });

  const valEntropy = unigramEntropy(dataset.val);
  const history = loadHistory(files.metrics);
  const record = (row: Record<string, unknown>) => appendFileSync(files.metrics, JSON.stringify(row) + '\n');
  /** Mean validation loss: on the device that trains (θ stays there), else the host's model. */
  const evaluate = async (maxBatches: number): Promise<number> => {
    if (!dm) return trainer.evaluate(evalBatches(dataset.val, B, T, maxBatches)).loss;
    let sum = 0,
      n = 0;
    for (const b of evalBatches(dataset.val, B, T, maxBatches)) {
      sum += await dm.loss(b.inputs, b.targets, B, T);
      n += 1;
    }
    return n ? sum / n : NaN;
  };

  const save = async (step: number) => {
    await pull();
    const r = await saveCheckpoint(files.checkpoint, {
      config: cfg.model,
      params: gpt.params,
      optimizer: { m: opt.m, v: opt.v, step: opt.step },
      meta: {
        step,
        totalSteps,
        sampler: sampler.rng.getState(),
        tokenizerHash: dataset.tokenizer.hash(),
        trainConfig: cfg,
        data: dataset.corpusName,
      },
      // The tokenizer travels inside the same atomic write, so a checkpoint is never paired with the wrong vocabulary.
      extraFiles: { 'tokenizer.json': dataset.tokenizer.serialize() },
    });
    hooks.onCheckpoint?.({ step, dir: files.checkpoint, weightsHash: r.weightsHash });
    return r.weightsHash;
  };
  const plot = () =>
    writeFileSync(
      files.plot,
      lossPlotSvg(
        [
          { name: 'train loss (EMA)', color: '#1f77b4', points: history.train },
          { name: 'validation loss', color: '#d62728', points: history.val },
        ],
        {
          title: `Tessera GPT on ${dataset.corpusName}`,
          xLabel: 'tokens seen',
          yLabel: 'loss (nats/token)',
          hlines: [{ y: valEntropy, label: `val unigram entropy ${valEntropy.toFixed(2)}`, color: '#2ca02c' }],
        },
      ),
    );

  if (!resumed) {
    const v0 = await evaluate(cfg.evalBatches);
    history.val.push([0, v0]);
    record({ step: 0, tokens: 0, valLoss: v0 });
    hooks.onEval?.({ step: 0, valLoss: v0, trainLoss: null });
  }

  const t0 = performance.now();
  let ema: number | null = null;
  let tokens = 0;
  let interrupted = false;
  let step = startStep;
  const tokensPerStep = B * T;
  for (;;) {
    if (totalSteps > 0 && step >= totalSteps) break;
    if (io.signal?.aborted) {
      interrupted = true;
      break;
    }
    let r: StepResult;
    if (dm) {
      const x = await innerStepOn(dm, {
        batches: [sampler.next()],
        B,
        T,
        schedule: trainer.schedule,
        step: trainer.stepCount,
      });
      trainer.stepCount += 1;
      r = { step: trainer.stepCount, loss: x.loss, gradNorm: x.gradNorm, lr: x.lr, tokens: B * T };
    } else r = trainer.step([sampler.next()]);
    step = r.step;
    tokens += r.tokens;
    ema = ema === null ? r.loss : 0.95 * ema + 0.05 * r.loss;
    const elapsedMs = performance.now() - t0;
    if (totalSteps === 0 && step - startStep >= CALIBRATION_STEPS) {
      // Size the run to the time budget: steps so far tell the step time; evaluation adds its share.
      const stepMs = elapsedMs / (step - startStep);
      const evalShare = (stepMs * cfg.evalBatches) / 3 / cfg.evalEvery;
      totalSteps = Math.max(step + 1, Math.floor((cfg.minutes * 60_000 - elapsedMs) / (stepMs + evalShare)) + step);
      trainer.schedule.totalSteps = totalSteps;
      hooks.onTotalSteps?.(totalSteps);
    }
    hooks.onStep?.({ ...r, totalSteps, tokensPerSec: tokens / (elapsedMs / 1000), elapsedMs });
    if (step % 10 === 0) {
      history.train.push([step * tokensPerStep, ema]);
      record({ step, tokens: step * tokensPerStep, trainLoss: ema, lr: r.lr, gradNorm: r.gradNorm });
    }
    const last = totalSteps > 0 && step >= totalSteps;
    if (step % cfg.evalEvery === 0 && !last) {
      const v = await evaluate(cfg.evalBatches);
      history.val.push([step * tokensPerStep, v]);
      record({ step, tokens: step * tokensPerStep, valLoss: v });
      hooks.onEval?.({ step, valLoss: v, trainLoss: ema });
      plot();
    }
    if (step % cfg.checkpointEvery === 0 && !last) await save(step);
    await new Promise<void>((resolve) => setImmediate(resolve)); // let Ctrl-C and timers in
  }
  const seconds = (performance.now() - t0) / 1000;
  // Final numbers: the whole validation split, not a sample.
  const finalVal = await evaluate(Infinity);
  history.val.push([step * tokensPerStep, finalVal]);
  record({ step, tokens: step * tokensPerStep, valLoss: finalVal, final: true, evalBatches: 'all' });
  hooks.onEval?.({ step, valLoss: finalVal, trainLoss: ema });
  plot();
  const hash = await save(step);
  dm?.close();
  return {
    steps: step,
    tokens,
    seconds,
    tokensPerSec: tokens / Math.max(seconds, 1e-9),
    finalValLoss: finalVal,
    valUnigramEntropy: valEntropy,
    trainLossEma: ema ?? NaN,
    weightsHash: hash,
    interrupted,
    outDir: io.outDir,
    files,
  };
}

function loadHistory(path: string): { train: [number, number][]; val: [number, number][] } {
  const h = { train: [] as [number, number][], val: [] as [number, number][] };
  if (!existsSync(path)) return h;
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      const r = JSON.parse(line) as { tokens?: number; trainLoss?: number; valLoss?: number };
      if (typeof r.tokens !== 'number') continue;
      if (typeof r.trainLoss === 'number') h.train.push([r.tokens, r.trainLoss]);
      if (typeof r.valLoss === 'number') h.val.push([r.tokens, r.valLoss]);
    } catch {
      /* a torn last line from a crash: skip it */
    }
  }
  return h;
}
