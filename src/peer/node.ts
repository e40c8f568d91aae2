/**
 * A running swarm peer: the small, effectful shell around the pure round reducer
 * (src/swarm/round.ts) and the peer's roles.
 *
 *   net message ──onNet──▶ reducer event ──step──▶ effects ──execute──▶ net / training / apply / resync
 *
 * The node owns the lifecycle (host, store, topic, timers), the reducer's state and its
 * persistence, the dispatch of control messages to the roles, the fetching of update payloads,
 * the apply of a decided round and the round report. The roles each get the narrow dependencies
 * they use:
 * - payloads.ts: every bulk object by sha256, each update held once;
 * - training.ts: a round's inner steps, the codec, overlap;
 * - data.ts: dataset, tokenizer, shards, the governed dataset switch;
 * - storage.ts / sync.ts: publishing, replication and GC / snapshots, resync, resume;
 * - validator.ts: scoring and selection by score; audit.ts: re-execution and fraud proofs;
 * - ledger.ts: payout addresses and signed score reports.
 *
 * - Control messages travel signed on the run's gossip topic (wire.ts); payloads on the bulk
 *   protocol, addressed by sha256. An `update` message is handed to the reducer only once its
 *   payload is held and decodes (the reducer trusts the driver to check Δ before reporting an
 *   update held).
 * - acceptorRecord(state) is written to DATA_DIR/acceptor.json (synchronously, before any effect
 *   of the step is executed) whenever it changes; a restart passes it to init().
 */
import { EventEmitter } from 'node:events';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import type { Address } from 'viem';
import type { z } from 'zod';
import { evalBatches, type Batch, type TokenArray } from '../data/batches.js';
import { loadKernels } from '../kernels/index.js';
import { weightsHash } from '../model/checkpoint.js';
import { GPT } from '../model/gpt.js';
import { LoraGPT, adamwFor, type ThetaModel } from '../model/lora-model.js';
import {
  controlScoring,
  controlTopic,
  createHost,
  joinControlChannel,
  serveBulk,
  type ControlChannel,
  type Host,
} from '../net/index.js';
import { openStore, parseCid, type Store } from '../store/index.js';
import { loadState } from '../store/checkpoint.js';
import { applyCommitted, applyCommittedSparse, type CommittedUpdate } from '../swarm/apply.js';
import { ErrorFeedback, getCodec, type SparseCodec } from '../swarm/compress/index.js';
import { storageParams, type DecodedManifest } from '../swarm/manifest.js';
import { OuterNesterov } from '../swarm/outer.js';
import {
  acceptorRecord,
  fromWire,
  init,
  nextDeadline,
  roundParams,
  snapshotOf,
  step,
  toWire,
  wantsState,
  type Effect,
  type Message,
  type RoundEvent,
  type RoundParams,
  type RoundState,
} from '../swarm/round.js';
import { CpuTrainModel, WebGpuTrainModel, openTrainModel } from '../train/device-model.js';
import { ModelStepper } from '../verify/audit-tolerance.js';
import { DeviceRefusedError, InvalidInputError } from '../util/errors.js';
import { RateCap, Senders } from './admission.js';
import { Audits } from './audit.js';
import { initialTheta, loadBase, thetaModel, thetaSpecs } from './base-model.js';
import { bootChoice, keepDialing, mdnsOnly, readAcceptorRecord, waitForPeers, type KeepDialing } from './boot.js';
import { generate, type GenerateOptions } from './inference.js';
import { RunData } from './data.js';
import { LedgerRole } from './ledger.js';
import type { NodeOptions } from './options.js';
import { PayloadStore } from './payloads.js';
import { RoundMeter, type NodeView, type RoundReport } from './report.js';
import { Storage } from './storage.js';
import { Sync } from './sync.js';
import { Training } from './training.js';
import { UpdateFetcher, UpdateIntake } from './updates.js';
import { Exclusions, Validator, type ScoreReport } from './validator.js';
import { Weights } from './weights.js';
import { NodeSchemas, type Commitment, type FraudNotice, type SnapAd } from './wire.js';

export { NodeSchemas } from './wire.js';
export type { AuditRecord, FraudRecord, NodeView, RoundReport, ScoreEntry } from './report.js';
export type { NodeOptions } from './options.js';

