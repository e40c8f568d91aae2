/**
 * The single-machine fine-tuning driver behind `tessera train --init DIR`: start from a Tessera
 * checkpoint (GPT-2 "tessera-gpt2", or "tessera-llama" as `tessera import --hf` writes), tokenise
 * a JSONL file (text, or prompt/completion with the loss masked to the completion; data/finetune.ts)
 * with the checkpoint's own tokenizer.json through @huggingface/tokenizers, and train either
 *   - a LoRA adapter (model/lora.ts; the base frozen, AdamW over the adapter buffer alone), written
 *     in PEFT's layout to OUT/adapter and, with `merged`, as a merged Hugging Face model to
 *     OUT/merged; or
 *   - every parameter (full fine-tuning), written as a checkpoint of the same format to
 *     OUT/checkpoint with the tokenizer beside it (and, with `merged`, a Hugging Face export to
 *     OUT/hf).
 * Steps go through the one inner step (train/inner-step.ts) via Trainer; validation is every 10th
 * example (all of them when there are fewer than 10). Metrics go to OUT/metrics.jsonl. The CLI
 * only parses flags and renders progress through the hooks.
 */
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import type { Kernels } from '../kernels/api.js';
import { loadCheckpoint, saveCheckpoint } from '../model/checkpoint.js';
import { GPT } from '../model/gpt.js';
import { exportHF } from '../model/hf.js';
import { exportLlamaHF } from '../model/hf-llama.js';
import { openDeviceFinetuner, type DeviceFinetuner, type FinetuneDevice } from './finetune-device.js';
import { readJsonFile } from '../model/json-file.js';
import { checkpointFormat, loadLlamaCheckpoint, saveLlamaCheckpoint } from '../model/llama-checkpoint.js';
import { Llama, llamaSpecs } from '../model/llama.js';
import { LoraAdapter, loraTrainable, type AnyModelConfig, type LoraConfig } from '../model/lora.js';
import { exportMergedHF, exportPeft } from '../model/peft.js';
import { paramSpecs } from '../model/params.js';
import { weightsHash } from '../model/checkpoint.js';
import {
  MaskedBatchSampler,
  maskedEvalBatches,
  packExamples,
  readFinetuneJsonl,
  type FinetuneExample,
} from '../data/finetune.js';
import { InvalidInputError, MismatchError } from '../util/errors.js';
import { AdamW, type AdamWSettings } from './adamw.js';
import { Trainer, type Batch, type StepResult, type TrainableModel } from './trainer.js';

export interface FinetuneConfig {
  /** The checkpoint directory to start from. */
  init: string;
  /** JSONL file of {"text"} or {"prompt", "completion"} lines. */
  data: string;
  /** null: full fine-tuning. */
  lora: LoraConfig | null;
  /** Where full fine-tuning runs (finetune-device.ts); LoRA runs on the CPU. Default 'cpu'. */
  device?: FinetuneDevice;
  /** Also write the merged model (LoRA only). */
  merged: boolean;
  steps: number;
  batch: number;
  /** Sequence length (≤ the model's context). */
  ctx: number | null;
  lr: number;
  minLrFrac: number;
  warmup: number;
  schedule: 'cosine' | 'wsd' | 'constant';
  adamw: AdamWSettings;
  seed: number;
  evalEvery: number;
  evalBatches: number;
  /** End-of-text id; default: the tokenizer's <|endoftext|>, </s>, <|end_of_text|> or <|im_end|>. */
  eos: number | null;
}

export interface FinetuneHooks {
  onReady?(info: {
    arch: 'gpt2' | 'llama';
    params: number;
    trainable: number;
    trainTokens: number;
    valTokens: number;
    examples: number;
    T: number;
    /** 'cpu (… kernels)' or 'webgpu (adapter …)'. */
    device: string;
  }): void;
  /** A line for the user (e.g. what --device auto chose). */
  onLog?(line: string): void;
  onStep?(r: StepResult & { totalSteps: number; tokensPerSec: number; elapsedMs: number }): void;
  onEval?(e: { step: number; valLoss: number }): void;
}

