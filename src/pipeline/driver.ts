/**
 * The pipeline driver (a trainer, as in SWARM and Petals): it holds the data and no weights,
 * and calls one peer per stage for every micro-batch — forward through stages 0..S−1, the loss
 * and backward on the last, backward back to stage 0 — then synchronizes the tied embedding
 * gradient between the first and last stage, computes the global gradient norm from every
 * stage's part, and has each stage take its optimizer step.
 *
 * Micro-batches run concurrently (`inflight`): while one is in stage 2, the next is in stage 1,
 * so stages do not idle for the whole batch (GPipe-style: weights change only between steps, so
 * no stale-weight correction is needed; a step waits for its last micro-batch).
 *
 * Replicas (`stages[i]` lists several peers) are kept in lockstep by active replication: every
 * call goes to every live replica of the stage, which compute the same bits (deterministic
 * kernels), and the first good reply is used. A replica that fails is dropped; as long as one
 * replica of each stage lives, no step and no micro-batch is lost.
 */
import type { Host } from '../net/host.js';
import type { Batch } from '../data/batches.js';
import { InvalidInputError } from '../util/errors.js';
import { StageCallError } from './rpc.js';
import { int32Bytes, type ArgsOf, type StageOp } from './stage-protocol.js';
import { StageClient, libp2pTransport, type StageReply, type StageTransport } from './stage-client.js';
import type { ActCodecSpec } from './act-codec.js';
import { exactBytes } from './act-codec.js';
import { bytesToF32, f32ToBytes } from '../util/packed.js';
import { mixWeights } from './rebuild.js';
import { randomBytes } from 'node:crypto';

/** A stage call's deadline at toy sizes. */
export const CALL_TIMEOUT_MS = 60_000;

/** A call's deadline is at least this many times the slowest call answered so far. */
export const SLOW_FACTOR = 4;

/**
 * A stage call's deadline for a model (or stage) of P parameters: CALL_TIMEOUT_MS up to 16M
 * parameters, growing linearly past it. At GPT-2 small a stage's call under load took over the
 * fixed 60 s (bench/swarm-124m.ts), and the driver gave up on a working stage.
 */
export function callTimeoutFor(P: number): number {
  return CALL_TIMEOUT_MS * Math.max(1, Math.ceil(P / 16_000_000));
}

export interface DriverOptions {
  /** The driver's libp2p host (stage calls go over it), unless `transport` is given. */
  host?: Host;
  /** How stage calls travel (default: libp2p from `host`; memory-transport.ts in tests). */
  transport?: StageTransport;
  /** Peer ids serving each stage, in stage order; several per stage = replicas (tried in order). */
  stages: string[][];
  dim: number;
  vocabSize: number;
  /**
   * Whether the first and last stages hold copies of one tied embedding whose gradients are summed
   * before every step (default true: GPT-2; an untied Llama has none, pipeline-stage.ts hasTiedEmbedding).
   */
  tied?: boolean;
  /** Values per token crossing a stage boundary: dim, or the run's bottleneck width. */
  width?: number;
  codec: ActCodecSpec;
  /** Micro-batches in flight at once (default: all of a step's). */
  inflight?: number;
  callTimeoutMs?: number;
  /**
   * When the last replica of stage `stage` is gone: bring up a fresh peer for it (started with
   * no weights) and return its peer id; the driver restores it from the latest checkpoint shares.
   */
  recover?: (stage: number) => Promise<string>;
  /**
   * Rebuild a lost middle stage from its neighbours instead (rebuild.ts, CheckFree): 'fallback'
   * when it has no checkpoint, 'prefer' even when it has one. The fresh peer gets the mean of the
   * neighbours' layers, weighted by their gradient norms, as two masked parts sent to it directly.
   */
  rebuild?: 'fallback' | 'prefer';
  /** Addresses of a peer (the share holders a restoring peer should dial); default none (already connected). */
  addrsOf?: (peer: string) => string[];
  /**
   * 'replicate' (default): every call goes to every live replica, which compute in lockstep (a
   * dead replica costs nothing, replicas add no throughput). 'balance' (as in SWARM): each
   * micro-batch goes through one replica per stage, chosen by announced throughput over calls
   * in flight; a failed hop retries the whole micro-batch on other replicas; before each step the
   * replicas of a stage sum their gradients (exactly, through the driver), so they stay identical.
   */
  routing?: 'replicate' | 'balance';
  /** A peer's announced capacity in tokens/s (balanced routing): a cap on its measured one; default: none. */
  throughputOf?: (peer: string) => number;
}

