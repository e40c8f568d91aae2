/**
 * What a running peer reports: one RoundReport per applied (or synced) round, and the NodeView
 * a dashboard or script reads. The dashboard imports these types from here, not from the node.
 * RoundMeter turns the peer's running counters (compute time, inner steps, CPU time, wire bytes)
 * into the per-report deltas.
 */
import type { LedgerView } from '../ledger/view.js';
import type { DecodedManifest } from '../swarm/manifest.js';
import type { ScoreEntry } from './wire.js';

export type { ScoreEntry } from './wire.js';

export interface RoundReport {
  round: number;
  /** Fraction of wall-clock time since the last report spent inside inner training steps. */
  computeFraction: number;
  /** Inner steps run since the last report. */
  innerSteps: number;
  /** CPU time of this process (all threads) per wall-clock time since the last report. */
  cpuFraction: number;
  valLoss: number;
  /** Mean training loss of this peer's inner steps for the round (NaN if it trained none). */
  trainLoss: number;
  /** The updates applied this round: author and tokens trained. */
  contributors: { peer: string; tokens: number }[];
  /** CID of the latest published checkpoint (null until one is published). */
  checkpointCid: string | null;
  peers: number;
  roster: number;
  /** 'round' only: the round's voters (members past probation; docs/ROUNDS.md "Membership"). */
  voters?: number;
  /** 'round' only: the leader of the decided commit. */
  leader?: string;
  included: number;
  weightsHash: string;
  /**
   * A LoRA run: the hash of the frozen base weights this peer trains on, taken at the report (equal
   * to the manifest's base.weightsHash round after round: training never writes the base).
   */
  baseHash?: string;
  /** 'round' only: the encoded update payloads of the decided set, in bytes (each one codec message). */
  payloadBytes?: number;
  /**
   * 'round' only: the deadline stretch [training, collection] the next round runs under, in
   * permille of the manifest's trainMs and collection window (docs/ROUNDS.md "Deadlines that
   * follow the swarm"; 1000 = as written).
   */
  stretch?: [number, number];
  bytesSent: number;
  bytesReceived: number;
  seconds: number;
  event: 'round' | 'synced';
  /** How a 'synced' state arrived: 'ipfs' (checkpoint CID), 'bulk' (direct stream) or 'local' (own snapshot). */
  via?: 'ipfs' | 'bulk' | 'local';
  /** Replication: items this peer must hold under the current roster, and how many it holds. */
  storage?: { held: number; needed: number; shardsFetched: number; corruptBlocks: number };
  /** The dataset CID this round trained on (changes when a governance vote switches it). */
  datasetCid?: string;
  /** Validator only: its latest scores (round, per peer: score, smoothed score, flagged, reason). */
  scores?: { round: number; entries: ScoreEntry[] };
  /**
   * Validator only: every round scored since the previous report (scoring runs beside the
   * rounds, so a report can see 0, 1 or more).
   */
  scored?: { round: number; entries: ScoreEntry[] }[];
  /** Validator with a chain link: rounds whose score report it signed since the previous report. */
  signed?: number[];
  /**
   * Validator with a chain link: what those reports pay, per round: each paid peer and its points
   * (the tokens of its update in the decided set; the contract mints sharesPerRound pro rata).
   */
  paid?: { round: number; pay: { peer: string; points: number }[] }[];
  /** Validator with a chain link: rounds scored since the previous report whose report it will not sign (no update earned points). */
  unpaid?: number[];
  /** Validator with audit on: re-executions since the previous report (steps re-run, wall time). */
  audits?: AuditRecord[];
  /** Fraud proofs received and checked by this peer (one re-executed step each) since the previous report. */
  frauds?: FraudRecord[];
}

/**
 * One audit by re-execution: ok, or why not (fraud at step k, a missing or inconsistent
 * commitment, an update that is not the trace's end).
 */
export interface AuditRecord {
  round: number;
  trainer: string;
  ok: boolean;
  reason: string | null;
  k?: number;
  steps: number;
  ms: number;
  trainerMs?: number;
}
/** A fraud proof as checked by this peer. */
export interface FraudRecord {
  round: number;
  trainer: string;
  k: number;
  by: string;
  verified: boolean;
  reason: string | null;
}

/** What a dashboard or script can read from a running node (see SwarmNode.view()). */
export interface NodeView {
  runId: string;
  manifest: DecodedManifest['manifest'];
  peerId: string;
  round: number;
  phase: string;
  roster: string[];
  /** Peers subscribed to the run's control topic (connected, not necessarily members). */
  subscribers: string[];
  weightsHash: string;
  checkpointCid: string | null;
  params: number;
  /**
   * Smoothed validator score per peer: the mean over the latest report of each validator heard
   * (this node's own included).
   */
  scores?: Record<string, number>;
  /** The run's ledger (shares, revenue, proposals, queued commitments), when the node is linked to a chain. */
  ledger?: LedgerView;
}

/** The running counters a report is a delta of. */
export interface MeterReading {
  /** Milliseconds spent inside inner steps, ever. */
  computeMs: number;
  /** Inner steps run, ever. */
  innerSteps: number;
  /** Wire bytes, ever. */
  wire: { sent: number; received: number };
}

function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** Per-report deltas of compute time, steps, CPU time and wire bytes (the round line's numbers). */
export class RoundMeter {
  private last = { ms: 0, steps: 0, at: performance.now(), cpu: 0 };
  private lastBytes = { sent: 0, received: 0 };
  private roundStart = Date.now();

  /** Starts the first interval at the current readings. */
  reset(r: MeterReading): void {
    this.roundStart = Date.now();
    this.last = { ms: r.computeMs, steps: r.innerSteps, at: performance.now(), cpu: cpuMs() };
    this.lastBytes = { ...r.wire };
  }

  /** The deltas since the previous take (or reset), and starts the next interval. */
  take(
    r: MeterReading,
  ): Pick<RoundReport, 'computeFraction' | 'innerSteps' | 'cpuFraction' | 'bytesSent' | 'bytesReceived' | 'seconds'> {
    const now = Date.now();
    const nowPerf = performance.now();
    const wall = nowPerf - this.last.at;
    const out = {
      computeFraction: wall > 0 ? Math.min(1, (r.computeMs - this.last.ms) / wall) : 0,
      innerSteps: r.innerSteps - this.last.steps,
      cpuFraction: wall > 0 ? (cpuMs() - this.last.cpu) / wall : 0,
      bytesSent: r.wire.sent - this.lastBytes.sent,
      bytesReceived: r.wire.received - this.lastBytes.received,
      seconds: (now - this.roundStart) / 1000,
    };
    this.lastBytes = { ...r.wire };
    this.last = { ms: r.computeMs, steps: r.innerSteps, at: nowPerf, cpu: cpuMs() };
    this.roundStart = now;
    return out;
  }
}
