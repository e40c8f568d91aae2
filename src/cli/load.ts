/**
 * Loading a checkpoint directory and its tokenizer for the commands that use a trained model,
 * optionally with a PEFT LoRA adapter (`train --init ... --lora` writes one) attached.
 * `loadModel`: a GPT-2 checkpoint ("tessera-gpt2") with Tessera's tokenizer. `loadAnyModel`:
 * either family, for eval and generate: GPT-2 as above, or a "tessera-llama" checkpoint (as
 * `tessera import --hf` writes) with its tokenizer.json through @huggingface/tokenizers.
 */
import { existsSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { z } from 'zod';
import { loadCheckpoint, checkTokenizerMatches } from '../model/checkpoint.js';
import { GPT } from '../model/gpt.js';
import { Llama } from '../model/llama.js';
import { checkpointFormat, loadLlamaCheckpoint } from '../model/llama-checkpoint.js';
import type { CausalLM } from '../model/causal-lm.js';
import type { ModelConfig } from '../model/config.js';
import type { LlamaConfig } from '../model/llama-config.js';
import { Tokenizer } from '../data/index.js';
import { loadHfTextTokenizer, tesseraTextTokenizer, type TextTokenizer } from '../data/text-tokenizer.js';
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
/** The checkpoint directory of `path` (itself, or a run directory's `checkpoint/`). */
function checkpointDir(path: string): string {
  let dir = path;
  if (!existsSync(join(dir, 'config.json')) && existsSync(join(dir, 'checkpoint', 'config.json')))
    dir = join(dir, 'checkpoint');
  if (!existsSync(dir)) throw new InvalidInputError(`checkpoint ${path} does not exist`);
  return dir;
}

function tokenizerOf(dir: string, given?: string): string {
  const tokPath = given ?? [join(dir, 'tokenizer.json'), join(dirname(dir), 'tokenizer.json')].find(existsSync);
  if (!tokPath) throw new InvalidInputError(`no tokenizer.json next to checkpoint ${dir}; pass --tokenizer FILE`);
  return tokPath;
}

export async function loadModel(
  path: string,
  kernels: Kernels,
  tokenizerPath?: string,
  adapterDir?: string,
): Promise<LoadedModel> {
  const dir = checkpointDir(path);
  const ck = await loadCheckpoint(dir, { loadOptimizer: false });
  const tokPath = tokenizerOf(dir, tokenizerPath);
  const tokenizer = Tokenizer.load(tokPath, { expectVocabSize: ck.config.vocabSize });
  checkTokenizerMatches(ck.config, tokenizer.vocabSize, tokPath);
  const gpt = new GPT(ck.config, kernels);
  gpt.params.set(ck.params);
  if (adapterDir !== undefined) gpt.lora = await loadPeft(adapterDir, { arch: 'gpt2', config: ck.config });
  return { gpt, tokenizer, tokenizerPath: tokPath, weightsHash: ck.weightsHash, meta: ck.meta };
}

export interface LoadedAnyModel {
  arch: 'gpt2' | 'llama';
  model: CausalLM;
  config: ModelConfig | LlamaConfig;
  /** The model's flat parameters (the model's own buffer). */
  params: Float32Array;
  tokenizer: TextTokenizer;
  tokenizerPath: string;
  weightsHash: string;
  meta: Record<string, unknown>;
}

/** The end-of-text ids `tessera import --hf` kept from config.json (meta.eosTokenIds), if any. */
const MetaEosSchema = z.array(z.number().int().min(0)).min(1).max(16);

/**
 * A GPT-2 or Llama checkpoint (by its config.json's format) with its tokenizer and optional
 * PEFT adapter. GPT-2 uses Tessera's tokenizer (loadModel); Llama a Hugging Face tokenizer.json.
 */
export async function loadAnyModel(
  path: string,
  kernels: Kernels,
  tokenizerPath?: string,
  adapterDir?: string,
): Promise<LoadedAnyModel> {
  const dir = checkpointDir(path);
  if ((await checkpointFormat(dir)) !== 'tessera-llama') {
    const m = await loadModel(dir, kernels, tokenizerPath, adapterDir);
    const { gpt, tokenizer, tokenizerPath: tp, weightsHash, meta } = m;
    return {
      arch: 'gpt2',
      model: gpt,
      config: gpt.config,
      params: gpt.params,
      tokenizer: tesseraTextTokenizer(tokenizer),
      tokenizerPath: tp,
      weightsHash,
      meta,
    };
  }
  const ck = await loadLlamaCheckpoint(dir);
  const tokPath = tokenizerOf(dir, tokenizerPath);
  const eos = MetaEosSchema.safeParse(ck.meta.eosTokenIds);
  const tokenizer = loadHfTextTokenizer(tokPath, {
    vocabSize: ck.config.vocabSize,
    ...(eos.success ? { eosIds: eos.data } : {}),
  });
  const model = new Llama(ck.config, kernels);
  model.params.set(ck.params);
  if (adapterDir !== undefined) model.lora = await loadPeft(adapterDir, { arch: 'llama', config: ck.config });
  return {
    arch: 'llama',
    model,
    config: model.config,
    params: model.params,
    tokenizer,
    tokenizerPath: tokPath,
    weightsHash: ck.weightsHash,
    meta: ck.meta,
  };
}

/**
 * Mean next-token loss over a token stream: non-overlapping windows of ctx predictions,
 * batched; every token after the first is predicted exactly once, except targets equal to
 * `ignoreTarget` (a BOS that starts each document is context, never a prediction).
 */
export function streamLoss(
  model: CausalLM,
  ids: ArrayLike<number>,
  maxBatch = 16,
  ignoreTarget: number | null = null,
): { loss: number; tokens: number } {
  const T = model.config.ctx;
  const n = ids.length;
  if (n < 2) throw new InvalidInputError(`need at least 2 tokens to evaluate, got ${n}`);
  const target = (i: number) => (ids[i] === ignoreTarget ? -1 : ids[i]);
  const valid = (y: Int32Array) => y.reduce((a, t) => a + (t >= 0 ? 1 : 0), 0);
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
        y[b * T + t] = target(s + t + 1);
      }
    });
    const n = valid(y);
    if (n > 0) sum += model.loss(x, y, B, T) * n;
    count += n;
  }
  for (const s of tail) {
    const Tt = n - 1 - s;
    const x = new Int32Array(Tt),
      y = new Int32Array(Tt);
    for (let t = 0; t < Tt; t++) {
      x[t] = ids[s + t];
      y[t] = target(s + t + 1);
    }
    const v = valid(y);
    if (v > 0) sum += model.loss(x, y, 1, Tt) * v;
    count += v;
  }
  if (count === 0) throw new InvalidInputError('nothing to evaluate: every target is a document start');
  return { loss: sum / count, tokens: count };
}
