/**
 * One GPT-2 transformer block, forward and backward, on a WebGpuDevice: block.ts's arithmetic call
 * for call, with GpuTensors. The one copy that both the whole model on the GPU (gpt-webgpu.ts)
 * and a pipeline stage on the GPU (stage-webgpu.ts) run, as block.ts is for gpt.ts and stage.ts.
 *
 * Attention is flash attention by default, with K/V tiles shared across query rows in workgroup
 * memory ('flash'; `att` holds the per-row log-sum-exp [B,NH,T] and `datt` the backward's row
 * dots: O(T) memory per row); 'flash-row' is the earlier one-workgroup-per-row form (same
 * contract, no K/V reuse); 'stored' keeps the probabilities [B,NH,T,T] as the CPU kernels do.
 *
 * f16 storage (off by default): the activations that only feed matmuls (ln1, ln2, the GELU
 * output) are kept as binary16, written so by LayerNorm and GELU and read by the GEMMs, with all
 * arithmetic in f32 (src/kernels/webgpu/wgsl/precision.ts).
 */
import type { GpuTensor, WebGpuDevice } from '../kernels/webgpu/device.js';
import { blockActs, blockGrads, type BlockActs, type BlockGrads } from './block.js';

export type Attention = 'flash' | 'flash-row' | 'stored';

/** The activations that only feed matmuls: binary16 under f16 storage. */
const HALF = new Set(['ln1', 'ln2', 'fchGelu']);

/** One layer's weights (or gradients) as views of a flat device buffer. */
export interface GpuLayer {
  ln1w: GpuTensor;
  ln1b: GpuTensor;
  qkvw: GpuTensor;
  qkvb: GpuTensor;
  attprojw: GpuTensor;
  attprojb: GpuTensor;
  ln2w: GpuTensor;
  ln2b: GpuTensor;
  fcw: GpuTensor;
  fcb: GpuTensor;
  fcprojw: GpuTensor;
  fcprojb: GpuTensor;
}
export type GpuBlockActs = { [K in keyof BlockActs]: GpuTensor };
export type GpuBlockGrads = { [K in keyof BlockGrads]: GpuTensor };

/** Layer l's tensors by their params.ts names (`get` returns the view of one named tensor). */
export function gpuLayer(l: number, get: (name: string) => GpuTensor): GpuLayer {
  const p = `h.${l}.`;
  return {
    ln1w: get(p + 'ln1.w'),
    ln1b: get(p + 'ln1.b'),
    qkvw: get(p + 'attn.qkv.w'),
    qkvb: get(p + 'attn.qkv.b'),
    attprojw: get(p + 'attn.proj.w'),
    attprojb: get(p + 'attn.proj.b'),
    ln2w: get(p + 'ln2.w'),
    ln2b: get(p + 'ln2.b'),
    fcw: get(p + 'mlp.fc.w'),
    fcb: get(p + 'mlp.fc.b'),
    fcprojw: get(p + 'mlp.proj.w'),
    fcprojb: get(p + 'mlp.proj.b'),
  };
}

/** One block's activations on the device (flash attention keeps one float per row, not T). */
export function allocBlockActs(
  d: WebGpuDevice,
  B: number,
  T: number,
  C: number,
  NH: number,
  attention: Attention,
  f16Storage = false,
): GpuBlockActs {
  const sizes = blockActs(B, T, C, NH, (n) => n);
  return Object.fromEntries(
    Object.entries(sizes).map(([k, n]) => [
      k,
      f16Storage && HALF.has(k) ? d.alloc(n, 'f16') : d.alloc(attention !== 'stored' && k === 'att' ? B * NH * T : n),
    ]),
  ) as GpuBlockActs;
}

/** The backward scratch on the device, shared by all blocks of a pass. */
export function allocBlockGrads(
  d: WebGpuDevice,
  B: number,
  T: number,
  C: number,
  NH: number,
  attention: Attention,
): GpuBlockGrads {
  const sizes = blockGrads(B, T, C, NH, (n) => n);
  return Object.fromEntries(
    Object.entries(sizes).map(([k, n]) => [k, d.alloc(attention !== 'stored' && k === 'datt' ? B * NH * T : n)]),
  ) as GpuBlockGrads;
}

