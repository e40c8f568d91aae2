/**
 * Raw OpenBLAS sgemm throughput on the reference model's largest matmul (the tied lm_head:
 * 2048 tokens × 4096 vocab × 256 dim, as nn.Linear computes it: B transposed), the peak our
 * training step is compared against.
 */
import type { Kernels } from './api.js';
import { sgemmBench } from './native.js';

export function sgemmGflops(
  k: Kernels,
  threads: number,
  shape = { M: 2048, N: 4096, K: 256 },
): { gflops: number; shape: typeof shape } {
  if (k.name !== 'native') return { gflops: NaN, shape };
  return { gflops: sgemmBench(shape.M, shape.N, shape.K, 10, { threads, transB: true }), shape };
}
