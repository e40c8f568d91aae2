/**
 * One training step (forward, backward, clip, AdamW) and evaluation, over a GPT. No I/O:
 * the caller supplies batches and decides when to log, evaluate or checkpoint, so the same
 * code drives `tessera train`, the swarm's inner steps and a validator's re-execution.
 */
import { GPT } from '../model/gpt.js';
import { AdamW } from './adamw.js';
import { lrAt, type Schedule } from './schedule.js';

export interface Batch { inputs: Int32Array; targets: Int32Array }

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
  constructor(readonly gpt: GPT, readonly opt: AdamW, readonly schedule: Schedule,
    readonly B: number, readonly T: number) {}

  /** One optimizer step on `microBatches` (gradient accumulation when more than one). */
  step(microBatches: Batch[]): StepResult {
    const { gpt, B, T } = this;
    gpt.zeroGrad();
    let loss = 0;
    const scale = 1 / microBatches.length;
    for (const mb of microBatches) loss += gpt.forwardBackward(mb.inputs, mb.targets, B, T, scale) * scale;
    if (!Number.isFinite(loss)) throw new RangeError(`loss is ${loss} at step ${this.stepCount}; stopping before the weights are damaged`);
    const lr = lrAt(this.schedule, this.stepCount);
    const gradNorm = this.opt.update(gpt.params, gpt.grads, lr);
    this.stepCount += 1;
    return { step: this.stepCount, loss, gradNorm, lr, tokens: B * T * microBatches.length };
  }

  /** Mean loss over `batches` (each B*T tokens). */
  evaluate(batches: Iterable<Batch>): { loss: number; tokens: number } {
    let sum = 0, n = 0;
    for (const b of batches) {
      sum += this.gpt.loss(b.inputs, b.targets, this.B, this.T);
      n += 1;
    }
    return { loss: n ? sum / n : NaN, tokens: n * this.B * this.T };
  }
}
