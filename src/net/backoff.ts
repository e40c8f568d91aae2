/**
 * When to dial an unreachable peer again: exponential backoff, capped, with jitter. Pure (the
 * time and the random draw are passed in), so the policy is unit-tested apart from the dialler
 * (peer/boot.ts keepDialing) that keeps bootstrap peers and roster members connected.
 * Hand-written: a dozen lines, and the libp2p dialer's own retry policy is per dial, not per
 * peer across minutes of outage.
 */

export interface BackoffPolicy {
  /** Delay after the first failure (ms). */
  baseMs: number;
  /** Growth per further consecutive failure. */
  factor: number;
  /** The delay never exceeds this (ms): a peer back after an outage is redialled within it. */
  maxMs: number;
  /** Fraction of the delay drawn at random either way (0–1), so peers do not redial in step. */
  jitter: number;
}

/** Dialling bootstrap peers and roster members: 1 s, 2 s, 4 s, 8 s, then every 15 s (±20%). */
export const DIAL_BACKOFF: BackoffPolicy = { baseMs: 1000, factor: 2, maxMs: 15_000, jitter: 0.2 };

/**
 * The delay before the next dial after `failures` consecutive failed dials (0: none failed, dial
 * now). `rand` in [0, 1) picks the jitter (0.5: none). Never more than maxMs × (1 + jitter).
 */
export function backoffDelay(failures: number, policy: BackoffPolicy = DIAL_BACKOFF, rand = 0.5): number {
  if (!(failures > 0)) return 0;
  const n = Math.min(failures - 1, 64); // factor^64 already exceeds any cap
  const raw = Math.min(policy.maxMs, policy.baseMs * Math.pow(policy.factor, n));
  const r = Math.min(Math.max(rand, 0), 1);
  return Math.round(raw * (1 + policy.jitter * (2 * r - 1)));
}

/** Per-target dial state: consecutive failures and when the next dial is due. */
export interface DialState {
  failures: number;
  nextAt: number;
}

/** The state after a dial at `now` failed. */
export function dialFailed(st: DialState | undefined, now: number, policy = DIAL_BACKOFF, rand = 0.5): DialState {
  const failures = (st?.failures ?? 0) + 1;
  return { failures, nextAt: now + backoffDelay(failures, policy, rand) };
}

/** Whether a target is due for a dial at `now` (never dialled, or its backoff has passed). */
export const dialDue = (st: DialState | undefined, now: number): boolean => !st || now >= st.nextAt;
