/**
 * `tessera pipeline`: protocol-learning mode on this machine. S stage peers (each its own libp2p
 * host, holding only its stage) and a driver holding the data train a GPT-2 or a Llama
 * (`--arch llama`, or `--init` an imported checkpoint) on Brown over loopback streams, with
 * compressed activations; optional replicas, checkpoint shares and a kill drill; then a sample
 * generated through the stage holders, with per-stage usage and credit.
 */
import type { Command } from 'commander';
import cliProgress from 'cli-progress';
import { int, num, oneOf, collect } from './args.js';
import { say, result } from './output.js';
import { defaultCacheDir } from './train.js';
import { loadCorpus, prepareDataset } from '../data/index.js';
import { BatchSampler, evalBatches } from '../data/batches.js';
import { loadKernels } from '../kernels/index.js';
import { GPT } from '../model/gpt.js';
import { Llama } from '../model/llama.js';
import {
  anyStageSpecs,
  hasTiedEmbedding,
  isLlamaConfig,
  splitStages,
  type StageModelConfig,
} from '../model/pipeline-stage.js';
import type { TokenArray } from '../data/batches.js';
import type { TextTokenizer } from '../data/text-tokenizer.js';
import { loadAnyModel } from './load.js';
import { DEFAULT_ADAMW } from '../train/adamw.js';
import { startLocalPipeline } from '../pipeline/local.js';
import { stageCredits } from '../pipeline/credit.js';
import { exactBytes, type ActCodecSpec } from '../pipeline/act-codec.js';
import { InvalidInputError } from '../util/errors.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startStageProcs } from './stage-procs.js';
import { pino } from 'pino';
import { createHost } from '../net/host.js';
import { loadOrCreateIdentity } from '../net/identity.js';
import { PipelineDriver, callTimeoutFor, type Recovery } from '../pipeline/driver.js';
import {
  awaitFreshPeer,
  defaultPipeManifest,
  defaultPipeModel,
  discoverStages,
  listenToRun,
  pipeManifest,
  readPipeManifest,
  reconcile,
} from '../pipeline/run.js';
import { PipeDashSource, localDashSource, sampleThrough } from '../dashboard/pipeline.js';
import { DilocoPipelines } from '../pipeline/diloco.js';
import { startDashboard, type Dashboard } from '../dashboard/server.js';

interface PipelineOptions {
  stages: number;
  layers: number;
  /** GPT-2 shape beyond the default toy model (e.g. GPT-2 small: --dim 768 --heads 12 --vocab 50257). */
  dim?: number;
  heads?: number;
  vocab?: number;
  ctx?: number;
  replicas: number;
  steps: number;
  codec: string;
  rank: number;
  micro: number;
  lr: number;
  kill?: string;
  checkpointEvery: number;
  evalBatches: number;
  prompt: string;
  cacheDir: string;
  json: boolean;
  writeRun?: string;
  driverDir?: string[];
  driver?: string[];
  openInference?: boolean;
  run?: string;
  dataDir?: string;
  listen: string;
  bootstrap?: string[];
  waitMs: number;
  dashboard?: number;
  dashboardHost: string;
  dashboardToken?: string;
  diloco?: number;
  routing: 'replicate' | 'balance';
  bottleneck?: number;
  rebuild?: 'fallback' | 'prefer';
  arch: 'gpt2' | 'llama';
  kvHeads?: number;
  init?: string;
  /** Local run: each stage peer in its own `tessera stage` process (default: for models over PROCS_OVER parameters). */
  procs?: boolean;
}

/** Above this many parameters the local run puts each stage in its own process (GPT-2 small is 124M). */
const PROCS_OVER = 20_000_000;

/** The parameters of a model (its stages' tensors, cut as one stage). */
function paramCountOf(config: StageModelConfig): number {
  return anyStageSpecs(config, splitStages(config, 1)[0]).reduce((t, x) => t + x.size, 0);
}

/** One line per recovery: what came back where, and how. */
function describeRecovery(rec: Recovery): string {
  const how =
    rec.how === 'neighbours'
      ? `rebuilt from stages ${rec.stage - 1} and ${rec.stage + 1} (weights ${rec.mix!.map((x) => x.toFixed(2)).join(' : ')}) at step ${rec.fromStep}`
      : `restored from the checkpoint of step ${rec.fromStep}`;
  return `recovery: stage ${rec.stage} ${how} on fresh peer ${rec.peer.slice(-8)} in ${rec.ms.toFixed(0)} ms`;
}

