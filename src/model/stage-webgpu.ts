/**
 * One pipeline stage's compute on a WebGpuDevice (`tessera stage --device webgpu`): stage.ts's
 * forward, loss, backward and the AdamW step, call for call, with the stage's parameters,
 * gradients and AdamW moments as four flat device buffers in the layout of the host Stage
 * (stageSpecs: the stage's own tensors only) and the activations of each held micro-batch on the
 * device. What crosses to the host: the tokens or the previous stage's activations in, this stage's
 * output activations (or its d(input)) out, per-token losses, and scalars (sums of squares);
 * the service (pipeline/stage/device.ts) moves whole buffers only when a call needs them on the host.
 *
 * The host Stage stays the description (spec, tensor table, names) and the host copy of the
 * buffers; this class never changes it. Blocks run block-webgpu.ts, the code the whole GPT on the
 * GPU runs, so S stages compute what one WebGpuGPT computes. Activation tensors of released
 * micro-batches are pooled per (B, T) and reused (reused in queue order, so never while work
 * that reads them is pending), and freed by destroy().
 */
import type { GpuTensor, WebGpuDevice } from '../kernels/webgpu/device.js';
import { InvalidInputError } from '../util/errors.js';
import type { AdamWSettings } from '../train/adamw.js';
import {
  allocBlockActs,
  allocBlockGrads,
  blockBackwardGpu,
  blockForwardGpu,
  gpuLayer,
  type Attention,
  type GpuBlockActs,
  type GpuBlockGrads,
  type GpuLayer,
} from './block-webgpu.js';
import type { Stage } from './stage.js';

interface Slot {
  B: number;
  T: number;
  input: GpuTensor;
  tokens: GpuTensor | null;
  tokensHost: Int32Array | null;
  coef: GpuTensor | null;
  out: GpuTensor | null;
  layers: GpuBlockActs[];
  lnf: GpuTensor | null;
  lnfMean: GpuTensor | null;
  lnfRstd: GpuTensor | null;
  logits: GpuTensor | null;
  losses: GpuTensor | null;
  targets: GpuTensor | null;
}

interface Work {
  g: GpuBlockGrads;
  scratch: GpuTensor;
  /** d(output) received [N, W], and d(coef) sent [N, W], with a bottleneck. */
  dOut: GpuTensor | null;
  dcoef: GpuTensor | null;
}

export type BufferKind = 'params' | 'grads' | 'm' | 'v';

export class WebGpuStage {
  readonly params: GpuTensor;
  readonly grads: GpuTensor;
  readonly m: GpuTensor;
  readonly v: GpuTensor;
  private readonly p: Record<string, GpuTensor>;
  private readonly g: Record<string, GpuTensor>;
  private readonly pl: GpuLayer[];
  private readonly gl: GpuLayer[];
  private readonly ranges: { start: number; end: number; decay: boolean }[] = [];
  private readonly slots = new Map<number, Slot>();
  private readonly pool = new Map<string, Slot[]>();
  private readonly work = new Map<string, Work>();

  constructor(
    readonly dev: WebGpuDevice,
    /** The host stage this computes for: its spec and tensor table (never changed here). */
    readonly stage: Stage,
    readonly attention: Attention = 'flash',
  ) {
    const n = stage.numParams;
    [this.params, this.grads, this.m, this.v] = [0, 1, 2, 3].map(() => dev.alloc(n));
    const views = (buf: GpuTensor) =>
      Object.fromEntries(stage.specs.map((s) => [s.name, dev.view(buf, s.offset, s.size)])) as Record<
        string,
        GpuTensor
      >;
    this.p = views(this.params);
    this.g = views(this.grads);
    const layers = Array.from({ length: stage.spec.l1 - stage.spec.l0 }, (_, i) => stage.spec.l0 + i);
    this.pl = layers.map((l) => gpuLayer(l, (name) => this.p[name]));
    this.gl = layers.map((l) => gpuLayer(l, (name) => this.g[name]));
    for (const s of stage.specs) {
      const last = this.ranges[this.ranges.length - 1];
      if (last && last.decay === s.decay && last.end === s.offset) last.end = s.offset + s.size;
      else this.ranges.push({ start: s.offset, end: s.offset + s.size, decay: s.decay });
    }
  }

