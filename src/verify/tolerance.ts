/**
 * The tolerance rule of audits when trainers use GPUs (docs/WEBGPU.md "Audits when trainers use
 * GPUs"): is one trainer's committed inner step close enough to the same step re-executed on the
 * CPU deterministic kernels? Pure and deterministic (float64 sums in index order, no I/O), so
 * that every peer judges a fraud proof the same way: the rule, its parameters (the run
 * manifest's `hyper.audit.tolerance`) and the three states it reads travel in the proof.
 *
 * Inputs: the committed pre-state S (θ, m, v, t) of step k, the reference post-state S' (one
 * step from S on the CPU), and the trainer's committed post-state Ŝ. A GPU's honest step differs
 * from S' by float rounding (FMA contraction, exp/log/sqrt accuracy, summation order): ~1e-7
 * relative on most coordinates, and, rarely, a sign flip of Adam's update on a coordinate whose
 * gradient is ≈ 0 at the first step (there m̂/√v̂ = ±1 either way). The rule:
 *
 * 1. the step count is exact (t̂ = t + 1), every value is finite, v̂ ≥ 0;
 * 2. for X in θ, m, v: the L2 norm of the per-coordinate excess |X̂ − X'| − slack(X'), without its
 *    `outliers` largest entries, is at most `rel` times the norm of what the step itself did to X
 *    (‖θ' − θ‖, ‖m' − β1·m‖ = (1−β1)‖g‖, ‖v' − β2·v‖ = (1−β2)‖g²‖): a cheater moves the weights by
 *    at most `rel` of an honest step, per step, in any direction it likes, and no more;
 * 3. no θ coordinate's excess is over `cap`·lr (the outliers included): a targeted edit of a few
 *    weights gets at most `cap` learning rates per step (an honest Adam step moves a weight by
 *    about one);
 * 4. the same two bounds (trimmed L2 at `rel`·‖r'‖, every coordinate within `cap`) on Adam's
 *    next-update ratio r = m̂ / (√v̂ + ε) (bias-corrected) that the moments carry: this stops the
 *    attack of rule 2 alone, which shrinks v on a coordinate whose v is tiny (a negligible L2
 *    change) so that the next step, re-executed faithfully from the committed moments, moves that
 *    weight by lr·m/ε, thousands of learning rates.
 *
 * slack(x) = 2⁻¹⁹·|x| + 2⁻¹²⁶ (a few float32 ulps) absorbs the last-bit differences of an
 * honest step where the step itself changes nothing (lr = 0, a gradient of exactly 0).
 *
 * What a claimed GPU class buys, then, is this tolerance and nothing else: `rel` of a step per
 * step in L2, `outliers` coordinates moved by up to `cap` learning rates. The manifest fixes it;
 * a run without one audits bit for bit and refuses GPU trainers.
 */
import { z } from 'zod';
import type { AdamWSettings } from '../train/adamw.js';

export const ToleranceSchema = z
  .object({
    /** Trimmed-L2 bound on the deviation of θ, m, v and Adam's ratio, relative to the step's own change. */
    rel: z.number().gt(0).max(0.1).default(1e-3),
    /** Coordinates per tensor exempt from the L2 bound (not from the cap). */
    outliers: z.number().int().min(0).max(4096).default(64),
    /** Per-coordinate cap: θ in learning rates of the step, Adam's update ratio in absolute terms. */
    cap: z.number().gt(0).max(16).default(3),
  })
  .strict();
export type Tolerance = z.infer<typeof ToleranceSchema>;
export const DEFAULT_TOLERANCE: Tolerance = ToleranceSchema.parse({});

/** What the rule reads of a state (audit.ts StepState). */
export interface JudgedState {
  theta: Float32Array;
  m: Float32Array;
  v: Float32Array;
  step: number;
}

export interface Measure {
  /** Trimmed L2 of the excess over its budget (≤ 1 passes). */
  l2: number;
  /** Largest per-coordinate excess over its cap (≤ 1 passes); NaN when not capped. */
  max: number;
}

export interface StepJudgement {
  ok: boolean;
  /** The first broken bound, in words (null when ok). */
  reason: string | null;
  theta: Measure;
  m: Measure;
  v: Measure;
  ratio: Measure;
}

const slack = (x: number): number => Math.abs(x) * 2 ** -19 + 2 ** -126;

/** Keeps the k largest values pushed (a min-heap), to subtract them from a sum of squares. */
class TopK {
  private readonly h: Float64Array;
  private n = 0;
  constructor(private readonly k: number) {
    this.h = new Float64Array(Math.max(1, k));
  }
  push(x: number): void {
    const h = this.h;
    if (this.k === 0) return;
    if (this.n < this.k) {
      let i = this.n++;
      h[i] = x;
      while (i > 0) {
        const p = (i - 1) >> 1;
        if (h[p] <= h[i]) break;
        [h[p], h[i]] = [h[i], h[p]];
        i = p;
      }
      return;
    }
    if (x <= h[0]) return;
    h[0] = x;
    for (let i = 0; ;) {
      const l = 2 * i + 1,
        r = l + 1;
      let s = i;
      if (l < this.n && h[l] < h[s]) s = l;
      if (r < this.n && h[r] < h[s]) s = r;
      if (s === i) break;
      [h[s], h[i]] = [h[i], h[s]];
      i = s;
    }
  }
  /** Sum of the kept values, largest first (a fixed order: the same result on every peer). */
  sum(): number {
    const kept = Array.from(this.h.subarray(0, this.n)).sort((a, b) => b - a);
    return kept.reduce((a, x) => a + x, 0);
  }
}

