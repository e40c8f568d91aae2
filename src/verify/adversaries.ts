/**
 * The adversary library (issue 6): what a misbehaving peer submits instead of its honest
 * pseudo-gradient. Pure transforms of (its honest Δ, the Δs announced earlier this round, its
 * own earlier submissions, a seeded rng), so `tessera sim` and later real peers (`--behave`)
 * share one definition, and the validator's tests (src/verify/score.ts) have something real
 * to catch. Kinds:
 *   honest             submits its own Δ.
 *   free-rider-zero    did not train: submits zeros.
 *   free-rider-noise   did not train: Gaussian noise scaled to the norm of an earlier-announced Δ
 *                      (its own honest norm when it announces first), so norm checks pass.
 *   copier             copies the latest earlier-announced Δ plus noise of 1% of its norm.
 *   scaler             its honest Δ × 100.
 *   sign-flip          −(its honest Δ).
 *   wrong-data         trains on other data (the simulator feeds it uniform random tokens);
 *                      submits that Δ unchanged.
 *   stale              replays its previous submission (its first-round Δ, forever).
 *   sybil              a colluding group that does not train: the first member to announce
 *                      submits norm-matched noise, later members copy it (+1% noise).
 */
import { z } from 'zod';
import { InvalidInputError } from '../util/errors.js';

export const BEHAVIOURS = [
  'honest',
  'free-rider-zero',
  'free-rider-noise',
  'copier',
  'scaler',
  'sign-flip',
  'wrong-data',
  'stale',
  'sybil',
] as const;
export const BehaviourSchema = z.enum(BEHAVIOURS);
export type Behaviour = z.infer<typeof BehaviourSchema>;

/** Parse one `--behave` kind, with the list of valid kinds in the error. */
export function parseBehaviour(s: string): Behaviour {
  const r = BehaviourSchema.safeParse(s.trim());
  if (!r.success) throw new InvalidInputError(`unknown behaviour "${s}": expected one of ${BEHAVIOURS.join(', ')}`);
  return r.data;
}

/**
 * Per-worker behaviours from either `6=scaler,7=sign-flip` (explicit workers) or
 * `scaler:2` / `scaler:1,copier:1` (that many workers, taken from the END of the announcement
 * order so copiers have someone to copy). Unlisted workers are honest.
 */
export function parseBehaviours(spec: string, workers: number): Behaviour[] {
  const out: Behaviour[] = new Array<Behaviour>(workers).fill('honest');
  const parts = spec
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  let next = workers - 1;
  const counted: [Behaviour, number][] = [];
  for (const p of parts) {
    let m = /^(\d+)=([a-z-]+)$/.exec(p);
    if (m) {
      const w = Number(m[1]);
      if (w >= workers) throw new InvalidInputError(`--behave ${p}: worker ${w} out of range 0..${workers - 1}`);
      out[w] = parseBehaviour(m[2]);
      continue;
    }
    m = /^([a-z-]+):(\d+)$/.exec(p);
    if (m) {
      counted.push([parseBehaviour(m[1]), Number(m[2])]);
      continue;
    }
    throw new InvalidInputError(`--behave "${p}": expected <worker>=<kind> or <kind>:<count>`);
  }
  // Counted kinds fill from the end; listed first = announces last.
  for (const [kind, n] of counted) {
    for (let i = 0; i < n; i++) {
      while (next >= 0 && out[next] !== 'honest') next--;
      if (next < 0) throw new InvalidInputError(`--behave ${spec}: more adversaries than ${workers} workers`);
      out[next--] = kind;
    }
  }
  return out;
}

export interface BehaveContext {
  /** The Δ this worker computed (for wrong-data: trained on the wrong data). */
  honest: Float32Array;
  /** Δs submitted earlier in this round, in announcement order. */
  earlier: readonly Float32Array[];
  /** Behaviours of those earlier submitters (same order), so Sybils find their leader. */
  earlierKinds: readonly Behaviour[];
  /** This worker's previous submission (null in its first round). */
  previous: Float32Array | null;
  /** Uniform [0, 1) source (seeded by the caller). */
  rng: () => number;
}

export const SCALER_FACTOR = 100;
export const COPY_NOISE = 0.01;

export function l2(x: Float32Array): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return Math.sqrt(s);
}

/** Standard normal via Box-Muller on the given uniform source. */
function gauss(rng: () => number): number {
  const u = 1 - rng();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng());
}

function noise(n: number, norm: number, rng: () => number): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = gauss(rng);
  const s = l2(x);
  if (s > 0) for (let i = 0; i < n; i++) x[i] = (x[i] * norm) / s;
  return x;
}

function noisyCopy(src: Float32Array, rng: () => number): Float32Array {
  const e = noise(src.length, COPY_NOISE * l2(src), rng);
  for (let i = 0; i < e.length; i++) e[i] += src[i];
  return e;
}

/** What a worker with behaviour `kind` submits. Never mutates the inputs. */
export function behave(kind: Behaviour, c: BehaveContext): Float32Array {
  const n = c.honest.length;
  const refNorm = () => (c.earlier.length > 0 ? l2(c.earlier[c.earlier.length - 1]) : l2(c.honest));
  switch (kind) {
    case 'honest':
    case 'wrong-data':
      return c.honest.slice();
    case 'free-rider-zero':
      return new Float32Array(n);
    case 'free-rider-noise':
      return noise(n, refNorm(), c.rng);
    case 'copier':
      return c.earlier.length > 0 ? noisyCopy(c.earlier[c.earlier.length - 1], c.rng) : noise(n, l2(c.honest), c.rng);
    case 'scaler': {
      const x = c.honest.slice();
      for (let i = 0; i < n; i++) x[i] *= SCALER_FACTOR;
      return x;
    }
    case 'sign-flip': {
      const x = c.honest.slice();
      for (let i = 0; i < n; i++) x[i] = -x[i];
      return x;
    }
    case 'stale':
      return c.previous ? c.previous.slice() : c.honest.slice();
    case 'sybil': {
      const lead = c.earlierKinds.indexOf('sybil');
      return lead >= 0 ? noisyCopy(c.earlier[lead], c.rng) : noise(n, refNorm(), c.rng);
    }
  }
}
