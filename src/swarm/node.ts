/**
 * A running swarm peer: the thin, effectful driver around the pure round reducer (round.ts).
 *
 *   net message ──fromWire──▶ reducer event ──step──▶ effects ──▶ net actions / training / apply
 *
 * - Control messages travel signed on the run's gossip topic (kinds `round.*`, plus `node.snap`,
 *   a peer's advertisement of the bulk hash of its current weights+momentum snapshot).
 * - Payloads (encoded updates, snapshots) travel on the bulk protocol, addressed by sha256.
 * - An `update` message is handed to the reducer only once its payload is held and decodes
 *   (the reducer trusts the driver to check Δ before reporting an update held).
 * - acceptorRecord(state) is written to DATA_DIR/acceptor.json (synchronously, before any effect
 *   of the step is executed) whenever it changes; a restart passes it to init().
 * - Training runs in this thread, one inner step at a time, yielding to the event loop between
 *   steps with setImmediate so that gossip, bulk transfers and ticks keep flowing. (A worker
 *   thread would also hide the event-loop work from the step time; at the step sizes the demo
 *   uses, the gaps between steps are well under 1% of compute, so it is not needed yet.)
 * - Overlap (manifest hyper.overlap = 'delayed'): the reducer's `pretrain` hint starts round r+1's
 *   inner steps the moment this peer submits round r, from the weights it holds (θ_r), while
 *   round r is still being exchanged and agreed; round r's decided set is then applied to θ_r
 *   underneath. The next `train` effect adopts the job if round, base and shards match.
 * - Compute accounting: time inside inner steps vs wall-clock time, reported per round.
 */
import { EventEmitter } from 'node:events';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import {
  HashMismatchError, TooLargeError, createHost, fetchBulk, joinControlChannel, serveBulk, sha256Hex, type ControlChannel, type Host,
} from '../net/index.js';
import type { Logger } from 'pino';
import { pino } from 'pino';
import { loadKernels } from '../kernels/index.js';
import { GPT } from '../model/gpt.js';
import { weightsHash } from '../model/checkpoint.js';
import { loadCorpus, prepareDataset } from '../data/index.js';
import { BatchSampler, evalBatches, type Batch, type TokenArray } from '../data/batches.js';
import { sample } from '../model/sample.js';
import { AdamW } from '../train/adamw.js';
import { Tokenizer } from '../data/tokenizer.js';
import { openStore, parseCid, type Store } from '../store/index.js';
import { readManifest, readShard, type DatasetManifest } from '../store/dataset.js';
import { loadState, publishState } from '../store/checkpoint.js';
import type { LedgerView } from '../ledger/view.js';
import { LedgerLink, PayoutSchema, SigBodySchema, parseDatasetSetting, type DatasetSwitch, type SigBody } from '../ledger/link.js';
import { loadOrCreateEvmKey } from '../ledger/keys.js';
import { buildScoreReport } from '../ledger/report.js';
import { privateKeyToAccount } from 'viem/accounts';
import type { Address, Hex } from 'viem';
import { pinPlan, type PinItem } from '../store/replicate.js';
import { behave, type Behaviour } from '../verify/adversaries.js';
import { ScoreBook, harmful, roundFlag, scoreRound, type Submission } from '../verify/score.js';
import { Stepper, audit as auditTrace, cloneState, digestState, leafOf, optHash, spotCheck, verifyFraudProof, type AuditJob, type StateDigest, type StepState, type TrainerOracle } from '../verify/audit.js';
import { decodeFraudProof, encodeFraudProof, MAX_PROOF_BYTES } from '../verify/audit-wire.js';
import { decodeTrace, encodeTrace, maxTraceBytes, traceRoot } from '../verify/trace.js';
import { MerkleTree } from '../verify/merkle.js';
import type { Kernels } from '../kernels/api.js';
import { assignShards, compareIds } from './assign.js';
import { canonicalHash } from './canonical.js';
import { Rng } from '../util/rng.js';
import { lrAt } from '../train/schedule.js';
import { InvalidInputError } from '../util/errors.js';
import { applyCommitted, type CommittedUpdate } from './apply.js';
import { OuterNesterov } from './outer.js';
import { roundSeed } from './assign.js';
import { DecodeError, ErrorFeedback, getCodec, type Codec } from './compress/index.js';
import { CidString, storageParams, type DecodedManifest, type StorageParams } from './manifest.js';
import {
  AcceptorRecordSchema, RoundBodySchemas, SnapshotSchema, acceptorRecord, fromWire, init, nextDeadline, roundParams,
  snapshotOf, step, toWire, type AcceptorRecord, type Effect, type Message, type RoundEvent, type RoundSnapshot,
  type RoundState, type UpdateMsg,
} from './round.js';

const HEX64 = /^[0-9a-f]{64}$/;
const DEBUG = process.env.TESSERA_NODE_DEBUG === '1';
/**
 * Reducer rejections that only an attacker or a bug produces are logged at warn; the others
 * (late, stale-round, duplicate, ... ) are routine under message delay and logged at debug.
 */
const SUSPICIOUS = new Set(['malformed', 'self', 'not-member', 'not-leader', 'equivocation', 'wrong-base', 'bad-certificate', 'conflict', 'wrong-hash']);

export const NodeSchemas = {
  ...RoundBodySchemas,
  /** "My snapshot of the start of round `round` (θ hash weightsHash) is bulk object `bundle`." */
  'node.snap': z.object({
    round: z.number().int().min(0), weightsHash: z.string().regex(HEX64), bundle: z.string().regex(HEX64),
    /** The same state as an IPFS checkpoint directory (store/checkpoint.ts), fetchable from any holder. */
    cid: CidString.optional(),
  }).strict(),
  /** A validator's scores of round `round`'s applied updates (signed by the envelope, like every control message). */
  'node.scores': z.object({
    round: z.number().int().min(0), baseHash: z.string().regex(HEX64), reportHash: z.string().regex(HEX64),
    entries: z.array(z.object({
      peer: z.string().min(1).max(128), score: z.number().min(0).max(1e6), ema: z.number().min(0).max(1e6), flagged: z.boolean(),
      reason: z.string().max(64).nullable(),
    }).strict()).max(1024),
  }).strict(),
  /**
   * Audit (manifest hyper.audit): "my update `updateHash` of round `round` is the end of `steps`
   * inner steps whose states have Merkle root `root`; the trace (pre-state + digests) is bulk
   * object `trace`". Signed by the envelope: the trainer is bound to its root.
   */
  'node.commit': z.object({
    round: z.number().int().min(0), updateHash: z.string().regex(HEX64), steps: z.number().int().min(1).max(4096),
    root: z.string().regex(HEX64), trace: z.string().regex(HEX64),
  }).strict(),
  /** A validator found `trainer`'s step `k` of round `round` wrong: the fraud proof is bulk object `proof`. */
  'node.fraud': z.object({
    round: z.number().int().min(0), trainer: z.string().min(1).max(128), k: z.number().int().min(1).max(4096),
    root: z.string().regex(HEX64), proof: z.string().regex(HEX64),
  }).strict(),
  /** "Mint my shares to this EVM address" (the envelope binds it to the announcing peer id). */
  'node.payout': PayoutSchema,
  /** A validator's EIP-712 signature over a round's score report, for the chain (src/ledger/link.ts). */
  'node.sig': SigBodySchema,
} as const;

/** One peer's verdict in a validator's round report. */
export interface ScoreEntry { peer: string; score: number; ema: number; flagged: boolean; reason: string | null }

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
  included: number;
  weightsHash: string;
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
  /** Validator only: every round scored since the previous report (scoring runs beside the rounds, so a report can see 0, 1 or more). */
  scored?: { round: number; entries: ScoreEntry[] }[];
  /** Validator with a chain link: rounds whose score report it signed since the previous report. */
  signed?: number[];
  /** Validator with audit on: re-executions since the previous report (steps re-run, wall time). */
  audits?: AuditRecord[];
  /** Fraud proofs received and checked by this peer (one re-executed step each) since the previous report. */
  frauds?: FraudRecord[];
}

/** One audit by re-execution: ok, or why not (fraud at step k, a missing or inconsistent commitment, an update that is not the trace's end). */
export interface AuditRecord { round: number; trainer: string; ok: boolean; reason: string | null; k?: number; steps: number; ms: number; trainerMs?: number }
/** A fraud proof as checked by this peer. */
export interface FraudRecord { round: number; trainer: string; k: number; by: string; verified: boolean; reason: string | null }

/** What a dashboard or script can read from a running node (see view()). */
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
  /** Smoothed validator score per peer: the mean over the latest report of each validator heard (this node's own included). */
  scores?: Record<string, number>;
  /** The run's ledger (shares, revenue, proposals, queued commitments), when the node is linked to a chain. */
  ledger?: LedgerView;
}

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
  evalBatches?: number;
  onRound?: (r: RoundReport) => void;
  onLog?: (line: string) => void;
  logger?: Logger;
  /** Discover peers on the LAN with mDNS. */
  mdns?: boolean;
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
  ledger?: { rpc: string; contract: Address; key?: Hex; submit?: boolean };
}

/** Default limit on one fetch of data or state from peers. */
const FETCH_MS = 30_000;
/**
 * A replicated item stays pinned this many rounds after this peer stops being one of its
 * holders, so that the new holders can fetch it first (placement changes with the roster, and
 * views of the roster differ for a round or two while peers join and leave).
 */
const UNPIN_GRACE_ROUNDS = 10;
/** Limit on fetching one item to hold; a miss is retried at the next round. */
const HOLD_FETCH_MS = 10_000;
/** Latest round states kept (pinned on IPFS and as bulk bundles) for joiners that fetch slowly. */
const RECENT_STATES = 4;
/** Decoded training shards kept in memory. */
const SHARD_CACHE = 64;

/** A training job: inner steps for one round from one base, possibly started before its round (pretrain). */
interface TrainJob {
  round: number;
  baseHash: string;
  shards: number[];
  maxSteps: number;
  /** The base weights θ (a private copy: the shared θ may be updated underneath). */
  base: Float32Array;
  /** Local deadline; null while the job is only a pretrain hint. */
  until: number | null;
  startedAt: number;
  stop: boolean;
}

function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** Sequences of the eval set and the shard sampler. */
function shardSlice(tokens: TokenArray, shard: number, numShards: number, T: number): TokenArray {
  const per = Math.floor(tokens.length / numShards);
  const start = shard * per;
  const end = Math.min(tokens.length, start + Math.max(per, T + 2));
  return tokens.subarray(start, end) as TokenArray;
}

