/**
 * Runtime placement in a live pipeline (issue 8), in one process over real libp2p: five stage
 * peers (`runStagePeer`, each its own host and IPFS store) with three crowding stage 0. While a
 * driver trains, exactly one peer moves (placement.ts: only with hysteresis, never emptying a
 * stage), drops its old stage, and the driver syncs it into its new stage between steps
 * (`reconcile`): it then holds the same bits as the replica it joined and only that stage's
 * tensors. Every peer's stage is found in the DHT (provider records under the stage's key), the
 * mover's under its new stage too. Then the original replica of that stage is killed mid-run: no
 * step is lost.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { loadKernels } from '../src/kernels/index.js';
import { createHost } from '../src/net/host.js';
import { splitStages, stageSpecs } from '../src/model/stage.js';
import { PipelineDriver } from '../src/pipeline/driver.js';
import { StageClient, libp2pTransport } from '../src/pipeline/stage-client.js';
import {
  defaultPipeManifest,
  discoverStages,
  findStagePeers,
  listenToRun,
  pipeManifest,
  reconcile,
  runStagePeer,
  type StagePeer,
} from '../src/pipeline/run.js';
import { Rng } from '../src/util/rng.js';
import type { Batch } from '../src/data/batches.js';

const root = mkdtempSync(join(tmpdir(), 'tessera-rebalance-'));
after(() => rmSync(root, { recursive: true, force: true }));
const cfg = { vocabSize: 64, ctx: 16, dim: 32, layers: 3, heads: 4 };

test(
  'a crowded stage gives one peer to a weaker one, the driver syncs it, and a replica killed later costs no step',
  { timeout: 120_000 },
  async () => {
    const { manifest: m, runId } = pipeManifest({
      ...defaultPipeManifest({ stages: 3, layers: 3, codec: { id: 'int8' }, checkpointEvery: 0 }),
      model: cfg,
      batch: 4,
    });
    const k = loadKernels({ threads: 1 });
    const logger = pino({ level: 'silent' });
    const peers: StagePeer[] = [];
    // The driver's identity first: the stage peers admit it (and only it) as the run's driver.
    const host = await createHost({ dataDir: join(root, 'driver'), logger });
    const start = async (name: string, stage: number) => {
      const boot = peers.length ? [peers[0].host.multiaddrs()[0]] : [];
      const p = await runStagePeer({
        manifest: m,
        runId,
        dataDir: join(root, name),
        kernels: k,
        listen: ['/ip4/127.0.0.1/tcp/0'],
        bootstrap: boot,
        stage,
        settleMs: 200,
        logger,
        throughput: 100,
        hysteresis: 0.2,
        moveCooldownMs: 4000,
        drivers: [host.peerId],
      });
      peers.push(p);
      return p;
    };
    const run = listenToRun(host, runId, m.stages);
    try {
      for (const [name, stage] of [
        ['p0', 0],
        ['p1', 1],
        ['p2', 2],
        ['p3', 0],
        ['p4', 0],
      ] as const)
        await start(name, stage);
      await host.dial(peers[0].host.multiaddrs()[0], { signal: AbortSignal.timeout(5000) });
      const stages = await discoverStages(host, run.dir, { timeoutMs: 20_000 });
      const driver = new PipelineDriver({
        host,
        stages,
        dim: cfg.dim,
        vocabSize: cfg.vocabSize,
        codec: m.codec,
        addrsOf: (p) => run.dir.byPeer.get(p)?.addrs ?? [],
      });
      const rng = new Rng(3);
      const batch = (): Batch => {
        const inputs = new Int32Array(4 * cfg.ctx),
          targets = new Int32Array(4 * cfg.ctx);
        for (let i = 0; i < inputs.length; i++) {
          inputs[i] = rng.nextInt(cfg.vocabSize);
          targets[i] = (inputs[i] * 7 + 3) % cfg.vocabSize;
        }
        return { inputs, targets };
      };
      const losses: number[] = [];
      const admitted: { stage: number; peer: string }[] = [];
      let steps = 0;
      const train = async (until: () => boolean, maxMs: number) => {
        const t0 = Date.now();
        while (!until() && Date.now() - t0 < maxMs) {
          const rc = await reconcile(driver, host, run.dir);
          admitted.push(...rc.admitted);
          losses.push((await driver.step(batch(), 4, cfg.ctx, 2, 3e-3)).loss);
          steps++;
          await new Promise((r) => setTimeout(r, 20));
        }
      };
      const stage1 = () => driver.replicas()[1];
      // Three on stage 0, one each on 1 and 2: moving one of stage 0's to stage 1 lifts the profile
      // [100, 100, 300] → [100, 200, 200]; after that, no move gains 20%.
      await train(() => stage1().length === 2, 40_000);
      const moves = peers.flatMap((p) => p.moves.map((mv) => ({ ...mv, peer: p.host.peerId })));
      assert.equal(moves.length, 1, `one move: ${JSON.stringify(moves)}`);
      assert.equal(moves[0].from, 0);
      assert.equal(moves[0].to, 1);
      const mover = peers.find((p) => p.host.peerId === moves[0].peer)!;
      assert.deepEqual(
        driver.replicas().map((r) => r.length),
        [2, 2, 1],
      );
      assert.ok(stage1().includes(mover.host.peerId));
      assert.deepEqual(
        admitted.map((a) => [a.stage, a.peer]),
        [[1, mover.host.peerId]],
      );
      // The mover holds stage 1 only, with the same bits as the replica it joined.
      assert.deepEqual(
        mover.server.stage.tensorNames(),
        stageSpecs(cfg, splitStages(cfg, 3)[1]).map((t) => t.name),
      );
      const client = new StageClient(libp2pTransport(host));
      const info = (p: string) => client.control(p, 'info', {}, { signal: AbortSignal.timeout(5000) });
      await train(() => false, 1500);
      const [a, b] = await Promise.all(stage1().map(info));
      assert.equal(a.digest, b.digest, 'replicas of stage 1 hold identical weights');
      assert.equal(a.step, b.step);
      assert.equal(a.index, 1);
      // Stable: more rebalancing periods pass without another move.
      await train(() => false, 5000);
      assert.equal(
        peers.reduce((t, p) => t + p.moves.length, 0),
        1,
        'no further move (no oscillation)',
      );

      // The DHT knows who serves each stage (the mover under its new stage; its old record may linger).
      for (let i = 0; i < 3; i++) {
        const want = driver.replicas()[i];
        let found: string[] = [];
        for (let t = 0; t < 10 && !want.every((p) => found.includes(p)); t++) {
          found = (await findStagePeers(host, runId, i, { signal: AbortSignal.timeout(3000) })).map((f) => f.peer);
          if (!want.every((p) => found.includes(p))) await new Promise((r) => setTimeout(r, 500));
        }
        assert.ok(
          want.every((p) => found.includes(p)),
          `DHT providers of stage ${i}: ${JSON.stringify(found)} ⊇ ${JSON.stringify(want)}`,
        );
      }

      // Kill stage 1's original peer: its replica (the mover) carries on, no step lost.
      const original = peers.find((p) => p.host.peerId === stage1().find((id) => id !== mover.host.peerId))!;
      const before = steps;
      await original.host.stop();
      await train(() => steps >= before + 10, 30_000);
      assert.equal(steps, before + 10, 'every step after the kill completed');
      assert.deepEqual(driver.replicas()[1], [mover.host.peerId]);
      assert.ok(driver.dropped.some((d) => d.peer === original.host.peerId));
      assert.equal(driver.recoveries.length, 0, 'no recovery was needed');
      const early = losses.slice(0, 5).reduce((x, y) => x + y) / 5,
        late = losses.slice(-5).reduce((x, y) => x + y) / 5;
      assert.ok(late < early, `it learned (${early.toFixed(3)} → ${late.toFixed(3)})`);
      process.stderr.write(
        `pipeline-rebalance: ${steps} steps; move ${moves[0].from}→${moves[0].to}; sync ${JSON.stringify(admitted.map((x) => x.stage))}; loss ${early.toFixed(3)} → ${late.toFixed(3)}\n`,
      );
    } finally {
      run.close();
      for (const p of peers) await p.stop().catch(() => undefined);
      await host.stop();
    }
  },
);
