/**
 * Issue 15, item 4: the reducer's cost per event with a large state. One peer of a 1024-member
 * roster in round 0 holds `--buffered` round-1 messages (~200 B of JSON each, 4 per member by
 * default, the size of the old 4n+16 buffer), then takes `--events` current-round updates from
 * members; prints ms per event. `--module` runs another build of round.js (e.g. the code before
 * the change, compiled in scratch/), so both are measured by the same script.
 * Usage: node dist/bench/round-step.js [--buffered N] [--events N] [--module path/to/round.js]
 *
 * Measured (2 shared cores, Node 24, n = 1024, 4096 buffered updates = 889 KB of JSON, 300
 * events): before (structuredClone per step, commit 7edebe4, compiled in scratch/) 11.7 ms/event
 * (4.3 ms over the first 50; it grows as held updates accumulate), filling the buffer 16.8 s;
 * after (copy-on-write) 0.05 ms/event, filling 0.9 s. With an empty buffer: 1.16 → 0.12 ms.
 */
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { sha256Hex } from '../src/util/hash.js';

type R = typeof import('../src/swarm/round.js');

const arg = (name: string, d: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : d;
};

async function main(): Promise<void> {
  const mod = arg('module', '');
  const R: R = mod ? ((await import(pathToFileURL(resolve(mod)).href)) as R) : await import('../src/swarm/round.js');
  const n = Number(arg('n', '1024'));
  const buffered = Number(arg('buffered', String(4 * n)));
  const events = Number(arg('events', '300'));
  const roster = Array.from({ length: n }, (_, i) => `peer-${String(i).padStart(5, '0')}`);
  const self = roster[0];
  const params = {
    runId: sha256Hex('bench'),
    innerSteps: 10,
    batch: 4,
    numShards: 64,
    trainMs: 1_000_000,
    submitMs: 2_000_000,
    commitMs: 1000,
    quorum: 1,
    minPeers: 2,
    maxMissedRounds: 3,
    genesisWeightsHash: sha256Hex('genesis'),
    retryMs: 1000,
  };
  let s = R.init({ self, params, now: 0, genesis: { roster } }).state;
  const t0 = performance.now();
  let kept = 0;
  for (let i = 0; i < buffered; i++) {
    const from = roster[1 + (i % (n - 1))];
    const msg = {
      type: 'update',
      from,
      round: 1,
      baseHash: sha256Hex('next base'),
      updateHash: sha256Hex(`future ${i}`),
      steps: 10,
    } as const;
    const r = R.step(s, { type: 'message', msg });
    s = r.state;
    if (r.rejected.length === 0) kept++;
  }
  const fill = performance.now() - t0;
  const bytes = JSON.stringify(s.future).length;
  const t1 = performance.now();
  for (let i = 0; i < events; i++) {
    const from = roster[1 + (i % (n - 1))];
    const msg = {
      type: 'update',
      from,
      round: 0,
      baseHash: s.trainBase,
      updateHash: sha256Hex(`u${i}`),
      steps: 10,
    } as const;
    s = R.step(s, { type: 'message', msg }).state;
  }
  const per = (performance.now() - t1) / events;
  console.log(
    JSON.stringify({
      module: mod || 'src/swarm/round.ts',
      n,
      buffered: kept,
      bufferedBytes: bytes,
      fillMs: Math.round(fill),
      events,
      msPerEvent: Number(per.toFixed(4)),
    }),
  );
}

await main();