/** A batch cut into `micro` micro-batches of `n` tokens each (views, no copy). */
function splitBatch(batch: Batch, micro: number, n: number): Batch[] {
  return Array.from({ length: micro }, (_, m) => ({
    inputs: batch.inputs.subarray(m * n, (m + 1) * n),
    targets: batch.targets.subarray(m * n, (m + 1) * n),
  }));
}

/** How a micro-batch's call to stage i is made. */
type Hop = <Op extends StageOp>(
  i: number,
  op: Op,
  args: ArgsOf<Op>,
  body: Uint8Array,
  maxBody: number,
) => Promise<StageReply<Op>>;

/** The stage client of a driver's options: its transport, or libp2p over its host. */
export function clientOf(o: { host?: Host; transport?: StageTransport }): StageClient {
  if (o.transport) return new StageClient(o.transport);
  if (!o.host) throw new InvalidInputError('a pipeline driver needs a host or a transport');
  return new StageClient(libp2pTransport(o.host));
}

const EMPTY = new Uint8Array(0);

/**
 * A stage brought back on a fresh peer: restored from the checkpoint of step `fromStep`, or
 * rebuilt from its neighbours at step `fromStep` with weights `mix` (previous, next stage).
 */
export interface Recovery {
  stage: number;
  peer: string;
  how: 'checkpoint' | 'neighbours';
  fromStep: number;
  ms: number;
  mix?: [number, number];
}

export interface StepResult {
  loss: number;
  gradNorm: number;
  actBytes: number;
  syncBytes: number;
  retries: number;
}

export class PipelineDriver {
  private micro = 0;
  /** Activation (and activation-gradient) payload bytes sent and received, and everything else. */
  actSent = 0;
  actReceived = 0;
  get actBytes(): number {
    return this.actSent + this.actReceived;
  }
  syncBytes = 0;
  retries = 0;
  /** Time spent in updates (tied sum, norms, steps) and how many. */
  updateMs = 0;
  updates = 0;
  /** Latest checkpoint per stage: the two share CIDs, the step it holds and the seal its shares are stored under. */
  readonly checkpoints = new Map<number, { shares: string[]; step: number; bytes: number; seal: string }>();
  readonly recoveries: Recovery[] = [];
  /** Each stage's layer-gradient sum of squares at the last update (a rebuild's weights). */
  private layerSq: number[] = [];
  /** Bumped when a step fails: its remaining micro-batches stop. */
  private epoch = 0;
  /** Balanced routing: calls in flight per peer, and micro-batches retried after a failed hop. */
  private readonly outstanding = new Map<string, number>();
  reroutes = 0;
  private readonly client: StageClient;
  constructor(private readonly o: DriverOptions) {
    if (o.stages.length === 0 || o.stages.some((r) => r.length === 0)) {
      throw new InvalidInputError('every stage needs at least one peer');
    }
    this.live = o.stages.map((r) => [...r]);
    this.client = clientOf(o);
  }

  private get S(): number {
    return this.o.stages.length;
  }

  /** Live replicas per stage. */
  private readonly live: string[][];
  /** Replicas dropped after a failed call: stage → peers. */
  readonly dropped: { stage: number; peer: string; reason: string }[] = [];

  /** The slowest stage call answered so far, in ms (queueing behind a stage's other micro-batches included). */
  slowestCallMs = 0;

  /**
   * The deadline of one stage call: the configured one, or SLOW_FACTOR times the slowest call
   * measured when that is longer (a stage that has answered in 200 s under load is not dead at 240 s),
   * never more than SLOW_FACTOR times the configured one: a stage peer that answers just inside
   * each deadline cannot ratchet the deadlines of every call up without bound.
   */
  private deadline(): AbortSignal {
    const base = this.o.callTimeoutMs ?? CALL_TIMEOUT_MS;
    // AbortSignal.timeout takes whole milliseconds only (a fraction throws a RangeError).
    return AbortSignal.timeout(
      Math.ceil(Math.min(SLOW_FACTOR * base, Math.max(base, SLOW_FACTOR * this.slowestCallMs))),
    );
  }

  /** Times one answered call into `slowestCallMs`. */
  private async timedCall<R>(p: Promise<R>): Promise<R> {
    const t0 = performance.now();
    const r = await p;
    this.slowestCallMs = Math.max(this.slowestCallMs, performance.now() - t0);
    return r;
  }

