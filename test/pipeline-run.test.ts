/**
 * A pipeline run across processes (issue 8), as users start one: `tessera pipeline --write-run`,
 * stage peers with `tessera stage` (each picks the least-served stage itself and initializes only
 * that stage), a driver with `tessera pipeline --run`. Midway the only peer of one stage is
 * killed; a fresh `tessera stage --fresh` for that stage is restored from the checkpoint shares
 * and the run finishes. A second driver then runs with `--rebuild prefer`: the stage's peer is
 * killed again and another fresh peer is rebuilt from its neighbours (rebuild.ts).
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { splitStages, stageSpecs } from '../src/model/stage.js';

const bin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'tessera.js');
const root = mkdtempSync(join(tmpdir(), 'tessera-pipe-run-'));
const procs: ChildProcess[] = [];
after(() => {
  for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
});

interface Proc {
  child: ChildProcess;
  lines: Record<string, unknown>[];
  err: string[];
}
function start(args: string[]): Proc {
  const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(child);
  const p: Proc = { child, lines: [], err: [] };
  let buf = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      try {
        p.lines.push(JSON.parse(buf.slice(0, i)) as Record<string, unknown>);
      } catch {
        /* not JSON */
      }
      buf = buf.slice(i + 1);
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    p.err.push(d);
    if (p.err.length > 100) p.err.shift();
  });
  return p;
}
async function until(what: string, cond: () => boolean, ms: number, ps: Proc[]): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms)
      throw new Error(
        `timed out waiting for ${what}\n${ps.map((p, i) => `#${i}: ${JSON.stringify(p.lines.slice(-3))}\n${p.err.join('').slice(-600)}`).join('\n')}`,
      );
    await new Promise((r) => setTimeout(r, 100));
  }
}

