/**
 * AdamW over the flat parameter buffer. Moments m and v are two more flat Float32Arrays in
 * the parameter layout. Weight decay applies to matrices and embeddings only (GPT-2 /
 * nanoGPT convention); adjacent tensors with the same decay flag are merged into one kernel
 * call, so a step is a handful of calls over contiguous slices.
 */
import { z } from 'zod';
import type { Kernels } from '../kernels/api.js';
import type { ModelConfig } from '../model/config.js';
import { paramCount, paramSpecs, type TensorSpec } from '../model/params.js';

export const AdamWSchema = z
  .object({
    beta1: z.number().min(0).max(1),
    beta2: z.number().min(0).max(1),
    eps: z.number().positive(),
    weightDecay: z.number().min(0),
    /** Clip the global gradient L2 norm to this (0 = off). */
    gradClip: z.number().min(0),
  })
  .strict();
export type AdamWSettings = z.infer<typeof AdamWSchema>;

export const DEFAULT_ADAMW: AdamWSettings = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 1.0 };

interface Range {
  start: number;
  end: number;
  decay: boolean;
}

export class AdamW {
  readonly m: Float32Array;
  readonly v: Float32Array;
  /** Number of updates applied so far (AdamW's t, 1-based inside step()). */
  step = 0;
  private readonly ranges: Range[];

  /**
   * `specs`: another tensor table (a pipeline stage's slice of the model, a Llama's llamaSpecs,
   * a LoRA adapter's loraSpecs); default the whole GPT-2 model of `config` (null: specs required).
   */
  constructor(
    readonly config: ModelConfig | null,
    readonly settings: AdamWSettings,
    private readonly kernels: Kernels,
    specs?: readonly TensorSpec[],
  ) {
    if (!specs && !config) throw new RangeError('AdamW needs a model config or a tensor table');
    const table = specs ?? paramSpecs(config!);
    const n = specs ? table.reduce((t, x) => Math.max(t, x.offset + x.size), 0) : paramCount(config!);
    this.m = new Float32Array(n);
    this.v = new Float32Array(n);
    this.ranges = [];
    for (const s of table) {
      const last = this.ranges[this.ranges.length - 1];
      if (last && last.decay === s.decay && last.end === s.offset) last.end = s.offset + s.size;
      else this.ranges.push({ start: s.offset, end: s.offset + s.size, decay: s.decay });
    }
  }

  /**
   * Clip gradients to the global norm, then apply one AdamW update. Returns the gradient
   * norm before clipping.
   */
  update(params: Float32Array, grads: Float32Array, lr: number, globalNorm?: number): number {
    const k = this.kernels,
      s = this.settings;
    // A pipeline stage holds part of the gradient: the global norm comes from all stages.
    const norm = globalNorm ?? Math.sqrt(k.sumSquares(grads));
    if (!Number.isFinite(norm)) throw new RangeError(`gradient norm is ${norm}; refusing to apply the update`);
    if (s.gradClip > 0 && norm > s.gradClip) k.scale(grads, s.gradClip / norm);
    this.step += 1;
    for (const r of this.ranges) {
      k.adamw(
        params.subarray(r.start, r.end),
        grads.subarray(r.start, r.end),
        this.m.subarray(r.start, r.end),
        this.v.subarray(r.start, r.end),
        lr,
        s.beta1,
        s.beta2,
        s.eps,
        r.decay ? s.weightDecay : 0,
        this.step,
      );
    }
    return norm;
  }
}
