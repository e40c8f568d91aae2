/**
 * LoRA (Hu et al. 2021, arXiv:2106.09685) for the GPT-2 (gpt.ts) and Llama (llama.ts) models:
 * low-rank adapters of rank r on chosen projections, with the base weights frozen.
 *
 *   y = W x (+ b)  becomes  y = W x (+ b) + (alpha / r) · B · A · x,   A [r, in], B [out, r]
 *
 * Design: every adapter of a model lives in ONE flat Float32Array (`params`), with its own flat
 * gradient (`grads`) and, in the trainer, its own AdamW moments, laid out by loraSpecs like
 * params.ts lays out a model: per layer, per target module in a fixed order, lora_A then lora_B.
 * So a pseudo-gradient, a codec, a hash or a checkpoint of the adapter is a plain slice of one
 * small buffer, and the base parameters never change.
 *
 * The models consult an optional adapter at their projection sites (block.ts's ProjectionHook for
 * GPT-2, the same hook in llama.ts): forward adds the low-rank term to the projection's output,
 * backward accumulates exact gradients into A and B and adds the adapter's share to the input
 * gradient. With no adapter attached the models run exactly the code they ran before.
 *
 * Init as PEFT's default (init_lora_weights=True): A ~ kaiming-uniform(a=√5), i.e. U(−1/√in, 1/√in),
 * from the seeded xoshiro PRNG (util/rng.ts); B = 0. A fresh adapter therefore adds exact zeros
 * and leaves the logits unchanged.
 *
 * Target modules use Hugging Face's module names: Llama q_proj, k_proj, v_proj, o_proj,
 * gate_proj, up_proj, down_proj; GPT-2 c_attn, attn.c_proj, c_fc, mlp.c_proj ("c_proj" alone
 * means both c_proj modules, as PEFT's suffix match does). No I/O here (peft.ts writes files).
 */
