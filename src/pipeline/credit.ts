/**
 * Ownership by shard (issue 8): how a pipeline round's shares are split among stage peers, in the
 * form the ledger mints from (`buildScoreReport`'s per-address scores). Each stage's share is
 * proportional to the parameters it holds (the shard is the stake, and the compute per token
 * grows with it); within a stage, replicas split that share by the tokens each processed (a
 * replica that died mid-round gets credit for what it did). Pure.
 */
import { InvalidInputError } from '../util/errors.js';

export interface StageWork {
  peer: string;
  stage: number;
  params: number;
  tokens: number;
}
export interface StageCredit {
  peer: string;
  stage: number;
  score: number;
}

export function stageCredits(work: readonly StageWork[]): StageCredit[] {
  const stages = new Map<number, { params: number; tokens: number }>();
  for (const w of work) {
    if (!Number.isInteger(w.stage) || w.stage < 0 || !(w.params > 0) || !(w.tokens >= 0))
      throw new InvalidInputError(`bad stage work ${JSON.stringify(w)}`);
    const s = stages.get(w.stage);
    if (s && s.params !== w.params) throw new InvalidInputError(`stage ${w.stage}: replicas disagree on its size`);
    stages.set(w.stage, { params: w.params, tokens: (s?.tokens ?? 0) + w.tokens });
  }
  const totalParams = [...stages.values()].reduce((t, s) => t + s.params, 0);
  return work.map((w) => {
    const s = stages.get(w.stage)!;
    return { peer: w.peer, stage: w.stage, score: s.tokens > 0 ? (s.params / totalParams) * (w.tokens / s.tokens) : 0 };
  });
}
