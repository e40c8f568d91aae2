/**
 * One pipeline stage of the GPT (protocol learning, issue 8; llama-stage.ts is the Llama family's,
 * pipeline-stage.ts the interface the pipeline uses of both): a contiguous block of layers, with
 * the embeddings on the first stage and the final LayerNorm and the head on the last. A stage
 * allocates ONLY its own tensors: no process serving a stage holds the rest of the model.
 *
 * Written by hand for the same reason as gpt.ts (explicit forward/backward over one flat buffer
 * per kind of state); each layer runs block.ts's blockForward/blockBackward, as GPT does, so S
 * stages compute what one GPT computes. Differences a caller must handle:
 *  - The head is tied to wte in GPT-2. With S > 1 the first stage holds wte and the last a
 *    copy named `head`; their gradients must be summed across the two stages before each
 *    optimizer step (the pipeline driver does it), which keeps the copies identical.
 *  - Gradient clipping is by the global norm over all stages: `sumSquares()` per stage, and the
 *    driver passes the global norm to each stage's optimizer.
 *  - Several micro-batches are in flight: activations are kept per `slot` until backward.
 *  - Optionally (spec.bottleneck = k) a learned bottleneck at each boundary: the sender projects
 *    its output to k values per token (`bneck.down`), the receiver lifts them back (`bneck.up`);
 *    the pair starts as the orthogonal projection onto a fixed random subspace and is trained
 *    end to end. This is the "learned bottleneck" form of compression; it changes the model (a
 *    pipeline with one no longer equals the plain GPT unless k = C).
 */
import type { Kernels } from '../kernels/api.js';
import { ModelConfigSchema, type ModelConfig } from './config.js';
import { layerViews, paramSpecs, type LayerViews, type TensorSpec } from './params.js';
import { blockActs, blockBackward, blockForward, blockGrads, type BlockActs, type BlockGrads } from './block.js';
import { initValues } from './gpt.js';
import { InvalidInputError } from '../util/errors.js';

export interface StageSpec {
  /** 0-based stage index and the number of stages. */
  index: number;
  count: number;
  /** Layers [l0, l1) of the model. */
  l0: number;
  l1: number;
  /**
   * A learned bottleneck of this width at every stage boundary (protocol learning's compression,
   * issue 8): a stage that sends projects its output with `bneck.down` [k, C], a stage that
   * receives lifts its input with `bneck.up` [C, k]; only k values per token cross. Absent: the
   * full residual stream (C values) crosses.
   */
  bottleneck?: number;
}

/** Cuts `layers` into `count` contiguous blocks, as even as possible (earlier stages get the extra layers). */
export function splitStages(config: Pick<ModelConfig, 'layers'>, count: number): StageSpec[] {
  const L = config.layers;
  if (!Number.isInteger(count) || count < 1 || count > L)
    throw new InvalidInputError(`cannot cut ${L} layers into ${count} stages (1..${L})`);
  const out: StageSpec[] = [];
  let l = 0;
  for (let i = 0; i < count; i++) {
    const n = Math.floor(L / count) + (i < L % count ? 1 : 0);
    out.push({ index: i, count, l0: l, l1: l + n });
    l += n;
  }
  return out;
}

/** The tensors a stage owns, with offsets in the stage's own flat buffer; `full` is the offset in the whole model (null for the head copy). */
export function stageSpecs(config: ModelConfig, st: StageSpec): (TensorSpec & { full: number | null })[] {
  const first = st.index === 0,
    last = st.index === st.count - 1;
  const keep = (name: string): boolean => {
    if (name === 'wte' || name === 'wpe') return first;
    if (name === 'lnf.w' || name === 'lnf.b') return last;
    const l = Number(/^h\.(\d+)\./.exec(name)![1]);
    return l >= st.l0 && l < st.l1;
  };
  const out: (TensorSpec & { full: number | null })[] = [];
  let offset = 0;
  for (const s of paramSpecs(config)) {
    if (!keep(s.name)) continue;
    out.push({ ...s, offset, full: s.offset });
    offset += s.size;
  }
  if (last && !first) {
    const wte = paramSpecs(config)[0];
    out.push({ name: 'head', shape: wte.shape, offset, size: wte.size, decay: true, full: null });
    offset += wte.size;
  }
  const k = st.bottleneck,
    C = config.dim;
  if (k !== undefined) {
    if (!Number.isInteger(k) || k < 1 || k > C)
      throw new InvalidInputError(`bottleneck must be an integer in 1..${C}, got ${k}`);
    // Not part of the GPT (full: null): they exist only between stages.
    if (!first) {
      out.push({ name: 'bneck.up', shape: [C, k], offset, size: C * k, decay: false, full: null });
      offset += C * k;
    }
    if (!last) {
      out.push({ name: 'bneck.down', shape: [k, C], offset, size: k * C, decay: false, full: null });
    }
  }
  return out;
}

