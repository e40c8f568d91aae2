/**
 * A Llama-family model's forward, backward and AdamW step on a WebGpuDevice: the same arithmetic
 * as llama.ts + llama-block.ts + train/adamw.ts, call for call, with the tensors on the GPU (the
 * Llama ops are webgpu/llama.ts's WGSL kernels, matmuls, the loss and AdamW the device's own).
 * Why a second copy of the call sequence and not llama.ts over a GPU `Kernels`: as for
 * gpt-webgpu.ts, `Kernels` is synchronous on host arrays, GPU work is encoded and read back
 * asynchronously. test/webgpu-llama.test.ts compares the two.
 *
 * Memory: parameters, gradients and AdamW m and v are each ONE flat GPU buffer with llamaSpecs'
 * layout (offset views per tensor); activations one GPU buffer per tensor; attention keeps the
 * probabilities [B,NH,T,T] as the CPU kernels do. The token embedding has no positions: it runs
 * the device's embedding kernels with an all-zero position table (x + 0 = x exactly) whose
 * gradient is scratch. Per step only the tokens and targets go in, the per-token losses and one
 * gradient-norm scalar come out.
 */
import type { GpuTensor, WebGpuDevice } from '../kernels/webgpu/device.js';
import { WebGpuLlamaKernels } from '../kernels/webgpu/llama.js';
import { DEFAULT_ADAMW, type AdamWSettings } from '../train/adamw.js';
import { InvalidInputError } from '../util/errors.js';
import {
  llamaBlockGrads,
  llamaLayerActs,
  llamaLayerViews,
  type LlamaBlockGrads,
  type LlamaLayerActs,
  type LlamaLayerViews,
} from './llama-block.js';
import { LlamaConfigSchema, ropeTables, type LlamaConfig } from './llama-config.js';
import { llamaParamCount, llamaSpecs } from './llama.js';
import { checkTokens, countTargets } from './causal-lm.js';

type G<T> = { [K in keyof T]: GpuTensor };
type Layer = G<LlamaLayerViews>;

interface Views {
  embed: GpuTensor;
  layers: Layer[];
  norm: GpuTensor;
  head: GpuTensor;
}

function views(dev: WebGpuDevice, cfg: LlamaConfig, buf: GpuTensor): Views {
  const byName = new Map(llamaSpecs(cfg).map((s) => [s.name, dev.view(buf, s.offset, s.size)]));
  const get = (n: string) => byName.get(n)!;
  const embed = get('embed');
  return {
    embed,
    layers: Array.from({ length: cfg.layers }, (_, l) => llamaLayerViews(l, get)),
    norm: get('norm'),
    head: cfg.tiedEmbeddings ? embed : get('lm_head'),
  };
}

interface Acts {
  B: number;
  T: number;
  encoded: GpuTensor;
  layers: G<LlamaLayerActs>[];
  xnf: GpuTensor;
  rstdf: GpuTensor;
  logits: GpuTensor;
  losses: GpuTensor;
  scratch: GpuTensor;
  tokens: GpuTensor;
  targets: GpuTensor;
  zeroPos: GpuTensor;
  dPos: GpuTensor;
  cos: GpuTensor;
  sin: GpuTensor;
  d: G<LlamaBlockGrads>;
}

export class WebGpuLlama {
  readonly config: LlamaConfig;
  readonly numParams: number;
  readonly params: GpuTensor;
  readonly grads: GpuTensor;
  readonly m: GpuTensor;
  readonly v: GpuTensor;
  /** AdamW updates applied so far. */
  step = 0;
  private readonly k: WebGpuLlamaKernels;
  private readonly p: Views;
  private readonly gv: Views;
  private readonly ranges: { start: number; end: number; decay: boolean }[] = [];
  private acts: Acts | null = null;