  private buffer(kind: BufferKind): GpuTensor {
    return kind === 'params' ? this.params : kind === 'grads' ? this.grads : kind === 'm' ? this.m : this.v;
  }

  /** Host data into one of the four buffers (or a range of it). */
  write(kind: BufferKind, data: Float32Array, offset = 0): void {
    this.dev.write(this.dev.view(this.buffer(kind), offset, data.length), data);
  }

  /** One of the four buffers (or a range of it) back on the host, after all work so far. */
  read(kind: BufferKind, offset = 0, size?: number): Promise<Float32Array> {
    const b = this.buffer(kind);
    return this.dev.read(this.dev.view(b, offset, size ?? b.length - offset));
  }

  zeroGrad(): void {
    this.dev.zero(this.grads);
  }

  /** Σ x² over ranges of the gradients (default all), on the device (float32). */
  async gradSquares(ranges?: readonly { offset: number; size: number }[]): Promise<number> {
    const d = this.dev;
    if (!ranges) return d.sumSquares(this.grads);
    let t = 0;
    for (const r of ranges) t += await d.sumSquares(d.view(this.grads, r.offset, r.size));
    return t;
  }

  private get C(): number {
    return this.stage.config.dim;
  }

  /** Values per token at the boundary: C, or the bottleneck's k. */
  private get W(): number {
    return this.stage.width;
  }

  private takeSlot(B: number, T: number): Slot {
    const reuse = this.pool.get(`${B}x${T}`)?.pop();
    if (reuse) return reuse;
    const { dim: C, heads: NH, vocabSize: V } = this.stage.config;
    const d = this.dev,
      N = B * T,
      st = this.stage,
      k = st.spec.bottleneck;
    return {
      B,
      T,
      input: d.alloc(N * C),
      tokens: st.first ? d.alloc(N, 'i32') : null,
      tokensHost: null,
      coef: k !== undefined && !st.first ? d.alloc(N * k) : null,
      out: k !== undefined && !st.last ? d.alloc(N * k) : null,
      layers: this.pl.map(() => allocBlockActs(d, B, T, C, NH, this.attention)),
      lnf: st.last ? d.alloc(N * C) : null,
      lnfMean: st.last ? d.alloc(N) : null,
      lnfRstd: st.last ? d.alloc(N) : null,
      logits: st.last ? d.alloc(N * V) : null,
      losses: st.last ? d.alloc(N) : null,
      targets: st.last ? d.alloc(N, 'i32') : null,
    };
  }

  private workFor(B: number, T: number): Work {
    const key = `${B}x${T}`;
    let w = this.work.get(key);
    if (!w) {
      const { dim: C, heads: NH } = this.stage.config;
      const d = this.dev,
        N = B * T,
        k = this.stage.spec.bottleneck;
      w = {
        g: allocBlockGrads(d, B, T, C, NH, this.attention),
        scratch: d.alloc(N * C),
        dOut: k !== undefined && !this.stage.last ? d.alloc(N * k) : null,
        dcoef: k !== undefined && !this.stage.first ? d.alloc(N * k) : null,
      };
      this.work.set(key, w);
    }
    return w;
  }

  private slot(slot: number): Slot {
    const a = this.slots.get(slot);
    if (!a) throw new InvalidInputError(`no forward pass held for micro-batch ${slot}`);
    return a;
  }