test(
  'stage peers choose their stages, a driver trains through them, a killed stage is restored on a fresh peer; another driver rebuilds it from its neighbours',
  { timeout: 300_000 },
  async () => {
    const run = join(root, 'pipe.json');
    const w = spawnSync(
      process.execPath,
      [
        bin,
        'pipeline',
        '--write-run',
        run,
        '--stages',
        '3',
        '--layers',
        '3',
        '--codec',
        'int8',
        '--checkpoint-every',
        '5',
        // The two drivers below: the only peers the stage peers will serve.
        '--driver-dir',
        join(root, 'driver'),
        '--driver-dir',
        join(root, 'driver2'),
        // `tessera generate --swarm` below runs from a throwaway identity.
        '--open-inference',
        '--json',
      ],
      { encoding: 'utf8' },
    );
    assert.equal(w.status, 0, w.stderr);
    const { manifest } = JSON.parse(w.stdout) as {
      manifest: { model: { vocabSize: number; ctx: number; dim: number; layers: number; heads: number } };
    };
    // Stage peers join one by one: each takes the stage with the lowest total throughput.
    const peers: Proc[] = [];
    for (let i = 0; i < 3; i++) {
      const boot = peers.length ? ['--bootstrap', (peers[0].lines[0].addrs as string[])[0]] : [];
      const p = start(['stage', '--run', run, '--data-dir', join(root, `s${i}`), ...boot, '--json']);
      peers.push(p);
      await until(`stage peer ${i} serving`, () => p.lines.some((l) => l.event === 'serving'), 30_000, peers);
      await new Promise((r) => setTimeout(r, 2500)); // its first announcements reach the others
    }
    const stageOf = (p: Proc) => p.lines.find((l) => l.event === 'serving')!.stage as number;
    assert.deepEqual(peers.map(stageOf).sort(), [0, 1, 2], 'three joiners spread over the three stages');
    // Containment: every stage peer holds exactly its own stage's tensors.
    const specs = splitStages(manifest.model, 3);
    for (const p of peers)
      assert.deepEqual(
        p.lines[0].tensors,
        stageSpecs(manifest.model, specs[stageOf(p)]).map((t) => t.name),
      );

    const driver = start([
      'pipeline',
      '--run',
      run,
      '--data-dir',
      join(root, 'driver'),
      '--bootstrap',
      (peers[0].lines[0].addrs as string[])[0],
      '--steps',
      '36',
      '--json',
    ]);
    await until('step 10', () => driver.lines.some((l) => l.event === 'step' && (l.step as number) >= 10), 60_000, [
      driver,
      ...peers,
    ]);
    const victim = peers.find((p) => stageOf(p) === 1)!;
    victim.child.kill('SIGKILL');
    const fresh = start([
      'stage',
      '--run',
      run,
      '--data-dir',
      join(root, 'fresh'),
      '--bootstrap',
      (peers.find((p) => p !== victim)!.lines[0].addrs as string[])[0],
      '--stage',
      '1',
      '--fresh',
      '--json',
    ]);
    await until('the run to finish', () => driver.lines.some((l) => l.event === 'done'), 150_000, [
      driver,
      fresh,
      ...peers,
    ]);
    const done = driver.lines.find((l) => l.event === 'done') as {
      steps: number;
      valLoss: number;
      recoveries: { stage: number; fromStep: number; ms: number }[];
      sample: string;
      usagePerStage: number[];
    };
    assert.equal(done.steps, 36);
    assert.ok(done.valLoss < 6.0, `it learned (val ${done.valLoss})`);
    assert.equal(done.recoveries.length, 1);
    assert.equal(done.recoveries[0].stage, 1);
    assert.equal(done.recoveries[0].fromStep % 5, 0, 'restored to a checkpoint');
    assert.ok(done.sample.length > 0 && done.usagePerStage.every((u) => u > 0));
    // Inference through the stage holders from another process: `tessera generate --swarm`.
    const gen = spawnSync(
      process.execPath,
      [
        bin,
        'generate',
        '--swarm',
        run,
        '--bootstrap',
        (peers[0].lines[0].addrs as string[])[0],
        '--prompt',
        'The jury',
        '--max-tokens',
        '8',
        '--json',
      ],
      { encoding: 'utf8', timeout: 60_000 },
    );
    assert.equal(gen.status, 0, gen.stderr);
    const gj = JSON.parse(gen.stdout) as { completion: string; tokens: number; usagePerStage: number[] };
    assert.equal(gj.tokens, 8);
    assert.ok(gj.usagePerStage.length === 3 && gj.usagePerStage.every((u) => u > 0), 'every stage metered');
    process.stderr.write(
      `pipeline-run: stages ${peers.map(stageOf).join(',')}; stage 1 restored from step ${done.recoveries[0].fromStep} in ${done.recoveries[0].ms.toFixed(0)} ms; val ${done.valLoss.toFixed(3)}\n`,
    );

    // A second driver on the same stage peers, told to rebuild rather than restore: stage 1's peer
    // dies again, and another fresh process gets stage 1 as the weighted mean of stages 0 and 2,
    // sent to it in masked parts by those two processes (they dial it themselves).
    const bootAddr = (peers.find((p) => p !== victim)!.lines[0].addrs as string[])[0];
    const driver2 = start([
      'pipeline',
      '--run',
      run,
      '--data-dir',
      join(root, 'driver2'),
      '--bootstrap',
      bootAddr,
      '--steps',
      '16',
      '--rebuild',
      'prefer',
      '--json',
    ]);
    await until(
      'second driver: step 8',
      () => driver2.lines.some((l) => l.event === 'step' && (l.step as number) >= 8),
      60_000,
      [driver2, fresh, ...peers],
    );
    fresh.child.kill('SIGKILL');
    const fresh2 = start([
      'stage',
      '--run',
      run,
      '--data-dir',
      join(root, 'fresh2'),
      '--bootstrap',
      bootAddr,
      '--stage',
      '1',
      '--fresh',
      '--json',
    ]);
    await until('the second run to finish', () => driver2.lines.some((l) => l.event === 'done'), 120_000, [
      driver2,
      fresh2,
      ...peers,
    ]);
    const done2 = driver2.lines.find((l) => l.event === 'done') as {
      steps: number;
      valLoss: number;
      recoveries: { stage: number; how: string; ms: number; mix: number[] }[];
    };
    assert.equal(done2.steps, 16);
    assert.deepEqual(
      done2.recoveries.map((r) => [r.stage, r.how]),
      [[1, 'neighbours']],
    );
    assert.ok(Number.isFinite(done2.valLoss) && done2.valLoss < 6.0, `it still learns (val ${done2.valLoss})`);
    process.stderr.write(
      `pipeline-run: stage 1 rebuilt from stages 0 and 2 (weights ${done2.recoveries[0].mix.map((x) => x.toFixed(2)).join(' : ')}) on a fresh process in ${done2.recoveries[0].ms.toFixed(0)} ms; val ${done2.valLoss.toFixed(3)}\n`,
    );
    for (const p of [...peers, fresh2]) if (p.child.exitCode === null) p.child.kill('SIGTERM');
  },
);