/** Bundle = u32 header length | JSON header | weights f32 | momentum f32. */
function encodeBundle(snap: RoundSnapshot, theta: Float32Array, momentum: Float32Array): Uint8Array {
  const head = new TextEncoder().encode(JSON.stringify(snap));
  const out = new Uint8Array(4 + head.length + theta.byteLength + momentum.byteLength);
  new DataView(out.buffer).setUint32(0, head.length, true);
  out.set(head, 4);
  out.set(new Uint8Array(theta.buffer, theta.byteOffset, theta.byteLength), 4 + head.length);
  out.set(new Uint8Array(momentum.buffer, momentum.byteOffset, momentum.byteLength), 4 + head.length + theta.byteLength);
  return out;
}

function decodeBundle(bytes: Uint8Array, P: number): { snap: RoundSnapshot; theta: Float32Array; momentum: Float32Array } {
  if (bytes.length < 4) throw new InvalidInputError('snapshot bundle too short');
  const hl = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true);
  if (bytes.length !== 4 + hl + 8 * P) throw new InvalidInputError(`snapshot bundle has ${bytes.length} bytes, expected ${4 + hl + 8 * P}`);
  const snap = SnapshotSchema.parse(JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + hl))));
  const body = new Uint8Array(bytes.subarray(4 + hl)); // aligned copy (a Buffer's slice() would be a view)
  return { snap, theta: new Float32Array(body.buffer, 0, P).slice(), momentum: new Float32Array(body.buffer, 4 * P, P).slice() };
}

export class SwarmNode {
  host!: Host;
  /** 'round' (RoundReport) for every report also passed to onRound. */
  readonly events = new EventEmitter<{ round: [RoundReport] }>();
  channel!: ControlChannel<typeof NodeSchemas>;
  state!: RoundState;
  private readonly m;
  private readonly p;
  /** Trains (owned by the current job). */
  private gpt!: GPT;
  /** Evaluates θ; separate, because in delayed mode θ is applied while a job is training. */
  private evalGpt!: GPT;
  private opt!: AdamW;
  private codec!: Codec;
  private ef: ErrorFeedback | null = null;
  private theta!: Float32Array;
  private thetaHash = '';
  /** θ before the last apply, and its hash: the base of the next round in delayed mode. */
  private prevTheta: { hash: string; weights: Float32Array } | null = null;
  private outer!: OuterNesterov;
  private train!: TokenArray;
  private evalSet: Batch[] = [];
  /** Bulk objects by sha256: update payloads and snapshot bundles. */
  private readonly bulk = new Map<string, { bytes: Uint8Array; round: number; keepRounds?: number }>();
  /** Decoded Δ by update hash. */
  private readonly deltas = new Map<string, Float32Array>();
  /** Update messages seen on gossip, by update hash. */
  private readonly updateMsgs = new Map<string, UpdateMsg>();
  private readonly fetching = new Set<string>();
  /** peer → its latest snapshot advertisement. */
  private readonly snaps = new Map<string, { round: number; weightsHash: string; bundle: string; cid?: string }>();
  private training: TrainJob | null = null;
  /** This peer's last submitted update (for the eager guess). */
  private lastOwn: { round: number; hash: string } | null = null;
  /** Validator: smoothed scores, each peer's previous update (replay check), and the latest report. */
  private readonly scoreBook = new ScoreBook();
  private readonly prevDelta = new Map<string, Float32Array>();
  private lastScores: { round: number; entries: ScoreEntry[] } | null = null;
  private scoredSince: { round: number; entries: ScoreEntry[] }[] = [];
  private signedSince: number[] = [];
  /** Audit: commitments heard (by round:peer), records since the last report, kernels for re-execution. */
  private readonly commits = new Map<string, { round: number; updateHash: string; steps: number; root: string; trace: string }>();
  private auditsSince: AuditRecord[] = [];
  /** Members this peer currently leaves out of its proposals (selection by score), and the last round each was flagged. */
  private excluded: string[] = [];
  private readonly flaggedAt = new Map<string, number>();
  /** Roster and base weights hash of each applied round (fraud proofs name past rounds). */
  private readonly roundInfo = new Map<number, { roster: string[]; baseHash: string }>();
  private fraudsSince: FraudRecord[] = [];
  private kernels!: Kernels;
  /** Latest score report received from each validator. */
  readonly scoreReports = new Map<string, { round: number; entries: ScoreEntry[] }>();
  /** The chain link (null without NodeOptions.ledger), this peer's payout address, and every peer's announced one. */
  private link: LedgerLink | null = null;
  private payout!: Address;
  readonly payouts = new Map<string, Address>();
  /** Published state CIDs by snapshot round (the state after round r has snapshot round r + 1). */
  private readonly stateCids = new Map<number, string>();
  /** A governed dataset switch, once its manifest is loaded. */
  private nextDataset: (DatasetSwitch & { dsm: DatasetManifest }) | null = null;
  /** The governed setting last acted on (so each value is fetched once). */
  private loadingSwitch: string | null = null;
  /** A misbehaving peer's previous submission (for 'stale'). */
  private lastSubmitted: Float32Array | null = null;
  private computeMs = 0;
  private innerStepsRun = 0;
  private lastCompute = { ms: 0, steps: 0, at: performance.now(), cpu: 0 };
  private resyncing = false;
  private lastRecord = '';
  private lastVal = NaN;
  /** Sum and count of this peer's inner-step losses since the last report. */
  private trainLossAcc = { sum: 0, n: 0 };
  private tokenizer!: Tokenizer;
  private checkpointCid: string | null = null;
  /** The IPFS store (Helia on this node's libp2p host). */
  store!: Store;
  private readonly sp: StorageParams;
  /** The dataset manifest, when the run names its dataset by CID. */
  private dataset: DatasetManifest | null = null;
  private datasetCid: string | null = null;
  private tokenizerCid: string | null = null;
  /** By `<dataset cid>:<shard>`. */
  private readonly shardCache = new Map<string, TokenArray>();
  private readonly shardFetch = new Map<string, Promise<TokenArray | null>>();
  private shardsFetched = 0;
  /** Checkpoints retained (every checkpointEvery rounds), oldest first; and the latest round state. */
  private checkpoints: { round: number; cid: string }[] = [];
  private latestState: { round: number; cid: string } | null = null;
  /** The last RECENT_STATES published states, oldest first (kept pinned). */
  private readonly recentStates: { round: number; cid: string }[] = [];
  private storageState = { held: 0, needed: 0 };
  /** Serializes pin / unpin / publish / gc on the store. */
  private storeChain: Promise<unknown> = Promise.resolve();
  private publishChain: Promise<unknown> = Promise.resolve();
  private gcRun: Promise<unknown> = Promise.resolve();
  private replicatePending = false;
  /** Replicated item CID → the last round this peer was one of its holders. */
  private readonly lastHolder = new Map<string, number>();
  private timer: NodeJS.Timeout | null = null;
  private dialTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  private lastBytes = { sent: 0, received: 0 };
  private roundStart = Date.now();
  private readonly log: (line: string) => void;
  /** Structured log (pino): every rejected input, with its reason. */
  readonly logger: Logger;
  private readonly recordPath: string;
  private readonly linkDelayMs: number;
  private readonly fetchMs: number;
  /** The latest round-start snapshot (weights + momentum), so a stopped node can resume. */
  private readonly snapPath: string;

  constructor(readonly o: NodeOptions) {
    this.m = o.manifest.manifest;
    this.p = roundParams(o.manifest, Math.max(200, Math.floor(o.manifest.manifest.timing.commitMs / 2)));
    this.log = o.onLog ?? (() => undefined);
    this.linkDelayMs = o.linkDelayMs ?? Math.max(0, Number(process.env.TESSERA_LINK_DELAY_MS ?? 0) || 0);
    this.logger = o.logger ?? pino({ name: 'tessera', level: process.env.TESSERA_LOG ?? 'warn' }, pino.destination(2));
    this.recordPath = join(o.dataDir, 'acceptor.json');
    this.snapPath = join(o.dataDir, `snapshot-${o.manifest.runId.slice(0, 16)}.bin`);
    this.sp = storageParams(o.manifest.manifest);
    this.fetchMs = o.fetchTimeoutMs ?? FETCH_MS;
  }

  get peerId(): string { return this.host.peerId; }

  async start(): Promise<void> {
    try {
      await this.startInner();
    } catch (err) {
      // A start that fails (data or genesis not fetchable in time, a mismatch) releases the
      // host and store it opened, so the process can exit with the error instead of lingering.
      await this.stop();
      throw err;
    }
  }