import { z } from 'zod';
import type { Kernels } from '../kernels/api.js';
import { InvalidInputError, MismatchError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { ModelConfigSchema, type ModelConfig } from './config.js';
import { LlamaConfigSchema, type LlamaConfig } from './llama-config.js';
import { llamaParamCount, llamaViews } from './llama.js';
import { paramCount, paramViews, type TensorSpec } from './params.js';

export type LoraArch = 'gpt2' | 'llama';

/** Every module LoRA can target, per architecture, in layout order. */
export const LORA_MODULES = {
  gpt2: ['c_attn', 'attn.c_proj', 'c_fc', 'mlp.c_proj'],
  llama: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
} as const satisfies Record<LoraArch, readonly string[]>;

/** The largest adapter buffer (floats) a config may ask for: 2^28, 1 GiB of float32. */
export const MAX_LORA_PARAMS = 2 ** 28;

export const LoraConfigSchema = z
  .object({
    /** Rank of every adapter. */
    r: z.number().int().min(1).max(4096),
    /** Scaling numerator: the adapter's output is multiplied by alpha / r. */
    alpha: z.number().positive().max(1e6),
    /** Module names (see LORA_MODULES; "all" = every module; GPT-2 "c_proj" = both c_proj). */
    targets: z.array(z.string().min(1).max(64)).min(1).max(32),
  })
  .strict();
export type LoraConfig = z.infer<typeof LoraConfigSchema>;

/** A model config of either architecture. */
export type AnyModelConfig = { arch: 'gpt2'; config: ModelConfig } | { arch: 'llama'; config: LlamaConfig };

/**
 * The targets of `targets` for `arch`, expanded ("all", GPT-2's bare "c_proj"), deduplicated and
 * in layout order. Unknown names are refused with the list of valid ones.
 */
export function resolveTargets(arch: LoraArch, targets: readonly string[]): string[] {
  const valid: readonly string[] = LORA_MODULES[arch];
  const want = new Set<string>();
  for (const t of targets) {
    if (t === 'all') valid.forEach((v) => want.add(v));
    else if (arch === 'gpt2' && t === 'c_proj') ['attn.c_proj', 'mlp.c_proj'].forEach((v) => want.add(v));
    else if (valid.includes(t)) want.add(t);
    else
      throw new InvalidInputError(
        `unknown LoRA target "${t}" for ${arch === 'gpt2' ? 'GPT-2' : 'Llama'}; choose from ${[...valid, 'all'].join(', ')}`,
      );
  }
  return valid.filter((v) => want.has(v));
}

/** [in, out] of module `m` in one layer. */
function moduleShape(a: AnyModelConfig, m: string): [number, number] {
  if (a.arch === 'gpt2') {
    const C = a.config.dim;
    const shapes: Record<string, [number, number]> = {
      c_attn: [C, 3 * C],
      'attn.c_proj': [C, C],
      c_fc: [C, 4 * C],
      'mlp.c_proj': [4 * C, C],
    };
    return shapes[m];
  }
  const { dim: C, heads: NH, kvHeads: KV, headDim: hd, hidden: H } = a.config;
  const shapes: Record<string, [number, number]> = {
    q_proj: [C, NH * hd],
    k_proj: [C, KV * hd],
    v_proj: [C, KV * hd],
    o_proj: [NH * hd, C],
    gate_proj: [C, H],
    up_proj: [C, H],
    down_proj: [H, C],
  };
  return shapes[m];
}

/** One adapted projection: layer, module, its sizes and its A/B tensors' places in the buffer. */
export interface LoraSite {
  readonly layer: number;
  readonly module: string;
  readonly in: number;
  readonly out: number;
  readonly a: TensorSpec;
  readonly b: TensorSpec;
}

function checkModel(m: AnyModelConfig): AnyModelConfig {
  if (m.arch === 'gpt2') {
    const r = ModelConfigSchema.safeParse(m.config);
    if (!r.success) throw new InvalidInputError(`invalid GPT-2 config: ${r.error.issues[0]?.message}`);
    return { arch: 'gpt2', config: r.data };
  }
  if (m.arch === 'llama') {
    const r = LlamaConfigSchema.safeParse(m.config);
    if (!r.success) throw new InvalidInputError(`invalid Llama config: ${r.error.issues[0]?.message}`);
    return { arch: 'llama', config: r.data };
  }
  throw new InvalidInputError(`unknown architecture ${JSON.stringify((m as { arch?: unknown }).arch)}`);
}

function checkLora(c: LoraConfig): LoraConfig {
  const r = LoraConfigSchema.safeParse(c);
  if (!r.success)
    throw new InvalidInputError(
      `invalid LoRA config: ${r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`,
    );
  return r.data;
}

/**
 * The adapter layout: per layer l, per target module m (layout order), `layers.l.m.lora_A` [r, in]
 * then `layers.l.m.lora_B` [out, r]. Pure: same configs, same layout. Both are matrices (decay).
 */
export function loraSites(model: AnyModelConfig, lora: LoraConfig): LoraSite[] {
  const m = checkModel(model);
  const c = checkLora(lora);
  const targets = resolveTargets(m.arch, c.targets);
  const sites: LoraSite[] = [];
  let offset = 0;
  let total = 0;
  for (let l = 0; l < m.config.layers; l++)
    for (const t of targets) {
      const [inF, outF] = moduleShape(m, t);
      total += c.r * (inF + outF);
      if (total > MAX_LORA_PARAMS)
        throw new InvalidInputError(`LoRA rank ${c.r} needs more than ${MAX_LORA_PARAMS} adapter floats`);
      const p = `layers.${l}.${t}.`;
      const a: TensorSpec = { name: p + 'lora_A', shape: [c.r, inF], offset, size: c.r * inF, decay: true };
      offset += a.size;
      const b: TensorSpec = { name: p + 'lora_B', shape: [outF, c.r], offset, size: outF * c.r, decay: true };
      offset += b.size;
      sites.push({ layer: l, module: t, in: inF, out: outF, a, b });
    }
  return sites;
}

/** The adapter's tensor table (for AdamW and checkpoints), in buffer order. */
export function loraSpecs(model: AnyModelConfig, lora: LoraConfig): TensorSpec[] {
  return loraSites(model, lora).flatMap((s) => [s.a, s.b]);
}

/**
 * What a model calls at a projection: `forward` adds the adapter's term to `out` [N, out] from the
 * projection's input `inp` [N, in]; `backward` (given d(out)) ACCUMULATES into the adapter's
 * gradient and into `dinp` [N, in]. Modules without an adapter are no-ops.
 */
export interface ProjectionHook {
  forward(module: string, out: Float32Array, inp: Float32Array, N: number): void;
  backward(module: string, dinp: Float32Array, dout: Float32Array, inp: Float32Array, N: number): void;
}

interface SiteViews {
  site: LoraSite;
  A: Float32Array;
  B: Float32Array;
  gA: Float32Array;
  gB: Float32Array;
  /** (alpha/r) · x Aᵀ [N, r], kept from forward for backward. */
  u: Float32Array | null;
}

export class LoraAdapter {
  readonly arch: LoraArch;
  readonly model: AnyModelConfig;
  readonly config: LoraConfig;
  /** alpha / r. */
  readonly scale: number;
  readonly sites: readonly LoraSite[];
  readonly specs: readonly TensorSpec[];
  readonly numParams: number;
  /** Every A and B, flat; layout in loraSites. */
  readonly params: Float32Array;
  /** Gradients, same layout; backward ACCUMULATES into it. */
  readonly grads: Float32Array;
  private readonly byLayer: Map<string, SiteViews>[];
  private readonly hooks: ProjectionHook[];
  private kernels: Kernels | null = null;
  private N = 0;
  private tmp = new Float32Array(0);
  private du = new Float32Array(0);

  constructor(model: AnyModelConfig, lora: LoraConfig) {
    this.model = checkModel(model);
    const c = checkLora(lora);
    this.arch = this.model.arch;
    this.config = { ...c, targets: resolveTargets(this.arch, c.targets) };
    this.scale = c.alpha / c.r;
    this.sites = loraSites(this.model, this.config);
    this.specs = this.sites.flatMap((s) => [s.a, s.b]);
    const last = this.specs[this.specs.length - 1];
    this.numParams = last.offset + last.size;
    this.params = new Float32Array(this.numParams);
    this.grads = new Float32Array(this.numParams);
    this.byLayer = Array.from({ length: this.model.config.layers }, () => new Map<string, SiteViews>());
    for (const s of this.sites) {
      const v = (buf: Float32Array, t: TensorSpec) => buf.subarray(t.offset, t.offset + t.size);
      this.byLayer[s.layer].set(s.module, {
        site: s,
        A: v(this.params, s.a),
        B: v(this.params, s.b),
        gA: v(this.grads, s.a),
        gB: v(this.grads, s.b),
        u: null,
      });
    }
    this.hooks = this.byLayer.map((sites) => ({
      forward: (m, out, inp, N) => {
        const s = sites.get(m);
        if (s) this.siteForward(s, out, inp, N);
      },
      backward: (m, dinp, dout, inp, N) => {
        const s = sites.get(m);
        if (s) this.siteBackward(s, dinp, dout, inp, N);
      },
    }));
  }

  /** PEFT's default init: A ~ U(−1/√in, 1/√in) (kaiming-uniform, a = √5), B = 0. Deterministic in seed. */
  init(seed: number): void {
    const rng = new Rng(seed);
    for (const s of this.sites) {
      const A = this.params.subarray(s.a.offset, s.a.offset + s.a.size);
      const bound = 1 / Math.sqrt(s.in);
      for (let i = 0; i < A.length; i++) A[i] = Math.fround((2 * rng.nextFloat() - 1) * bound);
      this.params.fill(0, s.b.offset, s.b.offset + s.b.size);
    }
  }

  zeroGrad(): void {
    this.grads.fill(0);
  }

  /** The hook a model calls for layer `l` (kernels: the model's, used for every adapter matmul). */
  layerHook(l: number, kernels: Kernels): ProjectionHook {
    if (!Number.isInteger(l) || l < 0 || l >= this.hooks.length) throw new RangeError(`layer ${l} out of range`);
    this.kernels = kernels;
    return this.hooks[l];
  }

  /** Checks that this adapter was built for exactly `model`'s architecture and config. */
  checkFits(arch: LoraArch, config: ModelConfig | LlamaConfig): void {
    if (arch !== this.arch)
      throw new MismatchError(`a LoRA adapter built for ${this.arch} cannot be attached to a ${arch} model`);
    if (JSON.stringify(config) !== JSON.stringify(this.model.config))
      throw new MismatchError('the LoRA adapter was built for a different model config');
  }

  private ensure(N: number): void {
    if (N === this.N) return;
    const r = this.config.r;
    let maxOut = 0;
    for (const s of this.sites) {
      maxOut = Math.max(maxOut, s.out);
    }
    this.tmp = new Float32Array(N * maxOut);
    this.du = new Float32Array(N * r);
    for (const m of this.byLayer) for (const s of m.values()) s.u = new Float32Array(N * r);
    this.N = N;
  }

  private siteForward(s: SiteViews, out: Float32Array, inp: Float32Array, N: number): void {
    const k = this.kernels!;
    const r = this.config.r,
      { in: I, out: O } = s.site;
    this.ensure(N);
    const u = s.u!;
    const tmp = this.tmp.subarray(0, N * O);
    k.matmulForward(u, inp.subarray(0, N * I), s.A, null, N, I, r);
    k.scale(u, this.scale);
    k.matmulForward(tmp, u, s.B, null, N, r, O);
    const o = out.subarray(0, N * O);
    k.add(o, o, tmp, N * O);
  }

  private siteBackward(s: SiteViews, dinp: Float32Array, dout: Float32Array, inp: Float32Array, N: number): void {
    const k = this.kernels!;
    const r = this.config.r,
      { in: I, out: O } = s.site;
    if (N !== this.N || !s.u) throw new InvalidInputError('LoRA backward without a matching forward');
    const du = this.du;
    du.fill(0);
    // y = u Bᵀ with u = s·x Aᵀ: dB += doutᵀ u; du = dout B; then dA += (s·du)ᵀ x, dx += (s·du) A.
    k.matmulBackward(du, s.gB, null, dout.subarray(0, N * O), s.u, s.B, N, r, O);
    k.scale(du, this.scale);
    k.matmulBackward(dinp.subarray(0, N * I), s.gA, null, du, inp.subarray(0, N * I), s.A, N, I, r);
  }

  /** The A [r, in] and B [out, r] of (layer, module), views into `params`; null when not adapted. */
  tensors(layer: number, module: string): { A: Float32Array; B: Float32Array } | null {
    const s = this.byLayer[layer]?.get(module);
    return s ? { A: s.A, B: s.B } : null;
  }

  /**
   * base + (alpha/r)·B·A folded into every adapted weight: a fresh copy of `baseParams` (the
   * model's flat parameters, which are left alone). Sums in float64, one rounding per weight.
   */
  merge(baseParams: Float32Array): Float32Array {
    const merged = baseParams.slice();
    const r = this.config.r;
    for (const s of this.sites) {
      const W = baseWeight(this.model, merged, s.layer, s.module);
      const { A, B } = this.tensors(s.layer, s.module)!;
      const { in: I, out: O } = s;
      const row = new Float64Array(I);
      for (let o = 0; o < O; o++) {
        row.fill(0);
        for (let j = 0; j < r; j++) {
          const b = B[o * r + j];
          if (b === 0) continue;
          const a = j * I;
          for (let i = 0; i < I; i++) row[i] += b * A[a + i];
        }
        const w = o * I;
        for (let i = 0; i < I; i++) W[w + i] = Math.fround(W[w + i] + this.scale * row[i]);
      }
    }
    return merged;
  }
}

/** The [out, in] weight of (layer, module) inside a model's flat parameter buffer `params`. */
export function baseWeight(model: AnyModelConfig, params: Float32Array, layer: number, module: string): Float32Array {
  if (model.arch === 'gpt2') {
    if (params.length !== paramCount(model.config))
      throw new InvalidInputError(
        `params has ${params.length} floats, the GPT-2 config needs ${paramCount(model.config)}`,
      );
    const l = paramViews(model.config, params).layers[layer];
    const w: Record<string, Float32Array> = {
      c_attn: l.qkvw,
      'attn.c_proj': l.attprojw,
      c_fc: l.fcw,
      'mlp.c_proj': l.fcprojw,
    };
    return w[module];
  }
  if (params.length !== llamaParamCount(model.config))
    throw new InvalidInputError(
      `params has ${params.length} floats, the Llama config needs ${llamaParamCount(model.config)}`,
    );
  const l = llamaViews(model.config, params).layers[layer];
  const w: Record<string, Float32Array> = {
    q_proj: l.wq,
    k_proj: l.wk,
    v_proj: l.wv,
    o_proj: l.wo,
    gate_proj: l.wGate,
    up_proj: l.wUp,
    down_proj: l.wDown,
  };
  return w[module];
}

/** What the trainer needs of a model (GPT and Llama both are one). */
export interface LoraHost {
  readonly params: Float32Array;
  lora: LoraAdapter | null;
  /** The model can skip its base weights' gradients in backward (GPT: gpt.ts freezeBase). */
  freezeBase?: boolean;
  zeroGrad(): void;
  forwardBackward(tokens: Int32Array, targets: Int32Array, B: number, T: number, gradScale?: number): number;
  loss(tokens: Int32Array, targets: Int32Array, B: number, T: number): number;
}

/**
 * The adapter as the thing an inner step trains: its params and grads are the adapter's, so the
 * optimizer (and any pseudo-gradient) touches the adapter buffer alone and the base stays frozen.
 *
 * `freezeBase` (default true): a model that can (GPT) is set to skip its base weights' gradients
 * in backward, since they would never be applied: only d(input) flows through the frozen
 * projections (matmulBackward with a null dW), which saves about a third of a step's FLOPs
 * (bench/finetune-quality.ts measures it). The adapter's gradients are bit for bit the same
 * either way. A model that cannot (Llama) forms the base gradient, zeroed each step, never applied;
 * so does `freezeBase: false` (tests that check the adapter's gradient against the base's).
 */
export function loraTrainable(
  model: LoraHost,
  o: { freezeBase?: boolean } = {},
): {
  params: Float32Array;
  grads: Float32Array;
  zeroGrad(): void;
  forwardBackward(tokens: Int32Array, targets: Int32Array, B: number, T: number, gradScale?: number): number;
  loss(tokens: Int32Array, targets: Int32Array, B: number, T: number): number;
} {
  const a = model.lora;
  if (!a) throw new InvalidInputError('the model has no LoRA adapter attached');
  const frozen = (o.freezeBase ?? true) && 'freezeBase' in model;
  if ('freezeBase' in model) model.freezeBase = frozen;
  return {
    params: a.params,
    grads: a.grads,
    zeroGrad: () => {
      if (model.lora !== a) throw new InvalidInputError('the LoRA adapter was detached from its model');
      if (!frozen) model.zeroGrad();
      a.zeroGrad();
    },
    forwardBackward: (tokens, targets, B, T, gradScale = 1) => model.forwardBackward(tokens, targets, B, T, gradScale),
    loss: (tokens, targets, B, T) => model.loss(tokens, targets, B, T),
  };
}
