/**
 * The numeric half of a round: apply the agreed update set to θ_round. Deterministic: the
 * updates are sorted by peer id (code-unit order) before summing, weights are token counts,
 * and aggregate() / OuterNesterov.step() are fixed-order float32 loops, so every peer that
 * applies the same set to the same θ and momentum gets the same bits (and weights hash).
 */
import { InvalidInputError } from '../util/errors.js';
import { compareIds } from './assign.js';
import { aggregate, type OuterNesterov } from './outer.js';
import { normBound, robustAggregate, type RobustSettings } from './robust.js';

export interface CommittedUpdate {
  peer: string;
  /** Tokens the update was trained on (steps·batch, capped at H·batch by the commit). */
  tokens: number;
  /** The decoded pseudo-gradient Δ = θ_round − θ_local. */
  delta: Float32Array;
}

/**
 * Aggregates `updates` (token-weighted mean, summed in peer-id order) and applies one outer
 * Nesterov step to `params` in place. An empty set is a no-op (weights and momentum unchanged).
 * Returns the aggregated Δ̄ (null when empty). Throws InvalidInputError on duplicate peers,
 * bad token counts or length mismatches; nothing is modified then.
 */
export type AggregateRule = 'mean' | 'clip' | 'trimmed' | 'centered';

/** The robust settings behind each rule (robust.ts); 'mean' is the plain token-weighted mean. */
const RULES: Record<Exclude<AggregateRule, 'mean'>, RobustSettings> = {
  clip: { clip: true, topG: null, rule: 'mean', trim: 0, tau: 1, iters: 0 },
  trimmed: { clip: true, topG: null, rule: 'trimmed', trim: 1, tau: 1, iters: 0 },
  centered: { clip: true, topG: null, rule: 'centered', trim: 0, tau: 1, iters: 3 },
};

export function applyCommitted(
  params: Float32Array,
  outer: OuterNesterov,
  updates: readonly CommittedUpdate[],
  rule: AggregateRule = 'mean',
): Float32Array | null {
  if (updates.length === 0) return null;
  const sorted = [...updates].sort((a, b) => compareIds(a.peer, b.peer));
  for (let i = 0; i < sorted.length; i++) {
    const u = sorted[i];
    if (i > 0 && sorted[i - 1].peer === u.peer)
      throw new InvalidInputError(`applyCommitted: two updates from ${u.peer}`);
    if (!Number.isSafeInteger(u.tokens) || u.tokens <= 0)
      throw new InvalidInputError(`applyCommitted: bad token count ${u.tokens} for ${u.peer}`);
    if (u.delta.length !== params.length)
      throw new InvalidInputError(
        `applyCommitted: update from ${u.peer} has ${u.delta.length} values, expected ${params.length}`,
      );
  }
  // 'clip': every norm clipped to the median norm of the set (robust.ts), then the same token-weighted
  // mean; 'trimmed': clipped, then a coordinate-wise mean without each coordinate's extremes;
  // 'centered': clipped, then centered clipping around the weighted mean (τ = median norm).
  const mean =
    rule === 'mean'
      ? aggregate(
          sorted.map((u) => u.delta),
          sorted.map((u) => u.tokens),
        )
      : robustAggregate(
          sorted.map((u) => ({ peer: u.peer, delta: u.delta, weight: u.tokens, score: 0 })),
          RULES[rule],
        ).delta;
  outer.step(params, mean);
  return mean;
}

/** An update as its non-zero entries (a sparse codec's payload, compress/sparse.ts entries()), ascending index. */
export interface SparseCommittedUpdate {
  peer: string;
  tokens: number;
  idx: Uint32Array;
  val: Float32Array;
}

/** Coordinates per block of applyCommittedSparse. */
const SPARSE_APPLY_BLOCK = 1 << 16;

/**
 * applyCommitted for rule 'mean' or 'clip' on updates given as their non-zero entries, bit for
 * bit, without any n-value array: per block of coordinates, the aggregate (aggregate()'s float32
 * sum for 'mean'; clippedMean's float64 sum of clipped values for 'clip') and the outer step.
 * Zeros add nothing to either sum (x + 0 = x, also for x = +0 and a −0 term), so skipping them
 * changes no bit. At GPT-2 small this is what lets three peers apply a round without 3 × 0.5 GB
 * of decoded updates, the clipped copies and the mean.
 */
export function applyCommittedSparse(
  params: Float32Array,
  outer: OuterNesterov,
  updates: readonly SparseCommittedUpdate[],
  rule: 'mean' | 'clip',
): void {
  if (updates.length === 0) return;
  const n = params.length;
  const sorted = [...updates].sort((a, b) => compareIds(a.peer, b.peer));
  for (let i = 0; i < sorted.length; i++) {
    const u = sorted[i];
    if (i > 0 && sorted[i - 1].peer === u.peer)
      throw new InvalidInputError(`applyCommitted: two updates from ${u.peer}`);
    if (!Number.isSafeInteger(u.tokens) || u.tokens <= 0)
      throw new InvalidInputError(`applyCommitted: bad token count ${u.tokens} for ${u.peer}`);
    if (u.idx.length !== u.val.length || (u.idx.length > 0 && u.idx[u.idx.length - 1] >= n))
      throw new InvalidInputError(`applyCommitted: update from ${u.peer} does not fit ${n} values`);
  }
  const total = sorted.reduce((a, u) => a + u.tokens, 0);
  // 'clip': robust.ts normBound of the norms (norm2's sum over the non-zeros, in index order).
  let scales: number[] = sorted.map(() => 1);
  if (rule === 'clip') {
    const norms = sorted.map((u) => {
      let q = 0;
      for (let k = 0; k < u.val.length; k++) q += u.val[k] * u.val[k];
      return Math.sqrt(q);
    });
    const bound = normBound(norms);
    scales = norms.map((nm) => (nm > bound && nm > 0 ? bound / nm : 1));
  }
  const at = sorted.map(() => 0);
  const acc = new Float64Array(Math.min(n, SPARSE_APPLY_BLOCK));
  const mean = new Float32Array(Math.min(n, SPARSE_APPLY_BLOCK));
  for (let a = 0; a < n; a += SPARSE_APPLY_BLOCK) {
    const b = Math.min(n, a + SPARSE_APPLY_BLOCK);
    const blk = mean.subarray(0, b - a);
    if (rule === 'mean') {
      blk.fill(0);
      sorted.forEach((u, j) => {
        const w = Math.fround(u.tokens / total);
        let p = at[j];
        for (; p < u.idx.length && u.idx[p] < b; p++) {
          const i = u.idx[p] - a;
          blk[i] = Math.fround(blk[i] + Math.fround(w * u.val[p]));
        }
        at[j] = p;
      });
    } else {
      acc.fill(0);
      sorted.forEach((u, j) => {
        const w = u.tokens / total;
        const sc = Math.fround(scales[j]);
        let p = at[j];
        for (; p < u.idx.length && u.idx[p] < b; p++) {
          const v = scales[j] === 1 ? u.val[p] : Math.fround(u.val[p] * sc);
          acc[u.idx[p] - a] += w * v;
        }
        at[j] = p;
      });
      for (let i = 0; i < b - a; i++) blk[i] = acc[i];
    }
    outer.stepBlock(params, blk, a);
  }
}
