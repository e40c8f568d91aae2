/**
 * `tessera sim`: an in-process simulator of a DiLoCo swarm of M workers, with no sockets but
 * exact byte accounting, that compares training arms at an EQUAL TOKEN BUDGET and an EQUAL
 * GLOBAL BATCH (M workers x B sequences x T tokens per step) against data-parallel AdamW.
 *
 * Arms (names parsed by parseArm):
 *   dp                    data-parallel AdamW. Each step every worker computes the gradient of
 *                         its own batch, the M gradients are averaged (a dense fp32 ring
 *                         all-reduce) and one AdamW step updates the shared weights. Simulated
 *                         as gradient accumulation with scale 1/M over the M batches, which is
 *                         the same average.
 *   diloco-H[-codec]      DiLoCo (Douillard et al. 2023): each round every worker starts from
 *                         the shared θ, runs H inner AdamW steps with its OWN optimizer state
 *                         (moments persist across rounds, as in DiLoCo), forms the
 *                         pseudo-gradient Δ = θ_round − θ_local, encodes it with the codec
 *                         (default fp32; per-worker ErrorFeedback for 'sparse'), all-gathers
 *                         the M messages, averages the DECODED deltas (equal weights, worker
 *                         order) and applies OuterNesterov (lr 0.7, momentum 0.9) to θ.
 *   sparseloco-H          SparseLoCo (Sarfi et al. 2025): the sparse codec with error feedback
 *                         decayed by β (default 0.95) standing in for outer momentum, and a
 *                         plain outer SGD step (lr 1, momentum 0).
 *   <diloco arm>-delayed  the same arm with a ONE-STEP-DELAYED outer update (e.g. diloco-30-delayed,
 *                         diloco-30-sparse-delayed, sparseloco-30-delayed). Why: so the exchange of
 *                         round r−1's pseudo-gradients can overlap with round r's inner steps
 *                         instead of stalling compute (the swarm's overlap mode). Round r's workers
 *                         start from base_r = θ_{max(r−1,0)}, the shared weights at the START of the
 *                         previous round (before its outer update; rounds 0 and 1 both start from
 *                         θ_0), form Δ_w = base_r − θ_local (same codec and error feedback), and
 *                         the aggregate is applied by the same outer optimizer to the CURRENT
 *                         shared weights: θ_{r+1} = Outer(θ_r, mean Δ). Inner AdamW state, bytes
 *                         (the same messages) and validation (on the shared θ) are unchanged, so a
 *                         one-round run equals the non-delayed arm and the difference is the loss
 *                         cost of the staleness alone.
 *
 * Exact bytes, per worker (P = parameter count, S = steps, M = workers):
 *   dp:      ring all-reduce of P fp32 per step: each worker sends 2·(M−1)/M·4P bytes and
 *            receives the same (reduce-scatter + all-gather, no framing). Total over the run:
 *            sent = S·8·(M−1)·P/M, received = the same.
 *   diloco:  per round each worker sends its one encoded message (its exact byte length, the
 *            codec framing included; none when M = 1) and receives the other M−1 workers' messages (an
 *            all-gather of compressed messages: broadcast, not re-forwarded). sent = Σ_rounds
 *            len(own message), received = Σ_rounds Σ_{j≠w} len(message_j).
 * The "total" column is sent + received; the ratio columns are DP bytes / arm bytes.
 *
 * Schedule: the inner learning rate follows warmup + cosine over the S inner steps of the
 * whole run, identical for every arm (DP step s and DiLoCo inner step s get the same lr), with
 * the same peak lr for DP and the inner AdamW (the DiLoCo paper's choice: the inner optimizer
 * uses the baseline's AdamW hyperparameters). If S is not a multiple of H the last round is
 * shorter, so every arm consumes exactly S·M·B·T tokens. Options: innerLr gives the DiLoCo inner
 * AdamW its own peak lr (same warmup + cosine shape); warmStartSteps = N makes the first N steps
 * of every DiLoCo arm dp steps (dense all-reduce, N·dpBytesPerStep per worker each way, counted
 * in the arm's bytes), after which the rounds start at step N with the workers' AdamW state
 * copied from the warm start. One dense step costs about 200× one default sparse message, so
 * with the sparse codec even N = 1 of 488 steps caps the dp/arm byte ratio below ~500×.
 *
 * Validation: on the SHARED weights at the same steps for every arm (evenly spaced, plus 0 and
 * S). For DiLoCo the shared weights only move at round ends, so a checkpoint inside a round
 * sees the weights of the last completed round (what a joining peer would download), and the
 * bytes counted so far are those of completed rounds. The final evaluation uses the whole
 * validation split (or finalEvalBatches).
 *
 * Memory: one GPT object is shared; each worker's state is its AdamW (m, v, step), its batch
 * sampler and (sparse) its error-feedback residual. Workers run one after another inside a
 * round, which is exact because they are independent until the all-gather.
 *
 * Fine-tuning (`base`, `lora`): every arm starts from a base checkpoint; with `lora` the arms
 * train, exchange and validate the LoRA adapter alone (θ = the adapter, model/lora-model.ts), so
 * P above is the adapter's size (bench/finetune-quality.ts).
 *
 * Steps: every optimizer step (dp's through Trainer, a DiLoCo worker's inner steps directly) is
 * the one inner step of src/train/inner-step.ts; a non-finite loss stops the simulation with
 * NonFiniteLossError.
 */