  constructor(
    readonly dev: WebGpuDevice,
    config: LlamaConfig,
    readonly settings: AdamWSettings = DEFAULT_ADAMW,
  ) {
    const r = LlamaConfigSchema.safeParse(config);
    if (!r.success)
      throw new InvalidInputError(`invalid Llama config: ${r.error.issues.map((i) => i.message).join('; ')}`);
    this.config = r.data;
    this.k = new WebGpuLlamaKernels(dev);
    this.numParams = llamaParamCount(this.config);
    this.params = dev.alloc(this.numParams);
    this.grads = dev.alloc(this.numParams);
    this.m = dev.alloc(this.numParams);
    this.v = dev.alloc(this.numParams);
    this.p = views(dev, this.config, this.params);
    this.gv = views(dev, this.config, this.grads);
    for (const s of llamaSpecs(this.config)) {
      const last = this.ranges[this.ranges.length - 1];
      if (last && last.decay === s.decay && last.end === s.offset) last.end = s.offset + s.size;
      else this.ranges.push({ start: s.offset, end: s.offset + s.size, decay: s.decay });
    }
  }

  /** Copies host parameters (e.g. a CPU Llama's, after init or a checkpoint) onto the GPU. */
  setParams(params: Float32Array): void {
    this.dev.write(this.params, params);
  }

  zeroGrad(): void {
    this.dev.zero(this.grads);
  }

  private ensureActs(B: number, T: number): Acts {
    if (this.acts && this.acts.B === B && this.acts.T === T) return this.acts;
    const { vocabSize: V, dim: C, layers: L } = this.config;
    const N = B * T,
      d = this.dev;
    const f = (n: number) => d.alloc(n);
    const { cos, sin } = ropeTables(this.config, T);
    this.acts = {
      B,
      T,
      encoded: f(N * C),
      layers: Array.from({ length: L }, () => llamaLayerActs(this.config, B, T, f)),
      xnf: f(N * C),
      rstdf: f(N),
      logits: f(N * V),
      losses: f(N),
      scratch: f(N * C),
      tokens: d.alloc(N, 'i32'),
      targets: d.alloc(N, 'i32'),
      zeroPos: f(T * C),
      dPos: f(T * C),
      cos: d.upload(Float32Array.from(cos)),
      sin: d.upload(Float32Array.from(sin)),
      d: llamaBlockGrads(this.config, B, T, f),
    };
    return this.acts;
  }