  private async startInner(): Promise<void> {
    const m = this.m;
    mkdirSync(this.o.dataDir, { recursive: true });
    // Network first: a dataset named by CID is fetched from peers.
    this.host = await createHost({
      dataDir: this.o.dataDir, listen: this.o.listen ?? ['/ip4/127.0.0.1/tcp/0'], mdns: this.o.mdns === true,
      logger: this.logger,
    });
    this.store = await openStore(this.o.dataDir, {
      libp2p: this.host.node,
      onCorrupt: (cid) => this.logger.warn({ reason: 'corrupt-block', cid }, 'local block failed its hash; deleted, refetching from peers'),
    });
    await serveBulk(this.host, (hash) => this.bulk.get(hash)?.bytes);
    this.channel = joinControlChannel({
      host: this.host, runId: this.o.manifest.runId, schemas: NodeSchemas,
      onMessage: (msg) => {
        if (this.linkDelayMs > 0) setTimeout(() => this.onNet(msg.kind, msg.from, msg.body), this.linkDelayMs);
        else this.onNet(msg.kind, msg.from, msg.body);
      },
    });
    this.dialLoop();
    const evmKey = this.o.ledger?.key ?? loadOrCreateEvmKey(this.o.dataDir);
    this.payout = privateKeyToAccount(evmKey).address;
    this.payouts.set(this.host.peerId, this.payout);
    if (this.o.ledger) {
      this.link = new LedgerLink({
        rpc: this.o.ledger.rpc, contract: this.o.ledger.contract, key: evmKey, manifestHash: `0x${this.o.manifest.runId}`,
        queueFile: join(this.o.dataDir, 'ledger-queue.json'), logger: this.logger,
        publish: (body: SigBody) => { if (!this.stopped) this.channel.publish('node.sig', body).catch(() => undefined); },
        ...(this.o.ledger.submit !== undefined ? { submit: this.o.ledger.submit } : {}),
        onSettings: () => this.followGovernance(),
        peerOf: (a) => [...this.payouts].find(([, x]) => x.toLowerCase() === a.toLowerCase())?.[0] ?? null,
      });
      void this.link.tick();
    }
    this.log(`peer ${this.host.peerId} listening on ${this.host.multiaddrs().join(' ')}`);

    // Wait (briefly) for the other genesis peers / a bootstrap peer, so early gossip is not lost.
    // With only mDNS, give LAN discovery a few seconds: a peer that finds the run's topic there
    // joins it instead of founding a second, separate roster.
    const mdnsOnly = this.o.mdns === true && !this.o.genesisPeers?.length && !this.o.bootstrap?.length;
    const want = this.o.genesisPeers?.length ? this.o.genesisPeers.length - 1 : (this.o.bootstrap?.length || mdnsOnly ? 1 : 0);
    const t0 = Date.now();
    const waitMs = mdnsOnly ? 5_000 : 15_000;
    // Count the genesis peers themselves (any other subscriber, even a hostile one, does not help).
    const seen = () => (this.o.genesisPeers?.length ? this.channel.subscribers().filter((p) => this.o.genesisPeers!.includes(p)).length : this.channel.subscribers().length);
    while (seen() < want && Date.now() - t0 < waitMs) await new Promise((r) => setTimeout(r, 100));

    // Data and model, checked against the manifest.
    const B = m.hyper.batch, T = m.model.ctx;
    let val: TokenArray;
    if (m.dataset.cid !== undefined) {
      val = await this.loadDataset(m.dataset.cid);
    } else {
      const ds = prepareDataset({ corpus: loadCorpus('brown'), vocabSize: m.model.vocabSize, ...(this.o.cacheDir ? { cacheDir: this.o.cacheDir } : {}) });
      if (ds.tokenizer.hash() !== m.tokenizerSha256) throw new InvalidInputError(`tokenizer hash ${ds.tokenizer.hash().slice(0, 12)} does not match the manifest's ${m.tokenizerSha256.slice(0, 12)}`);
      if (m.dataset.trainTokensSha256 !== undefined && ds.stats.train.sha256 !== m.dataset.trainTokensSha256) throw new InvalidInputError('training tokens do not match the manifest');
      this.train = ds.train;
      this.tokenizer = ds.tokenizer;
      val = ds.val;
    }
    // Audit needs bitwise-reproducible steps across machines: deterministic kernels for everyone.
    const kernels = loadKernels({ threads: this.o.threads ?? 1, ...(m.hyper.audit ? { deterministic: true } : {}) });
    this.kernels = kernels;
    this.gpt = new GPT(m.model, kernels);
    this.gpt.init(m.seed);
    this.evalGpt = new GPT(m.model, kernels);
    this.outer = new OuterNesterov(this.gpt.params.length, m.hyper.outer);
    if (m.genesisCid !== undefined) {
      const g = await loadState(this.store, parseCid(m.genesisCid), m.model, { signal: AbortSignal.timeout(this.fetchMs) });
      this.gpt.params.set(g.params);
      this.outer.momentum.set(g.momentum);
    }
    this.theta = this.gpt.params.slice();
    this.thetaHash = weightsHash(this.theta);
    if (this.thetaHash !== m.genesisWeightsHash) throw new InvalidInputError(`genesis weights ${m.genesisCid ? `(${m.genesisCid}) ` : ''}hash to ${this.thetaHash.slice(0, 12)}, the manifest says ${m.genesisWeightsHash.slice(0, 12)}`);
    this.opt = new AdamW(m.model, m.hyper.adamw, kernels);
    const cs = m.hyper.codec;
    this.codec = cs.id === 'sparse' ? getCodec('sparse', { chunk: cs.chunk, k: cs.k }) : getCodec(cs.id);
    if (m.hyper.errorFeedback > 0) this.ef = new ErrorFeedback(this.theta.length, m.hyper.errorFeedback);
    this.evalSet = [...evalBatches(val, B, T, this.o.evalBatches ?? 4)];

    const discovered = mdnsOnly ? this.channel.subscribers() : [];

    let acceptor: AcceptorRecord | undefined;
    if (existsSync(this.recordPath)) {
      const r = AcceptorRecordSchema.safeParse(JSON.parse(readFileSync(this.recordPath, 'utf8')));
      if (r.success) acceptor = r.data;
    }
    const bootIds = (this.o.bootstrap ?? []).map((a) => /\/p2p\/([^/]+)/.exec(a)?.[1]).filter((x): x is string => !!x);
    const now = Date.now();
    // Genesis: listed in --genesis-peers, or a founder started with neither genesis peers nor bootstrap (roster = itself).
    const founder = !this.o.genesisPeers?.length && !this.o.bootstrap?.length && discovered.length === 0;
    const genesis = acceptor !== undefined ? undefined
      : this.o.genesisPeers?.includes(this.host.peerId) ? { roster: this.o.genesisPeers } : founder ? { roster: [this.host.peerId] } : undefined;
    const first = init({
      self: this.host.peerId, params: this.p, now,
      ...(genesis ? { genesis } : { bootstrap: [...new Set([...bootIds, ...(this.o.genesisPeers ?? []), ...discovered])] }),
      ...(acceptor ? { acceptor } : {}),
    });
    this.roundStart = now;
    this.lastCompute = { ms: 0, steps: 0, at: performance.now(), cpu: cpuMs() };
    this.lastBytes = { ...this.host.metrics.snapshot().wire };
    this.commit(first.state, first.effects);
    if (first.state.phase === 'unsynced') this.restoreLocal();
    this.timer = setInterval(() => this.tick(), 50);
  }

  /** Fetches the dataset manifest, tokenizer and validation shards by CID (from any peer); returns the validation tokens. */
  private async loadDataset(cidStr: string): Promise<TokenArray> {
    const m = this.m;
    const opts = () => ({ signal: AbortSignal.timeout(this.fetchMs) });
    const cid = parseCid(cidStr);
    const dsm = await readManifest(this.store, cid, opts());
    if (dsm.train.shards.length !== m.dataset.numShards) throw new InvalidInputError(`dataset ${cidStr} has ${dsm.train.shards.length} training shards, the manifest says numShards ${m.dataset.numShards}`);
    if (dsm.tokenizer.vocabSize !== m.model.vocabSize) throw new InvalidInputError(`dataset ${cidStr} has a vocabulary of ${dsm.tokenizer.vocabSize}, the model ${m.model.vocabSize}`);
    const tokCid = m.tokenizerCid !== undefined ? parseCid(m.tokenizerCid) : dsm.tokenizer.cid;
    const text = new TextDecoder().decode(await this.store.cat(tokCid, { maxBytes: 64 << 20, ...opts() }));
    let tok: Tokenizer;
    try {
      tok = Tokenizer.fromJSON(JSON.parse(text), { expectVocabSize: m.model.vocabSize, source: tokCid.toString() });
    } catch (err) {
      throw new InvalidInputError(`tokenizer ${tokCid} is not a valid tokenizer.json: ${(err as Error).message}`);
    }
    if (tok.hash() !== m.tokenizerSha256) throw new InvalidInputError(`tokenizer ${tokCid} hashes to ${tok.hash().slice(0, 12)}, the manifest says ${m.tokenizerSha256.slice(0, 12)}`);
    const parts: Uint32Array[] = [];
    for (const sh of dsm.val.shards) parts.push(await readShard(this.store, dsm, sh, opts()));
    const val = new Uint32Array(parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of parts) { val.set(p, o); o += p.length; }
    this.dataset = dsm;
    this.datasetCid = cid.toString();
    this.tokenizerCid = tokCid.toString();
    this.tokenizer = tok;
    return val as unknown as TokenArray;
  }

  /**
   * The tokens of training shard `sh` in round `round`: a slice of the local corpus, or a block
   * fetched (once) from peers. From a governed switch's round on, shard `sh` is shard
   * `sh mod count` of the new dataset, so assignment (numShards) stays as the manifest says.
   */
  private async shardData(sh: number, round: number): Promise<TokenArray | null> {
    const { cid, dsm } = this.datasetAt(round);
    if (!dsm) return shardSlice(this.train, sh, this.p.numShards, this.m.model.ctx);
    const idx = sh % dsm.train.shards.length;
    const key = `${cid}:${idx}`;
    const hit = this.shardCache.get(key);
    if (hit) return hit;
    let p = this.shardFetch.get(key);
    if (!p) {
      p = readShard(this.store, dsm, dsm.train.shards[idx], { signal: AbortSignal.timeout(this.fetchMs) })
        .then((t) => {
          const tokens = t as unknown as TokenArray;
          this.shardsFetched++;
          this.shardCache.set(key, tokens);
          if (this.shardCache.size > SHARD_CACHE) this.shardCache.delete(this.shardCache.keys().next().value!);
          return tokens;
        })
        .catch((err: unknown) => {
          this.logger.warn({ shard: idx, cid: dsm.train.shards[idx].cid.toString(), err: (err as Error).message }, 'cannot fetch training shard');
          return null;
        })
        .finally(() => this.shardFetch.delete(key));
      this.shardFetch.set(key, p);
    }
    return await p;
  }

  /** The dataset in effect in round `round`: a governed switch from its round on, else the manifest's. */
  private datasetAt(round: number): { cid: string | null; dsm: DatasetManifest | null } {
    const n = this.nextDataset;
    if (n && round >= n.fromRound) return { cid: n.cid, dsm: n.dsm };
    return { cid: this.datasetCid, dsm: this.dataset };
  }

