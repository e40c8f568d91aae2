/**
 * Loading a checkpoint directory and its tokenizer for the commands that use a trained model,
 * optionally with a PEFT LoRA adapter (`train --init ... --lora` writes one) attached.
 */
import { existsSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { loadCheckpoint, checkTokenizerMatches } from '../model/checkpoint.js';
import { GPT } from '../model/gpt.js';
import { Tokenizer } from '../data/index.js';
import type { Kernels } from '../kernels/api.js';
import { InvalidInputError } from '../util/errors.js';
import { loadPeft } from '../model/peft.js';

export interface LoadedModel {
  gpt: GPT;
  tokenizer: Tokenizer;
  tokenizerPath: string;
  weightsHash: string;
  meta: Record<string, unknown>;
}

/**
 * `path` is a checkpoint directory (or a run directory holding `checkpoint/`). The tokenizer is
 * the checkpoint's own tokenizer.json unless `tokenizerPath` is given; its vocabulary must match.
 */
export async function loadModel(
  path: string,
  kernels: Kernels,
  tokenizerPath?: string,
  adapterDir?: string,
): Promise<LoadedModel> {
  let dir = path;
  if (!existsSync(join(dir, 'config.json')) && existsSync(join(dir, 'checkpoint', 'config.json')))
    dir = join(dir, 'checkpoint');
  if (!existsSync(dir)) throw new InvalidInputError(`checkpoint ${path} does not exist`);
  const ck = await loadCheckpoint(dir, { loadOptimizer: false });
  const tokPath = tokenizerPath ?? [join(dir, 'tokenizer.json'), join(dirname(dir), 'tokenizer.json')].find(existsSync);
  if (!tokPath) throw new InvalidInputError(`no tokenizer.json next to checkpoint ${dir}; pass --tokenizer FILE`);
  const tokenizer = Tokenizer.load(tokPath, { expectVocabSize: ck.config.vocabSize });
  checkTokenizerMatches(ck.config, tokenizer.vocabSize, tokPath);
  const gpt = new GPT(ck.config, kernels);
  gpt.params.set(ck.params);
  if (adapterDir !== undefined) gpt.lora = await loadPeft(adapterDir, { arch: 'gpt2', config: ck.config });
  return { gpt, tokenizer, tokenizerPath: tokPath, weightsHash: ck.weightsHash, meta: ck.meta };
}

/**
 * Mean next-token loss over a token stream: non-overlapping windows of ctx predictions,
 * batched; every token after the first is predicted exactly once.
 */
export function streamLoss(gpt: GPT, ids: ArrayLike<number>, maxBatch = 16): { loss: number; tokens: number } {
  const T = gpt.config.ctx;
  const n = ids.length;
  if (n < 2) throw new InvalidInputError(`need at least 2 tokens to evaluate, got ${n}`);
  let sum = 0,
    count = 0;
  const starts: number[] = [];
  for (let s = 0; s + 1 < n; s += T) starts.push(s);
  const full = starts.filter((s) => s + T + 1 <= n);
  const tail = starts.filter((s) => s + T + 1 > n);
  for (let i = 0; i < full.length; i += maxBatch) {
    const group = full.slice(i, i + maxBatch);
    const B = group.length;
    const x = new Int32Array(B * T),
      y = new Int32Array(B * T);
    group.forEach((s, b) => {
      for (let t = 0; t < T; t++) {
        x[b * T + t] = ids[s + t];
        y[b * T + t] = ids[s + t + 1];
      }
    });
    sum += gpt.loss(x, y, B, T) * B * T;
    count += B * T;
  }
  for (const s of tail) {
    const Tt = n - 1 - s;
    const x = new Int32Array(Tt),
      y = new Int32Array(Tt);
    for (let t = 0; t < Tt; t++) {
      x[t] = ids[s + t];
      y[t] = ids[s + t + 1];
    }
    sum += gpt.loss(x, y, 1, Tt) * Tt;
    count += Tt;
  }
  return { loss: sum / count, tokens: count };
}
