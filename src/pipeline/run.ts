/**
 * A pipeline run across machines (issue 8): its manifest, the stage peer (`tessera stage`) and
 * the driver's discovery of stage peers (`tessera pipeline --run`).
 *
 * Stage peers put a provider record for their stage's key (`stageKey`) in the DHT, so that anyone
 * who knows the run can find who serves stage i (`findStagePeers`) without having heard them;
 * records outlive moves (they expire in hours), so the announcements decide what a peer serves now.
 *
 * Peers meet on the run's signed control topic. Every stage peer announces, every 2 s, the
 * stage it serves, whether it holds its weights yet (a fresh peer waits for a restore), its
 * measured throughput and its addresses. A joining peer listens for a few seconds and takes the
 * stage with the lowest total throughput (placement.ts); it initializes its stage alone from the
 * run's seed (Stage.init), never the whole model. The driver waits until every stage has a ready
 * peer, then trains through them; when a stage's last peer dies it waits for a fresh peer
 * announcing that stage and restores it from the checkpoint shares.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import type { Logger } from 'pino';
import { createHost, type Host } from '../net/host.js';
import { joinControlChannel, type ControlChannel } from '../net/pubsub.js';
import { openStore, type Store } from '../store/index.js';
import {
  createStage,
  isLlamaConfig,
  splitStages,
  StageModelConfigSchema,
  type StageModelConfig,
} from '../model/pipeline-stage.js';
import { AdamWSchema, DEFAULT_ADAMW } from '../train/adamw.js';
import type { Kernels } from '../kernels/api.js';
import type { WebGpuDevice } from '../kernels/webgpu/device.js';
import { deviceThroughput } from './stage/device.js';
import { canonicalJson } from '../swarm/canonical.js';
import { sha256Hex } from '../util/hash.js';
import { InvalidInputError, TesseraError } from '../util/errors.js';
import { chooseStage, planMove, type Move } from './placement.js';
import type { PipelineDriver } from './driver.js';
import { serveStage, type StageServer } from './stage-server.js';
import { CID } from 'multiformats/cid';
import * as raw from 'multiformats/codecs/raw';
import { sha256 } from 'multiformats/hashes/sha2';

export const PipeManifestSchema = z
  .object({
    version: z.literal(1),
    kind: z.literal('pipeline'),
    name: z.string().min(1).max(128),
    /** GPT-2 (no `arch`) or a Llama-family config (`arch: 'llama'`): the stages are cut from it. */
    model: StageModelConfigSchema,
    stages: z.number().int().min(1).max(64),
    seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    /** Training data (the driver's only): the embedded corpus, tokenized to model.vocabSize. */
    data: z.literal('brown'),
    codec: z
      .object({
        id: z.enum(['fp32', 'fp16', 'int8', 'lowrank']),
        k: z.number().int().min(1).optional(),
        seed: z.number().int().optional(),
      })
      .strict(),
    /** A learned bottleneck of this width at every stage boundary (the codec then carries k values per token). */
    bottleneck: z.number().int().min(1).max(65536).optional(),
    adamw: AdamWSchema,
    lr: z.number().positive().max(1),
    batch: z.number().int().min(1).max(4096),
    micro: z.number().int().min(1).max(4096),
    checkpointEvery: z.number().int().min(0),
    /**
     * The run's driver(s), by libp2p peer id: the only peers a stage peer lets read or change its
     * weights, gradients and optimizer state (stage/service.ts). Part of the run id, so a peer
     * cannot be admitted later without a new run; absent: stage peers refuse to serve the run.
     */
    drivers: z.array(z.string().min(8).max(128)).min(1).max(8).optional(),
    /** 'open': stage peers also serve inference (no weights change, nothing held) to any peer, bounded per caller. */
    inference: z.enum(['drivers', 'open']).optional(),
  })
  .strict()
  .refine((m) => m.stages <= m.model.layers, { message: 'more stages than layers' })
  .refine((m) => m.bottleneck === undefined || m.bottleneck <= m.model.dim, {
    message: 'bottleneck wider than the model',
  })
  .refine((m) => m.batch % m.micro === 0, { message: 'micro must divide batch' });
export type PipeManifest = z.infer<typeof PipeManifestSchema>;