  /**
   * Governance (issue 7): the chain's `dataset` setting, `<cid>@<round>`, switches the training data
   * from that round on. Read by the link once per round; the new manifest is fetched from peers and
   * must use the run's tokenizer. A switch seen only after its round starts applies from the next
   * round this peer trains (training data is per-peer, so the weights still agree).
   */
  private followGovernance(): void {
    const v = this.link?.setting('dataset');
    if (!v || v === this.loadingSwitch) return;
    this.loadingSwitch = v;
    const sw = parseDatasetSetting(v);
    if (!sw) { this.logger.warn({ value: v }, 'governed dataset setting is not <cid>@<round>; ignored'); return; }
    if (!this.dataset) { this.logger.warn({ value: v }, 'a governed dataset switch needs a run whose dataset is named by CID; ignored'); return; }
    let cid;
    try { cid = parseCid(sw.cid); } catch (err) { this.logger.warn({ value: v, err: (err as Error).message }, 'governed dataset CID is invalid; ignored'); return; }
    void readManifest(this.store, cid, { signal: AbortSignal.timeout(this.fetchMs) }).then((dsm) => {
      if (dsm.tokenizer.cid.toString() !== this.tokenizerCid) throw new InvalidInputError(`its tokenizer ${dsm.tokenizer.cid} is not the run's ${this.tokenizerCid}`);
      if (dsm.train.shards.length === 0) throw new InvalidInputError('it has no training shards');
      this.nextDataset = { ...sw, dsm };
      this.log(`governance: training on dataset ${sw.cid} from round ${sw.fromRound}`);
    }).catch((err: unknown) => {
      this.logger.warn({ value: v, err: (err as Error).message }, 'cannot switch to the governed dataset');
      // A fetch that timed out is retried at the next round; a wrong manifest is not.
      if (!(err instanceof InvalidInputError)) this.loadingSwitch = null;
    });
  }

