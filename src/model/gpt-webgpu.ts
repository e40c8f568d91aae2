/**
 * GPT-2 forward, backward and the AdamW step on a WebGpuDevice (src/kernels/webgpu/): the same
 * arithmetic as gpt.ts + block.ts + train/adamw.ts, call for call, with the tensors on the GPU.
 *
 * Why a second copy of the model code and not gpt.ts over a GPU `Kernels`: `Kernels` takes host
 * Float32Arrays and is synchronous, while GPU work is encoded and read back asynchronously; a
 * GPU kernel object that read back after every call would spend its time on transfers. This file
 * keeps the call sequence of gpt.ts/block.ts so the two can be compared step by step
 * (test/webgpu-gpt.test.ts).
 *
 * Memory: parameters, gradients and AdamW m and v are each ONE flat GPU buffer with params.ts's
 * layout (offset views per tensor); activations are one GPU buffer per tensor (a flat activation
 * buffer would pass the binding-size limit of some adapters at GPT-2 small). Attention is flash
 * attention by default, with K/V tiles shared across query rows in workgroup memory ('flash';
 * `att` holds the per-row log-sum-exp [B,NH,T] and `datt` the backward's row dots, so memory is
 * O(T) per row, not O(T^2)); 'flash-row' is the earlier one-workgroup-per-row form (same
 * contract, no K/V reuse); 'stored' keeps the probabilities as the CPU kernels do.
 *
 * f16 storage (option `f16Storage`, off by default): the activations that only feed matmuls
 * (ln1, ln2 and the GELU output of every block, and the final LayerNorm's output) are kept as
 * binary16 (half their memory), written so by LayerNorm and GELU and read by the GEMMs, with
 * all arithmetic still in f32 (src/kernels/webgpu/wgsl/precision.ts). Off, every bit is the f32
 * model's. The device's own flags (subgroups, shader-f16) are chosen when it is opened. What crosses to the
 * host per step: the tokens and targets in, the per-token losses and one gradient-norm scalar out.
 */
import type { ModelConfig } from './config.js';
import { ModelConfigSchema } from './config.js';
import { paramCount, paramSpecs, type TensorSpec } from './params.js';
import {
  allocBlockActs,
  allocBlockGrads,
  blockBackwardGpu,
  blockForwardGpu,
  gpuLayer,
  type GpuBlockActs,
  type GpuBlockGrads,
  type Attention,
  type GpuLayer,
} from './block-webgpu.js';
import type { GpuTensor, WebGpuDevice } from '../kernels/webgpu/device.js';
import { DEFAULT_ADAMW, type AdamWSettings } from '../train/adamw.js';
import { InvalidInputError } from '../util/errors.js';
import { checkTokens, countTargets } from './causal-lm.js';

export interface WebGpuGptOptions {
  /** Keep matmul-only activations in binary16 (see the header). Needs an even dim. */
  f16Storage?: boolean;
}

/** Which attention kernels the model runs (see the header and block-webgpu.ts). */
export type WebGpuAttention = Attention;

interface Views {
  wte: GpuTensor;
  wpe: GpuTensor;
  layers: GpuLayer[];
  lnfw: GpuTensor;
  lnfb: GpuTensor;
}

function views(dev: WebGpuDevice, cfg: ModelConfig, buf: GpuTensor): Views {
  const byName = new Map(paramSpecs(cfg).map((s) => [s.name, dev.view(buf, s.offset, s.size)]));
  const g = (n: string) => byName.get(n)!;
  return {
    wte: g('wte'),
    wpe: g('wpe'),
    lnfw: g('lnf.w'),
    lnfb: g('lnf.b'),
    layers: Array.from({ length: cfg.layers }, (_, l) => gpuLayer(l, g)),
  };
}