export function pipeManifest(input: unknown): { manifest: PipeManifest; runId: string } {
  const r = PipeManifestSchema.safeParse(input);
  if (!r.success)
    throw new InvalidInputError(
      `invalid pipeline manifest: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
    );
  return { manifest: r.data, runId: sha256Hex(new TextEncoder().encode(canonicalJson(r.data))) };
}

/** A pipeline manifest from a file named by a CLI flag, with a clear error for a missing or non-JSON file. */
export function readPipeManifest(file: string, flag: string): { manifest: PipeManifest; runId: string } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new InvalidInputError(`cannot read ${flag} ${file}: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new InvalidInputError(`${file} is not JSON: ${(e as Error).message}`);
  }
  return pipeManifest(raw);
}

/**
 * The small model a default pipeline run trains: a GPT-2 (vocab 512, ctx 64, dim 64, 4 heads), or
 * with `arch: 'llama'` a Llama of the same widths (4 query heads on `kvHeads` kv heads of 16,
 * SwiGLU 176, untied head).
 */
export function defaultPipeModel(o: { layers: number; arch?: 'gpt2' | 'llama'; kvHeads?: number }): StageModelConfig {
  const base = { vocabSize: 512, ctx: 64, dim: 64, layers: o.layers, heads: 4 };
  if (o.arch !== 'llama') return base;
  return {
    ...base,
    arch: 'llama',
    kvHeads: o.kvHeads ?? 2,
    headDim: 16,
    hidden: 176,
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: null,
    tiedEmbeddings: false,
  };
}

export function defaultPipeManifest(o: {
  stages: number;
  layers: number;
  codec: PipeManifest['codec'];
  lr?: number;
  micro?: number;
  checkpointEvery?: number;
  bottleneck?: number;
  /** The model (default: defaultPipeModel of `layers`). */
  model?: StageModelConfig;
}): PipeManifest {
  const model = o.model ?? defaultPipeModel(o);
  return {
    ...(o.bottleneck !== undefined ? { bottleneck: o.bottleneck } : {}),
    version: 1,
    kind: 'pipeline',
    name: `brown-pipe-${isLlamaConfig(model) ? 'llama-' : ''}l${model.layers}-s${o.stages}`,
    model,
    stages: o.stages,
    seed: 1,
    data: 'brown',
    codec: o.codec,
    adamw: DEFAULT_ADAMW,
    lr: o.lr ?? 3e-3,
    batch: 8,
    micro: o.micro ?? 2,
    checkpointEvery: o.checkpointEvery ?? 25,
  };
}

/** The DHT key under which stage `stage` of run `runId` is provided: a raw CID of sha256("tessera/pipeline/<runId>/stage/<i>"). */
export async function stageKey(runId: string, stage: number): Promise<CID> {
  return CID.createV1(
    raw.code,
    await sha256.digest(new TextEncoder().encode(`tessera/pipeline/${runId}/stage/${stage}`)),
  );
}

/** Peers with a provider record for a stage in the DHT (possibly stale: check their announcements). */
export async function findStagePeers(
  host: Host,
  runId: string,
  stage: number,
  o: { signal: AbortSignal; max?: number },
): Promise<{ peer: string; addrs: string[] }[]> {
  const out: { peer: string; addrs: string[] }[] = [];
  try {
    for await (const p of host.node.contentRouting.findProviders(await stageKey(runId, stage), { signal: o.signal })) {
      if (!out.some((x) => x.peer === p.id.toString()))
        out.push({ peer: p.id.toString(), addrs: p.multiaddrs.map((a) => a.toString()) });
      if (out.length >= (o.max ?? 32)) break;
    }
  } catch (err) {
    if (!o.signal.aborted) throw err;
  }
  return out;
}

const Announce = z
  .object({
    stage: z.number().int().min(0).max(63),
    ready: z.boolean(),
    throughput: z.number().min(0).max(1e12),
    /** Optimizer steps its stage has taken (0: genesis): a joiner seeing any step > 0 knows the run is under way. */
    step: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    addrs: z.array(z.string().min(1).max(256)).max(8),
  })
  .strict();
export const PipeSchemas = { 'stage.announce': Announce } as const;
export type Announcement = z.infer<typeof Announce> & { from: string; at: number };

