/**
 * Which stage a peer serves (issue 8). Pure: every peer computes the same answer from the same
 * directory of announcements.
 *
 * Joining, as Petals does it: take the stage with the lowest total announced throughput.
 *
 * Moving at runtime, without Petals' oscillation. Petals' servers move when their block's
 * throughput is above the weakest block's; two servers deciding at once on the same view can both
 * move, overshoot, and move back. Here:
 *  - a move must improve the pipeline by a margin: the stages' throughputs, sorted ascending,
 *    must grow lexicographically, and at the first stage that changes by a factor of at least
 *    1 + hysteresis (the slowest stage sets the pace; among equally slow ones, the next). Under
 *    fixed throughputs every move climbs a well-founded order, so moves stop; a throughput that
 *    wobbles by less than the hysteresis never triggers one;
 *  - a stage is never left without a ready holder (the mover's stage keeps another ready peer);
 *  - one move at a time, swarm-wide: none while any peer is not ready (a mover or a joiner waits
 *    for its sync), and of all improving moves only the best one is made (ties: lowest peer id),
 *    so two peers never move on the same stale view.
 */
import { InvalidInputError } from '../util/errors.js';

export interface StageLoad {
  peers: number;
  throughput: number;
}

function check(stages: readonly StageLoad[]): void {
  if (stages.length === 0) throw new InvalidInputError('no stages');
  for (const s of stages)
    if (!(s.peers >= 0) || !Number.isInteger(s.peers) || !(s.throughput >= 0))
      throw new InvalidInputError(`bad stage load ${JSON.stringify(s)}`);
}

/** The stage a joining peer takes: lowest total throughput, then fewest peers, then lowest index. */
export function chooseStage(stages: readonly StageLoad[]): number {
  check(stages);
  let best = 0;
  for (let i = 1; i < stages.length; i++) {
    const a = stages[i],
      b = stages[best];
    if (a.throughput < b.throughput || (a.throughput === b.throughput && a.peers < b.peers)) best = i;
  }
  return best;
}

/** A peer as placement sees it: the stage it announces, whether it holds that stage's weights, its capacity. */
export interface Holder {
  peer: string;
  stage: number;
  ready: boolean;
  throughput: number;
}

export interface Move {
  peer: string;
  from: number;
  to: number;
}

/** Total announced throughput per stage (every holder counts: a syncing peer will serve soon). */
export function stageThroughputs(holders: readonly Holder[], stages: number): number[] {
  const t = new Array<number>(stages).fill(0);
  for (const h of holders) if (h.stage >= 0 && h.stage < stages) t[h.stage] += h.throughput;
  return t;
}

/**
 * Compares two throughput profiles (sorted ascending): positive when `b` beats `a` by the margin
 * (at the first differing stage, b ≥ (1 + hysteresis)·a), negative when `a` is better, 0 otherwise.
 */
export function improves(a: readonly number[], b: readonly number[], hysteresis: number): number {
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i]) continue;
    if (b[i] > a[i]) return b[i] >= (1 + hysteresis) * a[i] && b[i] > 0 ? 1 : 0;
    return -1;
  }
  return 0;
}

const profile = (t: readonly number[]): number[] => [...t].sort((x, y) => x - y);

/** The one move the swarm makes now, or null (see the header for the rules). */
export function planMove(holders: readonly Holder[], stages: number, hysteresis: number): Move | null {
  if (!(hysteresis >= 0)) throw new InvalidInputError(`hysteresis must be ≥ 0, got ${hysteresis}`);
  for (const h of holders)
    if (!Number.isInteger(h.stage) || h.stage < 0 || h.stage >= stages || !(h.throughput >= 0))
      throw new InvalidInputError(`bad holder ${JSON.stringify(h)}`);
  if (holders.some((h) => !h.ready)) return null;
  const t = stageThroughputs(holders, stages);
  const now = profile(t);
  const readyPer = new Array<number>(stages).fill(0);
  for (const h of holders) readyPer[h.stage]++;
  let best: { move: Move; prof: number[] } | null = null;
  for (const h of [...holders].sort((a, b) => (a.peer < b.peer ? -1 : a.peer > b.peer ? 1 : 0))) {
    if (readyPer[h.stage] < 2) continue;
    for (let to = 0; to < stages; to++) {
      if (to === h.stage) continue;
      const next = [...t];
      next[h.stage] -= h.throughput;
      next[to] += h.throughput;
      const prof = profile(next);
      if (improves(now, prof, hysteresis) <= 0) continue;
      if (!best || improves(best.prof, prof, 0) > 0) best = { move: { peer: h.peer, from: h.stage, to }, prof };
    }
  }
  return best?.move ?? null;
}
