/**
 * Issue 8's measurement: pipeline training across S stage peers (libp2p on loopback, a driver
 * holding the data) against single-process training of the same model on the same batches,
 * at an equal token budget, per activation codec. Prints a markdown table and one JSON line.
 * A last row trains 2 replica pipelines that sync with DiLoCo every H steps (diloco.ts), each on
 * half of the same batches: the same token budget, split across replicas.
 * Usage: node dist/bench/pipeline.js [--steps N] [--stages S] [--micro M] [--codecs fp32,int8,...]
 *        [--async 0,1 (look-aheads; none: skip)] [--diloco H (0: skip)] [--outer LR,MOMENTUM] [--diloco-codec int8|sparse|fp32]
 *        [--recovery K (0: skip)] [--layers L (default 4)]
 * `--recovery K`: stage 1's only peer dies before step K, and a fresh peer brings it back from a
 * checkpoint (every 25 steps), from its neighbours (CheckFree, rebuild.ts), or from genesis (a
 * checkpoint of step 0 only); fp32 activations; final validation loss against no failure.
 */
import { pathToFileURL } from 'node:url';
import { loadKernels } from '../src/kernels/index.js';
import { loadCorpus, prepareDataset } from '../src/data/index.js';
import { BatchSampler, evalBatches, type Batch } from '../src/data/batches.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { GPT } from '../src/model/gpt.js';
import { AdamW, DEFAULT_ADAMW } from '../src/train/adamw.js';
import { startLocalPipeline } from '../src/pipeline/local.js';
import { exactBytes, type ActCodecSpec } from '../src/pipeline/act-codec.js';
import { DilocoPipelines } from '../src/pipeline/diloco.js';
import { simulateSchedule, type OpTimes } from '../src/pipeline/schedule.js';
import { callStage } from '../src/pipeline/rpc.js';
import type { CodecId } from '../src/swarm/compress/index.js';

const arg = (name: string, d: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : d;
};

