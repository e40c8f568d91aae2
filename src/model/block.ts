/**
 * One GPT-2 transformer block, forward and backward, over caller-owned buffers: the single
 * copy of the block arithmetic that both the whole model (gpt.ts) and a pipeline stage
 * (stage.ts, a contiguous range of the same blocks) run, so S stages compute bit for bit
 * what one GPT computes.
 *
 *   res2 = input + attn.proj(attention(attn.qkv(ln1(input))))
 *   res3 = res2 + mlp.proj(gelu(mlp.fc(ln2(res2))))
 *
 * Why shared functions and not "GPT = the one-stage Stage": the two callers own their memory
 * differently (GPT cuts every activation from one reused flat buffer and exposes ParamViews;
 * a Stage keeps activations per in-flight micro-batch and holds only its own tensors), and
 * what they share is exactly the block. Weights are the LayerViews of params.ts; the callers
 * keep the embeddings, the final LayerNorm, the head and the loss.
 *
 * An optional ProjectionHook (a LoRA adapter's layer, lora.ts) is told about each projection
 * (c_attn, attn.c_proj, c_fc, mlp.c_proj, Hugging Face's module names): forward lets it add to the
 * projection's output, backward to the projection's input gradient. Without one the block runs
 * exactly as before.
 *
 * A frozen block (`frozen`, a LoRA base: the adapter trains, the weights do not) forms no weight
 * gradients in backward: the projections' dW and db are skipped (matmulBackward with null), the
 * LayerNorms' go to a throwaway sink, and only d(input) flows, so `gw` is left untouched.
 */
import type { Kernels } from '../kernels/api.js';
import type { LayerViews } from './params.js';
import type { ProjectionHook } from './lora.js';

/** What one block keeps from forward for backward. Every field is a whole view, sized by blockActs. */
export interface BlockActs {
  ln1: Float32Array;
  ln1Mean: Float32Array;
  ln1Rstd: Float32Array;
  qkv: Float32Array;
  atty: Float32Array;
  att: Float32Array;
  res2: Float32Array;
  ln2: Float32Array;
  ln2Mean: Float32Array;
  ln2Rstd: Float32Array;
  fch: Float32Array;
  fchGelu: Float32Array;
  res3: Float32Array;
}

/**
 * Backward scratch, shared by all blocks of a pass. `dres` is the residual-stream gradient:
 * d(res3) on entry to blockBackward, d(input) on return.
 */
export interface BlockGrads {
  dres: Float32Array;
  dC: Float32Array;
  d3C: Float32Array;
  d4Ca: Float32Array;
  d4Cb: Float32Array;
  datt: Float32Array;
}

/**
 * One block's activations for B sequences of T tokens: `make(n)` is called once per field with
 * its float count, in this (the layout) order, and its results are returned under the fields' names.
 */
export function blockActs<X>(
  B: number,
  T: number,
  C: number,
  NH: number,
  make: (n: number) => X,
): { [K in keyof BlockActs]: X } {
  const N = B * T;
  return {
    ln1: make(N * C),
    ln1Mean: make(N),
    ln1Rstd: make(N),
    qkv: make(N * 3 * C),
    atty: make(N * C),
    att: make(B * NH * T * T),
    res2: make(N * C),
    ln2: make(N * C),
    ln2Mean: make(N),
    ln2Rstd: make(N),
    fch: make(N * 4 * C),
    fchGelu: make(N * 4 * C),
    res3: make(N * C),
  };
}

/** The backward scratch for B sequences of T tokens, built as blockActs builds activations. */
export function blockGrads<X>(
  B: number,
  T: number,
  C: number,
  NH: number,
  make: (n: number) => X,
): { [K in keyof BlockGrads]: X } {
  const N = B * T;
  return {
    dres: make(N * C),
    dC: make(N * C),
    d3C: make(N * 3 * C),
    d4Ca: make(N * 4 * C),
    d4Cb: make(N * 4 * C),
    datt: make(B * NH * T * T),
  };
}

/**
 * Forward of one block: reads `input` [N, C], fills `x`, returns x.res3 (the next block's input).
 * `scratch` [N, C] holds each projection's output before its residual add.
 */
