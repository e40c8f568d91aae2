/**
 * What evaluation and sampling need from a decoder-only language model, whichever family it is:
 * `GPT` (gpt.ts) and `Llama` (llama.ts) both provide it. Logits and loss are computed without a
 * KV cache: each call runs the whole window.
 */
import type { Kernels } from '../kernels/api.js';
import { InvalidInputError } from '../util/errors.js';

export interface CausalLM {
  readonly config: { readonly ctx: number; readonly vocabSize: number };
  /** Logits [B*T*V] for `tokens` (a copy, safe to keep). */
  logits(tokens: Int32Array, B: number, T: number): Float32Array;
  /** Mean cross-entropy (nats/token) of predicting `targets` (−1 = ignore), no gradients. */
  loss(tokens: Int32Array, targets: Int32Array, B: number, T: number): number;
}

/**
 * Checks one batch of input ids against a model's vocabulary and context (GPT and Llama alike):
 * a bad shape or an id outside [0, V) is refused before any kernel reads it.
 */
export function checkTokens(config: CausalLM['config'], tokens: Int32Array, B: number, T: number): void {
  const { vocabSize: V, ctx } = config;
  if (!Number.isInteger(B) || !Number.isInteger(T) || B < 1 || T < 1)
    throw new InvalidInputError(`bad batch shape B=${B} T=${T}`);
  if (T > ctx) throw new InvalidInputError(`sequence length ${T} exceeds the model context ${ctx}`);
  if (tokens.length !== B * T) throw new InvalidInputError(`expected ${B * T} tokens, got ${tokens.length}`);
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    if (t < 0 || t >= V)
      throw new InvalidInputError(`token id ${t} at position ${i} is outside the vocabulary [0, ${V})`);
  }
}

/** Checks N targets (−1 = ignored, else in [0, V)) and returns how many count. */
export function countTargets(targets: Int32Array, N: number, V: number): number {
  if (targets.length !== N) throw new InvalidInputError(`expected ${N} targets, got ${targets.length}`);
  let valid = 0;
  for (let i = 0; i < N; i++) {
    const t = targets[i];
    if (t >= V || t < -1) throw new InvalidInputError(`target id ${t} at position ${i} is outside the vocabulary`);
    if (t >= 0) valid++;
  }
  return valid;
}

/**
 * Mean cross-entropy over the `valid` counted targets from logits [N, V]; with `withGrad` the
 * logits buffer is overwritten by dlogits, scaled by gradScale / valid (the backward's input).
 */
export function meanCrossEntropy(
  k: Pick<Kernels, 'crossEntropyForwardBackward'>,
  a: { losses: Float32Array; logits: Float32Array },
  targets: Int32Array,
  N: number,
  V: number,
  valid: number,
  withGrad: boolean,
  gradScale: number,
): number {
  const scale = valid > 0 ? gradScale / valid : 0;
  k.crossEntropyForwardBackward(a.losses, withGrad ? a.logits : null, a.logits, targets, N, V, scale);
  let sum = 0;
  for (let i = 0; i < N; i++) sum += a.losses[i];
  return valid > 0 ? sum / valid : 0;
}
