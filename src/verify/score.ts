/**
 * The validator (issue 6): scores every submitted update so poisoning and free-riding earn
 * nothing. Pure: the loss of the model is passed in as a function, no clocks, no I/O.
 *
 * Checks, per round, in announcement order:
 *   hard    shape (length P), every value finite, norm > 0, norm ≤ NORM_CAP × the lower median
 *           of the round's non-zero norms (robust.ts normBound; of the decided set's when the
 *           validator also scores updates left out of it, so its verdicts on the decided set are
 *           the same whichever late updates it held), and the update's base hash equals the
 *           round's weights hash.
 *   copy    cosine ≥ COPY_COS with an update announced EARLIER this round (the earlier
 *           announcer wins: only the later one is flagged), or with the peer's own previous
 *           submission (replay).
 *   loss-δ  θ' = θ − η·Δ (η = the outer lr, no momentum: the update alone). gain_A = mean loss
 *           drop on k of the batches the peer was ASSIGNED this round, gain_R = the same on k
 *           random training batches (the same for every peer in the round). A peer that trained
 *           on its assignment fits those batches better than unseen ones, so gain_A − gain_R > 0;
 *           a free-rider, copier or replayer shows no such advantage, a sign flipper a negative
 *           one. Round score = max(0, min(gain_A − gain_R, gain_A)), 0 if hard/copy failed.
 *           The difference, not gain_A alone, so an update that helps everyone (a copied one)
 *           earns the copier nothing; capped by gain_A, because an update that makes the loss on
 *           the peer's own assignment WORSE (wrong-data: measured gains of −0.28 nats with a
 *           ±0.04 noisy difference) must earn nothing however the noise falls.
 * ScoreBook: EMA over rounds (α = EMA_ALPHA), multiplied by MISS_DECAY for a missed round.
 * Detection: a peer is flagged in a round when a hard or copy check failed, when its update
 * is harmful (gain_A < −HARM_NATS AND gain_R < −HARM_NATS: it makes the loss clearly worse on
 * its own assignment and on unseen data), or (from its FLAG_AFTER-th scored round on) its EMA
 * is below FLAG_FRAC × the median EMA of all peers. The margin is there because on a plateau an
 * honest update's gains are near zero (measured: 0.001–0.02 nats on k = 2 batches in the
 * swarm-behave drill) and noise alone can put both below 0. The adversaries this rule is for
 * move the loss by tenths of a nat (bench/verify's sim: wrong-data −0.05..−0.25, a sign flip
 * −0.3 in round 2); a quieter one (a sign flip late in training, −0.01) still scores 0 every
 * round and is flagged by the EMA rule, as before the margin.
 */
import { InvalidInputError, TesseraError } from '../util/errors.js';
import { compareIds } from '../swarm/assign.js';
import { median, norm2, normBound } from '../swarm/robust.js';

export const NORM_CAP = 10;
export const COPY_COS = 0.99;
export const EMA_ALPHA = 0.3;
export const MISS_DECAY = 0.5;
export const FLAG_FRAC = 0.25;
export const FLAG_AFTER = 2;
/** Loss increase (nats, on both the assigned and the random batches) that counts as harmful. */
export const HARM_NATS = 0.02;

/** A validator check refused an update. */
export class VerifyError extends TesseraError {
  constructor(message: string) {
    super('VERIFY', message);
  }
}

export interface Submission {
  peer: string;
  delta: Float32Array;
  baseHash: string;
}

export type HardFail = 'shape' | 'nonfinite' | 'zero' | 'norm' | 'base';

export function cosine(a: Float32Array, b: Float32Array): number {
  let ab = 0,
    aa = 0,
    bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return aa > 0 && bb > 0 ? ab / Math.sqrt(aa * bb) : 0;
}

/**
 * Hard checks for every submission (in the order given); null = passed. The norm bound comes from
 * the first `boundOf` submissions (default: all).
 */
