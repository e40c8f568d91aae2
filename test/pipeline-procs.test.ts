/**
 * `tessera pipeline --procs` (issue 19, real sizes): the local run with each stage peer in its own
 * `tessera stage` process, as it runs by default past 20M parameters (a GPT-2-small stage computing
 * in the driver's process stalled every other stage). At toy size here: the run trains through
 * three stage processes, reports per-step seconds, activation and tied-gradient sync bytes, and
 * stops its stage processes when done; flags it cannot honour are refused up front.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { TESSERA_BIN } from '../src/cli/launch.js';

/** Whether a process still exists (signal 0 probes without signalling). */
function exists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test(
  'tessera pipeline --procs trains through one stage process per stage and stops them',
  { timeout: 180_000 },
  async () => {
    const child = spawn(
      process.execPath,
      [
        TESSERA_BIN,
        'pipeline',
        '--procs',
        '--stages',
        '3',
        '--layers',
        '3',
        '--steps',
        '3',
        '--checkpoint-every',
        '0',
        '--eval-batches',
        '1',
        '--json',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '',
      err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-4000)));
    const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    assert.equal(code, 0, err);
    const lines = out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const done = lines.find((l) => l.event === 'done') as {
      steps: number;
      valLoss: number;
      stepSeconds: number[];
      actBytes: number;
      syncBytes: number;
      stagePids: number[];
      stages: string[][];
    };
    assert.ok(done, out);
    assert.equal(done.steps, 3);
    assert.equal(done.stepSeconds.length, 3);
    assert.ok(Number.isFinite(done.valLoss) && done.valLoss > 0);
    assert.ok(done.actBytes > 0 && done.syncBytes > 0);
    // Three stage processes besides this run's own, one peer each, all gone once it is done.
    assert.equal(done.stagePids.length, 3);
    assert.equal(new Set(done.stagePids).size, 3);
    assert.ok(!done.stagePids.includes(child.pid!));
    assert.deepEqual(
      done.stages.map((r) => r.length),
      [1, 1, 1],
    );
    for (const pid of done.stagePids) assert.equal(exists(pid), false, `stage process ${pid} still runs`);
  },
);

test('tessera pipeline --procs refuses what stage processes cannot do', () => {
  const r = spawnSync(
    process.execPath,
    [
      TESSERA_BIN,
      'pipeline',
      '--procs',
      '--stages',
      '2',
      '--layers',
      '2',
      '--replicas',
      '2',
      '--steps',
      '1',
      '--checkpoint-every',
      '0',
    ],
    { encoding: 'utf8' },
  );
  assert.equal(r.status, 1);
  assert.match(r.stderr, /--replicas/);
});