  /** A control call to one peer, no body either way (save, restore, expect, lend, info): its reply head. */
  private async control<Op extends StageOp>(peer: string, op: Op, args: ArgsOf<Op>) {
    return await this.timedCall(this.client.control(peer, op, args, { signal: this.deadline() }));
  }

  /** Peers currently serving each stage. */
  replicas(): string[][] {
    return this.live.map((r) => [...r]);
  }

  /** One call to stage `i`, sent to every live replica; the first good reply wins, failed replicas are dropped. */
  private async call<Op extends StageOp>(
    i: number,
    op: Op,
    args: ArgsOf<Op>,
    body: Uint8Array,
    maxBody: number,
  ): Promise<StageReply<Op> & { peer: string }> {
    const peers = [...this.live[i]];
    if (peers.length === 0) throw new StageCallError(`stage ${i} has no live replica`);
    const attempts = peers.map((peer) =>
      this.timedCall(this.client.call(peer, op, args, body, { maxBody, signal: this.deadline() }))
        .then((r) => ({ head: r.head, body: r.body, peer }))
        .catch((err: unknown) => {
          // A refusal (bad input) is the caller's bug, not a dead peer: report it, keep the replica.
          if (err instanceof StageCallError && err.refused) throw err;
          const k = this.live[i].indexOf(peer);
          if (k >= 0) {
            this.live[i].splice(k, 1);
            this.dropped.push({ stage: i, peer, reason: (err as Error).message });
            this.retries++;
          }
          throw err;
        }),
    );
    try {
      return await Promise.any(attempts);
    } catch (err) {
      const errs = (err as AggregateError).errors ?? [err];
      throw (
        errs.find((e) => e instanceof StageCallError && e.refused) ??
        new StageCallError(`stage ${i}: no replica answered (${(errs[0] as Error)?.message})`)
      );
    } finally {
      // The slower replicas' replies are awaited in the background (they keep those replicas in step).
      void Promise.allSettled(attempts);
    }
  }

  /** Forward + backward of one micro-batch; returns its loss (scaled by `scale` into the gradients). */
  private async microStep(
    b: Batch,
    B: number,
    T: number,
    scale: number,
    train: boolean,
    tag?: number,
  ): Promise<number> {
    // After a failed step, its other micro-batches stop at their next hop (they must not touch
    // the stages once these are reset for the redo).
    const epoch = this.epoch;
    const hop: Hop = (i, op, args, body, max) => {
      if (this.epoch !== epoch) throw new StageCallError('micro-batch of an abandoned step');
      return this.call(i, op, args, body, max);
    };
    return await this.pass(b, B, T, scale, train, this.micro++, tag, hop);
  }

  /**
   * One micro-batch's trip: forward through stages 0..S−2, forward + loss + backward on the
   * last, backward to stage 0, each call made by `hop` (to every replica, or to one). The last
   * and backward calls carry `tag` when given (the stage banks that gradient apart). Counts
   * every activation or activation-gradient payload the driver sends or receives.
   */
  private async pass(
    b: Batch,
    B: number,
    T: number,
    scale: number,
    train: boolean,
    id: number,
    tag: number | undefined,
    hop: Hop,
  ): Promise<number> {
    const tagged = tag === undefined ? {} : { tag };
    const N = B * T,
      act = exactBytes(this.o.codec, N, this.o.width ?? this.o.dim);
    let x: Uint8Array = int32Bytes(b.inputs);
    for (let i = 0; i < this.S - 1; i++) {
      if (i > 0) this.actSent += x.length;
      x = (await hop(i, 'fwd', { micro: id, B, T, train }, x, act)).body;
      this.actReceived += x.length;
    }
    const lastBody = new Uint8Array(x.length + 4 * N);
    lastBody.set(x);
    lastBody.set(int32Bytes(b.targets), x.length);
    if (this.S > 1) this.actSent += x.length;
    const r = await hop(this.S - 1, 'last', { micro: id, B, T, train, scale, ...tagged }, lastBody, act);
    const loss = r.head.loss;
    if (!train) return loss;
    let d = r.body;
    this.actReceived += d.length;
    for (let i = this.S - 2; i >= 0; i--) {
      this.actSent += d.length;
      d = (await hop(i, 'bwd', { micro: id, ...tagged }, d, act)).body;
      this.actReceived += d.length;
    }
    return loss;
  }