export function hardChecks(
  subs: readonly Submission[],
  P: number,
  roundHash: string,
  boundOf = subs.length,
): (HardFail | null)[] {
  const norms = subs.map((s) => (s.delta.length === P ? norm2(s.delta) : NaN));
  // The lower median of the non-zero norms, as for clipping: of two updates, a ×100 one must not
  // lift the bound to half its own norm (it would pass, 100 < 10 × 50.5), and a zero one must not
  // drop it to 0 (every other update would fail).
  // (If none of the first `boundOf` moves, they fail as zero or non-finite whatever the bound is,
  // and the others are held to all the submissions' bound.)
  const finite = norms.filter((n) => Number.isFinite(n));
  const med = normBound(norms.slice(0, boundOf).filter((n) => Number.isFinite(n))) || normBound(finite);
  return subs.map((s, j) => {
    if (s.delta.length !== P) return 'shape';
    if (!Number.isFinite(norms[j])) return 'nonfinite';
    if (norms[j] === 0) return 'zero';
    if (norms[j] > NORM_CAP * med) return 'norm';
    if (s.baseHash !== roundHash) return 'base';
    return null;
  });
}

/**
 * Copy detection in announcement order: for submission j, the index of the earlier one it
 * copies (cosine ≥ COPY_COS), -1 for a replay of its own previous submission, or null.
 */
export function copyChecks(subs: readonly Submission[], previous: readonly (Float32Array | null)[]): (number | null)[] {
  return subs.map((s, j) => {
    for (let i = 0; i < j; i++) {
      if (subs[i].delta.length === s.delta.length && cosine(subs[i].delta, s.delta) >= COPY_COS) return i;
    }
    const p = previous[j];
    if (p && p.length === s.delta.length && cosine(p, s.delta) >= COPY_COS) return -1;
    return null;
  });
}

/** θ − η·Δ into out. */
export function applyAlone(theta: Float32Array, delta: Float32Array, lr: number, out: Float32Array): Float32Array {
  for (let i = 0; i < theta.length; i++) out[i] = Math.fround(theta[i] - Math.fround(lr * delta[i]));
  return out;
}

export interface LossDelta {
  gainAssigned: number;
  gainRandom: number;
  score: number;
}

/**
 * gain_A − gain_R for one update. `loss(params, batch)` evaluates the model; `before*` are the
 * losses of θ on the same batches (computed once per round by the caller).
 */
export function lossDelta<B>(
  theta: Float32Array,
  delta: Float32Array,
  lr: number,
  assigned: readonly B[],
  beforeAssigned: readonly number[],
  random: readonly B[],
  beforeRandom: readonly number[],
  loss: (params: Float32Array, batch: B) => number,
  scratch: Float32Array,
): LossDelta {
  if (assigned.length === 0 || random.length === 0)
    throw new InvalidInputError('loss-delta needs assigned and random batches');
  const p = applyAlone(theta, delta, lr, scratch);
  let gA = 0,
    gR = 0;
  assigned.forEach((b, i) => {
    gA += beforeAssigned[i] - loss(p, b);
  });
  random.forEach((b, i) => {
    gR += beforeRandom[i] - loss(p, b);
  });
  gA /= assigned.length;
  gR /= random.length;
  const d = Math.min(gA - gR, gA);
  return { gainAssigned: gA, gainRandom: gR, score: Number.isFinite(d) ? Math.max(0, d) : 0 };
}

/** EMA of round scores per peer, decayed on missed rounds; deterministic (sorted ids). */
export class ScoreBook {
  private readonly ema = new Map<string, number>();
  private readonly seen = new Map<string, number>();
  constructor(
    readonly alpha = EMA_ALPHA,
    readonly missDecay = MISS_DECAY,
  ) {
    if (!(alpha > 0 && alpha <= 1) || !(missDecay >= 0 && missDecay <= 1))
      throw new InvalidInputError('ScoreBook: alpha in (0,1], missDecay in [0,1]');
  }
  /** One round: `scores` for peers that submitted; every other known peer decays. */
  round(scores: Readonly<Record<string, number>>): void {
    for (const peer of this.peers()) if (!(peer in scores)) this.ema.set(peer, this.ema.get(peer)! * this.missDecay);
    for (const peer of Object.keys(scores).sort(compareIds)) {
      const s = scores[peer];
      if (!Number.isFinite(s)) throw new InvalidInputError(`ScoreBook: score of ${peer} is ${s}`);
      const prev = this.ema.get(peer);
      this.ema.set(peer, prev === undefined ? s : (1 - this.alpha) * prev + this.alpha * s);
      this.seen.set(peer, (this.seen.get(peer) ?? 0) + 1);
    }
  }
  get(peer: string): number {
    return this.ema.get(peer) ?? 0;
  }
  rounds(peer: string): number {
    return this.seen.get(peer) ?? 0;
  }
  peers(): string[] {
    return [...this.ema.keys()].sort(compareIds);
  }
  /** The detection rule on the EMA (hard/copy failures are flagged by the caller per round). */
  lowScore(peer: string): boolean {
    if (this.rounds(peer) < FLAG_AFTER) return false;
    const all = this.peers().map((p) => this.get(p));
    return this.get(peer) < FLAG_FRAC * median(all);
  }
}

