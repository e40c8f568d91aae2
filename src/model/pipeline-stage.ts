/**
 * What the pipeline (src/pipeline) needs of a stage, whichever model family it cuts: the GPT-2
 * Stage (stage.ts) and the Llama LlamaStage (llama-stage.ts) both provide it, and `createStage`
 * picks one by the config (a Llama config carries `arch: 'llama'`; a GPT-2 ModelConfig has no
 * `arch`). A run manifest, a stage peer and the driver hold a `StageModelConfig`.
 */
import { z } from 'zod';
import type { Kernels } from '../kernels/api.js';
import { ModelConfigSchema, type ModelConfig } from './config.js';
import { LlamaConfigSchema, type LlamaConfig } from './llama-config.js';
import { LlamaStage, llamaStageSpecs, type StageTensor } from './llama-stage.js';
import { Stage, stageSpecs, type StageSpec } from './stage.js';

/** A model a pipeline can cut: GPT-2 (no `arch`) or a Llama-family config (`arch: 'llama'`). */
export type StageModelConfig = ModelConfig | LlamaConfig;

export const StageModelConfigSchema = z.union([LlamaConfigSchema, ModelConfigSchema]);

export function isLlamaConfig(c: StageModelConfig): c is LlamaConfig {
  return (c as LlamaConfig).arch === 'llama';
}

/** Whether the first and last stages share a tied embedding whose gradients the driver sums. */
export function hasTiedEmbedding(c: StageModelConfig): boolean {
  return isLlamaConfig(c) ? c.tiedEmbeddings : true;
}

export interface PipelineStage {
  readonly config: StageModelConfig;
  readonly spec: StageSpec;
  readonly specs: StageTensor[];
  readonly numParams: number;
  readonly params: Float32Array;
  readonly grads: Float32Array;
  readonly first: boolean;
  readonly last: boolean;
  readonly kernels: Kernels;
  /** The tensor holding the tied embedding on this stage, or null (a middle stage, or an untied model). */
  readonly tiedTensor: string | null;
  /** Boundary width: values per token received and sent (the model's dim, or the bottleneck's k). */
  readonly width: number;
  /** The whole model's seeded initialisation, restricted to this stage (bit for bit). */
  init(seed: number): void;
  tensorNames(): string[];
  loadFromFull(full: Float32Array): void;
  writeToFull(full: Float32Array, from?: Float32Array): void;
  initBottleneck(U: Float32Array): void;
  tiedGrad(): Float32Array | null;
  tiedParam(): Float32Array | null;
  zeroGrad(): void;
  sumSquares(): number;
  forward(slot: number, input: Int32Array | Float32Array, B: number, T: number): Float32Array;
  loss(slot: number, targets: Int32Array, grad: boolean, gradScale?: number): number;
  backward(slot: number, dOut: Float32Array | null): Float32Array | null;
  release(slot: number): void;
  resetSlots(): void;
}

/** The stage of `config` that `spec` describes. */
export function createStage(config: StageModelConfig, spec: StageSpec, kernels: Kernels): PipelineStage {
  return isLlamaConfig(config) ? new LlamaStage(config, spec, kernels) : new Stage(config, spec, kernels);
}

/** The tensors the stage of `config` that `spec` describes owns (stage.ts / llama-stage.ts). */
export function anyStageSpecs(config: StageModelConfig, spec: StageSpec): StageTensor[] {
  return isLlamaConfig(config) ? llamaStageSpecs(config, spec) : stageSpecs(config, spec);
}

export { splitStages, type StageSpec } from './stage.js';
