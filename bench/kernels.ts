/**
 * `node dist/bench/kernels.js [--json] [--quick]`
 *
 * Native kernel speed at the reference model's shapes (B=16, T=128, C=256, NH=4, V=4096, 4 layers):
 *  1. raw cblas_sgemm GFLOP/s (OpenBLAS threading itself) for every matmul of the model, forward
 *     and backward, at 1 and 2 threads: the ceiling;
 *  2. our matmulForward/matmulBackward in fast mode (OpenBLAS inside Tessera's pool) and in
 *     deterministic mode (Tessera's fixed-order GEMM), as GFLOP/s and as a fraction of raw sgemm;
 *  3. milliseconds per call of every other kernel, at 1 and 2 threads;
 *  4. one training step (forward, backward, AdamW): estimated as the sum of the kernel times above,
 *     and measured by replaying all its kernel calls back to back, per mode and thread count;
 *     the ratio is the cost of deterministic mode.
 * Prints Markdown tables on stdout; with --json the tables go to stderr and stdout gets one JSON
 * object with every number. --quick: shorter timings.
 */
import type { Kernels } from '../src/kernels/api.js';
import { createNativeKernels, nativeInfo, sgemmBench } from '../src/kernels/native.js';
import { DEFAULT_MODEL } from '../src/model/config.js';
import { paramCount } from '../src/model/params.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const quick = args.includes('--quick');
// Tables go to stdout, or with --json to stderr (stdout then carries only the JSON object).
const log = (s: string) => {
  (json ? process.stderr : process.stdout).write(s + '\n');
};

const cfg = DEFAULT_MODEL;
const B = 16,
  T = cfg.ctx,
  C = cfg.dim,
  NH = cfg.heads,
  V = cfg.vocabSize,
  L = cfg.layers;
const N = B * T;
const THREADS = [1, 2];

function rand(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = ((s >>> 8) / 16777216 - 0.5) * 2 * scale;
  }
  return a;
}

const rounds = quick ? 3 : 10;
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

/** A benchmark variant: returns the ms of one sample (a batch of calls, divided by its size). */
type Sampler = () => number;

function calls(fn: () => void): Sampler {
  fn();
  fn();
  const t = nowMs();
  fn();
  const once = nowMs() - t;
  const batch = Math.max(1, Math.ceil(2 / Math.max(once, 1e-3))); // samples of >= ~2 ms
  return () => {
    const s = nowMs();
    for (let i = 0; i < batch; i++) fn();
    return (nowMs() - s) / batch;
  };
}

/**
 * Best (minimum) sample of each variant over `rounds` rounds, variants alternating within each
 * round: on a shared machine outside load then hits all variants alike, and only ever adds time.
 */
function interleaved(samplers: Sampler[]): number[] {
  const best = samplers.map(() => Infinity);
  for (let r = 0; r < rounds; r++)
    samplers.forEach((f, i) => {
      best[i] = Math.min(best[i], f());
    });
  return best;
}

// The model's linear layers: [name, in C, out OC, count per step]
const LINEARS: [string, number, number, number][] = [
  ['qkv', C, 3 * C, L],
  ['attn.proj', C, C, L],
  ['mlp.fc', C, 4 * C, L],
  ['mlp.proj', 4 * C, C, L],
  ['lm_head', C, V, 1],
];

interface MatmulRow {
  layer: string;
  N: number;
  C: number;
  OC: number;
  threads: number;
  rawFwdGflops: number;
  rawBwdGflops: number;
  fastFwdGflops: number;
  fastBwdGflops: number;
  detFwdGflops: number;
  detBwdGflops: number;
  fastFwdMs: number;
  fastBwdMs: number;
  detFwdMs: number;
  detBwdMs: number;
}

/** Raw cblas_sgemm: ms of the fastest of two calls (after a warm-up call). */
function rawSgemm(M: number, Nn: number, K: number, threads: number, transA: boolean, transB: boolean): Sampler {
  const flop = 2 * M * Nn * K;
  return () => flop / sgemmBench(M, Nn, K, 2, { threads, transA, transB }) / 1e6;
}