interface SlotActs {
  B: number;
  T: number;
  /** The stage's input residual stream (the embeddings on the first stage). */
  input: Float32Array;
  tokens: Int32Array | null;
  /** With a bottleneck: the k values received [N, k], and the k values sent [N, k]. */
  coef: Float32Array | null;
  out: Float32Array | null;
  layers: BlockActs[];
  lnf: Float32Array | null;
  lnfMean: Float32Array | null;
  lnfRstd: Float32Array | null;
  logits: Float32Array | null;
  losses: Float32Array | null;
}

type W = Record<string, Float32Array>;

export class Stage {
  readonly config: ModelConfig;
  readonly spec: StageSpec;
  readonly specs: (TensorSpec & { full: number | null })[];
  readonly numParams: number;
  readonly params: Float32Array;
  readonly grads: Float32Array;
  readonly first: boolean;
  readonly last: boolean;
  private readonly p: W;
  private readonly g: W;
  /** This stage's blocks' weights and gradients, [0] = layer l0. */
  private readonly pl: LayerViews[];
  private readonly gl: LayerViews[];
  private readonly slots = new Map<number, SlotActs>();
  private scratch = new Float32Array(0);
  /** Gradient buffers for backward (sized per N). */
  private work: BlockGrads | null = null;

  constructor(
    config: ModelConfig,
    spec: StageSpec,
    readonly kernels: Kernels,
  ) {
    this.config = ModelConfigSchema.parse(config);
    const all = splitStages(this.config, spec.count);
    const want = all[spec.index];
    if (!want || want.l0 !== spec.l0 || want.l1 !== spec.l1)
      throw new InvalidInputError(`stage ${spec.index}/${spec.count} must hold layers [${want?.l0}, ${want?.l1})`);
    this.spec = spec;
    this.first = spec.index === 0;
    this.last = spec.index === spec.count - 1;
    this.specs = stageSpecs(this.config, spec);
    this.numParams = this.specs.reduce((t, s) => t + s.size, 0);
    this.params = new Float32Array(this.numParams);
    this.grads = new Float32Array(this.numParams);
    const views = (buf: Float32Array): W =>
      Object.fromEntries(this.specs.map((s) => [s.name, buf.subarray(s.offset, s.offset + s.size)]));
    this.p = views(this.params);
    this.g = views(this.grads);
    const layers = Array.from({ length: spec.l1 - spec.l0 }, (_, i) => spec.l0 + i);
    this.pl = layers.map((l) => layerViews(l, (n) => this.p[n]));
    this.gl = layers.map((l) => layerViews(l, (n) => this.g[n]));
  }

  /**
   * GPT-2 initialisation of this stage alone, bit-identical to the same tensors of GPT.init(seed):
   * the random stream is walked in the whole model's order, and the values of tensors this stage
   * does not hold are drawn and dropped (never stored), so a stage peer starts without ever
   * holding the rest of the model. The last stage's head takes wte's values (tied).
   */
  init(seed: number): void {
    const all = paramSpecs(this.config);
    const mine = new Map(this.specs.map((t) => [t.name, t]));
    const head = !this.first && this.last ? mine.get('head') : undefined;
    const at = all.map((t) => mine.get(t.name)?.offset ?? -1);
    initValues(this.config, seed, (t, i, x) => {
      if (at[t] >= 0) this.params[at[t] + i] = x;
      if (t === 0 && head) this.params[head.offset + i] = x; // wte's values become the head copy
    });
  }

  /** Tensor names this stage holds (the containment check reads them). */
  tensorNames(): string[] {
    return this.specs.map((s) => s.name);
  }

  /** Copies this stage's tensors out of a whole model's flat parameters (the head from wte; not the bottleneck). */
  loadFromFull(full: Float32Array): void {
    for (const s of this.specs)
      if (!s.name.startsWith('bneck.')) this.params.set(full.subarray(s.full ?? 0, (s.full ?? 0) + s.size), s.offset);
  }

  /** Boundary width: what this stage receives and sends per token (C, or the bottleneck's k). */
  get width(): number {
    return this.spec.bottleneck ?? this.config.dim;
  }

