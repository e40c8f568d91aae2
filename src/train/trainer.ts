/**
 * `tessera train`'s stepping and evaluation over a model (GPT, Llama, or a LoRA adapter on one): a step count over the one inner step
 * (src/train/inner-step.ts: forward, backward, clip, AdamW, with micro-batch accumulation),
 * and the mean loss over evaluation batches. No I/O: the caller supplies batches and decides
 * when to log, evaluate or checkpoint. The swarm's inner steps and a validator's re-execution
 * run the same inner step.
 */
import { AdamW } from './adamw.js';
import type { Schedule } from './schedule.js';
import { innerStep, type Trainable } from './inner-step.js';

/** What the trainer steps and evaluates: a GPT, a Llama, or a LoRA adapter on either (lora.ts). */
export interface TrainableModel extends Trainable {
  loss(tokens: Int32Array, targets: Int32Array, B: number, T: number): number;
}

export interface Batch {
  inputs: Int32Array;
  targets: Int32Array;
}

export interface StepResult {
  step: number;
  loss: number;
  gradNorm: number;
  lr: number;
  tokens: number;
}

export class Trainer {
  /** Number of completed optimizer steps. */
  stepCount = 0;
  constructor(
    readonly gpt: TrainableModel,
    readonly opt: AdamW,
    readonly schedule: Schedule,
    readonly B: number,
    readonly T: number,
  ) {}

  /**
   * One optimizer step on `microBatches` (gradient accumulation when more than one), at
   * schedule index stepCount. A non-finite loss throws NonFiniteLossError with the weights
   * and stepCount untouched.
   */
  step(microBatches: Batch[]): StepResult {
    const { B, T } = this;
    const { loss, lr, gradNorm } = innerStep(this.gpt, this.opt, {
      batches: microBatches,
      B,
      T,
      schedule: this.schedule,
      step: this.stepCount,
    });
    this.stepCount += 1;
    return { step: this.stepCount, loss, gradNorm, lr, tokens: B * T * microBatches.length };
  }

  /** Mean loss over `batches` (each B*T tokens). */
  evaluate(batches: Iterable<Batch>): { loss: number; tokens: number } {
    let sum = 0,
      n = 0;
    for (const b of batches) {
      sum += this.gpt.loss(b.inputs, b.targets, this.B, this.T);
      n += 1;
    }
    return { loss: n ? sum / n : NaN, tokens: n * this.B * this.T };
  }
}