/** Announcements heard on a run's topic, latest per peer. */
export class StageDirectory {
  readonly byPeer = new Map<string, Announcement>();
  constructor(
    readonly stages: number,
    private readonly staleMs = 8000,
  ) {}
  record(from: string, a: z.infer<typeof Announce>, now = Date.now()): void {
    if (a.stage >= this.stages) return;
    this.byPeer.set(from, { ...a, from, at: now });
  }
  live(now = Date.now()): Announcement[] {
    return [...this.byPeer.values()].filter((a) => now - a.at < this.staleMs);
  }
  loads(now = Date.now()): { peers: number; throughput: number }[] {
    const out = Array.from({ length: this.stages }, () => ({ peers: 0, throughput: 0 }));
    for (const a of this.live(now)) {
      out[a.stage].peers++;
      out[a.stage].throughput += a.throughput;
    }
    return out;
  }
}

/** Joins a run's signed topic and records every stage announcement heard on it. */
export function listenToRun(
  host: Host,
  runId: string,
  stages: number,
): { dir: StageDirectory; channel: ControlChannel<typeof PipeSchemas>; close(): void } {
  const dir = new StageDirectory(stages);
  const channel = joinControlChannel({
    host,
    runId,
    schemas: PipeSchemas,
    onMessage: (msg) => dir.record(msg.from, msg.body),
  });
  return {
    dir,
    channel,
    close: () => {
      try {
        channel.close();
      } catch {
        /* closing anyway */
      }
    },
  };
}

export class PipelineRunError extends TesseraError {
  constructor(message: string) {
    super('PIPELINE_RUN', message);
  }
}

export interface StagePeer {
  host: Host;
  store: Store;
  server: StageServer;
  channel: ControlChannel<typeof PipeSchemas>;
  dir: StageDirectory;
  /** The stage served now (it changes when the peer moves). */
  readonly stage: number;
  /** Moves made, in order. */
  readonly moves: Move[];
  stop(): Promise<void>;
}

