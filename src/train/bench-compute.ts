/**
 * Training throughput of the compute core on synthetic tokens: the numbers behind
 * `tessera bench compute`. Measures whole optimizer steps (forward, backward, clip, AdamW)
 * after warm-up steps, at a given thread count and kernel mode, or on a WebGPU device.
 */
import { GPT } from '../model/gpt.js';
import { AdamW, DEFAULT_ADAMW } from './adamw.js';
import { Trainer } from './trainer.js';
import type { Kernels } from '../kernels/api.js';
import type { ModelConfig } from '../model/config.js';
import { Rng } from '../util/rng.js';
import { createRefKernels } from '../kernels/ref.js';
import type { WebGpuDevice } from '../kernels/webgpu/device.js';
import { WebGpuGPT } from '../model/gpt-webgpu.js';

export interface ComputeBenchOptions {
  model: ModelConfig;
  batch: number;
  threads: number;
  steps: number;
  warmup: number;
  deterministic: boolean;
}

export interface ComputeBenchResult {
  tokensPerSec: number;
  stepMs: number;
  /** Median step time, robust to a noisy neighbour. */
  stepMsMedian: number;
  threads: number;
  deterministic: boolean;
  kernels: string;
  params: number;
  /** Model FLOPs per step (6 * params * tokens + attention), and the achieved rate. */
  modelGflops: number;
}

export function benchCompute(k: Kernels, o: ComputeBenchOptions): ComputeBenchResult {
  k.setThreads(o.threads);
  k.setDeterministic(o.deterministic);
  const gpt = new GPT(o.model, k);
  gpt.init(1);
  const opt = new AdamW(o.model, DEFAULT_ADAMW, k);
  const B = o.batch,
    T = o.model.ctx;
  const tr = new Trainer(
    gpt,
    opt,
    { kind: 'constant', maxLr: 3e-4, minLrFrac: 0, warmupSteps: 0, totalSteps: 1, decayFrac: 0.2 },
    B,
    T,
  );
  const rng = new Rng(42);
  const batch = () => {
    const inputs = new Int32Array(B * T),
      targets = new Int32Array(B * T);
    for (let i = 0; i < B * T; i++) {
      inputs[i] = rng.nextInt(o.model.vocabSize);
      targets[i] = rng.nextInt(o.model.vocabSize);
    }
    return { inputs, targets };
  };
  const batches = [batch(), batch()];
  for (let i = 0; i < o.warmup; i++) tr.step([batches[i % 2]]);
  const times: number[] = [];
  for (let i = 0; i < o.steps; i++) {
    const t0 = performance.now();
    tr.step([batches[i % 2]]);
    times.push(performance.now() - t0);
  }
  const total = times.reduce((a, b) => a + b, 0);
  const sorted = times.slice().sort((a, b) => a - b);
  const stepMs = total / times.length;
  const { dim: C, layers: L } = o.model;
  const flops = 6 * gpt.numParams * B * T + 6 * L * B * T * T * C; // causal attention ~ half of 12*L*T*C per token
  return {
    tokensPerSec: (B * T) / (stepMs / 1000),
    stepMs,
    stepMsMedian: sorted[Math.floor(sorted.length / 2)],
    threads: o.threads,
    deterministic: o.deterministic,
    kernels: k.name,
    params: gpt.numParams,
    modelGflops: flops / (stepMs / 1000) / 1e9,
  };
}

/**
 * The same measurement on a WebGPU device (src/model/gpt-webgpu.ts): whole optimizer steps
 * (zero grads, forward, backward, clip, AdamW) with the weights and optimizer state on the GPU.
 * Each step ends on its two host reads (the losses and the gradient norm), so the time is the
 * GPU's, not the encoding's. Initial weights are the CPU GPT's (`init(1)`).
 */
export async function benchComputeWebGpu(
  dev: WebGpuDevice,
  o: Omit<ComputeBenchOptions, 'threads' | 'deterministic'> & {
    /** Stop timing once this many seconds have passed (after at least two timed steps). */
    maxSeconds?: number;
  },
): Promise<ComputeBenchResult & { steps: number; lossFirst: number; lossLast: number }> {
  const cpu = new GPT(o.model, createRefKernels());
  cpu.init(1);
  const gpt = new WebGpuGPT(dev, o.model);
  gpt.setParams(cpu.params);
  const B = o.batch,
    T = o.model.ctx;
  const rng = new Rng(42);
  const batch = () => {
    const inputs = new Int32Array(B * T),
      targets = new Int32Array(B * T);
    for (let i = 0; i < B * T; i++) {
      inputs[i] = rng.nextInt(o.model.vocabSize);
      targets[i] = rng.nextInt(o.model.vocabSize);
    }
    return { inputs, targets };
  };
  const batches = [batch(), batch()];
  let lossFirst = NaN,
    lossLast = NaN;
  for (let i = 0; i < o.warmup; i++) {
    lossLast = await gpt.trainStep(batches[i % 2].inputs, batches[i % 2].targets, B, T, 3e-4);
    if (i === 0) lossFirst = lossLast;
  }
  const times: number[] = [];
  const began = performance.now();
  for (let i = 0; i < o.steps; i++) {
    if (o.maxSeconds !== undefined && i >= 2 && performance.now() - began > o.maxSeconds * 1000) break;
    const t0 = performance.now();
    lossLast = await gpt.trainStep(batches[i % 2].inputs, batches[i % 2].targets, B, T, 3e-4);
    times.push(performance.now() - t0);
    if (Number.isNaN(lossFirst)) lossFirst = lossLast;
  }
  const stepMs = times.reduce((a, b) => a + b, 0) / times.length;
  const sorted = times.slice().sort((a, b) => a - b);
  const { dim: C, layers: L } = o.model;
  const flops = 6 * gpt.numParams * B * T + 6 * L * B * T * T * C;
  return {
    tokensPerSec: (B * T) / (stepMs / 1000),
    stepMs,
    stepMsMedian: sorted[Math.floor(sorted.length / 2)],
    threads: 0,
    deterministic: true,
    kernels: 'webgpu',
    params: gpt.numParams,
    modelGflops: flops / (stepMs / 1000) / 1e9,
    steps: times.length,
    lossFirst,
    lossLast,
  };
}