import type { Kernels } from '../kernels/api.js';
import { GPT } from '../model/gpt.js';
import { LoraGPT, adamwFor, type ThetaModel } from '../model/lora-model.js';
import type { LoraConfig } from '../model/lora.js';
import type { ModelConfig } from '../model/config.js';
import { weightsHash } from '../model/checkpoint.js';
import { BatchSampler, evalBatches, type Batch, type TokenArray } from '../data/batches.js';
import { DEFAULT_ADAMW, type AdamW, type AdamWSettings } from '../train/adamw.js';
import type { Schedule } from '../train/schedule.js';
import { Trainer } from '../train/trainer.js';
import { innerStep } from '../train/inner-step.js';
import { OuterNesterov, DEFAULT_OUTER, type OuterSettings } from './outer.js';
import {
  ErrorFeedback,
  getCodec,
  DEFAULT_SPARSE,
  type Codec,
  type CodecId,
  type SparseParams,
} from './compress/index.js';
import { InvalidInputError, NonFiniteLossError } from '../util/errors.js';

export type ArmKind = 'dp' | 'diloco';

export interface ArmSpec {
  name: string;
  kind: ArmKind;
  /** Inner steps per round (DiLoCo only; 1 for dp). */
  H: number;
  codec: CodecId | null;
  /** Error-feedback decay β, or null for no error feedback. */
  efBeta: number | null;
  outer: OuterSettings | null;
  /** One-step-delayed outer update (the '-delayed' suffix; DiLoCo arms only). */
  delayed: boolean;
  /**
   * '-shift<k>' (the swarm's default overlap): from round 1 on, each worker's first k inner
   * steps run from θ_{r-1} + its own progress, as while round r-1 is still being exchanged;
   * then the job is moved onto θ_r (local += θ_r − θ_{r-1}) and Δ = θ_r − local. 0 = none.
   */
  shift?: number;
  /**
   * '-eager<k>': as -shift<k>, but the early steps begin on each worker's own guess of θ_r:
   * the outer step applied to θ_{r-1} with its own (decoded) update in place of the aggregate.
   */
  eager?: boolean;
}

export const DEFAULT_ARMS: readonly string[] = Object.freeze([
  'dp',
  'diloco-10',
  'diloco-30',
  'diloco-100',
  'diloco-30-fp16',
  'diloco-30-int8',
  'diloco-30-sparse',
  'sparseloco-30',
]);

