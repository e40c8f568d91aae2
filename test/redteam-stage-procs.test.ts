/**
 * Red team (issue 17), across processes: three `tessera stage` processes serve a pipeline run
 * whose manifest names its driver; a hostile libp2p host (not the driver) calls every operation
 * that reveals or changes weights, optimizer state, memory or disk on every stage process. Each
 * is refused as not admitted (the message says so: it is the authorisation that refused it, not
 * a malformed request), nothing with a body comes back, `info` alone answers, and the real driver
 * then trains through the same stage processes. test/redteam-stage.test.ts measures, in process,
 * what each call gave an attacker before the fix.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { createHost, type Host } from '../src/net/index.js';
import { StageClient, libp2pTransport } from '../src/pipeline/stage-client.js';
import type { StageOp } from '../src/pipeline/stage-protocol.js';
import { StageCallError } from '../src/pipeline/rpc.js';
import { TESSERA_BIN } from '../src/cli/launch.js';

const root = mkdtempSync(join(tmpdir(), 'tessera-redteam-stage-procs-'));
const procs: ChildProcess[] = [];
let attacker: Host | null = null;
after(async () => {
  for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
  await attacker?.stop().catch(() => undefined);
  rmSync(root, { recursive: true, force: true });
});

interface Proc {
  child: ChildProcess;
  lines: Record<string, unknown>[];
  err: string[];
}
function start(args: string[]): Proc {
  const child = spawn(process.execPath, [TESSERA_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
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
  child.stderr!.setEncoding('utf8').on('data', (d: string) => p.err.push(d));
  return p;
}
async function until(what: string, cond: () => boolean, ms: number, ps: Proc[]): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms)
      throw new Error(`timed out waiting for ${what}\n${ps.map((p) => p.err.join('').slice(-400)).join('\n')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test(
  'a hostile peer calls every stage operation on real stage processes: all refused but info; the driver then trains',
  { timeout: 240_000 },
  async () => {
    const run = join(root, 'pipe.json');
    const w = spawnSync(
      process.execPath,
      [
        TESSERA_BIN,
        'pipeline',
        '--write-run',
        run,
        '--stages',
        '3',
        '--layers',
        '3',
        '--codec',
        'int8',
        '--driver-dir',
        join(root, 'driver'),
        '--json',
      ],
      { encoding: 'utf8' },
    );
    assert.equal(w.status, 0, w.stderr);
    const peers: Proc[] = [];
    for (let i = 0; i < 3; i++) {
      const boot = peers.length ? ['--bootstrap', (peers[0].lines[0].addrs as string[])[0]] : [];
      const p = start(['stage', '--run', run, '--data-dir', join(root, `s${i}`), ...boot, '--json']);
      peers.push(p);
      await until(`stage peer ${i} serving`, () => p.lines.some((l) => l.event === 'serving'), 30_000, peers);
      await new Promise((r) => setTimeout(r, 2500));
    }
    const stageOf = (p: Proc) => p.lines.find((l) => l.event === 'serving')!.stage as number;
    const idOf = (p: Proc) => {
      const a = (p.lines[0].addrs as string[])[0];
      return a.slice(a.lastIndexOf('/p2p/') + 5);
    };
    const byStage = [0, 1, 2].map((s) => peers.find((p) => stageOf(p) === s)!);
    assert.ok(byStage.every(Boolean), 'three stages, one peer each');

    attacker = await createHost({ dataDir: join(root, 'attacker'), logger: pino({ level: 'silent' }) });
    for (const p of peers)
      await attacker.dial((p.lines[0].addrs as string[])[0], { signal: AbortSignal.timeout(5000) });
    const c = new StageClient(libp2pTransport(attacker));
    const T = 8;
    const tokens = new Uint8Array(new Int32Array(T).fill(1).buffer);
    const calls: Array<[number, StageOp, Record<string, unknown>, Uint8Array?]> = [
      [1, 'lend', { id: 'aa'.repeat(8), to: attacker.peerId, seed: '07'.repeat(32), sign: 1, weight: 1 }],
      [0, 'save', {}],
      [0, 'embed', { set: false }],
      [1, 'delta', { codec: 'fp32' }],
      [1, 'grads', { set: false }],
      [2, 'tied', { set: false }],
      [1, 'norm', {}],
      [2, 'step', { lr: 10, globalNorm: 0 }],
      [1, 'reset', {}],
      [1, 'fold', { keep: [] }],
      [1, 'hold', { stage: 2, shares: ['bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy'] }],
      [0, 'fwd', { micro: 1, B: 1, T, train: true }, tokens],
      [0, 'fwd', { micro: 2, B: 1, T, train: false }, tokens],
    ];
    const outcomes: string[] = [];
    for (const [s, op, args, body] of calls) {
      const peer = idOf(byStage[s]);
      try {
        await c.call(peer, op, args as never, body ?? new Uint8Array(0), {
          signal: AbortSignal.timeout(15_000),
          maxBody: 1 << 26,
        });
        outcomes.push(`${op}@${s}: answered`);
        assert.fail(`stage ${s} answered "${op}" from a peer that is not the run's driver`);
      } catch (err) {
        if (!(err instanceof StageCallError)) throw err;
        assert.ok(err.refused, `"${op}" on stage ${s} is refused, not failed: ${err.message}`);
        assert.match(err.message, /not admitted/, `"${op}" is refused by the authorisation: ${err.message}`);
        outcomes.push(`${op}@${s}: refused`);
      }
    }
    const info = await c.call(idOf(byStage[1]), 'info', {} as never, new Uint8Array(0), {
      signal: AbortSignal.timeout(15_000),
      maxBody: 1 << 20,
    });
    assert.equal(info.body.length, 0, 'info carries no tensor body');
    console.log(`redteam-stage-procs: ${outcomes.join(', ')}; info answered`);

    // The admitted driver still trains through the same processes.
    const driver = start([
      'pipeline',
      '--run',
      run,
      '--data-dir',
      join(root, 'driver'),
      '--bootstrap',
      (peers[0].lines[0].addrs as string[])[0],
      '--steps',
      '10',
      '--json',
    ]);
    await until('the driver to finish', () => driver.child.exitCode !== null, 120_000, [driver, ...peers]);
    assert.equal(driver.child.exitCode, 0, driver.err.join('').slice(-800));
    const done = driver.lines.find((l) => l.event === 'done' || typeof l.valLoss === 'number');
    assert.ok(done, `the driver reported its run (${JSON.stringify(driver.lines.slice(-2))})`);
  },
);