interface Acts {
  B: number;
  T: number;
  encoded: GpuTensor;
  layers: GpuBlockActs[];
  lnf: GpuTensor;
  lnfMean: GpuTensor;
  lnfRstd: GpuTensor;
  logits: GpuTensor;
  losses: GpuTensor;
  scratch: GpuTensor;
  tokens: GpuTensor;
  targets: GpuTensor;
  g: GpuBlockGrads;
}

export class WebGpuGPT {
  readonly config: ModelConfig;
  readonly numParams: number;
  readonly params: GpuTensor;
  readonly grads: GpuTensor;
  readonly m: GpuTensor;
  readonly v: GpuTensor;
  /** AdamW updates applied so far. */
  step = 0;
  private readonly p: Views;
  private readonly gv: Views;
  private readonly ranges: { start: number; end: number; decay: boolean }[] = [];
  private acts: Acts | null = null;
  private tokens: Int32Array | null = null;

  constructor(
    readonly dev: WebGpuDevice,
    config: ModelConfig,
    readonly settings: AdamWSettings = DEFAULT_ADAMW,
    readonly attention: WebGpuAttention = 'flash',
    readonly options: WebGpuGptOptions = {},
  ) {
    this.config = ModelConfigSchema.parse(config);
    if (options.f16Storage && this.config.dim % 2)
      throw new InvalidInputError(`f16 storage needs an even dim, got ${this.config.dim}`);
    this.numParams = paramCount(this.config);
    this.params = dev.alloc(this.numParams);
    this.grads = dev.alloc(this.numParams);
    this.m = dev.alloc(this.numParams);
    this.v = dev.alloc(this.numParams);
    this.p = views(dev, this.config, this.params);
    this.gv = views(dev, this.config, this.grads);
    for (const s of paramSpecs(this.config) as TensorSpec[]) {
      const last = this.ranges[this.ranges.length - 1];
      if (last && last.decay === s.decay && last.end === s.offset) last.end = s.offset + s.size;
      else this.ranges.push({ start: s.offset, end: s.offset + s.size, decay: s.decay });
    }
  }

  /** Copies host parameters (e.g. a CPU GPT's, after init) onto the GPU. */
  setParams(params: Float32Array): void {
    this.dev.write(this.params, params);
  }

  zeroGrad(): void {
    this.dev.zero(this.grads);
  }

  private ensureActs(B: number, T: number): Acts {
    if (this.acts && this.acts.B === B && this.acts.T === T) return this.acts;
    const { vocabSize: V, dim: C, layers: L, heads: NH } = this.config;
    const N = B * T,
      d = this.dev;
    const f = (n: number) => d.alloc(n);
    // The final LayerNorm's output only feeds the head's matmul: f16 when asked (see the header).
    const half = this.options.f16Storage ? (n: number) => d.alloc(n, 'f16') : f;
    this.acts = {
      B,
      T,
      encoded: f(N * C),
      layers: Array.from({ length: L }, () => allocBlockActs(d, B, T, C, NH, this.attention, this.options.f16Storage)),
      lnf: half(N * C),
      lnfMean: f(N),
      lnfRstd: f(N),
      logits: f(N * V),
      losses: f(N),
      scratch: f(N * C),
      tokens: d.alloc(N, 'i32'),
      targets: d.alloc(N, 'i32'),
      g: allocBlockGrads(d, B, T, C, NH, this.attention),
    };
    return this.acts;
  }

  /**
   * Forward + backward of one batch: returns the mean loss and ACCUMULATES the gradients into
   * `grads` (zeroGrad() first), as GPT.forwardBackward does; `gradScale` divides the
   * contribution (1/micro-batches).
   */
  async forwardBackward(tokens: Int32Array, targets: Int32Array, B: number, T: number, gradScale = 1): Promise<number> {
    return this.run(tokens, targets, B, T, gradScale, true);
  }

  /** Mean cross-entropy of one batch: the forward pass only, gradients untouched (validation). */
  async loss(tokens: Int32Array, targets: Int32Array, B: number, T: number): Promise<number> {
    return this.run(tokens, targets, B, T, 0, false);
  }

