/**
 * Issue 6's measurement: does verification make poisoning and free-riding fail? 8 trainers,
 * 2 adversaries per row (each kind alone, then mixed), with and without defences, on a tiny
 * model over Brown. Prints a markdown table and writes JSON (--out file).
 * Usage: node dist/bench/verify.js [--rounds N] [--H N] [--k N] [--only kind,...] [--out file.json]
 *
 * Measured (2 cores, ~40 s for all 16 rows; vocab 512, ctx 32, dim 32, 1 layer, M=8, H=16,
 * 30 rounds, batch 4, ~0.5M tokens, k=2): clean val loss 4.9569; every robust row within
 * −0.75%..+1.75% of clean (lower-median clipping; sign-flip +1.75%, stale +1.40%); undefended
 * scaler ×100 → 260 (+5152%), undefended sign-flip +3.1%; adversaries' score share ≤ 1.74%
 * (stale: its honest first round); detection in round 1 (zero, copier, scaler) or 2 (the rest);
 * honest false positives 0% in every defended row (unchanged by the HARM_NATS margin); validator
 * (all 8 peers) ≈ 1.5–2.5× one trainer's round (k=1: ≈ 1.1×).
 */
import { writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { loadKernels } from '../src/kernels/index.js';
import { loadCorpus, prepareDataset } from '../src/data/index.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { parseBehaviours, type Behaviour } from '../src/verify/adversaries.js';
import { runVerifySim, type Defence } from '../src/verify/sim.js';

const arg = (name: string, d: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : d;
};

export interface VerifyRow {
  row: string;
  defence: Defence;
  valLoss: number;
  vsCleanPct: number;
  advSharePct: number;
  advPaidPct: number;
  detectRounds: number | null;
  honestFpPct: number;
  validatorFrac: number;
  diverged: boolean;
}

async function main(): Promise<void> {
  const model = { vocabSize: 512, ctx: 32, dim: 32, layers: 1, heads: 2 };
  const M = 8;
  const rounds = Number(arg('rounds', '30')),
    H = Number(arg('H', '16'));
  const kernels = loadKernels({ threads: 2, deterministic: false });
  const ds = prepareDataset({ corpus: loadCorpus('brown'), vocabSize: model.vocabSize, cacheDir: defaultCacheDir() });
  const data = { train: ds.train, val: ds.val };
  const kinds = [
    'free-rider-zero',
    'free-rider-noise',
    'copier',
    'scaler',
    'sign-flip',
    'wrong-data',
    'stale',
    'sybil',
  ];
  const plan: [string, string, Defence, (number | null)?][] = [
    ['clean', '', 'none'],
    ['clean', '', 'robust'],
    ['clean (top-G 6)', '', 'robust', 6],
  ];
  for (const k of kinds) {
    if (k === 'scaler' || k === 'sign-flip') plan.push([k, `${k}:2`, 'none']);
    plan.push([k, `${k}:2`, 'robust']);
  }
  plan.push(
    ['mixed scaler+copier', 'scaler:1,copier:1', 'none'],
    ['mixed scaler+copier', 'scaler:1,copier:1', 'robust'],
  );
  plan.push(['mixed sign-flip+free-rider-noise', 'sign-flip:1,free-rider-noise:1', 'robust']);
  const only = arg('only', '');
  const rows: VerifyRow[] = [];
  let clean = NaN;
  for (const [name, spec, defence, topG] of plan) {
    if (only && !name.startsWith('clean') && !only.split(',').includes(name)) continue;
    const behaviours: Behaviour[] = parseBehaviours(spec, M);
    const t0 = performance.now();
    const r = await runVerifySim(data, kernels, {
      model,
      behaviours,
      defence,
      batch: 4,
      H,
      rounds,
      lr: 3e-3,
      warmup: 10,
      seed: 1,
      evalK: Number(arg('k', '2')),
      valBatches: 64,
      topG: topG ?? null,
    });
    if (name === 'clean' && defence === 'none') clean = r.finalValLoss;
    const adv = behaviours.map((b, w) => (b !== 'honest' ? w : -1)).filter((w) => w >= 0);
    const hon = behaviours.map((b, w) => (b === 'honest' ? w : -1)).filter((w) => w >= 0);
    const total = r.earned.reduce((a, b) => a + b, 0);
    const advEarned = adv.reduce((a, w) => a + r.earned[w], 0);
    const paidTotal = r.paid.reduce((a, b) => a + b, 0);
    const det = adv.map((w) => r.firstFlag[w]);
    const row: VerifyRow = {
      row: name,
      defence,
      valLoss: r.finalValLoss,
      vsCleanPct: ((r.finalValLoss - clean) / clean) * 100,
      advSharePct: total > 0 ? (100 * advEarned) / total : 0,
      advPaidPct: paidTotal > 0 ? (100 * adv.reduce((a, w) => a + r.paid[w], 0)) / paidTotal : 0,
      detectRounds: det.length === 0 ? null : det.some((d) => d === null) ? Infinity : Math.max(...(det as number[])),
      honestFpPct: (100 * hon.reduce((a, w) => a + r.flaggedRounds[w], 0)) / (hon.length * r.rounds),
      validatorFrac: r.validatorMs / r.trainerMs,
      diverged: r.diverged,
    };
    rows.push(row);
    process.stderr.write(
      `${name} [${defence}] loss ${r.finalValLoss.toFixed(4)} ${((performance.now() - t0) / 1000).toFixed(0)} s\n`,
    );
  }
  const f = (x: number, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : String(x));
  const lines = [
    `tiny GPT ${JSON.stringify(model)}, M=${M}, H=${H}, ${rounds} rounds, batch 4; clean val loss ${f(clean, 4)}`,
    "| row | defence | val loss | vs clean | adversaries' score share | paid share (unflagged rounds) | rounds to detect (max) | honest FP | validator / trainer round |",
    '|---|---|---|---|---|---|---|---|---|',
    ...rows.map(
      (r) =>
        `| ${r.row} | ${r.defence} | ${r.diverged ? 'diverged' : f(r.valLoss, 4)} | ${r.diverged ? '-' : (r.vsCleanPct >= 0 ? '+' : '') + f(r.vsCleanPct) + '%'} | ${f(r.advSharePct)}% | ${f(r.advPaidPct)}% | ${r.detectRounds === null ? '-' : r.detectRounds === Infinity ? 'never' : r.detectRounds} | ${f(r.honestFpPct)}% | ${f(r.validatorFrac)} |`,
    ),
  ];
  process.stdout.write(lines.join('\n') + '\n');
  const out = arg('out', '');
  if (out)
    writeFileSync(
      out,
      JSON.stringify({ model, M, H, rounds, clean, rows }, (_, v) => (v === Infinity ? 'Infinity' : v), 2) + '\n',
    );
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) await main();