  /**
   * Initializes the bottleneck from an orthonormal basis U [C, k] (row-major) shared by all
   * stages: down = Uᵀ, up = U, so training starts from the orthogonal projection onto span(U)
   * (what the fixed `lowrank` codec does) and then learns the subspace.
   */
  initBottleneck(U: Float32Array): void {
    const k = this.spec.bottleneck,
      C = this.config.dim;
    if (k === undefined) return;
    if (U.length !== C * k) throw new InvalidInputError(`bottleneck basis must be ${C}×${k}`);
    const up = this.p['bneck.up'],
      down = this.p['bneck.down'];
    if (up) up.set(U);
    if (down) for (let i = 0; i < C; i++) for (let j = 0; j < k; j++) down[j * C + i] = U[i * k + j];
  }

  /** Writes this stage's tensors into a whole model's flat buffer (not the head copy). */
  writeToFull(full: Float32Array, from: Float32Array = this.params): void {
    for (const s of this.specs) if (s.full !== null) full.set(from.subarray(s.offset, s.offset + s.size), s.full);
  }

  /** The tensor holding the tied embedding here: wte on the first stage, head on the last (pipeline-stage.ts). */
  get tiedTensor(): string | null {
    return this.first ? 'wte' : this.last ? 'head' : null;
  }

  /** The tied-embedding gradient (first stage: wte; last stage with S > 1: head). */
  tiedGrad(): Float32Array | null {
    return this.first ? this.g.wte : this.last ? this.g.head : null;
  }

  /** The tied embedding's values on this stage (first: wte; last with S > 1: its head copy). */
  tiedParam(): Float32Array | null {
    return this.first ? this.p.wte : this.last ? this.p.head : null;
  }

  zeroGrad(): void {
    this.grads.fill(0);
  }
  sumSquares(): number {
    return this.kernels.sumSquares(this.grads);
  }

  private alloc(B: number, T: number, tokens: Int32Array | null): SlotActs {
    const { dim: C, heads: NH, vocabSize: V } = this.config;
    const N = B * T,
      n = this.spec.l1 - this.spec.l0;
    const f = (k: number) => new Float32Array(k);
    if (this.scratch.length < N * C) this.scratch = f(N * C);
    return {
      B,
      T,
      input: f(N * C),
      tokens,
      coef: this.spec.bottleneck !== undefined && !this.first ? f(N * this.spec.bottleneck) : null,
      out: this.spec.bottleneck !== undefined && !this.last ? f(N * this.spec.bottleneck) : null,
      layers: Array.from({ length: n }, () => blockActs(B, T, C, NH, f)),
      lnf: this.last ? f(N * C) : null,
      lnfMean: this.last ? f(N) : null,
      lnfRstd: this.last ? f(N) : null,
      logits: this.last ? f(N * V) : null,
      losses: this.last ? f(N) : null,
    };
  }

  /**
   * Forward of micro-batch `slot`. First stage: `input` is the tokens; otherwise the previous
   * stage's output [B·T·C]. Returns this stage's output [B·T·C] (a view, valid until the slot is
   * released), or the logits on the last stage.
   */
  forward(slot: number, input: Int32Array | Float32Array, B: number, T: number): Float32Array {
    const k = this.kernels;
    const { vocabSize: V, dim: C, heads: NH, ctx } = this.config;
    if (!Number.isInteger(B) || !Number.isInteger(T) || B < 1 || T < 1 || T > ctx)
      throw new InvalidInputError(`bad batch shape B=${B} T=${T}`);
    const N = B * T;
    let a: SlotActs;
    if (this.first) {
      if (!(input instanceof Int32Array) || input.length !== N)
        throw new InvalidInputError(`stage 0 takes ${N} token ids`);
      for (let i = 0; i < N; i++)
        if (input[i] < 0 || input[i] >= V) throw new InvalidInputError(`token id ${input[i]} outside the vocabulary`);
      a = this.alloc(B, T, input.slice());
      k.embeddingForward(a.input, input, this.p.wte, this.p.wpe, B, T, C);
    } else {
      const W = this.width;
      if (!(input instanceof Float32Array) || input.length !== N * W)
        throw new InvalidInputError(`stage ${this.spec.index} takes ${N * W} activations`);
      a = this.alloc(B, T, null);
      if (a.coef) {
        a.coef.set(input);
        k.matmulForward(a.input, a.coef, this.p['bneck.up'], null, N, W, C);
      } else {
        a.input.set(input);
      }
    }
    this.slots.set(slot, a);
    let residual = a.input;
    const sc = this.scratch.subarray(0, N * C);
    for (let i = 0; i < a.layers.length; i++) {
      residual = blockForward(k, this.pl[i], a.layers[i], residual, sc, B, T, C, NH);
    }
    if (!this.last) {
      if (!a.out) return residual;
      k.matmulForward(a.out, residual, this.p['bneck.down'], null, N, C, this.width);
      return a.out;
    }
    k.layernormForward(a.lnf!, a.lnfMean!, a.lnfRstd!, residual, this.p['lnf.w'], this.p['lnf.b'], N, C);
    k.matmulForward(a.logits!, a.lnf!, this.first ? this.p.wte : this.p.head, null, N, C, V);
    return a.logits!;
  }

