/**
 * How a swarm peer is started: the run, its data directory and network, its roles (validator,
 * trusted validators, ledger link) and the test and drill knobs (link delay, misbehaviour).
 */
import type { Logger } from 'pino';
import type { HostOptions } from '../net/host.js';
import type { DecodedManifest } from '../swarm/manifest.js';
import type { Behaviour } from '../verify/adversaries.js';
import type { LedgerOptions } from './ledger.js';
import type { RoundReport } from './report.js';

export interface NodeOptions {
  manifest: DecodedManifest;
  dataDir: string;
  listen?: string[];
  /** Multiaddrs (with /p2p/<id>) dialled (and re-dialled) in the background. */
  bootstrap?: string[];
  /** Start at round 0 with this roster (peer ids), if it lists this peer. */
  genesisPeers?: string[];
  cacheDir?: string;
  threads?: number;
  /**
   * Where the inner steps run (src/train/device-model.ts): 'cpu' (default), 'webgpu', or 'auto'
   * (webgpu when an adapter is found). Refused ('webgpu') or cpu ('auto') on a run audited bit
   * for bit (hyper.audit without a tolerance: device-model.ts gpuAuditRefusal).
   */
  device?: 'cpu' | 'webgpu' | 'auto';
  /**
   * A fine-tuning run's base model as a local checkpoint directory (`tessera node --base`),
   * checked against the manifest's base.weightsHash; default: fetched by the manifest's base.cid.
   */
  base?: string;
  evalBatches?: number;
  onRound?: (r: RoundReport) => void;
  onLog?: (line: string) => void;
  logger?: Logger;
  /** Discover peers on the LAN with mDNS. */
  mdns?: boolean;
  /**
   * Reachability (issue 16, net/host.ts): serve as a circuit relay (with the manifest's limits),
   * reserve a relay slot behind a NAT, announced addresses, UPnP, and a callback on each change.
   */
  net?: Pick<
    HostOptions,
    'relay' | 'relayLimits' | 'reserve' | 'announce' | 'upnp' | 'holePunch' | 'punchPort' | 'onReachability'
  >;
  /**
   * Emulated one-way link delay in ms (default: env TESSERA_LINK_DELAY_MS, else 0): every
   * control message is handled and every payload download finishes this much later. For
   * measuring how overlap hides a slow link on loopback, where no real delay exists.
   */
  linkDelayMs?: number;
  /** Limit on one fetch of the dataset, tokenizer, genesis or a shard from peers (default 30 s). */
  fetchTimeoutMs?: number;
  /**
   * Misbehave (verification tests and drills, src/verify/adversaries.ts): submit a transformed
   * update instead of the honest one. Default 'honest'.
   */
  behave?: Behaviour;
  /** Validator role: score every applied update (src/verify/score.ts) and publish signed score reports. */
  validator?: boolean;
  /**
   * Where a validator re-executes a GPU trainer's audited round (docs/WEBGPU.md): 'device'
   * (default: on its own --device when that is of the trainer's backend class, bit for bit; else
   * the CPU with the manifest's tolerance) or 'cpu' (always the CPU, keeping the GPU for training).
   */
  auditOn?: 'device' | 'cpu';
  /**
   * Selection by score: peer ids of validators this peer trusts. A member one of them flagged in
   * a recent report (other than for noise-prone 'harmful' alone) is left out of the update sets
   * this peer proposes as leader. A validator always trusts its own reports.
   */
  trustValidators?: string[];
  /**
   * Link to the run's TesseraRun contract (src/ledger/link.ts): validators sign score reports for
   * it, every linked peer submits quorum reports, reads shares and follows governance. `key`:
   * this peer's EVM key (default: DATA_DIR/evm.key, created on first use).
   */
  ledger?: LedgerOptions;
}
