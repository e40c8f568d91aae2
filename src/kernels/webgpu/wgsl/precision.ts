/**
 * The precision variants of the WGSL kernels, all off by default (the f32 kernels are the
 * deterministic mode; these change results in the last bits or more):
 *
 * - f16 STORAGE: an argument of type 'f16' holds binary16 elements, 2 bytes each, little-endian.
 *   On every adapter they are packed two to a u32 and read with unpack2x16float / written in pairs
 *   with pack2x16float; where the device has `shader-f16` (WebGpuDevice option shaderF16) the same
 *   bytes are declared `array<f16>` instead. Arithmetic stays f32 in both: storage halves, compute
 *   does not. Kernels read f16 arguments through `ld_<name>(i)` and write them through
 *   `st2_<name>(i, v0, v1)` (elements i and i + 1, i even), which buildShader defines for the
 *   binding it chose; f16 kernels below are the GEMM (A and/or B in f16), LayerNorm forward and
 *   GELU forward (output in f16): what a model needs to keep its matmul-only activations in f16.
 * - SUBGROUPS: `withSubgroups(def)` replaces the fixed-order workgroup reduction (common.ts REDUCE)
 *   by a subgroup reduction (subgroupAdd / subgroupMax) whose per-subgroup results are then added
 *   in invocation order. Deterministic on one adapter and driver; the subgroup size (4 on
 *   SwiftShader, 32 on NVIDIA, 32 or 64 on AMD) changes the order, so the bits differ by adapter.
 *
 * WGSL rounds f32 -> f16 to either neighbour (implementation-defined), so f16 results are
 * reproducible on one adapter, not across adapters.
 */
import { type KernelDef, ENTRY, REDUCE, RW, WG } from './common.js';
import { GEMM } from './matmul.js';
import { GELU_FN } from './elementwise.js';

const memo = new Map<string, KernelDef>();
function cached(name: string, make: () => KernelDef): KernelDef {
  let d = memo.get(name);
  if (!d) memo.set(name, (d = make()));
  return d;
}

/** GEMM with A and/or B stored as f16 (loads convert to f32 into the same shared tiles). */
export function gemmDef(a16: boolean, b16: boolean): KernelDef {
  if (!a16 && !b16) return GEMM;
  const name = `gemm${a16 ? '_a16' : ''}${b16 ? '_b16' : ''}`;
  return cached(name, () => {
    let body = GEMM.body;
    if (a16) body = body.replace(/\bA\[([^\]]*)\]/g, 'ld_A($1)');
    if (b16) body = body.replace(/\bB\[([^\]]*)\]/g, 'ld_B($1)');
    return {
      ...GEMM,
      name,
      args: GEMM.args.map(([n, t]) => [n, (n === 'A' && a16) || (n === 'B' && b16) ? 'f16' : t] as const),
      body,
    };
  });
}

/** LayerNorm forward with its output in f16 (C even: each invocation writes a pair). */
export const LAYERNORM_FWD_OUT16: KernelDef = {
  name: 'layernorm_fwd_out16',
  args: [
    ['out', 'f16'],
    ['mean', 'f32'],
    ['rstd', 'f32'],
    ['inp', 'f32'],
    ['w', 'f32'],
    ['b', 'f32'],
  ],
  params: [
    ['N', 'u32'],
    ['C', 'u32'],
  ],
  body: `${REDUCE}
${ENTRY(String(RW))}
  let n = flat;
  if (n >= P.N) { return; }
  let x = P.o_inp + n * P.C;
  var s = 0.0;
  for (var c = lid; c < P.C; c += ${RW}u) { s += inp[x + c]; }
  let m = reduce_sum(s, lid) / f32(P.C);
  var v = 0.0;
  for (var c = lid; c < P.C; c += ${RW}u) { let d = inp[x + c] - m; v += d * d; }
  let r = 1.0 / sqrt(reduce_sum(v, lid) / f32(P.C) + 1e-5);
  for (var c2 = lid; 2u * c2 < P.C; c2 += ${RW}u) {
    let c = 2u * c2;
    let y0 = (inp[x + c] - m) * r * w[P.o_w + c] + b[P.o_b + c];
    let y1 = (inp[x + c + 1u] - m) * r * w[P.o_w + c + 1u] + b[P.o_b + c + 1u];
    st2_out(P.o_out + n * P.C + c, y0, y1);
  }
  if (lid == 0u) { mean[P.o_mean + n] = m; rstd[P.o_rstd + n] = r; }
}`,
};

/** GELU forward with its output in f16 (n even: one invocation per pair). */
export const GELU_FWD_OUT16: KernelDef = {
  name: 'gelu_fwd_out16',
  args: [
    ['out', 'f16'],
    ['inp', 'f32'],
  ],
  params: [['n', 'u32']],
  body: `${GELU_FN}
${ENTRY(String(WG))}
  let i = 2u * (flat * ${WG}u + lid);
  if (i >= P.n) { return; }
  let x0 = inp[P.o_inp + i];
  let x1 = inp[P.o_inp + i + 1u];
  st2_out(P.o_out + i, x0 * gelu_s(x0), x1 * gelu_s(x1));
}`,
};

/**
 * The workgroup reduction with subgroup operations: each subgroup reduces with subgroupAdd /
 * subgroupMax (its order is the hardware's), its elected invocation posts the result at its own
 * index and the others post the identity, and every invocation adds the RW posts in index order.
 * Valid whatever invocations the implementation groups into a subgroup (WGSL does not say).
 */
export const REDUCE_SUBGROUPS = `
var<workgroup> red: array<f32, ${RW}>;
fn reduce_sum(v: f32, lid: u32) -> f32 {
  let s = subgroupAdd(v);
  red[lid] = select(0.0, s, subgroupElect());
  workgroupBarrier();
  var r = 0.0;
  for (var i = 0u; i < ${RW}u; i++) { r += red[i]; }
  workgroupBarrier();
  return r;
}
fn reduce_max(v: f32, lid: u32) -> f32 {
  let s = subgroupMax(v);
  red[lid] = select(-3.0e38, s, subgroupElect());
  workgroupBarrier();
  var r = red[0];
  for (var i = 1u; i < ${RW}u; i++) { r = max(r, red[i]); }
  workgroupBarrier();
  return r;
}`;

/** def with its workgroup reductions on subgroups, or def itself if it has none. */
export function withSubgroups(def: KernelDef): KernelDef {
  if (!def.body.includes(REDUCE)) return def;
  return cached(`${def.name}_sg`, () => ({
    ...def,
    name: `${def.name}_sg`,
    enable: [...(def.enable ?? []), 'subgroups'],
    body: def.body.replace(REDUCE, REDUCE_SUBGROUPS),
  }));
}