/** Joins a pipeline run as a stage peer: picks (or is given) a stage, initializes or awaits a restore, serves, announces. */
export async function runStagePeer(o: {
  manifest: PipeManifest;
  runId: string;
  dataDir: string;
  kernels: Kernels;
  listen?: string[];
  bootstrap?: string[];
  stage?: number;
  fresh?: boolean;
  settleMs?: number;
  logger?: Logger;
  /** Announce this capacity (tokens/s) instead of measuring it. */
  throughput?: number;
  /** Move between stages when the pipeline gains by more than `hysteresis` (placement.ts); null: never move. Default 0.2. */
  hysteresis?: number | null;
  /** Least time between joining (or a move) and the next move. Default 10 s. */
  moveCooldownMs?: number;
  onMove?: (m: Move) => void;
  /** The run's admitted driver(s) instead of the manifest's `drivers` (tests). */
  drivers?: string[];
  /** Compute on this WebGPU device (`tessera stage --device webgpu`); absent: the CPU kernels. */
  device?: WebGpuDevice;
}): Promise<StagePeer> {
  const m = o.manifest;
  const drivers = o.drivers ?? m.drivers;
  if (!drivers?.length)
    throw new InvalidInputError(
      'the pipeline manifest names no driver (`drivers`; write it with `tessera pipeline --write-run … --driver-dir DIR`): a stage peer would let anyone read and change its weights',
    );
  if (o.stage !== undefined && (o.stage < 0 || o.stage >= m.stages))
    throw new InvalidInputError(`--stage must be in 0..${m.stages - 1}`);
  const host = await createHost({
    dataDir: o.dataDir,
    // A stage, and its driver, may compute for minutes at a time (a real-sized model).
    busyPeers: true,
    ...(o.listen ? { listen: o.listen } : {}),
    ...(o.bootstrap?.length ? { bootstrap: o.bootstrap } : {}),
    ...(o.logger ? { logger: o.logger } : {}),
  });
  const store = await openStore(o.dataDir, { libp2p: host.node });
  const { dir, channel, close } = listenToRun(host, o.runId, m.stages);
  // Listen before choosing: at least settleMs; with bootstrap peers, until someone is heard (at
  // most 12 s), then one more announcement period, so that every serving peer has been counted.
  const t0 = Date.now(),
    settle = o.settleMs ?? 3000,
    boot = (o.bootstrap?.length ?? 0) > 0;
  while (Date.now() - t0 < settle || (boot && dir.live().length === 0 && Date.now() - t0 < 12_000))
    await new Promise((r) => setTimeout(r, 100));
  if (boot && dir.live().length > 0 && o.stage === undefined) await new Promise((r) => setTimeout(r, 2100));
  let stage = o.stage ?? chooseStage(dir.loads());
  const specs = splitStages(m.model, m.stages);
  // Genesis weights only before training starts; a peer joining a run under way waits for a sync.
  const underway = dir.live().some((a) => a.step > 0);
  const server = await serveStage(host, {
    config: m.model,
    spec: specs[stage],
    kernels: o.kernels,
    adamw: m.adamw,
    codec: m.codec,
    store,
    drivers,
    openInference: m.inference === 'open',
    ...(m.bottleneck !== undefined ? { bottleneck: m.bottleneck } : {}),
    ...(o.device ? { device: o.device } : {}),
    init: o.fresh || underway ? null : (s) => s.init(m.seed),
  });
  const throughput =
    o.throughput ??
    (o.device
      ? await deviceThroughput(o.device, server.stage, m.batch / m.micro)
      : measureThroughput(m.model, specs[stage], o.kernels, m.batch / m.micro));
  const announce = () =>
    channel
      .publish('stage.announce', {
        stage,
        ready: server.ready(),
        throughput,
        step: server.step(),
        addrs: host.multiaddrs().slice(0, 8),
      })
      .catch(() => undefined);
  const moves: Move[] = [];
  const hysteresis = o.hysteresis === undefined ? 0.2 : o.hysteresis;
  let quietUntil = Date.now() + (o.moveCooldownMs ?? 10_000);
  const me = host.peerId;
  const rebalance = () => {
    if (hysteresis === null || Date.now() < quietUntil || !server.ready()) return;
    // Only peers we are connected to count: a killed peer's announcements outlive it by seconds,
    // and counting it could move the last live holder away from a stage.
    const connected = new Set(host.connectedPeers());
    const others = dir
      .live()
      .filter((a) => a.from !== me && connected.has(a.from))
      .map((a) => ({ peer: a.from, stage: a.stage, ready: a.ready, throughput: a.throughput }));
    const mv = planMove([...others, { peer: me, stage, ready: true, throughput }], m.stages, hysteresis);
    if (mv?.peer !== me) return;
    server.moveTo(specs[mv.to]);
    stage = mv.to;
    moves.push(mv);
    quietUntil = Date.now() + (o.moveCooldownMs ?? 10_000);
    o.onMove?.(mv);
  };
  // Stage peers keep a full mesh among themselves (S × replicas peers): placement counts only
  // connected holders, and checkpoint shares are fetched from them directly.
  const mesh = () => {
    const connected = new Set(host.connectedPeers());
    for (const a of dir.live().slice(0, 64))
      if (a.from !== me && !connected.has(a.from) && a.addrs[0])
        void host.dial(a.addrs[0], { signal: AbortSignal.timeout(5000) }).catch(() => undefined);
  };
  // The DHT record of the stage served (re-provided by kad-dht; a move cancels the old one).
  let provided = -1;
  const reprovide = () => {
    if (provided === stage) return;
    const old = provided,
      now = stage;
    provided = now;
    void (async () => {
      if (old >= 0) await host.node.contentRouting.cancelReprovide(await stageKey(o.runId, old)).catch(() => undefined);
      await host.node.contentRouting
        .provide(await stageKey(o.runId, now), { signal: AbortSignal.timeout(20_000) })
        .catch((e: unknown) => {
          o.logger?.warn({ err: (e as Error).message, stage: now }, 'stage provide failed');
          if (provided === now) provided = -1;
        });
    })();
  };
  void announce();
  reprovide();
  const timer = setInterval(() => {
    mesh();
    rebalance();
    reprovide();
    void announce();
  }, 2000);
  return {
    host,
    store,
    server,
    channel,
    dir,
    moves,
    get stage() {
      return stage;
    },
    stop: async () => {
      clearInterval(timer);
      close();
      await server.close().catch(() => undefined);
      await store.stop().catch(() => undefined);
      await host.stop().catch(() => undefined);
    },
  };
}

/** Tokens per second this machine runs one forward + backward of the stage at (its capacity). */
function measureThroughput(
  config: StageModelConfig,
  spec: ReturnType<typeof splitStages>[number],
  kernels: Kernels,
  B: number,
): number {
  const st = createStage(config, spec, kernels);
  const T = config.ctx,
    N = B * T;
  const input = st.first ? new Int32Array(N) : new Float32Array(N * config.dim);
  const t0 = performance.now();
  for (let i = 0; i < 3; i++) {
    st.forward(i, input, B, T);
    if (st.last) st.loss(i, new Int32Array(N), true);
    st.backward(i, st.last ? null : new Float32Array(N * config.dim));
  }
  return (3 * N) / Math.max(1e-3, (performance.now() - t0) / 1000);
}

