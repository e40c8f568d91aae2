/**
 * How busy each stage of a pipeline is under the synchronous schedule (driver.step: all of a
 * step's micro-batches, then a barrier for the update) and the asynchronous one
 * (driver.trainAsync: a continuous stream, at most `window` micro-batches in flight, batch b
 * admitted once batch b−2's update is applied). A discrete-event simulation of the driver's
 * rules, fed with per-stage operation times measured on real stage peers (bench/pipeline.ts),
 * because on one 2-core machine all stages share the CPU and their idle time cannot be observed
 * directly. Pure.
 *
 * Each stage runs one operation at a time and, given a choice, a backward before a forward
 * (1F1B), older micro-batches first. The last stage's forward, loss and backward are one call.
 */
import { InvalidInputError } from '../util/errors.js';

export interface OpTimes {
  /** Per stage: one micro-batch's forward, and backward, in ms (the last stage: both, run as one call). */
  fwd: number[];
  bwd: number[];
  /** One hop driver ↔ stage, ms. */
  link: number;
  /** An update's latency at the driver (tied sum, norms, step calls), ms. */
  update: number;
}

export interface ScheduleResult {
  makespan: number;
  busy: number[];
  utilization: number[];
  msPerStep: number;
}

interface Op {
  b: number;
  stage: number;
  kind: 'F' | 'B';
  dur: number;
}

export function simulateSchedule(
  steps: number,
  micro: number,
  t: OpTimes,
  mode: 'sync' | 'async',
  window = 2 * t.fwd.length,
): ScheduleResult {
  const S = t.fwd.length;
  if (S < 1 || t.bwd.length !== S || !(steps >= 1) || !(micro >= 1) || !(window >= 1))
    throw new InvalidInputError('bad schedule parameters');
  const free = new Array<number>(S).fill(0),
    busy = new Array<number>(S).fill(0);
  const updated: number[] = []; // when batch b's update is applied (known once computed)
  const finished: number[] = []; // completion time of each micro-batch, in launch order
  const batchDone = new Array<number>(steps).fill(0),
    left = new Array<number>(steps).fill(micro);
  // A micro-batch's operations: forward 0..S−1 (the last stage's includes its backward), backward S−2..0.
  const chain = (b: number): Op[] => [
    ...t.fwd.map((f, i): Op => ({ b, stage: i, kind: 'F', dur: i === S - 1 ? f + t.bwd[i] : f })),
    ...Array.from({ length: S - 1 }, (_, k): Op => ({ b, stage: S - 2 - k, kind: 'B', dur: t.bwd[S - 2 - k] })),
  ];
  const live: { ops: Op[]; next: number; ready: number; launch: number }[] = [];
  let launched = 0,
    nextUpdate = 0;
  for (;;) {
    // Launch micro-batches, in order, as soon as their gate is known: sync, the previous step's
    // update (a step's micro-batches all at once); async, batch b−2's update and a free window slot.
    for (;;) {
      if (launched >= steps * micro) break;
      const b = Math.floor(launched / micro);
      let gate: number | undefined;
      if (mode === 'sync') gate = b === 0 ? 0 : updated[b - 1];
      else {
        const lag = b < 2 ? 0 : updated[b - 2];
        const slot = launched < window ? 0 : finished[launched - window];
        gate = lag === undefined || slot === undefined ? undefined : Math.max(lag, slot);
      }
      if (gate === undefined) break;
      live.push({ ops: chain(b), next: 0, ready: gate + t.link, launch: launched++ });
    }
    // The next operation: earliest start; then backward before forward; then the older micro-batch.
    let best: (typeof live)[number] | null = null,
      bestStart = Infinity;
    for (const c of live) {
      if (c.next >= c.ops.length) continue;
      const op = c.ops[c.next];
      const start = Math.max(c.ready, free[op.stage]);
      const rank = (x: (typeof live)[number]) => (x.ops[x.next].kind === 'B' ? 0 : 1);
      if (
        start < bestStart ||
        (start === bestStart && best && (rank(c) < rank(best) || (rank(c) === rank(best) && c.launch < best.launch)))
      ) {
        best = c;
        bestStart = start;
      }
    }
    if (!best) break;
    const op = best.ops[best.next++];
    free[op.stage] = bestStart + op.dur;
    busy[op.stage] += op.dur;
    best.ready = free[op.stage] + t.link;
    if (best.next < best.ops.length) continue;
    finished[best.launch] = best.ready;
    batchDone[op.b] = Math.max(batchDone[op.b], best.ready);
    left[op.b]--;
    // Updates apply in batch order, each once its batch is back.
    while (nextUpdate < steps && left[nextUpdate] === 0) {
      updated[nextUpdate] = Math.max(batchDone[nextUpdate], nextUpdate > 0 ? updated[nextUpdate - 1] : 0) + t.update;
      nextUpdate++;
    }
  }
  const makespan = updated[steps - 1];
  return { makespan, busy, utilization: busy.map((x) => x / makespan), msPerStep: makespan / steps };
}
