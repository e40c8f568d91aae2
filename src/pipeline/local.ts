/**
 * A pipeline on this machine (tests and `bench/pipeline.ts`): one libp2p host per stage peer and
 * one for the driver, talking over real TCP streams on 127.0.0.1. Each stage peer is built from
 * a whole model's genesis weights and keeps only its own slice (the containment test checks).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { createHost, type Host } from '../net/host.js';
import type { Kernels } from '../kernels/api.js';
import { hasTiedEmbedding, splitStages, type StageModelConfig } from '../model/pipeline-stage.js';
import type { AdamWSettings } from '../train/adamw.js';
import type { ActCodecSpec } from './act-codec.js';
import { PipelineDriver, callTimeoutFor } from './driver.js';
import { serveStage, type StageServer } from './stage-server.js';
import { openStore, type Store } from '../store/index.js';

export interface LocalPipeline {
  driver: PipelineDriver;
  servers: StageServer[][];
  hosts: Host[];
  /** The driver's own host. */
  driverHost: Host;
  /** Whether a stage peer's host is still up (not killed). */
  alive(server: StageServer): boolean;
  /** The peer id of a stage peer. */
  peerOf(server: StageServer): string;
  /** A stage peer's data directory (its libp2p key and IPFS store: what it keeps on disk). */
  dataDirOf(server: StageServer): string;
  /** A stage peer's IPFS store (with `checkpoints`). */
  storeOf(server: StageServer): Store | undefined;
  /** Stop one stage peer (its host goes away mid-run: a failure drill). */
  kill(stage: number, replica: number): Promise<void>;
  close(): Promise<void>;
}

export async function startLocalPipeline(o: {
  config: StageModelConfig;
  stages: number;
  replicas?: number;
  kernels: Kernels;
  adamw: AdamWSettings;
  codec: ActCodecSpec;
  genesis: Float32Array;
  inflight?: number;
  /** The driver's routing over replicas (driver.ts); throughput per peer for 'balance'. */
  routing?: 'replicate' | 'balance';
  throughputOf?: (peer: string) => number;
  /** A learned bottleneck of this width at every stage boundary (Stage). */
  bottleneck?: number;
  /** Give every stage peer an IPFS store (checkpoint shares) and recover a lost stage with a fresh peer. */
  checkpoints?: boolean;
  /** Rebuild a lost middle stage from its neighbours on a fresh peer (driver.ts `rebuild`). */
  rebuild?: 'fallback' | 'prefer';
  /** A stage call's deadline (default: driver.ts callTimeoutFor the model's size). */
  callTimeoutMs?: number;
}): Promise<LocalPipeline> {
  const root = mkdtempSync(join(tmpdir(), 'tessera-pipeline-'));
  const logger = pino({ level: 'silent' });
  const hosts: Host[] = [];
  const servers: StageServer[][] = [];
  const R = o.replicas ?? 1;
  const stores: Store[] = [];
  let fresh = 0;
  const specs = splitStages(o.config, o.stages);
  type Peer = StageServer & { host: Host; dataDir: string; store?: Store };
  // The driver's host first: every stage peer admits its peer id, and only it, as the run's driver.
  const driverHost = await createHost({ dataDir: join(root, 'driver'), logger, busyPeers: true });
  const startPeer = async (dir: string, spec: (typeof specs)[number], init: boolean): Promise<Peer> => {
    const host = await createHost({ dataDir: join(root, dir), logger, busyPeers: true });
    hosts.push(host);
    let store: Store | undefined;
    if (o.checkpoints) {
      store = await openStore(join(root, dir), { libp2p: host.node });
      stores.push(store);
    }
    const srv = await serveStage(host, {
      config: o.config,
      spec,
      kernels: o.kernels,
      adamw: o.adamw,
      codec: o.codec,
      drivers: [driverHost.peerId],
      init: init ? (s) => s.loadFromFull(o.genesis) : null,
      ...(store ? { store } : {}),
      ...(o.bottleneck !== undefined ? { bottleneck: o.bottleneck } : {}),
    });
    return Object.assign(srv, { host, dataDir: join(root, dir), ...(store ? { store } : {}) });
  };
  for (const spec of specs) {
    const row: StageServer[] = [];
    for (let r = 0; r < R; r++) row.push(await startPeer(`stage-${spec.index}-${r}`, spec, true));
    servers.push(row);
  }
  hosts.push(driverHost);
  const connectAll = async (h: Host) => {
    // Stage peers know each other (they fetch checkpoint shares from one another) and the driver.
    for (const other of hosts)
      if (other !== h && !stopped.has(other))
        await h.dial(other.multiaddrs()[0], { signal: AbortSignal.timeout(5000) }).catch(() => undefined);
  };
  const peerIds: string[][] = [];
  for (const row of servers) {
    const ids: string[] = [];
    for (const s of row) {
      const h = (s as Peer).host;
      await driverHost.dial(h.multiaddrs()[0], { signal: AbortSignal.timeout(5000) });
      ids.push(h.peerId);
    }
    peerIds.push(ids);
  }
  const stopped = new Set<Host>();
  if (o.checkpoints || o.rebuild) for (const h of hosts) await connectAll(h);
  const driver = new PipelineDriver({
    host: driverHost,
    stages: peerIds,
    dim: o.config.dim,
    vocabSize: o.config.vocabSize,
    tied: hasTiedEmbedding(o.config),
    codec: o.codec,
    callTimeoutMs: o.callTimeoutMs ?? callTimeoutFor(o.genesis.length),
    ...(o.inflight ? { inflight: o.inflight } : {}),
    ...(o.bottleneck !== undefined ? { width: o.bottleneck } : {}),
    ...(o.routing ? { routing: o.routing } : {}),
    ...(o.throughputOf ? { throughputOf: o.throughputOf } : {}),
    ...(o.rebuild ? { rebuild: o.rebuild } : {}),
    ...(o.checkpoints || o.rebuild
      ? {
          recover: async (stage: number) => {
            const srv = await startPeer(`fresh-${fresh++}`, specs[stage], false);
            servers[stage].push(srv);
            await connectAll(srv.host);
            return srv.host.peerId;
          },
        }
      : {}),
  });
  return {
    driver,
    servers,
    hosts,
    driverHost,
    alive: (srv) => !stopped.has((srv as Peer).host),
    peerOf: (srv) => (srv as Peer).host.peerId,
    dataDirOf: (srv) => (srv as Peer).dataDir,
    storeOf: (srv) => (srv as Peer).store,
    kill: async (stage, replica) => {
      const h = (servers[stage][replica] as Peer).host;
      stopped.add(h);
      await h.stop();
    },
    close: async () => {
      await Promise.allSettled(stores.map((s) => s.stop()));
      await Promise.allSettled(hosts.filter((h) => !stopped.has(h)).map((h) => h.stop()));
      rmSync(root, { recursive: true, force: true });
    },
  };
}
