/**
 * The dashboard of a pipeline run (issue 8). The driver (`tessera pipeline --run`, or the local
 * `tessera pipeline`) serves the same dashboard a swarm node does — loss per step, activation
 * bytes per step, the peers table, sampling — plus the stage map: for every stage, its layers,
 * its size, and which peers hold it, whether they hold its weights yet (a fresh or moving peer
 * waits for a restore or a sync) and whether the driver is routing to them.
 *
 * `stageRows` is pure (tested without a network); PipeDashSource is the thin adapter that the
 * dashboard server polls and that the training loop reports each step to.
 */
import { EventEmitter } from 'node:events';
import { anyStageSpecs, splitStages, type StageModelConfig } from '../model/pipeline-stage.js';
import type { DashboardSource } from './server.js';
import type { DashView, PipeSummary, StageRow } from './state.js';
import type { RoundReport } from '../peer/report.js';
import type { PipeManifest } from '../pipeline/run.js';
import type { PipelineDriver } from '../pipeline/driver.js';
import type { LocalPipeline } from '../pipeline/local.js';

/** One peer as the driver knows it: from its announcements (or, locally, from the server itself). */
export interface StagePeerInfo {
  peer: string;
  stage: number;
  ready: boolean;
  throughput: number | null;
}

/** Parameters each stage holds. */
export function stageSizes(config: StageModelConfig, stages: number): number[] {
  return splitStages(config, stages).map((sp) => anyStageSpecs(config, sp).reduce((t, s) => t + s.size, 0));
}

/**
 * The stage map: every stage with its holders, sorted (serving first, then by peer id). A peer the
 * driver routes to but that has not announced itself (yet) is listed as serving and ready; a peer
 * that announced a stage the driver does not route to is listed as not serving.
 */
export function stageRows(
  config: StageModelConfig,
  stages: number,
  peers: readonly StagePeerInfo[],
  live: readonly (readonly string[])[],
  self: string | null,
): StageRow[] {
  const sizes = stageSizes(config, stages);
  return splitStages(config, stages).map((sp, i) => {
    const routed = new Set(live[i] ?? []);
    const known = new Map(peers.filter((p) => p.stage === i).map((p) => [p.peer, p]));
    for (const id of routed) if (!known.has(id)) known.set(id, { peer: id, stage: i, ready: true, throughput: null });
    const holders = [...known.values()]
      .map((p) => ({
        peer: p.peer,
        ready: p.ready,
        throughput: p.throughput,
        serving: routed.has(p.peer),
        self: p.peer === self,
      }))
      .sort((a, b) => Number(b.serving) - Number(a.serving) || (a.peer < b.peer ? -1 : a.peer > b.peer ? 1 : 0));
    return {
      index: i,
      layers: [sp.l0, sp.l1] as [number, number],
      params: sizes[i],
      holders,
      throughput: holders.reduce((t, h) => t + (h.throughput ?? 0), 0),
    };
  });
}

export function pipeSummary(runId: string, m: PipeManifest): PipeSummary {
  return {
    // The model's own count: the last stage's copy of the tied embedding is not a parameter of its own.
    kind: 'pipeline',
    runId,
    name: m.name,
    params:
      stageSizes(m.model, m.stages).reduce((a, b) => a + b, 0) - (m.stages > 1 ? m.model.vocabSize * m.model.dim : 0),
    model: { ...m.model },
    stages: m.stages,
    codec: m.codec.id + (m.codec.k ? ` k=${m.codec.k}` : ''),
    batch: m.batch,
    micro: m.micro,
    lr: m.lr,
    checkpointEvery: m.checkpointEvery,
    seed: m.seed,
  };
}

export interface PipeDashOptions {
  runId: string;
  manifest: PipeManifest;
  /** The driver's own peer id. */
  peerId: string;
  peers(): StagePeerInfo[];
  /** The driver's live replicas per stage (empty before discovery). */
  live(): string[][];
  /** Peers the driver is connected to. */
  connected(): string[];
  generate(
    prompt: string,
    o: { maxTokens?: number; temperature?: number; topK?: number; seed?: number },
  ): Promise<{ text: string; tokens: number }>;
}