  private dialLoop(): void {
    const targets = this.o.bootstrap ?? [];
    if (targets.length === 0) return;
    const attempt = () => {
      if (this.stopped) return;
      const connected = new Set(this.host.connectedPeers());
      for (const a of targets) {
        const id = /\/p2p\/([^/]+)/.exec(a)?.[1];
        if (id && connected.has(id)) continue;
        this.host.dial(a, { signal: AbortSignal.timeout(2000) }).catch(() => undefined);
      }
    };
    attempt();
    this.dialTimer = setInterval(attempt, 1000);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.dialTimer) clearInterval(this.dialTimer);
    if (this.training) this.training.stop = true;
    try { this.channel?.close(); } catch { /* closing anyway */ }
    await this.link?.stop();
    await Promise.all([this.storeChain, this.publishChain, this.gcRun]).catch(() => undefined);
    await this.store?.stop().catch(() => undefined);
    await this.host?.stop().catch(() => undefined);
  }

  /** A consistent read-only summary of this node (for the dashboard and scripts). */
  view(): NodeView {
    if (!this.host) throw new InvalidInputError('the node has not started yet (no peer id)');
    const st = this.state;
    return {
      runId: this.o.manifest.runId, manifest: this.m, peerId: this.host.peerId, round: st?.round ?? -1, phase: st?.phase ?? 'starting',
      roster: [...(st?.roster ?? [])], subscribers: this.channel?.subscribers() ?? [], weightsHash: this.thetaHash,
      checkpointCid: this.checkpointCid, params: this.theta?.length ?? 0, scores: this.meanScores(),
      ...(this.link ? { ledger: this.link.view() } : {}),
    };
  }

  private meanScores(): Record<string, number> {
    const sum = new Map<string, { s: number; n: number }>();
    const reports = [...this.scoreReports.values(), ...(this.lastScores ? [this.lastScores] : [])];
    for (const r of reports) for (const e of r.entries) { const a = sum.get(e.peer) ?? { s: 0, n: 0 }; a.s += e.ema; a.n++; sum.set(e.peer, a); }
    return Object.fromEntries([...sum].map(([p, a]) => [p, a.s / a.n]));
  }

  /**
   * Continues `prompt` from the current weights θ (not a trainer's half-trained copy). Runs on
   * the event loop thread, so callers should keep maxTokens small (the dashboard caps it).
   */
  generate(prompt: string, o: { maxTokens?: number; temperature?: number; topK?: number; seed?: number } = {}): { text: string; tokens: number } {
    const tok = this.tokenizer;
    const g = this.evalGpt;
    g.params.set(this.theta);
    const ids = [tok.eotId, ...tok.encodeOrdinary(prompt)].slice(-this.m.model.ctx);
    const out: number[] = [];
    for (const id of sample(g, ids, { maxNewTokens: Math.min(256, o.maxTokens ?? 48), temperature: o.temperature ?? 0.8, topK: o.topK ?? 40, seed: o.seed ?? 1, stopToken: tok.eotId })) {
      if (id === tok.eotId) break;
      out.push(id);
    }
    return { text: tok.decode(out), tokens: out.length };
  }

  /**
   * Validator: scores round `round`'s applied updates against θ_round (before the apply) with
   * the loss-delta test on 2 of each peer's assigned batches vs 2 random ones, copy/replay and
   * norm checks, and the EMA history; publishes the report on the control topic. Runs after the
   * apply, off the agreement path: scores inform (and, with the ledger, pay), they do not
   * change the agreed weights.
   */
  private async validate(round: number, theta: Float32Array, baseHash: string, roster: string[], ups: CommittedUpdate[], hashes: Map<string, string>): Promise<ScoreEntry[] | null> {
    try {
      const m = this.m, B = m.hyper.batch, T = m.model.ctx, K = 2;
      const assign = assignShards(roundSeed(this.o.manifest.runId, round), roster, this.p.numShards);
      const batchesOf = async (shard: number, seed: bigint): Promise<Batch[]> => {
        const d = await this.shardData(shard, round);
        if (!d || d.length < T + 2) return [];
        const s = new BatchSampler(d, B, T, seed);
        return Array.from({ length: K }, () => s.next());
      };
      const vseed = BigInt('0x' + roundSeed(this.o.manifest.runId, round).slice(12, 24));
      const subs: Submission[] = [...ups].sort((a, b) => compareIds(a.peer, b.peer)).map((u) => ({ peer: u.peer, delta: u.delta, baseHash }));
      const assigned: Batch[][] = [];
      for (const s of subs) assigned.push(await batchesOf((assign.get(s.peer) ?? [0])[0], vseed + 1n));
      const random = await batchesOf(Number(vseed % BigInt(this.p.numShards)), vseed + 2n);
      if (random.length === 0 || assigned.some((a) => a.length === 0)) return null;
      const g = this.evalGpt;
      const loss = (params: Float32Array, b: Batch) => { g.params.set(params); return g.loss(b.inputs, b.targets, B, T); };
      const verdicts = scoreRound({
        theta, roundHash: baseHash, lr: m.hyper.outer.lr, subs, previous: subs.map((s) => this.prevDelta.get(s.peer) ?? null),
        assigned, beforeAssigned: assigned.map((bs) => bs.map((b) => loss(theta, b))),
        random, beforeRandom: random.map((b) => loss(theta, b)), loss,
      });
      for (const s of subs) this.prevDelta.set(s.peer, s.delta);
      // Audit by re-execution (manifest hyper.audit): the sampled trainers' whole traces; a
      // failed audit zeroes the round's score.
      const failed = new Map<string, string>();
      if (m.hyper.audit) {
        const seedHex = roundSeed(this.o.manifest.runId, round);
        for (const s of subs) {
          if (s.peer === this.host.peerId || !spotCheck(seedHex, this.host.peerId, s.peer, m.hyper.audit.p)) continue;
          const rec = await this.auditOne(round, s.peer, hashes.get(s.peer) ?? '', roster, s.delta);
          this.auditsSince.push(rec);
          if (!rec.ok) failed.set(s.peer, rec.reason ?? 'audit');
          this.logger[rec.ok ? 'info' : 'warn']({ round, peer: s.peer, reason: rec.reason, steps: rec.steps, ms: Math.round(rec.ms) }, rec.ok ? 'audit passed' : 'audit failed');
        }
      }
      this.scoreBook.round(Object.fromEntries(verdicts.map((v) => [v.peer, failed.has(v.peer) ? 0 : v.score])));
      const entries = verdicts.map((v) => {
        if (failed.has(v.peer)) return { peer: v.peer, score: 0, ema: this.scoreBook.get(v.peer), flagged: true, reason: failed.get(v.peer)!.slice(0, 64) };
        const flagged = roundFlag(v) || this.scoreBook.lowScore(v.peer);
        const reason = v.hard ?? (v.copyOf ? `copy of ${v.copyOf.slice(-8)}` : harmful(v) ? 'harmful' : flagged ? 'low score' : null);
        this.logger[flagged ? 'warn' : 'debug']({ round, peer: v.peer, reason, gainAssigned: v.gainAssigned, gainRandom: v.gainRandom }, flagged ? 'validator flagged an update' : 'validator scored an update');
        return { peer: v.peer, score: v.score, ema: this.scoreBook.get(v.peer), flagged, reason };
      });
      this.lastScores = { round, entries };
      this.scoredSince.push({ round, entries });
      this.updateExclusions({ round, entries });
      const reportHash = canonicalHash({ round, baseHash, entries });
      if (!this.stopped) this.channel.publish('node.scores', { round, baseHash, reportHash, entries }).catch(() => undefined);
      return entries;
    } catch (err) {
      this.logger.warn({ round, err: (err as Error).message }, 'validator could not score the round');
      return null;
    }
  }

  /**
   * Selection by score: the members trusted validators flagged in a report of the last 3 rounds
   * (hard checks, copies, failed audits, a low smoothed score; not 'harmful' alone, which noise
   * can trigger) are left out of this peer's proposals (the reducer's 'exclude' event).
   */
  private updateExclusions(report?: { round: number; entries: ScoreEntry[] }): void {
    // Per member, the last round a trusted validator flagged it; an unflagged score clears it. A
    // report that does not mention a member (its update arrived too late to be scored) changes
    // nothing, so a left-out member is not let back in by a gap.
    if (report) {
      for (const e of report.entries) {
        if (e.flagged && e.reason !== 'harmful') this.flaggedAt.set(e.peer, Math.max(report.round, this.flaggedAt.get(e.peer) ?? -1));
        else if (!e.flagged && (this.flaggedAt.get(e.peer) ?? -1) < report.round) this.flaggedAt.delete(e.peer);
      }
    }
    const now = this.state?.round ?? 0;
    const next = [...this.flaggedAt].filter(([, r]) => r >= now - 3).map(([p]) => p).sort(compareIds);
    if (next.join() === this.excluded.join()) return;
    if (next.length) this.logger.warn({ round: now, peers: next }, 'leaving flagged peers out of proposed update sets');
    this.excluded = next;
    this.dispatch({ type: 'exclude', peers: next });
  }

  /** The trainer's job as re-execution needs it: its assigned shards' tokens, H, batch, schedule. */
  private async auditJob(round: number, trainer: string, roster: string[], steps: number): Promise<AuditJob | null> {
    const m = this.m;
    const shards = assignShards(roundSeed(this.o.manifest.runId, round), roster, this.p.numShards).get(trainer) ?? [];
    const data = await Promise.all(shards.map((sh) => this.shardData(sh, round)));
    if (shards.length === 0 || data.some((d) => !d)) return null;
    return {
      runId: this.o.manifest.runId, round, innerSteps: m.hyper.innerSteps, steps, shards: shards.map((shard, i) => ({ shard, tokens: data[i]! })),
      B: m.hyper.batch, T: m.model.ctx, schedule: m.hyper.schedule, adamw: m.hyper.adamw,
    };
  }

  /**
   * Audits one trainer's round (src/verify/audit.ts): fetches its committed trace, checks it
   * against the root it signed, re-executes every step with deterministic kernels and, on a
   * mismatch, bisects the committed digests to the first wrong step and publishes a one-step
   * fraud proof. With the fp32 codec the update itself must equal the trace's end, bitwise.
   */
  private async auditOne(round: number, trainer: string, updateHash: string, roster: string[], delta: Float32Array): Promise<AuditRecord> {
    const t0 = performance.now();
    const rec = (ok: boolean, reason: string | null, extra: Partial<AuditRecord> = {}): AuditRecord => ({ round, trainer, ok, reason, steps: 0, ms: performance.now() - t0, ...extra });
    // The commitment is published just before the update; give gossip a moment.
    let c = this.commits.get(`${round}:${trainer}`);
    for (let w = 0; !c && w < 30 && !this.stopped; w++) { await new Promise((r) => setTimeout(r, 100)); c = this.commits.get(`${round}:${trainer}`); }
    if (!c) return rec(false, 'no commitment');
    if (c.updateHash !== updateHash) return rec(false, 'commitment names another update');
    const P = this.theta.length;
    let trace;
    try {
      trace = decodeTrace(await fetchBulk(this.host, trainer, c.trace, { maxBytes: maxTraceBytes(P), signal: AbortSignal.timeout(this.fetchMs) }), P);
    } catch (err) {
      return rec(false, `no valid trace: ${(err as Error).message}`.slice(0, 64));
    }
    if (trace.digests.length !== c.steps + 1 || traceRoot(trace.digests) !== c.root) return rec(false, 'trace does not match its root');
    const job = await this.auditJob(round, trainer, roster, c.steps);
    if (!job) return rec(true, 'skipped: shard data unavailable');
    const st = new Stepper(this.m.model, this.kernels, job);
    const tree = new MerkleTree(trace.digests.map(leafOf));
    const start = trace.start;
    const oracle: TrainerOracle = {
      reveal: (i) => ({ digest: trace.digests[i], proof: tree.proof(i) }),
      // State i > 0 is only asked for after leaf i agreed with ours: regenerate it from the pre-state.
      state: (i) => {
        if (i === 0) return cloneState(start);
        st.load(start);
        for (let j = 0; j < i; j++) st.stepAt(j);
        return st.state();
      },
    };
    const base = this.updateMsgs.get(updateHash)?.baseHash ?? digestState(start).weights;
    let v;
    try {
      v = auditTrace(st, trainer, c.root, base, oracle);
    } catch (err) {
      return rec(false, `audit: ${(err as Error).message}`.slice(0, 64), { steps: st.executed });
    }
    if (v.ok) {
      if (this.m.hyper.codec.id === 'fp32') {
        const end = st.gpt.params;
        for (let i = 0; i < P; i++) if (Math.fround(start.theta[i] - end[i]) !== delta[i]) return rec(false, 'update is not the end of its trace', { steps: v.steps });
      }
      return rec(true, null, { steps: v.steps });
    }
    if (v.reason === 'bad-anchor') return rec(false, 'trace not built on the round weights', { steps: v.steps });
    const bytes = encodeFraudProof(v.proof);
    const proof = sha256Hex(bytes);
    this.bulk.set(proof, { bytes, round });
    if (!this.stopped) this.channel.publish('node.fraud', { round, trainer, k: v.proof.k, root: c.root, proof }).catch(() => undefined);
    this.logger.warn({ round, trainer, k: v.proof.k, queries: v.bisect.queries, locateSteps: v.locateSteps, proofBytes: bytes.length }, 'fraud: published a fraud proof');
    return rec(false, `fraud at step ${v.proof.k}`, { k: v.proof.k, steps: v.steps });
  }

  /** Any peer: checks a published fraud proof with one re-executed step, and records the outcome. */
  private async checkFraud(by: string, b: { round: number; trainer: string; k: number; root: string; proof: string }): Promise<void> {
    const done = (verified: boolean, reason: string | null) => {
      this.fraudsSince.push({ round: b.round, trainer: b.trainer, k: b.k, by, verified, reason });
      this.logger.warn({ round: b.round, trainer: b.trainer, k: b.k, by, verified, reason }, verified ? 'verified a fraud proof' : 'rejected a fraud proof');
    };
    try {
      const c = this.commits.get(`${b.round}:${b.trainer}`);
      const r = this.roundInfo.get(b.round);
      if (!c || c.root !== b.root || !r) { done(false, 'no matching commitment or round here'); return; }
      const P = this.theta.length;
      const cap = Math.min(MAX_PROOF_BYTES, 2 * maxTraceBytes(P));
      const proof = decodeFraudProof(await fetchBulk(this.host, by, b.proof, { maxBytes: cap, signal: AbortSignal.timeout(this.fetchMs) }), cap);
      const job = await this.auditJob(b.round, b.trainer, r.roster, c.steps);
      if (!job) { done(false, 'shard data unavailable'); return; }
      const base = this.updateMsgs.get(c.updateHash)?.baseHash ?? r.baseHash;
      const v = verifyFraudProof(proof, { stepper: new Stepper(this.m.model, this.kernels, job), root: c.root, trainer: b.trainer, baseHash: base });
      done(v.ok, v.ok ? null : v.reason);
    } catch (err) {
      done(false, (err as Error).message.slice(0, 64));
    }
  }

  /**
   * Validator with a chain link: turns round `round`'s scores into the report the contract mints
   * from (src/ledger/report.ts) and signs it. Every input is agreed state or a deterministic
   * function of it (result hash, the state CID published for it, the included update hashes,
   * per-round scores from deterministic evaluation, announced payout addresses), so honest
   * validators sign byte-identical reports. Flagged updates score 0: they earn nothing.
   */
  private async signRound(round: number, resultHash: string, entries: ScoreEntry[], updateHashes: string[]): Promise<void> {
    const link = this.link;
    if (!link) return;
    try {
      const cid = await this.stateCid(round + 1, 30_000);
      const scores: { address: string; score: number }[] = [];
      for (const e of entries) {
        const a = this.payouts.get(e.peer);
        const score = e.flagged ? 0 : e.score;
        if (!a) { if (score > 0) this.logger.warn({ round, peer: e.peer }, 'no payout address announced; its score is left out of the report'); continue; }
        scores.push({ address: a, score });
      }
      if (!scores.some((x) => Math.round(x.score * 1e6) > 0)) { this.logger.warn({ round }, 'no positive score this round; nothing to mint'); return; }
      const report = buildScoreReport({
        manifestHash: `0x${this.o.manifest.runId}`, round, weightsHash: `0x${resultHash}`, checkpointCid: cid ?? '-',
        updateHashes: updateHashes.map((h) => `0x${h}`), scores,
      });
      await link.signReport(report);
      this.signedSince.push(round);
    } catch (err) {
      this.logger.warn({ round, err: (err as Error).message }, 'validator could not sign the round\'s score report');
    }
  }

  /** The CID this node published for snapshot round `snapRound`, waiting up to `ms` for it (null if none). */
  private async stateCid(snapRound: number, ms: number): Promise<string | null> {
    const t0 = Date.now();
    while (!this.stopped && Date.now() - t0 < ms) {
      const c = this.stateCids.get(snapRound);
      if (c) return c;
      await new Promise((r) => setTimeout(r, 100));
    }
    return this.stateCids.get(snapRound) ?? null;
  }

  // ───────────── reducer plumbing ─────────────

  private tick(): void {
    if (this.stopped || !this.state) return;
    const now = Date.now();
    if (now >= nextDeadline(this.state)) this.dispatch({ type: 'tick', now });
  }

  private dispatch(ev: RoundEvent): void {
    if (this.stopped) return;
    // The reducer's clock only moves with ticks: bring it to now first, so that whatever this
    // event starts (a round, an attempt) is timed from the present, not from the last deadline.
    if (ev.type !== 'tick' && Date.now() > this.state.now) {
      const t = step(this.state, { type: 'tick', now: Date.now() });
      this.commit(t.state, t.effects);
    }
    const r = step(this.state, ev);
    for (const x of r.rejected) {
      const fields = { reason: x.reason, detail: x.detail, from: x.from, event: x.event, round: this.state.round, phase: this.state.phase };
      if (SUSPICIOUS.has(x.reason)) this.logger.warn(fields, 'rejected round input');
      else this.logger.debug(fields, 'rejected round input');
    }
    if (DEBUG) {
      for (const e of r.effects) if (e.type !== 'broadcast' || e.msg.type === 'commit') this.log(`r${r.state.round} ${r.state.phase} effect ${e.type}${e.type === 'broadcast' && e.msg.type === 'commit' ? ` commit a${e.msg.commit.attempt} with ${e.msg.commit.included.length}` : ''} t+${Date.now() - r.state.startedAt}`);
    }
    this.commit(r.state, r.effects);
    // A message event may have moved the clock-free state past a deadline: tick right away.
    if (ev.type !== 'tick' && Date.now() >= nextDeadline(this.state)) this.dispatch({ type: 'tick', now: Date.now() });
  }

  private commit(next: RoundState, effects: Effect[]): void {
    const prevRound = this.state?.round ?? -1;
    this.state = next;
    const rec = acceptorRecord(next);
    if (rec) {
      const s = JSON.stringify(rec);
      if (s !== this.lastRecord) {
        const tmp = this.recordPath + '.tmp';
        writeFileSync(tmp, s);
        renameSync(tmp, this.recordPath);
        this.lastRecord = s;
      }
    }
    for (const e of effects) this.execute(e);
    // A decided empty set ends the round inside the reducer (no apply effect): report it too.
    if (prevRound >= 0 && next.round === prevRound + 1 && next.prev && next.prev.round === prevRound && next.prev.decision.commit.included.length === 0 && next.prev.resultHash !== null) {
      this.report('round', prevRound, this.lastVal, next.prev.roster.length, [], next.prev.resultHash);
    }
    if (next.round !== prevRound && next.round >= 0 && next.phase !== 'syncing' && next.phase !== 'unsynced') this.advertiseSnapshot();
  }

  private execute(e: Effect): void {
    switch (e.type) {
      case 'broadcast': case 'send': this.publish(e.msg); break;
      case 'train': this.startTraining(e); break;
      case 'pretrain': this.startTraining({ ...e, until: null }); break;
      case 'stop-training': if (this.training && this.training.round === e.round) this.training.stop = true; break;
      case 'fetch': for (const u of e.updates) void this.fetchUpdate(u.updateHash, [u.peer, ...e.from], e.round, u.peer); break;
      case 'apply': this.apply(e); break;
      case 'resync': void this.resync(e); break;
    }
  }

  private publish(msg: Message): void {
    const w = toWire(msg);
    this.channel.publish(w.kind, w.body as never).catch(() => undefined);
  }

  private onNet(kind: string, from: string, body: unknown): void {
    if (this.stopped || !this.state) return;
    if (kind === 'node.scores') {
      const b = body as { round: number; entries: ScoreEntry[] };
      const old = this.scoreReports.get(from);
      if (!old || old.round < b.round) this.scoreReports.set(from, { round: b.round, entries: b.entries });
      if (this.o.trustValidators?.includes(from)) this.updateExclusions(b);
      return;
    }
    if (kind === 'node.commit') {
      const b = body as { round: number; updateHash: string; steps: number; root: string; trace: string };
      this.commits.set(`${b.round}:${from}`, b);
      if (this.commits.size > 4096) this.commits.delete(this.commits.keys().next().value!);
      return;
    }
    if (kind === 'node.fraud') {
      void this.checkFraud(from, body as { round: number; trainer: string; k: number; root: string; proof: string });
      return;
    }
    if (kind === 'node.payout') {
      this.payouts.set(from, (body as { address: Address }).address);
      return;
    }
    if (kind === 'node.sig') {
      void this.link?.onSignature(body);
      return;
    }
    if (kind === 'node.snap') {
      const b = body as { round: number; weightsHash: string; bundle: string; cid?: string };
      const old = this.snaps.get(from);
      if (!old || old.round <= b.round) this.snaps.set(from, b);
      return;
    }
    const msg = fromWire(kind, from, body);
    if (!msg) return;
    if (msg.type === 'update') {
      // Only fetch payloads the reducer could accept (a member, this round): anything else goes
      // straight to the reducer, which rejects it with its reason, and costs no download.
      const st = this.state;
      const synced = st.phase !== 'unsynced' && st.phase !== 'syncing';
      if (synced && (msg.round < st.round || msg.round > st.round + 1 || (msg.round === st.round && !st.roster.includes(msg.from)))) {
        this.dispatch({ type: 'message', msg });
        return;
      }
      this.updateMsgs.set(msg.updateHash, msg);
      if (this.deltas.has(msg.updateHash)) { this.dispatch({ type: 'message', msg }); return; }
      void this.fetchUpdate(msg.updateHash, [msg.from], msg.round, msg.from);
      return;
    }
    this.dispatch({ type: 'message', msg });
  }

  // ───────────── payloads ─────────────

  private async fetchUpdate(hash: string, from: string[], round: number, author: string): Promise<void> {
    if (this.deltas.has(hash)) { this.deliverUpdate(hash, round, author); return; }
    if (this.fetching.has(hash)) return;
    this.fetching.add(hash);
    try {
      const P = this.theta.length;
      const max = this.codec.encodedSize(P) + 1024;
      for (let attempt = 0; attempt < 3 && !this.stopped; attempt++) {
        for (const peer of [...new Set(from)].filter((p) => p !== this.host.peerId)) {
          try {
            const bytes = await fetchBulk(this.host, peer, hash, { maxBytes: max, signal: AbortSignal.timeout(5000) });
            if (this.linkDelayMs > 0) await new Promise((r) => setTimeout(r, 2 * this.linkDelayMs)); // request + response
            const delta = this.codec.decode(bytes, P);
            if (!delta.every(Number.isFinite)) throw new InvalidInputError('non-finite Δ');
            this.bulk.set(hash, { bytes, round });
            this.deltas.set(hash, delta);
            this.deliverUpdate(hash, round, author);
            return;
          } catch (err) {
            // Not applied: a payload that does not hash to its name, is larger than the codec's
            // size, or does not decode to P finite values is dropped and fetched elsewhere.
            // Network failures (peer gone, stream reset) are routine and only logged at debug.
            const bad = err instanceof HashMismatchError || err instanceof TooLargeError || err instanceof InvalidInputError || err instanceof DecodeError;
            if (bad) this.logger.warn({ reason: 'bad-payload', detail: (err as Error).message, from: peer, update: hash, round }, 'rejected update payload');
            else this.logger.debug({ detail: (err as Error).message, from: peer, update: hash, round }, 'update fetch failed');
          }
        }
        await new Promise((r) => setTimeout(r, 300));
      }
      if (!this.deltas.has(hash)) this.updateMsgs.delete(hash); // never fetched: forget the claim
    } finally {
      this.fetching.delete(hash);
    }
  }

  private deliverUpdate(hash: string, round: number, author: string): void {
    let msg = this.updateMsgs.get(hash);
    if (!msg) {
      // Fetched for a pending or decided commit whose update message we never saw (lost on
      // gossip): rebuild it from the commit, or the round could never be accepted.
      const st = this.state;
      const inc = [st.decision?.commit, st.pending].flatMap((k) => k?.included ?? []).find((u) => u.updateHash === hash && u.peer === author);
      if (!inc || st.round !== round) return;
      msg = { type: 'update', from: author, round, baseHash: st.trainBase, updateHash: hash, steps: Math.max(1, Math.round(inc.tokens / this.p.batch)) };
    }
    if (msg.from === this.host.peerId && this.state.updates.has(hash)) return;
    this.dispatch({ type: 'message', msg });
  }

  private prune(): void {
    for (const [h, v] of this.bulk) if (v.round < this.state.round - (v.keepRounds ?? 2)) { this.bulk.delete(h); this.deltas.delete(h); this.updateMsgs.delete(h); }
  }

  // ───────────── training / apply / sync ─────────────

  /** Starts (or, for a matching pretrained job, confirms) the inner steps of a round. */
  private startTraining(e: { round: number; baseHash: string; shards: number[]; steps: number; until: number | null }): void {
    const cur = this.training;
    const same = cur !== null && !cur.stop && cur.round === e.round && cur.shards.join() === e.shards.join();
    const shifting = this.m.hyper.overlap === 'shift' || this.m.hyper.overlap === 'eager';
    if (same && shifting && e.until !== null && e.baseHash === this.thetaHash && (cur.baseHash === e.baseHash || cur.baseHash === this.prevTheta?.hash)) {
      // 'shift'/'eager': the job began on θ_{r-1} (or this peer's guess of θ_r) before θ_r was
      // known; move it onto θ_r. Its update is then θ_r − local: only this round's own steps.
      // (After an empty round θ_r = θ_{r-1}: a 'shift' job moves by zero, an 'eager' one off its guess.)
      const local = this.gpt.params, began = cur.base, now = this.theta;
      for (let i = 0; i < local.length; i++) local[i] += now[i] - began[i];
      cur.base = now.slice();
      cur.baseHash = e.baseHash;
      cur.until = e.until;
      if (DEBUG) this.log(`round ${e.round}: job shifted onto θ_r`);
      return;
    }
    if (same && cur.baseHash === e.baseHash) {
      if (e.until !== null) cur.until = e.until; // 'delayed': adopt the early steps
      if (DEBUG) this.log(`round ${e.round}: job adopted`);
      return;
    }
    if (DEBUG && e.until !== null) this.log(`round ${e.round}: new job (had ${cur ? `r${cur.round} ${cur.baseHash.slice(0, 8)} stop=${cur.stop}` : 'none'}, want ${e.baseHash.slice(0, 8)}, prev ${this.prevTheta?.hash.slice(0, 8)}, θ ${this.thetaHash.slice(0, 8)})`);
    if (cur) cur.stop = true;
    let base = e.baseHash === this.thetaHash ? this.theta : e.baseHash === this.prevTheta?.hash ? this.prevTheta.weights : null;
    if (!base) { this.log(`round ${e.round}: base ${e.baseHash.slice(0, 12)} not held, not training`); return; }
    const own = this.lastOwn;
    if (e.until === null && this.m.hyper.overlap === 'eager' && e.baseHash === this.thetaHash && own?.round === e.round - 1 && this.deltas.has(own.hash)) {
      // Guess θ_{r+1} = the outer step with our own (decoded) update standing in for the aggregate.
      base = this.outer.preview(this.theta, this.deltas.get(own.hash)!, new Float32Array(this.theta.length));
    }
    const job: TrainJob = { round: e.round, baseHash: e.baseHash, shards: [...e.shards], maxSteps: e.steps, base: base === this.theta || base === this.prevTheta?.weights ? base.slice() : base, until: e.until, startedAt: Date.now(), stop: false };
    this.training = job;
    void this.runJob(job);
  }

  private async runJob(job: TrainJob): Promise<void> {
    await new Promise((r) => setImmediate(r));
    const m = this.m, B = m.hyper.batch, T = m.model.ctx, P = this.theta.length;
    // Exactly the assigned shards (fetched from peers the first time when the dataset is on IPFS).
    let data = await Promise.all(job.shards.map((sh) => this.shardData(sh, job.round)));
    if (this.o.behave === 'wrong-data') {
      // The adversary trains on other data than assigned: uniform random tokens.
      const rng = new Rng(job.round + 1);
      data = data.map((d) => (d ? Uint32Array.from({ length: d.length }, () => rng.nextInt(m.model.vocabSize)) as unknown as TokenArray : d));
    }
    if (job.stop || this.stopped) return;
    const local = this.gpt;
    local.params.set(job.base);
    // Audit (hyper.audit): the pre-state and the digest of the state after every step, whose
    // Merkle root this trainer signs with its update.
    const start: StepState | null = m.hyper.audit ? { theta: job.base.slice(), m: this.opt.m.slice(), v: this.opt.v.slice(), step: this.opt.step } : null;
    const digests: StateDigest[] = start ? [digestState(start)] : [];
    const seed = BigInt('0x' + roundSeed(this.o.manifest.runId, job.round).slice(0, 12));
    const samplers = data.flatMap((d, i) => (d && d.length >= T + 2 ? [new BatchSampler(d, B, T, seed + BigInt(i))] : []));
    const batch: Batch = { inputs: new Int32Array(B * T), targets: new Int32Array(B * T) };
    let steps = 0;
    let lastYield = performance.now();
    for (let i = 0; i < job.maxSteps && samplers.length > 0; i++) {
      if (job.stop || this.stopped || (job.until !== null && Date.now() >= job.until)) break;
      samplers[i % samplers.length].next(batch);
      const t0 = performance.now();
      local.zeroGrad();
      const loss = local.forwardBackward(batch.inputs, batch.targets, B, T);
      if (!Number.isFinite(loss)) break;
      this.trainLossAcc.sum += loss;
      this.trainLossAcc.n++;
      this.opt.update(local.params, local.grads, lrAt(m.hyper.schedule, job.round * m.hyper.innerSteps + i));
      if (start) digests.push({ weights: weightsHash(local.params), opt: optHash(this.opt.m, this.opt.v, this.opt.step) });
      const t1 = performance.now();
      this.computeMs += t1 - t0;
      this.innerStepsRun++;
      steps++;
      // Let gossip, bulk transfers and ticks run, at most every 10 ms: an event-loop turn per
      // step of a small model costs a few percent of compute.
      if (t1 - lastYield >= 10) {
        await new Promise((r) => setImmediate(r));
        lastYield = performance.now();
      }
    }
    // Rounds are paced by the training budget (a tiny model finishes its H steps in
    // milliseconds; unpaced rounds would outrun joiners' snapshot downloads). Without overlap:
    // submit at `until` at the earliest. With overlap the job started at the last submission, so
    // it lasts at least trainMs and at most until `until`: when H steps take longer than trainMs
    // the peer never waits, and the next job starts the moment this one is submitted.
    const minEnd = (): number => (this.m.hyper.overlap === 'none' ? job.until! : Math.min(job.until!, job.startedAt + this.m.timing.trainMs));
    while (!job.stop && !this.stopped && (job.until === null || Date.now() < minEnd())) {
      await new Promise((r) => setTimeout(r, job.until === null ? 20 : Math.max(1, Math.min(20, minEnd() - Date.now()))));
    }
    if (this.training === job) this.training = null;
    if (job.stop || this.stopped) return;
    let delta: Float32Array = new Float32Array(P);
    for (let i = 0; i < P; i++) delta[i] = job.base[i] - local.params[i];
    const kind = this.o.behave ?? 'honest';
    if (kind !== 'honest' && steps > 0) {
      // Earlier this round: the other peers' decoded updates already received.
      const earlier = [...this.updateMsgs.values()].filter((u) => u.round === job.round && u.from !== this.host.peerId && this.deltas.has(u.updateHash)).map((u) => this.deltas.get(u.updateHash)!);
      const rng = new Rng(job.round * 7919 + 17);
      delta = behave(kind, { honest: delta, earlier, earlierKinds: earlier.map(() => 'honest' as const), previous: this.lastSubmitted, rng: () => rng.nextFloat() });
      this.lastSubmitted = delta.slice();
    }
    let hash = '0'.repeat(64);
    if (steps > 0) {
      const enc = this.codec.encode(delta, this.ef ?? undefined);
      hash = sha256Hex(enc.bytes);
      this.bulk.set(hash, { bytes: enc.bytes, round: job.round });
      this.deltas.set(hash, enc.decoded);
      this.lastOwn = { round: job.round, hash };
      if (start) {
        const bytes = encodeTrace({ digests, start });
        const trace = sha256Hex(bytes);
        this.bulk.set(trace, { bytes, round: job.round });
        const commit = { round: job.round, updateHash: hash, steps, root: traceRoot(digests), trace };
        this.commits.set(`${job.round}:${this.host.peerId}`, commit);
        if (!this.stopped) this.channel.publish('node.commit', commit).catch(() => undefined);
      }
    }
    this.dispatch({ type: 'trained', round: job.round, updateHash: hash, steps });
  }

  private apply(e: Extract<Effect, { type: 'apply' }>): void {
    if (this.thetaHash !== e.baseHash) {
      this.log(`round ${e.round}: our weights are not the round's base; waiting for resync`);
      return;
    }
    const ups: CommittedUpdate[] = e.included.map((u) => ({ peer: u.peer, tokens: u.tokens, delta: this.deltas.get(u.updateHash)! }));
    if (ups.some((u) => !u.delta)) { this.log(`round ${e.round}: missing a payload at apply`); return; }
    if (this.m.hyper.overlap !== 'none') this.prevTheta = { hash: this.thetaHash, weights: this.theta.slice() };
    this.roundInfo.set(e.round, { roster: [...this.state.roster], baseHash: e.baseHash });
    if (this.roundInfo.size > 64) this.roundInfo.delete(this.roundInfo.keys().next().value!);
    // A validator scores every update it holds for the round, applied or left out (so a member
    // left out for a flag is re-scored each round, and comes back once it is no longer flagged).
    const scoredHashes = new Map(e.included.map((u) => [u.peer, u.updateHash]));
    const toScore = [...ups];
    if (this.o.validator) {
      for (const [h, u] of this.updateMsgs) {
        if (u.round !== e.round || scoredHashes.has(u.from) || !this.deltas.has(h) || !this.state.roster.includes(u.from)) continue;
        scoredHashes.set(u.from, h);
        toScore.push({ peer: u.from, tokens: u.steps * this.m.hyper.batch, delta: this.deltas.get(h)! });
      }
    }
    const scoring = this.o.validator ? this.validate(e.round, this.theta.slice(), e.baseHash, [...this.state.roster], toScore, scoredHashes) : null;
    applyCommitted(this.theta, this.outer, ups, this.m.hyper.aggregate ?? 'mean');
    const h = weightsHash(this.theta);
    this.thetaHash = h;
    const valLoss = this.evaluate();
    this.lastVal = valLoss;
    const roster = this.state.roster.length;
    if (scoring && this.link) void scoring.then((entries) => entries && this.signRound(e.round, h, entries, e.included.map((u) => u.updateHash)));
    this.dispatch({ type: 'applied', round: e.round, weightsHash: h });
    this.report('round', e.round, valLoss, roster, e.included.map((u) => ({ peer: u.peer, tokens: u.tokens * this.m.model.ctx })) /* the reducer counts sequences */, h);
    this.prune();
  }

  private evaluate(): number {
    const g = this.evalGpt;
    g.params.set(this.theta);
    let sum = 0;
    for (const b of this.evalSet) sum += g.loss(b.inputs, b.targets, this.m.hyper.batch, this.m.model.ctx);
    return this.evalSet.length ? sum / this.evalSet.length : NaN;
  }

  private report(event: 'round' | 'synced', round: number, valLoss: number, roster: number, contributors: { peer: string; tokens: number }[], h: string, via?: 'ipfs' | 'bulk' | 'local'): void {
    const w = this.host.metrics.snapshot().wire;
    const now = Date.now();
    const nowPerf = performance.now();
    const wall = nowPerf - this.lastCompute.at;
    const datasetCid = this.datasetAt(round).cid;
    const r: RoundReport = {
      event, round, valLoss, trainLoss: this.trainLossAcc.n ? this.trainLossAcc.sum / this.trainLossAcc.n : NaN, contributors, checkpointCid: this.checkpointCid,
      computeFraction: wall > 0 ? Math.min(1, (this.computeMs - this.lastCompute.ms) / wall) : 0,
      innerSteps: this.innerStepsRun - this.lastCompute.steps,
      cpuFraction: wall > 0 ? (cpuMs() - this.lastCompute.cpu) / wall : 0, peers: this.channel.subscribers().length + 1, roster, included: contributors.length, weightsHash: h,
      bytesSent: w.sent - this.lastBytes.sent, bytesReceived: w.received - this.lastBytes.received, seconds: (now - this.roundStart) / 1000,
      ...(via ? { via } : {}),
      storage: { ...this.storageState, shardsFetched: this.shardsFetched, corruptBlocks: this.store.stats.corruptLocal },
      ...(this.lastScores ? { scores: this.lastScores } : {}),
      ...(this.scoredSince.length ? { scored: this.scoredSince.splice(0) } : {}),
      ...(this.signedSince.length ? { signed: this.signedSince.splice(0) } : {}),
      ...(this.auditsSince.length ? { audits: this.auditsSince.splice(0) } : {}),
      ...(this.fraudsSince.length ? { frauds: this.fraudsSince.splice(0) } : {}),
      ...(datasetCid ? { datasetCid } : {}),
    };
    this.lastBytes = { ...w };
    this.lastCompute = { ms: this.computeMs, steps: this.innerStepsRun, at: nowPerf, cpu: cpuMs() };
    this.roundStart = now;
    this.trainLossAcc = { sum: 0, n: 0 };
    this.o.onRound?.(r);
    this.events.emit('round', r);
    if (event === 'round') this.scheduleReplication();
    // Re-announce the payout address (cheap; covers peers that joined since), and let the chain
    // link submit, re-read shares and governance; then act on what governance says.
    if (!this.stopped) this.channel.publish('node.payout', { address: this.payout }).catch(() => undefined);
    if (this.link) void this.link.tick();
  }

  /**
   * Resume from this node's own last snapshot (after Ctrl-C, or when every peer of a run was
   * stopped): install it as if a peer had served it. If the others moved on meanwhile, their
   * traffic shows this node is behind and it resyncs from them as usual.
   */
  private restoreLocal(): void {
    if (!existsSync(this.snapPath)) return;
    try {
      const b = decodeBundle(readFileSync(this.snapPath), this.theta.length);
      if (weightsHash(b.theta) !== b.snap.weightsHash) throw new InvalidInputError('weights do not match the snapshot hash');
      this.theta.set(b.theta);
      this.thetaHash = b.snap.weightsHash;
      this.prevTheta = null;
      this.outer.momentum.set(b.momentum);
      this.dispatch({ type: 'synced', snapshot: b.snap });
      if (this.state.round === b.snap.round) {
        this.log(`resumed at round ${b.snap.round} from ${this.snapPath}`);
        this.report('synced', b.snap.round, this.evaluate(), b.snap.roster.length, [], b.snap.weightsHash, 'local');
      }
    } catch (err) {
      this.logger.warn({ file: this.snapPath, err: (err as Error).message }, 'ignoring unreadable local snapshot; syncing from peers');
    }
  }

  private advertiseSnapshot(): void {
    const snap = snapshotOf(this.state);
    if (!snap) return;
    const bytes = encodeBundle(snap, this.theta, this.outer.momentum);
    const tmp = this.snapPath + '.tmp';
    writeFileSync(tmp, bytes);
    renameSync(tmp, this.snapPath);
    const bundle = sha256Hex(bytes);
    // Snapshots outlive updates: a joiner slowed down by its own start-up (or a loaded machine)
    // may ask for one a few rounds after it was advertised.
    this.bulk.set(bundle, { bytes, round: snap.round, keepRounds: RECENT_STATES });
    // The same state as an IPFS checkpoint directory. Its files are encoded now, synchronously
    // (θ may change right after); adding them to the store and pinning happen in the background.
    const files = { config: this.m.model, params: this.theta.slice(), momentum: this.outer.momentum.slice(), runId: this.o.manifest.runId, round: snap.round, snapshot: snap };
    // Not queued behind replicate(): its fetches can take seconds, and a late advertisement
    // hands joiners a stale state. Only garbage collection must not run meanwhile.
    void this.publishing(async () => {
      let cid: string | undefined;
      try {
        const c = await publishState(this.store, files, { signal: AbortSignal.timeout(this.fetchMs) });
        await this.store.pin(c);
        cid = c.toString();
        this.stateCids.set(snap.round, cid);
        if (this.stateCids.size > 64) this.stateCids.delete(this.stateCids.keys().next().value!);
        this.latestState = { round: snap.round, cid };
        if (!this.recentStates.some((x) => x.cid === cid)) this.recentStates.push({ round: snap.round, cid });
        if (snap.round % this.sp.checkpointEvery === 0 && !this.checkpoints.some((x) => x.cid === cid)) {
          this.checkpoints.push({ round: snap.round, cid });
          this.checkpointCid = cid;
        }
        // The last RECENT_STATES states stay pinned (joiners fetch them by CID); an older one only
        // if it is a retained checkpoint we hold (replicate() decides).
        while (this.recentStates.length > RECENT_STATES) {
          const old = this.recentStates.shift()!;
          if (old.cid !== cid && !this.checkpoints.some((x) => x.cid === old.cid)) await this.store.unpin(parseCid(old.cid));
        }
      } catch (err) {
        this.logger.warn({ round: snap.round, err: (err as Error).message }, 'cannot publish state checkpoint; serving it by bulk only');
      }
      if (this.stopped) return;
      this.channel.publish('node.snap', { round: snap.round, weightsHash: snap.weightsHash, bundle, ...(cid ? { cid } : {}) }).catch(() => undefined);
    });
  }

  /** Runs replication passes one at a time. */
  private serial<T>(f: () => Promise<T>): Promise<T> {
    const next = this.storeChain.then(f, f);
    this.storeChain = next.catch(() => undefined);
    return next;
  }

  /** Runs a state publish, one at a time, never while garbage collection runs (it would take the new, not yet pinned, blocks). */
  private publishing<T>(f: () => Promise<T>): Promise<T> {
    const next = Promise.all([this.publishChain, this.gcRun]).then(f, f);
    this.publishChain = next.catch(() => undefined);
    return next;
  }

  /** Garbage collection, once no publish is in flight (new publishes wait for it). */
  private async collectGarbage(): Promise<void> {
    let release!: () => void;
    const gate = new Promise<void>((r) => { release = r; });
    const before = this.publishChain;
    this.gcRun = gate; // publishes queued from now on wait for the gate
    try {
      await before;
      await this.store.gc({ signal: AbortSignal.timeout(this.fetchMs) });
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'store gc failed');
    } finally {
      release();
    }
  }

  private scheduleReplication(): void {
    if (this.replicatePending || this.stopped) return;
    this.replicatePending = true;
    void this.serial(async () => {
      this.replicatePending = false;
      if (!this.stopped) await this.replicate();
    });
  }

  /**
   * Makes this peer hold what the deterministic placement (store/replicate.ts) says it must
   * under the current roster: every member holds the dataset manifest, tokenizer and validation
   * shards; R members hold each training shard and each retained checkpoint. Pins what it must
   * hold (fetching from peers), announces it on the DHT, unpins what moved elsewhere, drops
   * checkpoints beyond the retention, and garbage-collects every checkpointEvery rounds.
   */
  private async replicate(): Promise<void> {
    const st = this.state;
    if (!st || st.phase === 'unsynced' || st.phase === 'syncing') return;
    const R = this.sp.replicas;
    while (this.checkpoints.length > this.sp.keepCheckpoints) {
      const old = this.checkpoints.shift()!;
      if (!this.recentStates.some((x) => x.cid === old.cid)) await this.store.unpin(parseCid(old.cid)).catch(() => undefined);
    }
    const items: PinItem[] = [];
    const dsm = this.dataset;
    if (dsm && this.datasetCid && this.tokenizerCid) {
      items.push({ cid: this.datasetCid, scope: 'all', label: 'dataset manifest', depth: 0 });
      items.push({ cid: this.tokenizerCid, scope: 'all', label: 'tokenizer' });
      dsm.val.shards.forEach((sh, i) => items.push({ cid: sh.cid.toString(), scope: 'all', label: `val shard ${i}` }));
      dsm.train.shards.forEach((sh, i) => items.push({ cid: sh.cid.toString(), scope: 'replicated', label: `train shard ${i}` }));
    }
    if (this.m.genesisCid) items.push({ cid: this.m.genesisCid, scope: 'replicated', label: 'genesis' });
    for (const c of this.checkpoints) if (c.cid !== this.latestState?.cid) items.push({ cid: c.cid, scope: 'replicated', label: `checkpoint r${c.round}` });
    const plan = pinPlan(items, st.roster, this.host.peerId, R);
    let held = 0;
    for (const it of plan.hold) {
      if (this.stopped) return;
      try {
        const cid = parseCid(it.cid);
        // Raw blocks are read through getBlock first: a copy corrupted on disk is found by its hash and refetched.
        if (it.scope === 'replicated') this.lastHolder.set(it.cid, st.round);
        if (cid.code === 0x55) await this.store.getBlock(cid, { signal: AbortSignal.timeout(HOLD_FETCH_MS) });
        await this.store.pin(cid, { signal: AbortSignal.timeout(HOLD_FETCH_MS), ...(it.depth !== undefined ? { depth: it.depth } : {}) });
        held++;
        this.store.provide(cid, { signal: AbortSignal.timeout(10_000) }).catch(() => undefined);
      } catch (err) {
        this.logger.warn({ item: it.label, cid: it.cid, err: (err as Error).message }, 'cannot fetch an item this peer must hold');
      }
    }
    for (const it of plan.skip) {
      const last = this.lastHolder.get(it.cid);
      if (last === undefined || st.round - last < UNPIN_GRACE_ROUNDS) continue;
      this.lastHolder.delete(it.cid);
      await this.store.unpin(parseCid(it.cid)).catch(() => undefined);
    }
    this.storageState = { held, needed: plan.hold.length };
    if (st.round > 0 && st.round % this.sp.checkpointEvery === 0) {
      await this.collectGarbage();
    }
  }

  private async resync(e: Extract<Effect, { type: 'resync' }>): Promise<void> {
    if (this.resyncing) return;
    this.resyncing = true;
    try {
      if (this.training) this.training.stop = true;
      const P = this.theta.length;
      // Candidates: advertisements from the listed peers (then from anyone), newest first.
      const ads = [...this.snaps.entries()]
        .filter(([, a]) => (e.round === null || a.round >= e.round) && (e.weightsHash === null || e.round === null || a.round !== e.round || a.weightsHash === e.weightsHash))
        .sort((x, y) => (Number(e.from.includes(y[0])) - Number(e.from.includes(x[0]))) || y[1].round - x[1].round);
      for (const [peer, ad] of ads.slice(0, 4)) {
        try {
          let b: { snap: RoundSnapshot; theta: Float32Array; momentum: Float32Array } | null = null;
          let via: 'ipfs' | 'bulk' = 'ipfs';
          if (ad.cid) {
            // By CID first: any peer holding the checkpoint can serve its blocks, not only the advertiser.
            try {
              const got = await loadState(this.store, parseCid(ad.cid), this.m.model, { signal: AbortSignal.timeout(15_000) });
              if (got.meta.runId !== this.o.manifest.runId) throw new InvalidInputError(`checkpoint ${ad.cid} belongs to run ${got.meta.runId.slice(0, 12)}`);
              b = { snap: SnapshotSchema.parse(got.meta.snapshot), theta: got.params, momentum: got.momentum };
              if (b.snap.weightsHash !== got.weightsHash) throw new InvalidInputError('checkpoint snapshot does not match its weights');
            } catch (err) {
              this.log(`resync by CID ${ad.cid.slice(0, 16)}… failed (${(err as Error).message}); trying a direct download`);
              b = null;
            }
          }
          if (!b) {
            via = 'bulk';
            const bytes = await fetchBulk(this.host, peer, ad.bundle, { maxBytes: 8 * P + 65536, signal: AbortSignal.timeout(10_000) });
            b = decodeBundle(bytes, P);
          }
          if (weightsHash(b.theta) !== b.snap.weightsHash) throw new InvalidInputError('snapshot weights do not match its hash');
          if (this.stopped || (this.state.phase !== 'syncing' && this.state.phase !== 'unsynced')) return;
          this.theta.set(b.theta);
          this.thetaHash = b.snap.weightsHash;
          this.prevTheta = null;
          this.outer.momentum.set(b.momentum);
          // Decoded payloads stay: a resync into the same round keeps the reducer's held updates, whose Δ apply needs (prune() drops old ones).
          this.dispatch({ type: 'synced', snapshot: b.snap });
          if (this.state.round === b.snap.round && this.state.weightsHash === b.snap.weightsHash) {
            this.report('synced', b.snap.round, this.evaluate(), b.snap.roster.length, [], b.snap.weightsHash, via);
          }
          return;
        } catch (err) {
          this.log(`resync from ${peer.slice(-8)} failed: ${(err as Error).message}`);
        }
      }
    } finally {
      this.resyncing = false;
    }
  }
}