  /**
   * One optimizer step on `batch` split into `micro` micro-batches of equal size. The gradient is
   * the batch mean (each micro-batch scaled by 1/micro), clipped by the global norm.
   */
  async step(batch: Batch, B: number, T: number, micro: number, lr: number): Promise<StepResult> {
    try {
      return await this.stepOnce(batch, B, T, micro, lr);
    } catch (err) {
      this.epoch++;
      const lost = this.live.findIndex((r) => r.length === 0);
      if (lost >= 0 && this.o.recover) await this.recoverStage(lost);
      // Balanced routing: a replica lost while the step's gradients were being gathered took
      // its micro-batches' share with it; the others still serve every stage, so redo the step.
      else if (!(lost < 0 && this.o.routing === 'balance' && !(err instanceof StageCallError && err.refused)))
        throw err;
      // The other stages hold half-done micro-batches and partial gradients of this step: drop them, redo the step.
      await Promise.all(this.o.stages.map((_, i) => this.call(i, 'reset', {}, EMPTY, 0)));
      return await this.stepOnce(batch, B, T, micro, lr);
    }
  }

  /**
   * Checkpoints every stage as two XOR shares (stage-server.ts) and has the peers of the next two
   * stages pin one share each, so a stage whose last peer dies can be restored by a fresh peer,
   * while no peer holds weights beyond its own stage. Needs at least 3 stages.
   */
  async checkpoint(): Promise<void> {
    const S = this.S;
    if (S < 3)
      throw new InvalidInputError('checkpoint shares need at least 3 stages (two holders other than the stage itself)');
    for (let i = 0; i < S; i++) {
      // A peer that fails here is dropped like in a step; the stage keeps its previous checkpoint
      // (and the next step recovers it if that was its last peer).
      const peer = this.live[i][0];
      if (!peer) continue;
      try {
        const seal = randomBytes(32).toString('hex');
        const h = { ...(await this.control(peer, 'save', { seal })), seal };
        await Promise.all([
          this.call((i + 1) % S, 'hold', { stage: i, shares: [h.shares[0]] }, EMPTY, 0),
          this.call((i + 2) % S, 'hold', { stage: i, shares: [h.shares[1]] }, EMPTY, 0),
        ]);
        // The holders have both shares now: the saver must not keep them side by side.
        await this.control(peer, 'forget', { shares: h.shares });
        this.checkpoints.set(i, h);
      } catch (err) {
        if (err instanceof StageCallError && err.refused) throw err;
        const k = this.live[i].indexOf(peer);
        if (
          k >= 0 &&
          !(err instanceof StageCallError && /stage \d+ has no live replica|no replica answered/.test(err.message))
        ) {
          this.live[i].splice(k, 1);
          this.dropped.push({ stage: i, peer, reason: (err as Error).message });
        }
      }
    }
  }

  /**
   * Adds `peer` (a fresh peer announcing stage i) as a replica of a live stage, between steps: a
   * serving replica saves its state as two shares, the new peer restores them (dialing the
   * saver's addresses, `addrsOf`) and from the next call on computes the same bits as the others.
   */
  async admit(i: number, peer: string): Promise<{ step: number; ms: number }> {
    if (!this.live[i]?.length) throw new StageCallError(`stage ${i} has no live replica to sync from`);
    if (this.live[i].includes(peer)) throw new InvalidInputError(`${peer} already serves stage ${i}`);
    const t0 = performance.now();
    const src = this.live[i][0];
    const seal = randomBytes(32).toString('hex');
    const saved = await this.control(src, 'save', { seal });
    const addrs = this.o.addrsOf?.(src) ?? [];
    const dial = addrs.length ? { dial: addrs.slice(0, 16) } : {};
    const r = await this.control(peer, 'restore', { shares: saved.shares, seal, ...dial }).finally(() =>
      // Nobody holds these shares but the saver: it drops them once the new peer has them (or failed).
      this.control(src, 'forget', { shares: saved.shares }).catch(() => undefined),
    );
    if (r.step !== saved.step)
      throw new StageCallError(`stage ${i}: ${peer} restored step ${r.step}, not ${saved.step}`);
    this.live[i].push(peer);
    return { step: r.step, ms: performance.now() - t0 };
  }

  /** Stops routing to `peer` for stage i (it moved away or left cleanly); never the last replica. */
  release(i: number, peer: string): boolean {
    const k = this.live[i]?.indexOf(peer) ?? -1;
    if (k < 0 || this.live[i].length < 2) return false;
    this.live[i].splice(k, 1);
    return true;
  }

  /** Why stage `i`'s last replica was dropped (for the error that ends a run). */
  private lastDrop(i: number): string {
    const d = this.dropped.filter((x) => x.stage === i).pop();
    return d ? ` (its call failed: ${d.reason.slice(0, 300)})` : '';
  }

