/**
 * The DiLoCo outer step: combine peers' pseudo-gradients and apply Nesterov momentum to the
 * round's weights. Pure and deterministic: the same inputs in the same order give the same
 * bits on every peer, which is what lets every honest peer reach the same weights hash.
 *
 * Pseudo-gradient convention: Δ = θ_round − θ_local (so Δ points "uphill", like a gradient).
 * Outer SGD with Nesterov momentum μ and learning rate η:
 *   m ← μ·m + Δ̄ ;  θ ← θ − η·(Δ̄ + μ·m)
 */
import { z } from 'zod';
import { InvalidInputError } from '../util/errors.js';

export const OuterSchema = z
  .object({
    lr: z.number().positive().max(10),
    momentum: z.number().min(0).max(0.999),
  })
  .strict();
export type OuterSettings = z.infer<typeof OuterSchema>;
export const DEFAULT_OUTER: OuterSettings = { lr: 0.7, momentum: 0.9 };

export class OuterNesterov {
  readonly momentum: Float32Array;
  constructor(
    n: number,
    readonly settings: OuterSettings = DEFAULT_OUTER,
  ) {
    this.momentum = new Float32Array(n);
  }

  /** Apply one outer step in place. `delta` is the aggregated pseudo-gradient. */
  step(params: Float32Array, delta: Float32Array): void {
    const n = this.momentum.length;
    if (params.length !== n || delta.length !== n)
      throw new InvalidInputError(
        `outer step: expected ${n} values, got params ${params.length}, delta ${delta.length}`,
      );
    const { lr, momentum: mu } = this.settings;
    const m = this.momentum;
    for (let i = 0; i < n; i++) {
      const d = delta[i];
      const mi = Math.fround(mu * m[i] + d);
      m[i] = mi;
      params[i] = Math.fround(params[i] - Math.fround(lr * Math.fround(d + Math.fround(mu * mi))));
    }
  }

  /**
   * step() on coordinates [from, from + delta.length) only (delta: the aggregate's values there):
   * the same arithmetic, so stepping every block of a vector equals one step().
   */
  stepBlock(params: Float32Array, delta: Float32Array, from: number): void {
    const n = this.momentum.length;
    if (params.length !== n || from < 0 || from + delta.length > n)
      throw new InvalidInputError(`outer step: block [${from}, ${from + delta.length}) outside ${n} values`);
    const { lr, momentum: mu } = this.settings;
    const m = this.momentum;
    for (let k = 0; k < delta.length; k++) {
      const i = from + k;
      const d = delta[k];
      const mi = Math.fround(mu * m[i] + d);
      m[i] = mi;
      params[i] = Math.fround(params[i] - Math.fround(lr * Math.fround(d + Math.fround(mu * mi))));
    }
  }

  /**
   * What step() would make of params with this delta, written to `out`, without changing the
   * momentum: a peer's guess of the next weights from its own update (eager overlap).
   */
  preview(params: Float32Array, delta: Float32Array, out: Float32Array): Float32Array {
    const n = this.momentum.length;
    if (params.length !== n || delta.length !== n || out.length !== n)
      throw new InvalidInputError(`outer preview: expected ${n} values`);
    const { lr, momentum: mu } = this.settings;
    const m = this.momentum;
    for (let i = 0; i < n; i++) {
      const d = delta[i];
      const mi = Math.fround(mu * m[i] + d);
      out[i] = Math.fround(params[i] - Math.fround(lr * Math.fround(d + Math.fround(mu * mi))));
    }
    return out;
  }
}

/**
 * Weighted mean of pseudo-gradients, summed in the order given (callers sort by peer id so
 * every peer sums identically). Weights must be finite and non-negative with a positive sum.
 */
export function aggregate(deltas: readonly Float32Array[], weights: readonly number[]): Float32Array {
  if (deltas.length === 0) throw new InvalidInputError('aggregate: no updates');
  if (weights.length !== deltas.length)
    throw new InvalidInputError(`aggregate: ${deltas.length} updates but ${weights.length} weights`);
  const n = deltas[0].length;
  let total = 0;
  for (const w of weights) {
    if (!Number.isFinite(w) || w < 0) throw new InvalidInputError(`aggregate: bad weight ${w}`);
    total += w;
  }
  if (!(total > 0)) throw new InvalidInputError('aggregate: weights sum to zero');
  const out = new Float32Array(n);
  deltas.forEach((d, j) => {
    if (d.length !== n) throw new InvalidInputError(`aggregate: update ${j} has ${d.length} values, expected ${n}`);
    const w = Math.fround(weights[j] / total);
    for (let i = 0; i < n; i++) out[i] = Math.fround(out[i] + Math.fround(w * d[i]));
  });
  return out;
}