  /**
   * Last stage: cross-entropy of slot's logits against `targets` (-1 = ignore). With `grad`,
   * leaves d(loss·gradScale)/d(logits) in place for backward(). Returns the mean loss.
   */
  loss(slot: number, targets: Int32Array, grad: boolean, gradScale = 1): number {
    if (!this.last) throw new InvalidInputError('only the last stage computes the loss');
    const a = this.slot(slot);
    const N = a.B * a.T,
      V = this.config.vocabSize;
    if (targets.length !== N) throw new InvalidInputError(`expected ${N} targets`);
    let valid = 0;
    for (let i = 0; i < N; i++) {
      const t = targets[i];
      if (t >= V || t < -1) throw new InvalidInputError(`target ${t} outside the vocabulary`);
      if (t >= 0) valid++;
    }
    const scale = valid > 0 ? gradScale / valid : 0;
    this.kernels.crossEntropyForwardBackward(a.losses!, grad ? a.logits! : null, a.logits!, targets, N, V, scale);
    let sum = 0;
    for (let i = 0; i < N; i++) sum += a.losses![i];
    return valid > 0 ? sum / valid : 0;
  }

  private slot(slot: number): SlotActs {
    const a = this.slots.get(slot);
    if (!a) throw new InvalidInputError(`no forward pass held for micro-batch ${slot}`);
    return a;
  }

  /**
   * Backward of micro-batch `slot`: accumulates this stage's gradients and returns d(input)
   * [B·T·C] for the previous stage (null on the first stage). `dOut` is the next stage's
   * d(input); the last stage uses the d(logits) loss() left. Releases the slot.
   */
  backward(slot: number, dOut: Float32Array | null): Float32Array | null {
    const a = this.slot(slot),
      k = this.kernels;
    const { B, T } = a;
    const { vocabSize: V, dim: C, heads: NH } = this.config;
    const N = B * T;
    const need = blockGrads(B, T, C, NH, (n) => n);
    if (!this.work || this.work.dres.length < need.dres || this.work.datt.length < need.datt) {
      this.work = blockGrads(B, T, C, NH, (n) => new Float32Array(n));
    }
    const w0 = this.work;
    const d: BlockGrads = {
      dres: w0.dres.subarray(0, need.dres),
      dC: w0.dC.subarray(0, need.dC),
      d3C: w0.d3C.subarray(0, need.d3C),
      d4Ca: w0.d4Ca.subarray(0, need.d4Ca),
      d4Cb: w0.d4Cb.subarray(0, need.d4Cb),
      datt: w0.datt.subarray(0, need.datt),
    };
    const { dres, dC } = d;
    const lastRes = a.layers.length ? a.layers[a.layers.length - 1].res3 : a.input;
    if (this.last) {
      dC.fill(0);
      k.matmulBackward(
        dC,
        this.first ? this.g.wte : this.g.head,
        null,
        a.logits!,
        a.lnf!,
        this.first ? this.p.wte : this.p.head,
        N,
        C,
        V,
      );
      dres.fill(0);
      k.layernormBackward(
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
      const W = this.width;
      if (!dOut || dOut.length !== N * W)
        throw new InvalidInputError(`stage ${this.spec.index} backward needs ${N * W} output gradients`);
      if (a.out) {
        dres.fill(0);
        k.matmulBackward(dres, this.g['bneck.down'], null, dOut, lastRes, this.p['bneck.down'], N, C, W);
      } else {
        dres.set(dOut);
      }
    }
    for (let i = a.layers.length - 1; i >= 0; i--) {
      const input = i === 0 ? a.input : a.layers[i - 1].res3;
      blockBackward(k, this.pl[i], this.gl[i], a.layers[i], input, d, B, T, C, NH);
    }
    this.slots.delete(slot);
    if (this.first) {
      k.embeddingBackward(this.g.wte, this.g.wpe, dres, a.tokens!, B, T, C);
      return null;
    }
    if (a.coef) {
      const dcoef = new Float32Array(N * this.width);
      k.matmulBackward(dcoef, this.g['bneck.up'], null, dres, a.coef, this.p['bneck.up'], N, this.width, C);
      return dcoef;
    }
    return dres.slice();
  }

  /** Drops a micro-batch's activations without backward (evaluation). */
  release(slot: number): void {
    this.slots.delete(slot);
  }

  /** Drops every held micro-batch (a step is being redone). */
  resetSlots(): void {
    this.slots.clear();
  }
}