  private async recoverStage(i: number): Promise<void> {
    const cp = this.checkpoints.get(i);
    // Only a middle stage has two neighbours to rebuild from; the ends always need a checkpoint.
    const middle = i > 0 && i < this.S - 1;
    if (this.o.rebuild && middle && (this.o.rebuild === 'prefer' || !cp)) return await this.rebuildStage(i);
    if (!cp) {
      throw new StageCallError(
        this.o.rebuild
          ? `stage ${i} lost its last peer and has no checkpoint; only a middle stage can be rebuilt from its neighbours`
          : `stage ${i} lost its last peer and has no checkpoint to restore from${this.lastDrop(i)}`,
      );
    }
    const t0 = performance.now();
    const peer = await this.o.recover!(i);
    const holders = [...this.live[(i + 1) % this.S], ...this.live[(i + 2) % this.S]];
    const dial = this.o.addrsOf ? holders.flatMap((p) => this.o.addrsOf!(p).slice(0, 2)).slice(0, 16) : [];
    await this.control(peer, 'restore', { shares: cp.shares, seal: cp.seal, ...(dial.length ? { dial } : {}) });
    this.live[i] = [peer];
    this.recoveries.push({ stage: i, peer, how: 'checkpoint', fromStep: cp.step, ms: performance.now() - t0 });
  }

  /**
   * CheckFree (rebuild.ts): a fresh peer for middle stage i gets a·θ_{i−1} + b·θ_{i+1}, layer for
   * layer, with a : b the neighbours' latest layer-gradient norms. The driver hands the two
   * neighbours one pad seed; each sends its masked part straight to the new peer, so the driver
   * sees no weights and the new peer sees only the mean.
   */
  private async rebuildStage(i: number): Promise<void> {
    const L = this.live[i - 1][0],
      R = this.live[i + 1][0];
    if (!L || !R) throw new StageCallError(`stage ${i} cannot be rebuilt: a neighbouring stage has no live peer`);
    const t0 = performance.now();
    const peer = await this.o.recover!(i);
    const mix = mixWeights(Math.sqrt(this.layerSq[i - 1] ?? 0), Math.sqrt(this.layerSq[i + 1] ?? 0));
    const id = randomBytes(8).toString('hex'),
      seed = randomBytes(32).toString('hex');
    await this.control(peer, 'expect', { id, from: [L, R] });
    const dial = this.o.addrsOf?.(peer).slice(0, 16) ?? [];
    const lent = await Promise.all(
      (
        [
          [L, 1, mix[0]],
          [R, -1, mix[1]],
        ] as const
      ).map(([p, sign, weight]) =>
        this.control(p, 'lend', { id, to: peer, seed, sign, weight, ...(dial.length ? { dial } : {}) }),
      ),
    );
    const info = await this.control(peer, 'info', {});
    if (!info.ready || info.index !== i)
      throw new StageCallError(`stage ${i}: the rebuilt peer ${peer} is not serving it`);
    this.live[i] = [peer];
    this.recoveries.push({
      stage: i,
      peer,
      how: 'neighbours',
      fromStep: Math.max(...lent.map((r) => r.step)),
      ms: performance.now() - t0,
      mix,
    });
  }

  private async stepOnce(batch: Batch, B: number, T: number, micro: number, lr: number): Promise<StepResult> {
    if (B % micro !== 0) throw new InvalidInputError(`batch ${B} does not split into ${micro} micro-batches`);
    const mb = B / micro,
      n = mb * T;
    const a0 = this.actBytes,
      s0 = this.syncBytes,
      r0 = this.retries;
    const parts = splitBatch(batch, micro, n);
    let losses: number[];
    if (this.o.routing === 'balance') {
      const done = await this.pooled(parts.map((p) => () => this.balancedMicro(p, mb, T, 1 / micro)));
      losses = done.map((d) => d.loss);
      await this.reduceReplicas(done.map((d) => d.tag));
    } else {
      losses = await this.pooled(parts.map((p) => () => this.microStep(p, mb, T, 1 / micro, true)));
    }
    const loss = losses.reduce((t, x) => t + x, 0) / micro;
    const gradNorm = await this.update(lr);
    return { loss, gradNorm, actBytes: this.actBytes - a0, syncBytes: this.syncBytes - s0, retries: this.retries - r0 };
  }

