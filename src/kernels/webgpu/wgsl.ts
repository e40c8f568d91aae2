/**
 * The WGSL compute kernels of the WebGPU backend: every kernel of `Kernels` (src/kernels/api.ts),
 * forward and backward, with the same layouts and accumulate (+=) semantics.
 *
 * WHY HAND-WRITTEN: no WebGPU library offers training kernels over caller-owned storage buffers
 * with llm.c's layouts, accumulate-into-gradient semantics and deterministic reductions
 * (the WebGPU ML runtimes, e.g. ONNX Runtime Web and TensorFlow.js, are inference graphs or own
 * their tensors, and reduce with float atomics or adapter-chosen splits).
 *
 * DETERMINISM BY CONSTRUCTION: no atomics anywhere. Every output element is written by exactly
 * one invocation, and every sum runs in a fixed order that depends only on the problem shape:
 * sequential loops, or a strided per-thread sum whose RW partials are then added in index order
 * (the workgroup size is a constant of the shader, never the adapter's choice). Two runs
 * on the same adapter and driver give the same bits. Across adapters results may differ in the
 * last bits: WGSL lets the compiler fuse a*b+c into an FMA and leaves exp/log/sqrt accuracy to
 * the implementation.
 *
 * Binding model (see device.ts): each kernel names its arguments; `buildShader` declares one
 * read_write storage binding per distinct GPU buffer among them (two views of one flat buffer,
 * e.g. a weight and its bias inside the parameter buffer, share a binding) and replaces each
 * argument name `x[` with that binding's name. Every argument's element offset `P.o_x` and the
 * shape parameters travel in one uniform struct `P` of 4-byte scalars.
 *
 * Files (this one re-exports them all, so `import * as W from './wgsl.js'` sees every kernel):
 * wgsl/common.ts (KernelDef, workgroup sizes, the reduction, buildShader), wgsl/matmul.ts,
 * wgsl/norm.ts, wgsl/elementwise.ts, wgsl/attention.ts, wgsl/attention-tiled.ts (flash attention with
 * shared K/V tiles), wgsl/loss.ts, wgsl/codec.ts and wgsl/softfloat.ts (the pseudo-gradient codecs).
 */

export * from './wgsl/common.js';
export * from './wgsl/matmul.js';
export * from './wgsl/norm.js';
export * from './wgsl/elementwise.js';
export * from './wgsl/attention.js';
export * from './wgsl/loss.js';
export * from './wgsl/attention-tiled.js';
export * from './wgsl/codec.js';

import type { KernelDef } from './wgsl/common.js';
import { GEMM, COLSUM } from './wgsl/matmul.js';
import { LAYERNORM_FWD, LAYERNORM_BWD_DINP, LAYERNORM_BWD_PARAMS } from './wgsl/norm.js';
import {
  GELU_FWD,
  GELU_BWD,
  EMBEDDING_FWD,
  EMBEDDING_BWD_WTE,
  EMBEDDING_BWD_WPE,
  ADD,
  SCALE,
  SUMSQ,
  ADAMW,
} from './wgsl/elementwise.js';
import {
  ATTENTION_FWD,
  ATTENTION_BWD_Q,
  ATTENTION_BWD_KV,
  ATTENTION_FLASH_FWD,
  ATTENTION_FLASH_BWD_Q,
  ATTENTION_FLASH_BWD_KV,
} from './wgsl/attention.js';
import { CROSSENTROPY, SOFTMAX } from './wgsl/loss.js';
import { ATTENTION_TILED_FWD, ATTENTION_TILED_BWD_Q, ATTENTION_TILED_BWD_KV } from './wgsl/attention-tiled.js';

export const ALL_KERNELS: readonly KernelDef[] = [
  GEMM,
  COLSUM,
  LAYERNORM_FWD,
  LAYERNORM_BWD_DINP,
  LAYERNORM_BWD_PARAMS,
  GELU_FWD,
  GELU_BWD,
  ATTENTION_FWD,
  ATTENTION_BWD_Q,
  ATTENTION_BWD_KV,
  ATTENTION_FLASH_FWD,
  ATTENTION_FLASH_BWD_Q,
  ATTENTION_FLASH_BWD_KV,
  ATTENTION_TILED_FWD,
  ATTENTION_TILED_BWD_Q,
  ATTENTION_TILED_BWD_KV,
  CROSSENTROPY,
  SOFTMAX,
  EMBEDDING_FWD,
  EMBEDDING_BWD_WTE,
  EMBEDDING_BWD_WPE,
  ADD,
  SCALE,
  SUMSQ,
  ADAMW,
];
