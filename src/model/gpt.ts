/**
 * GPT-2, forward and backward, written out by hand in the style of llm.c's train_gpt2.c.
 *
 * Why by hand: no JS library trains a GPT over caller-owned flat buffers with native kernels;
 * autograd frameworks would hide the memory layout that the swarm, verification and
 * checkpoints rely on. Every tensor is a view into one of four flat Float32Arrays:
 * params, grads (same layout, see params.ts), activations and activation-gradients.
 *
 * Architecture (exactly GPT-2): learned position embeddings, pre-LayerNorm with bias,
 * tanh-GELU MLP of width 4C, causal multi-head attention with packed qkv, final LayerNorm,
 * lm_head tied to wte, no dropout.
 */
import type { Kernels } from '../kernels/api.js';
import { ModelConfigSchema, type ModelConfig } from './config.js';
import { paramCount, paramSpecs, paramViews, type ParamViews } from './params.js';
import { Rng } from '../util/rng.js';
import { InvalidInputError } from '../util/errors.js';

/**
 * Walks GPT-2's initial values tensor by tensor in layout order (paramSpecs), calling
 * `put(tensorIndex, i, value)` for each: N(0, 0.02) for matrices and embeddings, residual
 * projections scaled by 1/sqrt(2L), zero biases, unit LayerNorm gains. One random stream for the
 * whole model, so a pipeline stage can take its own tensors' values without storing the rest.
 */
export function initValues(config: ModelConfig, seed: number, put: (tensor: number, i: number, x: number) => void): void {
  const rng = new Rng(seed);
  const gauss = () => {
    // Box-Muller; u1 in (0, 1] so log is finite.
    const u1 = 1 - rng.nextFloat(), u2 = rng.nextFloat();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  };
  const residStd = 0.02 / Math.sqrt(2 * config.layers);
  paramSpecs(config).forEach((s, t) => {
    if (s.name.endsWith('ln1.w') || s.name.endsWith('ln2.w') || s.name === 'lnf.w') for (let i = 0; i < s.size; i++) put(t, i, 1);
    else if (s.shape.length === 1) for (let i = 0; i < s.size; i++) put(t, i, 0);
    else {
      const std = s.name.endsWith('attn.proj.w') || s.name.endsWith('mlp.proj.w') ? residStd : 0.02;
      for (let i = 0; i < s.size; i++) put(t, i, Math.fround(gauss() * std));
    }
  });
}

/** Activation views for one (B, T): everything backward needs, plus shared scratch. */
interface Acts {
  B: number; T: number;
  encoded: Float32Array;
  layers: {
    ln1: Float32Array; ln1Mean: Float32Array; ln1Rstd: Float32Array;
    qkv: Float32Array; atty: Float32Array; att: Float32Array;
    res2: Float32Array;
    ln2: Float32Array; ln2Mean: Float32Array; ln2Rstd: Float32Array;
    fch: Float32Array; fchGelu: Float32Array;
    res3: Float32Array;
  }[];
  lnf: Float32Array; lnfMean: Float32Array; lnfRstd: Float32Array;
  logits: Float32Array; // overwritten in place by dlogits during training
  losses: Float32Array;
  scratch: Float32Array; // [BT, C] projection output before the residual add
  // activation gradients (reused across layers, zeroed before each accumulate)
  dres: Float32Array; dC: Float32Array; d3C: Float32Array; d4Ca: Float32Array; d4Cb: Float32Array; datt: Float32Array;
}

export class GPT {
  readonly config: ModelConfig;
  readonly kernels: Kernels;
  readonly numParams: number;
  /** Flat parameters; layout in params.ts. */
  readonly params: Float32Array;
  /** Flat gradients, same layout; backward() accumulates into it. */
  readonly grads: Float32Array;
  readonly p: ParamViews;
  readonly g: ParamViews;
  private acts: Acts | null = null;
  private inputs: Int32Array | null = null;

  constructor(config: ModelConfig, kernels: Kernels) {
    this.config = ModelConfigSchema.parse(config);
    this.kernels = kernels;
    this.numParams = paramCount(this.config);
    this.params = new Float32Array(this.numParams);
    this.grads = new Float32Array(this.numParams);
    this.p = paramViews(this.config, this.params);
    this.g = paramViews(this.config, this.grads);
  }

  /**
   * GPT-2 initialisation: N(0, 0.02) for matrices and embeddings, residual projections
   * scaled by 1/sqrt(2L), zero biases, unit LayerNorm gains. Deterministic in `seed`.
   */
  init(seed: number): void {
    const specs = paramSpecs(this.config);
    initValues(this.config, seed, (t, i, x) => { this.params[specs[t].offset + i] = x; });
  }

