/**
 * One pipeline stage of a Llama-family model (protocol learning with Llama blocks): a contiguous
 * block of decoder layers, with the token embedding on the first stage and the final RMSNorm and
 * the output head on the last. Like the GPT-2 Stage (stage.ts), it allocates ONLY its own tensors
 * and keeps activations per in-flight micro-batch (`slot`); each layer runs llama-block.ts's
 * llamaBlockForward/llamaBlockBackward, as the whole Llama does, so S stages compute what one
 * Llama computes (test/stage-llama.test.ts checks loss and every gradient).
 *
 * Why a second class and not the GPT Stage with a switch: the two share the slot bookkeeping and
 * the boundary (bottleneck) arithmetic, but everything a stage computes differs (embedding with
 * or without positions, LayerNorm vs RMSNorm with no bias, the blocks, a tied or untied head), and
 * the GPT Stage is the pipeline's proven path; both implement pipeline-stage.ts's PipelineStage,
 * which is all the pipeline uses.
 *
 * The head: untied (Llama 2/3) — the last stage owns `lm_head`, nothing is shared between stages,
 * and `tiedTensor` is null. Tied (SmolLM, TinyLlama variants) — as GPT-2: the first stage holds
 * `embed`, the last a copy named `head`, and the driver sums their gradients before each step.
 */
