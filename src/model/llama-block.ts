/**
 * One Llama decoder layer, forward and backward, over caller-owned buffers: the single copy of
 * the layer arithmetic that both the whole model (llama.ts) and a pipeline stage (llama-stage.ts,
 * a contiguous range of the same layers) run, so S stages compute bit for bit what one Llama
 * computes. The Llama counterpart of block.ts (GPT-2's block).
 *
 *   res2 = x + o_proj(gqa(rope(q_proj(rms1(x))), rope(k_proj(rms1(x))), v_proj(rms1(x))))
 *   res3 = res2 + down_proj(silu(gate_proj(rms2(res2))) ⊙ up_proj(rms2(res2)))
 *
 * Every op goes through the Kernels interface. An optional ProjectionHook (a LoRA adapter's
 * layer) is told about each projection under Hugging Face's module names (q_proj, k_proj, v_proj
 * before RoPE, o_proj, gate_proj, up_proj, down_proj); without one the layer runs exactly as
 * before.
 */
import type { Kernels } from '../kernels/api.js';
import type { LlamaConfig } from './llama-config.js';
import type { ProjectionHook } from './lora.js';

/** One layer's weights (or gradients): views into a flat buffer. */
export interface LlamaLayerViews {
  attnNorm: Float32Array;
  wq: Float32Array;
  wk: Float32Array;
  wv: Float32Array;
  wo: Float32Array;
  mlpNorm: Float32Array;
  wGate: Float32Array;
  wUp: Float32Array;
  wDown: Float32Array;
}

/** The layer's tensor names after `layers.<l>.`, in layout order (llamaSpecs). */
export const LLAMA_LAYER_TENSORS = [
  'attn_norm',
  'wq',
  'wk',
  'wv',
  'wo',
  'mlp_norm',
  'w_gate',
  'w_up',
  'w_down',
] as const;

/** Views of layer `l` from a name → view lookup (names as llamaSpecs gives them; host or GPU views). */
export function llamaLayerViews<X = Float32Array>(
  l: number,
  get: (name: string) => X,
): { [K in keyof LlamaLayerViews]: X } {
  const [attnNorm, wq, wk, wv, wo, mlpNorm, wGate, wUp, wDown] = LLAMA_LAYER_TENSORS.map((n) =>
    get(`layers.${l}.${n}`),
  );
  return { attnNorm, wq, wk, wv, wo, mlpNorm, wGate, wUp, wDown };
}

/** What one layer keeps from forward for backward. */
export interface LlamaLayerActs {
  xn1: Float32Array; // rms1(x) [N, C]
  rstd1: Float32Array; // [N]
  q: Float32Array; // rotated [N, NH·hd]
  k: Float32Array; // rotated [N, KV·hd]
  v: Float32Array; // [N, KV·hd]
  att: Float32Array; // [B, NH, T, T]
  atty: Float32Array; // [N, NH·hd]
  res2: Float32Array; // [N, C]
  xn2: Float32Array;
  rstd2: Float32Array;
  gate: Float32Array; // [N, H]
  up: Float32Array; // [N, H]
  hmid: Float32Array; // silu(gate) ⊙ up [N, H]
  res3: Float32Array; // [N, C], the next layer's input
}

/** Backward scratch shared by the layers of a pass; `dres` is d(res3) on entry, d(x) on return. */
export interface LlamaBlockGrads {
  dres: Float32Array;
  dC: Float32Array;
  dq: Float32Array;
  dk: Float32Array;
  dv: Float32Array;
  datt: Float32Array;
  datty: Float32Array;
  dH: Float32Array;
  dgate: Float32Array;
  dup: Float32Array;
}

/** The RoPE tables of a pass: cos, sin [T, headDim/2] (llama-config.ts ropeTables, as float32). */
export interface RopeTables {
  cos: Float32Array;
  sin: Float32Array;
}

type Dims = Pick<LlamaConfig, 'dim' | 'heads' | 'kvHeads' | 'headDim' | 'hidden'>;

/** One layer's activations for B sequences of T tokens, each field made by `make(n)`. */
export function llamaLayerActs<X>(
  cfg: Dims,
  B: number,
  T: number,
  make: (n: number) => X,
): { [K in keyof LlamaLayerActs]: X } {
  const { dim: C, heads: NH, kvHeads: KV, headDim: hd, hidden: H } = cfg;
  const N = B * T;
  return {
    xn1: make(N * C),
    rstd1: make(N),
    q: make(N * NH * hd),
    k: make(N * KV * hd),
    v: make(N * KV * hd),
    att: make(B * NH * T * T),
    atty: make(N * NH * hd),
    res2: make(N * C),
    xn2: make(N * C),
    rstd2: make(N),
    gate: make(N * H),
    up: make(N * H),
    hmid: make(N * H),
    res3: make(N * C),
  };
}

/** The backward scratch for B sequences of T tokens, built as llamaLayerActs builds activations. */
export function llamaBlockGrads<X>(
  cfg: Dims,
  B: number,
  T: number,
  make: (n: number) => X,
): { [K in keyof LlamaBlockGrads]: X } {
  const { dim: C, heads: NH, kvHeads: KV, headDim: hd, hidden: H } = cfg;
  const N = B * T;
  return {
    dres: make(N * C),
    dC: make(N * C),
    dq: make(N * NH * hd),
    dk: make(N * KV * hd),
    dv: make(N * KV * hd),
    datt: make(B * NH * T * T),
    datty: make(N * NH * hd),
    dH: make(N * H),
    dgate: make(N * H),
    dup: make(N * H),
  };
}

/**
 * Forward of one layer: reads `x` [N, C], fills `s`, returns s.res3. `scratch` [N, C] holds each
 * output projection's result before its residual add.
 */