  zeroGrad(): void { this.grads.fill(0); }

  private ensureActs(B: number, T: number): Acts {
    if (this.acts && this.acts.B === B && this.acts.T === T) return this.acts;
    const { vocabSize: V, dim: C, layers: L, heads: NH } = this.config;
    const N = B * T;
    const sizes: number[] = [];
    const take = (n: number) => { sizes.push(n); return sizes.length - 1; };
    // Lay out one flat activation buffer, then cut views.
    const plan = {
      encoded: take(N * C),
      layers: Array.from({ length: L }, () => ({
        ln1: take(N * C), ln1Mean: take(N), ln1Rstd: take(N), qkv: take(N * 3 * C), atty: take(N * C),
        att: take(B * NH * T * T), res2: take(N * C), ln2: take(N * C), ln2Mean: take(N), ln2Rstd: take(N),
        fch: take(N * 4 * C), fchGelu: take(N * 4 * C), res3: take(N * C),
      })),
      lnf: take(N * C), lnfMean: take(N), lnfRstd: take(N), logits: take(N * V), losses: take(N),
      scratch: take(N * C),
      dres: take(N * C), dC: take(N * C), d3C: take(N * 3 * C), d4Ca: take(N * 4 * C), d4Cb: take(N * 4 * C),
      datt: take(B * NH * T * T),
    };
    const total = sizes.reduce((a, b) => a + b, 0);
    const buf = new Float32Array(total);
    const offsets: number[] = [];
    let o = 0;
    for (const s of sizes) { offsets.push(o); o += s; }
    const v = (i: number) => buf.subarray(offsets[i], offsets[i] + sizes[i]);
    const mapObj = <K extends string>(obj: Record<K, number>) =>
      Object.fromEntries(Object.entries(obj).map(([k, i]) => [k, v(i as number)])) as Record<K, Float32Array>;
    const { layers, ...rest } = plan;
    this.acts = { B, T, ...mapObj(rest), layers: layers.map((l) => mapObj(l)) } as Acts;
    return this.acts;
  }

