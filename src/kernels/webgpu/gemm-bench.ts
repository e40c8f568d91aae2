/**
 * Throughput of the WGSL GEMM (wgsl.ts, through `WebGpuDevice.matmulForward`) on one shape, as
 * nn.Linear computes it: out[M,N] = A[M,K] · W[N,K]ᵀ. The GPU-side counterpart of
 * sgemm-bench.ts: what bench/gpu compares with the GPU's fp32 peak and with PyTorch's matmul.
 *
 * Correct first (docs/WEBGPU.md, bench/gpu/README.md): the output is poisoned (NaN) before the
 * first call, the inputs are random (never zeros), and sampled entries of the result are
 * checked against a float64 dot product on the host: `maxRelErr` is the largest
 * |out − ref| / Σ|a·w| over the samples (fp32 accumulation lands far under 1e-4).
 * Timing: warm-up calls (pipeline compilation) are not timed; then `reps` calls are encoded
 * back to back and the clock stops when the GPU has finished them (`sync`).
 */
import { Rng } from '../../util/rng.js';
import { InvalidInputError } from '../../util/errors.js';
import type { WebGpuDevice } from './device.js';

export interface GemmShape {
  M: number;
  N: number;
  K: number;
}

export interface GemmBenchResult extends GemmShape {
  gflops: number;
  /** Mean milliseconds per call over the timed calls. */
  ms: number;
  reps: number;
  /** Largest relative error of the sampled entries against a float64 reference. */
  maxRelErr: number;
  samples: number;
}

function random(n: number, rng: Rng): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.nextFloat() * 2 - 1;
  return a;
}

/** Times `reps` GEMMs of one shape (after `warmup` untimed ones) and checks `samples` entries. */
export async function webgpuGemmBench(
  dev: WebGpuDevice,
  shape: GemmShape,
  o: { reps?: number; warmup?: number; samples?: number; seed?: number } = {},
): Promise<GemmBenchResult> {
  const { M, N, K } = shape;
  for (const [k, v] of Object.entries(shape))
    if (!Number.isSafeInteger(v) || v < 1) throw new InvalidInputError(`gemm ${k} must be a positive integer`);
  const reps = o.reps ?? 10,
    warmup = o.warmup ?? 2,
    samples = o.samples ?? 64;
  const rng = new Rng(o.seed ?? 7);
  const a = random(M * K, rng),
    w = random(N * K, rng);
  const A = dev.upload(a),
    W = dev.upload(w),
    out = dev.upload(new Float32Array(M * N).fill(NaN));
  try {
    for (let i = 0; i < warmup; i++) dev.matmulForward(out, A, W, null, M, K, N);
    await dev.sync();
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) dev.matmulForward(out, A, W, null, M, K, N);
    await dev.sync();
    const ms = (performance.now() - t0) / reps;
    const got = await dev.read(out);
    let maxRelErr = 0;
    for (let s = 0; s < samples; s++) {
      // The corners first (edge tiles), then random entries.
      const i = s === 0 ? 0 : s === 1 ? M - 1 : rng.nextInt(M),
        j = s === 0 ? 0 : s === 1 ? N - 1 : rng.nextInt(N);
      let ref = 0,
        mag = 0;
      for (let k = 0; k < K; k++) {
        const p = a[i * K + k] * w[j * K + k];
        ref += p;
        mag += Math.abs(p);
      }
      const err = Math.abs(got[i * N + j] - ref) / Math.max(mag, 1e-30);
      // NaN (an unwritten entry) must fail the check, not vanish in Math.max.
      maxRelErr = Number.isNaN(err) ? Infinity : Math.max(maxRelErr, err);
    }
    return { M, N, K, gflops: (2 * M * N * K) / (ms / 1000) / 1e9, ms, reps, maxRelErr, samples };
  } finally {
    for (const t of [A, W, out]) t.buffer.destroy();
  }
}