export function llamaBlockForward(
  k: Kernels,
  cfg: Dims & Pick<LlamaConfig, 'normEps'>,
  w: LlamaLayerViews,
  s: LlamaLayerActs,
  x: Float32Array,
  scratch: Float32Array,
  rope: RopeTables,
  B: number,
  T: number,
  hook?: ProjectionHook,
): Float32Array {
  const { dim: C, heads: NH, kvHeads: KV, headDim: hd, hidden: H, normEps: eps } = cfg;
  const N = B * T,
    Q = NH * hd,
    K = KV * hd;
  k.rmsnormForward(s.xn1, s.rstd1, x, w.attnNorm, N, C, eps);
  k.matmulForward(s.q, s.xn1, w.wq, null, N, C, Q);
  k.matmulForward(s.k, s.xn1, w.wk, null, N, C, K);
  k.matmulForward(s.v, s.xn1, w.wv, null, N, C, K);
  if (hook) {
    hook.forward('q_proj', s.q, s.xn1, N);
    hook.forward('k_proj', s.k, s.xn1, N);
    hook.forward('v_proj', s.v, s.xn1, N);
  }
  k.ropeForward(s.q, rope.cos, rope.sin, B, T, NH, hd);
  k.ropeForward(s.k, rope.cos, rope.sin, B, T, KV, hd);
  k.gqaForward(s.atty, s.att, s.q, s.k, s.v, B, T, NH, KV, hd);
  k.matmulForward(scratch, s.atty, w.wo, null, N, Q, C);
  hook?.forward('o_proj', scratch, s.atty, N);
  k.add(s.res2, x, scratch, N * C);
  k.rmsnormForward(s.xn2, s.rstd2, s.res2, w.mlpNorm, N, C, eps);
  k.matmulForward(s.gate, s.xn2, w.wGate, null, N, C, H);
  k.matmulForward(s.up, s.xn2, w.wUp, null, N, C, H);
  if (hook) {
    hook.forward('gate_proj', s.gate, s.xn2, N);
    hook.forward('up_proj', s.up, s.xn2, N);
  }
  k.swigluForward(s.hmid, s.gate, s.up, N * H);
  k.matmulForward(scratch, s.hmid, w.wDown, null, N, H, C);
  hook?.forward('down_proj', scratch, s.hmid, N);
  k.add(s.res3, s.res2, scratch, N * C);
  return s.res3;
}

/**
 * Backward of one layer: turns d.dres from d(res3) into d(x) (in place) and ACCUMULATES the
 * layer's weight gradients into `gw`. `s` and `x` are what llamaBlockForward saw.
 */
export function llamaBlockBackward(
  k: Kernels,
  cfg: Dims,
  w: LlamaLayerViews,
  gw: LlamaLayerViews,
  s: LlamaLayerActs,
  x: Float32Array,
  d: LlamaBlockGrads,
  rope: RopeTables,
  B: number,
  T: number,
  hook?: ProjectionHook,
): void {
  const { dim: C, heads: NH, kvHeads: KV, headDim: hd, hidden: H } = cfg;
  const N = B * T,
    Q = NH * hd,
    K = KV * hd;
  const { dres, dC, dq, dk, dv, datt, datty, dH, dgate, dup } = d;
  // res3 = res2 + down(swiglu(gate(xn2), up(xn2))): dres reaches res2 unchanged, plus the MLP.
  dH.fill(0);
  k.matmulBackward(dH, gw.wDown, null, dres, s.hmid, w.wDown, N, H, C);
  hook?.backward('down_proj', dH, dres, s.hmid, N);
  dgate.fill(0);
  dup.fill(0);
  k.swigluBackward(dgate, dup, dH, s.gate, s.up, N * H);
  dC.fill(0);
  k.matmulBackward(dC, gw.wGate, null, dgate, s.xn2, w.wGate, N, C, H);
  k.matmulBackward(dC, gw.wUp, null, dup, s.xn2, w.wUp, N, C, H);
  if (hook) {
    hook.backward('gate_proj', dC, dgate, s.xn2, N);
    hook.backward('up_proj', dC, dup, s.xn2, N);
  }
  k.rmsnormBackward(dres, gw.mlpNorm, dC, s.res2, w.mlpNorm, s.rstd2, N, C);
  // res2 = x + wo(attention(rope(wq xn1), rope(wk xn1), wv xn1)).
  datty.fill(0);
  k.matmulBackward(datty, gw.wo, null, dres, s.atty, w.wo, N, Q, C);
  hook?.backward('o_proj', datty, dres, s.atty, N);
  dq.fill(0);
  dk.fill(0);
  dv.fill(0);
  k.gqaBackward(dq, dk, dv, datt, datty, s.q, s.k, s.v, s.att, B, T, NH, KV, hd);
  k.ropeBackward(dq, rope.cos, rope.sin, B, T, NH, hd);
  k.ropeBackward(dk, rope.cos, rope.sin, B, T, KV, hd);
  dC.fill(0);
  k.matmulBackward(dC, gw.wq, null, dq, s.xn1, w.wq, N, C, Q);
  k.matmulBackward(dC, gw.wk, null, dk, s.xn1, w.wk, N, C, K);
  k.matmulBackward(dC, gw.wv, null, dv, s.xn1, w.wv, N, C, K);
  if (hook) {
    hook.backward('q_proj', dC, dq, s.xn1, N);
    hook.backward('k_proj', dC, dk, s.xn1, N);
    hook.backward('v_proj', dC, dv, s.xn1, N);
  }
  k.rmsnormBackward(dres, gw.attnNorm, dC, x, w.attnNorm, s.rstd1, N, C);
}