/** The driver's view of a run: waits until every stage has a ready peer, dials them, returns peer ids per stage. */
export async function discoverStages(
  host: Host,
  dir: StageDirectory,
  o: { timeoutMs: number; runId?: string },
): Promise<string[][]> {
  const t0 = Date.now();
  let lastLookup = 0;
  for (;;) {
    const ready = dir.live().filter((a) => a.ready);
    const per = Array.from({ length: dir.stages }, (_, i) => ready.filter((a) => a.stage === i));
    if (per.every((p) => p.length > 0)) {
      for (const a of ready)
        if (!host.connectedPeers().includes(a.from))
          await host.dial(a.addrs[0], { signal: AbortSignal.timeout(5000) }).catch(() => undefined);
      return per.map((p) => p.map((a) => a.from));
    }
    // Stages nobody announced to us yet: ask the DHT who serves them and dial those (they join
    // our gossip mesh, and their announcements follow). At most one lookup round per 3 s.
    if (o.runId && Date.now() - lastLookup > 3000) {
      lastLookup = Date.now();
      await Promise.all(
        per
          .flatMap((p, i) => (p.length ? [] : [i]))
          .map(async (i) => {
            for (const f of await findStagePeers(host, o.runId!, i, {
              signal: AbortSignal.timeout(2500),
              max: 8,
            }).catch(() => [])) {
              // By peer id: the lookup put the provider's addresses in the peer store.
              if (f.peer !== host.peerId && !host.connectedPeers().includes(f.peer))
                await host.dial(f.peer, { signal: AbortSignal.timeout(3000) }).catch(() => undefined);
            }
          }),
      );
    }
    if (Date.now() - t0 > o.timeoutMs)
      throw new PipelineRunError(
        `no ready peer for stage(s) ${per.flatMap((p, i) => (p.length ? [] : [i])).join(', ')} after ${o.timeoutMs} ms (start them with \`tessera stage --run\`)`,
      );
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The driver's recovery hook: the next fresh peer (not ready) announcing stage `i`, dialed. */
export async function awaitFreshPeer(
  host: Host,
  dir: StageDirectory,
  stage: number,
  exclude: Set<string>,
  timeoutMs: number,
): Promise<string> {
  const t0 = Date.now();
  for (;;) {
    const a = dir.live().find((x) => x.stage === stage && !x.ready && !exclude.has(x.from));
    if (a) {
      await host.dial(a.addrs[0], { signal: AbortSignal.timeout(5000) });
      return a.from;
    }
    if (Date.now() - t0 > timeoutMs)
      throw new PipelineRunError(
        `stage ${stage} lost its last peer and no fresh peer announced it within ${timeoutMs} ms (start one with \`tessera stage --run … --stage ${stage} --fresh\`)`,
      );
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** What `reconcile` changed: replicas added (synced from a serving replica) and released (moved away). */
export interface Reconciled {
  admitted: { stage: number; peer: string; step: number; ms: number }[];
  released: { stage: number; peer: string }[];
}

/**
 * The driver between steps: stops routing to peers that now announce another stage (they moved),
 * and syncs every other peer announcing a stage it does not route to (a joiner, a mover, a peer
 * with stale weights) from a serving replica of that stage. A stage with no serving replica is
 * left to the recovery path (checkpoint shares). A failed sync is skipped and retried next time.
 */
export async function reconcile(driver: PipelineDriver, host: Host, dir: StageDirectory): Promise<Reconciled> {
  const out: Reconciled = { admitted: [], released: [] };
  const live = driver.replicas();
  for (const [i, row] of live.entries()) {
    for (const p of row) {
      const a = dir.byPeer.get(p);
      if (a && a.stage !== i && driver.release(i, p)) out.released.push({ stage: i, peer: p });
    }
  }
  const routed = new Set(driver.replicas().flat());
  for (const a of dir.live()) {
    if (routed.has(a.from) || driver.replicas()[a.stage].length === 0) continue;
    try {
      if (!host.connectedPeers().includes(a.from)) await host.dial(a.addrs[0], { signal: AbortSignal.timeout(5000) });
      const r = await driver.admit(a.stage, a.from);
      out.admitted.push({ stage: a.stage, peer: a.from, ...r });
    } catch {
      /* unreachable or not ready to sync: next time */
    }
  }
  return out;
}
