/**
 * A Llama-family decoder (LlamaForCausalLM: Llama 2/3, TinyLlama, SmolLM), forward and backward
 * written out by hand like gpt.ts, over one flat Float32Array of parameters and one of gradients.
 *
 * Architecture (as published and as Hugging Face's modeling_llama implements it): token
 * embedding without position embeddings; per layer
 *   h   = x + o_proj(attention(rope(q_proj(rms1(x))), rope(k_proj(rms1(x))), v_proj(rms1(x))))
 *   out = h + down_proj(silu(gate_proj(rms2(h))) ⊙ up_proj(rms2(h)))
 * with RMSNorm (eps from the config), rotary position embedding (rope_theta, optional linear or
 * llama3 scaling), causal grouped-query attention (kvHeads ≤ heads), no biases anywhere; then a
 * final RMSNorm and lm_head (tied to the embedding or its own matrix). No dropout. Loss is the
 * mean cross-entropy over targets ≥ 0.
 *
 * Parameter layout (llamaSpecs), per-layer contiguous so that a layer range is one slice:
 *   embed [V,C],
 *   for each layer l: attn_norm [C], wq [NH·hd,C], wk [KV·hd,C], wv [KV·hd,C], wo [C,NH·hd],
 *                     mlp_norm [C], w_gate [H,C], w_up [H,C], w_down [C,H]
 *   norm [C], lm_head [V,C] (only when the embeddings are untied)
 * Linear weights are [out, in], as nn.Linear and Hugging Face's safetensors store them.
 *
 * Each layer runs llama-block.ts's llamaBlockForward/llamaBlockBackward, as a pipeline stage of
 * Llama layers does (llama-stage.ts). Every kernel goes through the Kernels interface (native or
 * reference, api.ts; the Llama ops' specification is kernels/ref-llama.ts), but the token
 * embedding, which is a row copy. The RoPE tables are computed once per sequence length on the
 * host (float64, rounded to float32). No I/O here.
 *
 * An optional LoRA adapter (`lora`, lora.ts) is consulted at every projection (q_proj, k_proj,
 * v_proj before RoPE, o_proj, gate_proj, up_proj, down_proj); with none attached (the default)
 * every path is exactly the adapter-free one.
 */