export interface ArmDefaults {
  outer: OuterSettings;
  /** Error-feedback β for 'diloco-H-sparse' (ErrorFeedback default: 1, no decay). */
  sparseEfBeta: number;
  /** SparseLoCo's error-feedback β and outer step. */
  sparselocoEfBeta: number;
  sparselocoOuter: OuterSettings;
}

export const DEFAULT_ARM_SETTINGS: ArmDefaults = {
  outer: DEFAULT_OUTER,
  sparseEfBeta: 1,
  sparselocoEfBeta: 0.95,
  sparselocoOuter: { lr: 1, momentum: 0 },
};

/** 'dp' | 'diloco-<H>' | 'diloco-<H>-<fp32|fp16|int8|sparse>' | 'sparseloco-<H>', the DiLoCo ones optionally + '-delayed'. */
export function parseArm(name: string, d: ArmDefaults = DEFAULT_ARM_SETTINGS): ArmSpec {
  const s = name.trim();
  if (s === 'dp') return { name: s, kind: 'dp', H: 1, codec: null, efBeta: null, outer: null, delayed: false };
  const sh = /-(shift|eager)(\d+)$/.exec(s);
  if (sh) {
    const base = parseArm(s.slice(0, -sh[0].length), d);
    if (base.kind === 'dp' || base.delayed)
      throw new InvalidInputError(`arm "${s}": -${sh[1]}<k> applies to diloco/sparseloco arms without -delayed`);
    const k = Number(sh[2]);
    if (!(k >= 1 && k <= base.H)) throw new InvalidInputError(`arm "${s}": ${sh[1]} k must be in 1..H (${base.H})`);
    return { ...base, name: s, shift: k, ...(sh[1] === 'eager' ? { eager: true } : {}) };
  }
  let m = /^diloco-(\d+)(?:-(fp32|fp16|int8|sparse))?(-delayed)?$/.exec(s);
  if (m) {
    const H = Number(m[1]);
    if (!(H >= 1 && H <= 1_000_000)) throw new InvalidInputError(`arm ${s}: H must be in [1, 1000000]`);
    const codec = (m[2] ?? 'fp32') as CodecId;
    return {
      name: s,
      kind: 'diloco',
      H,
      codec,
      efBeta: codec === 'sparse' ? d.sparseEfBeta : null,
      outer: d.outer,
      delayed: m[3] !== undefined,
    };
  }
  m = /^sparseloco-(\d+)(-delayed)?$/.exec(s);
  if (m) {
    const H = Number(m[1]);
    if (!(H >= 1 && H <= 1_000_000)) throw new InvalidInputError(`arm ${s}: H must be in [1, 1000000]`);
    return {
      name: s,
      kind: 'diloco',
      H,
      codec: 'sparse',
      efBeta: d.sparselocoEfBeta,
      outer: d.sparselocoOuter,
      delayed: m[2] !== undefined,
    };
  }
  throw new InvalidInputError(
    `unknown arm "${s}": expected dp, diloco-<H>, diloco-<H>-<fp32|fp16|int8|sparse> or sparseloco-<H>, the last three optionally with -delayed`,
  );
}

