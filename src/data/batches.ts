/**
 * Training and evaluation batches over a token stream, plus unigram baselines.
 *
 * Training: B random windows of T+1 tokens drawn from a seeded PRNG (same seed, same
 * batches, on any machine). Evaluation: contiguous, non-overlapping windows spread evenly
 * over the whole validation stream, always the same ones, full batches only.
 */
import { InvalidInputError } from '../util/errors.js';
import { Rng } from '../util/rng.js';

export type TokenArray = Uint16Array | Int32Array;

export interface Batch {
  /** B*T token ids, row-major [B, T]. */
  inputs: Int32Array;
  /** inputs shifted by one: targets[b, t] is the token after inputs[b, t]. */
  targets: Int32Array;
}

function checkShape(tokens: TokenArray, B: number, T: number): void {
  if (!Number.isInteger(B) || B < 1 || !Number.isInteger(T) || T < 1) {
    throw new InvalidInputError(`batch shape must be positive integers, got B=${B} T=${T}`);
  }
  if (tokens.length < T + 1) {
    throw new InvalidInputError(`token stream has ${tokens.length} tokens, fewer than one window of T+1 = ${T + 1}`);
  }
}

function fillWindow(tokens: TokenArray, start: number, T: number, out: Batch, row: number): void {
  const o = row * T;
  for (let t = 0; t < T; t++) {
    out.inputs[o + t] = tokens[start + t];
    out.targets[o + t] = tokens[start + t + 1];
  }
}

export class BatchSampler {
  readonly rng: Rng;

  constructor(
    readonly tokens: TokenArray,
    readonly B: number,
    readonly T: number,
    seed: number | bigint,
  ) {
    checkShape(tokens, B, T);
    this.rng = new Rng(seed);
  }

  /** The next batch; pass `out` to reuse its arrays (each of length B*T). */
  next(out?: Batch): Batch {
    const { B, T, tokens } = this;
    const batch = out ?? { inputs: new Int32Array(B * T), targets: new Int32Array(B * T) };
    if (batch.inputs.length !== B * T || batch.targets.length !== B * T) {
      throw new InvalidInputError(`batch arrays must have length B*T = ${B * T}`);
    }
    const starts = tokens.length - T; // window [s, s+T] needs s + T <= length - 1
    for (let b = 0; b < B; b++) fillWindow(tokens, this.rng.nextInt(starts), T, batch, b);
    return batch;
  }
}

/** How many full eval batches evalBatches() yields. */
export function evalBatchCount(tokens: TokenArray, B: number, T: number, maxBatches = Infinity): number {
  checkShape(tokens, B, T);
  const windows = Math.floor((tokens.length - 1) / T);
  return Math.min(Math.floor(windows / B), maxBatches);
}

/**
 * Validation batches: the stream cut into non-overlapping windows of T (+1 target) tokens;
 * if more than maxBatches*B exist, that many are taken at even spacing over the stream.
 * Throws at once (not on first iteration) when not even one full batch fits.
 */
export function evalBatches(tokens: TokenArray, B: number, T: number, maxBatches = Infinity): Generator<Batch> {
  if (!(maxBatches >= 1)) throw new InvalidInputError(`maxBatches must be >= 1, got ${maxBatches}`);
  const batches = evalBatchCount(tokens, B, T, Math.floor(maxBatches));
  if (batches === 0) {
    throw new InvalidInputError(
      `validation stream has ${tokens.length} tokens, too few for one batch of ${B} windows of ${T + 1}`,
    );
  }
  return evalWindows(tokens, B, T, batches);
}

function* evalWindows(tokens: TokenArray, B: number, T: number, batches: number): Generator<Batch> {
  const windows = Math.floor((tokens.length - 1) / T);
  const k = batches * B;
  for (let i = 0; i < batches; i++) {
    const batch = { inputs: new Int32Array(B * T), targets: new Int32Array(B * T) };
    for (let b = 0; b < B; b++) {
      const w = Math.floor(((i * B + b) * windows) / k);
      fillWindow(tokens, w * T, T, batch, b);
    }
    yield batch;
  }
}

function counts(tokens: TokenArray, vocabSize: number): Float64Array {
  const c = new Float64Array(vocabSize);
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    if (t < 0 || t >= vocabSize) throw new InvalidInputError(`token id ${t} is out of range [0, ${vocabSize})`);
    c[t]++;
  }
  return c;
}

function maxId(tokens: TokenArray): number {
  let m = 0;
  for (let i = 0; i < tokens.length; i++) if (tokens[i] > m) m = tokens[i];
  return m;
}

/** Entropy (nats/token) of the token frequencies of `tokens`: a loss a unigram model can reach. */
export function unigramEntropy(tokens: TokenArray): number {
  if (tokens.length === 0) return 0;
  const c = counts(tokens, maxId(tokens) + 1);
  let h = 0;
  for (let i = 0; i < c.length; i++) if (c[i] > 0) h -= (c[i] / tokens.length) * Math.log(c[i] / tokens.length);
  return h;
}

/**
 * Cross-entropy (nats/token) on `evalTokens` of the add-one-smoothed unigram model of
 * `trainTokens`: the validation loss of the best "no context" model.
 */
export function unigramCrossEntropy(trainTokens: TokenArray, evalTokens: TokenArray, vocabSize: number): number {
  if (evalTokens.length === 0) return 0;
  const c = counts(trainTokens, vocabSize);
  const denom = trainTokens.length + vocabSize;
  let h = 0;
  for (let i = 0; i < evalTokens.length; i++) {
    const t = evalTokens[i];
    if (t < 0 || t >= vocabSize) throw new InvalidInputError(`token id ${t} is out of range [0, ${vocabSize})`);
    h -= Math.log((c[t] + 1) / denom);
  }
  return h / evalTokens.length;
}
