/**
 * `node dist/bench/compare.js [--json] [--steps N] [--out FILE]`
 *
 * The compute core against PyTorch CPU on the reference config (vocab 4096, ctx 128, dim 256,
 * 4 layers, 4 heads, batch 16, AdamW), at 1 and 2 threads, in one run, side by side.
 * PyTorch comes from Debian's python3-torch (/usr/bin/python3); if it is missing the torch
 * rows say so instead of failing. Also reports how close matmul gets to raw sgemm.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadKernels } from '../src/kernels/index.js';
import { benchCompute, type ComputeBenchResult } from '../src/train/bench-compute.js';
import { DEFAULT_MODEL } from '../src/model/config.js';
import { sgemmGflops } from '../src/kernels/sgemm-bench.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const steps = Number(args[args.indexOf('--steps') + 1]) || 20;
const outIdx = args.indexOf('--out');
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const out = outIdx >= 0 ? args[outIdx + 1] : join(root, 'out', 'bench-compare.json');

const model = DEFAULT_MODEL;
const batch = 16;
const k = loadKernels({});
const log = (s: string) => {
  if (!json) process.stderr.write(s + '\n');
};

interface TorchResult {
  tokensPerSec: number;
  stepMs: number;
  threads: number;
  torch: string;
}
function torchRun(threads: number): TorchResult | { error: string } {
  const py = '/usr/bin/python3';
  const script = join(root, 'bench', 'torch_gpt.py');
  if (!existsSync(py)) return { error: 'no /usr/bin/python3' };
  const r = spawnSync(
    py,
    [
      script,
      '--vocab',
      String(model.vocabSize),
      '--ctx',
      String(model.ctx),
      '--dim',
      String(model.dim),
      '--layers',
      String(model.layers),
      '--heads',
      String(model.heads),
      '--batch',
      String(batch),
      '--threads',
      String(threads),
      '--steps',
      String(steps),
      '--warmup',
      '3',
    ],
    { encoding: 'utf8', timeout: 600_000 },
  );
  if (r.status !== 0) return { error: (r.stderr || r.error?.message || 'failed').trim().split('\n').slice(-1)[0] };
  const line = r.stdout.trim().split('\n').pop()!;
  return JSON.parse(line) as TorchResult;
}

const rows: {
  threads: number;
  ours: ComputeBenchResult;
  det: ComputeBenchResult;
  torch: TorchResult | { error: string };
}[] = [];
for (const threads of [1, 2]) {
  log(`threads=${threads}: tessera fast ...`);
  const ours = benchCompute(k, { model, batch, threads, steps, warmup: 3, deterministic: false });
  log(`threads=${threads}: tessera deterministic ...`);
  const det = benchCompute(k, {
    model,
    batch,
    threads,
    steps: Math.max(5, steps >> 1),
    warmup: 2,
    deterministic: true,
  });
  log(`threads=${threads}: pytorch ...`);
  const torch = torchRun(threads);
  rows.push({ threads, ours, det, torch });
}
k.setDeterministic(false);
const sgemm = [1, 2].map((threads) => ({ threads, ...sgemmGflops(k, threads) }));

const fmt = (x: number, d = 0) => x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
const table = [
  '| threads | tessera tok/s | deterministic tok/s (cost) | PyTorch tok/s | tessera / PyTorch | tessera model GFLOP/s | raw sgemm GFLOP/s |',
  '|---:|---:|---:|---:|---:|---:|---:|',
  ...rows.map((r, i) => {
    const t = 'error' in r.torch ? null : r.torch;
    return `| ${r.threads} | ${fmt(r.ours.tokensPerSec)} | ${fmt(r.det.tokensPerSec)} (${fmt(100 * (1 - r.det.tokensPerSec / r.ours.tokensPerSec), 0)}% slower) | ${t ? fmt(t.tokensPerSec) : 'n/a: ' + (r.torch as { error: string }).error} | ${t ? fmt(r.ours.tokensPerSec / t.tokensPerSec, 2) + '×' : '-'} | ${fmt(r.ours.modelGflops, 1)} | ${fmt(sgemm[i].gflops, 1)} |`;
  }),
];
const report = { model, batch, steps, kernels: k.name, rows, sgemm };
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify(report, null, 2));
if (json) process.stdout.write(JSON.stringify(report) + '\n');
else {
  process.stdout.write(table.join('\n') + '\n');
  process.stdout.write(
    `\nmodel GFLOP/s counts 6·params·tokens + causal attention; raw sgemm is OpenBLAS on the lm_head shape (2048×4096×256).\nwrote ${out}\n`,
  );
}