/** Excess d_c ≥ 0 per coordinate → (trimmed L2, max); `budget` scales the L2, `cap` the max. */
function measure(
  n: number,
  excess: (i: number) => number,
  outliers: number,
  budget: number,
  cap: number | null,
): Measure {
  const top = new TopK(outliers);
  let total = 0,
    max = 0;
  for (let i = 0; i < n; i++) {
    const d = excess(i);
    if (d > max) max = d;
    const sq = d * d;
    total += sq;
    top.push(sq);
  }
  const trimmed = Math.sqrt(Math.max(0, total - top.sum()));
  return {
    l2: trimmed === 0 ? 0 : budget > 0 ? trimmed / budget : Infinity,
    max: cap === null ? NaN : max === 0 ? 0 : cap > 0 ? max / cap : Infinity,
  };
}

function norm(n: number, f: (i: number) => number): number {
  let s = 0;
  for (let i = 0; i < n; i++) {
    const x = f(i);
    s += x * x;
  }
  return Math.sqrt(s);
}

/**
 * Judges the claimed post-state of one step against the reference step from the same pre-state.
 * `lr` is the step's learning rate; `adamw` the run's settings (β1, β2, ε).
 */
export function judgeStep(
  pre: JudgedState,
  ref: JudgedState,
  claimed: JudgedState,
  o: { lr: number; adamw: AdamWSettings; tol: Tolerance },
): StepJudgement {
  const n = ref.theta.length;
  const none: Measure = { l2: NaN, max: NaN };
  const fail = (reason: string): StepJudgement => ({ ok: false, reason, theta: none, m: none, v: none, ratio: none });
  for (const s of [pre, claimed])
    if (s.theta.length !== n || s.m.length !== n || s.v.length !== n) return fail('state sizes differ');
  if (claimed.step !== ref.step) return fail(`step count ${claimed.step}, expected ${ref.step}`);
  for (let i = 0; i < n; i++) {
    const a = claimed.theta[i],
      b = claimed.m[i],
      c = claimed.v[i];
    if (!Number.isFinite(a) || !Number.isFinite(b) || !Number.isFinite(c)) return fail(`non-finite value at ${i}`);
    if (c < 0) return fail(`negative second moment at ${i}`);
  }
  const { rel, outliers, cap } = o.tol;
  const { beta1, beta2, eps } = o.adamw;
  const ex = (x: Float32Array, y: Float32Array) => (i: number) => Math.max(0, Math.abs(x[i] - y[i]) - slack(y[i]));
  const theta = measure(
    n,
    ex(claimed.theta, ref.theta),
    outliers,
    rel * norm(n, (i) => ref.theta[i] - pre.theta[i]),
    cap * o.lr,
  );
  const m = measure(n, ex(claimed.m, ref.m), outliers, rel * norm(n, (i) => ref.m[i] - beta1 * pre.m[i]), null);
  const v = measure(n, ex(claimed.v, ref.v), outliers, rel * norm(n, (i) => ref.v[i] - beta2 * pre.v[i]), null);
  // Adam's bias-corrected update ratio for the state's step count t (what the next step builds on).
  const t = ref.step;
  const c1 = 1 - Math.pow(beta1, t),
    c2 = 1 - Math.pow(beta2, t);
  const ratio = (s: JudgedState, i: number): number => s.m[i] / c1 / (Math.sqrt(s.v[i] / c2) + eps);
  const ratioM = measure(
    n,
    (i) => Math.abs(ratio(claimed, i) - ratio(ref, i)),
    outliers,
    rel * norm(n, (i) => ratio(ref, i)),
    cap,
  );
  const broken: [string, number][] = [
    ['theta (trimmed L2)', theta.l2],
    ['theta (one coordinate)', theta.max],
    ['first moment (trimmed L2)', m.l2],
    ['second moment (trimmed L2)', v.l2],
    ["Adam's ratio (trimmed L2)", ratioM.l2],
    ["Adam's ratio (one coordinate)", ratioM.max],
  ];
  const worst = broken.find(([, x]) => x > 1);
  return {
    ok: worst === undefined,
    reason: worst
      ? `${worst[0]} is ${worst[1] === Infinity ? 'over a zero budget' : `${worst[1].toPrecision(3)}× the tolerance`}`
      : null,
    theta,
    m,
    v,
    ratio: ratioM,
  };
}
