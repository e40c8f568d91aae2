/**
 * The kernel interface: every numeric hot path of the GPT, forward and backward.
 *
 * Two implementations exist: `native` (C++/N-API + OpenBLAS, multithreaded) and `ref`
 * (plain TypeScript, the readable specification and the loud fallback; the Llama family's part
 * is specified in ref-llama.ts). Tests check one against the other. Layouts follow llm.c: row-major, activations are [N, C] with N = B*T,
 * linear weights are [OC, C] (PyTorch nn.Linear layout), attention packs qkv as [B, T, 3C].
 *
 * Conventions:
 * - Backward kernels ACCUMULATE (+=) into parameter gradients and into `dinp` buffers,
 *   so that callers can sum contributions (residual stream, tied embeddings) without copies.
 * - No kernel allocates on the hot path; scratch space is passed in.
 * - `Float32Array` arguments may be views (subarray) into one flat buffer.
 */
export interface Kernels {
  readonly name: 'native' | 'ref';

  /** Set worker threads for all kernels (including BLAS). */
  setThreads(n: number): void;
  getThreads(): number;
  /**
   * Deterministic mode: matmul uses Tessera's own fixed-order GEMM instead of BLAS, and every
   * reduction uses a fixed chunking independent of the thread count, so results are bitwise
   * identical across runs, thread counts and x86-64 machines.
   */
  setDeterministic(on: boolean): void;
  getDeterministic(): boolean;

  /** out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias[OC] (bias may be null). */
  matmulForward(
    out: Float32Array,
    inp: Float32Array,
    weight: Float32Array,
    bias: Float32Array | null,
    N: number,
    C: number,
    OC: number,
  ): void;
  /**
   * dinp[N,C] += dout[N,OC] @ weight[OC,C]; dweight[OC,C] += dout^T @ inp; dbias[OC] += sum_n dout.
   * dbias may be null; so may dweight (a frozen weight, e.g. a LoRA base: only dinp is formed).
   */
  matmulBackward(
    dinp: Float32Array,
    dweight: Float32Array | null,
    dbias: Float32Array | null,
    dout: Float32Array,
    inp: Float32Array,
    weight: Float32Array,
    N: number,
    C: number,
    OC: number,
  ): void;

  /** out = LN(inp) * weight + bias, per row of C; stores mean[N] and rstd[N] for backward. eps = 1e-5. */
  layernormForward(
    out: Float32Array,
    mean: Float32Array,
    rstd: Float32Array,
    inp: Float32Array,
    weight: Float32Array,
    bias: Float32Array,
    N: number,
    C: number,
  ): void;
  /** dinp += ..., dweight += ..., dbias += ... */
  layernormBackward(
    dinp: Float32Array,
    dweight: Float32Array,
    dbias: Float32Array,
    dout: Float32Array,
    inp: Float32Array,
    weight: Float32Array,
    mean: Float32Array,
    rstd: Float32Array,
    N: number,
    C: number,
  ): void;

  /** GELU, tanh approximation (GPT-2's "gelu_new"). */
  geluForward(out: Float32Array, inp: Float32Array, n: number): void;
  /** dinp += gelu'(inp) * dout */
  geluBackward(dinp: Float32Array, inp: Float32Array, dout: Float32Array, n: number): void;

  /**
   * Fused causal self-attention. inp is qkv [B,T,3C] (q, k, v each C = NH*hs wide).
   * out [B,T,C]; att [B,NH,T,T] keeps the softmax probabilities for backward (upper triangle zero).
   * Scale is 1/sqrt(hs).
   */
  attentionForward(
    out: Float32Array,
    att: Float32Array,
    inp: Float32Array,
    B: number,
    T: number,
    C: number,
    NH: number,
  ): void;
  /** dinp [B,T,3C] += ...; datt is scratch [B,NH,T,T] (overwritten). */
  attentionBackward(
    dinp: Float32Array,
    datt: Float32Array,
    dout: Float32Array,
    inp: Float32Array,
    att: Float32Array,
    B: number,
    T: number,
    C: number,
    NH: number,
  ): void;

  /**
   * Fused softmax + cross-entropy over logits [N, V].
   * Writes losses[N] (nats). If `dlogits` is non-null, writes (overwrites) dlogits = (softmax - onehot) * dlossScale;
   * dlogits may alias logits. Targets < 0 are ignored (loss 0, grad 0).
   */
  crossEntropyForwardBackward(
    losses: Float32Array,
    dlogits: Float32Array | null,
    logits: Float32Array,
    targets: Int32Array,
    N: number,
    V: number,
    dlossScale: number,
  ): void;
  /** probs[N,V] = softmax(logits[N,V]) row by row (for sampling and evaluation). */
  softmax(probs: Float32Array, logits: Float32Array, N: number, V: number): void;