const DEBUG = process.env.TESSERA_NODE_DEBUG === '1';
/**
 * Reducer rejections that only an attacker or a bug produces are logged at warn; the others
 * (late, stale-round, duplicate, ... ) are routine under message delay and logged at debug.
 */
const SUSPICIOUS = new Set([
  'malformed',
  'self',
  'not-member',
  'not-leader',
  'equivocation',
  'wrong-base',
  'bad-certificate',
  'conflict',
  'wrong-hash',
]);
/** Default limit on one fetch of data or state from peers. */
const FETCH_MS = 30_000;
/** Fraud proofs checked per sender per round, and score reports taken per sender per round. */
const FRAUDS_PER_SENDER = 2;
const SCORES_PER_SENDER = 4;

export class SwarmNode {
  host!: Host;
  /** 'round' (RoundReport) for every report also passed to onRound. */
  readonly events = new EventEmitter<{ round: [RoundReport] }>();
  channel!: ControlChannel<typeof NodeSchemas>;
  state!: RoundState;
  /** The IPFS store (Helia on this node's libp2p host). */
  store!: Store;
  /** Structured log (pino): every rejected input, with its reason. */
  readonly logger: Logger;
  private readonly m: DecodedManifest['manifest'];
  private readonly p: RoundParams;
  private readonly payloads = new PayloadStore();
  private readonly fraudCap = new RateCap(FRAUDS_PER_SENDER);
  private readonly scoresCap = new RateCap(SCORES_PER_SENDER);
  private readonly meter = new RoundMeter();
  private weights!: Weights;
  private updates!: UpdateFetcher;
  private senders!: Senders;
  private intake!: UpdateIntake;
  /** Evaluates θ; separate from the trainer's model, because θ may be applied while a job is training. */
  private evalGpt!: ThetaModel;
  /** A LoRA run's frozen base as the trainer holds it (hashed into each round report); else null. */
  private frozenBase: Float32Array | null = null;
  /** The run's codec when it is sparse: apply then reads each update's entries, never a decoded Δ. */
  private sparse: SparseCodec | null = null;
  /** The device the inner steps run on, with its kernels or adapter (set by start()). */
  device = 'cpu';
  /** Where Δ and the codec run (Training.codecPlace), once training is set up. */
  codecPlace = '';
  private evalSet: Batch[] = [];
  private data!: RunData;
  private training!: Training;
  private storage!: Storage;
  private sync!: Sync;
  private audits!: Audits;
  private ledger!: LedgerRole;
  private validator: Validator | null = null;
  private exclusions!: Exclusions;
  private lastVal = NaN;
  private lastRecord = '';
  private timer: NodeJS.Timeout | null = null;
  private dialer: KeepDialing | null = null;
  private stopped = false;
  private readonly log: (line: string) => void;
  private readonly recordPath: string;
  private readonly linkDelayMs: number;
  private readonly fetchMs: number;

  constructor(readonly o: NodeOptions) {
    this.m = o.manifest.manifest;
    this.p = roundParams(o.manifest, Math.max(200, Math.floor(o.manifest.manifest.timing.commitMs / 2)));
    this.log = o.onLog ?? (() => undefined);
    this.linkDelayMs = o.linkDelayMs ?? Math.max(0, Number(process.env.TESSERA_LINK_DELAY_MS ?? 0) || 0);
    this.logger = o.logger ?? pino({ name: 'tessera', level: process.env.TESSERA_LOG ?? 'warn' }, pino.destination(2));
    this.recordPath = join(o.dataDir, 'acceptor.json');
    this.fetchMs = o.fetchTimeoutMs ?? FETCH_MS;
  }

  get peerId(): string {
    return this.host.peerId;
  }

  /** Latest score report received from each validator. */
  get scoreReports(): ReadonlyMap<string, ScoreReport> {
    return this.exclusions.reports;
  }

  /** Every peer's announced payout address. */
  get payouts(): ReadonlyMap<string, Address> {
    return this.ledger.payouts;
  }

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

  /** Publishes a control message unless the node has stopped; a failed publish is dropped (gossip retries nothing). */
  private send<K extends keyof typeof NodeSchemas & string>(kind: K, body: z.input<(typeof NodeSchemas)[K]>): void {
    if (!this.stopped) this.channel.publish(kind, body).catch(() => undefined);
  }

