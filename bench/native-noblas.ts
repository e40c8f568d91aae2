/**
 * `node dist/bench/native-noblas.js [--steps N] [--rounds R] [--out FILE]`
 *
 * The native addon without OpenBLAS against the OpenBLAS build, in one run (issue 18, item 4):
 * builds the no-BLAS copy (src/kernels/native-build.ts: TESSERA_NO_BLAS=1 into
 * native/build-noblas/), then measures training tokens/s of the reference config (vocab 4096,
 * ctx 128, dim 256, 4 layers, 4 heads, batch 16, AdamW; src/train/bench-compute.ts, the numbers
 * behind `tessera bench compute`) for both builds in fast mode at 1 and 2 threads, alternating
 * builds for R rounds and keeping each one's best median step (a shared machine's neighbours only
 * ever add time), plus raw GEMM GFLOP/s on the lm_head shape (2048×4096×256, B transposed).
 * Prints a Markdown table and writes the JSON (default bench/native-noblas.json).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createNativeKernels, nativeInfo, packageRoot, sgemmBench } from '../src/kernels/native.js';
import { buildNoBlasAddon } from '../src/kernels/native-build.js';
import { benchCompute } from '../src/train/bench-compute.js';
import { DEFAULT_MODEL } from '../src/model/config.js';

const args = process.argv.slice(2);
const opt = (name: string, d: number) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) || d : d);
const steps = opt('--steps', 10);
const rounds = opt('--rounds', 2);
const out = args.includes('--out')
  ? args[args.indexOf('--out') + 1]
  : join(packageRoot(), 'bench', 'native-noblas.json');

const noblas = buildNoBlasAddon();
const builds = [
  { name: 'openblas', path: undefined as string | undefined },
  { name: 'none (own GEMM)', path: noblas },
];
const info = builds.map((b) => nativeInfo(b.path));
const model = DEFAULT_MODEL;
const batch = 16;

interface Row {
  build: string;
  threads: number;
  tokensPerSec: number;
  stepMsMedian: number;
  sgemmGflops: number;
}
const rows: Row[] = [];
for (const threads of [1, 2]) {
  const best = builds.map(() => ({ ms: Infinity, g: 0 }));
  for (let r = 0; r < rounds; r++) {
    builds.forEach((b, i) => {
      process.stderr.write(`threads=${threads} round ${r + 1}/${rounds}: blas ${b.name} ...\n`);
      const k = createNativeKernels({ addonPath: b.path });
      const res = benchCompute(k, { model, batch, threads, steps, warmup: 2, deterministic: false });
      best[i].ms = Math.min(best[i].ms, res.stepMsMedian);
      best[i].g = Math.max(best[i].g, sgemmBench(2048, 4096, 256, 5, { threads, transB: true, addonPath: b.path }));
    });
  }
  builds.forEach((b, i) =>
    rows.push({
      build: b.name,
      threads,
      tokensPerSec: (batch * model.ctx) / (best[i].ms / 1000),
      stepMsMedian: best[i].ms,
      sgemmGflops: best[i].g,
    }),
  );
}

const fmt = (x: number, d = 0) => x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
const table = [
  '| threads | BLAS | tokens/s | median step ms | vs OpenBLAS | raw GEMM GFLOP/s (2048×4096×256) |',
  '|---:|---|---:|---:|---:|---:|',
  ...rows.map((r) => {
    const base = rows.find((x) => x.threads === r.threads && x.build === 'openblas')!;
    return `| ${r.threads} | ${r.build} | ${fmt(r.tokensPerSec)} | ${fmt(r.stepMsMedian, 1)} | ${fmt(r.tokensPerSec / base.tokensPerSec, 2)}× | ${fmt(r.sgemmGflops, 1)} |`;
  }),
];
const report = {
  command: 'node dist/bench/native-noblas.js ' + args.join(' '),
  model,
  batch,
  steps,
  rounds,
  isa: info[0].isa,
  blasConfig: info.map((i) => i.blasConfig),
  rows,
  table,
};
writeFileSync(out, JSON.stringify(report, null, 2) + '\n');
process.stdout.write(table.join('\n') + `\n\nwrote ${out}\n`);