export function blockForward(
  k: Kernels,
  w: LayerViews,
  x: BlockActs,
  input: Float32Array,
  scratch: Float32Array,
  B: number,
  T: number,
  C: number,
  NH: number,
  hook?: ProjectionHook,
): Float32Array {
  const N = B * T;
  k.layernormForward(x.ln1, x.ln1Mean, x.ln1Rstd, input, w.ln1w, w.ln1b, N, C);
  k.matmulForward(x.qkv, x.ln1, w.qkvw, w.qkvb, N, C, 3 * C);
  hook?.forward('c_attn', x.qkv, x.ln1, N);
  k.attentionForward(x.atty, x.att, x.qkv, B, T, C, NH);
  k.matmulForward(scratch, x.atty, w.attprojw, w.attprojb, N, C, C);
  hook?.forward('attn.c_proj', scratch, x.atty, N);
  k.add(x.res2, input, scratch, N * C);
  k.layernormForward(x.ln2, x.ln2Mean, x.ln2Rstd, x.res2, w.ln2w, w.ln2b, N, C);
  k.matmulForward(x.fch, x.ln2, w.fcw, w.fcb, N, C, 4 * C);
  hook?.forward('c_fc', x.fch, x.ln2, N);
  k.geluForward(x.fchGelu, x.fch, N * 4 * C);
  k.matmulForward(scratch, x.fchGelu, w.fcprojw, w.fcprojb, N, 4 * C, C);
  hook?.forward('mlp.c_proj', scratch, x.fchGelu, N);
  k.add(x.res3, x.res2, scratch, N * C);
  return x.res3;
}

/**
 * Backward of one block: turns d.dres from d(res3) into d(input) (in place) and ACCUMULATES the
 * block's weight gradients into `gw`. `x` and `input` are what blockForward saw.
 */
export function blockBackward(
  k: Kernels,
  w: LayerViews,
  gw: LayerViews,
  x: BlockActs,
  input: Float32Array,
  d: BlockGrads,
  B: number,
  T: number,
  C: number,
  NH: number,
  hook?: ProjectionHook,
  frozen?: { sink: Float32Array },
): void {
  const N = B * T,
    C4 = 4 * C;
  const { dres, dC, d3C, d4Ca, d4Cb, datt } = d;
  // Frozen: no dW, no db; LayerNorm gradients into the sink [2C] (their cost is O(N·C)).
  const W = (t: Float32Array): Float32Array | null => (frozen ? null : t);
  const lnW = (t: Float32Array): Float32Array => (frozen ? frozen.sink.subarray(0, C) : t);
  const lnB = (t: Float32Array): Float32Array => (frozen ? frozen.sink.subarray(C, 2 * C) : t);
  // res3 = res2 + proj(gelu(fc(ln2(res2)))): dres flows to res2 unchanged, plus the MLP branch.
  d4Ca.fill(0);
  k.matmulBackward(d4Ca, W(gw.fcprojw), W(gw.fcprojb), dres, x.fchGelu, w.fcprojw, N, C4, C);
  hook?.backward('mlp.c_proj', d4Ca, dres, x.fchGelu, N);
  d4Cb.fill(0);
  k.geluBackward(d4Cb, x.fch, d4Ca, N * C4);
  dC.fill(0);
  k.matmulBackward(dC, W(gw.fcw), W(gw.fcb), d4Cb, x.ln2, w.fcw, N, C, C4);
  hook?.backward('c_fc', dC, d4Cb, x.ln2, N);
  k.layernormBackward(dres, lnW(gw.ln2w), lnB(gw.ln2b), dC, x.res2, w.ln2w, x.ln2Mean, x.ln2Rstd, N, C);
  // res2 = input + proj(attn(qkv(ln1(input)))).
  dC.fill(0);
  k.matmulBackward(dC, W(gw.attprojw), W(gw.attprojb), dres, x.atty, w.attprojw, N, C, C);
  hook?.backward('attn.c_proj', dC, dres, x.atty, N);
  d3C.fill(0);
  k.attentionBackward(d3C, datt, dC, x.qkv, x.att, B, T, C, NH);
  dC.fill(0);
  k.matmulBackward(dC, W(gw.qkvw), W(gw.qkvb), d3C, x.ln1, w.qkvw, N, C, 3 * C);
  hook?.backward('c_attn', dC, d3C, x.ln1, N);
  k.layernormBackward(dres, lnW(gw.ln1w), lnB(gw.ln1b), dC, input, w.ln1w, x.ln1Mean, x.ln1Rstd, N, C);
}