  /** out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:] */
  embeddingForward(
    out: Float32Array,
    tokens: Int32Array,
    wte: Float32Array,
    wpe: Float32Array,
    B: number,
    T: number,
    C: number,
  ): void;
  /** dwte[tok] += dout; dwpe[t] += dout (in token order, so the result is deterministic). */
  embeddingBackward(
    dwte: Float32Array,
    dwpe: Float32Array,
    dout: Float32Array,
    tokens: Int32Array,
    B: number,
    T: number,
    C: number,
  ): void;

  /** out = a + b, elementwise (out may alias a or b). */
  add(out: Float32Array, a: Float32Array, b: Float32Array, n: number): void;

  /** Sum of squares of x (accumulated in double, fixed chunk order). */
  sumSquares(x: Float32Array): number;
  /** x *= s */
  scale(x: Float32Array, s: number): void;

  /**
   * AdamW step over equal-length slices (bias-corrected, decoupled weight decay):
   * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p).
   * `step` is 1-based.
   */
  adamw(
    params: Float32Array,
    grads: Float32Array,
    m: Float32Array,
    v: Float32Array,
    lr: number,
    beta1: number,
    beta2: number,
    eps: number,
    weightDecay: number,
    step: number,
  ): void;

  // ---- The Llama family (RMSNorm, RoPE, SwiGLU, grouped-query attention); spec: ref-llama.ts ----

  /** out = inp · rsqrt(mean(inp²) + eps) · weight per row of C; stores rstd[N] for backward. */
  rmsnormForward(
    out: Float32Array,
    rstd: Float32Array,
    inp: Float32Array,
    weight: Float32Array,
    N: number,
    C: number,
    eps: number,
  ): void;
  /** dinp += r·w⊙dout − inp·r³/C·Σ(dout⊙w⊙inp); dweight += Σ_n dout⊙inp·r. */
  rmsnormBackward(
    dinp: Float32Array,
    dweight: Float32Array,
    dout: Float32Array,
    inp: Float32Array,
    weight: Float32Array,
    rstd: Float32Array,
    N: number,
    C: number,
  ): void;
  /**
   * Rotary position embedding, in place on x [B, T, nh, hd] (Hugging Face's rotate_half pairs:
   * i with i + hd/2); cos, sin [T' ≥ T, hd/2], the config's tables (llama-config.ts ropeTables:
   * theta and scaling applied on the host in float64, rounded to float32 once).
   */
  ropeForward(
    x: Float32Array,
    cos: Float32Array,
    sin: Float32Array,
    B: number,
    T: number,
    nh: number,
    hd: number,
  ): void;
  /** The transpose of ropeForward (rotation by −angle), in place on the gradient. */
  ropeBackward(
    dx: Float32Array,
    cos: Float32Array,
    sin: Float32Array,
    B: number,
    T: number,
    nh: number,
    hd: number,
  ): void;
  /** out = silu(gate) ⊙ up (out may alias gate or up). */
  swigluForward(out: Float32Array, gate: Float32Array, up: Float32Array, n: number): void;
  /** dgate += dout·up·σ(g)(1 + g(1 − σ(g))); dup += dout·silu(g). */
  swigluBackward(
    dgate: Float32Array,
    dup: Float32Array,
    dout: Float32Array,
    gate: Float32Array,
    up: Float32Array,
    n: number,
  ): void;
  /**
   * Causal grouped-query attention: q, out [B, T, NH, hd]; k, v [B, T, KV, hd] (NH a multiple
   * of KV; query head h reads kv head floor(h / (NH/KV))); scale 1/sqrt(hd); att [B, NH, T, T]
   * keeps the probabilities (upper triangle zero) for backward.
   */
  gqaForward(
    out: Float32Array,
    att: Float32Array,
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    B: number,
    T: number,
    NH: number,
    KV: number,
    hd: number,
  ): void;
  /** dq, dk, dv ACCUMULATE (a kv head sums its group's query heads); datt is scratch [B, NH, T, T]. */
  gqaBackward(
    dq: Float32Array,
    dk: Float32Array,
    dv: Float32Array,
    datt: Float32Array,
    dout: Float32Array,
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    att: Float32Array,
    B: number,
    T: number,
    NH: number,
    KV: number,
    hd: number,
  ): void;
}