  private checkTokens(tokens: Int32Array, B: number, T: number): void {
    const { vocabSize: V, ctx } = this.config;
    if (!Number.isInteger(B) || !Number.isInteger(T) || B < 1 || T < 1) throw new InvalidInputError(`bad batch shape B=${B} T=${T}`);
    if (T > ctx) throw new InvalidInputError(`sequence length ${T} exceeds the model context ${ctx}`);
    if (tokens.length !== B * T) throw new InvalidInputError(`expected ${B * T} tokens, got ${tokens.length}`);
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i];
      if (t < 0 || t >= V) throw new InvalidInputError(`token id ${t} at position ${i} is outside the vocabulary [0, ${V})`);
    }
  }

  /** Forward pass to logits [B*T, V] (kept inside the activation buffer). */
  private forwardToLogits(tokens: Int32Array, B: number, T: number): Acts {
    this.checkTokens(tokens, B, T);
    const k = this.kernels;
    const { vocabSize: V, dim: C, heads: NH } = this.config;
    const N = B * T;
    const a = this.ensureActs(B, T);
    const p = this.p;
    this.inputs = tokens;
    k.embeddingForward(a.encoded, tokens, p.wte, p.wpe, B, T, C);
    let residual = a.encoded;
    for (let l = 0; l < this.config.layers; l++) {
      const w = p.layers[l], x = a.layers[l];
      k.layernormForward(x.ln1, x.ln1Mean, x.ln1Rstd, residual, w.ln1w, w.ln1b, N, C);
      k.matmulForward(x.qkv, x.ln1, w.qkvw, w.qkvb, N, C, 3 * C);
      k.attentionForward(x.atty, x.att, x.qkv, B, T, C, NH);
      k.matmulForward(a.scratch, x.atty, w.attprojw, w.attprojb, N, C, C);
      k.add(x.res2, residual, a.scratch, N * C);
      k.layernormForward(x.ln2, x.ln2Mean, x.ln2Rstd, x.res2, w.ln2w, w.ln2b, N, C);
      k.matmulForward(x.fch, x.ln2, w.fcw, w.fcb, N, C, 4 * C);
      k.geluForward(x.fchGelu, x.fch, N * 4 * C);
      k.matmulForward(a.scratch, x.fchGelu, w.fcprojw, w.fcprojb, N, 4 * C, C);
      k.add(x.res3, x.res2, a.scratch, N * C);
      residual = x.res3;
    }
    k.layernormForward(a.lnf, a.lnfMean, a.lnfRstd, residual, p.lnfw, p.lnfb, N, C);
    k.matmulForward(a.logits, a.lnf, p.wte, null, N, C, V);
    return a;
  }

  /** Logits [B*T*V] for `tokens` (a copy, safe to keep). */
  logits(tokens: Int32Array, B: number, T: number): Float32Array {
    return this.forwardToLogits(tokens, B, T).logits.slice();
  }

  /** Mean cross-entropy (nats/token) of predicting `targets` (-1 = ignore), no gradients. */
  loss(tokens: Int32Array, targets: Int32Array, B: number, T: number): number {
    return this.lossImpl(tokens, targets, B, T, false);
  }

  /**
   * Forward + backward: returns the mean loss and ACCUMULATES d(loss)/d(params) into `grads`
   * (call zeroGrad() first unless accumulating micro-batches; `gradScale` divides the
   * contribution, e.g. 1/microSteps).
   */
  forwardBackward(tokens: Int32Array, targets: Int32Array, B: number, T: number, gradScale = 1): number {
    const loss = this.lossImpl(tokens, targets, B, T, true, gradScale);
    this.backward();
    return loss;
  }

  private lossImpl(tokens: Int32Array, targets: Int32Array, B: number, T: number, withGrad: boolean, gradScale = 1): number {
    if (targets.length !== B * T) throw new InvalidInputError(`expected ${B * T} targets, got ${targets.length}`);
    const V = this.config.vocabSize;
    let valid = 0;
    for (let i = 0; i < targets.length; i++) {
      const t = targets[i];
      if (t >= V || t < -1) throw new InvalidInputError(`target id ${t} at position ${i} is outside the vocabulary`);
      if (t >= 0) valid++;
    }
    const a = this.forwardToLogits(tokens, B, T);
    const N = B * T;
    const scale = valid > 0 ? gradScale / valid : 0;
    this.kernels.crossEntropyForwardBackward(a.losses, withGrad ? a.logits : null, a.logits, targets, N, V, scale);
    let sum = 0;
    for (let i = 0; i < N; i++) sum += a.losses[i];
    return valid > 0 ? sum / valid : 0;
  }

  /** Backward from dlogits (left in the logits buffer by lossImpl). */
  private backward(): void {
    const a = this.acts!, k = this.kernels, p = this.p, g = this.g;
    const tokens = this.inputs!;
    const { B, T } = a;
    const { vocabSize: V, dim: C, heads: NH, layers: L } = this.config;
    const N = B * T;
    const C4 = 4 * C;
    const dC = a.dC.subarray(0, N * C);
    const dres = a.dres;

    dC.fill(0);
    k.matmulBackward(dC, g.wte, null, a.logits, a.lnf, p.wte, N, C, V);
    dres.fill(0);
    const lastRes = L > 0 ? a.layers[L - 1].res3 : a.encoded;
    k.layernormBackward(dres, g.lnfw, g.lnfb, dC, lastRes, p.lnfw, a.lnfMean, a.lnfRstd, N, C);

    for (let l = L - 1; l >= 0; l--) {
      const w = p.layers[l], gw = g.layers[l], x = a.layers[l];
      const residual = l === 0 ? a.encoded : a.layers[l - 1].res3;
      // res3 = res2 + proj(gelu(fc(ln2(res2)))): dres flows to res2 unchanged, plus the MLP branch.
      a.d4Ca.fill(0);
      k.matmulBackward(a.d4Ca, gw.fcprojw, gw.fcprojb, dres, x.fchGelu, w.fcprojw, N, C4, C);
      a.d4Cb.fill(0);
      k.geluBackward(a.d4Cb, x.fch, a.d4Ca, N * C4);
      dC.fill(0);
      k.matmulBackward(dC, gw.fcw, gw.fcb, a.d4Cb, x.ln2, w.fcw, N, C, C4);
      k.layernormBackward(dres, gw.ln2w, gw.ln2b, dC, x.res2, w.ln2w, x.ln2Mean, x.ln2Rstd, N, C);
      // res2 = residual + proj(attn(qkv(ln1(residual)))).
      dC.fill(0);
      k.matmulBackward(dC, gw.attprojw, gw.attprojb, dres, x.atty, w.attprojw, N, C, C);
      a.d3C.fill(0);
      k.attentionBackward(a.d3C, a.datt, dC, x.qkv, x.att, B, T, C, NH);
      dC.fill(0);
      k.matmulBackward(dC, gw.qkvw, gw.qkvb, a.d3C, x.ln1, w.qkvw, N, C, 3 * C);
      k.layernormBackward(dres, gw.ln1w, gw.ln1b, dC, residual, w.ln1w, x.ln1Mean, x.ln1Rstd, N, C);
    }
    k.embeddingBackward(g.wte, g.wpe, dres, tokens, B, T, C);
  }
}
