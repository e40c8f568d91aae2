/**
 * The WebGPU half of bench/gpu, and its report (run.sh runs both on a lent NVIDIA GPU):
 *
 *   node dist/bench/gpu/webgpu.js measure --configs bench/gpu/configs.json [--tiny]
 *        [--adapter auto|swiftshader] --out webgpu.json
 *   node dist/bench/gpu/webgpu.js report --configs bench/gpu/configs.json [--tiny]
 *        --webgpu webgpu.json --torch torch.jsonl [--gpu-name NAME] --out DIR
 *
 * `measure`: whole training steps of Tessera's GPT on the adapter (`benchComputeWebGpu`, the
 * function behind `tessera bench compute --device webgpu`) for each config of configs.json (the
 * reference config and GPT-2 small), and the WGSL GEMM's GFLOP/s on its shapes. `report`: puts
 * those next to the PyTorch runs of the same configs (one JSON object per line, from
 * bench/torch_gpt.py and bench/gpu/torch_gemm.py) and writes DIR/gpu-bench.json and
 * DIR/gpu-bench.md (the table is printed too). Two steps so that PyTorch runs between them and a
 * failure of either half still leaves a report of the other.
 *
 * Why an entry of its own and not the `tessera` CLI: the CLI loads every command's dependencies
 * (libp2p, Helia, an EVM: ~1 GB of node_modules); this file's imports need only zod and webgpu,
 * which is what lets pack.sh ship it to a machine with no network under 60 MiB.
 *
 * --tiny (run.sh --dry-run): configs.json's small shapes, for SwiftShader on a machine without a
 * GPU; its numbers say nothing about a GPU.
 */
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { WebGpuDevice } from '../../src/kernels/webgpu/device.js';
import { webgpuGemmBench, type GemmShape } from '../../src/kernels/webgpu/gemm-bench.js';
import { benchComputeWebGpu } from '../../src/train/bench-compute.js';
import type { ModelConfig } from '../../src/model/config.js';

const args = process.argv.slice(2);
const mode = args[0];
const arg = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const tiny = args.includes('--tiny');
const out = arg('--out');
if (!out || (mode !== 'measure' && mode !== 'report')) {
  process.stderr.write('usage: webgpu.js measure|report --configs FILE [--tiny] --out PATH (see the header)\n');
  process.exit(2);
}

const StepConfig = z
  .object({
    name: z.string().max(64),
    vocab: z.number().int().min(2),
    ctx: z.number().int().min(1),
    dim: z.number().int().min(1),
    layers: z.number().int().min(1),
    heads: z.number().int().min(1),
    batch: z.number().int().min(1),
  })
  .strict();
const Shape = z.string().regex(/^\d+x\d+x\d+$/);
const Plan = z.object({
  steps: z.array(StepConfig).max(8),
  gemm: z.array(Shape).max(8),
  seconds: z.number().positive(),
});
const ConfigFile = z.object({ full: Plan, tiny: Plan }).strict();

const configPath = arg('--configs') ?? 'bench/gpu/configs.json';
const plan = ConfigFile.parse(JSON.parse(readFileSync(configPath, 'utf8')))[tiny ? 'tiny' : 'full'];
const CONFIGS = plan.steps.map((c) => ({
  name: c.name,
  batch: c.batch,
  model: { vocabSize: c.vocab, ctx: c.ctx, dim: c.dim, layers: c.layers, heads: c.heads } as ModelConfig,
}));
const GEMMS: GemmShape[] = plan.gemm.map((s) => {
  const [M, N, K] = s.split('x').map(Number);
  return { M, N, K };
});

const log = (s: string): void => void process.stderr.write(`[webgpu] ${s}\n`);
const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e)).slice(0, 500);

/**
 * Datasheet fp32 (non-tensor) peaks, TFLOP/s, dense. Leads, not readings: the table also shows
 * PyTorch's measured fp32 matmul (TF32 off) on the same card, the practical ceiling.
 */
function fp32Peak(name: string): { tflops: number; part: string } | null {
  const n = name.toUpperCase();
  if (n.includes('H200'))
    return n.includes('NVL') ? { tflops: 60, part: 'H200 NVL' } : { tflops: 67, part: 'H200 SXM' };
  if (n.includes('H100')) {
    if (n.includes('PCIE')) return { tflops: 51, part: 'H100 PCIe' };
    if (n.includes('NVL')) return { tflops: 60, part: 'H100 NVL' };
    return { tflops: 67, part: 'H100 SXM' };
  }
  return null;
}