function benchMatmuls(): MatmulRow[] {
  const rows: MatmulRow[] = [];
  for (const [layer, c, oc] of LINEARS) {
    const inp = rand(N * c, 1),
      w = rand(oc * c, 2, 0.05),
      bias = rand(oc, 3);
    const out = new Float32Array(N * oc),
      dout = rand(N * oc, 4);
    const dinp = new Float32Array(N * c),
      dw = new Float32Array(oc * c),
      db = new Float32Array(oc);
    const fwdFlop = 2 * N * c * oc,
      bwdFlop = 2 * fwdFlop;
    for (const threads of THREADS) {
      const fast = createNativeKernels({ threads, deterministic: false });
      const det = createNativeKernels({ threads, deterministic: true });
      const [rawFwd, rawDinp, rawDw, fastFwd, fastBwd, detFwd, detBwd] = interleaved([
        rawSgemm(N, oc, c, threads, false, true),
        // backward = dinp (N x C, k = OC) + dweight (OC x C, k = N, A transposed)
        rawSgemm(N, c, oc, threads, false, false),
        rawSgemm(oc, c, N, threads, true, false),
        calls(() => fast.matmulForward(out, inp, w, bias, N, c, oc)),
        calls(() => fast.matmulBackward(dinp, dw, db, dout, inp, w, N, c, oc)),
        calls(() => det.matmulForward(out, inp, w, bias, N, c, oc)),
        calls(() => det.matmulBackward(dinp, dw, db, dout, inp, w, N, c, oc)),
      ]);
      rows.push({
        layer,
        N,
        C: c,
        OC: oc,
        threads,
        rawFwdGflops: fwdFlop / rawFwd / 1e6,
        rawBwdGflops: bwdFlop / (rawDinp + rawDw) / 1e6,
        fastFwdGflops: fwdFlop / fastFwd / 1e6,
        fastBwdGflops: bwdFlop / fastBwd / 1e6,
        detFwdGflops: fwdFlop / detFwd / 1e6,
        detBwdGflops: bwdFlop / detBwd / 1e6,
        fastFwdMs: fastFwd,
        fastBwdMs: fastBwd,
        detFwdMs: detFwd,
        detBwdMs: detBwd,
      });
    }
  }
  return rows;
}

interface KernelRow {
  kernel: string;
  shape: string;
  perStep: number;
  ms: Record<string, number>;
}

function benchKernels(): KernelRow[] {
  const k = createNativeKernels();
  const P = paramCount(cfg);
  const x = rand(N * C, 10),
    lw = rand(C, 11),
    lb = rand(C, 12);
  const lo = new Float32Array(N * C),
    mean = new Float32Array(N),
    rstd = new Float32Array(N);
  k.layernormForward(lo, mean, rstd, x, lw, lb, N, C);
  const dx = new Float32Array(N * C),
    dlw = new Float32Array(C),
    dlb = new Float32Array(C),
    dy = rand(N * C, 13);
  const h = rand(N * 4 * C, 14, 3),
    hg = new Float32Array(N * 4 * C),
    dh = rand(N * 4 * C, 15),
    dhi = new Float32Array(N * 4 * C);
  const qkv = rand(N * 3 * C, 16),
    ao = new Float32Array(N * C),
    att = new Float32Array(B * NH * T * T);
  k.attentionForward(ao, att, qkv, B, T, C, NH);
  const dqkv = new Float32Array(N * 3 * C),
    datt = new Float32Array(B * NH * T * T);
  const logits = rand(N * V, 17, 4),
    dlogits = new Float32Array(N * V),
    losses = new Float32Array(N),
    probs = new Float32Array(N * V);
  const targets = new Int32Array(N).map((_, i) => (i * 7919) % V);
  const tokens = new Int32Array(N).map((_, i) => (i * 104729) % V);
  const wte = rand(V * C, 18),
    wpe = rand(T * C, 19),
    dwte = new Float32Array(V * C),
    dwpe = new Float32Array(T * C);
  const params = rand(P, 20),
    grads = rand(P, 21, 0.01),
    m = new Float32Array(P),
    v = new Float32Array(P);
  const a1 = rand(N * C, 22),
    a2 = rand(N * C, 23),
    a3 = new Float32Array(N * C);
  const sc = rand(P, 24);
  let step = 1;
  const rows: [string, string, number, () => void][] = [
    ['layernormForward', `N=${N} C=${C}`, 2 * L + 1, () => k.layernormForward(lo, mean, rstd, x, lw, lb, N, C)],
    [
      'layernormBackward',
      `N=${N} C=${C}`,
      2 * L + 1,
      () => k.layernormBackward(dx, dlw, dlb, dy, x, lw, mean, rstd, N, C),
    ],
    ['geluForward', `n=${N * 4 * C}`, L, () => k.geluForward(hg, h, N * 4 * C)],
    ['geluBackward', `n=${N * 4 * C}`, L, () => k.geluBackward(dhi, h, dh, N * 4 * C)],
    ['attentionForward', `B=${B} T=${T} C=${C} NH=${NH}`, L, () => k.attentionForward(ao, att, qkv, B, T, C, NH)],
    [
      'attentionBackward',
      `B=${B} T=${T} C=${C} NH=${NH}`,
      L,
      () => k.attentionBackward(dqkv, datt, dy, qkv, att, B, T, C, NH),
    ],
    [
      'crossEntropyForwardBackward',
      `N=${N} V=${V}`,
      1,
      () => k.crossEntropyForwardBackward(losses, dlogits, logits, targets, N, V, 1 / N),
    ],
    ['softmax', `N=${N} V=${V}`, 0, () => k.softmax(probs, logits, N, V)],
    ['embeddingForward', `B=${B} T=${T} C=${C}`, 1, () => k.embeddingForward(a3, tokens, wte, wpe, B, T, C)],
    ['embeddingBackward', `B=${B} T=${T} C=${C}`, 1, () => k.embeddingBackward(dwte, dwpe, dy, tokens, B, T, C)],
    ['add', `n=${N * C}`, 2 * L, () => k.add(a3, a1, a2, N * C)],
    ['sumSquares', `n=${P}`, 1, () => k.sumSquares(sc)],
    ['scale', `n=${P}`, 0, () => k.scale(sc, 1.0)],
    ['adamw', `n=${P}`, 1, () => k.adamw(params, grads, m, v, 1e-3, 0.9, 0.95, 1e-8, 0.1, step++)],
  ];
  const out: KernelRow[] = [];
  for (const [kernel, shape, perStep, fn] of rows) {
    // Each sampler sets k's thread count, then calls fn (which uses k).
    const best = interleaved(
      THREADS.map((threads) =>
        calls(() => {
          k.setThreads(threads);
          fn();
        }),
      ),
    );
    const ms: Record<string, number> = {};
    THREADS.forEach((threads, i) => {
      ms[`t${threads}`] = best[i];
    });
    out.push({ kernel, shape, perStep, ms });
  }
  return out;
}