  private async startInner(): Promise<void> {
    const m = this.m,
      o = this.o,
      runId = o.manifest.runId;
    mkdirSync(o.dataDir, { recursive: true });
    // Network first: a dataset named by CID is fetched from peers.
    this.host = await createHost({
      dataDir: o.dataDir,
      listen: o.listen ?? ['/ip4/127.0.0.1/tcp/0'],
      mdns: o.mdns === true,
      ...o.net,
      logger: this.logger,
      // Peer scoring on the control topic: peers that send invalid messages lose score, and are
      // ignored once they flood them (host.ts controlScoring; loopback is not penalised for colocation).
      gossipsub: controlScoring(controlTopic(runId)),
    });
    this.store = await openStore(o.dataDir, {
      libp2p: this.host.node,
      onCorrupt: (cid) =>
        this.logger.warn(
          { reason: 'corrupt-block', cid },
          'local block failed its hash; deleted, refetching from peers',
        ),
    });
    await serveBulk(this.host, (hash) => this.payloads.bytes(hash));
    this.channel = joinControlChannel({
      host: this.host,
      runId,
      schemas: NodeSchemas,
      onMessage: (msg) => {
        if (this.linkDelayMs > 0) setTimeout(() => this.onNet(msg.kind, msg.from, msg.body), this.linkDelayMs);
        else this.onNet(msg.kind, msg.from, msg.body);
      },
    });
    this.dialer = keepDialing(
      this.host,
      o.bootstrap ?? [],
      () => this.stopped,
      () => this.state?.roster ?? [],
    );
    const self = this.host.peerId;
    const stopped = () => this.stopped;
    this.data = new RunData({
      manifest: m,
      numShards: this.p.numShards,
      store: this.store,
      fetchMs: this.fetchMs,
      logger: this.logger,
      log: this.log,
      ...(o.cacheDir ? { cacheDir: o.cacheDir } : {}),
    });
    this.ledger = new LedgerRole({
      runId,
      self,
      dataDir: o.dataDir,
      options: o.ledger,
      logger: this.logger,
      publishSig: (body) => this.send('node.sig', body),
      publishPayout: (address) => this.send('node.payout', { address }),
      onSettings: (dataset) => this.data.followGovernance(dataset),
      stateCid: (r, ms) => this.storage.stateCid(r, ms),
    });
    this.exclusions = new Exclusions({
      logger: this.logger,
      exclude: (peers) => this.dispatch({ type: 'exclude', peers }),
      gate: (o.trustValidators?.length ?? 0) > 0 || o.validator === true,
    });
    this.log(`peer ${self} listening on ${this.host.multiaddrs().join(' ')}`);

    await waitForPeers(o, () => this.channel.subscribers());

    // Data and model, checked against the manifest.
    const val: TokenArray = await this.data.load();
    // Audit needs bitwise-reproducible steps across machines: deterministic kernels for everyone.
    const kernels = loadKernels({ threads: o.threads ?? 1, ...(m.hyper.audit ? { deterministic: true } : {}) });
    // LoRA runs train on the CPU (the GPU models take no adapter): `auto` picks it, `webgpu` is refused.
    if (m.lora && o.device === 'webgpu')
      throw new DeviceRefusedError('--device webgpu: LoRA runs train on the CPU (the GPU models take no adapter)');
    const device = m.lora ? 'cpu' : (o.device ?? 'cpu');
    // Fine-tuning: the base model, hash-checked (base-model.ts); θ is the adapter in a LoRA run.
    const base = await loadBase(m, {
      store: this.store,
      ...(o.base !== undefined ? { path: o.base } : {}),
      signal: AbortSignal.timeout(this.fetchMs),
      kernels,
    });
    if (base) this.log(`base model ${m.base!.weightsHash.slice(0, 12)} loaded: ${base.length} parameters`);
    const gpt = thetaModel(m, kernels, base);
    initialTheta(m, gpt, base);
    this.frozenBase = gpt instanceof LoraGPT ? gpt.base : null;
    const specs = thetaSpecs(gpt);
    const outer = new OuterNesterov(gpt.params.length, m.hyper.outer);
    if (m.genesisCid !== undefined) {
      const g = await loadState(this.store, parseCid(m.genesisCid), m.model, {
        signal: AbortSignal.timeout(this.fetchMs),
        ...(specs ? { specs } : {}),
      });
      gpt.params.set(g.params);
      outer.momentum.set(g.momentum);
    }
    const w = (this.weights = new Weights(gpt.params.slice(), outer));
    // Evaluation reads θ in place: no copy of the weights, and no gradient buffer. In a LoRA run
    // θ is the adapter, loaded into the evaluation model's own adapter before each evaluation.
    this.evalGpt = m.lora ? thetaModel(m, kernels, base) : new GPT(m.model, kernels, w.theta);
    if (w.hash !== m.genesisWeightsHash) {
      throw new InvalidInputError(
        `genesis weights ${m.genesisCid ? `(${m.genesisCid}) ` : ''}hash to ${w.hash.slice(0, 12)}, the manifest says ${m.genesisWeightsHash.slice(0, 12)}`,
      );
    }
    const cs = m.hyper.codec;
    const codec = cs.id === 'sparse' ? getCodec('sparse', { chunk: cs.chunk, k: cs.k }) : getCodec(cs.id);
    if (cs.id === 'sparse') this.sparse = codec as SparseCodec;
    this.updates = new UpdateFetcher({
      host: this.host,
      codec,
      params: w.length,
      payloads: this.payloads,
      linkDelayMs: this.linkDelayMs,
      stopped,
      logger: this.logger,
      deliver: (hash, round, author) => this.deliverUpdate(hash, round, author),
    });
    this.senders = new Senders({
      state: () => this.state,
      self,
      trustValidators: o.trustValidators ?? [],
      validator: o.validator === true,
      ledgerValidators: () => this.ledger.validatorPeers(),
    });
    this.intake = new UpdateIntake({
      senders: this.senders,
      state: () => this.state,
      payloads: this.payloads,
      fetcher: this.updates,
      toReducer: (msg) => this.dispatch({ type: 'message', msg }),
      stopped,
      logger: this.logger,
    });
    const shardData = (sh: number, round: number) => this.data.shardData(sh, round);
    this.audits = new Audits({
      manifest: o.manifest,
      numShards: this.p.numShards,
      self,
      params: w.length,
      kernels,
      ...(m.lora ? { makeModel: () => thetaModel(m, kernels, base) } : {}),
      host: this.host,
      payloads: this.payloads,
      shardData,
      fetchMs: this.fetchMs,
      stopped,
      logger: this.logger,
      publishCommit: (c) => this.send('node.commit', c),
      publishFraud: (f) => this.send('node.fraud', f),
    });
    // The inner steps run on --device (src/train/device-model.ts); θ, Δ, codecs and hashes stay here.
    const model =
      device === 'cpu'
        ? new CpuTrainModel(gpt, adamwFor(gpt, m.hyper.adamw, kernels))
        : await openTrainModel(device, {
            config: m.model,
            adamw: m.hyper.adamw,
            kernels,
            audit: m.hyper.audit ?? null,
            innerSteps: m.hyper.innerSteps,
            log: this.log,
          });
    // A validator on a GPU audits trainers of its own class bit for bit, on a twin of its model
    // (docs/WEBGPU.md); others, and every trainer with --audit-on cpu, on the CPU with the tolerance.
    if (
      o.validator &&
      m.hyper.audit?.tolerance &&
      (o.auditOn ?? 'device') === 'device' &&
      model instanceof WebGpuTrainModel
    ) {
      const twin = await model.twin();
      this.audits.useDevice(model.backend, (job) => new ModelStepper(twin, job));
    }
    const ef = m.hyper.errorFeedback > 0 ? new ErrorFeedback(w.length, m.hyper.errorFeedback) : null;
    await model.warmUp(m.hyper.batch, m.model.ctx, { codec, ef });
    this.device = `${model.device} (${model.label})`;
    this.log(`training on ${this.device}`);
    this.training = new Training({
      manifest: o.manifest,
      self,
      model,
      codec,
      ef,
      codecOnHost: process.env.TESSERA_DEVICE_CODEC === 'host',
      weights: w,
      payloads: this.payloads,
      shardData,
      behave: o.behave ?? 'honest',
      stopped,
      log: this.log,
      debug: DEBUG ? this.log : null,
      trained: (round, updateHash, steps) => this.dispatch({ type: 'trained', round, updateHash, steps }),
      commit: (c) => this.audits.commitOwn(c),
    });
    this.codecPlace = this.training.codecPlace();
    if (model.device !== 'cpu') this.log(this.codecPlace);
    if (o.validator) {
      this.validator = new Validator({
        manifest: o.manifest,
        numShards: this.p.numShards,
        self,
        // Scoring loads other weights into its model: its own (no gradients), not θ's.
        evalGpt: thetaModel(m, kernels, base),
        shardData,
        logger: this.logger,
        audit: (...a) => this.audits.auditOne(...a),
        scored: (r) => this.exclusions.update(this.state?.round ?? 0, r),
        publish: (body) => this.send('node.scores', body),
      });
    }
    this.storage = new Storage({
      store: this.store,
      runId,
      model: m.model,
      genesisCid: m.genesisCid,
      ...(m.base?.cid ? { baseCid: m.base.cid } : {}),
      ...(specs ? { specs } : {}),
      sp: storageParams(m),
      self,
      data: this.data,
      fetchMs: this.fetchMs,
      stopped,
      logger: this.logger,
      current: () =>
        !this.state || this.state.phase === 'unsynced' || this.state.phase === 'syncing'
          ? null
          : { round: this.state.round, roster: this.state.roster },
    });
    this.sync = new Sync({
      runId,
      model: m.model,
      ...(specs ? { specs } : {}),
      host: this.host,
      store: this.store,
      storage: this.storage,
      weights: w,
      payloads: this.payloads,
      snapPath: join(o.dataDir, `snapshot-${runId.slice(0, 16)}.bin`),
      stopped,
      log: this.log,
      logger: this.logger,
      publishAd: (ad) => this.send('node.snap', ad),
      stopTraining: () => this.training.stop(),
      wantsState: () => this.state.phase === 'syncing' || this.state.phase === 'unsynced',
      installed: (snap, local) => {
        this.dispatch({ type: 'synced', snapshot: snap, ...(local ? { local: true } : {}) });
        return this.state.round === snap.round && this.state.weightsHash === snap.weightsHash;
      },
      refusal: (snap) => {
        const r = step(this.state, { type: 'synced', snapshot: snap }).rejected[0];
        return r ? `${r.reason}: ${r.detail}` : null;
      },
      wanted: (round, hash) => wantsState(this.state, round, hash),
      reportSynced: (snap, via) =>
        this.report('synced', snap.round, this.evaluate(), snap.roster.length, [], snap.weightsHash, via),
    });
    this.evalSet = [...evalBatches(val, m.hyper.batch, m.model.ctx, o.evalBatches ?? 4)];

    const discovered = mdnsOnly(o) ? this.channel.subscribers() : [];
    const first = init({
      self,
      params: this.p,
      now: Date.now(),
      ...bootChoice(o, self, discovered, readAcceptorRecord(this.recordPath)),
    });
    this.meter.reset(this.meterReading());
    this.commit(first.state, first.effects);
    if (first.state.phase === 'unsynced') this.sync.restoreLocal();
    this.timer = setInterval(() => this.tick(), 50);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.dialer?.stop();
    this.training?.stop();
    try {
      this.channel?.close();
    } catch {
      /* closing anyway */
    }
    await this.ledger?.stop();
    await this.storage?.drain();
    await this.store?.stop().catch(() => undefined);
    await this.host?.stop().catch(() => undefined);
  }