/** Releases tensors made by allocBlockActs / allocBlockGrads (after the work using them is submitted). */
export function freeTensors(ts: Record<string, GpuTensor>): void {
  for (const t of Object.values(ts)) t.buffer.destroy();
}

/** Forward of one block (block.ts blockForward): reads `input` [N, C], fills `x`, returns x.res3. */
export function blockForwardGpu(
  d: WebGpuDevice,
  w: GpuLayer,
  x: GpuBlockActs,
  input: GpuTensor,
  scratch: GpuTensor,
  B: number,
  T: number,
  C: number,
  NH: number,
  attention: Attention,
): GpuTensor {
  const N = B * T;
  d.layernormForward(x.ln1, x.ln1Mean, x.ln1Rstd, input, w.ln1w, w.ln1b, N, C);
  d.matmulForward(x.qkv, x.ln1, w.qkvw, w.qkvb, N, C, 3 * C);
  if (attention === 'flash') d.attentionForwardTiled(x.atty, x.att, x.qkv, B, T, C, NH);
  else if (attention === 'flash-row') d.attentionForwardFlash(x.atty, x.att, x.qkv, B, T, C, NH);
  else d.attentionForward(x.atty, x.att, x.qkv, B, T, C, NH);
  d.matmulForward(scratch, x.atty, w.attprojw, w.attprojb, N, C, C);
  d.add(x.res2, input, scratch, N * C);
  d.layernormForward(x.ln2, x.ln2Mean, x.ln2Rstd, x.res2, w.ln2w, w.ln2b, N, C);
  d.matmulForward(x.fch, x.ln2, w.fcw, w.fcb, N, C, 4 * C);
  d.geluForward(x.fchGelu, x.fch, N * 4 * C);
  d.matmulForward(scratch, x.fchGelu, w.fcprojw, w.fcprojb, N, 4 * C, C);
  d.add(x.res3, x.res2, scratch, N * C);
  return x.res3;
}

/**
 * Backward of one block (block.ts blockBackward): turns g.dres from d(res3) into d(input) in place
 * and ACCUMULATES the block's weight gradients into `gw`.
 */
export function blockBackwardGpu(
  d: WebGpuDevice,
  w: GpuLayer,
  gw: GpuLayer,
  x: GpuBlockActs,
  input: GpuTensor,
  g: GpuBlockGrads,
  B: number,
  T: number,
  C: number,
  NH: number,
  attention: Attention,
): void {
  const N = B * T;
  const { dres, dC, d3C, d4Ca, d4Cb, datt } = g;
  d.zero(d4Ca);
  d.matmulBackward(d4Ca, gw.fcprojw, gw.fcprojb, dres, x.fchGelu, w.fcprojw, N, 4 * C, C);
  d.zero(d4Cb);
  d.geluBackward(d4Cb, x.fch, d4Ca, N * 4 * C);
  d.zero(dC);
  d.matmulBackward(dC, gw.fcw, gw.fcb, d4Cb, x.ln2, w.fcw, N, C, 4 * C);
  d.layernormBackward(dres, gw.ln2w, gw.ln2b, dC, x.res2, w.ln2w, x.ln2Mean, x.ln2Rstd, N, C);
  d.zero(dC);
  d.matmulBackward(dC, gw.attprojw, gw.attprojb, dres, x.atty, w.attprojw, N, C, C);
  d.zero(d3C);
  if (attention === 'flash') d.attentionBackwardTiled(d3C, datt, dC, x.qkv, x.atty, x.att, B, T, C, NH);
  else if (attention === 'flash-row') d.attentionBackwardFlash(d3C, datt, dC, x.qkv, x.atty, x.att, B, T, C, NH);
  else d.attentionBackward(d3C, datt, dC, x.qkv, x.att, B, T, C, NH);
  d.zero(dC);
  d.matmulBackward(dC, gw.qkvw, gw.qkvb, d3C, x.ln1, w.qkvw, N, C, 3 * C);
  d.layernormBackward(dres, gw.ln1w, gw.ln1b, dC, input, w.ln1w, x.ln1Mean, x.ln1Rstd, N, C);
}
