/**
 * The Llama family's kernels on a WebGPU device: the Llama part of the `Kernels` contract
 * (src/kernels/api.ts: RMSNorm, RoPE, SwiGLU, grouped-query attention) with GpuTensors in place of
 * Float32Arrays, the same argument order, shapes and += semantics. The WGSL is llama-wgsl.ts; the
 * host side is only argument checks and dispatch through WebGpuDevice (which owns buffers,
 * pipelines and submission, device.ts). Like the device's own kernel methods these only ENCODE
 * work; `dev.read()` / `dev.sync()` wait for it.
 */
import { InvalidInputError } from '../../util/errors.js';
import type { GpuTensor, WebGpuDevice } from './device.js';
import {
  GQA_BWD_KV,
  GQA_BWD_Q,
  GQA_FWD,
  RMSNORM_BWD_DINP,
  RMSNORM_BWD_PARAMS,
  RMSNORM_FWD,
  ROPE,
  SWIGLU_BWD,
  SWIGLU_FWD,
} from './llama-wgsl.js';
import { WG } from './wgsl.js';

function need(kernel: string, ...checks: [GpuTensor, number][]): void {
  for (const [t, n] of checks) {
    if (t.dtype !== 'f32') throw new InvalidInputError(`${kernel}: every tensor must be f32`);
    if (t.length < n) throw new InvalidInputError(`${kernel}: a tensor has ${t.length} elements, needs ${n}`);
    if (n > 0xffffffff) throw new InvalidInputError(`${kernel}: ${n} elements exceed 32-bit indexing`);
  }
}

function dims(kernel: string, ...xs: [string, number][]): void {
  for (const [name, x] of xs)
    if (!Number.isInteger(x) || x < 0) throw new InvalidInputError(`${kernel}: ${name} must be an integer >= 0`);
}

function gqaShape(kernel: string, B: number, T: number, NH: number, KV: number, hd: number): void {
  dims(kernel, ['B', B], ['T', T], ['NH', NH], ['KV', KV], ['hd', hd]);
  if (NH < 1 || KV < 1 || NH % KV !== 0)
    throw new InvalidInputError(`${kernel}: NH=${NH} is not a multiple of KV=${KV}`);
}

export class WebGpuLlamaKernels {
  constructor(readonly dev: WebGpuDevice) {}

  /** out = inp · rsqrt(mean(inp²) + eps) · weight per row of C; rstd[N] kept for backward. */
  rmsnormForward(
    out: GpuTensor,
    rstd: GpuTensor,
    inp: GpuTensor,
    weight: GpuTensor,
    N: number,
    C: number,
    eps: number,
  ): void {
    dims('rmsnormForward', ['N', N], ['C', C]);
    if (!(eps > 0 && eps <= 1)) throw new InvalidInputError(`rmsnormForward: eps must be in (0, 1], got ${eps}`);
    need('rmsnormForward', [out, N * C], [rstd, N], [inp, N * C], [weight, C]);
    this.dev.launch(RMSNORM_FWD, [out, rstd, inp, weight], { N, C, eps }, N);
  }

  /** dinp += ...; dweight += ... (see ref-llama.ts rmsnormBackward). */
  rmsnormBackward(
    dinp: GpuTensor,
    dweight: GpuTensor,
    dout: GpuTensor,
    inp: GpuTensor,
    weight: GpuTensor,
    rstd: GpuTensor,
    N: number,
    C: number,
  ): void {
    dims('rmsnormBackward', ['N', N], ['C', C]);
    need('rmsnormBackward', [dinp, N * C], [dweight, C], [dout, N * C], [inp, N * C], [weight, C], [rstd, N]);
    this.dev.launch(RMSNORM_BWD_DINP, [dinp, dout, inp, weight, rstd], { N, C }, N);
    this.dev.launch(RMSNORM_BWD_PARAMS, [dweight, dout, inp, rstd], { N, C }, Math.ceil(C / WG));
  }

