/**
 * Audit cost (issue 6): one trainer's H=64 round with per-step commitments, a validator's full
 * re-execution audit, fault localisation by bisection, and fraud-proof checking by another
 * peer, as CPU time and as a fraction of the trainer's round. Prints a table and JSON.
 *
 *   node dist/bench/audit.js [--dim 64] [--layers 2] [--ctx 64] [--vocab 512] [--batch 4] [--threads 1] [--p 0.1]
 */
import { createHash } from 'node:crypto';
import { loadKernels } from '../src/kernels/index.js';
import { GPT } from '../src/model/gpt.js';
import { weightsHash } from '../src/model/checkpoint.js';
import { DEFAULT_ADAMW } from '../src/train/adamw.js';
import type { ModelConfig } from '../src/model/config.js';
import {
  Stepper,
  audit,
  bisect,
  commitSteps,
  makeFraudProof,
  oracleFor,
  verifyFraudProof,
  type AuditJob,
  type StepState,
} from '../src/verify/audit.js';
import { encodeFraudProof, decodeFraudProof } from '../src/verify/audit-wire.js';

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

const H = 64;
const threads = arg('threads', 1),
  p = arg('p', 0.1);
const config: ModelConfig = {
  vocabSize: arg('vocab', 512),
  ctx: arg('ctx', 64),
  dim: arg('dim', 64),
  layers: arg('layers', 2),
  heads: 4,
};
const kernels = (): ReturnType<typeof loadKernels> => loadKernels({ threads, deterministic: true });

function tokens(seed: number, n: number): Uint16Array {
  const t = new Uint16Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    t[i] = (x >>> 16) % config.vocabSize;
  }
  return t;
}

const job: AuditJob = {
  runId: createHash('sha256').update('bench').digest('hex'),
  round: 1,
  innerSteps: H,
  shards: [
    { shard: 0, tokens: tokens(1, 50_000) },
    { shard: 1, tokens: tokens(2, 50_000) },
  ],
  B: arg('batch', 4),
  T: config.ctx,
  schedule: { kind: 'cosine', maxLr: 1e-3, minLrFrac: 0.1, warmupSteps: 10, totalSteps: 10_000, decayFrac: 0.2 },
  adamw: DEFAULT_ADAMW,
};

const cpu = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
function timed<T>(f: () => T): { v: T; cpuMs: number; wallMs: number } {
  const c = cpu(),
    w = performance.now();
  const v = f();
  return { v, cpuMs: cpu() - c, wallMs: performance.now() - w };
}

const g = new GPT(config, kernels());
g.init(1);
const start: StepState = {
  theta: g.params.slice(),
  m: new Float32Array(g.numParams),
  v: new Float32Array(g.numParams),
  step: job.round * H,
};
const baseHash = weightsHash(start.theta);

// Trainer: plain H steps (as runJob) vs with per-step commitments.
const plainSt = new Stepper(config, kernels(), job);
plainSt.load(start);
for (let i = 0; i < 8; i++) plainSt.stepAt(i); // warm-up (JIT, allocations)
const plain = timed(() => {
  plainSt.load(start);
  for (let i = 0; i < H; i++) plainSt.stepAt(i);
});
// Commitment cost alone (hashing θ, m, v after every step); the kept states for answering
// audits are a memory/copy choice (an honest trainer can instead regenerate them).
const commitOnly = timed(() => commitSteps(new Stepper(config, kernels(), job), start));
const trainer = timed(() => commitSteps(new Stepper(config, kernels(), job), start, { keep: true }));
const T0 = plain.cpuMs;

const honestAudit = timed(() =>
  audit(new Stepper(config, kernels(), job), 't', trainer.v.root, baseHash, oracleFor(trainer.v)),
);
if (!honestAudit.v.ok) throw new Error('honest trainer failed its audit');