/** `--dashboard`: the run's live dashboard with its stage map, served by this process while it trains. */
async function serveDashboard(o: PipelineOptions, source: PipeDashSource): Promise<Dashboard | null> {
  if (o.dashboard === undefined) return null;
  const token = o.dashboardToken ?? process.env.TESSERA_DASHBOARD_TOKEN;
  const dash = await startDashboard(source, { port: o.dashboard, host: o.dashboardHost, ...(token ? { token } : {}) });
  say(o, `dashboard: ${dash.url}${dash.mode === 'off' ? ' (read-only)' : ''}`);
  result({ json: o.json }, { event: 'dashboard', url: dash.url });
  return dash;
}

function codecOf(o: PipelineOptions, dim: number): ActCodecSpec {
  return o.codec === 'lowrank' ? { id: 'lowrank', k: Math.min(o.rank, dim) } : { id: o.codec as ActCodecSpec['id'] };
}

/** The model --arch / --layers (and, for GPT-2, --dim / --heads / --vocab / --ctx) describe. */
function modelOf(o: PipelineOptions): StageModelConfig {
  const base = defaultPipeModel({ layers: o.layers, arch: o.arch, ...(o.kvHeads ? { kvHeads: o.kvHeads } : {}) });
  const shaped = o.dim !== undefined || o.heads !== undefined || o.vocab !== undefined || o.ctx !== undefined;
  if (!shaped) return base;
  if (isLlamaConfig(base)) throw new InvalidInputError('--dim/--heads/--vocab/--ctx shape a GPT-2 model (--arch gpt2)');
  return {
    ...base,
    ...(o.dim !== undefined ? { dim: o.dim } : {}),
    ...(o.heads !== undefined ? { heads: o.heads } : {}),
    ...(o.vocab !== undefined ? { vocabSize: o.vocab } : {}),
    ...(o.ctx !== undefined ? { ctx: o.ctx } : {}),
  };
}

/** The pipeline manifest the flags describe (the local run's, or the one --write-run writes); `model` overrides --arch/--layers. */
function manifestOf(o: PipelineOptions, model?: StageModelConfig) {
  return defaultPipeManifest({
    model: model ?? modelOf(o),
    stages: o.stages,
    layers: o.layers,
    codec: codecOf(o, o.bottleneck ?? 64),
    lr: o.lr,
    micro: o.micro,
    checkpointEvery: o.checkpointEvery,
    ...(o.bottleneck !== undefined ? { bottleneck: o.bottleneck } : {}),
  });
}

/** What the local run trains: its model, the weights it starts from, the sequence length and Brown in its tokens. */
interface LocalStart {
  config: StageModelConfig;
  genesis: Float32Array;
  T: number;
  ds: {
    train: TokenArray;
    val: TokenArray;
    tokenizer: { encodeOrdinary(s: string): number[]; decode(t: number[]): string };
  };
}

/** Brown's documents as one stream of `tok`'s ids (each document from its start token), up to `cap` tokens. */
function brownIn(tok: TextTokenizer, docs: readonly string[], cap: number): Int32Array {
  const out: number[] = [];
  for (const d of docs) {
    for (const id of tok.encodeDocument(d)) out.push(id);
    if (out.length >= cap) break;
  }
  return Int32Array.from(out.slice(0, cap));
}

/**
 * `--init DIR`: a GPT-2 or Llama checkpoint (e.g. `tessera import --hf`) with its own tokenizer,
 * Brown tokenized with it (at most 2^20 training tokens), windows of min(ctx, 64) tokens.
 * Otherwise the default model of --arch / --layers from the run's seed, on Brown with a BPE
 * trained to its vocabulary.
 */
async function localStart(o: PipelineOptions, k: ReturnType<typeof loadKernels>): Promise<LocalStart> {
  if (o.init) {
    const m = await loadAnyModel(o.init, k);
    const corpus = loadCorpus('brown');
    const tok = m.tokenizer;
    say(
      o,
      `starting from ${m.arch === 'llama' ? 'Llama' : 'GPT-2'} checkpoint ${o.init} (${m.weightsHash.slice(0, 12)}…)`,
    );
    return {
      config: m.config,
      genesis: m.params,
      T: Math.min(m.config.ctx, 64),
      ds: {
        train: brownIn(tok, corpus.train, 1 << 20),
        val: brownIn(tok, corpus.val, 1 << 16),
        tokenizer: { encodeOrdinary: (s) => tok.encodeDocument(s), decode: (t) => tok.decode(t) },
      },
    };
  }
  const config = modelOf(o);
  const ds = prepareDataset({ corpus: loadCorpus('brown'), vocabSize: config.vocabSize, cacheDir: o.cacheDir });
  let genesis: Float32Array;
  if (isLlamaConfig(config)) {
    const l = new Llama(config, k);
    l.init(1);
    genesis = l.params;
  } else {
    const g = new GPT(config, k);
    g.init(1);
    genesis = g.params;
  }
  return { config, genesis, T: config.ctx, ds };
}

