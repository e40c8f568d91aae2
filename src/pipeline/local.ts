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
import type { ModelConfig } from '../model/config.js';
import { splitStages } from '../model/stage.js';
import type { AdamWSettings } from '../train/adamw.js';
import type { ActCodecSpec } from './act-codec.js';
import { PipelineDriver } from './driver.js';
import { serveStage, type StageServer } from './stage-server.js';

export interface LocalPipeline {
  driver: PipelineDriver;
  servers: StageServer[][];
  hosts: Host[];
  /** Stop one stage peer (its host goes away mid-run: a failure drill). */
  kill(stage: number, replica: number): Promise<void>;
  close(): Promise<void>;
}

export async function startLocalPipeline(o: {
  config: ModelConfig; stages: number; replicas?: number; kernels: Kernels; adamw: AdamWSettings; codec: ActCodecSpec;
  genesis: Float32Array; inflight?: number;
}): Promise<LocalPipeline> {
  const root = mkdtempSync(join(tmpdir(), 'tessera-pipeline-'));
  const logger = pino({ level: 'silent' });
  const hosts: Host[] = [];
  const servers: StageServer[][] = [];
  const R = o.replicas ?? 1;
  for (const spec of splitStages(o.config, o.stages)) {
    const row: StageServer[] = [];
    for (let r = 0; r < R; r++) {
      const host = await createHost({ dataDir: join(root, `stage-${spec.index}-${r}`), logger });
      hosts.push(host);
      row.push(Object.assign(await serveStage(host, { config: o.config, spec, kernels: o.kernels, adamw: o.adamw, codec: o.codec, init: (s) => s.loadFromFull(o.genesis) }), { host }));
    }
    servers.push(row);
  }
  const driverHost = await createHost({ dataDir: join(root, 'driver'), logger });
  hosts.push(driverHost);
  const peerIds: string[][] = [];
  for (const row of servers) {
    const ids: string[] = [];
    for (const s of row) {
      const h = (s as StageServer & { host: Host }).host;
      await driverHost.dial(h.multiaddrs()[0], { signal: AbortSignal.timeout(5000) });
      ids.push(h.peerId);
    }
    peerIds.push(ids);
  }
  const driver = new PipelineDriver({ host: driverHost, stages: peerIds, dim: o.config.dim, vocabSize: o.config.vocabSize, codec: o.codec, ...(o.inflight ? { inflight: o.inflight } : {}) });
  const stopped = new Set<Host>();
  return {
    driver, servers, hosts,
    kill: async (stage, replica) => {
      const h = (servers[stage][replica] as StageServer & { host: Host }).host;
      stopped.add(h);
      await h.stop();
    },
    close: async () => {
      await Promise.allSettled(hosts.filter((h) => !stopped.has(h)).map((h) => h.stop()));
      rmSync(root, { recursive: true, force: true });
    },
  };
}
