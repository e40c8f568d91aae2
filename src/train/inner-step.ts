/**
 * The one inner training step every trainer runs: zero the gradients, forward + backward over
 * the step's batch (or its micro-batches, accumulated with scale 1/n), refuse a non-finite loss,
 * take the learning rate from the schedule and apply one AdamW update. The swarm node's jobs,
 * the validator's audit re-execution, both simulators and `tessera train` all call it, so a
 * re-executed step repeats the trainer's float operations in the same order: bitwise equal
 * results rest on this one function, not on copies kept in step.
 *
 * The step is written once (`stepOps`, a generator over the model's operations) and driven two
 * ways: `innerStep` synchronously over a CPU GPT + AdamW (audits, simulators: unchanged), and
 * `innerStepOn` asynchronously over any `StepModel` (src/train/device-model.ts: the CPU GPT or
 * the WebGPU GPT, whose work is encoded and read back asynchronously). Same sequence of
 * operations either way; only the device that executes them differs.
 *
 * A non-finite loss raises NonFiniteLossError before the optimizer touches the weights, its
 * moments or its step count; what to do about it (stop a job, fail an audit, stop a run) is the
 * caller's decision.
 *
 * What it trains is any Trainable: a GPT or a Llama (all their parameters), or a LoRA adapter
 * (model/lora.ts loraTrainable: the adapter's buffer alone, the base frozen).
 */
import type { Batch } from '../data/batches.js';
import { InvalidInputError, NonFiniteLossError } from '../util/errors.js';
import type { AdamW } from './adamw.js';
import { lrAt, type Schedule } from './schedule.js';

/** A flat parameter buffer, its gradient, and the forward + backward that fills the gradient. */
export interface Trainable {
  readonly params: Float32Array;
  readonly grads: Float32Array;
  zeroGrad(): void;
  /** Mean loss of the batch; ACCUMULATES d(loss)/d(params)·gradScale into grads. */
  forwardBackward(tokens: Int32Array, targets: Int32Array, B: number, T: number, gradScale?: number): number;
}

export interface InnerStep {
  /**
   * The step's batches, each B×T: one batch, or the micro-batches of one optimizer step
   * (gradients accumulated with scale 1/n; the loss is Σ loss_j·(1/n) in this order).
   */
  batches: readonly Batch[];
  B: number;
  T: number;
  schedule: Schedule;
  /** The step's index in `schedule`: the learning rate is lrAt(schedule, step). */
  step: number;
}

export interface InnerStepResult {
  /** The step's loss (the mean over micro-batches), before the update. */
  loss: number;
  /** The learning rate applied. */
  lr: number;
  /** The global gradient norm before clipping (AdamW.update's return). */
  gradNorm: number;
}

/**
 * What one inner step needs of a model on some device: the operations of forward + backward +
 * clip + AdamW. Results may be plain numbers (CPU) or promises (a GPU reads them back).
 */
export interface StepModel {
  zeroGrad(): void;
  /** Forward + backward of one batch; ACCUMULATES scale·d(loss)/dθ into the gradients; returns the mean loss. */
  forwardBackward(
    inputs: Int32Array,
    targets: Int32Array,
    B: number,
    T: number,
    gradScale: number,
  ): number | Promise<number>;
  /** Clip to the global gradient norm, one AdamW update at `lr`; returns the norm before clipping. */
  update(lr: number): number | Promise<number>;
}

/** The step, once: yields each model result it needs (a number or a promise of one). */
function* stepOps(m: StepModel, s: InnerStep): Generator<number | Promise<number>, InnerStepResult, number> {
  const { batches, B, T } = s;
  if (batches.length === 0) throw new InvalidInputError('an inner step needs at least one batch');
  m.zeroGrad();
  let loss = 0;
  // One batch: scale 1, and 0 + l·1 is l exactly (a loss is never −0), so this is the plain step.
  const scale = 1 / batches.length;
  for (const b of batches) loss += (yield m.forwardBackward(b.inputs, b.targets, B, T, scale)) * scale;
  if (!Number.isFinite(loss)) throw new NonFiniteLossError(loss, s.step);
  const lr = lrAt(s.schedule, s.step);
  const gradNorm = yield m.update(lr);
  return { loss, lr, gradNorm };
}

/**
 * One inner step on `gpt`'s parameters with `opt`. Throws NonFiniteLossError (weights, moments
 * and step count untouched; gradients overwritten) when the loss is NaN or infinite.
 */
export function innerStep(gpt: Trainable, opt: AdamW, s: InnerStep): InnerStepResult {
  const g = stepOps(
    {
      zeroGrad: () => gpt.zeroGrad(),
      forwardBackward: (x, y, B, T, scale) => gpt.forwardBackward(x, y, B, T, scale),
      update: (lr) => opt.update(gpt.params, gpt.grads, lr),
    },
    s,
  );
  let r = g.next();
  while (!r.done) r = g.next(r.value as number);
  return r.value;
}

/** The same inner step on any device's model (src/train/device-model.ts), awaiting its results. */
export async function innerStepOn(model: StepModel, s: InnerStep): Promise<InnerStepResult> {
  const g = stepOps(model, s);
  let r = g.next();
  while (!r.done) r = g.next(await r.value);
  return r.value;
}
