/**
 * `tessera bench compute`: training throughput of this machine on the reference GPT (or any
 * shape), on the CPU kernels or (`--device webgpu`) on a WebGPU adapter.
 */
import type { Command } from 'commander';
import { int, oneOf } from './args.js';
import { say, result } from './output.js';
import { loadKernels } from '../kernels/index.js';
import { ModelConfigSchema } from '../model/config.js';
import { benchCompute, benchComputeWebGpu } from '../train/bench-compute.js';
import { WebGpuDevice } from '../kernels/webgpu/device.js';
import { sgemmGflops } from '../kernels/sgemm-bench.js';
import type { NativeKernels } from '../kernels/native.js';

export function register(program: Command): void {
  const bench = program.command('bench').description('measure this machine');
  bench
    .command('compute')
    .description('training tokens/s of one GPT step (forward, backward, AdamW) on synthetic tokens')
    .option('--vocab <n>', 'vocabulary size', int(2, 1 << 20), 4096)
    .option('--ctx <n>', 'sequence length', int(1, 65536), 128)
    .option('--dim <n>', 'model width', int(1, 65536), 256)
    .option('--layers <n>', 'transformer blocks', int(1, 1024), 4)
    .option('--heads <n>', 'attention heads', int(1, 1024), 4)
    .option('--batch <n>', 'sequences per step', int(1, 65536), 16)
    .option('--threads <n>', 'worker threads', int(1, 1024), 2)
    .option('--steps <n>', 'timed steps', int(1, 100000), 10)
    .option('--warmup <n>', 'untimed warm-up steps', int(0, 100000), 2)
    .option('--deterministic', 'use the bitwise-reproducible kernels', false)
    .option('--device <d>', 'cpu (the native or reference kernels) or webgpu', oneOf('cpu', 'webgpu'), 'cpu')
    .option(
      '--adapter <a>',
      "webgpu: auto (the system's drivers) or swiftshader (CPU emulation from Debian's chromium, no GPU needed)",
      oneOf('auto', 'swiftshader'),
      'auto',
    )
    .option('--json', 'print one JSON object on stdout', false)
    .action(async (o) => {
      const model = ModelConfigSchema.parse({
        vocabSize: o.vocab,
        ctx: o.ctx,
        dim: o.dim,
        layers: o.layers,
        heads: o.heads,
      });
      if (o.device === 'webgpu') {
        const dev = await WebGpuDevice.create({ adapter: o.adapter });
        try {
          say(
            o,
            `benchmarking ${o.steps} steps of B=${o.batch} T=${o.ctx} on WebGPU (${dev.adapterInfo.description || dev.adapterInfo.device}) ...`,
          );
          const r = await benchComputeWebGpu(dev, { model, batch: o.batch, steps: o.steps, warmup: o.warmup });
          result(
            o,
            {
              tokensPerSec: r.tokensPerSec,
              stepMs: r.stepMs,
              stepMsMedian: r.stepMsMedian,
              modelGflops: r.modelGflops,
              params: r.params,
              device: 'webgpu',
              adapter: dev.adapterInfo,
              kernels: r.kernels,
            },
            `tokens/s ${r.tokensPerSec.toFixed(0)}  step ${r.stepMs.toFixed(1)} ms  model ${r.modelGflops.toFixed(2)} GFLOP/s  device webgpu (${dev.adapterInfo.description || dev.adapterInfo.device})  (${r.params.toLocaleString('en-US')} params)`,
          );
        } finally {
          dev.destroy();
        }
        return;
      }
      const k = loadKernels({});
      say(
        o,
        `benchmarking ${o.steps} steps of B=${o.batch} T=${o.ctx} on ${o.threads} thread(s), ${k.name} kernels${o.deterministic ? ' (deterministic)' : ''} ...`,
      );
      const r = benchCompute(k, {
        model,
        batch: o.batch,
        threads: o.threads,
        steps: o.steps,
        warmup: o.warmup,
        deterministic: o.deterministic,
      });
      const sg = sgemmGflops(k, o.threads);
      // Which GEMM the native matmuls ran on: OpenBLAS, or Tessera's own (an addon built without BLAS).
      const blas = k.name === 'native' ? (k as NativeKernels).info.blas : 'none';
      const out = {
        tokensPerSec: r.tokensPerSec,
        stepMs: r.stepMs,
        sgemmGflops: sg.gflops,
        stepMsMedian: r.stepMsMedian,
        modelGflops: r.modelGflops,
        params: r.params,
        threads: o.threads,
        deterministic: o.deterministic,
        kernels: k.name,
        blas,
        device: 'cpu',
      };
      result(
        o,
        out,
        `tokens/s ${r.tokensPerSec.toFixed(0)}  step ${r.stepMs.toFixed(1)} ms  model ${r.modelGflops.toFixed(1)} GFLOP/s  raw sgemm ${sg.gflops.toFixed(1)} GFLOP/s  blas ${blas}  (${r.params.toLocaleString('en-US')} params)`,
      );
    });
}