  /**
   * Forward + backward of one batch: returns the mean loss over targets ≥ 0 and ACCUMULATES the
   * gradients into `grads` (zeroGrad() first), as Llama.forwardBackward does.
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
    const cfg = this.config;
    const { vocabSize: V, dim: C, heads: NH, kvHeads: KV, headDim: hd, hidden: H, layers: L, normEps } = cfg;
    const N = B * T,
      Q = NH * hd,
      K = KV * hd;
    checkTokens(cfg, tokens, B, T);
    const valid = countTargets(targets, N, V);
    const d = this.dev,
      k = this.k,
      a = this.ensureActs(B, T),
      p = this.p,
      g = this.gv;
    d.write(a.tokens, tokens);
    d.write(a.targets, targets);
    // forward (llama.ts forwardToLogits + llama-block.ts llamaBlockForward)
    d.embeddingForward(a.encoded, a.tokens, p.embed, a.zeroPos, B, T, C);
    let x = a.encoded;
    for (let l = 0; l < L; l++) {
      const w = p.layers[l],
        s = a.layers[l];
      k.rmsnormForward(s.xn1, s.rstd1, x, w.attnNorm, N, C, normEps);
      d.matmulForward(s.q, s.xn1, w.wq, null, N, C, Q);
      d.matmulForward(s.k, s.xn1, w.wk, null, N, C, K);
      d.matmulForward(s.v, s.xn1, w.wv, null, N, C, K);
      k.ropeForward(s.q, a.cos, a.sin, B, T, NH, hd);
      k.ropeForward(s.k, a.cos, a.sin, B, T, KV, hd);
      k.gqaForward(s.atty, s.att, s.q, s.k, s.v, B, T, NH, KV, hd);
      d.matmulForward(a.scratch, s.atty, w.wo, null, N, Q, C);
      d.add(s.res2, x, a.scratch, N * C);
      k.rmsnormForward(s.xn2, s.rstd2, s.res2, w.mlpNorm, N, C, normEps);
      d.matmulForward(s.gate, s.xn2, w.wGate, null, N, C, H);
      d.matmulForward(s.up, s.xn2, w.wUp, null, N, C, H);
      k.swigluForward(s.hmid, s.gate, s.up, N * H);
      d.matmulForward(a.scratch, s.hmid, w.wDown, null, N, H, C);
      d.add(s.res3, s.res2, a.scratch, N * C);
      x = s.res3;
    }
    k.rmsnormForward(a.xnf, a.rstdf, x, p.norm, N, C, normEps);
    d.matmulForward(a.logits, a.xnf, p.head, null, N, C, V);
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
    // backward (llama.ts backward + llama-block.ts llamaBlockBackward)
    const { dres, dC, dq, dk, dv, datt, datty, dH, dgate, dup } = a.d;
    d.zero(dC);
    d.matmulBackward(dC, g.head, null, a.logits, a.xnf, p.head, N, C, V);
    d.zero(dres);
    k.rmsnormBackward(dres, g.norm, dC, x, p.norm, a.rstdf, N, C);
    for (let l = L - 1; l >= 0; l--) {
      const input = l === 0 ? a.encoded : a.layers[l - 1].res3;
      const w = p.layers[l],
        gw = g.layers[l],
        s = a.layers[l];
      d.zero(dH);
      d.matmulBackward(dH, gw.wDown, null, dres, s.hmid, w.wDown, N, H, C);
      d.zero(dgate);
      d.zero(dup);
      k.swigluBackward(dgate, dup, dH, s.gate, s.up, N * H);
      d.zero(dC);
      d.matmulBackward(dC, gw.wGate, null, dgate, s.xn2, w.wGate, N, C, H);
      d.matmulBackward(dC, gw.wUp, null, dup, s.xn2, w.wUp, N, C, H);
      k.rmsnormBackward(dres, gw.mlpNorm, dC, s.res2, w.mlpNorm, s.rstd2, N, C);
      d.zero(datty);
      d.matmulBackward(datty, gw.wo, null, dres, s.atty, w.wo, N, Q, C);
      d.zero(dq);
      d.zero(dk);
      d.zero(dv);
      k.gqaBackward(dq, dk, dv, datt, datty, s.q, s.k, s.v, s.att, B, T, NH, KV, hd);
      k.ropeBackward(dq, a.cos, a.sin, B, T, NH, hd);
      k.ropeBackward(dk, a.cos, a.sin, B, T, KV, hd);
      d.zero(dC);
      d.matmulBackward(dC, gw.wq, null, dq, s.xn1, w.wq, N, C, Q);
      d.matmulBackward(dC, gw.wk, null, dk, s.xn1, w.wk, N, C, K);
      d.matmulBackward(dC, gw.wv, null, dv, s.xn1, w.wv, N, C, K);
      k.rmsnormBackward(dres, gw.attnNorm, dC, input, w.attnNorm, s.rstd1, N, C);
    }
    d.embeddingBackward(g.embed, a.dPos, dres, tokens, B, T, C);
    return this.meanLoss(a.losses, N, valid);
  }

  private async meanLoss(t: GpuTensor, N: number, valid: number): Promise<number> {
    const losses = await this.dev.read(t);
    let sum = 0;
    for (let i = 0; i < N; i++) sum += losses[i];
    return valid > 0 ? sum / valid : 0;
  }

  /** A host copy of the parameters (llamaSpecs layout). */
  async getParams(): Promise<Float32Array> {
    return this.dev.read(this.params);
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
