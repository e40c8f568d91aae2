/**
 * Inference on a running peer: continues a prompt from the agreed weights θ (never a trainer's
 * half-trained copy), with the run's tokenizer. Runs on the event loop thread, so the number of
 * new tokens is capped (callers such as the dashboard cap it lower).
 */
import type { GPT } from '../model/gpt.js';
import { sample } from '../model/sample.js';
import type { Tokenizer } from '../data/tokenizer.js';

/** The most tokens one call generates. */
const MAX_NEW_TOKENS = 256;

export interface GenerateOptions {
  maxTokens?: number;
  temperature?: number;
  topK?: number;
  seed?: number;
}

export function generate(
  g: GPT,
  theta: Float32Array,
  tok: Tokenizer,
  ctx: number,
  prompt: string,
  o: GenerateOptions = {},
): { text: string; tokens: number } {
  g.params.set(theta);
  const ids = [tok.eotId, ...tok.encodeOrdinary(prompt)].slice(-ctx);
  const out: number[] = [];
  const opts = {
    maxNewTokens: Math.min(MAX_NEW_TOKENS, o.maxTokens ?? 48),
    temperature: o.temperature ?? 0.8,
    topK: o.topK ?? 40,
    seed: o.seed ?? 1,
    stopToken: tok.eotId,
  };
  for (const id of sample(g, ids, opts)) {
    if (id === tok.eotId) break;
    out.push(id);
  }
  return { text: tok.decode(out), tokens: out.length };
}
