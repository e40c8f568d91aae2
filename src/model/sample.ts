/**
 * Autoregressive sampling with temperature and top-k, for any CausalLM (GPT-2 or Llama). No KV
 * cache: every new token runs the model on the whole window, which slides when the sequence
 * outgrows the model's ctx. Deterministic for a given seed.
 */
import type { CausalLM } from './causal-lm.js';
import { Rng } from '../util/rng.js';
import { InvalidInputError } from '../util/errors.js';

export interface SampleOptions {
  maxNewTokens: number;
  /** 0 means greedy (argmax). */
  temperature: number;
  /** Keep only the k most likely tokens (0 = all). */
  topK: number;
  seed: number;
  /** Stop early when this token is produced. */
  stopToken?: number;
  /** Stop early when any of these is produced (Llama 3 names several end-of-text ids). */
  stopTokens?: readonly number[];
}

/** Pick the next token from logits[V]. Exported for tests. */
export function pickToken(logits: Float32Array, temperature: number, topK: number, rng: Rng): number {
  const V = logits.length;
  if (temperature === 0) {
    let best = 0;
    for (let v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
    return best;
  }
  let ids = Array.from({ length: V }, (_, i) => i);
  if (topK > 0 && topK < V) ids = ids.sort((a, b) => logits[b] - logits[a] || a - b).slice(0, topK);
  let max = -Infinity;
  for (const i of ids) max = Math.max(max, logits[i]);
  const w = ids.map((i) => Math.exp((logits[i] - max) / temperature));
  const total = w.reduce((a, b) => a + b, 0);
  let r = rng.nextFloat() * total;
  for (let j = 0; j < ids.length; j++) {
    r -= w[j];
    if (r <= 0) return ids[j];
  }
  return ids[ids.length - 1];
}

export function* sample(model: CausalLM, prompt: number[], o: SampleOptions): Generator<number> {
  const { ctx, vocabSize: V } = model.config;
  if (!(o.temperature >= 0)) throw new InvalidInputError('temperature must be >= 0');
  if (!Number.isInteger(o.topK) || o.topK < 0) throw new InvalidInputError('top-k must be a non-negative integer');
  const seq = prompt.length ? prompt.slice() : [o.stopToken ?? o.stopTokens?.[0] ?? 0];
  const rng = new Rng(o.seed);
  for (let i = 0; i < o.maxNewTokens; i++) {
    const window = seq.slice(-ctx);
    const T = window.length;
    const logits = model.logits(Int32Array.from(window), 1, T).subarray((T - 1) * V, T * V);
    const next = pickToken(logits, o.temperature, o.topK, rng);
    seq.push(next);
    yield next;
    if (o.stopToken !== undefined && next === o.stopToken) return;
    if (o.stopTokens?.includes(next)) return;
  }
}