export interface SimOptions {
  model: ModelConfig;
  workers: number;
  /** Sequences per worker per step (the global batch is workers x batch). */
  batch: number;
  /** Token budget per arm (all workers together); rounded down to whole steps. */
  tokens: number;
  arms: ArmSpec[];
  lr: number;
  minLrFrac: number;
  warmup: number;
  adamw: AdamWSettings;
  sparse: SparseParams;
  /** Validation checkpoints besides step 0 (evenly spaced over the run, the last at S). */
  evalPoints: number;
  /** Batches per periodic validation. */
  evalBatches: number;
  /** Batches for the final validation (Infinity = the whole split). */
  finalEvalBatches: number;
  seed: number;
  /** Peak lr of the DiLoCo inner AdamW (null = lr, the DiLoCo paper's choice). Same warmup + cosine shape. */
  innerLr?: number | null;
  /**
   * Data-parallel warm start: the first N global steps of every DiLoCo arm are dp steps (dense
   * fp32 ring all-reduce, bytes counted exactly as for dp: N·dpBytesPerStep per worker each way),
   * then the rounds of H inner steps start from step N with the workers' AdamW state copied from
   * the warm-start optimizer. 0 = none (default).
   */
  warmStartSteps?: number;
  /**
   * Fine-tuning: every arm starts from these GPT-2 weights (the base checkpoint) instead of
   * init(seed). With `lora` they are the frozen base and θ is the adapter.
   */
  base?: Float32Array;
  /**
   * LoRA fine-tuning of `base` (model/lora-model.ts): θ — what every arm trains, exchanges,
   * encodes, averages and validates — is the adapter alone (PEFT init from `seed`), the base frozen.
   */
  lora?: LoraConfig;
}

export const DEFAULT_SIM: Omit<SimOptions, 'model' | 'arms' | 'tokens'> = {
  workers: 4,
  batch: 8,
  lr: 2e-3,
  minLrFrac: 0.1,
  warmup: 50,
  adamw: DEFAULT_ADAMW,
  sparse: { ...DEFAULT_SPARSE },
  evalPoints: 10,
  evalBatches: 16,
  finalEvalBatches: Infinity,
  seed: 1,
  innerLr: null,
  warmStartSteps: 0,
};

export interface CurvePoint {
  step: number;
  tokens: number;
  valLoss: number;
  /** Mean bytes per worker so far (completed communication only). */
  bytesSent: number;
  bytesReceived: number;
  bytesTotal: number;
}

export interface ArmResult {
  name: string;
  kind: ArmKind;
  H: number | null;
  codec: CodecId | null;
  efBeta: number | null;
  outer: OuterSettings | null;
  /** One-step-delayed outer update (false for dp). */
  delayed: boolean;
  /** Steps per round begun before the shift onto θ_r (0 = no overlap). */
  shift: number;
  /** The early steps begin on the worker's own guess of θ_r. */
  eager: boolean;
  steps: number;
  rounds: number;
  /** Tokens consumed, all workers together. */
  tokens: number;
  /** Exact wire bytes of one worker's message per round (DiLoCo), or null. */
  messageBytes: number | null;
  /** Mean per worker over the run. */
  bytesSent: number;
  bytesReceived: number;
  bytesTotal: number;
  /** Exact totals over all workers (integers). */
  allWorkersSent: number;
  allWorkersReceived: number;
  finalValLoss: number;
  /** (arm − dp) / dp · 100, null without a dp arm. */
  gapPct: number | null;
  /** DP bytes / arm bytes (sent+received and sent only); null without dp or when the arm sent 0 bytes. */
  ratioTotal: number | null;
  ratioSent: number | null;
  curve: CurvePoint[];
  weightsHash: string;
  seconds: number;
}

export interface SimResult {
  params: number;
  workers: number;
  batch: number;
  ctx: number;
  stepsPerArm: number;
  tokensPerStep: number;
  tokensPerArm: number;
  evalSteps: number[];
  model: ModelConfig;
  lr: number;
  minLrFrac: number;
  warmup: number;
  innerLr: number;
  warmStartSteps: number;
  sparse: SparseParams;
  seed: number;
  formulas: { dp: string; diloco: string; ratio: string };
  arms: ArmResult[];
}

export interface SimData {
  train: TokenArray;
  val: TokenArray;
}

