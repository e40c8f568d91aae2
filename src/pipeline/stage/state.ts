/**
 * Everything a stage peer holds, in one object: its Stage and AdamW moments, the micro-batches
 * held between forward and backward, gradient banks, look-ahead weights, DiLoCo's snapshot and
 * outer momentum, checkpoint shares, a rebuild in progress and the call statistics. The handler
 * modules (compute, shares, rebuild, diloco, control) read and change it; nothing else does.
 */
import {
  createStage,
  type PipelineStage as Stage,
  type StageModelConfig,
  type StageSpec,
} from '../../model/pipeline-stage.js';
import type { Kernels } from '../../kernels/api.js';
import { AdamW, type AdamWSettings } from '../../train/adamw.js';
import { InvalidInputError } from '../../util/errors.js';
import type { ErrorFeedback } from '../../swarm/compress/index.js';
import type { OuterNesterov } from '../../swarm/outer.js';
import type { Store } from '../../store/index.js';
import { getActCodec, subspaceBasis, type ActCodec, type ActCodecSpec } from '../act-codec.js';
import { MAX_TAGS, type ReplyHeadOf, type RequestOf, type StageOp, type StageStats } from '../stage-protocol.js';
import type { StageClient } from '../stage-client.js';
import type { WebGpuDevice } from '../../kernels/webgpu/device.js';
import { StageDevice } from './device.js';

export interface StageServiceOptions {
  config: StageModelConfig;
  spec: StageSpec;
  kernels: Kernels;
  adamw: AdamWSettings;
  codec: ActCodecSpec;
  /** Genesis weights for this stage; null: a fresh peer that waits for `restore`. */
  init: ((stage: Stage) => void) | null;
  /** This peer's IPFS store (checkpoint shares); needed for save / hold / restore. */
  store?: Store;
  /** Learned bottleneck width at stage boundaries (Stage); absent: full activations cross. */
  bottleneck?: number;
  fetchTimeoutMs?: number;
  /**
   * The run's admitted driver(s): the only peers whose calls may read or change weights,
   * gradients or optimizer state, or make this peer hold memory or disk (service.ts). A run's
   * stage peer takes them from the manifest (hashed into the run id). null: anyone may call
   * (in-memory tests of the service alone).
   */
  drivers: readonly string[] | null;
  /** Serve inference (fwd {train: false}, logits) to peers other than the drivers too, bounded per caller. */
  openInference?: boolean;
  /** Bounds on micro-batches held between forward and backward (defaults: HELD_LIMITS). */
  held?: Partial<HeldLimits>;
  /**
   * Compute on this WebGPU device (`tessera stage --device webgpu`, stage/device.ts): the stage's
   * flat buffers live there and the training calls run there; absent: the CPU kernels.
   */
  device?: WebGpuDevice;
}

/** What forwards kept for a backward may hold at once, and for how long. */
export interface HeldLimits {
  /** Micro-batches held. */
  count: number;
  /** Their tokens (rows) together. */
  tokens: number;
  /** A held micro-batch whose backward has not come by then is dropped. */
  ttlMs: number;
}

/** The defaults: a whole largest batch (4096 sequences of the run's context) held for 10 minutes. */
export const heldLimits = (ctx: number, o: Partial<HeldLimits> = {}): HeldLimits => ({
  count: 4096,
  tokens: 4096 * ctx,
  ttlMs: 10 * 60_000,
  ...o,
});

/** What the service reaches beyond itself: its own id, dialing, and other stage peers (a lend). */
export interface StagePeerLinks {
  peerId: string;
  /** Dials an address (a share holder, a rebuild's new peer); failures are ignored by the caller. */
  dial(addr: string, o: { signal: AbortSignal }): Promise<unknown>;
  client: StageClient;
}

/** A rebuild in progress (rebuild.ts): who may send parts, and the parts in so far. */
export interface PendingRebuild {
  id: string;
  from: string[];
  parts: Map<string, Uint8Array>;
  step: number;
}

