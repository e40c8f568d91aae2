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
 * lm_head tied to wte, no dropout. The transformer block itself is block.ts (shared with the
 * pipeline stages of stage.ts); this file holds the embeddings, final LayerNorm, head and loss.
 *
 * An optional LoRA adapter (`lora`, lora.ts) is consulted at the block's projections; with
 * none attached (the default) every path is exactly the adapter-free one. `freezeBase` (set by
 * loraTrainable: only the adapter trains) makes backward skip every base weight gradient (dW of
 * the projections and the head, the LayerNorms' and the embeddings'): only d(input) flows through
 * the frozen model, into the adapter, and `grads` is left untouched.
 */
import type { Kernels } from '../kernels/api.js';
import { ModelConfigSchema, type ModelConfig } from './config.js';
import { paramCount, paramSpecs, paramViews, type ParamViews } from './params.js';
import { blockActs, blockBackward, blockForward, blockGrads, type BlockActs, type BlockGrads } from './block.js';
import { Rng } from '../util/rng.js';
import { InvalidInputError } from '../util/errors.js';
import type { LoraAdapter } from './lora.js';
import { checkTokens, countTargets, meanCrossEntropy } from './causal-lm.js';

/**
 * Walks GPT-2's initial values tensor by tensor in layout order (paramSpecs), calling
 * `put(tensorIndex, i, value)` for each: N(0, 0.02) for matrices and embeddings, residual
 * projections scaled by 1/sqrt(2L), zero biases, unit LayerNorm gains. One random stream for the
 * whole model, so a pipeline stage can take its own tensors' values without storing the rest.
 */
export function initValues(
  config: ModelConfig,
  seed: number,
  put: (tensor: number, i: number, x: number) => void,
): void {
  const rng = new Rng(seed);
  const gauss = () => {
    // Box-Muller; u1 in (0, 1] so log is finite.
    const u1 = 1 - rng.nextFloat(),
      u2 = rng.nextFloat();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  };
  const residStd = 0.02 / Math.sqrt(2 * config.layers);
  paramSpecs(config).forEach((s, t) => {
    if (s.name.endsWith('ln1.w') || s.name.endsWith('ln2.w') || s.name === 'lnf.w')
      for (let i = 0; i < s.size; i++) put(t, i, 1);
    else if (s.shape.length === 1) for (let i = 0; i < s.size; i++) put(t, i, 0);
    else {
      const std = s.name.endsWith('attn.proj.w') || s.name.endsWith('mlp.proj.w') ? residStd : 0.02;
      for (let i = 0; i < s.size; i++) put(t, i, Math.fround(gauss() * std));
    }
  });
}

/**
 * Activation views for one (B, T): everything backward needs, plus shared scratch. The activation
 * gradients (BlockGrads) are reused across layers, zeroed before each accumulate.
 */
interface Acts extends BlockGrads {
  B: number;
  T: number;
  encoded: Float32Array;
  layers: BlockActs[];
  lnf: Float32Array;
  lnfMean: Float32Array;
  lnfRstd: Float32Array;
  logits: Float32Array; // overwritten in place by dlogits during training
  losses: Float32Array;
  scratch: Float32Array; // [BT, C] projection output before the residual add
}

export class GPT {
  readonly config: ModelConfig;
  readonly kernels: Kernels;
  readonly numParams: number;
  /** Flat parameters; layout in params.ts. */
  readonly params: Float32Array;
  readonly p: ParamViews;
  private gradsBuf: Float32Array | null = null;
  private gradViews: ParamViews | null = null;
  private acts: Acts | null = null;
  private inputs: Int32Array | null = null;
  private adapter: LoraAdapter | null = null;
  /** Backward forms no base weight gradients (a frozen LoRA base); `grads` stays as it is. */
  freezeBase = false;
  private sink: Float32Array | null = null;

  /**
   * `params`: run on this buffer (e.g. a peer's θ, for evaluation) instead of a fresh one. The
   * gradient buffer is allocated on first use, so a model that only evaluates never holds one
   * (at GPT-2 small, 0.5 GB).
   */
  constructor(config: ModelConfig, kernels: Kernels, params?: Float32Array) {
    this.config = ModelConfigSchema.parse(config);
    this.kernels = kernels;
    this.numParams = paramCount(this.config);
    if (params && params.length !== this.numParams)
      throw new InvalidInputError(`GPT: given ${params.length} parameters, the config has ${this.numParams}`);
    this.params = params ?? new Float32Array(this.numParams);
    this.p = paramViews(this.config, this.params);
  }

  /** Flat gradients, same layout; backward() accumulates into it. */
  get grads(): Float32Array {
    return (this.gradsBuf ??= new Float32Array(this.numParams));
  }