  /**
   * Balanced routing: a replica's capacity in tokens/s is what the driver measured it serving
   * (fwd/last/bwd calls, timed here), capped by what it announces; before it was measured, its
   * announcement capped by the best measured replica of the stage. So an inflated announcement
   * gains nothing: at most one call's worth of routing before it is measured.
   */
  capacityOf(i: number, peer: string): number {
    const announced = this.o.throughputOf?.(peer) ?? Infinity;
    const m = this.measured.get(peer);
    if (m) return Math.min(announced, m.tokens / Math.max(1e-6, m.ms / 1000));
    let best = 0;
    for (const p of this.live[i]) {
      const q = this.measured.get(p);
      if (q) best = Math.max(best, q.tokens / Math.max(1e-6, q.ms / 1000));
    }
    const cap = best > 0 ? Math.min(announced, best) : announced;
    return Number.isFinite(cap) ? cap : 1;
  }

  /** Tokens served and milliseconds taken per peer (fwd/last/bwd), decayed so that they follow the peer. */
  private readonly measured = new Map<string, { tokens: number; ms: number }>();

  private timed(peer: string, tokens: number, ms: number): void {
    const m = this.measured.get(peer) ?? { tokens: 0, ms: 0 };
    // An exponential window of about 32 calls.
    m.tokens = 0.97 * m.tokens + tokens;
    m.ms = 0.97 * m.ms + ms;
    this.measured.set(peer, m);
  }

  /** Balanced routing: the live replica of stage i with the most capacity per call in flight (ties: the first). */
  private pick(i: number): string {
    let best = '',
      score = -1;
    for (const p of this.live[i]) {
      const sc = this.capacityOf(i, p) / (1 + (this.outstanding.get(p) ?? 0));
      if (sc > score) {
        best = p;
        score = sc;
      }
    }
    if (!best) throw new StageCallError(`stage ${i} has no live replica`);
    return best;
  }

  /** One call to one replica; a replica that fails (not a refusal) is dropped. */
  private async callOne<Op extends StageOp>(
    i: number,
    peer: string,
    op: Op,
    args: ArgsOf<Op>,
    body: Uint8Array,
    maxBody: number,
  ): Promise<StageReply<Op>> {
    this.outstanding.set(peer, (this.outstanding.get(peer) ?? 0) + 1);
    const t0 = performance.now();
    try {
      const r = await this.timedCall(this.client.call(peer, op, args, body, { maxBody, signal: this.deadline() }));
      const a = args as { B?: number; T?: number };
      if ((op === 'fwd' || op === 'last') && a.B && a.T) this.timed(peer, a.B * a.T, performance.now() - t0);
      return r;
    } catch (err) {
      if (!(err instanceof StageCallError && err.refused)) {
        const k = this.live[i].indexOf(peer);
        if (k >= 0) {
          this.live[i].splice(k, 1);
          this.dropped.push({ stage: i, peer, reason: (err as Error).message });
          this.retries++;
        }
      }
      throw err;
    } finally {
      this.outstanding.set(peer, (this.outstanding.get(peer) ?? 1) - 1);
    }
  }

  /**
   * Balanced routing: one micro-batch through one replica per stage (chosen hop by hop; its
   * backward returns through the same ones). Each stage banks the gradient under the attempt's
   * tag; if a hop fails, the micro-batch is run again from stage 0 on the remaining replicas
   * (up to 3 attempts) and the failed attempt's banks are discarded at the step's fold.
   */
  private async balancedMicro(b: Batch, B: number, T: number, scale: number): Promise<{ loss: number; tag: number }> {
    for (let attempt = 0; ; attempt++) {
      const id = this.micro++;
      // The replica of each stage is picked at its forward; the backward returns through it.
      const route: string[] = [];
      const hop: Hop = (i, op, args, body, max) => this.callOne(i, (route[i] ??= this.pick(i)), op, args, body, max);
      try {
        return { loss: await this.pass(b, B, T, scale, true, id, id, hop), tag: id };
      } catch (err) {
        if ((err instanceof StageCallError && err.refused) || attempt >= 2 || this.live.some((row) => row.length === 0))
          throw err;
        this.reroutes++;
      }
    }
  }