interface TorchLine {
  name: string;
  tokensPerSec?: number | null;
  stepMsMedian?: number | null;
  dtype?: string;
  config?: { batch: number };
  M?: number;
  N?: number;
  K?: number;
  gflops?: number;
  relErr?: number;
  gpu?: string | null;
  torch?: string;
  error?: string;
}

function readTorch(torchFile: string | undefined): TorchLine[] {
  if (!torchFile || !existsSync(torchFile)) return [];
  const out: TorchLine[] = [];
  for (const line of readFileSync(torchFile, 'utf8').split('\n')) {
    if (!line.trim().startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as TorchLine);
    } catch {
      // a truncated line (a run killed by its timeout): skipped, and the table shows the gap
    }
  }
  return out;
}

async function measure(out: string): Promise<number> {
  const adapter = arg('--adapter') === 'swiftshader' ? 'swiftshader' : 'auto';
  const result: Record<string, unknown> = { adapterChoice: adapter, tiny, time: new Date().toISOString() };
  const steps: Record<string, unknown>[] = [];
  const gemms: Record<string, unknown>[] = [];
  const save = (): void => {
    Object.assign(result, { webgpu: steps, gemm: gemms });
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
  };
  let dev: WebGpuDevice;
  try {
    dev = await WebGpuDevice.create({ adapter });
  } catch (err) {
    result.adapterError = errText(err);
    log(`no adapter: ${result.adapterError as string}`);
    save();
    return 1;
  }
  const L = dev.device.limits;
  result.adapter = dev.adapterInfo;
  result.limits = {
    maxStorageBufferBindingSize: L.maxStorageBufferBindingSize,
    maxBufferSize: L.maxBufferSize,
    maxComputeWorkgroupStorageSize: L.maxComputeWorkgroupStorageSize,
  };
  log(`adapter ${JSON.stringify(dev.adapterInfo)}`);
  // The GEMM first: seconds, and the most robust number, before the long training steps.
  for (const g of GEMMS) {
    try {
      const r = await webgpuGemmBench(dev, g, { reps: tiny ? 3 : 20 });
      gemms.push({ ...r });
      log(`gemm ${g.M}x${g.N}x${g.K}: ${r.gflops.toFixed(1)} GFLOP/s, max rel err ${r.maxRelErr.toExponential(2)}`);
    } catch (err) {
      gemms.push({ ...g, error: errText(err) });
      log(`gemm ${g.M}x${g.N}x${g.K}: failed: ${errText(err)}`);
    }
    save();
  }
  for (const c of CONFIGS) {
    // The logits [B·T, V] are the largest single buffer: halve B until they fit one binding.
    let B = c.batch;
    while (B > 1 && B * c.model.ctx * c.model.vocabSize * 4 > L.maxStorageBufferBindingSize) B = Math.floor(B / 2);
    log(`${c.name}: B=${B} T=${c.model.ctx} ...`);
    try {
      const r = await benchComputeWebGpu(dev, {
        model: c.model,
        batch: B,
        steps: 50,
        warmup: 1, // the first step compiles the pipelines; the median of the timed ones is reported
        maxSeconds: plan.seconds,
      });
      steps.push({ name: c.name, model: c.model, batch: B, askedBatch: c.batch, ...r });
      log(`${c.name}: ${r.tokensPerSec.toFixed(0)} tokens/s, median step ${r.stepMsMedian.toFixed(1)} ms`);
    } catch (err) {
      steps.push({ name: c.name, model: c.model, batch: B, error: errText(err) });
      log(`${c.name}: failed: ${errText(err)}`);
    }
    save(); // what is measured so far survives a later crash or timeout
  }
  dev.destroy();
  return steps.every((x) => !('error' in x)) && gemms.every((x) => !('error' in x)) ? 0 : 1;
}

interface WebGpuResult {
  adapter?: { description?: string };
  adapterError?: string;
  webgpu?: { name: string; tokensPerSec?: number; batch?: number; error?: string }[];
  gemm?: { M: number; N: number; K: number; gflops?: number; maxRelErr?: number; error?: string }[];
}

