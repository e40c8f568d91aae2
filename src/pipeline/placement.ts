/**
 * Which stage a joining peer serves (issue 8), as Petals does it: the stage with the lowest total
 * announced throughput. Peers do not move once serving (Petals' runtime rebalancing is where its
 * oscillation comes from; moving with hysteresis is not built yet). Pure.
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