export interface RoundVerdict {
  peer: string;
  hard: HardFail | null;
  /** Peer id copied (or 'self' for a replay), null if none. */
  copyOf: string | null;
  gainAssigned: number;
  gainRandom: number;
  score: number;
}

/** The update made the loss clearly worse both on its assignment and on unseen data. */
export function harmful(v: RoundVerdict): boolean {
  return v.gainAssigned < -HARM_NATS && v.gainRandom < -HARM_NATS;
}

/** The per-round part of the detection rule (the EMA part is ScoreBook.lowScore). */
export function roundFlag(v: RoundVerdict): boolean {
  return v.hard !== null || v.copyOf !== null || harmful(v);
}

/**
 * Scores one round. `subs` in announcement order; `assigned[j]` / `beforeAssigned[j]` are
 * submission j's assigned eval batches and θ's losses on them.
 */
export function scoreRound<B>(a: {
  theta: Float32Array;
  roundHash: string;
  lr: number;
  subs: readonly Submission[];
  previous: readonly (Float32Array | null)[];
  assigned: readonly (readonly B[])[];
  beforeAssigned: readonly (readonly number[])[];
  random: readonly B[];
  beforeRandom: readonly number[];
  loss: (params: Float32Array, batch: B) => number;
  /** The first `boundOf` submissions set the norm bound (hardChecks); default all. */
  boundOf?: number;
}): RoundVerdict[] {
  const P = a.theta.length;
  const hard = hardChecks(a.subs, P, a.roundHash, a.boundOf);
  const copy = copyChecks(a.subs, a.previous);
  const scratch = new Float32Array(P);
  return a.subs.map((s, j) => {
    const copyOf = copy[j] === null ? null : copy[j] === -1 ? 'self' : a.subs[copy[j]!].peer;
    if (hard[j] !== null || copyOf !== null)
      return { peer: s.peer, hard: hard[j], copyOf, gainAssigned: 0, gainRandom: 0, score: 0 };
    const r = lossDelta(
      a.theta,
      s.delta,
      a.lr,
      a.assigned[j],
      a.beforeAssigned[j],
      a.random,
      a.beforeRandom,
      a.loss,
      scratch,
    );
    return { peer: s.peer, hard: null, copyOf: null, ...r };
  });
}

/**
 * Why an update of a round's decided set earns nothing in the round's score report, or null if it
 * earns its tokens (peer/validator.ts): a failed audit, a hard or copy failure, a harmful update,
 * or a smoothed score under the flagging line (`lowScore`, from decided-set verdicts only). Pay
 * follows work (tokens, the weight the update got in the aggregate) once the checks found it
 * honest; the round's loss-delta number itself is too noisy to split a round by: on a plateau half
 * the honest updates score 0 by noise, and a short one's gain on its own assignment came out
 * negative (−0.005 against +0.02 on random batches) in a loaded run. An update that only ever
 * scores 0 (trained on other data, a quiet sign flip) is under the line from its second scored
 * round (FLAG_AFTER), so it is paid at most once.
 */
export function payRefusal(v: RoundVerdict, auditFailure: string | null, lowScore: boolean): string | null {
  if (auditFailure !== null) return `audit: ${auditFailure}`.slice(0, 64);
  if (v.hard !== null) return v.hard;
  if (v.copyOf !== null) return v.copyOf === 'self' ? 'replay' : 'copy';
  if (harmful(v)) return 'harmful';
  if (lowScore) return 'low score';
  return null;
}
