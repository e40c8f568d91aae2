/**
 * `node dist/bench/webgpu-precision.js [--adapter auto|swiftshader] [--steps N] [--out FILE]`
 *
 * What the WebGPU precision flags do to training: the same GPT, initial weights and batches,
 * N AdamW steps with each flag and with plain f32 (the deterministic kernels), side by side in
 * one run. Flags (src/kernels/webgpu/wgsl/precision.ts): f16 storage of the matmul-only
 * activations (pack2x16float, every adapter), subgroup reductions (where the adapter offers
 * `subgroups`), both, and `shader-f16` storage (only where the adapter offers `shader-f16`;
 * SwiftShader does not, so that row says "not offered"). Reported per flag: the loss curve's
 * largest and final difference from f32, and the median step time (on SwiftShader a CPU
 * emulation's time, not a GPU's). Data: sequences from a fixed random Markov chain (each token
 * has two likely successors) so the loss falls well below ln V within the run.
 * Writes the JSON (default bench/webgpu-precision.json) and prints a table.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../src/kernels/native.js';
import { WebGpuDevice, type WebGpuDeviceOptions } from '../src/kernels/webgpu/device.js';
import { WebGpuGPT, type WebGpuGptOptions } from '../src/model/gpt-webgpu.js';
import { GPT } from '../src/model/gpt.js';
import { createRefKernels } from '../src/kernels/ref.js';
import { DEFAULT_ADAMW } from '../src/train/adamw.js';
import { uniform } from '../src/util/rng.js';

const args = process.argv.slice(2);
const arg = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const steps = Number(arg('--steps')) || 40;
const adapter = arg('--adapter') === 'auto' ? 'auto' : 'swiftshader';
const out = arg('--out') ?? join(packageRoot(), 'bench', 'webgpu-precision.json');
const model = { vocabSize: 64, ctx: 32, dim: 64, layers: 2, heads: 4 };
const B = 4,
  T = model.ctx,
  lr = 3e-3;

// Batches from a Markov chain: token v is followed by succ[v][0] (p 0.7) or succ[v][1] (p 0.3).
const rng = uniform(1234);
const succ = Array.from({ length: model.vocabSize }, () => [
  Math.floor(rng() * model.vocabSize),
  Math.floor(rng() * model.vocabSize),
]);
const batches = Array.from({ length: steps }, () => {
  const seq = new Int32Array(B * (T + 1));
  for (let b = 0; b < B; b++) {
    let v = Math.floor(rng() * model.vocabSize);
    for (let t = 0; t <= T; t++) {
      seq[b * (T + 1) + t] = v;
      v = succ[v][rng() < 0.7 ? 0 : 1];
    }
  }
  const x = new Int32Array(B * T),
    y = new Int32Array(B * T);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++) {
      x[b * T + t] = seq[b * (T + 1) + t];
      y[b * T + t] = seq[b * (T + 1) + t + 1];
    }
  return { x, y };
});
const init = new GPT(model, createRefKernels());
init.init(42);

interface Arm {
  name: string;
  device: Pick<WebGpuDeviceOptions, 'subgroups' | 'shaderF16'>;
  model: WebGpuGptOptions;
}
const ARMS: Arm[] = [
  { name: 'f32 (deterministic kernels)', device: {}, model: {} },
  { name: 'f16 storage (pack2x16float)', device: {}, model: { f16Storage: true } },
  { name: 'subgroup reductions', device: { subgroups: true }, model: {} },
  { name: 'f16 storage + subgroups', device: { subgroups: true }, model: { f16Storage: true } },
  { name: 'shader-f16 storage', device: { shaderF16: true }, model: { f16Storage: true } },
];

interface Result {
  name: string;
  offered: boolean;
  losses: number[];
  stepMsMedian: number;
  maxLossDiff?: number;
  finalLossDiff?: number;
}
const results: Result[] = [];
let adapterInfo: WebGpuDevice['adapterInfo'] | null = null;
for (const arm of ARMS) {
  let dev: WebGpuDevice;
  try {
    dev = await WebGpuDevice.create({ adapter, ...arm.device });
  } catch (err) {
    process.stderr.write(`${arm.name}: not offered (${(err as Error).message})\n`);
    results.push({ name: arm.name, offered: false, losses: [], stepMsMedian: NaN });
    continue;
  }
  adapterInfo = dev.adapterInfo;
  const g = new WebGpuGPT(dev, model, DEFAULT_ADAMW, 'flash', arm.model);
  g.setParams(init.params);
  const losses: number[] = [],
    ms: number[] = [];
  const t0 = performance.now();
  for (let s = 0; s < steps; s++) {
    const a = performance.now();
    losses.push(await g.trainStep(batches[s].x, batches[s].y, B, T, lr));
    ms.push(performance.now() - a);
    if (s % 10 === 9 || s === steps - 1) {
      const rate = (s + 1) / ((performance.now() - t0) / 1000);
      process.stderr.write(
        `${arm.name}: step ${s + 1}/${steps}, loss ${losses[s].toFixed(4)}, ${rate.toFixed(2)} steps/s, ETA ${((steps - s - 1) / rate).toFixed(0)} s\n`,
      );
    }
  }
  dev.destroy();
  ms.shift(); // the first step compiles the pipelines
  ms.sort((p, q) => p - q);
  results.push({ name: arm.name, offered: true, losses, stepMsMedian: ms[Math.floor(ms.length / 2)] ?? NaN });
}
const ref = results[0].losses;
for (const r of results.slice(1))
  if (r.offered) {
    r.maxLossDiff = Math.max(...r.losses.map((l, i) => Math.abs(l - ref[i])));
    r.finalLossDiff = r.losses[steps - 1] - ref[steps - 1];
  }

const e = (x: number | undefined) => (x === undefined ? '—' : x.toExponential(2));
const table = [
  `| flags | loss step 1 → ${steps} | max abs loss diff vs f32 | final diff | median step ms |`,
  '|---|---|---:|---:|---:|',
  ...results.map((r) =>
    r.offered
      ? `| ${r.name} | ${r.losses[0].toFixed(4)} → ${r.losses[steps - 1].toFixed(4)} | ${e(r.maxLossDiff)} | ${e(r.finalLossDiff)} | ${r.stepMsMedian.toFixed(1)} |`
      : `| ${r.name} | not offered by this adapter | — | — | — |`,
  ),
];
const report = {
  command: 'node dist/bench/webgpu-precision.js ' + args.join(' '),
  model,
  batch: B,
  lr,
  steps,
  adapter: adapterInfo,
  results,
  table,
};
writeFileSync(out, JSON.stringify(report, null, 2) + '\n');
process.stdout.write(table.join('\n') + `\n\nwrote ${out}\n`);