  /**
   * Balanced routing, before the update: every replica folds the banks of the micro-batches that
   * completed (and drops the rest); then each stage's replicas' gradients are summed in replica
   * order and set on all of them, so the update leaves them identical.
   */
  private async reduceReplicas(keep: number[]): Promise<void> {
    const all = <Op extends StageOp>(i: number, op: Op, args: ArgsOf<Op>, body: Uint8Array, max: number) =>
      Promise.all([...this.live[i]].map((p) => this.callOne(i, p, op, args, body, max)));
    await Promise.all(this.live.map((_, i) => all(i, 'fold', { keep }, EMPTY, 0)));
    await Promise.all(
      this.live.map(async (row, i) => {
        if (row.length < 2) return;
        const got = await all(i, 'grads', { set: false }, EMPTY, 1 << 30);
        const n = got[0].body.length / 4,
          sum = new Float32Array(n);
        for (const g of got) {
          const v = bytesToF32(g.body, n, `stage ${i} gradients`);
          for (let k = 0; k < n; k++) sum[k] += v[k];
        }
        const bytes = f32ToBytes(sum);
        await all(i, 'grads', { set: true }, bytes, 0);
        this.syncBytes += 2 * got.length * bytes.length;
      }),
    );
  }

  /**
   * The optimizer step of every stage, on the gradients accumulated (or banked under `tag`): the
   * tied-embedding gradient summed between the first and last stage, the global norm from every
   * stage's part, then each stage's AdamW (with look-ahead weights when `lookahead` > 0).
   */
  private async update(lr: number, tag?: number, lookahead?: number): Promise<number> {
    const t0 = performance.now();
    try {
      return await this.updateOnce(lr, tag, lookahead);
    } finally {
      this.updateMs += performance.now() - t0;
      this.updates++;
    }
  }

  private async updateOnce(lr: number, tag?: number, lookahead?: number): Promise<number> {
    const tagged = tag === undefined ? {} : { tag };
    // Tied embedding: first and last stage hold copies; each needs the sum of both gradients.
    let tiedSq = 0;
    const tied = this.S > 1 && this.o.tied !== false;
    if (tied) {
      const V = this.o.vocabSize,
        C = this.o.dim,
        bytes = 4 * V * C;
      const get = { set: false, ...tagged };
      const [g0, gL] = await Promise.all([0, this.S - 1].map((i) => this.call(i, 'tied', get, EMPTY, bytes)));
      const a = bytesToF32(g0.body, V * C, 'tied gradient'),
        b = bytesToF32(gL.body, V * C, 'tied gradient');
      for (let i = 0; i < a.length; i++) a[i] += b[i];
      const sum = f32ToBytes(a);
      const set = { set: true, ...tagged };
      await Promise.all([this.call(0, 'tied', set, sum, 0), this.call(this.S - 1, 'tied', set, sum, 0)]);
      this.syncBytes += 4 * bytes;
      for (let i = 0; i < a.length; i++) tiedSq += a[i] * a[i];
    }
    const norms = await Promise.all(this.o.stages.map((_, i) => this.call(i, 'norm', { ...tagged }, EMPTY, 0)));
    if (tag === undefined) this.layerSq = norms.map((r) => r.head.layerSquares);
    const total = norms.reduce((t, r) => t + r.head.sumSquares, 0) - (tied ? tiedSq : 0);
    const gradNorm = Math.sqrt(Math.max(0, total));
    const step = { lr, globalNorm: gradNorm, ...tagged, ...(lookahead ? { lookahead } : {}) };
    await Promise.all(this.o.stages.map((_, i) => this.call(i, 'step', step, EMPTY, 0)));
    return gradNorm;
  }

  /**
   * Asynchronous pipelining: `batches` optimizer steps with no barrier between them. Micro-batches
   * stream through the stages continuously (at most `window` in flight, default 2·S), so a stage
   * never waits for a step to drain: batch b+1's micro-batches run while batch b's last ones are
   * still coming back. Each stage banks gradients per batch; batch b's update (tied sum, global
   * norm, AdamW, in batch order) is applied as soon as its last micro-batch is back, while later
   * micro-batches are in flight — so their gradients are computed on weights one update old.
   * `lookahead` τ corrects that staleness: stages compute with θ + τ·(θ − θ_prev) (stage-server).
   * A failed call fails the run (use the synchronous `step` for failover and recovery).
   */
  async trainAsync(
    next: (b: number) => Batch,
    batches: number,
    B: number,
    T: number,
    micro: number,
    lr: number,
    o: { window?: number; lookahead?: number; onStep?: (b: number, loss: number) => void } = {},
  ): Promise<number[]> {
    if (B % micro !== 0) throw new InvalidInputError(`batch ${B} does not split into ${micro} micro-batches`);
    const window = Math.max(1, o.window ?? 2 * this.S);
    const mb = B / micro,
      n = mb * T;
    const losses = new Array<number>(batches).fill(NaN);
    let inflight = 0;
    const waiters: (() => void)[] = [];
    const acquire = async () => {
      while (inflight >= window) await new Promise<void>((r) => waiters.push(r));
      inflight++;
    };
    const release = () => {
      inflight--;
      waiters.shift()?.();
    };
    let updates: Promise<unknown> = Promise.resolve();
    const applied: Promise<unknown>[] = [];
    let failure: unknown = null;
    for (let b = 0; b < batches && failure === null; b++) {
      // Staleness stays bounded: batch b starts only once batch b−2's update is applied, so a
      // gradient is at most one update old when it is applied (and banks stay few).
      if (b >= 2) await applied[b - 2].catch(() => undefined);
      const parts: Promise<number>[] = [];
      for (const p of splitBatch(next(b), micro, n)) {
        await acquire();
        if (failure !== null) {
          release();
          break;
        }
        parts.push(this.microStep(p, mb, T, 1 / micro, true, b).finally(release));
      }
      const done = Promise.all(parts);
      done.catch((e: unknown) => {
        failure ??= e;
      });
      // Updates apply in batch order, each once its batch is back; micro-batches keep flowing meanwhile.
      updates = updates.then(async () => {
        const ls = await done;
        losses[b] = ls.reduce((t, x) => t + x, 0) / micro;
        await this.update(lr, b, o.lookahead);
        o.onStep?.(b, losses[b]);
      });
      updates.catch((e: unknown) => {
        failure ??= e;
      });
      applied.push(updates);
    }
    await updates;
    if (failure !== null) throw failure;
    return losses;
  }