/**
 * `--run`: drive a pipeline whose stage peers (`tessera stage`) run anywhere. `local` is the local
 * run with stage processes (`--procs`): its validation batches, and its stage processes' pids.
 */
async function driveRun(o: PipelineOptions, local?: { evalBatches: number; pids: number[] }): Promise<void> {
  const { manifest: m, runId } = readPipeManifest(o.run!, '--run');
  if (!o.dataDir) throw new InvalidInputError("--run needs --data-dir (the driver's identity)");
  // Stage peers serve only the drivers the manifest names: fail here, not with refusals later.
  const me = (await loadOrCreateIdentity(o.dataDir)).peerId.toString();
  if (!m.drivers?.includes(me))
    throw new InvalidInputError(
      `${o.run} does not admit this driver (${me}): its stage peers would refuse every call; write the run with --driver-dir ${o.dataDir}`,
    );
  const host = await createHost({
    dataDir: o.dataDir,
    // Its stage peers compute for minutes at a time at real sizes: an unanswered ping is no loss.
    busyPeers: true,
    listen: [o.listen],
    ...(o.bootstrap?.length ? { bootstrap: o.bootstrap } : {}),
    logger: pino({ level: process.env.TESSERA_LOG ?? 'warn' }, pino.destination(2)),
  });
  const { dir, close } = listenToRun(host, runId, m.stages);
  const ds = prepareDataset({ corpus: loadCorpus(m.data), vocabSize: m.model.vocabSize, cacheDir: o.cacheDir });
  let driver: PipelineDriver | null = null;
  const source = new PipeDashSource({
    runId,
    manifest: m,
    peerId: host.peerId,
    connected: () => host.connectedPeers(),
    peers: () => dir.live().map((a) => ({ peer: a.from, stage: a.stage, ready: a.ready, throughput: a.throughput })),
    live: () => driver?.replicas() ?? [],
    generate: sampleThrough(() => driver, ds.tokenizer, m.model.ctx),
  });
  let dash: Dashboard | null = null;
  try {
    dash = await serveDashboard(o, source);
    say(
      o,
      `pipeline ${runId.slice(0, 12)}: driver ${host.peerId}; waiting for a ready peer on each of ${m.stages} stages…`,
    );
    const stages = await discoverStages(host, dir, { timeoutMs: o.waitMs, runId });
    for (const [i, ps] of stages.entries()) say(o, `stage ${i}: ${ps.map((p) => p.slice(-8)).join(', ')}`);
    const tried = new Set<string>(stages.flat());
    driver = new PipelineDriver({
      host,
      stages,
      dim: m.model.dim,
      vocabSize: m.model.vocabSize,
      tied: hasTiedEmbedding(m.model),
      codec: m.codec,
      ...(m.bottleneck !== undefined ? { width: m.bottleneck } : {}),
      addrsOf: (p) => dir.byPeer.get(p)?.addrs ?? [],
      routing: o.routing,
      throughputOf: (p) => dir.byPeer.get(p)?.throughput ?? 1,
      // A call's deadline grows with the model (a GPT-2-small stage computes for minutes under
      // load), and past that with the slowest call measured (driver.ts).
      callTimeoutMs: callTimeoutFor(paramCountOf(m.model)),
      ...(o.rebuild ? { rebuild: o.rebuild } : {}),
      recover: async (stage) => {
        const p = await awaitFreshPeer(host, dir, stage, tried, o.waitMs);
        tried.add(p);
        say(o, `stage ${stage}: bringing it back on fresh peer ${p.slice(-8)}`);
        return p;
      },
    });
    const B = m.batch,
      T = m.model.ctx;
    const batches = new BatchSampler(ds.train, B, T, BigInt(m.seed) + 7n);
    const t0 = performance.now();
    const stepSeconds: number[] = [];
    let last = NaN;
    source.phase = 'training';
    for (let s = 0; s < o.steps; s++) {
      if (m.checkpointEvery > 0 && m.stages >= 3 && s > 0 && s % m.checkpointEvery === 0) await driver.checkpoint();
      // Between steps: sync joiners and movers into their stages, stop routing to peers that moved away.
      const rc = await reconcile(driver, host, dir);
      for (const r of rc.released) say(o, `stage ${r.stage}: ${r.peer.slice(-8)} moved away`);
      for (const a of rc.admitted)
        say(
          o,
          `stage ${a.stage}: ${a.peer.slice(-8)} joined as a replica (synced at step ${a.step} in ${a.ms.toFixed(0)} ms)`,
        );
      if (rc.released.length || rc.admitted.length)
        result(
          { json: o.json },
          { event: 'replicas', step: s, stages: driver.replicas(), admitted: rc.admitted, released: rc.released },
        );
      const ts = performance.now(),
        a0 = driver.actSent,
        r0 = driver.actReceived;
      const st = await driver.step(batches.next(), B, T, m.micro, m.lr);
      last = st.loss;
      source.report({
        step: s,
        trainLoss: last,
        bytesSent: driver.actSent - a0,
        bytesReceived: driver.actReceived - r0,
        seconds: (performance.now() - ts) / 1000,
        tokens: B * T,
      });
      const stepS = (performance.now() - ts) / 1000;
      stepSeconds.push(stepS);
      if ((s + 1) % 10 === 0 || s + 1 === o.steps || stepS >= 2) {
        const perStep = (performance.now() - t0) / 1000 / (s + 1);
        const left = o.steps - s - 1;
        const line =
          `step ${s + 1}/${o.steps}  loss ${last.toFixed(3)}  ${(((s + 1) * B * T) / ((performance.now() - t0) / 1000)).toFixed(0)} tok/s` +
          (stepS >= 2 ? `  ${stepS.toFixed(1)} s/step${left > 0 ? `  ETA ${Math.round(left * perStep)} s` : ''}` : '');
        // A slow step's rate and ETA reach stderr even with --json (a real-sized model's progress).
        if (o.json && stepS >= 2) process.stderr.write(line + '\n');
        else say(o, line);
        result(
          { json: o.json },
          { event: 'step', step: s + 1, loss: last, seconds: stepS, actBytes: st.actBytes, syncBytes: st.syncBytes },
        );
      }
    }
    const seconds = (performance.now() - t0) / 1000;
    const te = performance.now();
    const val = await driver.evaluate([...evalBatches(ds.val, B, T, local?.evalBatches ?? 4)], B, T);
    const evalSeconds = (performance.now() - te) / 1000;
    for (const rec of driver.recoveries) say(o, describeRecovery(rec));
    const g = await driver.generate(ds.tokenizer.encodeOrdinary(o.prompt), 24, { ctx: T, seed: 1 });
    result(
      o,
      {
        event: 'done',
        runId,
        steps: o.steps,
        trainLoss: last,
        valLoss: val,
        seconds,
        stepSeconds,
        evalSeconds,
        tokensPerSec: (o.steps * B * T) / seconds,
        actBytes: driver.actBytes,
        syncBytes: driver.syncBytes,
        ...(local ? { stagePids: local.pids } : {}),
        stages: driver.replicas(),
        recoveries: driver.recoveries,
        sample: ds.tokenizer.decode(g.tokens),
        usagePerStage: g.usage,
      },
      `done: ${o.steps} steps, val loss ${val.toFixed(4)}; sample through the stage holders: ${o.prompt}${ds.tokenizer.decode(g.tokens)}`,
    );
  } finally {
    await dash?.close();
    close();
    await host.stop();
  }
}