  private rope(
    what: string,
    x: GpuTensor,
    cos: GpuTensor,
    sin: GpuTensor,
    B: number,
    T: number,
    nh: number,
    hd: number,
    sgn: number,
  ): void {
    dims(what, ['B', B], ['T', T], ['nh', nh], ['hd', hd]);
    if (hd % 2 !== 0) throw new InvalidInputError(`${what}: hd must be even`);
    const half = hd / 2;
    need(what, [x, B * T * nh * hd], [cos, T * half], [sin, T * half]);
    const n = B * T * nh * half;
    this.dev.launch(ROPE, [x, cos, sin], { BT: B * T, T, nh, half, sgn }, Math.ceil(n / WG));
  }

  /** RoPE in place on x [B, T, nh, hd]; cos, sin [T' ≥ T, hd/2] (the host's tables, as float32). */
  ropeForward(x: GpuTensor, cos: GpuTensor, sin: GpuTensor, B: number, T: number, nh: number, hd: number): void {
    this.rope('ropeForward', x, cos, sin, B, T, nh, hd, 1);
  }

  /** The transpose of ropeForward, in place on the gradient. */
  ropeBackward(dx: GpuTensor, cos: GpuTensor, sin: GpuTensor, B: number, T: number, nh: number, hd: number): void {
    this.rope('ropeBackward', dx, cos, sin, B, T, nh, hd, -1);
  }

  /** out = silu(gate) ⊙ up. */
  swigluForward(out: GpuTensor, gate: GpuTensor, up: GpuTensor, n: number): void {
    dims('swigluForward', ['n', n]);
    need('swigluForward', [out, n], [gate, n], [up, n]);
    this.dev.launch(SWIGLU_FWD, [out, gate, up], { n }, Math.ceil(n / WG));
  }

  /** dgate += dout·up·σ(g)(1 + g(1 − σ(g))); dup += dout·silu(g). */
  swigluBackward(dgate: GpuTensor, dup: GpuTensor, dout: GpuTensor, gate: GpuTensor, up: GpuTensor, n: number): void {
    dims('swigluBackward', ['n', n]);
    need('swigluBackward', [dgate, n], [dup, n], [dout, n], [gate, n], [up, n]);
    this.dev.launch(SWIGLU_BWD, [dgate, dup, dout, gate, up], { n }, Math.ceil(n / WG));
  }

  /** Causal GQA: q, out [B,T,NH,hd]; k, v [B,T,KV,hd]; att [B,NH,T,T] keeps the probabilities. */
  gqaForward(
    out: GpuTensor,
    att: GpuTensor,
    q: GpuTensor,
    k: GpuTensor,
    v: GpuTensor,
    B: number,
    T: number,
    NH: number,
    KV: number,
    hd: number,
  ): void {
    gqaShape('gqaForward', B, T, NH, KV, hd);
    const nq = B * T * NH * hd,
      nk = B * T * KV * hd;
    need('gqaForward', [out, nq], [att, B * NH * T * T], [q, nq], [k, nk], [v, nk]);
    const p = { B, T, NH, KV, hd, scale: 1 / Math.sqrt(hd) };
    this.dev.launch(GQA_FWD, [out, att, q, k, v], p, B * NH * T);
  }

  /** dq, dk, dv ACCUMULATE (a kv head sums its group's query heads); datt [B,NH,T,T] is scratch. */
  gqaBackward(
    dq: GpuTensor,
    dk: GpuTensor,
    dv: GpuTensor,
    datt: GpuTensor,
    dout: GpuTensor,
    q: GpuTensor,
    k: GpuTensor,
    v: GpuTensor,
    att: GpuTensor,
    B: number,
    T: number,
    NH: number,
    KV: number,
    hd: number,
  ): void {
    gqaShape('gqaBackward', B, T, NH, KV, hd);
    const nq = B * T * NH * hd,
      nk = B * T * KV * hd,
      na = B * NH * T * T;
    need('gqaBackward', [dq, nq], [dk, nk], [dv, nk], [datt, na], [dout, nq], [q, nq], [k, nk], [v, nk], [att, na]);
    const p = { B, T, NH, KV, hd, scale: 1 / Math.sqrt(hd) };
    this.dev.launch(GQA_BWD_Q, [dq, datt, dout, k, v, att], p, B * NH * T);
    this.dev.launch(GQA_BWD_KV, [dk, dv, datt, dout, q, att], p, B * KV * T);
  }
}
