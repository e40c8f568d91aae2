/**
 * Which stage a peer serves (issue 8), as Petals does it but without its oscillation: a joining
 * peer takes the stage with the lowest total throughput; a serving peer moves only if the
 * pipeline's bottleneck (the slowest stage's total throughput) would rise by more than a
 * hysteresis factor, and never out of a stage it would leave empty. Moving back can then never
 * pass the same test, so peers do not flip-flop. Pure.
 */
import { InvalidInputError } from '../util/errors.js';

export interface StageLoad { peers: number; throughput: number }

function check(stages: readonly StageLoad[]): void {
  if (stages.length === 0) throw new InvalidInputError('no stages');
  for (const s of stages) if (!(s.peers >= 0) || !Number.isInteger(s.peers) || !(s.throughput >= 0)) throw new InvalidInputError(`bad stage load ${JSON.stringify(s)}`);
}

/** The stage a joining peer takes: lowest total throughput, then fewest peers, then lowest index. */
export function chooseStage(stages: readonly StageLoad[]): number {
  check(stages);
  let best = 0;
  for (let i = 1; i < stages.length; i++) {
    const a = stages[i], b = stages[best];
    if (a.throughput < b.throughput || (a.throughput === b.throughput && a.peers < b.peers)) best = i;
  }
  return best;
}

/**
 * Where a peer serving `from` with throughput `mine` should move, or null to stay: only out of
 * a stage that keeps another peer, and only if min-stage throughput grows by more than
 * `hysteresis` (relative; an empty stage always counts as an improvement).
 */
export function rebalance(stages: readonly StageLoad[], from: number, mine: number, hysteresis = 0.2): number | null {
  check(stages);
  if (!(from >= 0 && from < stages.length) || !(mine > 0)) throw new InvalidInputError('rebalance: bad stage or throughput');
  if (stages[from].peers < 2) return null;
  const before = Math.min(...stages.map((s) => (s.peers === 0 ? 0 : s.throughput)));
  let best: number | null = null, bestMin = before;
  for (let to = 0; to < stages.length; to++) {
    if (to === from) continue;
    const after = stages.map((s, i) => (i === from ? s.throughput - mine : i === to ? s.throughput + mine : s.throughput));
    const min = Math.min(...after);
    if (min > bestMin) { bestMin = min; best = to; }
  }
  if (best === null) return null;
  return before === 0 || bestMin > (1 + hysteresis) * before ? best : null;
}