  /** A consistent read-only summary of this node (for the dashboard and scripts). */
  view(): NodeView {
    if (!this.host) throw new InvalidInputError('the node has not started yet (no peer id)');
    const st = this.state;
    const ledger = this.ledger?.view();
    return {
      runId: this.o.manifest.runId,
      manifest: this.m,
      peerId: this.host.peerId,
      round: st?.round ?? -1,
      phase: st?.phase ?? 'starting',
      roster: [...(st?.roster ?? [])],
      subscribers: this.channel?.subscribers() ?? [],
      weightsHash: this.weights?.hash ?? '',
      checkpointCid: this.storage?.checkpointCid ?? null,
      params: this.weights?.length ?? 0,
      scores: this.exclusions?.meanScores(this.validator?.latest ?? null) ?? {},
      ...(ledger ? { ledger } : {}),
    };
  }

  /**
   * Continues `prompt` from the current weights θ (not a trainer's half-trained copy). Runs on
   * the event loop thread, so callers should keep maxTokens small (the dashboard caps it).
   */
  /** Continues `prompt` from the agreed weights θ (inference.ts). */
  generate(prompt: string, o: GenerateOptions = {}): { text: string; tokens: number } {
    const g = this.evalGpt;
    if (g instanceof LoraGPT) {
      // θ is the adapter: load it, then sample from the base with the adapter attached.
      g.params.set(this.weights.theta);
      return generate(g.gpt, g.gpt.params, this.data.tokenizer, this.m.model.ctx, prompt, o);
    }
    return generate(g as GPT, this.weights.theta, this.data.tokenizer, this.m.model.ctx, prompt, o);
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
      const fields = {
        reason: x.reason,
        detail: x.detail,
        from: x.from,
        event: x.event,
        round: this.state.round,
        phase: this.state.phase,
      };
      if (SUSPICIOUS.has(x.reason)) this.logger.warn(fields, 'rejected round input');
      else this.logger.debug(fields, 'rejected round input');
    }
    if (DEBUG) {
      for (const e of r.effects) {
        if (e.type !== 'broadcast' || e.msg.type === 'commit') {
          const commit =
            e.type === 'broadcast' && e.msg.type === 'commit'
              ? ` commit a${e.msg.commit.attempt} with ${e.msg.commit.included.length}`
              : '';
          this.log(`r${r.state.round} ${r.state.phase} effect ${e.type}${commit} t+${Date.now() - r.state.startedAt}`);
        }
      }
    }
    this.commit(r.state, r.effects);
    // A message event may have moved the clock-free state past a deadline: tick right away.
    if (ev.type !== 'tick' && Date.now() >= nextDeadline(this.state)) this.dispatch({ type: 'tick', now: Date.now() });
  }

  private commit(next: RoundState, effects: Effect[]): void {
    const prevRound = this.state?.round ?? -1;
    const was = this.state ?? null;
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
    if (was) this.intake.stateMoved(was, next);
    if (next.round !== prevRound && next.round >= 0) {
      // Members on probation, for the validator gate (after this step: it dispatches).
      const probation = next.roster.filter((_, i) => next.credit[i] < next.params.probation);
      queueMicrotask(() => this.exclusions.setProbation(next.round, probation));
    }
    // A decided empty set ends the round inside the reducer (no apply effect): report it too.
    const prev = next.prev;
    if (
      prevRound >= 0 &&
      next.round === prevRound + 1 &&
      prev &&
      prev.round === prevRound &&
      prev.decision.commit.included.length === 0 &&
      prev.resultHash !== null
    ) {
      this.report('round', prevRound, this.lastVal, prev.roster.length, [], prev.resultHash);
    }
    if (next.round !== prevRound && next.round >= 0 && next.phase !== 'syncing' && next.phase !== 'unsynced') {
      const snap = snapshotOf(next);
      if (snap) this.sync.advertise(snap);
    }
  }

  private execute(e: Effect): void {
    switch (e.type) {
      case 'broadcast':
      case 'send':
        this.publish(e.msg);
        break;
      case 'train':
        this.training.start(e);
        break;
      case 'pretrain':
        this.training.start({ ...e, until: null });
        break;
      case 'stop-training':
        this.training.stop(e.round);
        break;
      case 'fetch':
        for (const u of e.updates) void this.updates.fetch(u.updateHash, [u.peer, ...e.from], e.round, u.peer);
        break;
      case 'apply':
        this.apply(e);
        break;
      case 'resync':
        void this.sync.resync(e);
        break;
    }
  }

  private publish(msg: Message): void {
    const w = toWire(msg);
    this.channel.publish(w.kind, w.body as never).catch(() => undefined);
  }

  private dropped(kind: string, from: string, reason: string): void {
    this.logger.debug({ reason, kind, from }, 'dropped control message');
  }

  /** A control message from `from` (its envelope signature and schema already checked). */
  private onNet(kind: string, from: string, body: unknown): void {
    if (this.stopped || !this.state) return;
    const round = this.state.round;
    switch (kind) {
      case 'node.scores': {
        // Kept per sender only for validators and members (Exclusions caps them too).
        const trusted = this.o.trustValidators?.includes(from) === true;
        if (!trusted && !this.senders.validators().has(from) && !this.senders.isMember(from))
          return this.dropped(kind, from, 'not-validator');
        if (!this.scoresCap.take(round, from)) return this.dropped(kind, from, 'rate');
        this.exclusions.onReport(from, body as ScoreReport, trusted, round);
        return;
      }
      case 'node.commit': {
        // Commitments are keyed by (round, member): only members of that round may write one.
        const c = body as Commitment;
        if (!this.senders.mayTrain(from, c.round)) return this.dropped(kind, from, 'not-member');
        this.audits.onCommit(from, c, round);
        return;
      }
      case 'node.fraud':
        // Validators, or members where this peer knows no validators (see admission.ts).
        if (!this.senders.validators().has(from) && !this.senders.isMember(from))
          return this.dropped(kind, from, 'not-validator');
        if (!this.fraudCap.take(round, from)) return this.dropped(kind, from, 'rate');
        void this.audits.checkFraud(from, body as FraudNotice);
        return;
      case 'node.payout': {
        const address = (body as { address: Address }).address;
        this.ledger.onPayout(from, address, round, this.senders.isMember(from) || this.senders.validators().has(from));
        return;
      }
      case 'node.sig':
        this.ledger.onSignature(from, body, round);
        return;
      case 'node.snap':
        this.sync.onAd(
          from,
          body as SnapAd,
          !this.senders.synced() || this.senders.isMember(from) || this.senders.validators().has(from),
        );
        return;
    }
    const msg = fromWire(kind, from, body);
    if (!msg) return;
    if (msg.type === 'update') {
      this.intake.onUpdate(msg);
      return;
    }
    this.dispatch({ type: 'message', msg });
  }

  // ───────────── update payloads ─────────────

  /** A payload was fetched and decoded: hand its update message to the reducer. */
  private deliverUpdate(hash: string, round: number, author: string): void {
    let msg = this.payloads.msg(hash);
    if (!msg) {
      // Fetched for a pending or decided commit whose update message we never saw (lost on
      // gossip): rebuild it from the commit, or the round could never be accepted.
      const st = this.state;
      const inc = [st.decision?.commit, st.pending]
        .flatMap((k) => k?.included ?? [])
        .find((u) => u.updateHash === hash && u.peer === author);
      if (!inc || st.round !== round) return;
      msg = {
        type: 'update',
        from: author,
        round,
        baseHash: st.trainBase,
        updateHash: hash,
        steps: Math.max(1, Math.round(inc.tokens / this.p.batch)),
      };
    }
    if (msg.from === this.host.peerId && this.state.updates.has(hash)) return;
    this.dispatch({ type: 'message', msg });
  }

  // ───────────── apply and report ─────────────

  private apply(e: Extract<Effect, { type: 'apply' }>): void {
    const w = this.weights;
    if (w.hash !== e.baseHash) {
      this.log(`round ${e.round}: our weights are not the round's base; waiting for resync`);
      return;
    }
    if (e.included.some((u) => !this.payloads.hasUpdate(u.updateHash))) {
      this.log(`round ${e.round}: missing a payload at apply`);
      return;
    }
    const rule = this.m.hyper.aggregate ?? 'mean';
    // A sparse run's updates are applied from their entries, block by block (no decoded Δ at all),
    // unless this peer scores them (a validator reads each Δ).
    const sparse = this.sparse && !this.validator && (rule === 'mean' || rule === 'clip') ? this.sparse : null;
    const ups: CommittedUpdate[] = sparse
      ? []
      : e.included.map((u) => ({ peer: u.peer, tokens: u.tokens, delta: this.payloads.delta(u.updateHash)! }));
    if (this.m.hyper.overlap !== 'none') w.prev = { hash: w.hash, weights: w.theta.slice() };
    this.audits.onApply(e.round, [...this.state.roster], e.baseHash);
    const scoring = this.validator ? this.score(e, ups) : null;
    if (sparse)
      applyCommittedSparse(
        w.theta,
        w.outer,
        e.included.map((u) => ({
          peer: u.peer,
          tokens: u.tokens,
          ...sparse.entries(this.payloads.updateBytes(u.updateHash)!, w.length),
        })),
        rule as 'mean' | 'clip',
      );
    else applyCommitted(w.theta, w.outer, ups, rule);
    const h = weightsHash(w.theta);
    w.hash = h;
    const valLoss = this.evaluate();
    this.lastVal = valLoss;
    const roster = this.state.roster.length;
    if (scoring && this.ledger.link)
      void scoring.then(
        (scores) =>
          scores &&
          this.ledger.signRound(
            e.round,
            h,
            scores.pay,
            e.included.map((u) => u.updateHash),
          ),
      );
    const payloadBytes = e.included.reduce((n, u) => n + (this.payloads.updateBytes(u.updateHash)?.length ?? 0), 0);
    this.dispatch({ type: 'applied', round: e.round, weightsHash: h });
    // The reducer counts sequences; the report counts tokens.
    this.report(
      'round',
      e.round,
      valLoss,
      roster,
      e.included.map((u) => ({ peer: u.peer, tokens: u.tokens * this.m.model.ctx })),
      h,
      undefined,
      payloadBytes,
    );
    this.payloads.prune(this.state.round);
  }

  /**
   * Validator: scores every update it holds for the round, applied or left out (so a member left
   * out for a flag is re-scored each round, and comes back once it is no longer flagged), against
   * θ before the apply (copied now).
   */
  private score(e: Extract<Effect, { type: 'apply' }>, ups: CommittedUpdate[]) {
    const hashes = new Map(e.included.map((u) => [u.peer, u.updateHash]));
    const extras: CommittedUpdate[] = [];
    for (const { hash, msg: u, delta } of this.payloads.heldUpdates(e.round)) {
      if (hashes.has(u.from) || !this.state.roster.includes(u.from)) continue;
      hashes.set(u.from, hash);
      extras.push({ peer: u.from, tokens: u.steps * this.m.hyper.batch, delta });
    }
    return this.validator!.validate(
      e.round,
      e.valueHash,
      this.weights.theta.slice(),
      e.baseHash,
      [...this.state.roster],
      ups,
      extras,
      hashes,
    );
  }

  private evaluate(): number {
    const g = this.evalGpt; // its parameters are θ itself, except a LoRA run's adapter copy
    if (g.params !== this.weights.theta) g.params.set(this.weights.theta);
    let sum = 0;
    for (const b of this.evalSet) sum += g.loss(b.inputs, b.targets, this.m.hyper.batch, this.m.model.ctx);
    return this.evalSet.length ? sum / this.evalSet.length : NaN;
  }

  private meterReading() {
    return {
      computeMs: this.training?.computeMs ?? 0,
      innerSteps: this.training?.innerSteps ?? 0,
      wire: this.host.metrics.snapshot().wire,
    };
  }

  private report(
    event: 'round' | 'synced',
    round: number,
    valLoss: number,
    roster: number,
    contributors: { peer: string; tokens: number }[],
    h: string,
    via?: 'ipfs' | 'bulk' | 'local',
    payloadBytes?: number,
  ): void {
    const datasetCid = this.data.datasetAt(round).cid;
    const v = this.validator;
    const scored = v?.takeScored() ?? [];
    const signed = this.ledger.takeSigned();
    const unpaid = this.ledger.takeUnpaid();
    const audits = v?.takeAudits() ?? [];
    const frauds = this.audits.takeFrauds();
    const prev = this.state.prev;
    const decided =
      event === 'round' && prev && prev.round === round
        ? { voters: prev.voters.length, leader: prev.decision.commit.leader }
        : {};
    const r: RoundReport = {
      event,
      round,
      ...decided,
      valLoss,
      trainLoss: this.training.takeTrainLoss(),
      contributors,
      checkpointCid: this.storage.checkpointCid,
      ...this.meter.take(this.meterReading()),
      peers: this.channel.subscribers().length + 1,
      roster,
      included: contributors.length,
      weightsHash: h,
      ...(this.frozenBase ? { baseHash: weightsHash(this.frozenBase) } : {}),
      ...(payloadBytes !== undefined ? { payloadBytes } : {}),
      ...(event === 'round' && this.state.stretch ? { stretch: [this.state.stretch[0], this.state.stretch[1]] } : {}),
      ...(via ? { via } : {}),
      storage: {
        ...this.storage.held,
        shardsFetched: this.data.shardsFetched,
        corruptBlocks: this.store.stats.corruptLocal,
      },
      ...(v?.latest ? { scores: v.latest } : {}),
      ...(scored.length ? { scored } : {}),
      ...(signed.length ? { signed: signed.map((s) => s.round), paid: signed } : {}),
      ...(unpaid.length ? { unpaid } : {}),
      ...(audits.length ? { audits } : {}),
      ...(frauds.length ? { frauds } : {}),
      ...(datasetCid ? { datasetCid } : {}),
    };
    this.o.onRound?.(r);
    this.events.emit('round', r);
    if (event === 'round') this.storage.schedule();
    // Re-announce the payout address (cheap; covers peers that joined since), and let the chain
    // link submit, re-read shares and governance.
    if (!this.stopped) this.ledger.tick(this.state?.round ?? round);
  }
}