  /**
   * Inference through the stage holders: continues `prompt` by `n` tokens (temperature
   * sampling, top-k), one forward through every stage per token. Returns the tokens and, per
   * stage, the tokens it processed (usage to pay that stage's owners).
   */
  async generate(
    prompt: number[],
    n: number,
    o: { ctx: number; temperature?: number; topK?: number; seed?: number },
  ): Promise<{ tokens: number[]; usage: number[] }> {
    if (prompt.length === 0) throw new InvalidInputError('generate needs a prompt of at least one token');
    const out = [...prompt],
      usage = new Array<number>(this.S).fill(0);
    let state = (o.seed ?? 1) >>> 0 || 1;
    const rand = () => {
      state ^= state << 13;
      state >>>= 0;
      state ^= state >>> 17;
      state ^= state << 5;
      state >>>= 0;
      return state / 2 ** 32;
    };
    const V = this.o.vocabSize,
      C = this.o.dim;
    for (let t = 0; t < n; t++) {
      const ids = Int32Array.from(out.slice(-o.ctx));
      const T = ids.length,
        id = this.micro++;
      let x: Uint8Array = int32Bytes(ids);
      const act = exactBytes(this.o.codec, T, this.o.width ?? C);
      for (let i = 0; i < this.S - 1; i++) {
        x = (await this.call(i, 'fwd', { micro: id, B: 1, T, train: false }, x, act)).body;
        usage[i] += T;
      }
      const r = await this.call(this.S - 1, 'logits', { micro: id, B: 1, T }, x, 4 * V);
      usage[this.S - 1] += T;
      const logits = bytesToF32(r.body, V, 'logits');
      const temp = Math.max(1e-3, o.temperature ?? 0.8),
        k = Math.min(V, o.topK ?? 40);
      const top = [...logits.keys()].sort((a, b) => logits[b] - logits[a]).slice(0, k);
      const mx = logits[top[0]];
      const w = top.map((i) => Math.exp((logits[i] - mx) / temp));
      let u = rand() * w.reduce((a, b) => a + b, 0),
        pick = top[top.length - 1];
      for (let j = 0; j < top.length; j++) {
        u -= w[j];
        if (u <= 0) {
          pick = top[j];
          break;
        }
      }
      out.push(pick);
    }
    return { tokens: out.slice(prompt.length), usage };
  }

  /** Mean loss over `batches` (forward only). */
  async evaluate(batches: Batch[], B: number, T: number): Promise<number> {
    const ls = await this.pooled(batches.map((b) => () => this.microStep(b, B, T, 1, false)));
    return ls.reduce((t, x) => t + x, 0) / Math.max(1, ls.length);
  }

  private async pooled<T>(jobs: (() => Promise<T>)[]): Promise<T[]> {
    const out: T[] = new Array(jobs.length);
    const width = Math.max(1, Math.min(jobs.length, this.o.inflight ?? jobs.length));
    let next = 0;
    await Promise.all(
      Array.from({ length: width }, async () => {
        while (next < jobs.length) {
          const i = next++;
          out[i] = await jobs[i]();
        }
      }),
    );
    return out;
  }
}