import type { Kernels } from '../kernels/api.js';
import { InvalidInputError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { LlamaConfigSchema, ropeTables, type LlamaConfig } from './llama-config.js';
import { embedBackward, embedForward } from '../kernels/ref-llama.js';
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
import type { TensorSpec } from './params.js';
import type { LoraAdapter } from './lora.js';
import { checkTokens, countTargets, meanCrossEntropy } from './causal-lm.js';

export type { LlamaLayerViews } from './llama-block.js';

export interface LlamaViews {
  embed: Float32Array;
  layers: LlamaLayerViews[];
  norm: Float32Array;
  /** The output projection: lm_head, or the embedding itself when tied. */
  head: Float32Array;
}

/** The ordered tensor table for a Llama config. Pure: same config, same layout. */
export function llamaSpecs(cfg: LlamaConfig): TensorSpec[] {
  const { vocabSize: V, dim: C, layers: L, heads: NH, kvHeads: KV, headDim: hd, hidden: H } = cfg;
  const specs: TensorSpec[] = [];
  let offset = 0;
  const add = (name: string, shape: number[], decay: boolean) => {
    const size = shape.reduce((a, b) => a * b, 1);
    specs.push({ name, shape, offset, size, decay });
    offset += size;
  };
  add('embed', [V, C], true);
  for (let l = 0; l < L; l++) {
    const p = `layers.${l}.`;
    add(p + 'attn_norm', [C], false);
    add(p + 'wq', [NH * hd, C], true);
    add(p + 'wk', [KV * hd, C], true);
    add(p + 'wv', [KV * hd, C], true);
    add(p + 'wo', [C, NH * hd], true);
    add(p + 'mlp_norm', [C], false);
    add(p + 'w_gate', [H, C], true);
    add(p + 'w_up', [H, C], true);
    add(p + 'w_down', [C, H], true);
  }
  add('norm', [C], false);
  if (!cfg.tiedEmbeddings) add('lm_head', [V, C], true);
  return specs;
}

export function llamaParamCount(cfg: LlamaConfig): number {
  const s = llamaSpecs(cfg);
  const last = s[s.length - 1];
  return last.offset + last.size;
}

/** Named views into `buf` (params or grads). */
export function llamaViews(cfg: LlamaConfig, buf: Float32Array): LlamaViews {
  const specs = llamaSpecs(cfg);
  const P = llamaParamCount(cfg);
  if (buf.length !== P) throw new RangeError(`buffer has ${buf.length} floats, config needs ${P}`);
  const byName = new Map(specs.map((s) => [s.name, buf.subarray(s.offset, s.offset + s.size)]));
  const get = (n: string) => byName.get(n)!;
  const layers = Array.from({ length: cfg.layers }, (_, l) => llamaLayerViews(l, get));
  const embed = get('embed');
  return { embed, layers, norm: get('norm'), head: cfg.tiedEmbeddings ? embed : get('lm_head') };
}

interface Acts {
  B: number;
  T: number;
  encoded: Float32Array;
  layers: LlamaLayerActs[];
  xnf: Float32Array;
  rstdf: Float32Array;
  logits: Float32Array; // overwritten by dlogits during training
  losses: Float32Array;
  scratch: Float32Array;
  rope: RopeTables; // [T, headDim/2]
  /** Backward scratch, shared by the layers. */
  d: LlamaBlockGrads;
}

export class Llama {
  readonly config: LlamaConfig;
  readonly kernels: Kernels;
  readonly numParams: number;
  /** Flat parameters; layout in llamaSpecs. */
  readonly params: Float32Array;
  /** Flat gradients, same layout; backward ACCUMULATES into it. */
  readonly grads: Float32Array;
  readonly p: LlamaViews;
  readonly g: LlamaViews;
  private acts: Acts | null = null;
  private inputs: Int32Array | null = null;
  private adapter: LoraAdapter | null = null;

  constructor(config: LlamaConfig, kernels: Kernels) {
    const r = LlamaConfigSchema.safeParse(config);
    if (!r.success)
      throw new InvalidInputError(`invalid Llama config: ${r.error.issues.map((i) => i.message).join('; ')}`);
    this.config = r.data;
    this.kernels = kernels;
    this.numParams = llamaParamCount(this.config);
    this.params = new Float32Array(this.numParams);
    this.grads = new Float32Array(this.numParams);
    this.p = llamaViews(this.config, this.params);
    this.g = llamaViews(this.config, this.grads);
  }

  /**
   * N(0, 0.02) for matrices and embeddings, residual projections (wo, w_down) scaled by
   * 1/sqrt(2L), unit RMSNorm gains. Deterministic in `seed`.
   */
  init(seed: number): void {
    const rng = new Rng(seed);
    const gauss = () => {
      const u1 = 1 - rng.nextFloat(),
        u2 = rng.nextFloat();
      return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
    };
    const residStd = 0.02 / Math.sqrt(2 * this.config.layers);
    for (const s of llamaSpecs(this.config)) {
      const v = this.params.subarray(s.offset, s.offset + s.size);
      if (s.shape.length === 1) v.fill(1);
      else {
        const std = s.name.endsWith('.wo') || s.name.endsWith('.w_down') ? residStd : 0.02;
        for (let i = 0; i < v.length; i++) v[i] = Math.fround(gauss() * std);
      }
    }
  }

  zeroGrad(): void {
    this.grads.fill(0);
  }

  /** The attached LoRA adapter (null: none). Setting one checks it was built for this model. */
  get lora(): LoraAdapter | null {
    return this.adapter;
  }
  set lora(a: LoraAdapter | null) {
    a?.checkFits('llama', this.config);
    this.adapter = a;
  }

  private ensureActs(B: number, T: number): Acts {
    if (this.acts && this.acts.B === B && this.acts.T === T) return this.acts;
    const { vocabSize: V, dim: C, layers: L } = this.config;
    const N = B * T;
    const f = (n: number) => new Float32Array(n);
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
      rope: { cos: Float32Array.from(cos), sin: Float32Array.from(sin) },
      d: llamaBlockGrads(this.config, B, T, f),
    };
    return this.acts;
  }

  private forwardToLogits(tokens: Int32Array, B: number, T: number): Acts {
    checkTokens(this.config, tokens, B, T);
    const k = this.kernels;
    const { vocabSize: V, dim: C, normEps: eps } = this.config;
    const N = B * T;
    const a = this.ensureActs(B, T);
    const p = this.p;
    this.inputs = tokens;
    embedForward(a.encoded, tokens, p.embed, N, C);
    let x = a.encoded;
    for (let l = 0; l < this.config.layers; l++) {
      const hook = this.adapter?.layerHook(l, k);
      x = llamaBlockForward(k, this.config, p.layers[l], a.layers[l], x, a.scratch, a.rope, B, T, hook);
    }
    k.rmsnormForward(a.xnf, a.rstdf, x, p.norm, N, C, eps);
    k.matmulForward(a.logits, a.xnf, p.head, null, N, C, V);
    return a;
  }

  /** Logits [B*T*V] for `tokens` (a copy, safe to keep). */
  logits(tokens: Int32Array, B: number, T: number): Float32Array {
    return this.forwardToLogits(tokens, B, T).logits.slice();
  }

  /** Mean cross-entropy (nats/token) of predicting `targets` (-1 = ignore), no gradients. */
  loss(tokens: Int32Array, targets: Int32Array, B: number, T: number): number {
    return this.lossImpl(tokens, targets, B, T, false, 1);
  }

  /**
   * Forward + backward: returns the mean loss and ACCUMULATES d(loss)/d(params) into `grads`
   * (zeroGrad() first unless accumulating; `gradScale` scales the contribution).
   */
  forwardBackward(tokens: Int32Array, targets: Int32Array, B: number, T: number, gradScale = 1): number {
    const loss = this.lossImpl(tokens, targets, B, T, true, gradScale);
    this.backward();
    return loss;
  }

  private lossImpl(
    tokens: Int32Array,
    targets: Int32Array,
    B: number,
    T: number,
    withGrad: boolean,
    gradScale: number,
  ): number {
    const valid = countTargets(targets, B * T, this.config.vocabSize);
    const a = this.forwardToLogits(tokens, B, T);
    return meanCrossEntropy(this.kernels, a, targets, B * T, this.config.vocabSize, valid, withGrad, gradScale);
  }

  /** Backward from dlogits (left in the logits buffer by lossImpl). */
  private backward(): void {
    const a = this.acts!,
      k = this.kernels,
      p = this.p,
      g = this.g;
    const tokens = this.inputs!;
    const { B, T } = a;
    const { vocabSize: V, dim: C, layers: L } = this.config;
    const N = B * T;
    const { dres, dC } = a.d;

    dC.fill(0);
    k.matmulBackward(dC, g.head, null, a.logits, a.xnf, p.head, N, C, V);
    dres.fill(0);
    const last = L > 0 ? a.layers[L - 1].res3 : a.encoded;
    k.rmsnormBackward(dres, g.norm, dC, last, p.norm, a.rstdf, N, C);
    for (let l = L - 1; l >= 0; l--) {
      const input = l === 0 ? a.encoded : a.layers[l - 1].res3;
      const hook = this.adapter?.layerHook(l, k);
      llamaBlockBackward(k, this.config, p.layers[l], g.layers[l], a.layers[l], input, a.d, a.rope, B, T, hook);
    }
    embedBackward(g.embed, dres, tokens, N, C);
  }
}