export interface FinetuneSummary {
  arch: 'gpt2' | 'llama';
  mode: 'lora' | 'full';
  /** Where the steps ran. */
  device: 'cpu' | 'webgpu';
  steps: number;
  tokens: number;
  seconds: number;
  initialValLoss: number;
  finalValLoss: number;
  trainableParams: number;
  baseParams: number;
  /** sha256 of the base weights before and after (equal for LoRA). */
  baseHashBefore: string;
  baseHashAfter: string;
  /** sha256 of what was trained (adapter buffer for LoRA, the weights for full). */
  trainedHash: string;
  files: Record<string, string>;
}

const MAX_TOKENIZER_BYTES = 64 * 1024 * 1024;
const EOS_NAMES = ['<|endoftext|>', '</s>', '<|end_of_text|>', '<|im_end|>'];

interface Loaded {
  any: AnyModelConfig;
  model: GPT | Llama;
  tokenizerBytes: Uint8Array;
  tokenizerJson: object;
}

async function loadInit(dir: string, kernels: Kernels): Promise<Loaded> {
  const format = await checkpointFormat(dir);
  const tokPath = join(dir, 'tokenizer.json');
  const tokenizerJson = (await readJsonFile(tokPath, MAX_TOKENIZER_BYTES)) as object;
  if (tokenizerJson === null || typeof tokenizerJson !== 'object' || Array.isArray(tokenizerJson))
    throw new InvalidInputError(`${tokPath} is not a tokenizer.json object`);
  const tokenizerBytes = await readFile(tokPath);
  if (format === 'tessera-llama') {
    const ck = await loadLlamaCheckpoint(dir);
    const model = new Llama(ck.config, kernels);
    model.params.set(ck.params);
    return { any: { arch: 'llama', config: ck.config }, model, tokenizerBytes, tokenizerJson };
  }
  const ck = await loadCheckpoint(dir, { loadOptimizer: false });
  const model = new GPT(ck.config, kernels);
  model.params.set(ck.params);
  return { any: { arch: 'gpt2', config: ck.config }, model, tokenizerBytes, tokenizerJson };
}

function makeEncoder(
  json: object,
  vocabSize: number,
  eos: number | null,
): { encode: (s: string) => number[]; eos: number } {
  let tok: HFTokenizer;
  try {
    tok = new HFTokenizer(json, {});
  } catch (e) {
    throw new InvalidInputError(`the checkpoint's tokenizer.json cannot be loaded: ${(e as Error).message}`, {
      cause: e,
    });
  }
  let id = eos;
  if (id === null) {
    for (const n of EOS_NAMES) {
      const t = tok.token_to_id(n);
      if (t !== undefined) {
        id = t;
        break;
      }
    }
    if (id === null)
      throw new InvalidInputError(`the tokenizer has none of ${EOS_NAMES.join(', ')}; pass --eos <token id>`);
  }
  if (!Number.isInteger(id) || id < 0 || id >= vocabSize)
    throw new MismatchError(`end-of-text id ${id} is outside the model's vocabulary [0, ${vocabSize})`);
  return { encode: (s) => tok.encode(s, { add_special_tokens: false }).ids, eos: id };
}