async function main(): Promise<void> {
  const steps = Number(arg('steps', '300')),
    S = Number(arg('stages', '4')),
    M = Number(arg('micro', '2'));
  const config = { vocabSize: 512, ctx: 64, dim: 64, layers: Number(arg('layers', '4')), heads: 4 };
  const B = 8,
    T = config.ctx,
    lr = 3e-3;
  const ds = prepareDataset({ corpus: loadCorpus('brown'), vocabSize: config.vocabSize, cacheDir: defaultCacheDir() });
  const sampler = new BatchSampler(ds.train, B, T, 7n);
  const train: Batch[] = Array.from({ length: steps }, () => sampler.next());
  const val = [...evalBatches(ds.val, B, T, 16)];
  const k = loadKernels({ threads: 1 });
  const init = new GPT(config, k);
  init.init(1);
  const genesis = init.params.slice();

  // Single process: the same batches, the same micro-batch split, the same optimizer.
  const t0 = performance.now();
  const ref = new GPT(config, k);
  ref.params.set(genesis);
  const opt = new AdamW(config, DEFAULT_ADAMW, k);
  const n = (B / M) * T;
  for (const b of train) {
    ref.zeroGrad();
    for (let m = 0; m < M; m++)
      ref.forwardBackward(
        b.inputs.subarray(m * n, (m + 1) * n),
        b.targets.subarray(m * n, (m + 1) * n),
        B / M,
        T,
        1 / M,
      );
    opt.update(ref.params, ref.grads, lr);
  }
  const refVal = val.reduce((t, b) => t + ref.loss(b.inputs, b.targets, B, T), 0) / val.length;
  const refSec = (performance.now() - t0) / 1000;

  // `bottleneck:K` = a learned bottleneck of width K at every boundary, its K values sent as int8.
  const codecs: (ActCodecSpec & { bottleneck?: number })[] = arg('codecs', 'fp32,fp16,int8,lowrank:16')
    .split(',')
    .filter((c) => c && c !== 'none')
    .map((c) => {
      const [id, kk] = c.split(':');
      if (id === 'bottleneck') return { id: 'int8', bottleneck: Number(kk) };
      return kk ? { id: id as 'lowrank', k: Number(kk) } : { id: id as ActCodecSpec['id'] };
    });
  const rows: Record<string, unknown>[] = [];
  let times: OpTimes | null = null;
  for (const { bottleneck, ...codec } of codecs) {
    const lp = await startLocalPipeline({
      config,
      stages: S,
      kernels: k,
      adamw: DEFAULT_ADAMW,
      codec,
      genesis,
      ...(bottleneck ? { bottleneck } : {}),
    });
    const t1 = performance.now();
    let act = 0,
      sync = 0;
    try {
      for (const b of train) {
        const r = await lp.driver.step(b, B, T, M, lr);
        act += r.actBytes;
        sync += r.syncBytes;
      }
      // Measured operation times on these stage peers, for the schedule model below.
      if (!times) {
        const st = lp.servers.map((row) => row[0].stats);
        // A hop's cost: the mean round trip of a call that computes next to nothing.
        const t2 = performance.now();
        for (let i = 0; i < 20; i++)
          await callStage(lp.driverHost, lp.peerOf(lp.servers[1][0]), { op: 'info' }, new Uint8Array(0), {
            maxBody: 0,
            signal: AbortSignal.timeout(5000),
          });
        const rtt = (performance.now() - t2) / 20;
        times = {
          fwd: st.map((x, i) => (i === S - 1 ? x.ms.last / x.count.last : x.ms.fwd / x.count.fwd)),
          bwd: st.map((x, i) => (i === S - 1 ? 0 : x.ms.bwd / x.count.bwd)),
          link: rtt,
          update: lp.driver.updateMs / lp.driver.updates,
        };
      }
      const v = await lp.driver.evaluate(val, B, T);
      const tokens = steps * B * T;
      // Bytes crossing ONE stage boundary per token, both directions (activation forward, its gradient back).
      const perBoundary = (2 * exactBytes(codec, n, bottleneck ?? config.dim)) / n;
      rows.push({
        codec: bottleneck ? `learned bottleneck k=${bottleneck}, int8` : codec.id + (codec.k ? ` k=${codec.k}` : ''),
        valLoss: v,
        gapPct: 100 * (v / refVal - 1),
        boundaryBytesPerToken: perBoundary,
        reduction: (2 * 4 * config.dim) / perBoundary,
        driverActBytesPerToken: act / tokens,
        syncBytesPerStep: sync / steps,
        seconds: (performance.now() - t1) / 1000,
      });
    } finally {
      await lp.close();
    }
  }
  // Asynchronous pipelining (driver.trainAsync): no barrier between steps; fp32 activations, so
  // the gap to the synchronous fp32 row is the staleness alone; τ = the look-ahead.
  for (const tau of arg('async', '0,1')
    .split(',')
    .filter((x) => x !== '' && x !== 'none')
    .map(Number)) {
    const lp = await startLocalPipeline({
      config,
      stages: S,
      kernels: k,
      adamw: DEFAULT_ADAMW,
      codec: { id: 'fp32' },
      genesis,
    });
    const t1 = performance.now();
    try {
      await lp.driver.trainAsync((b) => train[b], steps, B, T, M, lr, { lookahead: tau });
      const act = lp.driver.actBytes;
      const v = await lp.driver.evaluate(val, B, T);
      const perBoundary = (2 * exactBytes({ id: 'fp32' }, n, config.dim)) / n;
      rows.push({
        codec: `fp32, asynchronous${tau > 0 ? `, look-ahead τ=${tau}` : ''}`,
        valLoss: v,
        gapPct: 100 * (v / refVal - 1),
        boundaryBytesPerToken: perBoundary,
        reduction: (2 * 4 * config.dim) / perBoundary,
        driverActBytesPerToken: act / (steps * B * T),
        syncBytesPerStep: lp.driver.syncBytes / steps,
        seconds: (performance.now() - t1) / 1000,
      });
    } finally {
      await lp.close();
    }
  }
  const H = Number(arg('diloco', '25'));
  if (H > 0) {
    // 2 replicas per stage = 2 pipelines, each on every other batch; int8 activations.
    const [olr, omom] = arg('outer', '1,0').split(',').map(Number);
    const dcodec = arg('diloco-codec', 'int8') as CodecId;
    const codec: ActCodecSpec = { id: 'int8' };
    const lp = await startLocalPipeline({
      config,
      stages: S,
      replicas: 2,
      kernels: k,
      adamw: DEFAULT_ADAMW,
      codec,
      genesis,
    });
    const t1 = performance.now();
    try {
      const dl = new DilocoPipelines({
        host: lp.driverHost,
        stages: lp.servers.map((row) => row.map((x) => lp.peerOf(x))),
        dim: config.dim,
        vocabSize: config.vocabSize,
        codec,
        diloco: { every: H, codec: dcodec, outer: { lr: olr, momentum: omom } },
      });
      let j = 0;
      for (let s = 0; s < steps / 2; s++, j += 2) await dl.step((r) => train[j + r], B, T, M, lr);
      if ((steps / 2) % H !== 0) await dl.sync();
      const v = await dl.evaluate(val, B, T);
      const perBoundary = (2 * exactBytes(codec, n, config.dim)) / n;
      rows.push({
        codec: `int8, 2 replicas × DiLoCo H=${H} (${dcodec}, outer ${olr}/${omom})`,
        valLoss: v,
        gapPct: 100 * (v / refVal - 1),
        boundaryBytesPerToken: perBoundary,
        reduction: (2 * 4 * config.dim) / perBoundary,
        driverActBytesPerToken: dl.drivers.reduce((t, d) => t + d.actBytes, 0) / (steps * B * T),
        syncBytesPerStep: (dl.syncBytes + dl.drivers.reduce((t, d) => t + d.syncBytes, 0)) / steps,
        seconds: (performance.now() - t1) / 1000,
      });
    } finally {
      await lp.close();
    }
  }
  // Recovery quality: how much a lost stage costs by the end of training, per way of bringing it back.
  const K = Number(arg('recovery', String(Math.floor(steps / 2) + 13)));
  const recovery: Record<string, unknown>[] = [];
  if (K > 0 && K < steps && S >= 3) {
    const variants: { name: string; every: number; rebuild?: 'prefer'; kill: boolean }[] = [
      { name: 'no failure', every: 0, kill: false },
      { name: 'checkpoint every 25 steps', every: 25, kill: true },
      { name: 'rebuilt from neighbours (no checkpoint)', every: 0, rebuild: 'prefer', kill: true },
      { name: 'restarted from genesis (checkpoint of step 0 only)', every: -1, kill: true },
    ];
    for (const v of variants) {
      const lp = await startLocalPipeline({
        config,
        stages: S,
        kernels: k,
        adamw: DEFAULT_ADAMW,
        codec: { id: 'fp32' },
        genesis,
        checkpoints: v.every !== 0,
        ...(v.rebuild ? { rebuild: v.rebuild } : {}),
      });
      try {
        const losses: number[] = [];
        for (const [s, b] of train.entries()) {
          if ((v.every === -1 && s === 0) || (v.every > 0 && s % v.every === 0)) await lp.driver.checkpoint();
          if (v.kill && s === K) await lp.kill(1, 0);
          losses.push((await lp.driver.step(b, B, T, M, lr)).loss);
        }
        const rec = lp.driver.recoveries[0];
        const v1 = await lp.driver.evaluate(val, B, T);
        recovery.push({
          variant: v.name,
          valLoss: v1,
          lossAtKill: losses[K],
          lossAfter10: losses.slice(K, K + 10).reduce((t, x) => t + x, 0) / 10,
          recoveryMs: rec?.ms ?? 0,
          fromStep: rec?.fromStep ?? null,
          mix: rec?.mix ?? null,
        });
      } finally {
        await lp.close();
      }
    }
    const base = recovery[0].valLoss as number;
    for (const r of recovery) r.gapPct = 100 * ((r.valLoss as number) / base - 1);
  }
  const f = (x: unknown, d = 2) => (typeof x === 'number' ? x.toFixed(d) : String(x));
  console.log(
    `\npipeline: ${S} stage peers + driver on loopback, ${config.layers}-layer GPT (dim ${config.dim}, ctx ${T}, vocab ${config.vocabSize}), batch ${B} in ${M} micro-batches, ${steps} steps (${steps * B * T} tokens), lr ${lr}`,
  );
  console.log(`single process: val loss ${refVal.toFixed(4)} in ${refSec.toFixed(1)} s\n`);
  console.log(
    '| activations | val loss | vs single process | bytes/token per boundary (fwd+bwd) | reduction vs fp32 | driver activation bytes/token | sync bytes/step (tied grad; + DiLoCo) | seconds |',
  );
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows)
    console.log(
      `| ${r.codec} | ${f(r.valLoss, 4)} | ${(r.gapPct as number) >= 0 ? '+' : ''}${f(r.gapPct)}% | ${f(r.boundaryBytesPerToken, 1)} | ${f(r.reduction, 1)}× | ${f(r.driverActBytesPerToken, 0)} | ${f(r.syncBytesPerStep, 0)} | ${f(r.seconds, 1)} |`,
    );
  // Idle time per stage (the bubble), modelled with the measured times: on one machine all stage
  // peers share 2 cores, so stages on separate machines are simulated, not observed.
  let schedule: Record<string, unknown> | null = null;
  if (times) {
    const sy = simulateSchedule(steps, M, times, 'sync'),
      as = simulateSchedule(steps, M, times, 'async');
    schedule = { times, sync: sy, async: as };
    const u = (r: typeof sy) => r.utilization.map((x) => `${(100 * x).toFixed(0)}%`).join(' / ');
    console.log(
      `\nschedule model (stages on separate machines; measured per micro-batch: fwd ${times.fwd.map((x) => x.toFixed(2)).join('/')} ms, bwd ${times.bwd.map((x) => x.toFixed(2)).join('/')} ms, round trip ${times.link.toFixed(2)} ms, update ${times.update.toFixed(2)} ms):`,
    );
    console.log('| schedule | ms/step | stage utilization (busy / wall) |\n|---|---:|---|');
    console.log(`| synchronous (step barrier) | ${sy.msPerStep.toFixed(2)} | ${u(sy)} |`);
    console.log(`| asynchronous (trainAsync) | ${as.msPerStep.toFixed(2)} | ${u(as)} |`);
  }
  if (recovery.length) {
    console.log(
      `\nrecovery: stage 1's only peer dies before step ${K} of ${steps}; a fresh peer brings it back (fp32 activations):`,
    );
    console.log(
      '| brought back | train loss at the step of the kill | mean train loss, next 10 steps | final val loss | vs no failure | recovery ms |\n|---|---:|---:|---:|---:|---:|',
    );
    for (const r of recovery)
      console.log(
        `| ${r.variant}${r.mix ? ` (weights ${(r.mix as number[]).map((x) => x.toFixed(2)).join(' : ')})` : ''}${r.fromStep !== null && !r.mix ? ` (step ${r.fromStep})` : ''} | ${f(r.lossAtKill, 4)} | ${f(r.lossAfter10, 4)} | ${f(r.valLoss, 4)} | ${(r.gapPct as number) >= 0 ? '+' : ''}${f(r.gapPct)}% | ${f(r.recoveryMs, 0)} |`,
      );
  }
  console.log(
    JSON.stringify({
      bench: 'pipeline',
      stages: S,
      steps,
      micro: M,
      config,
      refVal,
      refSec,
      rows,
      schedule,
      recovery: { kill: K, rows: recovery },
    }),
  );
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) await main();