/**
 * One full training step of the reference GPT-2 as back-to-back kernel calls (embedding, 4 blocks,
 * final layernorm, tied lm_head, cross-entropy; the whole backward; AdamW over all parameters),
 * including zeroing the gradient buffers. Returns a function running one step and its loss.
 */
function stepReplay(k: Kernels): () => number {
  const C3 = 3 * C,
    C4 = 4 * C;
  const P = paramCount(cfg);
  const z = (n: number) => new Float32Array(n);
  const tokens = new Int32Array(N).map((_, i) => (i * 104729 + 7) % V);
  const targets = new Int32Array(N).map((_, i) => (i * 7919 + 3) % V);
  const wte = rand(V * C, 30, 0.02),
    wpe = rand(T * C, 31, 0.01);
  const layers = Array.from({ length: L }, (_, l) => ({
    ln1w: new Float32Array(C).fill(1),
    ln1b: z(C),
    wqkv: rand(C3 * C, 40 + l, 0.02),
    bqkv: z(C3),
    wproj: rand(C * C, 50 + l, 0.02),
    bproj: z(C),
    ln2w: new Float32Array(C).fill(1),
    ln2b: z(C),
    wfc: rand(C4 * C, 60 + l, 0.02),
    bfc: z(C4),
    wfp: rand(C * C4, 70 + l, 0.02),
    bfp: z(C),
    // activations kept for backward
    res: z(N * C),
    ln1: z(N * C),
    m1: z(N),
    r1: z(N),
    qkv: z(N * C3),
    att: z(B * NH * T * T),
    atty: z(N * C),
    ap: z(N * C),
    res2: z(N * C),
    ln2: z(N * C),
    m2: z(N),
    r2: z(N),
    fch: z(N * C4),
    fcg: z(N * C4),
    fp: z(N * C),
  }));
  const resOut = z(N * C),
    lnf = z(N * C),
    mf = z(N),
    rf = z(N),
    lnfw = new Float32Array(C).fill(1),
    lnfb = z(C);
  const logits = z(N * V),
    losses = z(N);
  // gradients (one set per parameter shape; accumulating across layers does not change the cost)
  const dwte = z(V * C),
    dwpe = z(T * C),
    dlnfw = z(C),
    dlnfb = z(C);
  const g = {
    ln1w: z(C),
    ln1b: z(C),
    wqkv: z(C3 * C),
    bqkv: z(C3),
    wproj: z(C * C),
    bproj: z(C),
    ln2w: z(C),
    ln2b: z(C),
    wfc: z(C4 * C),
    bfc: z(C4),
    wfp: z(C * C4),
    bfp: z(C),
  };
  const dres = z(N * C),
    dx = z(N * C),
    dqkv = z(N * C3),
    datt = z(B * NH * T * T),
    dh = z(N * C4),
    dh2 = z(N * C4);
  const params = rand(P, 80, 0.02),
    grads = rand(P, 81, 0.001),
    m = z(P),
    v = z(P);
  let step = 0;
  return () => {
    step++;
    // forward
    k.embeddingForward(layers[0].res, tokens, wte, wpe, B, T, C);
    for (let l = 0; l < L; l++) {
      const a = layers[l],
        next = l + 1 < L ? layers[l + 1].res : resOut;
      k.layernormForward(a.ln1, a.m1, a.r1, a.res, a.ln1w, a.ln1b, N, C);
      k.matmulForward(a.qkv, a.ln1, a.wqkv, a.bqkv, N, C, C3);
      k.attentionForward(a.atty, a.att, a.qkv, B, T, C, NH);
      k.matmulForward(a.ap, a.atty, a.wproj, a.bproj, N, C, C);
      k.add(a.res2, a.res, a.ap, N * C);
      k.layernormForward(a.ln2, a.m2, a.r2, a.res2, a.ln2w, a.ln2b, N, C);
      k.matmulForward(a.fch, a.ln2, a.wfc, a.bfc, N, C, C4);
      k.geluForward(a.fcg, a.fch, N * C4);
      k.matmulForward(a.fp, a.fcg, a.wfp, a.bfp, N, C4, C);
      k.add(next, a.res2, a.fp, N * C);
    }
    k.layernormForward(lnf, mf, rf, resOut, lnfw, lnfb, N, C);
    k.matmulForward(logits, lnf, wte, null, N, C, V);
    k.crossEntropyForwardBackward(losses, logits, logits, targets, N, V, 1 / N); // dlogits in place
    // backward
    for (const x of [dwte, dwpe, dlnfw, dlnfb, ...Object.values(g)]) x.fill(0);
    dx.fill(0);
    k.matmulBackward(dx, dwte, null, logits, lnf, wte, N, C, V);
    dres.fill(0);
    k.layernormBackward(dres, dlnfw, dlnfb, dx, resOut, lnfw, mf, rf, N, C);
    for (let l = L - 1; l >= 0; l--) {
      const a = layers[l];
      dh.fill(0);
      k.matmulBackward(dh, g.wfp, g.bfp, dres, a.fcg, a.wfp, N, C4, C);
      dh2.fill(0);
      k.geluBackward(dh2, a.fch, dh, N * C4);
      dx.fill(0);
      k.matmulBackward(dx, g.wfc, g.bfc, dh2, a.ln2, a.wfc, N, C, C4);
      k.layernormBackward(dres, g.ln2w, g.ln2b, dx, a.res2, a.ln2w, a.m2, a.r2, N, C);
      dx.fill(0);
      k.matmulBackward(dx, g.wproj, g.bproj, dres, a.atty, a.wproj, N, C, C);
      dqkv.fill(0);
      k.attentionBackward(dqkv, datt, dx, a.qkv, a.att, B, T, C, NH);
      dx.fill(0);
      k.matmulBackward(dx, g.wqkv, g.bqkv, dqkv, a.ln1, a.wqkv, N, C, C3);
      k.layernormBackward(dres, g.ln1w, g.ln1b, dx, a.res, a.ln1w, a.m1, a.r1, N, C);
    }
    k.embeddingBackward(dwte, dwpe, dres, tokens, B, T, C);
    const norm = Math.sqrt(k.sumSquares(grads));
    k.adamw(params, grads, m, v, 1e-3, 0.9, 0.95, 1e-8, 0.1, step);
    let loss = 0;
    for (let i = 0; i < N; i++) loss += losses[i];
    return loss / N + 0 * norm;
  };
}