  get g(): ParamViews {
    return (this.gradViews ??= paramViews(this.config, this.grads));
  }

  /**
   * GPT-2 initialisation: N(0, 0.02) for matrices and embeddings, residual projections
   * scaled by 1/sqrt(2L), zero biases, unit LayerNorm gains. Deterministic in `seed`.
   */
  init(seed: number): void {
    const specs = paramSpecs(this.config);
    initValues(this.config, seed, (t, i, x) => {
      this.params[specs[t].offset + i] = x;
    });
  }

  zeroGrad(): void {
    this.grads.fill(0);
  }

  /** The attached LoRA adapter (null: none). Setting one checks it was built for this model. */
  get lora(): LoraAdapter | null {
    return this.adapter;
  }
  set lora(a: LoraAdapter | null) {
    a?.checkFits('gpt2', this.config);
    this.adapter = a;
  }

  private ensureActs(B: number, T: number): Acts {
    if (this.acts && this.acts.B === B && this.acts.T === T) return this.acts;
    const { vocabSize: V, dim: C, layers: L, heads: NH } = this.config;
    const N = B * T;
    const sizes: number[] = [];
    const take = (n: number) => {
      sizes.push(n);
      return sizes.length - 1;
    };
    // Lay out one flat activation buffer, then cut views.
    const plan = {
      encoded: take(N * C),
      layers: Array.from({ length: L }, () => blockActs(B, T, C, NH, take)),
      lnf: take(N * C),
      lnfMean: take(N),
      lnfRstd: take(N),
      logits: take(N * V),
      losses: take(N),
      scratch: take(N * C),
      ...blockGrads(B, T, C, NH, take),
    };
    const total = sizes.reduce((a, b) => a + b, 0);
    const buf = new Float32Array(total);
    const offsets: number[] = [];
    let o = 0;
    for (const s of sizes) {
      offsets.push(o);
      o += s;
    }
    const v = (i: number) => buf.subarray(offsets[i], offsets[i] + sizes[i]);
    const mapObj = <K extends string>(obj: Record<K, number>) =>
      Object.fromEntries(Object.entries(obj).map(([k, i]) => [k, v(i as number)])) as Record<K, Float32Array>;
    const { layers, ...rest } = plan;
    this.acts = { B, T, ...mapObj(rest), layers: layers.map((l) => mapObj(l)) } as Acts;
    return this.acts;
  }

  /** Forward pass to logits [B*T, V] (kept inside the activation buffer). */
  private forwardToLogits(tokens: Int32Array, B: number, T: number): Acts {
    checkTokens(this.config, tokens, B, T);
    const k = this.kernels;
    const { vocabSize: V, dim: C, heads: NH } = this.config;
    const N = B * T;
    const a = this.ensureActs(B, T);
    const p = this.p;
    this.inputs = tokens;
    k.embeddingForward(a.encoded, tokens, p.wte, p.wpe, B, T, C);
    let residual = a.encoded;
    for (let l = 0; l < this.config.layers; l++) {
      const hook = this.adapter?.layerHook(l, k);
      residual = blockForward(k, p.layers[l], a.layers[l], residual, a.scratch, B, T, C, NH, hook);
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

  private lossImpl(
    tokens: Int32Array,
    targets: Int32Array,
    B: number,
    T: number,
    withGrad: boolean,
    gradScale = 1,
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
    const { vocabSize: V, dim: C, heads: NH, layers: L } = this.config;
    const N = B * T;
    const { dC, dres } = a;

    const frozen = this.freezeBase ? { sink: (this.sink ??= new Float32Array(2 * C)) } : undefined;

    dC.fill(0);
    k.matmulBackward(dC, frozen ? null : g.wte, null, a.logits, a.lnf, p.wte, N, C, V);
    dres.fill(0);
    const lastRes = L > 0 ? a.layers[L - 1].res3 : a.encoded;
    const [lnw, lnb] = frozen ? [frozen.sink.subarray(0, C), frozen.sink.subarray(C)] : [g.lnfw, g.lnfb];
    k.layernormBackward(dres, lnw, lnb, dC, lastRes, p.lnfw, a.lnfMean, a.lnfRstd, N, C);

    for (let l = L - 1; l >= 0; l--) {
      const input = l === 0 ? a.encoded : a.layers[l - 1].res3;
      const hook = this.adapter?.layerHook(l, k);
      blockBackward(k, p.layers[l], g.layers[l], a.layers[l], input, a, B, T, C, NH, hook, frozen);
    }
    // The embeddings' gradient is the last use of d(input): nothing to form when frozen.
    if (!frozen) k.embeddingBackward(g.wte, g.wpe, dres, tokens, B, T, C);
  }
}