/** What a handler returns: the reply head (checked against the op's reply schema by the types) and a body. */
export interface HandlerReply<Op extends StageOp> {
  head: ReplyHeadOf<Op>;
  body?: Uint8Array;
}
/** One operation's handler; `from` is the caller's peer id. */
export type Handler<Op extends StageOp> = (
  s: StageServiceState,
  req: RequestOf<Op>,
  body: Uint8Array,
  from: string,
) => HandlerReply<Op> | Promise<HandlerReply<Op>>;
/** The handlers of a group of operations (one module per concern). */
export type Handlers<Ops extends StageOp> = { [K in Ops]: Handler<K> };

export class StageServiceState {
  stage: Stage;
  /** False for a fresh peer until it has restored (or been rebuilt into) its stage. */
  ready: boolean;
  opt: AdamW;
  /**
   * Replicas that train apart (diloco.ts): the weights of the last outer step, the outer momentum
   * and Δ's error feedback. Set whenever the weights are (re)loaded.
   */
  snap: Float32Array;
  outer: OuterNesterov | null = null;
  ef: ErrorFeedback | null = null;
  /** Asynchronous pipelining: gradients banked per batch (tag). */
  readonly accs = new Map<number, Float32Array>();
  /** The true weights when the stage computes with look-ahead weights, and the weights before the last step. */
  master: Float32Array | null = null;
  prev: Float32Array | null = null;
  /** Checkpoint shares of other stages pinned here (stage → CIDs), and this stage's last save. */
  readonly held = new Map<number, string[]>();
  lastSaved: string[] = [];
  /** Micro-batches held between forward and backward: micro → rows (tokens), and since when. */
  readonly rows = new Map<number, number>();
  readonly heldAt = new Map<number, number>();
  heldTokens = 0;
  readonly limits: HeldLimits;
  pending: PendingRebuild | null = null;
  readonly stats: StageStats = {
    calls: 0,
    actBytesIn: 0,
    actBytesOut: 0,
    steps: 0,
    tokens: 0,
    ms: { fwd: 0, bwd: 0, last: 0, step: 0 },
    count: { fwd: 0, bwd: 0, last: 0, step: 0 },
  };
  /** Values per token at a boundary (dim, or the bottleneck width), and their codec. */
  readonly W: number;
  readonly codec: ActCodec;
  /** The stage's compute on a GPU (o.device), or null: the CPU kernels. */
  readonly device: StageDevice | null;

  constructor(
    readonly o: StageServiceOptions,
    readonly links: StagePeerLinks,
  ) {
    this.stage = createStage(o.config, this.withB(o.spec), o.kernels);
    if (o.init) {
      o.init(this.stage);
      if (o.bottleneck !== undefined) this.stage.initBottleneck(subspaceBasis(o.config.dim, o.bottleneck));
    }
    this.ready = o.init !== null;
    this.opt = new AdamW(null, o.adamw, o.kernels, this.stage.specs);
    this.snap = this.stage.params.slice();
    this.limits = heldLimits(o.config.ctx, o.held);
    this.W = o.bottleneck ?? o.config.dim;
    this.codec = getActCodec(o.codec, this.W);
    this.device = o.device ? new StageDevice(o.device, this) : null;
  }

  /** A learned bottleneck at the boundaries (the run's `bottleneck`): part of every stage's spec. */
  withB(sp: StageSpec): StageSpec {
    return this.o.bottleneck !== undefined ? { ...sp, bottleneck: this.o.bottleneck } : sp;
  }

  /** The weights were (re)loaded: DiLoCo and look-ahead state start over from them. */
  reloaded(): void {
    this.snap = this.stage.params.slice();
    this.outer = null;
    this.ef = null;
    this.master = null;
    this.prev = null;
    this.accs.clear();
  }

  /** Fresh moments for the stage held (a move, a rebuild). */
  freshOptimizer(): void {
    this.opt = new AdamW(null, this.o.adamw, this.o.kernels, this.stage.specs);
  }

  /** Drops the stage held (weights, moments, held micro-batches) and becomes a fresh peer of `spec`. */
  moveTo(spec: StageSpec): void {
    this.stage = createStage(this.o.config, this.withB(spec), this.o.kernels);
    this.freshOptimizer();
    this.reloaded();
    this.ready = false;
    this.pending = null;
    this.clearHeld();
    this.device?.rebind();
  }

