/**
 * `node dist/bench/webgpu-compute.js [--adapter auto|swiftshader] [--steps N] [--out FILE]`
 *
 * Training tokens/s of the same GPT on the CPU (native kernels, fast mode, 2 threads) and on a
 * WebGPU adapter (src/model/gpt-webgpu.ts), in one run: whole optimizer steps, the numbers
 * behind `tessera bench compute [--device webgpu]`. With --adapter swiftshader (the default here,
 * where there is no GPU) the GPU is SwiftShader's CPU emulation, so the config is a small one
 * (vocab 512, ctx 32, dim 64, 2 layers, 2 heads, batch 4) and the number says what the emulator
 * does, not what a GPU does. Writes the JSON (default bench/webgpu-compute.json) and prints a table.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadKernels } from '../src/kernels/index.js';
import { packageRoot } from '../src/kernels/native.js';
import { WebGpuDevice } from '../src/kernels/webgpu/device.js';
import { benchCompute, benchComputeWebGpu } from '../src/train/bench-compute.js';

const args = process.argv.slice(2);
const arg = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const steps = Number(arg('--steps')) || 5;
const adapter = arg('--adapter') === 'auto' ? 'auto' : 'swiftshader';
const out = arg('--out') ?? join(packageRoot(), 'bench', 'webgpu-compute.json');
const model = { vocabSize: 512, ctx: 32, dim: 64, layers: 2, heads: 2 };
const batch = 4;

const k = loadKernels({});
process.stderr.write(`cpu (${k.name}) ...\n`);
const cpu = benchCompute(k, { model, batch, threads: 2, steps: steps * 4, warmup: 2, deterministic: false });
const dev = await WebGpuDevice.create({ adapter });
process.stderr.write(`webgpu (${dev.adapterInfo.description}) ...\n`);
const gpu = await benchComputeWebGpu(dev, { model, batch, steps, warmup: 1 });
dev.destroy();

const fmt = (x: number, d = 0) => x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
const table = [
  '| device | tokens/s | median step ms | model GFLOP/s |',
  '|---|---:|---:|---:|',
  `| cpu (${cpu.kernels}, 2 threads) | ${fmt(cpu.tokensPerSec)} | ${fmt(cpu.stepMsMedian, 1)} | ${fmt(cpu.modelGflops, 2)} |`,
  `| webgpu (${dev.adapterInfo.description}) | ${fmt(gpu.tokensPerSec)} | ${fmt(gpu.stepMsMedian, 1)} | ${fmt(gpu.modelGflops, 2)} |`,
];
const report = {
  command: 'node dist/bench/webgpu-compute.js ' + args.join(' '),
  model,
  batch,
  adapter: dev.adapterInfo,
  cpu,
  webgpu: gpu,
  table,
};
writeFileSync(out, JSON.stringify(report, null, 2) + '\n');
process.stdout.write(table.join('\n') + `\n\nwrote ${out}\n`);