interface StepRow {
  threads: number;
  fastMs: number;
  detMs: number;
  loss: number;
}

function benchSteps(): StepRow[] {
  const rows: StepRow[] = [];
  const reps = quick ? 3 : 8;
  for (const threads of THREADS) {
    const runFast = stepReplay(createNativeKernels({ threads, deterministic: false }));
    const runDet = stepReplay(createNativeKernels({ threads, deterministic: true }));
    let loss = runFast();
    runDet();
    // Alternate the two modes so that any outside load hits both alike; keep the best of each.
    let fastMs = Infinity,
      detMs = Infinity;
    for (let i = 0; i < reps; i++) {
      let t = process.hrtime.bigint();
      loss = runFast();
      fastMs = Math.min(fastMs, Number(process.hrtime.bigint() - t) / 1e6);
      t = process.hrtime.bigint();
      runDet();
      detMs = Math.min(detMs, Number(process.hrtime.bigint() - t) / 1e6);
    }
    if (!Number.isFinite(loss)) throw new Error(`step replay produced a non-finite loss ${loss}`);
    rows.push({ threads, fastMs, detMs, loss });
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------

const info = nativeInfo();
log(
  `Tessera native kernels: isa=${info.isa}, ${info.blasConfig} (core ${info.blasCore}), BLAS threading: ${info.blasThreading}`,
);
log(`reference config B=${B} T=${T} C=${C} NH=${NH} V=${V} layers=${L}; N=B*T=${N}; best-of-N timings\n`);

const matmuls = benchMatmuls();
const kernels = benchKernels();

const f1 = (x: number) => x.toFixed(1);
const f2 = (x: number) => x.toFixed(2);
const pct = (x: number) => `${(100 * x).toFixed(0)}%`;

log("## Matmul GFLOP/s (raw = cblas_sgemm with OpenBLAS's own threads; fast/det = Tessera kernels; % of raw)\n");
log('| layer | N x C -> OC | thr | raw fwd | fast fwd | det fwd | raw bwd | fast bwd | det bwd |');
log('|---|---|---:|---:|---:|---:|---:|---:|---:|');
for (const r of matmuls) {
  log(
    `| ${r.layer} | ${r.N}x${r.C}->${r.OC} | ${r.threads} | ${f1(r.rawFwdGflops)} | ${f1(r.fastFwdGflops)} (${pct(r.fastFwdGflops / r.rawFwdGflops)}) | ` +
      `${f1(r.detFwdGflops)} (${pct(r.detFwdGflops / r.rawFwdGflops)}) | ${f1(r.rawBwdGflops)} | ` +
      `${f1(r.fastBwdGflops)} (${pct(r.fastBwdGflops / r.rawBwdGflops)}) | ${f1(r.detBwdGflops)} (${pct(r.detBwdGflops / r.rawBwdGflops)}) |`,
  );
}

log('\n## Other kernels, ms per call (same code in fast and deterministic mode)\n');
log('| kernel | shape | calls/step | 1 thread | 2 threads | speedup |');
log('|---|---|---:|---:|---:|---:|');
for (const r of kernels) {
  log(`| ${r.kernel} | ${r.shape} | ${r.perStep} | ${f2(r.ms.t1)} | ${f2(r.ms.t2)} | ${f2(r.ms.t1 / r.ms.t2)}x |`);
}

// One training step's kernel time: every linear forward + backward, plus the other kernels.
const stepMs: Record<string, { fast: number; det: number }> = {};
for (const threads of THREADS) {
  let mmFast = 0,
    mmDet = 0;
  for (const r of matmuls.filter((m) => m.threads === threads)) {
    const count = LINEARS.find((l) => l[0] === r.layer)?.[3] ?? 0;
    mmFast += count * (r.fastFwdMs + r.fastBwdMs);
    mmDet += count * (r.detFwdMs + r.detBwdMs);
  }
  const other = kernels.reduce((s, r) => s + r.perStep * r.ms[`t${threads}`], 0);
  stepMs[`t${threads}`] = { fast: mmFast + other, det: mmDet + other };
}
log('\n## Sum of kernel time for one training step (forward + backward + AdamW, no JS overhead)\n');
log('| threads | fast ms | deterministic ms | deterministic cost | fast tokens/s |');
log('|---:|---:|---:|---:|---:|');
for (const threads of THREADS) {
  const s = stepMs[`t${threads}`];
  log(
    `| ${threads} | ${f1(s.fast)} | ${f1(s.det)} | +${pct(s.det / s.fast - 1)} | ${(N / (s.fast / 1000)).toFixed(0)} |`,
  );
}

const steps = benchSteps();
log('\n## Measured: one training step replayed as back-to-back kernel calls (incl. gradient zeroing)\n');
log('| threads | fast ms | deterministic ms | deterministic cost | fast tokens/s | deterministic tokens/s |');
log('|---:|---:|---:|---:|---:|---:|');
for (const r of steps) {
  log(
    `| ${r.threads} | ${f1(r.fastMs)} | ${f1(r.detMs)} | +${pct(r.detMs / r.fastMs - 1)} | ${(N / (r.fastMs / 1000)).toFixed(0)} | ${(N / (r.detMs / 1000)).toFixed(0)} |`,
  );
}

if (json) {
  process.stdout.write(
    JSON.stringify({ info, config: { B, T, C, NH, V, layers: L }, matmuls, kernels, stepMs, steps }, null, 2) + '\n',
  );
}
