/**
 * `node dist/bench/llama.js [--steps N] [--rounds R] [--batch B] [--ref-steps N] [--out FILE]`
 *
 * Llama training throughput (tokens/s of whole steps: zero grads, forward, backward, clip, AdamW
 * over the flat buffer) on one config, side by side in one run:
 *   - `ref`: every kernel in TypeScript (src/kernels/ref.ts + ref-llama.ts), one thread;
 *   - `native matmuls + TS Llama ops`: the native addon for matmuls, the loss and AdamW, with
 *     RMSNorm, RoPE, SwiGLU and GQA attention from the TypeScript reference: how the Llama model
 *     ran before those four ops had native kernels;
 *   - `native fast` and `native deterministic`: every op in the addon (fast: OpenBLAS matmuls;
 *     deterministic: Tessera's fixed-order GEMM), at 1 and 2 threads.
 * Native variants alternate within each of R rounds and keep each one's best median step (a
 * shared machine's neighbours only ever add time); `ref` is slow, so it runs --ref-steps steps
 * once. The config is a small Llama (vocab 4096, ctx 128, dim 256, 4 layers, 8 query heads on 2
 * kv heads of 32, SwiGLU 688, untied): the GPT-2 reference config's widths with Llama's blocks.
 * Prints a Markdown table and writes the JSON (default bench/llama.json).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Kernels } from '../src/kernels/api.js';
import { createNativeKernels, nativeInfo, packageRoot } from '../src/kernels/native.js';
import { createRefKernels } from '../src/kernels/ref.js';
import { Llama, llamaSpecs } from '../src/model/llama.js';
import type { LlamaConfig } from '../src/model/llama-config.js';
import { AdamW, DEFAULT_ADAMW } from '../src/train/adamw.js';
import { Rng } from '../src/util/rng.js';

const args = process.argv.slice(2);
const opt = (name: string, d: number) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) || d : d);
const steps = opt('--steps', 8);
const rounds = opt('--rounds', 2);
const batch = opt('--batch', 4);
const refSteps = opt('--ref-steps', 2);
const out = args.includes('--out') ? args[args.indexOf('--out') + 1] : join(packageRoot(), 'bench', 'llama.json');

const config: LlamaConfig = {
  arch: 'llama',
  vocabSize: 4096,
  ctx: 128,
  dim: 256,
  layers: 4,
  heads: 8,
  kvHeads: 2,
  headDim: 32,
  hidden: 688,
  normEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: null,
  tiedEmbeddings: false,
};
const T = config.ctx;

/** Native matmuls, loss and AdamW with the Llama ops of the TypeScript reference. */
function nativeWithTsLlamaOps(threads: number): Kernels {
  const n = createNativeKernels({ threads, deterministic: false });
  const r = createRefKernels();
  return {
    ...n,
    rmsnormForward: r.rmsnormForward,
    rmsnormBackward: r.rmsnormBackward,
    ropeForward: r.ropeForward,
    ropeBackward: r.ropeBackward,
    swigluForward: r.swigluForward,
    swigluBackward: r.swigluBackward,
    gqaForward: r.gqaForward,
    gqaBackward: r.gqaBackward,
  };
}

interface Variant {
  name: string;
  threads: number;
  make: () => Kernels;
}

/** Median ms of `n` training steps after `warmup`, on fresh weights (seed 1) and fixed batches. */
function measure(k: Kernels, n: number, warmup: number): number {
  const m = new Llama(config, k);
  m.init(1);
  const adam = new AdamW(null, DEFAULT_ADAMW, k, llamaSpecs(config));
  const rng = new Rng(42);
  const batches = [0, 1].map(() => {
    const inputs = new Int32Array(batch * T),
      targets = new Int32Array(batch * T);
    for (let i = 0; i < batch * T; i++) {
      inputs[i] = rng.nextInt(config.vocabSize);
      targets[i] = rng.nextInt(config.vocabSize);
    }
    return { inputs, targets };
  });
  const step = (i: number) => {
    const b = batches[i % 2];
    m.zeroGrad();
    const loss = m.forwardBackward(b.inputs, b.targets, batch, T);
    if (!Number.isFinite(loss)) throw new Error(`non-finite loss ${loss}`);
    adam.update(m.params, m.grads, 3e-4);
  };
  for (let i = 0; i < warmup; i++) step(i);
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    step(i);
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

const variants: Variant[] = [];
for (const threads of [1, 2]) {
  variants.push({ name: 'native matmuls + TS Llama ops', threads, make: () => nativeWithTsLlamaOps(threads) });
  variants.push({ name: 'native fast', threads, make: () => createNativeKernels({ threads, deterministic: false }) });
  variants.push({
    name: 'native deterministic',
    threads,
    make: () => createNativeKernels({ threads, deterministic: true }),
  });
}

const best = variants.map(() => Infinity);
for (let r = 0; r < rounds; r++)
  variants.forEach((v, i) => {
    process.stderr.write(`round ${r + 1}/${rounds}: ${v.name}, ${v.threads} thread(s) ...\n`);
    best[i] = Math.min(best[i], measure(v.make(), steps, 2));
  });
process.stderr.write(`ref (TypeScript kernels), ${refSteps} step(s) ...\n`);
const refMs = measure(createRefKernels(), refSteps, 1);

interface Row {
  kernels: string;
  threads: number;
  tokensPerSec: number;
  stepMsMedian: number;
  vsRef: number;
}
const tps = (ms: number) => (batch * T) / (ms / 1000);
const rows: Row[] = [
  { kernels: 'ref', threads: 1, tokensPerSec: tps(refMs), stepMsMedian: refMs, vsRef: 1 },
  ...variants.map((v, i) => ({
    kernels: v.name,
    threads: v.threads,
    tokensPerSec: tps(best[i]),
    stepMsMedian: best[i],
    vsRef: refMs / best[i],
  })),
];

const fmt = (x: number, d = 0) => x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
const table = [
  '| kernels | threads | tokens/s | median step ms | vs ref |',
  '|---|---:|---:|---:|---:|',
  ...rows.map(
    (r) => `| ${r.kernels} | ${r.threads} | ${fmt(r.tokensPerSec)} | ${fmt(r.stepMsMedian, 1)} | ${fmt(r.vsRef, 1)}× |`,
  ),
];
const m = new Llama(config, createRefKernels());
const report = {
  command: 'node dist/bench/llama.js ' + args.join(' '),
  config,
  params: m.numParams,
  batch,
  steps,
  rounds,
  refSteps,
  native: nativeInfo(),
  rows,
};
process.stdout.write(table.join('\n') + '\n');
writeFileSync(out, JSON.stringify(report, null, 2) + '\n');
process.stderr.write(`wrote ${out}\n`);
