/**
 * The numeric half of a round: apply the agreed update set to θ_round. Deterministic: the
 * updates are sorted by peer id (code-unit order) before summing, weights are token counts,
 * and aggregate() / OuterNesterov.step() are fixed-order float32 loops, so every peer that
 * applies the same set to the same θ and momentum gets the same bits (and weights hash).
 */
import { InvalidInputError } from '../util/errors.js';
import { compareIds } from './assign.js';
import { aggregate, type OuterNesterov } from './outer.js';
import { robustAggregate, type RobustSettings } from './robust.js';

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