export interface SimHooks {
  /** Called after every global step (all workers) of every arm. */
  onStep?(p: { arm: string; armIndex: number; step: number; steps: number; loss: number }): void;
  onEval?(p: { arm: string; step: number; tokens: number; valLoss: number; bytesTotal: number }): void;
  /**
   * Called after each worker's inner step of a DiLoCo arm (a real-sized model's steps take
   * seconds each: the caller shows them with their rate). `step` counts from 1.
   */
  onInnerStep?(p: { arm: string; armIndex: number; worker: number; step: number; steps: number; loss: number }): void;
  onArmDone?(r: ArmResult): void;
  /** The arm's final shared weights (a view, valid during the call). */
  onWeights?(arm: string, params: Float32Array): void;
  signal?: AbortSignal;
}

/** The DP ring all-reduce bytes each worker sends (and receives) per step, on average. */
export function dpBytesPerStep(P: number, M: number): number {
  return (2 * (M - 1) * 4 * P) / M;
}

export const FORMULAS = {
  dp: 'dp: ring all-reduce of P fp32 per step; per worker sent = received = 2·(M−1)/M·4P bytes per step',
  diloco:
    'diloco: per round each worker sends its own encoded message (exact length incl. framing) and receives the other M−1 (all-gather); sent = Σ len(own), received = Σ Σ_{j≠w} len(msg_j)',
  ratio: 'ratio = dp bytes per worker / arm bytes per worker (total = sent + received)',
};

/** Evenly spaced validation steps: 0, ..., S (deduplicated, ascending). */
export function evalSchedule(S: number, points: number): number[] {
  const out = new Set<number>([0, S]);
  for (let i = 1; i < points; i++) out.add(Math.round((i * S) / points));
  return [...out].sort((a, b) => a - b);
}

