/**
 * The pipeline schedule model (src/pipeline/schedule.ts): the synchronous schedule leaves the
 * GPipe bubble (a stage is busy about M/(M+S−1) of the time), the asynchronous one keeps the
 * slowest stage busy nearly all the time; work is conserved; a 1-stage pipeline has no bubble.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { simulateSchedule } from '../src/pipeline/schedule.js';

test('sync leaves the GPipe bubble, async fills it; work is conserved', () => {
  const t = { fwd: [1, 1, 1, 1], bwd: [2, 2, 2, 2], link: 0, update: 0 };
  const sync = simulateSchedule(50, 2, t, 'sync'),
    asyn = simulateSchedule(50, 2, t, 'async');
  for (const r of [sync, asyn])
    assert.deepEqual(r.busy, [300, 300, 300, 300], 'every stage does 50 steps × 2 micro-batches × 3 ms');
  // GPipe: per step (M + S − 1)·(f + b) = 15 ms for 6 ms of work per stage.
  assert.ok(Math.abs(sync.msPerStep - 15) < 1e-9, `sync ${sync.msPerStep} ms/step`);
  // Async: bounded by the one-update staleness rule (batch b waits for b−2's update), not by a barrier.
  assert.ok(asyn.msPerStep < 0.55 * sync.msPerStep, `async ${asyn.msPerStep} ms/step (work per stage: 6)`);
  assert.ok(
    Math.min(...asyn.utilization) > 0.75 && Math.max(...sync.utilization) < 0.45,
    `utilization sync ${sync.utilization}, async ${asyn.utilization}`,
  );
  const one = simulateSchedule(10, 4, { fwd: [1], bwd: [1], link: 0, update: 0 }, 'sync');
  assert.ok(Math.abs(one.utilization[0] - 1) < 1e-9, 'one stage: no bubble');
  // Link latency and update time stretch the synchronous step; the async stream hides much of them.
  const slow = { ...t, link: 1, update: 3 };
  assert.ok(simulateSchedule(50, 2, slow, 'async').msPerStep < 0.6 * simulateSchedule(50, 2, slow, 'sync').msPerStep);
  assert.throws(() => simulateSchedule(0, 2, t, 'sync'), /bad schedule/);
});