/**
 * The local run with each stage peer in its own `tessera stage` process (stage-procs.ts): a run
 * manifest admitting a fresh driver identity, S stage processes initialised from its seed, then
 * the driver of `--run` through them. Everything lives in a temporary directory, removed after.
 */
async function localProcs(o: PipelineOptions): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), 'tessera-pipeline-procs-'));
  try {
    const driverDir = join(root, 'driver');
    const me = (await loadOrCreateIdentity(driverDir)).peerId.toString();
    const runFile = join(root, 'run.json');
    const { manifest } = pipeManifest({ ...manifestOf(o), drivers: [me] });
    writeFileSync(runFile, JSON.stringify(manifest, null, 2) + '\n');
    const P = paramCountOf(manifest.model);
    say(o, `${P} parameters: starting ${manifest.stages} stage processes (\`tessera stage\`), one per stage…`);
    const t0 = performance.now();
    const sp = await startStageProcs({
      runFile,
      root,
      stages: manifest.stages,
      signal: AbortSignal.timeout(Math.max(120_000, callTimeoutFor(P))),
      onStderr: (i, line) => process.stderr.write(`[stage ${i}] ${line}\n`),
    });
    try {
      for (const p of sp.procs)
        say(o, `stage ${p.stage}: process ${p.child.pid}, peer ${p.peer.slice(-8)}, ${p.params} parameters`);
      say(o, `stage processes serving after ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      await driveRun(
        { ...o, run: runFile, dataDir: driverDir, bootstrap: sp.bootstrap, listen: '/ip4/127.0.0.1/tcp/0' },
        { evalBatches: o.evalBatches, pids: sp.procs.map((p) => p.child.pid ?? -1) },
      );
    } finally {
      await sp.stop();
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

export function register(program: Command): void {
  program
    .command('pipeline')
    .description(
      'protocol learning on this machine: stage peers (each holding only its slice of the model) and a driver train over libp2p',
    )
    .option('--stages <n>', 'pipeline stages (one peer each, times --replicas)', int(1, 64), 4)
    .option('--layers <n>', 'transformer layers (cut into the stages)', int(1, 64), 4)
    .option('--dim <n>', 'GPT-2 model width (default 64; GPT-2 small: 768)', int(1, 65536))
    .option('--heads <n>', 'GPT-2 attention heads (default 4; GPT-2 small: 12)', int(1, 1024))
    .option('--vocab <n>', 'GPT-2 vocabulary (a BPE trained on Brown to this size; default 512)', int(257, 1 << 20))
    .option('--ctx <n>', 'GPT-2 context length (default 64)', int(1, 65536))
    .option(
      '--arch <arch>',
      'the model: gpt2, or llama (RMSNorm, RoPE, SwiGLU, grouped-query attention)',
      oneOf('gpt2', 'llama'),
      'gpt2',
    )
    .option('--kv-heads <n>', 'with --arch llama: key/value heads (a divisor of the 4 query heads)', int(1, 4))
    .option(
      '--init <dir>',
      'start the local run from a checkpoint (GPT-2, or Llama as `tessera import --hf` writes; its tokenizer tokenizes Brown) instead of --arch/--layers',
    )
    .option(
      '--procs',
      'local run: each stage peer in its own `tessera stage` process (default for models over 20M parameters: a stage computing in one process would block the others)',
    )
    .option('--no-procs', 'local run: every stage peer in this process')
    .option('--replicas <n>', 'peers per stage, kept in lockstep (a dead replica costs no step)', int(1, 8), 1)
    .option('--steps <n>', 'optimizer steps', int(1), 200)
    .option('--codec <id>', 'activation codec at stage boundaries', oneOf('fp32', 'fp16', 'int8', 'lowrank'), 'int8')
    .option('--rank <k>', 'lowrank: subspace dimension', int(1, 4096), 8)
    .option('--micro <n>', 'micro-batches per step (batch 8)', int(1, 8), 2)
    .option('--lr <x>', 'learning rate', num(1e-6, 1), 3e-3)
    .option(
      '--bottleneck <k>',
      'a learned bottleneck of width k at every stage boundary (k values per token cross, through --codec; start: the lowrank subspace)',
      int(1, 4096),
    )
    .option(
      '--routing <mode>',
      'with replicas: replicate (every replica computes every micro-batch, in lockstep) or balance (each micro-batch takes one replica per stage by throughput; a failed hop is retried on another; replicas sum gradients)',
      oneOf('replicate', 'balance'),
      'replicate',
    )
    .option(
      '--diloco <H>',
      'with --replicas 2+: each replica set forms its own pipeline on its own batches; replicas sync with DiLoCo every H steps (default: replicas compute the same micro-batches in lockstep)',
      int(1),
    )
    .option(
      '--kill <S@STEP>',
      "failure drill: kill stage S's first peer before step STEP (without replicas it is restored from checkpoint shares)",
    )
    .option(
      '--rebuild <when>',
      'rebuild a lost middle stage from its neighbours (CheckFree: their gradient-weighted mean, sent as masked parts): fallback (when it has no checkpoint) or prefer',
      oneOf('fallback', 'prefer'),
    )
    .option(
      '--checkpoint-every <n>',
      'checkpoint every stage as XOR shares held by two other stages every N steps (0 = off; needs 3+ stages)',
      int(0),
      25,
    )
    .option('--eval-batches <n>', 'validation batches after training (local run)', int(1, 1 << 16), 8)
    .option('--prompt <text>', 'sample through the stage holders after training', 'The jury said')
    .option('--cache-dir <dir>', 'tokenizer and token cache', defaultCacheDir())
    .option(
      '--write-run <file>',
      'write a pipeline manifest for a multi-machine run (from --stages --layers --codec --rank --micro --lr --checkpoint-every) and exit',
    )
    .option(
      '--driver-dir <dir...>',
      "with --write-run: the driver's identity directory (created if new); its peer id is the run's admitted driver (repeat for more)",
      collect,
    )
    .option('--driver <peerId...>', 'with --write-run: admit this driver peer id (repeat for more)', collect)
    .option(
      '--open-inference',
      'with --write-run: stage peers serve inference (`tessera generate --swarm`) to any peer, not only the drivers',
      false,
    )
    .option(
      '--run <file>',
      'drive a multi-machine run: discover its stage peers (`tessera stage --run`), train --steps through them',
    )
    .option('--data-dir <dir>', "with --run: the driver's identity directory")
    .option('--listen <ma>', 'with --run: listen multiaddr', '/ip4/127.0.0.1/tcp/0')
    .option('--bootstrap <ma...>', 'with --run: peers to connect to', collect)
    .option(
      '--wait-ms <n>',
      'with --run: how long to wait for stage peers (and for a fresh one after a loss)',
      int(1),
      60_000,
    )
    .option(
      '--dashboard <port>',
      'serve the live dashboard with the stage map (who holds which stage) while training (0 = any free port)',
      int(0, 65535),
    )
    .option(
      '--dashboard-host <addr>',
      'address the dashboard binds to; beyond loopback it is read-only unless a token is set',
      '127.0.0.1',
    )
    .option(
      '--dashboard-token <token>',
      "token that unlocks the dashboard's Generate box; default: env TESSERA_DASHBOARD_TOKEN",
    )
    .option('--json', 'machine-readable output on stdout', false)
    .action(async (o: PipelineOptions) => {
      if (o.init && (o.writeRun || o.run))
        throw new InvalidInputError(
          "--init starts the local run from a checkpoint; a multi-machine run (--write-run, --run) starts from the manifest's seed",
        );
      if (o.writeRun) {
        const drivers = [
          ...(o.driver ?? []),
          ...(await Promise.all(
            (o.driverDir ?? []).map(async (d) => (await loadOrCreateIdentity(d)).peerId.toString()),
          )),
        ];
        if (drivers.length === 0)
          throw new InvalidInputError(
            '--write-run needs --driver-dir DIR (or --driver PEERID): stage peers serve only the drivers the manifest names',
          );
        const m = {
          ...manifestOf(o),
          drivers: [...new Set(drivers)],
          ...(o.openInference ? { inference: 'open' as const } : {}),
        };
        const { manifest, runId } = pipeManifest(m);
        writeFileSync(o.writeRun, JSON.stringify(manifest, null, 2) + '\n');
        result(
          o,
          { runId, out: o.writeRun, manifest },
          `wrote ${o.writeRun}: pipeline ${runId.slice(0, 12)}, ${o.stages} stages of a ${o.layers}-layer ${isLlamaConfig(manifest.model) ? 'Llama' : 'GPT'}, ${manifest.codec.id} activations, driven only by ${manifest.drivers!.join(', ')}; start stage peers with \`tessera stage --run ${o.writeRun} --data-dir DIR\`, then \`tessera pipeline --run ${o.writeRun} --data-dir DIR --bootstrap <a stage peer>\``,
        );
        return;
      }
      if (o.run) return driveRun(o);
      if (!o.init && o.stages > o.layers)
        throw new InvalidInputError(`--stages ${o.stages} is more than --layers ${o.layers}`);
      if (o.checkpointEvery > 0 && o.stages < 3)
        throw new InvalidInputError('checkpoint shares need 3+ stages; use --checkpoint-every 0');
      let kill: { stage: number; step: number } | null = null;
      if (o.kill) {
        const m = /^(\d+)@(\d+)$/.exec(o.kill);
        if (!m || Number(m[1]) >= o.stages)
          throw new InvalidInputError(`--kill expects S@STEP with S < ${o.stages}, got "${o.kill}"`);
        kill = { stage: Number(m[1]), step: Number(m[2]) };
        if (o.replicas === 1 && o.checkpointEvery === 0) {
          if (!o.rebuild)
            throw new InvalidInputError(
              '--kill of an unreplicated stage needs --checkpoint-every > 0 or --rebuild to bring it back',
            );
          if (kill.stage === 0 || kill.stage === o.stages - 1)
            throw new InvalidInputError(
              `--rebuild brings back a middle stage only; stage ${kill.stage} needs --checkpoint-every > 0`,
            );
        }
      }
      if (o.diloco !== undefined && o.replicas < 2)
        throw new InvalidInputError('--diloco needs --replicas 2 or more (one pipeline per replica)');
      const shape = o.init ? null : modelOf(o);
      const procs = o.procs ?? (shape !== null && !isLlamaConfig(shape) && paramCountOf(shape) > PROCS_OVER);
      if (procs) {
        if (o.init || o.replicas > 1 || kill || o.diloco !== undefined || o.rebuild)
          throw new InvalidInputError(
            'stage processes (--procs, the default over 20M parameters) start every stage from the run seed, one peer each: not with --init, --replicas, --kill, --diloco or --rebuild (use --no-procs)',
          );
        if (8 % o.micro !== 0) throw new InvalidInputError('--micro must divide the batch of 8');
        return localProcs(o);
      }
      // Checkpoint shares and restores serve active replication; DiLoCo pipelines survive a loss by dropping a pipeline.
      const checkpoints = o.checkpointEvery > 0 && o.diloco === undefined;
      if (8 % o.micro !== 0) throw new InvalidInputError('--micro must divide the batch of 8');
      const k = loadKernels({ threads: 1 });
      const { config: model, genesis, T, ds } = await localStart(o, k);
      const { manifest: m, runId } = pipeManifest(manifestOf(o, model));
      const config = m.model,
        codec = m.codec;
      const B = m.batch;
      const lp = await startLocalPipeline({
        config,
        stages: o.stages,
        replicas: o.replicas,
        kernels: k,
        adamw: DEFAULT_ADAMW,
        codec,
        genesis,
        checkpoints,
        routing: o.routing,
        ...(o.rebuild && o.diloco === undefined ? { rebuild: o.rebuild } : {}),
        ...(m.bottleneck !== undefined ? { bottleneck: m.bottleneck } : {}),
      });
      const dl =
        o.diloco === undefined
          ? null
          : new DilocoPipelines({
              host: lp.driverHost,
              stages: lp.servers.map((row) => row.map((x) => lp.peerOf(x))),
              dim: config.dim,
              vocabSize: config.vocabSize,
              tied: hasTiedEmbedding(config),
              codec,
              ...(m.bottleneck !== undefined ? { width: m.bottleneck } : {}),
              diloco: { every: o.diloco, codec: 'int8', outer: { lr: 1, momentum: 0 } },
            });
      // The driver that evaluates and samples: the only one, or the first live DiLoCo pipeline's.
      const front = () => (dl ? dl.drivers[dl.alive[0]] : lp.driver);
      const all = () => (dl ? dl.drivers : [lp.driver]);
      const source = localDashSource(lp, runId, m, sampleThrough(front, ds.tokenizer, T), () =>
        dl ? dl.replicas() : lp.driver.replicas(),
      );
      const dash = await serveDashboard(o, source).catch(async (e: unknown) => {
        await lp.close();
        throw e;
      });
      try {
        source.phase = 'training';
        for (const [i, row] of lp.servers.entries())
          say(
            o,
            `stage ${i}: ${row.length} peer(s) ${row.map((s) => lp.peerOf(s).slice(-8)).join(', ')} holding ${row[0].stage.numParams} of ${genesis.length} parameters (${row[0].stage.tensorNames().length} tensors)`,
          );
        const perBoundary =
          (2 * exactBytes(codec, (B / o.micro) * T, m.bottleneck ?? config.dim)) / ((B / o.micro) * T);
        say(
          o,
          `activations: ${m.bottleneck !== undefined ? `learned bottleneck k=${m.bottleneck}, ` : ''}${codec.id}${codec.k ? ` k=${codec.k}` : ''}, ${perBoundary.toFixed(1)} bytes/token per boundary (fp32: ${(8 * config.dim).toFixed(0)})`,
        );
        const batches = Array.from(
          { length: dl ? o.replicas : 1 },
          (_, r) => new BatchSampler(ds.train, B, T, 7n + BigInt(r)),
        );
        if (dl)
          say(
            o,
            `replicas train apart: ${o.replicas} pipelines on their own batches, synced with DiLoCo every ${o.diloco} steps (int8 pseudo-gradients, outer step = the mean)`,
          );
        const bar =
          process.stderr.isTTY && !o.json
            ? new cliProgress.SingleBar(
                {
                  format: 'pipeline |{bar}| {value}/{total} steps | loss {loss} | {tps} tok/s | ETA {eta_formatted}',
                  hideCursor: true,
                },
                cliProgress.Presets.shades_classic,
              )
            : null;
        bar?.start(o.steps, 0, { loss: '-', tps: '-' });
        const t0 = performance.now();
        let lastLoss = NaN;
        for (let s = 0; s < o.steps; s++) {
          if (checkpoints && s > 0 && s % o.checkpointEvery === 0) await lp.driver.checkpoint();
          if (kill && s === kill.step) {
            await lp.kill(kill.stage, 0);
            say(o, `\nfailure drill: killed stage ${kill.stage}'s peer before step ${s}`);
          }
          const ts = performance.now();
          const sent = () => all().reduce((t, d) => t + d.actSent, 0),
            recv = () => all().reduce((t, d) => t + d.actReceived, 0);
          const a0 = sent(),
            r0 = recv();
          const r = dl
            ? await dl.step((p) => batches[p].next(), B, T, o.micro, o.lr)
            : await lp.driver.step(batches[0].next(), B, T, o.micro, o.lr);
          source.report({
            step: s,
            trainLoss: r.loss,
            bytesSent: sent() - a0,
            bytesReceived: recv() - r0,
            seconds: (performance.now() - ts) / 1000,
            tokens: B * T,
          });
          lastLoss = r.loss;
          bar?.update(s + 1, {
            loss: r.loss.toFixed(3),
            tps: Math.round(((s + 1) * B * T) / ((performance.now() - t0) / 1000)),
          });
          // Without a bar: every 50th step, or every step when steps are slow (a real-sized model).
          const stepS = (performance.now() - ts) / 1000;
          if (!bar && ((s + 1) % 50 === 0 || stepS >= 2)) {
            const perStep = (performance.now() - t0) / 1000 / (s + 1);
            const left = o.steps - s - 1;
            process.stderr.write(
              `step ${s + 1}/${o.steps}  loss ${r.loss.toFixed(3)}  ${stepS.toFixed(1)} s/step` +
                (left > 0 ? `  ETA ${Math.round(left * perStep)} s` : '') +
                '\n',
            );
          }
        }
        bar?.stop();
        const seconds = (performance.now() - t0) / 1000;
        if (dl && o.steps % o.diloco! !== 0) await dl.sync();
        const val = await front().evaluate([...evalBatches(ds.val, B, T, o.evalBatches)], B, T);
        for (const d of dl?.dropped ?? [])
          say(o, `pipeline ${d.pipeline} dropped at step ${d.step} (${d.reason.slice(0, 80)}); the others trained on`);
        for (const rec of lp.driver.recoveries) say(o, describeRecovery(rec));
        for (const d of lp.driver.dropped)
          say(
            o,
            `peer dropped: stage ${d.stage} ${d.peer.slice(-8)}${o.replicas > 1 ? '; its replicas carried on' : ''}`,
          );
        const prompt = ds.tokenizer.encodeOrdinary(o.prompt);
        const g = await front().generate(prompt, 32, { ctx: T, seed: 1 });
        const work = lp.servers.flatMap((row, stage) =>
          row.map((s) => ({ peer: lp.peerOf(s), stage, params: s.stage.numParams, tokens: s.stats.tokens })),
        );
        const credits = stageCredits(work);
        const summary = {
          stages: o.stages,
          replicas: o.replicas,
          steps: o.steps,
          codec,
          valLoss: val,
          trainLoss: lastLoss,
          seconds,
          tokensPerSec: (o.steps * B * T * (dl ? o.replicas : 1)) / seconds,
          boundaryBytesPerToken: perBoundary,
          actBytes: all().reduce((t, d) => t + d.actBytes, 0),
          ...(dl
            ? {
                diloco: {
                  every: o.diloco,
                  syncs: dl.syncs,
                  syncBytes: dl.syncBytes,
                  pipelines: dl.alive.length,
                  droppedPipelines: dl.dropped,
                },
              }
            : {}),
          recoveries: lp.driver.recoveries,
          dropped: lp.driver.dropped,
          sample: ds.tokenizer.decode(g.tokens),
          usagePerStage: g.usage,
          credits,
        };
        result(
          o,
          summary,
          [
            `done: ${o.steps} steps${dl ? ` × ${o.replicas} pipelines` : ''} in ${seconds.toFixed(1)} s (${summary.tokensPerSec.toFixed(0)} tok/s), val loss ${val.toFixed(4)}, ${(summary.actBytes / 1e6).toFixed(1)} MB of activations through the driver${dl ? `, ${dl.syncs} DiLoCo syncs (${(dl.syncBytes / 1e6).toFixed(2)} MB)` : ''}`,
            `sample (through ${o.stages} stage holders): ${o.prompt}${summary.sample}`,
            `usage per stage for that sample (tokens): ${g.usage.join(', ')}`,
            "credit (share of a round's minting): " +
              credits.map((c) => `stage ${c.stage} ${c.peer.slice(-8)} ${(100 * c.score).toFixed(1)}%`).join(', '),
          ].join('\n'),
        );
      } finally {
        await dash?.close();
        await lp.close();
      }
    });
}