/** Worker w's batch-sampler seed (the same in every arm, so arms see the same batches). */
export function samplerSeed(seed: number, worker: number): bigint {
  return (BigInt(seed) << 20n) + BigInt(worker) + 1n;
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

function checkOptions(o: SimOptions, data: SimData): void {
  if (!Number.isInteger(o.workers) || o.workers < 1)
    throw new InvalidInputError(`workers must be a positive integer, got ${o.workers}`);
  if (!Number.isInteger(o.batch) || o.batch < 1)
    throw new InvalidInputError(`batch must be a positive integer, got ${o.batch}`);
  if (o.arms.length === 0) throw new InvalidInputError('no arms to simulate');
  const names = new Set<string>();
  for (const a of o.arms) {
    if (names.has(a.name)) throw new InvalidInputError(`arm ${a.name} is listed twice`);
    names.add(a.name);
  }
  const T = o.model.ctx;
  if (data.train.length < T + 1)
    throw new InvalidInputError(`training split has ${data.train.length} tokens, fewer than one window of ${T + 1}`);
  const perStep = o.workers * o.batch * T;
  const ws = o.warmStartSteps ?? 0;
  if (!Number.isInteger(ws) || ws < 0)
    throw new InvalidInputError(`warmStartSteps must be a non-negative integer, got ${ws}`);
  if (o.innerLr != null && !(o.innerLr > 0)) throw new InvalidInputError(`innerLr must be positive, got ${o.innerLr}`);
  if (Math.floor(o.tokens / perStep) < 1)
    throw new InvalidInputError(
      `token budget ${o.tokens} is less than one global step (${o.workers} workers × ${o.batch} × ${T} = ${perStep} tokens)`,
    );
}

/**
 * Runs every arm on the same data, initial weights, per-worker batch streams and schedule,
 * one after another, and returns the comparison. Deterministic given deterministic kernels.
 */
export async function runSim(data: SimData, kernels: Kernels, o: SimOptions, hooks: SimHooks = {}): Promise<SimResult> {
  checkOptions(o, data);
  const M = o.workers,
    B = o.batch,
    T = o.model.ctx;
  const tokensPerStep = M * B * T;
  const S = Math.floor(o.tokens / tokensPerStep);
  const schedule: Schedule = {
    kind: 'cosine',
    maxLr: o.lr,
    minLrFrac: o.minLrFrac,
    warmupSteps: Math.min(o.warmup, S),
    totalSteps: S,
    decayFrac: 0.2,
  };
  const innerLr = o.innerLr ?? o.lr;
  const innerSchedule: Schedule = { ...schedule, maxLr: innerLr };
  const W = Math.min(o.warmStartSteps ?? 0, S);
  if (o.lora && !o.base) throw new InvalidInputError('LoRA fine-tuning needs a base model');
  const gpt: ThetaModel = o.lora ? new LoraGPT(o.model, kernels, o.base!, o.lora) : new GPT(o.model, kernels);
  const P = gpt.numParams;
  const evalSteps = evalSchedule(S, o.evalPoints);
  const periodic = [...evalBatches(data.val, B, T, o.evalBatches)];
  const finalBatches = [...evalBatches(data.val, B, T, o.finalEvalBatches)];
  const evaluate = (params: Float32Array, final: boolean): number => {
    gpt.params.set(params);
    let sum = 0;
    const bs = final ? finalBatches : periodic;
    for (const b of bs) sum += gpt.loss(b.inputs, b.targets, B, T);
    return sum / bs.length;
  };
  const init = new Float32Array(P);
  if (gpt instanceof LoraGPT) gpt.init(o.seed);
  else if (o.base) gpt.params.set(o.base);
  else (gpt as GPT).init(o.seed);
  init.set(gpt.params);

  const results: ArmResult[] = [];
  for (let ai = 0; ai < o.arms.length; ai++) {
    const arm = o.arms[ai];
    const t0 = performance.now();
    const samplers = Array.from({ length: M }, (_, w) => new BatchSampler(data.train, B, T, samplerSeed(o.seed, w)));
    // The last arm starts from init itself (no arm needs it after): one P-float copy fewer.
    const theta = ai === o.arms.length - 1 ? init : init.slice();
    const curve: CurvePoint[] = [];
    let allSent = 0,
      allRecv = 0;
    const record = (step: number, valLoss: number) => {
      const p: CurvePoint = {
        step,
        tokens: step * tokensPerStep,
        valLoss,
        bytesSent: allSent / M,
        bytesReceived: allRecv / M,
        bytesTotal: (allSent + allRecv) / M,
      };
      curve.push(p);
      hooks.onEval?.({ arm: arm.name, step, tokens: p.tokens, valLoss, bytesTotal: p.bytesTotal });
    };
    let nextEval = 0; // index into evalSteps
    let rounds = 0;
    let messageBytes: number | null = null;

    const perStepAllWorkers = 2 * (M - 1) * 4 * P; // Σ_w sent per step (= 2(M−1)/M·4P each)
    /** Data-parallel steps [0, n) on theta (dp arm: n = S; DiLoCo warm start: n = W). Returns the AdamW. */
    const dpSteps = async (n: number): Promise<AdamW> => {
      const opt = adamwFor(gpt, o.adamw, kernels);
      const trainer = new Trainer(gpt, opt, schedule, B, T);
      gpt.params.set(theta);
      const batches: Batch[] = Array.from({ length: M }, () => ({
        inputs: new Int32Array(B * T),
        targets: new Int32Array(B * T),
      }));
      for (let step = 0; step <= n; step++) {
        if (nextEval < evalSteps.length && evalSteps[nextEval] === step && (step < n || n === S)) {
          theta.set(gpt.params);
          record(step, evaluate(theta, step === S));
          gpt.params.set(theta);
          nextEval++;
        }
        if (step === n) break;
        if (hooks.signal?.aborted) throw new InvalidInputError('simulation interrupted');
        for (let w = 0; w < M; w++) samplers[w].next(batches[w]);
        const r = trainer.step(batches);
        allSent += perStepAllWorkers;
        allRecv += perStepAllWorkers;
        hooks.onStep?.({ arm: arm.name, armIndex: ai, step: step + 1, steps: S, loss: r.loss });
        await tick();
      }
      theta.set(gpt.params);
      return opt;
    };

    if (arm.kind === 'dp') {
      await dpSteps(S);
      rounds = S;
    } else {
      const codec: Codec = getCodec(arm.codec ?? 'fp32', o.sparse);
      const outer = new OuterNesterov(P, arm.outer ?? DEFAULT_OUTER);
      const opts = Array.from({ length: M }, () => adamwFor(gpt, o.adamw, kernels));
      if (W > 0) {
        const warm = await dpSteps(W);
        for (const opt of opts) {
          opt.m.set(warm.m);
          opt.v.set(warm.v);
          opt.step = warm.step;
        }
        if (W === S && nextEval < evalSteps.length && evalSteps[nextEval] === S) {
          record(S, evaluate(theta, true));
          nextEval++;
        }
      }
      const efs = arm.efBeta === null ? null : Array.from({ length: M }, () => new ErrorFeedback(P, arm.efBeta!));
      const batch: Batch = { inputs: new Int32Array(B * T), targets: new Int32Array(B * T) };
      // Δ is formed in the model's gradient buffer: every inner step zeroes it before use, and
      // nothing reads it between a worker's last step and its encode (one P-float buffer fewer:
      // 0.5 GB at GPT-2 small).
      const delta = gpt.grads.length === P ? gpt.grads : new Float32Array(P);
      // The round's mean Δ, summed worker by worker as each update is made (aggregate()'s order and
      // rounding, with equal weights), so the M decoded updates are never held together.
      const mean = new Float32Array(P);
      const wMean = Math.fround(1 / M);
      // Delayed arm: prev holds θ_{r−1} (the shared weights before the last outer update) once a
      // round has completed; round r's workers start from base = θ_{max(r−1,0)}.
      const shiftK = arm.shift ?? 0;
      const prev = arm.delayed || shiftK > 0 ? new Float32Array(P) : null;
      const guesses = shiftK > 0 && arm.eager ? Array.from({ length: M }, () => new Float32Array(P)) : null;
      const lossSums = new Float64Array(arm.H);
      let start = W; // global inner step at which this round starts (after the warm start)
      while (start < S) {
        const end = Math.min(S, start + arm.H);
        // Checkpoints in [start, end) see the shared weights of the last completed round.
        let cached: number | null = null;
        while (nextEval < evalSteps.length && evalSteps[nextEval] < end) {
          const s = evalSteps[nextEval];
          cached ??= evaluate(theta, s === S);
          record(s, cached);
          nextEval++;
        }
        mean.fill(0);
        const lengths: number[] = [];
        lossSums.fill(0);
        const base = arm.delayed && rounds > 0 ? prev! : theta;
        // Shift: the first k steps of round r ≥ 1 begin on θ_{r-1}, before θ_r is known.
        const k = shiftK > 0 && rounds > 0 ? Math.min(shiftK, end - start) : 0;
        const thisRound: Float32Array[] = [];
        for (let w = 0; w < M; w++) {
          if (hooks.signal?.aborted) throw new InvalidInputError('simulation interrupted');
          const early = k > 0 ? (guesses ? guesses[w] : prev!) : base;
          gpt.params.set(early);
          const opt = opts[w];
          const shiftOnto = () => {
            const g = gpt.params;
            for (let i = 0; i < P; i++) g[i] += theta[i] - early[i];
          };
          for (let s = start; s < end; s++) {
            if (k > 0 && s === start + k) shiftOnto();
            samplers[w].next(batch);
            let loss: number;
            try {
              ({ loss } = innerStep(gpt, opt, { batches: [batch], B, T, schedule: innerSchedule, step: s }));
            } catch (err) {
              if (!(err instanceof NonFiniteLossError)) throw err;
              const msg = `arm ${arm.name}: loss is ${err.loss} at worker ${w} step ${s}`;
              throw new NonFiniteLossError(err.loss, s, msg, { cause: err });
            }
            lossSums[s - start] += loss / M;
            hooks.onInnerStep?.({ arm: arm.name, armIndex: ai, worker: w, step: s + 1, steps: S, loss });
          }
          if (k > 0 && k === end - start) shiftOnto();
          const local = gpt.params;
          for (let i = 0; i < P; i++) delta[i] = base[i] - local[i];
          const enc = codec.encode(delta, efs ? efs[w] : undefined, true); // delta is rewritten next worker
          lengths.push(enc.bytes.length);
          const dec = enc.decoded;
          for (let i = 0; i < P; i++) mean[i] = Math.fround(mean[i] + Math.fround(wMean * dec[i]));
          if (guesses) thisRound.push(dec); // only the eager arm's guesses need each update
          await tick();
        }
        // All-gather: each worker sends its own message and receives the other M−1.
        const totalLen = lengths.reduce((a, b) => a + b, 0);
        // (A lone worker has nobody to send to: M = 1 moves no bytes.)
        for (let w = 0; w < M; w++) {
          if (M > 1) allSent += lengths[w];
          allRecv += totalLen - lengths[w];
        }
        messageBytes = lengths[0];
        if (prev !== null) prev.set(theta); // θ_r: the base of round r+1 (delayed), or where its early steps begin (shift)
        // Eager: each worker's guess of θ_{r+1}, from θ_r and its own update (momentum as now).
        if (guesses) for (let w = 0; w < M; w++) outer.preview(theta, thisRound[w], guesses[w]);
        outer.step(theta, mean);
        rounds++;
        for (let s = start; s < end; s++)
          hooks.onStep?.({ arm: arm.name, armIndex: ai, step: s + 1, steps: S, loss: lossSums[s - start] });
        start = end;
        if (nextEval < evalSteps.length && evalSteps[nextEval] === end) {
          record(end, evaluate(theta, end === S));
          nextEval++;
        }
      }
    }
    const last = curve[curve.length - 1];
    const res: ArmResult = {
      name: arm.name,
      kind: arm.kind,
      H: arm.kind === 'dp' ? null : arm.H,
      codec: arm.codec,
      efBeta: arm.efBeta,
      outer: arm.outer,
      delayed: arm.delayed,
      shift: arm.shift ?? 0,
      eager: arm.eager === true,
      steps: S,
      rounds,
      tokens: S * tokensPerStep,
      messageBytes,
      bytesSent: allSent / M,
      bytesReceived: allRecv / M,
      bytesTotal: (allSent + allRecv) / M,
      allWorkersSent: allSent,
      allWorkersReceived: allRecv,
      finalValLoss: last.valLoss,
      gapPct: null,
      ratioTotal: null,
      ratioSent: null,
      curve,
      weightsHash: weightsHash(theta),
      seconds: (performance.now() - t0) / 1000,
    };
    results.push(res);
    hooks.onWeights?.(arm.name, theta);
    hooks.onArmDone?.(res);
  }
  const dp = results.find((r) => r.kind === 'dp');
  if (dp) {
    for (const r of results) {
      r.gapPct = ((r.finalValLoss - dp.finalValLoss) / dp.finalValLoss) * 100;
      r.ratioTotal = r.bytesTotal > 0 ? dp.bytesTotal / r.bytesTotal : null;
      r.ratioSent = r.bytesSent > 0 ? dp.bytesSent / r.bytesSent : null;
    }
  }
  return {
    params: P,
    workers: M,
    batch: B,
    ctx: T,
    stepsPerArm: S,
    tokensPerStep,
    tokensPerArm: S * tokensPerStep,
    evalSteps,
    model: o.model,
    lr: o.lr,
    minLrFrac: o.minLrFrac,
    warmup: schedule.warmupSteps,
    innerLr,
    warmStartSteps: W,
    sparse: o.sparse,
    seed: o.seed,
    formulas: FORMULAS,
    arms: results,
  };
}