import type { Kernels } from '../kernels/api.js';
import { embedBackward, embedForward } from '../kernels/ref-llama.js';
import { InvalidInputError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import {
  llamaBlockBackward,
  llamaBlockForward,
  llamaBlockGrads,
  llamaLayerActs,
  llamaLayerViews,
  type LlamaBlockGrads,
  type LlamaLayerActs,
  type LlamaLayerViews,
  type RopeTables,
} from './llama-block.js';
import { LlamaConfigSchema, ropeTables, type LlamaConfig } from './llama-config.js';
import { llamaSpecs } from './llama.js';
import type { TensorSpec } from './params.js';
import { splitStages, type StageSpec } from './stage.js';

export type StageTensor = TensorSpec & { full: number | null };

/** The tensors a Llama stage owns, offsets in its own buffer; `full` is the offset in the whole model (null: not in it). */
export function llamaStageSpecs(config: LlamaConfig, st: StageSpec): StageTensor[] {
  const first = st.index === 0,
    last = st.index === st.count - 1;
  const keep = (name: string): boolean => {
    if (name === 'embed') return first;
    if (name === 'norm' || name === 'lm_head') return last;
    const l = Number(/^layers\.(\d+)\./.exec(name)![1]);
    return l >= st.l0 && l < st.l1;
  };
  const all = llamaSpecs(config);
  const out: StageTensor[] = [];
  let offset = 0;
  for (const s of all) {
    if (!keep(s.name)) continue;
    out.push({ ...s, offset, full: s.offset });
    offset += s.size;
  }
  if (config.tiedEmbeddings && last && !first) {
    const e = all[0];
    out.push({ name: 'head', shape: e.shape, offset, size: e.size, decay: true, full: null });
    offset += e.size;
  }
  const k = st.bottleneck,
    C = config.dim;
  if (k !== undefined) {
    if (!Number.isInteger(k) || k < 1 || k > C)
      throw new InvalidInputError(`bottleneck must be an integer in 1..${C}, got ${k}`);
    if (!first) {
      out.push({ name: 'bneck.up', shape: [C, k], offset, size: C * k, decay: false, full: null });
      offset += C * k;
    }
    if (!last) out.push({ name: 'bneck.down', shape: [k, C], offset, size: k * C, decay: false, full: null });
  }
  return out;
}

interface SlotActs {
  B: number;
  T: number;
  input: Float32Array;
  tokens: Int32Array | null;
  coef: Float32Array | null;
  out: Float32Array | null;
  layers: LlamaLayerActs[];
  xnf: Float32Array | null;
  rstdf: Float32Array | null;
  logits: Float32Array | null;
  losses: Float32Array | null;
}

type W = Record<string, Float32Array>;

export class LlamaStage {
  readonly config: LlamaConfig;
  readonly spec: StageSpec;
  readonly specs: StageTensor[];
  readonly numParams: number;
  readonly params: Float32Array;
  readonly grads: Float32Array;
  readonly first: boolean;
  readonly last: boolean;
  /** The tied embedding on this stage (first: `embed`; last with S > 1: `head`), or null. */
  readonly tiedTensor: string | null;
  private readonly p: W;
  private readonly g: W;
  private readonly pl: LlamaLayerViews[];
  private readonly gl: LlamaLayerViews[];
  private readonly slots = new Map<number, SlotActs>();
  private scratch = new Float32Array(0);
  private work: LlamaBlockGrads | null = null;
  private rope: (RopeTables & { T: number }) | null = null;

  constructor(
    config: LlamaConfig,
    spec: StageSpec,
    readonly kernels: Kernels,
  ) {
    const r = LlamaConfigSchema.safeParse(config);
    if (!r.success)
      throw new InvalidInputError(`invalid Llama config: ${r.error.issues.map((i) => i.message).join('; ')}`);
    this.config = r.data;
    const want = splitStages(this.config, spec.count)[spec.index];
    if (!want || want.l0 !== spec.l0 || want.l1 !== spec.l1)
      throw new InvalidInputError(`stage ${spec.index}/${spec.count} must hold layers [${want?.l0}, ${want?.l1})`);
    this.spec = spec;
    this.first = spec.index === 0;
    this.last = spec.index === spec.count - 1;
    this.tiedTensor = !this.config.tiedEmbeddings ? null : this.first ? 'embed' : this.last ? 'head' : null;
    this.specs = llamaStageSpecs(this.config, spec);
    this.numParams = this.specs.reduce((t, s) => t + s.size, 0);
    this.params = new Float32Array(this.numParams);
    this.grads = new Float32Array(this.numParams);
    const views = (buf: Float32Array): W =>
      Object.fromEntries(this.specs.map((s) => [s.name, buf.subarray(s.offset, s.offset + s.size)]));
    this.p = views(this.params);
    this.g = views(this.grads);
    const layers = Array.from({ length: spec.l1 - spec.l0 }, (_, i) => spec.l0 + i);
    this.pl = layers.map((l) => llamaLayerViews(l, (n) => this.p[n]));
    this.gl = layers.map((l) => llamaLayerViews(l, (n) => this.g[n]));
  }

  /**
   * Llama.init(seed) of this stage alone, bit for bit: the random stream is walked in the whole
   * model's order (gains are ones and draw nothing), values of tensors this stage does not hold
   * are drawn and dropped, and a tied head copy takes the embedding's values.
   */
  init(seed: number): void {
    const rng = new Rng(seed);
    const gauss = () => {
      const u1 = 1 - rng.nextFloat(),
        u2 = rng.nextFloat();
      return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
    };
    const residStd = 0.02 / Math.sqrt(2 * this.config.layers);
    const mine = new Map(this.specs.map((t) => [t.name, t]));
    const head = this.tiedTensor === 'head' ? mine.get('head')! : undefined;
    for (const s of llamaSpecs(this.config)) {
      const at = mine.get(s.name);
      if (s.shape.length === 1) {
        if (at) this.params.fill(1, at.offset, at.offset + at.size);
        continue;
      }
      const std = s.name.endsWith('.wo') || s.name.endsWith('.w_down') ? residStd : 0.02;
      for (let i = 0; i < s.size; i++) {
        const x = Math.fround(gauss() * std);
        if (at) this.params[at.offset + i] = x;
        if (head && s.name === 'embed') this.params[head.offset + i] = x;
      }
    }
  }

  tensorNames(): string[] {
    return this.specs.map((s) => s.name);
  }

  /** Copies this stage's tensors out of a whole model's flat parameters (a tied head from embed; not the bottleneck). */
  loadFromFull(full: Float32Array): void {
    for (const s of this.specs)
      if (!s.name.startsWith('bneck.')) this.params.set(full.subarray(s.full ?? 0, (s.full ?? 0) + s.size), s.offset);
  }

  /** Writes this stage's tensors into a whole model's flat buffer (not a head copy). */
  writeToFull(full: Float32Array, from: Float32Array = this.params): void {
    for (const s of this.specs) if (s.full !== null) full.set(from.subarray(s.offset, s.offset + s.size), s.full);
  }

  get width(): number {
    return this.spec.bottleneck ?? this.config.dim;
  }

  /** As Stage.initBottleneck: down = Uᵀ, up = U for an orthonormal U [C, k]. */
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

  tiedGrad(): Float32Array | null {
    return this.tiedTensor ? this.g[this.tiedTensor] : null;
  }

  tiedParam(): Float32Array | null {
    return this.tiedTensor ? this.p[this.tiedTensor] : null;
  }

  zeroGrad(): void {
    this.grads.fill(0);
  }

  sumSquares(): number {
    return this.kernels.sumSquares(this.grads);
  }

  /** The output projection on the last stage: lm_head, the embedding (S = 1, tied) or its copy. */
  private head(w: W): Float32Array {
    return this.config.tiedEmbeddings ? (this.first ? w.embed : w.head) : w.lm_head;
  }

  private ropeFor(T: number): RopeTables {
    if (this.rope?.T !== T) {
      const { cos, sin } = ropeTables(this.config, T);
      this.rope = { T, cos: Float32Array.from(cos), sin: Float32Array.from(sin) };
    }
    return this.rope;
  }

  private alloc(B: number, T: number, tokens: Int32Array | null): SlotActs {
    const { dim: C, vocabSize: V } = this.config;
    const N = B * T,
      f = (n: number) => new Float32Array(n),
      k = this.spec.bottleneck;
    if (this.scratch.length < N * C) this.scratch = f(N * C);
    return {
      B,
      T,
      input: f(N * C),
      tokens,
      coef: k !== undefined && !this.first ? f(N * k) : null,
      out: k !== undefined && !this.last ? f(N * k) : null,
      layers: this.pl.map(() => llamaLayerActs(this.config, B, T, f)),
      xnf: this.last ? f(N * C) : null,
      rstdf: this.last ? f(N) : null,
      logits: this.last ? f(N * V) : null,
      losses: this.last ? f(N) : null,
    };
  }

  /** As Stage.forward: tokens on the first stage, else the previous stage's output; returns this stage's output or the logits. */
  forward(slot: number, input: Int32Array | Float32Array, B: number, T: number): Float32Array {
    const k = this.kernels;
    const { vocabSize: V, dim: C, ctx, normEps } = this.config;
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
      embedForward(a.input, input, this.p.embed, N, C);
    } else {
      const Wd = this.width;
      if (!(input instanceof Float32Array) || input.length !== N * Wd)
        throw new InvalidInputError(`stage ${this.spec.index} takes ${N * Wd} activations`);
      a = this.alloc(B, T, null);
      if (a.coef) {
        a.coef.set(input);
        k.matmulForward(a.input, a.coef, this.p['bneck.up'], null, N, Wd, C);
      } else a.input.set(input);
    }
    this.slots.set(slot, a);
    const rope = this.ropeFor(T);
    const sc = this.scratch.subarray(0, N * C);
    let x = a.input;
    for (let i = 0; i < a.layers.length; i++)
      x = llamaBlockForward(k, this.config, this.pl[i], a.layers[i], x, sc, rope, B, T);
    if (!this.last) {
      if (!a.out) return x;
      k.matmulForward(a.out, x, this.p['bneck.down'], null, N, C, this.width);
      return a.out;
    }
    k.rmsnormForward(a.xnf!, a.rstdf!, x, this.p.norm, N, C, normEps);
    k.matmulForward(a.logits!, a.xnf!, this.head(this.p), null, N, C, V);
    return a.logits!;
  }

  /** As Stage.loss: the last stage's mean cross-entropy; with `grad`, d(loss·gradScale)/d(logits) left for backward. */
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

  /** As Stage.backward: accumulates this stage's gradients, returns d(input) (null on the first stage); releases the slot. */
  backward(slot: number, dOut: Float32Array | null): Float32Array | null {
    const a = this.slot(slot),
      k = this.kernels;
    const { B, T } = a;
    const { vocabSize: V, dim: C } = this.config;
    const N = B * T;
    const need = llamaBlockGrads(this.config, B, T, (n) => n);
    if (!this.work || this.work.dres.length < need.dres || this.work.datt.length < need.datt)
      this.work = llamaBlockGrads(this.config, B, T, (n) => new Float32Array(n));
    const w0 = this.work;
    const d = Object.fromEntries(
      (Object.keys(need) as (keyof LlamaBlockGrads)[]).map((key) => [key, w0[key].subarray(0, need[key])]),
    ) as unknown as LlamaBlockGrads;
    const { dres, dC } = d;
    const lastRes = a.layers.length ? a.layers[a.layers.length - 1].res3 : a.input;
    if (this.last) {
      dC.fill(0);
      k.matmulBackward(dC, this.head(this.g), null, a.logits!, a.xnf!, this.head(this.p), N, C, V);
      dres.fill(0);
      k.rmsnormBackward(dres, this.g.norm, dC, lastRes, this.p.norm, a.rstdf!, N, C);
    } else {
      const Wd = this.width;
      if (!dOut || dOut.length !== N * Wd)
        throw new InvalidInputError(`stage ${this.spec.index} backward needs ${N * Wd} output gradients`);
      if (a.out) {
        dres.fill(0);
        k.matmulBackward(dres, this.g['bneck.down'], null, dOut, lastRes, this.p['bneck.down'], N, C, Wd);
      } else dres.set(dOut);
    }
    const rope = this.ropeFor(T);
    for (let i = a.layers.length - 1; i >= 0; i--) {
      const input = i === 0 ? a.input : a.layers[i - 1].res3;
      llamaBlockBackward(k, this.config, this.pl[i], this.gl[i], a.layers[i], input, d, rope, B, T);
    }
    this.slots.delete(slot);
    if (this.first) {
      embedBackward(this.g.embed, dres, a.tokens!, N, C);
      return null;
    }
    if (a.coef) {
      const dcoef = new Float32Array(N * this.width);
      k.matmulBackward(dcoef, this.g['bneck.up'], null, dres, a.coef, this.p['bneck.up'], N, this.width, C);
      return dcoef;
    }
    return dres.slice();
  }

  release(slot: number): void {
    this.slots.delete(slot);
  }

  resetSlots(): void {
    this.slots.clear();
  }
}
