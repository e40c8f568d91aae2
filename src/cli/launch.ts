/**
 * Spawns `tessera node` processes on 127.0.0.1: the process launcher behind `tessera demo`
 * (which needs all of it: drills, validators, the ledger link and the dashboard are demo flags),
 * also used by the multi-process tests through test/support/swarm.ts. Pre-creates each peer's identity so that the genesis roster and bootstrap addresses
 * are known up front, gives every peer every other peer as bootstrap, and parses the JSON lines
 * the nodes print.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { createWriteStream, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadOrCreateIdentity } from '../net/identity.js';
import type { RoundReport } from '../peer/report.js';

export const TESSERA_BIN = fileURLToPath(new URL('../../../bin/tessera.js', import.meta.url));

export interface PeerSpec {
  index: number;
  dataDir: string;
  peerId: string;
  port: number;
  addr: string;
}

export interface PeerProc extends PeerSpec {
  child: ChildProcess;
  alive: boolean;
  reports: RoundReport[];
  /** Other JSON lines the node printed ('started', 'reachability', ...). */
  events: Array<Record<string, unknown> & { event: string }>;
  stderr: string[];
}

export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export async function preparePeer(index: number, dataDir: string): Promise<PeerSpec> {
  mkdirSync(dataDir, { recursive: true });
  const id = await loadOrCreateIdentity(dataDir);
  const port = await freePort();
  const peerId = id.peerId.toString();
  return { index, dataDir, peerId, port, addr: `/ip4/127.0.0.1/tcp/${port}/p2p/${peerId}` };
}

export interface SpawnOptions {
  run: string;
  /** Bootstrap multiaddrs. */
  bootstrap: string[];
  genesisPeers?: string[];
  cacheDir?: string;
  /** `tessera node --device`: where the peer's inner steps run. */
  device?: 'cpu' | 'webgpu' | 'auto';
  /** Serve the live dashboard from this peer (`tessera node --dashboard`). */
  dashboard?: { port: number; host?: string; token?: string };
  env?: NodeJS.ProcessEnv;
  /** `tessera node --behave <kind>` (verification drills). */
  behave?: string;
  /** `tessera node --validator`. */
  validator?: boolean;
  /** `tessera node --audit-on`. */
  auditOn?: 'device' | 'cpu';
  /** `tessera node --trust-validators`. */
  trustValidators?: string[];
  /** `tessera node --rpc --contract [--key]`: link to the run's ledger. */
  ledger?: { rpc: string; contract: string; keyFile?: string };
  /**
   * Run the node under this command (e.g. ['ip', 'netns', 'exec', NS] for a network namespace,
   * test/support/netlab.ts). Default: none.
   */
  prefix?: string[];
  /** Listen multiaddr. Default /ip4/127.0.0.1/tcp/<spec.port>. */
  listen?: string;
  /** More `tessera node` flags (e.g. --no-relay, --announce ...). */
  args?: string[];
  onReport?: (p: PeerProc, r: RoundReport) => void;
  /** The peer is up (its `started` line): the device its inner steps run on. */
  /** codec: where the peer runs Δ and its codec (Training.codecPlace). */
  onStarted?: (p: PeerProc, device: string, codec: string) => void;
  onExit?: (p: PeerProc, code: number | null, signal: NodeJS.Signals | null) => void;
  /** Append everything the node prints (its JSON lines and its log, at TESSERA_LOG level) to this file. */
  logFile?: string;
}

export function spawnPeer(spec: PeerSpec, o: SpawnOptions): PeerProc {
  const args = [
    TESSERA_BIN,
    'node',
    '--run',
    o.run,
    '--data-dir',
    spec.dataDir,
    '--listen',
    o.listen ?? `/ip4/127.0.0.1/tcp/${spec.port}`,
    '--json',
    ...(o.args ?? []),
  ];
  const boot = o.bootstrap.filter((a) => !a.endsWith(spec.peerId));
  if (boot.length) args.push('--bootstrap', boot.join(','));
  if (o.genesisPeers?.length) args.push('--genesis-peers', o.genesisPeers.join(','));
  if (o.cacheDir) args.push('--cache-dir', o.cacheDir);
  if (o.device && o.device !== 'cpu') args.push('--device', o.device);
  if (o.behave && o.behave !== 'honest') args.push('--behave', o.behave);
  if (o.validator) args.push('--validator');
  if (o.auditOn && o.auditOn !== 'device') args.push('--audit-on', o.auditOn);
  if (o.trustValidators?.length) args.push('--trust-validators', o.trustValidators.join(','));
  if (o.ledger) {
    args.push('--rpc', o.ledger.rpc, '--contract', o.ledger.contract);
    if (o.ledger.keyFile) args.push('--key', o.ledger.keyFile);
  }
  if (o.dashboard) {
    args.push('--dashboard', String(o.dashboard.port));
    if (o.dashboard.host) args.push('--dashboard-host', o.dashboard.host);
  }
  // The token travels in the environment, not on the command line (where `ps` shows it).
  const env = {
    ...process.env,
    ...o.env,
    ...(o.dashboard?.token ? { TESSERA_DASHBOARD_TOKEN: o.dashboard.token } : {}),
  };
  const [cmd, ...pre] = o.prefix?.length ? [...o.prefix, process.execPath] : [process.execPath];
  const child = spawn(cmd, [...pre, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  const p: PeerProc = { ...spec, child, alive: true, reports: [], events: [], stderr: [] };
  let buf = '';
  const log = o.logFile ? createWriteStream(o.logFile, { flags: 'a' }) : null;
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => {
    log?.write(d);
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        const j = JSON.parse(line) as RoundReport & { event: string };
        const ev: string = j.event;
        if (ev === 'started') {
          const s = j as { device?: unknown; codec?: unknown };
          o.onStarted?.(p, String(s.device ?? 'cpu'), String(s.codec ?? ''));
        } else if (j.event === 'round' || j.event === 'synced') {
          p.reports.push(j);
          o.onReport?.(p, j);
        } else if (typeof j.event === 'string' && p.events.length < 1000)
          p.events.push(j as unknown as PeerProc['events'][number]);
      } catch {
        /* not JSON */
      }
    }
  });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    log?.write(d);
    p.stderr.push(d);
    if (p.stderr.length > 200) p.stderr.shift();
  });
  child.on('exit', (code, signal) => {
    p.alive = false;
    log?.end();
    o.onExit?.(p, code, signal);
  });
  return p;
}

/** SIGTERM every live child, then SIGKILL whatever is left after `graceMs`. */
export async function stopAll(peers: PeerProc[], graceMs = 3000): Promise<void> {
  const live = peers.filter((p) => p.alive && p.child.exitCode === null && p.child.signalCode === null);
  for (const p of live) p.child.kill('SIGTERM');
  const t0 = Date.now();
  while (live.some((p) => p.child.exitCode === null && p.child.signalCode === null) && Date.now() - t0 < graceMs) {
    await new Promise((r) => setTimeout(r, 50));
  }
  for (const p of live) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
}

/** `preferred` if it is free on `host`, else any free port (the demo's dashboard). */
export async function portOr(preferred: number, host = '127.0.0.1'): Promise<number> {
  const free = await new Promise<boolean>((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(preferred, host, () => s.close(() => resolve(true)));
  });
  return free ? preferred : await freePort();
}

export function dataDirFor(root: string, i: number): string {
  return join(root, `peer-${i}`);
}