interface Row {
  k: number;
  located: number;
  queries: number;
  locateSteps: number;
  auditCpuMs: number;
  locateCpuMs: number;
  decodeCpuMs: number;
  verifyCpuMs: number;
  proofBytes: number;
  verified: boolean;
}
const rows: Row[] = [];
for (const k of [1, 2, 17, 33, 63, 64]) {
  const c = commitSteps(new Stepper(config, kernels(), job), start, {
    keep: true,
    tamper: (s, st) => {
      if (s === k) st.gpt.params[0] += 1e-3;
    },
  });
  const val = new Stepper(config, kernels(), job);
  const a = timed(() => audit(val, 't', c.root, baseHash, oracleFor(c)));
  const r = a.v;
  if (r.ok || r.reason !== 'fraud') throw new Error(`fault at ${k} not found`);
  // Localisation alone, measured: bisection against the validator's reference leaves (which
  // equal the honest trace's) plus building the proof with its one re-executed step.
  const loc = timed(() => {
    const b = bisect(oracleFor(c), c.root, trainer.v.leaves);
    return makeFraudProof(new Stepper(config, kernels(), job), 't', c.root, b.k, oracleFor(c));
  });
  if (!loc.v || loc.v.k !== k) throw new Error('localisation failed');
  const bytes = encodeFraudProof(r.proof);
  const other = new Stepper(config, kernels(), job);
  const dec = timed(() => decodeFraudProof(bytes));
  const vf = timed(() => verifyFraudProof(dec.v, { stepper: other, root: c.root, trainer: 't', baseHash }));
  rows.push({
    k,
    located: r.bisect.k,
    queries: r.bisect.queries,
    locateSteps: r.locateSteps,
    auditCpuMs: a.cpuMs,
    locateCpuMs: loc.cpuMs,
    decodeCpuMs: dec.cpuMs,
    verifyCpuMs: vf.cpuMs,
    proofBytes: bytes.length,
    verified: vf.v.ok && other.executed === 1,
  });
}

const f = (x: number): string => x.toFixed(3);
const out = {
  kernels: kernels().name,
  threads,
  config,
  B: job.B,
  H,
  params: g.numParams,
  trainerRoundCpuMs: T0,
  trainerCommitCpuMs: commitOnly.cpuMs,
  commitOverhead: commitOnly.cpuMs / T0 - 1,
  trainerCommitKeepCpuMs: trainer.cpuMs,
  honestAuditCpuMs: honestAudit.cpuMs,
  honestAuditFrac: honestAudit.cpuMs / T0,
  expectedValidatorFrac: (p * honestAudit.cpuMs) / T0,
  p,
  faults: rows.map((r) => ({
    ...r,
    auditFrac: r.auditCpuMs / T0,
    locateFrac: r.locateCpuMs / T0,
    verifyFrac: r.verifyCpuMs / T0,
  })),
};
process.stderr.write(
  `kernels ${out.kernels} (deterministic, ${threads} thread${threads > 1 ? 's' : ''}), ${g.numParams} params, B=${job.B} T=${job.T}, H=${H}\n`,
);
process.stderr.write(
  `trainer round (H steps, CPU): ${T0.toFixed(1)} ms; with per-step commitments: ${commitOnly.cpuMs.toFixed(1)} ms (+${(100 * out.commitOverhead).toFixed(1)}%), also keeping all states: ${trainer.cpuMs.toFixed(1)} ms\n`,
);
process.stderr.write(
  `honest audit (full re-execution): ${honestAudit.cpuMs.toFixed(1)} ms = ${f(out.honestAuditFrac)} of a trainer round; at p=${p}: ${f(out.expectedValidatorFrac)} per round\n`,
);
process.stderr.write(
  '  k | located | queries | steps to locate | audit/trainer | locate/trainer | verify/trainer | decode ms | proof KiB | verified (1 step)\n',
);
for (const r of out.faults) {
  process.stderr.write(
    `${String(r.k).padStart(3)} | ${String(r.located).padStart(7)} | ${String(r.queries).padStart(7)} | ${String(r.locateSteps).padStart(15)} | ${f(r.auditFrac).padStart(13)} | ${f(r.locateFrac).padStart(14)} | ${f(r.verifyFrac).padStart(14)} | ${r.decodeCpuMs.toFixed(1).padStart(9)} | ${(r.proofBytes / 1024).toFixed(0).padStart(9)} | ${r.verified}\n`,
  );
}
process.stdout.write(JSON.stringify(out) + '\n');