  /**
   * Forward of micro-batch `slot` (stage.ts forward): the tokens on the first stage, else the
   * previous stage's output [B·T·W]. Returns this stage's output on the host, or null on the last
   * stage (its logits stay on the device for loss() and lastLogits()).
   */
  async forward(slot: number, input: Int32Array | Float32Array, B: number, T: number): Promise<Float32Array | null> {
    const { vocabSize: V, dim: C, heads: NH, ctx } = this.stage.config;
    if (!Number.isInteger(B) || !Number.isInteger(T) || B < 1 || T < 1 || T > ctx)
      throw new InvalidInputError(`bad batch shape B=${B} T=${T}`);
    const d = this.dev,
      st = this.stage,
      N = B * T,
      W = this.W;
    if (st.first) {
      if (!(input instanceof Int32Array) || input.length !== N)
        throw new InvalidInputError(`stage 0 takes ${N} token ids`);
      for (let i = 0; i < N; i++)
        if (input[i] < 0 || input[i] >= V) throw new InvalidInputError(`token id ${input[i]} outside the vocabulary`);
    } else if (!(input instanceof Float32Array) || input.length !== N * W)
      throw new InvalidInputError(`stage ${st.spec.index} takes ${N * W} activations`);
    this.release(slot); // a forward of the same micro-batch again replaces it
    const a = this.takeSlot(B, T);
    if (st.first) {
      a.tokensHost = (input as Int32Array).slice();
      d.write(a.tokens!, input as Int32Array);
      d.embeddingForward(a.input, a.tokens!, this.p.wte, this.p.wpe, B, T, C);
    } else if (a.coef) {
      d.write(a.coef, input as Float32Array);
      d.matmulForward(a.input, a.coef, this.p['bneck.up'], null, N, W, C);
    } else d.write(a.input, input as Float32Array);
    this.slots.set(slot, a);
    const w = this.workFor(B, T);
    let res = a.input;
    for (let i = 0; i < a.layers.length; i++)
      res = blockForwardGpu(d, this.pl[i], a.layers[i], res, w.scratch, B, T, C, NH, this.attention);
    if (!st.last) {
      if (!a.out) return d.read(res);
      d.matmulForward(a.out, res, this.p['bneck.down'], null, N, C, W);
      return d.read(a.out);
    }
    d.layernormForward(a.lnf!, a.lnfMean!, a.lnfRstd!, res, this.p['lnf.w'], this.p['lnf.b'], N, C);
    d.matmulForward(a.logits!, a.lnf!, st.first ? this.p.wte : this.p.head, null, N, C, V);
    return null;
  }

  /** Last stage (stage.ts loss): mean cross-entropy; with `grad`, d(loss·gradScale)/d(logits) left for backward. */
  async loss(slot: number, targets: Int32Array, grad: boolean, gradScale = 1): Promise<number> {
    if (!this.stage.last) throw new InvalidInputError('only the last stage computes the loss');
    const a = this.slot(slot);
    const N = a.B * a.T,
      V = this.stage.config.vocabSize;
    if (targets.length !== N) throw new InvalidInputError(`expected ${N} targets`);
    let valid = 0;
    for (let i = 0; i < N; i++) {
      const t = targets[i];
      if (t >= V || t < -1) throw new InvalidInputError(`target ${t} outside the vocabulary`);
      if (t >= 0) valid++;
    }
    const scale = valid > 0 ? gradScale / valid : 0;
    this.dev.write(a.targets!, targets);
    this.dev.crossEntropyForwardBackward(a.losses!, grad ? a.logits! : null, a.logits!, a.targets!, N, V, scale);
    const losses = await this.dev.read(a.losses!);
    let sum = 0;
    for (let i = 0; i < N; i++) sum += losses[i];
    return valid > 0 ? sum / valid : 0;
  }

  /** Last stage: the logits of each sequence's last position [B, V] (inference), from a forward of `slot`. */
  async lastLogits(slot: number): Promise<Float32Array> {
    const a = this.slot(slot),
      V = this.stage.config.vocabSize;
    const out = new Float32Array(a.B * V);
    for (let b = 0; b < a.B; b++)
      out.set(await this.dev.read(this.dev.view(a.logits!, ((b + 1) * a.T - 1) * V, V)), b * V);
    return out;
  }