  /** After a tagged backward: move what it added to the gradients into its batch's bank (kept on the host). */
  async bank(tag: number | undefined): Promise<void> {
    if (tag === undefined) return;
    let acc = this.accs.get(tag);
    if (!acc) {
      if (this.accs.size >= MAX_TAGS) throw new InvalidInputError(`more than ${MAX_TAGS} batches in flight`);
      acc = new Float32Array(this.stage.numParams);
      this.accs.set(tag, acc);
    }
    await this.device?.onHost('grads');
    const g = this.stage.grads;
    for (let i = 0; i < g.length; i++) acc[i] += g[i];
    if (this.device) this.device.zeroGrads();
    else this.stage.zeroGrad();
  }

  /** Drops a held micro-batch's activations (on the device too). */
  releaseSlot(micro: number): void {
    this.stage.release(micro);
    this.device?.release(micro);
  }

  /** Drops every held micro-batch's activations (on the device too). */
  resetSlots(): void {
    this.stage.resetSlots();
    this.device?.resetSlots();
  }

  /** The step's gradients, or those banked under `tag`. */
  gradsOf(tag: number | undefined): Float32Array {
    if (tag === undefined) return this.stage.grads;
    const acc = this.accs.get(tag);
    if (!acc) throw new InvalidInputError(`no gradients banked for batch ${tag}`);
    return acc;
  }

  /** Where the tied embedding sits in the stage's parameters (wte/embed on the first stage, head on the last). */
  tiedAt(): { offset: number; size: number } | undefined {
    const name = this.stage.tiedTensor;
    return name === null ? undefined : this.stage.specs.find((x) => x.name === name);
  }

  /** The tied embedding's part of a parameter-sized vector, or null on a middle stage or an untied model. */
  tiedOf(g: Float32Array): Float32Array | null {
    const t = this.tiedAt();
    return t ? g.subarray(t.offset, t.offset + t.size) : null;
  }

  needStore(): Store {
    if (!this.o.store) throw new InvalidInputError('this stage peer has no store for checkpoints');
    return this.o.store;
  }

  /** The deadline of one fetch or pin of a share. */
  fetchSignal(): AbortSignal {
    return AbortSignal.timeout(this.o.fetchTimeoutMs ?? 30_000);
  }

  /** Encodes activations (counted as sent). */
  enc(x: Float32Array, rows: number): Uint8Array {
    const b = this.codec.encode(x, rows, this.W);
    this.stats.actBytesOut += b.length;
    return b;
  }

  /** Decodes activations (counted as received). */
  dec(b: Uint8Array, rows: number): Float32Array {
    this.stats.actBytesIn += b.length;
    return this.codec.decode(b, rows, this.W);
  }

  /** Weights loaded from elsewhere: no half-done micro-batch or gradient of before survives. */
  clearWork(): void {
    this.resetSlots();
    if (this.device) this.device.zeroGrads();
    else this.stage.zeroGrad();
    this.clearHeld();
  }

  /** Forgets every micro-batch held for a backward (their slots are freed by the caller). */
  clearHeld(): void {
    this.rows.clear();
    this.heldAt.clear();
    this.heldTokens = 0;
  }

  /**
   * Before a forward kept for a backward: drops held micro-batches older than the limit, then
   * refuses if holding `n` more tokens would pass the count or token bound.
   */
  admitHeld(micro: number, n: number, now = Date.now()): void {
    for (const [m, at] of this.heldAt) {
      if (now - at <= this.limits.ttlMs) break; // insertion order: oldest first
      this.takeHeld(m);
      this.releaseSlot(m);
    }
    this.takeHeld(micro); // a forward of the same micro-batch again replaces it
    if (this.rows.size + 1 > this.limits.count || this.heldTokens + n > this.limits.tokens) {
      throw new InvalidInputError(
        `too much held for backward: ${this.rows.size} micro-batches, ${this.heldTokens} tokens` +
          ` (limits ${this.limits.count}, ${this.limits.tokens})`,
      );
    }
  }

  /** Records a forward kept for a backward. */
  hold(micro: number, n: number, now = Date.now()): void {
    this.rows.set(micro, n);
    this.heldAt.set(micro, now);
    this.heldTokens += n;
  }

  /** Takes a held micro-batch's rows (undefined: none held). */
  takeHeld(micro: number): number | undefined {
    const n = this.rows.get(micro);
    if (n === undefined) return undefined;
    this.rows.delete(micro);
    this.heldAt.delete(micro);
    this.heldTokens -= n;
    return n;
  }
}
