/**
 * A GPT-2 fine-tuned through a LoRA adapter, seen as its adapter: `params` and `grads` are the
 * adapter's flat buffers (lora.ts), the base weights sit frozen inside. Wherever the swarm, the
 * simulator or an audit treats "the model's parameters" as θ (a job's base and Δ, the codecs,
 * the outer step, the weights hash, validation scoring, the audit's re-execution and Merkle
 * leaves), a LoraGPT makes θ the adapter alone, so a round moves the adapter's bytes and never the
 * base's. Backward skips the base weights' gradients (gpt.ts freezeBase, via loraTrainable).
 *
 * `ThetaModel` is the part of a GPT those callers use; GPT and LoraGPT both are one. No I/O.
 */
import type { Kernels } from '../kernels/api.js';
import { AdamW, type AdamWSettings } from '../train/adamw.js';
import { InvalidInputError } from '../util/errors.js';
import { ModelConfigSchema, type ModelConfig } from './config.js';
import { GPT } from './gpt.js';
import { LoraAdapter, loraTrainable, type LoraConfig } from './lora.js';
import { paramCount, type TensorSpec } from './params.js';

/** What trainers, validators and audits use of the model whose flat parameters are θ. */
export interface ThetaModel {
  readonly config: ModelConfig;
  readonly kernels: Kernels;
  readonly numParams: number;
  /** θ: the flat trained parameters. */
  readonly params: Float32Array;
  readonly grads: Float32Array;
  zeroGrad(): void;
  forwardBackward(tokens: Int32Array, targets: Int32Array, B: number, T: number, gradScale?: number): number;
  loss(tokens: Int32Array, targets: Int32Array, B: number, T: number): number;
}

export class LoraGPT implements ThetaModel {
  readonly gpt: GPT;
  readonly adapter: LoraAdapter;
  readonly config: ModelConfig;
  readonly kernels: Kernels;
  readonly numParams: number;
  readonly params: Float32Array;
  readonly grads: Float32Array;
  /** The adapter's tensor table (AdamW's decay ranges, checkpoints of θ). */
  readonly specs: readonly TensorSpec[];
  private readonly trainable: ReturnType<typeof loraTrainable>;

  /**
   * `base`: the frozen GPT-2 weights, held by reference, not copied: a peer's trainer, evaluator,
   * validator and audits share one base buffer (0.5 GB at GPT-2 small), and nothing writes it.
   * The adapter starts at zero; init(seed) for PEFT's init.
   */
  constructor(config: ModelConfig, kernels: Kernels, base: Float32Array, lora: LoraConfig) {
    const n = paramCount(ModelConfigSchema.parse(config));
    if (base.length !== n) throw new InvalidInputError(`the base has ${base.length} floats, the model needs ${n}`);
    this.gpt = new GPT(config, kernels, base);
    this.adapter = new LoraAdapter({ arch: 'gpt2', config: this.gpt.config }, lora);
    this.gpt.lora = this.adapter;
    this.trainable = loraTrainable(this.gpt);
    this.config = this.gpt.config;
    this.kernels = kernels;
    this.numParams = this.adapter.numParams;
    this.params = this.adapter.params;
    this.grads = this.adapter.grads;
    this.specs = this.adapter.specs;
  }

  /** PEFT's default adapter init (A uniform, B = 0: the model starts as the base exactly). */
  init(seed: number): void {
    this.adapter.init(seed);
  }

  /** The frozen base weights (a view; nothing writes it). */
  get base(): Float32Array {
    return this.gpt.params;
  }

  zeroGrad(): void {
    this.trainable.zeroGrad();
  }

  forwardBackward(tokens: Int32Array, targets: Int32Array, B: number, T: number, gradScale = 1): number {
    return this.trainable.forwardBackward(tokens, targets, B, T, gradScale);
  }

  loss(tokens: Int32Array, targets: Int32Array, B: number, T: number): number {
    return this.gpt.loss(tokens, targets, B, T);
  }
}

/** AdamW over θ of `model`: the adapter's tensor table for a LoraGPT, the GPT-2 layout otherwise. */
export function adamwFor(model: ThetaModel, settings: AdamWSettings, kernels: Kernels): AdamW {
  return model instanceof LoraGPT
    ? new AdamW(null, settings, kernels, model.specs)
    : new AdamW(model.config, settings, kernels);
}