/** One training step as the dashboard plots it. */
export interface StepReport {
  step: number;
  trainLoss: number;
  valLoss?: number;
  bytesSent: number;
  bytesReceived: number;
  seconds: number;
  tokens: number;
}

export class PipeDashSource implements DashboardSource {
  readonly events = new EventEmitter<{ round: [RoundReport] }>();
  step = -1;
  phase = 'waiting for stages';
  private readonly summary: PipeSummary;
  constructor(private readonly o: PipeDashOptions) {
    this.summary = pipeSummary(o.runId, o.manifest);
  }

  view(): DashView {
    const live = this.o.live();
    const roster = [...new Set(live.flat())].sort();
    return {
      runId: this.o.runId,
      summary: this.summary,
      peerId: this.o.peerId,
      round: this.step,
      phase: this.phase,
      roster,
      subscribers: this.o.connected(),
      weightsHash: '',
      checkpointCid: null,
      stages: stageRows(this.o.manifest.model, this.o.manifest.stages, this.o.peers(), live, this.o.peerId),
    };
  }

  /** A finished step: every stage peer routed to processed its `tokens` (the peers table credits them). */
  report(r: StepReport): void {
    this.step = r.step;
    const live = [...new Set(this.o.live().flat())];
    this.events.emit('round', {
      round: r.step,
      event: 'round',
      computeFraction: NaN,
      innerSteps: 1,
      cpuFraction: NaN,
      valLoss: r.valLoss ?? NaN,
      trainLoss: r.trainLoss,
      contributors: live.map((peer) => ({ peer, tokens: r.tokens })),
      checkpointCid: null,
      peers: live.length,
      roster: live.length,
      included: live.length,
      weightsHash: '',
      bytesSent: r.bytesSent,
      bytesReceived: r.bytesReceived,
      seconds: r.seconds,
    });
  }

  generate(
    prompt: string,
    o: { maxTokens?: number; temperature?: number; topK?: number; seed?: number },
  ): Promise<{ text: string; tokens: number }> {
    return this.o.generate(prompt, o);
  }
}

type Sampler = PipeDashOptions['generate'];

/** The dashboard's Generate box: sampling through the stage holders, as `generate --swarm` does. */
export function sampleThrough(
  driver: () => PipelineDriver | null,
  tok: { encodeOrdinary(s: string): number[]; decode(t: number[]): string },
  ctx: number,
): Sampler {
  return async (prompt, g) => {
    const d = driver();
    if (!d) throw new Error('the pipeline is not running yet');
    const r = await d.generate(tok.encodeOrdinary(prompt), g.maxTokens ?? 32, {
      ctx,
      ...(g.temperature !== undefined ? { temperature: g.temperature } : {}),
      ...(g.topK !== undefined ? { topK: g.topK } : {}),
      seed: g.seed ?? 1,
    });
    return { text: tok.decode(r.tokens), tokens: r.tokens.length };
  };
}

/**
 * The dashboard source of a pipeline on this machine: its stage peers announce nothing, so their
 * throughput is what each processed per second so far; killed peers are gone from the map.
 */
export function localDashSource(
  lp: LocalPipeline,
  runId: string,
  m: PipeManifest,
  generate: Sampler,
  live: () => string[][] = () => lp.driver.replicas(),
): PipeDashSource {
  const t0 = performance.now();
  return new PipeDashSource({
    runId,
    manifest: m,
    peerId: lp.driverHost.peerId,
    connected: () => lp.driverHost.connectedPeers(),
    live,
    peers: () =>
      lp.servers.flatMap((row, stage) =>
        row
          .filter((srv) => lp.alive(srv))
          .map((srv) => ({
            peer: lp.peerOf(srv),
            stage,
            ready: srv.ready(),
            throughput: srv.stats.tokens / Math.max(1e-3, (performance.now() - t0) / 1000),
          })),
      ),
    generate,
  });
}