  private async run(
    tokens: Int32Array,
    targets: Int32Array,
    B: number,
    T: number,
    gradScale: number,
    backward: boolean,
  ): Promise<number> {
    const { vocabSize: V, dim: C, heads: NH, layers: L } = this.config;
    const N = B * T;
    checkTokens(this.config, tokens, B, T);
    const valid = countTargets(targets, N, V);
    const d = this.dev,
      a = this.ensureActs(B, T),
      p = this.p,
      g = this.gv;
    this.tokens = tokens;
    d.write(a.tokens, tokens);
    d.write(a.targets, targets);
    // forward (gpt.ts forwardToLogits + block.ts blockForward)
    d.embeddingForward(a.encoded, a.tokens, p.wte, p.wpe, B, T, C);
    let res = a.encoded;
    for (let l = 0; l < L; l++)
      res = blockForwardGpu(d, p.layers[l], a.layers[l], res, a.scratch, B, T, C, NH, this.attention);
    d.layernormForward(a.lnf, a.lnfMean, a.lnfRstd, res, p.lnfw, p.lnfb, N, C);
    d.matmulForward(a.logits, a.lnf, p.wte, null, N, C, V);
    d.crossEntropyForwardBackward(
      a.losses,
      backward ? a.logits : null,
      a.logits,
      a.targets,
      N,
      V,
      valid > 0 ? gradScale / valid : 0,
    );
    if (!backward) return this.meanLoss(a.losses, N, valid);
    // backward (gpt.ts backward + block.ts blockBackward)
    const { dres, dC } = a.g;
    d.zero(dC);
    d.matmulBackward(dC, g.wte, null, a.logits, a.lnf, p.wte, N, C, V);
    d.zero(dres);
    d.layernormBackward(dres, g.lnfw, g.lnfb, dC, res, p.lnfw, a.lnfMean, a.lnfRstd, N, C);
    for (let l = L - 1; l >= 0; l--) {
      const input = l === 0 ? a.encoded : a.layers[l - 1].res3;
      blockBackwardGpu(d, p.layers[l], g.layers[l], a.layers[l], input, a.g, B, T, C, NH, this.attention);
    }
    d.embeddingBackward(g.wte, g.wpe, dres, this.tokens, B, T, C);
    return this.meanLoss(a.losses, N, valid);
  }

  private async meanLoss(t: GpuTensor, N: number, valid: number): Promise<number> {
    const losses = await this.dev.read(t);
    let sum = 0;
    for (let i = 0; i < N; i++) sum += losses[i];
    return valid > 0 ? sum / valid : 0;
  }

  /** Clip to the global gradient norm, then one AdamW update (train/adamw.ts). Returns the norm. */
  async update(lr: number): Promise<number> {
    const d = this.dev,
      s = this.settings;
    const norm = Math.sqrt(await d.sumSquares(this.grads));
    if (!Number.isFinite(norm)) throw new RangeError(`gradient norm is ${norm}; refusing to apply the update`);
    if (s.gradClip > 0 && norm > s.gradClip) d.scale(this.grads, s.gradClip / norm);
    this.step += 1;
    for (const r of this.ranges) {
      const n = r.end - r.start;
      d.adamw(
        d.view(this.params, r.start, n),
        d.view(this.grads, r.start, n),
        d.view(this.m, r.start, n),
        d.view(this.v, r.start, n),
        lr,
        s.beta1,
        s.beta2,
        s.eps,
        r.decay ? s.weightDecay : 0,
        this.step,
      );
    }
    return norm;
  }

  /** One optimizer step on one batch (zero grads, forward, backward, clip, AdamW). */
  async trainStep(tokens: Int32Array, targets: Int32Array, B: number, T: number, lr: number): Promise<number> {
    this.zeroGrad();
    const loss = await this.forwardBackward(tokens, targets, B, T);
    await this.update(lr);
    return loss;
  }
}