  /**
   * Backward of micro-batch `slot` (stage.ts backward): ACCUMULATES this stage's gradients and
   * returns d(input) on the host for the previous stage (null on the first stage). Releases the slot.
   */
  async backward(slot: number, dOut: Float32Array | null): Promise<Float32Array | null> {
    const a = this.slot(slot);
    const { B, T } = a;
    const { vocabSize: V, dim: C, heads: NH } = this.stage.config;
    const d = this.dev,
      st = this.stage,
      N = B * T,
      W = this.W;
    const w = this.workFor(B, T);
    const { dres, dC } = w.g;
    const lastRes = a.layers.length ? a.layers[a.layers.length - 1].res3 : a.input;
    if (st.last) {
      d.zero(dC);
      const head = st.first ? 'wte' : 'head';
      d.matmulBackward(dC, this.g[head], null, a.logits!, a.lnf!, this.p[head], N, C, V);
      d.zero(dres);
      d.layernormBackward(
        dres,
        this.g['lnf.w'],
        this.g['lnf.b'],
        dC,
        lastRes,
        this.p['lnf.w'],
        a.lnfMean!,
        a.lnfRstd!,
        N,
        C,
      );
    } else {
      if (!dOut || dOut.length !== N * W)
        throw new InvalidInputError(`stage ${st.spec.index} backward needs ${N * W} output gradients`);
      if (a.out) {
        d.write(w.dOut!, dOut);
        d.zero(dres);
        d.matmulBackward(dres, this.g['bneck.down'], null, w.dOut!, lastRes, this.p['bneck.down'], N, C, W);
      } else d.write(dres, dOut);
    }
    for (let i = a.layers.length - 1; i >= 0; i--) {
      const input = i === 0 ? a.input : a.layers[i - 1].res3;
      blockBackwardGpu(d, this.pl[i], this.gl[i], a.layers[i], input, w.g, B, T, C, NH, this.attention);
    }
    this.slots.delete(slot);
    let back: Float32Array | null = null;
    if (st.first) {
      d.embeddingBackward(this.g.wte, this.g.wpe, dres, a.tokensHost!, B, T, C);
      await d.sync();
    } else if (a.coef) {
      d.zero(w.dcoef!);
      d.matmulBackward(w.dcoef!, this.g['bneck.up'], null, dres, a.coef, this.p['bneck.up'], N, W, C);
      back = await d.read(w.dcoef!);
    } else back = await d.read(dres);
    this.toPool(a);
    return back;
  }

  private toPool(a: Slot): void {
    const key = `${a.B}x${a.T}`;
    let list = this.pool.get(key);
    if (!list) this.pool.set(key, (list = []));
    a.tokensHost = null;
    list.push(a);
  }

  /** Drops a micro-batch's activations without backward (evaluation, an expired hold). */
  release(slot: number): void {
    const a = this.slots.get(slot);
    if (!a) return;
    this.slots.delete(slot);
    this.toPool(a);
  }

  /** Drops every held micro-batch (a step is being redone). */
  resetSlots(): void {
    for (const k of [...this.slots.keys()]) this.release(k);
  }

  /**
   * Clip to `globalNorm` (all stages' gradients: the driver sums the norms) and one AdamW update
   * (train/adamw.ts) with update count `step` (1-based, already counted by the caller).
   */
  update(settings: AdamWSettings, lr: number, globalNorm: number, step: number): void {
    if (!Number.isFinite(globalNorm))
      throw new RangeError(`gradient norm is ${globalNorm}; refusing to apply the update`);
    const d = this.dev;
    if (settings.gradClip > 0 && globalNorm > settings.gradClip) d.scale(this.grads, settings.gradClip / globalNorm);
    for (const r of this.ranges) {
      const n = r.end - r.start;
      d.adamw(
        d.view(this.params, r.start, n),
        d.view(this.grads, r.start, n),
        d.view(this.m, r.start, n),
        d.view(this.v, r.start, n),
        lr,
        settings.beta1,
        settings.beta2,
        settings.eps,
        r.decay ? settings.weightDecay : 0,
        step,
      );
    }
  }

  /** Frees every device buffer of this stage (after the work so far). */
  async destroy(): Promise<void> {
    await this.dev.sync();
    const all: GpuTensor[] = [this.params, this.grads, this.m, this.v];
    const slotTensors = (a: Slot) =>
      [a.input, a.tokens, a.coef, a.out, a.lnf, a.lnfMean, a.lnfRstd, a.logits, a.losses, a.targets].filter(
        (t): t is GpuTensor => t !== null,
      );
    for (const a of [...this.slots.values(), ...[...this.pool.values()].flat()]) {
      all.push(...slotTensors(a));
      for (const l of a.layers) all.push(...Object.values(l));
    }
    for (const w of this.work.values()) {
      all.push(w.scratch, ...Object.values(w.g));
      if (w.dOut) all.push(w.dOut);
      if (w.dcoef) all.push(w.dcoef);
    }
    this.slots.clear();
    this.pool.clear();
    this.work.clear();
    for (const t of all) t.buffer.destroy();
  }
}