function report(outDir: string): number {
  const wpath = arg('--webgpu');
  const w: WebGpuResult =
    wpath && existsSync(wpath)
      ? (JSON.parse(readFileSync(wpath, 'utf8')) as WebGpuResult)
      : { adapterError: 'no result' };
  const torch = readTorch(arg('--torch'));
  const gpuName = arg('--gpu-name') ?? '';
  const peak = fp32Peak(gpuName || (w.adapter?.description ?? ''));
  const fmt = (x: unknown, d = 0): string =>
    typeof x === 'number' && Number.isFinite(x)
      ? x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d })
      : '—';
  const ratio = (a: unknown, b: unknown): string =>
    typeof a === 'number' && typeof b === 'number' && b > 0 ? `${(a / b).toFixed(3)}×` : '—';
  const table: string[] = [
    `GPU: ${gpuName || '?'}; WebGPU adapter: ${JSON.stringify(w.adapter ?? w.adapterError ?? null)}${tiny ? ' (dry run: tiny shapes)' : ''}`,
    '',
    '| config | batch (webgpu / torch) | Tessera WebGPU fp32 tok/s | PyTorch fp32 tok/s | PyTorch bf16 autocast tok/s | WebGPU ÷ torch fp32 | WebGPU ÷ torch bf16 |',
    '|---|---|---:|---:|---:|---:|---:|',
  ];
  for (const c of CONFIGS) {
    const s = w.webgpu?.find((x) => x.name === c.name);
    const t32 = torch.find((t) => t.name === c.name && t.dtype === 'fp32');
    const t16 = torch.find((t) => t.name === c.name && t.dtype === 'bf16');
    table.push(
      `| ${c.name} | ${s?.batch ?? '—'} / ${t32?.config?.batch ?? t16?.config?.batch ?? '—'} | ${fmt(s?.tokensPerSec)} | ` +
        `${fmt(t32?.tokensPerSec)} | ${fmt(t16?.tokensPerSec)} | ${ratio(s?.tokensPerSec, t32?.tokensPerSec)} | ` +
        `${ratio(s?.tokensPerSec, t16?.tokensPerSec)} |`,
    );
  }
  table.push(
    '',
    '| GEMM M×N×K | WGSL fp32 GFLOP/s | WGSL max rel err | PyTorch fp32 (TF32 off) GFLOP/s | PyTorch TF32 | PyTorch bf16 | ' +
      `WGSL ÷ torch fp32 | WGSL ÷ datasheet fp32 peak${peak ? ` (${peak.part}, ${peak.tflops} TFLOP/s)` : ''} |`,
    '|---|---:|---:|---:|---:|---:|---:|---:|',
  );
  for (const g of GEMMS) {
    const x = w.gemm?.find((y) => y.M === g.M && y.N === g.N && y.K === g.K);
    const tg = (dt: string) =>
      torch.find((t) => t.name === 'gemm' && t.M === g.M && t.N === g.N && t.K === g.K && t.dtype === dt)?.gflops;
    const ofPeak =
      peak && typeof x?.gflops === 'number' ? `${((100 * x.gflops) / (peak.tflops * 1000)).toFixed(1)}%` : '—';
    table.push(
      `| ${g.M}×${g.N}×${g.K} | ${fmt(x?.gflops, 1)} | ${typeof x?.maxRelErr === 'number' ? x.maxRelErr.toExponential(1) : '—'} | ` +
        `${fmt(tg('fp32'), 1)} | ${fmt(tg('tf32'), 1)} | ${fmt(tg('bf16'), 1)} | ${ratio(x?.gflops, tg('fp32'))} | ${ofPeak} |`,
    );
  }
  const errors = [
    ...(w.adapterError ? [`webgpu adapter: ${w.adapterError}`] : []),
    ...(w.webgpu ?? []).filter((x) => x.error).map((x) => `webgpu ${x.name}: ${x.error}`),
    ...(w.gemm ?? []).filter((x) => x.error).map((x) => `webgpu gemm ${x.M}x${x.N}x${x.K}: ${x.error}`),
    ...torch.filter((t) => t.error).map((t) => `torch ${t.name}: ${t.error}`),
  ];
  if (errors.length) table.push('', 'Errors:', ...errors.map((e) => `- ${e}`));
  const out = {
    command: 'node dist/bench/gpu/webgpu.js ' + args.join(' '),
    tiny,
    gpuName,
    configs: CONFIGS,
    fp32PeakDatasheet: peak,
    ...w,
    torch,
    errors,
    table,
  };
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'gpu-bench.json'), JSON.stringify(out, null, 2) + '\n');
  writeFileSync(join(outDir, 'gpu-bench.md'), table.join('\n') + '\n');
  process.stdout.write(table.join('\n') + `\n\nwrote ${join(outDir, 'gpu-bench.json')} and gpu-bench.md\n`);
  return errors.length ? 1 : 0;
}

process.exitCode = mode === 'measure' ? await measure(out) : report(out);