export async function runFinetune(
  cfg: FinetuneConfig,
  kernels: Kernels,
  outDir: string,
  hooks: FinetuneHooks = {},
  signal?: AbortSignal,
): Promise<FinetuneSummary> {
  const { any, model, tokenizerBytes, tokenizerJson } = await loadInit(cfg.init, kernels);
  const V = any.config.vocabSize;
  const T = cfg.ctx ?? Math.min(any.config.ctx, 256);
  if (T > any.config.ctx) throw new InvalidInputError(`--ctx ${T} exceeds the model's context ${any.config.ctx}`);
  const { encode, eos } = makeEncoder(tokenizerJson, V, cfg.eos);
  const examples = readFinetuneJsonl(cfg.data);
  const train: FinetuneExample[] = [],
    val: FinetuneExample[] = [];
  examples.forEach((e, i) => (examples.length >= 10 && i % 10 === 9 ? val : train).push(e));
  const trainStream = packExamples(train, encode, eos, V);
  const valStream = val.length ? packExamples(val, encode, eos, V) : trainStream;
  const B = cfg.batch;
  if (trainStream.tokens.length < T + 1)
    throw new InvalidInputError(
      `${cfg.data} gives ${trainStream.tokens.length} training tokens, fewer than one window of ${T + 1}; lower --ctx`,
    );
  const evalB = Math.max(1, Math.min(B, Math.floor((valStream.tokens.length - 1) / T)));
  if (valStream.tokens.length < T + 1)
    throw new InvalidInputError(`the validation examples give fewer than ${T + 1} tokens; lower --ctx`);

  const baseHashBefore = weightsHash(model.params);
  let adapter: LoraAdapter | null = null;
  let trainable: TrainableModel;
  let opt: AdamW;
  if (cfg.lora) {
    adapter = new LoraAdapter(any, cfg.lora);
    adapter.init(cfg.seed);
    model.lora = adapter;
    trainable = loraTrainable(model);
    opt = new AdamW(null, cfg.adamw, kernels, adapter.specs);
  } else {
    trainable = model;
    opt = new AdamW(null, cfg.adamw, kernels, any.arch === 'gpt2' ? paramSpecs(any.config) : llamaSpecs(any.config));
  }
  const schedule = {
    kind: cfg.schedule,
    maxLr: cfg.lr,
    minLrFrac: cfg.minLrFrac,
    warmupSteps: Math.min(cfg.warmup, cfg.steps),
    totalSteps: cfg.steps,
    decayFrac: 0.2,
  };
  const trainer = new Trainer(trainable, opt, schedule, B, T);
  const sampler = new MaskedBatchSampler(trainStream, B, T, cfg.seed);
  const dm = await openDeviceFinetuner(cfg.device ?? 'cpu', {
    any,
    params: model.params,
    adamw: cfg.adamw,
    lora: cfg.lora !== null,
    ...(hooks.onLog ? { log: hooks.onLog } : {}),
  });
  try {
    return await trainAndSave(dm);
  } finally {
    dm?.close();
  }

  async function trainAndSave(dm: DeviceFinetuner | null): Promise<FinetuneSummary> {
    hooks.onReady?.({
      arch: any.arch,
      params: model.params.length,
      trainable: trainable.params.length,
      trainTokens: trainStream.tokens.length,
      valTokens: valStream.tokens.length,
      examples: examples.length,
      T,
      device: dm ? `webgpu (${dm.label})` : `cpu (${kernels.name} kernels)`,
    });

    mkdirSync(outDir, { recursive: true });
    const metrics = join(outDir, 'metrics.jsonl');
    writeFileSync(metrics, '');
    const record = (row: Record<string, unknown>) => appendFileSync(metrics, JSON.stringify(row) + '\n');
    // Validation: at most evalBatches full batches of evalB windows (evaluate needs B = evalB).
    const evalSet = maskedEvalBatches(valStream, evalB, T);
    const evaluate = async (max: number) => {
      let sum = 0,
        n = 0;
      for (const b of evalSet.slice(0, max)) {
        sum += dm ? await dm.loss(b, evalB, T) : trainable.loss(b.inputs, b.targets, evalB, T);
        n++;
      }
      return sum / n;
    };
    const v0 = await evaluate(cfg.evalBatches);
    record({ step: 0, valLoss: v0 });
    hooks.onEval?.({ step: 0, valLoss: v0 });

    const t0 = performance.now();
    let tokens = 0,
      step = 0;
    while (step < cfg.steps && !signal?.aborted) {
      const r = dm ? await deviceStep(dm, sampler.next(), step) : trainer.step([sampler.next()]);
      step = r.step;
      tokens += r.tokens;
      const elapsedMs = performance.now() - t0;
      hooks.onStep?.({ ...r, totalSteps: cfg.steps, tokensPerSec: tokens / (elapsedMs / 1000), elapsedMs });
      record({ step, tokens, trainLoss: r.loss, lr: r.lr, gradNorm: r.gradNorm });
      if (step % cfg.evalEvery === 0 && step < cfg.steps) {
        const v = await evaluate(cfg.evalBatches);
        record({ step, valLoss: v });
        hooks.onEval?.({ step, valLoss: v });
      }
      await new Promise<void>((res) => setImmediate(res)); // let Ctrl-C in
    }
    const seconds = (performance.now() - t0) / 1000;
    const finalVal = await evaluate(Infinity);
    // θ comes back from the device once, to be hashed and saved like the CPU's.
    if (dm) model.params.set(await dm.readParams());
    record({ step, valLoss: finalVal, final: true });
    hooks.onEval?.({ step, valLoss: finalVal });

    const files: Record<string, string> = { metrics };
    const meta = { finetunedFrom: cfg.init, data: cfg.data, steps: step, finalValLoss: finalVal };
    if (adapter) {
      files.adapter = join(outDir, 'adapter');
      await exportPeft(files.adapter, adapter, { baseModelNameOrPath: cfg.init });
      if (cfg.merged) {
        files.merged = join(outDir, 'merged');
        if (any.arch === 'gpt2')
          await exportMergedHF(files.merged, {
            arch: 'gpt2',
            adapter,
            params: model.params,
            tokenizerJson,
            eotId: eos,
          });
        else
          await exportMergedHF(files.merged, {
            arch: 'llama',
            adapter,
            params: model.params,
            tokenizerJson: tokenizerBytes,
            eosTokenId: eos,
          });
      }
    } else {
      files.checkpoint = join(outDir, 'checkpoint');
      const extraFiles = { 'tokenizer.json': tokenizerBytes };
      if (any.arch === 'gpt2')
        await saveCheckpoint(files.checkpoint, { config: any.config, params: model.params, meta, extraFiles });
      else await saveLlamaCheckpoint(files.checkpoint, { config: any.config, params: model.params, meta, extraFiles });
      if (cfg.merged) {
        files.hf = join(outDir, 'hf');
        if (any.arch === 'gpt2')
          await exportHF(files.hf, { config: any.config, params: model.params, tokenizerJson, eotId: eos });
        else
          await exportLlamaHF(files.hf, {
            config: any.config,
            params: model.params,
            tokenizerJson: tokenizerBytes,
            eosTokenId: eos,
          });
      }
    }
    return {
      arch: any.arch,
      mode: adapter ? 'lora' : 'full',
      device: dm ? 'webgpu' : 'cpu',
      steps: step,
      tokens,
      seconds,
      initialValLoss: v0,
      finalValLoss: finalVal,
      trainableParams: trainable.params.length,
      baseParams: model.params.length,
      baseHashBefore,
      baseHashAfter: weightsHash(model.params),
      trainedHash: weightsHash(trainable.params),
      files,
    };
  }

  async function deviceStep(dm: DeviceFinetuner, b: Batch, done: number): Promise<StepResult> {
    const r = await dm.step(b, B, T, schedule, done);
    return { step: done + 1, loss: r.loss, gradNorm: r.gradNorm, lr: r.lr, tokens: B * T };
  }
}

/** `--lora r,alpha,targets` (targets '+'-separated, or "all"): e.g. "8,16,q_proj+v_proj". */
export function parseLoraFlag(s: string): LoraConfig {
  const m = /^(\d+),([0-9.eE+-]+)(?:,(.+))?$/.exec(s.trim());
  if (!m) throw new InvalidInputError(`--lora expects r,alpha[,targets] (e.g. 8,16,q_proj+v_proj), got "${s}"`);
  const alpha = Number(m[2]);
  if (!Number.isFinite(alpha)) throw new InvalidInputError(`--lora alpha "${m[2]}" is not a number`);
  const targets = (m[3] ?? 'all').split(/[+;]/).filter(Boolean);
  return { r: Number(m[1]), alpha, targets };
}
