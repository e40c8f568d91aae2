/**
 * The swarm round protocol as ONE pure reducer: `step(state, event) → { state, effects, rejected }`.
 * No I/O, no clock, no randomness: time arrives as `tick` events, network input as `message`
 * events, and the driver's work (training, applying, syncing) as `trained` / `applied` /
 * `synced` events. Everything the driver must do comes back as data in `effects`. `step` never
 * mutates its input state. Design and rationale: docs/ROUNDS.md.
 *
 * Round r, seen by one peer:
 *   waiting (roster < minPeers: no training, only admits joiners) | training → collecting
 *   → agreement (single-decree Paxos over "which updates are applied", leaders in a fixed
 *     per-round order, attempt a led by order[a mod n]) → fetching (missing updates)
 *   → applying (driver runs aggregate + outer Nesterov) → announce weights hash → round r+1.
 * A peer whose post-apply hash disagrees with the majority's, or that falls behind, resyncs.
 *
 * Messages are assumed authenticated (`from` is the signer) by the network layer; every check
 * here depends on protocol state: round number, roster membership, claimed leader, base hash.
 * Drivers: feed ticks at least by nextDeadline(state); persist acceptorRecord(state) durably
 * before sending the effects of a step (Paxos votes must survive a restart); map messages to
 * envelopes with toWire / fromWire.
 */
import { z } from 'zod';
import { InvalidInputError, TesseraError } from '../util/errors.js';
import { assignShards, compareIds, roundSeed } from './assign.js';
import { canonicalHash, HEX64 } from './canonical.js';
import { leaderAt, leaderOrder, leaderRank } from './leader.js';
import type { DecodedManifest } from './manifest.js';

export const MAX_ROSTER = 1024;
export const MAX_JOINS_PER_ROUND = 16;
/** Join requests a member remembers per round. */
export const MAX_PENDING_JOINS = 64;
/** Byte budget of the future-round buffer (estimated from JSON), in total and per member. */
export const FUTURE_BYTES = 4 * 1024 * 1024;
export const FUTURE_MEMBER_BYTES = 512 * 1024;
/** Future-round messages buffered per member. */
export const FUTURE_MEMBER_MSGS = 8;
/** Later-round announces remembered per peer (certificate candidates). */
export const CLAIMS_PER_PEER = 6;
/** Probation seats open however few voters there are (a founder alone can still admit peers). */
export const MIN_PROBATION_SEATS = 4;

/** A protocol-level misuse by the caller (bad init options, bad params). */
export class RoundStateError extends TesseraError {
  constructor(message: string) {
    super('ROUND_STATE', message);
  }
}

// ───────────────────────────── wire types ─────────────────────────────

export const PeerIdSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[\x21-\x7e]+$/, 'peer id must be printable ASCII');
const HashSchema = z.string().regex(HEX64, 'must be 64 lowercase hex digits');
const RoundSchema = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const AttemptSchema = z.number().int().min(0).max(1_000_000_000);

export const IncludedUpdateSchema = z
  .object({
    peer: PeerIdSchema,
    updateHash: HashSchema,
    /** Aggregation weight: min(steps, H)·batch. */
    tokens: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  })
  .strict();
export type IncludedUpdate = z.infer<typeof IncludedUpdateSchema>;

/** A leader's proposal for round `round`, attempt `attempt`: which updates to apply, who joins. */
export const CommitSchema = z
  .object({
    round: RoundSchema,
    attempt: AttemptSchema,
    leader: PeerIdSchema,
    /** Sorted by peer, one per peer. */
    included: z.array(IncludedUpdateSchema).max(MAX_ROSTER),
    /** Sorted; non-members admitted to the roster from round+1. */
    joins: z.array(PeerIdSchema).max(MAX_JOINS_PER_ROUND),
    /** Sorted; members the leader heard from this round (liveness: the rest count a missed round). */
    live: z.array(PeerIdSchema).max(MAX_ROSTER),
  })
  .strict();
export type Commit = z.infer<typeof CommitSchema>;

/**
 * Message bodies as they travel (the network layer's envelope carries the kind and the signer;
 * see toWire / fromWire). Kinds are `round.<type>`.
 */
export const RoundBodySchemas = {
  /** A pseudo-gradient is available (payload travels beside it, addressed by updateHash). */
  'round.update': z
    .object({
      round: RoundSchema,
      baseHash: HashSchema,
      updateHash: HashSchema,
      steps: z.number().int().min(1).max(1_000_000_000),
    })
    .strict(),
  /** The leader's proposal; also counts as the leader's own acceptance. */
  'round.commit': z.object({ commit: CommitSchema }).strict(),
  /** A member accepted this commit (Paxos phase 2b), broadcast to all. */
  'round.accept': z.object({ commit: CommitSchema }).strict(),
  /** A member gave up on attempt−1: it accepts nothing below `attempt` and reports its accepted commit (Paxos 1b). */
  'round.promise': z
    .object({ round: RoundSchema, attempt: AttemptSchema.min(1), accepted: CommitSchema.nullable() })
    .strict(),
  /** A commit that a majority of the roster accepted; `signers` are the acceptors. */
  'round.decided': z.object({ commit: CommitSchema, signers: z.array(PeerIdSchema).max(MAX_ROSTER) }).strict(),
  /**
   * Post-apply weights hash of round `round` (i.e. θ of round+1), and `snapHash`, the
   * snapshotHash() of the whole state round+1 starts from (θ hash, roster, missed, base): an
   * announce is its signer's attestation of that state, and a quorum of them is the certificate
   * a lagging or joining peer needs before it installs anything (docs/ROUNDS.md).
   */
  'round.announce': z
    .object({ round: RoundSchema, weightsHash: HashSchema, valueHash: HashSchema, snapHash: HashSchema })
    .strict(),
  /** A synced non-member asks to be admitted. */
  'round.join': z.object({ round: RoundSchema }).strict(),
  /** A peer that needs a certificate (unsynced, or behind) asks members to resend their latest announce. */
  'round.ask': z.object({ round: RoundSchema }).strict(),
} as const;

const head = <T extends string>(t: T) => ({ type: z.literal(t), from: PeerIdSchema });
export const MessageSchema = z.discriminatedUnion('type', [
  RoundBodySchemas['round.update'].extend(head('update')),
  RoundBodySchemas['round.commit'].extend(head('commit')),
  RoundBodySchemas['round.accept'].extend(head('accept')),
  RoundBodySchemas['round.promise'].extend(head('promise')),
  RoundBodySchemas['round.decided'].extend(head('decided')),
  RoundBodySchemas['round.announce'].extend(head('announce')),
  RoundBodySchemas['round.join'].extend(head('join')),
  RoundBodySchemas['round.ask'].extend(head('ask')),
]);
export type Message = z.infer<typeof MessageSchema>;
export type UpdateMsg = Extract<Message, { type: 'update' }>;

/** Envelope kind and body for a message (the signer is the envelope's `from`). */
export function toWire(m: Message): { kind: keyof typeof RoundBodySchemas; body: Record<string, unknown> } {
  const { type, from: _from, ...body } = m;
  return { kind: `round.${type}`, body };
}

/** The message for an opened envelope, or null if the kind is not a round kind or the body is invalid. */
export function fromWire(kind: string, from: string, body: unknown): Message | null {
  if (!Object.hasOwn(RoundBodySchemas, kind)) return null;
  const b = RoundBodySchemas[kind as keyof typeof RoundBodySchemas].safeParse(body);
  if (!b.success) return null;
  const r = MessageSchema.safeParse({ ...b.data, type: kind.slice('round.'.length), from });
  return r.success ? r.data : null;
}

/** What a resyncing peer installs; served by snapshotOf(). `missed` is aligned with `roster`. */
export const SnapshotSchema = z
  .object({
    round: RoundSchema,
    weightsHash: HashSchema,
    roster: z.array(PeerIdSchema).min(1).max(MAX_ROSTER),
    missed: z.array(z.number().int().min(0).max(1_000_000)),
    /**
     * Aligned with roster: decided sets that included the member's update, up to the run's
     * probation (a member at probation votes and leads). Absent: every member is established.
     */
    credit: z.array(z.number().int().min(0).max(1_000_000)).optional(),
    /** Aligned with roster: training rounds a member has spent on probation. Absent: all 0. */
    age: z.array(z.number().int().min(0).max(1_000_000)).optional(),
    /** Deadline stretch [training, collection] in permille of the manifest's (adaptive deadlines). Absent: [1000, 1000]. */
    stretch: z.tuple([z.number().int().min(1000).max(16_000), z.number().int().min(1000).max(16_000)]).optional(),
    /** Hash of the weights this round's updates are built on (≠ weightsHash only in delayed mode). */
    trainBase: HashSchema.optional(),
  })
  .strict()
  .refine((s) => s.missed.length === s.roster.length, { message: 'missed must align with roster' })
  .refine((s) => (s.credit ?? s.roster).length === s.roster.length, { message: 'credit must align with roster' })
  .refine((s) => (s.age ?? s.roster).length === s.roster.length, { message: 'age must align with roster' })
  .refine((s) => s.roster.every((p, i) => i === 0 || compareIds(s.roster[i - 1], p) < 0), {
    message: 'roster must be sorted and unique',
  });
export type RoundSnapshot = z.infer<typeof SnapshotSchema>;

/** Identity of a round-start state: what an announce attests and what a resync must install exactly. */
export function snapshotHash(s: RoundSnapshot): string {
  return canonicalHash({
    domain: 'tessera/snapshot/v2',
    round: s.round,
    weightsHash: s.weightsHash,
    roster: s.roster,
    missed: s.missed,
    // Absent credit means "all established"; it hashes as null, so the two spellings of one
    // state never both exist (snapshotOf always writes the arrays).
    credit: s.credit ?? null,
    age: s.age ?? null,
    stretch: s.stretch ?? null,
    trainBase: s.trainBase ?? null,
  });
}

// ───────────────────────────── params ─────────────────────────────

export const RoundParamsSchema = z
  .object({
    runId: HashSchema,
    innerSteps: z.number().int().min(1),
    batch: z.number().int().min(1),
    numShards: z.number().int().min(1),
    trainMs: z.number().int().min(1),
    submitMs: z.number().int().min(1),
    commitMs: z.number().int().min(1),
    quorum: z.number().gt(0).max(1),
    minPeers: z.number().int().min(1),
    maxMissedRounds: z.number().int().min(1),
    genesisWeightsHash: HashSchema,
    /** Retry period for fetches and resyncs. */
    retryMs: z.number().int().min(1),
    /**
     * Overlap of each round's exchange with the next round's inner steps. In both modes a peer
     * that submits round r gets a `pretrain` hint to start round r+1's steps from θ_r at once.
     * - 'delayed': one-step-delayed outer update: round r's updates are built on θ_{r-1} (round 0
     *   and round 1 both on θ_0). Re-executable from a round's agreed weights; applies every
     *   peer's progress twice in effect (Δ_r and Δ_{r-1} start from nearby points), so it needs
     *   about half the outer lr.
     * - 'shift': updates are built on θ_r as without overlap; the driver moves its running job
     *   onto θ_r when θ_r is known (local += θ_r − θ_{r-1}), so the first steps of a round use
     *   slightly stale gradients and nothing is counted twice.
     * - 'eager': as 'shift', but the early steps begin on the peer's own guess of θ_r (the outer
     *   step applied with its own update in place of the aggregate), so they are less stale.
     * The reducer treats 'shift' and 'eager' alike; the difference is the driver's.
     */
    overlap: z.enum(['none', 'delayed', 'shift', 'eager']).default('none'),
    /**
     * Sybil resistance (docs/ROUNDS.md "Membership"): a newcomer votes and leads only after
     * this many decided sets included its update (verified work; validators' flags keep
     * unverified updates out). 0: every member votes at once (no probation).
     */
    probation: z.number().int().min(0).max(1000).default(2),
    /** Joins a round admits: at most this fraction of the voters (at least 1). */
    joinFraction: z.number().gt(0).max(1).default(0.25),
    /**
     * Adaptive deadlines (docs/ROUNDS.md "Deadlines that follow the swarm"): trainMs and the
     * collection window stretch up to this factor when the decided sets show the swarm is slower
     * than the manifest assumed, and shrink back when it is not. 1: fixed deadlines.
     */
    maxStretch: z.number().min(1).max(16).default(4),
  })
  .strict();
export type RoundParams = z.input<typeof RoundParamsSchema>;
type Params = z.output<typeof RoundParamsSchema>;

export function roundParams(d: Pick<DecodedManifest, 'manifest' | 'runId'>, retryMs?: number): RoundParams {
  const m = d.manifest;
  return {
    runId: d.runId,
    innerSteps: m.hyper.innerSteps,
    batch: m.hyper.batch,
    numShards: m.dataset.numShards,
    trainMs: m.timing.trainMs,
    submitMs: m.timing.submitMs,
    commitMs: m.timing.commitMs,
    quorum: m.timing.quorum,
    minPeers: m.timing.minPeers,
    maxMissedRounds: m.timing.maxMissedRounds,
    genesisWeightsHash: m.genesisWeightsHash,
    retryMs: retryMs ?? m.timing.commitMs,
    overlap: m.hyper.overlap,
    ...(m.timing.probation !== undefined ? { probation: m.timing.probation } : {}),
    ...(m.timing.joinFraction !== undefined ? { joinFraction: m.timing.joinFraction } : {}),
    ...(m.timing.maxStretch !== undefined ? { maxStretch: m.timing.maxStretch } : {}),
  };
}

// ───────────────────────────── events / effects ─────────────────────────────

export type RoundEvent =
  | { type: 'tick'; now: number }
  | { type: 'message'; msg: Message }
  /** The driver finished (or cut short) this peer's inner steps and holds the encoded Δ. */
  | { type: 'trained'; round: number; updateHash: string; steps: number }
  /** The driver applied the decided set; weightsHash is θ of round+1. */
  | { type: 'applied'; round: number; weightsHash: string }
  /**
   * The driver installed weights + momentum from a peer for this snapshot. `local`: it is this
   * peer's own snapshot file, restored at start-up (trusted: needs no certificate; only while
   * unsynced).
   */
  | { type: 'synced'; snapshot: RoundSnapshot; local?: boolean }
  /**
   * Selection by score (issue 6): members whose updates this peer leaves out of the sets it
   * proposes as leader (the run's validators flagged them). They still count as heard. Agreement
   * is unchanged: acceptors take any well-formed set, so every peer applies the decided one.
   */
  | { type: 'exclude'; peers: string[] };

export type Effect =
  | { type: 'broadcast'; msg: Message }
  | { type: 'send'; to: string; msg: Message }
  /** Run `steps` inner steps from θ (hash baseHash) on these shards; stop at local time `until`; report `trained`. */
  | { type: 'train'; round: number; baseHash: string; shards: number[]; steps: number; until: number }
  /**
   * Delayed mode only, a hint: round `round` will most likely train from θ (hash baseHash, the
   * weights this peer holds now) on these shards, so the driver may start those inner steps now,
   * overlapping this round's exchange. The later `train` effect is authoritative: the driver
   * keeps the early steps only if round, baseHash and shards all match it.
   */
  | { type: 'pretrain'; round: number; baseHash: string; shards: number[]; steps: number }
  | { type: 'stop-training'; round: number }
  /** Obtain these update payloads (from any of `from`) and deliver their `update` messages. */
  | { type: 'fetch'; round: number; updates: { peer: string; updateHash: string }[]; from: string[] }
  /** Apply exactly `included` (sorted by peer) to θ (hash baseHash) with applyCommitted(); report `applied`. Never emitted for an empty set. */
  | { type: 'apply'; round: number; baseHash: string; valueHash: string; included: IncludedUpdate[] }
  /**
   * Fetch weights + momentum + snapshotOf() of exactly this round and weights hash (a certified
   * state; the reducer also checks its snapshotHash) from one of `from`, or from any holder:
   * the hashes, not the source, make it right. Report `synced`. round and weightsHash are never
   * null now (kept nullable for drivers).
   */
  | { type: 'resync'; from: string[]; round: number | null; weightsHash: string | null };

export type RejectReason =
  | 'malformed'
  | 'self'
  | 'not-synced'
  | 'stale-round'
  | 'future-round'
  | 'not-member'
  | 'not-leader'
  | 'duplicate'
  | 'equivocation'
  | 'wrong-base'
  | 'wrong-phase'
  | 'stale-attempt'
  | 'bad-certificate'
  | 'conflict'
  | 'already-member'
  | 'late'
  | 'buffer-full'
  | 'unexpected'
  | 'stale-snapshot'
  | 'wrong-hash'
  /** A vote (accept, promise) from a member still on probation: it trains, but does not vote. */
  | 'not-voter'
  /** A commit admitting more joiners than the round's cap (joinRoom). */
  | 'too-many-joins'
  /** A snapshot no certificate (quorum of announces) stands behind, or one without a target. */
  | 'uncertified';

export interface Rejection {
  reason: RejectReason;
  detail: string;
  /** Sender of the rejected message, if it was a message. */
  from?: string;
  event: RoundEvent['type'];
}

export interface StepResult {
  state: RoundState;
  effects: Effect[];
  /** Every input that was ignored, with why (several when buffered messages are replayed). */
  rejected: Rejection[];
}

// ───────────────────────────── state ─────────────────────────────

export type Phase =
  'unsynced' | 'syncing' | 'waiting' | 'training' | 'collecting' | 'agreement' | 'fetching' | 'applying';

export interface Decision {
  commit: Commit;
  commitHash: string;
  valueHash: string;
  signers: string[];
}

interface PrevRound {
  round: number;
  roster: string[];
  /** The round's voters (its quorums were of them). */
  voters: string[];
  decision: Decision;
  /** Our post-apply hash; null once a resync replaced it. */
  resultHash: string | null;
  /** snapshotHash() of the state round+1 started from (what our announce attested). */
  snapHash: string;
  repliedTo: string[];
}

/** A member's attestation (its announce of round−1) that round `round` starts from this state. */
export interface Claim {
  round: number;
  weightsHash: string;
  snapHash: string;
}

/** A state to resync to, with the certificate that stands behind it. */
export interface SyncTarget {
  round: number;
  weightsHash: string;
  snapHash: string;
}

export interface RoundState {
  readonly self: string;
  readonly params: Params;
  now: number;
  phase: Phase;
  /** -1 until synced. */
  round: number;
  /** Hash of θ_round, the weights this round's decided updates are applied to. */
  weightsHash: string;
  /** Hash every update of this round must be built on: weightsHash, or θ_{round-1} in 'delayed' overlap. */
  trainBase: string;
  /** The driver holds the trainBase weights (false after syncing into a round in delayed mode). */
  baseHeld: boolean;
  /** Sorted. */
  roster: string[];
  /** Aligned with roster: consecutive rounds each member was not heard from (by the deciding leader). */
  missed: number[];
  /** Aligned with roster: decided sets that included the member's update, capped at params.probation. */
  credit: number[];
  /** Aligned with roster: training rounds spent on probation (a probationer that stays too long leaves). */
  age: number[];
  /** Deadline stretch [training, collection], permille (nextStretch; trainMsOf / submitMsOf). */
  stretch: [number, number];
  /**
   * Sorted: the members that vote, lead and certify this round: those whose credit reached the
   * probation (all members if none has; docs/ROUNDS.md "Membership"). Headcount alone buys nothing.
   */
  voters: string[];
  /** This peer is one of `voters`. */
  voter: boolean;
  seed: string;
  /** Leader order; attempt a is led by order[a mod n]. */
  order: string[];
  member: boolean;
  /**
   * False in the round a peer synced into from a fresh start: it may have voted in that round
   * before it restarted and forgotten, so it only learns (trains and submits, but neither
   * accepts, promises nor leads) until the next round.
   */
  voting: boolean;
  /** Rounds up to this one are never voted in (restart with an acceptor record; see InitOptions). */
  noVoteThrough: number;
  /** The acceptor record this process restarted with, restored when it syncs into that round. */
  restored: AcceptorRecord | null;
  /** roster.length >= minPeers. */
  training: boolean;
  startedAt: number;
  closedAt: number | null;
  trainingActive: boolean;
  /** Held update metadata by update hash. */
  updates: Map<string, UpdateMsg>;
  /** The first valid update received from each member (what this peer would propose). */
  byPeer: Map<string, string>;
  joins: string[];
  /** Sorted; members heard from this round (any message, or an announce of the previous round). */
  heard: string[];
  /** Sorted; members whose updates this peer does not propose (the 'exclude' event). */
  excluded: string[];
  /** Sorted; members already sending messages of a later round (a majority of them means we fell behind). */
  ahead: string[];
  // Paxos acceptor / proposer state for this round
  promised: number;
  accepted: Commit | null;
  attempt: number;
  attemptDeadline: number;
  /** attempt → (member → its accepted commit), for attempts this peer leads. */
  promises: Map<number, Map<string, Commit | null>>;
  proposed: number[];
  /** commitHash → commit and its acceptors (sorted). */
  votes: Map<string, { commit: Commit; signers: string[] }>;
  /**
   * A commit this peer will accept (or, if it is the leader, propose) as soon as it holds every
   * listed update: a peer only votes for data it has, so a decided set is always available
   * from a live majority.
   */
  pending: Commit | null;
  decision: Decision | null;
  fetchDeadline: number;
  repliedTo: string[];
  /** Messages for round+1 from members, replayed when it starts (byte budget: FUTURE_BYTES). */
  future: Message[];
  /** Estimated bytes of `future`, total and per sender (count, bytes). */
  futureBytes: number;
  futureBy: Map<string, { n: number; bytes: number }>;
  /** round → member → announced post-apply hash. Kept for round-1 and round. */
  announces: Map<number, Map<string, { weightsHash: string; valueHash: string; snapHash: string }>>;
  prev: PrevRound | null;
  sync: { target: SyncTarget | null; from: string[]; retryAt: number } | null;
  /**
   * Sorted: the peers this process was told to trust when it started unsynced (its bootstrap
   * list). Only their announces can certify a state to a peer that holds no roster yet.
   */
  trusted: string[];
  /**
   * Announces of later rounds (a member's claim that the run reached a state), newest last,
   * at most CLAIMS_PER_PEER per peer: from members of our roster, or, with no roster yet, from
   * trusted peers. A quorum of the roster (or a trusted peer) behind one claim is a certificate.
   */
  claims: Map<string, Claim[]>;
  /** Local time after which this peer may broadcast `ask` again. */
  askAt: number;
  /** Peers this member re-sent its announce to (`ask`) this round. */
  answered: string[];
}

// ───────────────────────────── pure helpers ─────────────────────────────

export function majority(n: number): number {
  return Math.floor(n / 2) + 1;
}

/**
 * The Paxos quorums of a round: a strict majority of the roster, or, for an even roster,
 * exactly half of it if that half holds the tie-breaker (the lowest peer id). Any two quorums
 * intersect (two halves share the tie-breaker; a half and a majority overlap by counting), so
 * agreement stays safe, and a 4-peer roster that loses two peers other than the tie-breaker
 * keeps deciding rounds. `members` must be distinct members of the sorted `roster`.
 */
export function isQuorum(roster: readonly string[], members: readonly string[]): boolean {
  const n = roster.length;
  if (members.length >= majority(n)) return true;
  return n % 2 === 0 && members.length === n / 2 && members.includes(roster[0]);
}

export function commitHash(c: Commit): string {
  return canonicalHash({ domain: 'tessera/commit/v1', commit: c });
}

/** Identity of what is applied (attempt and leader excluded): equal for re-proposals of one value. */
export function valueHash(c: Commit): string {
  return canonicalHash({
    domain: 'tessera/value/v1',
    round: c.round,
    included: c.included,
    joins: c.joins,
    live: c.live,
  });
}

/** Aggregation weight of an update of `steps` inner steps: min(steps, H)·batch. */
export function tokensFor(p: RoundParams, steps: number): number {
  return Math.min(steps, p.innerSteps) * p.batch;
}

function has(sorted: readonly string[], x: string): boolean {
  let lo = 0,
    hi = sorted.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const c = compareIds(sorted[mid], x);
    if (c === 0) return true;
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}

function insertSorted(xs: string[], x: string): boolean {
  let i = 0;
  while (i < xs.length && compareIds(xs[i], x) < 0) i++;
  if (xs[i] === x) return false;
  xs.splice(i, 0, x);
  return true;
}

function msgRound(m: Message): number {
  return m.type === 'commit' || m.type === 'accept' || m.type === 'decided' ? m.commit.round : m.round;
}

/** The membership a round starts from: sorted roster and, aligned with it, missed / credit / age. */
export interface Standing {
  roster: string[];
  missed: number[];
  credit: number[];
  age: number[];
  /** Deadline stretch [training, collection], permille of the manifest's (1000 = as written). */
  stretch: [number, number];
}

/**
 * Training rounds a probationer may spend without its update in the decided set (age − credit)
 * before it leaves the roster (it may ask to join again): a seat held by an identity that does
 * no verified work is freed after probation + 2 such rounds.
 */
export function probationSlack(p: Pick<Params, 'probation'>): number {
  return p.probation + 1;
}

/**
 * The roster of round+1 after `commit` (deterministic from agreed data only): members heard
 * stay (missed rounds count up otherwise), each included update adds one credit (up to the
 * probation), a probationer past probationLimit() training rounds leaves, and joiners enter
 * with no credit.
 */
export function nextRoster(
  p: Pick<Params, 'maxMissedRounds' | 'probation' | 'innerSteps' | 'batch' | 'maxStretch'>,
  cur: Standing,
  commit: Commit,
  trained = commit.included.length > 0,
): Standing {
  // Only the value (included, live, joins) may matter here, never the attempt or its leader:
  // peers may learn the same value through different attempts.
  const included = new Set(commit.included.map((u) => u.peer));
  const seen = new Set([...included, ...commit.live]);
  const rows: { peer: string; missed: number; credit: number; age: number }[] = [];
  cur.roster.forEach((peer, i) => {
    const missed = seen.has(peer) ? 0 : cur.missed[i] + 1;
    const credit = Math.min(p.probation, cur.credit[i] + (included.has(peer) ? 1 : 0));
    const onProbation = credit < p.probation;
    const age = onProbation && trained ? cur.age[i] + 1 : onProbation ? cur.age[i] : 0;
    if (missed >= p.maxMissedRounds) return;
    if (onProbation && age - credit > probationSlack(p)) return;
    rows.push({ peer, missed, credit, age });
  });
  for (const j of commit.joins) if (!has(cur.roster, j)) rows.push({ peer: j, missed: 0, credit: 0, age: 0 });
  rows.sort((a, b) => compareIds(a.peer, b.peer));
  const kept = rows.slice(0, MAX_ROSTER);
  return {
    roster: kept.map((r) => r.peer),
    missed: kept.map((r) => r.missed),
    credit: kept.map((r) => r.credit),
    age: kept.map((r) => r.age),
    stretch: trained ? nextStretch(p, cur, commit) : cur.stretch,
  };
}

/**
 * Deadlines that follow the swarm, from agreed data only (so every peer times round r+1 alike):
 * counting the round's voters only (probationers and fresh identities cannot slow a run),
 * - training: if at least half of the voters' included updates are short (fewer than H inner
 *   steps: the budget ran out), trainMs stretches by 5/4, else it shrinks by 1/50;
 * - collection: if fewer than 3/4 of the live voters landed an update (it arrived after the
 *   deadline), the window after training stretches by 5/4, else it shrinks by 1/50;
 * both within [1, maxStretch] × the manifest's, in integer permille.
 */
export function nextStretch(
  p: Pick<Params, 'probation' | 'innerSteps' | 'batch' | 'maxStretch'>,
  cur: Pick<Standing, 'roster' | 'credit' | 'stretch'>,
  commit: Commit,
): [number, number] {
  const max = Math.round(p.maxStretch * 1000);
  const grow = (x: number) => Math.min(max, Math.ceil((x * 5) / 4));
  const shrink = (x: number) => Math.max(1000, Math.floor((x * 49) / 50));
  const voters = votersOf(p, cur);
  const cap = p.innerSteps * p.batch;
  const inc = commit.included.filter((u) => has(voters, u.peer));
  const short = inc.filter((u) => u.tokens < cap).length;
  const live = new Set([...commit.live, ...inc.map((u) => u.peer)].filter((x) => has(voters, x)));
  const train = inc.length > 0 && 2 * short >= inc.length ? grow(cur.stretch[0]) : shrink(cur.stretch[0]);
  const submit = inc.length < Math.ceil(0.75 * live.size) ? grow(cur.stretch[1]) : shrink(cur.stretch[1]);
  return [train, submit];
}

/** This round's training budget (ms from its start): the manifest's, stretched. */
export function trainMsOf(s: Pick<RoundState, 'params' | 'stretch'>): number {
  return Math.round((s.params.trainMs * s.stretch[0]) / 1000);
}

/** This round's collection deadline (ms from its start): the stretched budget, then the stretched window. */
export function submitMsOf(s: Pick<RoundState, 'params' | 'stretch'>): number {
  return trainMsOf(s) + Math.round(((s.params.submitMs - s.params.trainMs) * s.stretch[1]) / 1000);
}

/**
 * The voters of a standing: members whose credit reached the probation. With none (every
 * established member left), every member votes, so the run can go on; documented as the one
 * case where newcomers vote without work.
 */
export function votersOf(p: Pick<Params, 'probation'>, st: Pick<Standing, 'roster' | 'credit'>): string[] {
  const v = st.roster.filter((_, i) => st.credit[i] >= p.probation);
  return v.length > 0 ? v : [...st.roster];
}

/**
 * How many joins a commit of this round may admit: at most joinFraction of the voters (at
 * least 1), while probation seats (max(MIN_PROBATION_SEATS, voters)) are free, within
 * MAX_JOINS_PER_ROUND and MAX_ROSTER. Acceptors check it (checkCommit).
 */
export function joinRoom(s: Pick<RoundState, 'params' | 'roster' | 'voters'>): number {
  const p = s.params;
  const v = s.voters.length;
  const perRound = Math.max(1, Math.floor(p.joinFraction * v + 1e-9));
  const seats = p.probation === 0 ? Infinity : Math.max(MIN_PROBATION_SEATS, v) - (s.roster.length - v);
  return Math.max(0, Math.min(MAX_JOINS_PER_ROUND, MAX_ROSTER - s.roster.length, perRound, seats));
}

/** The snapshot a resyncing peer needs from this one, or null when this peer is not synced. */
export function snapshotOf(s: RoundState): RoundSnapshot | null {
  if (s.phase === 'unsynced' || s.phase === 'syncing') return null;
  return {
    round: s.round,
    weightsHash: s.weightsHash,
    roster: [...s.roster],
    missed: [...s.missed],
    credit: [...s.credit],
    age: [...s.age],
    stretch: [s.stretch[0], s.stretch[1]],
    ...(s.params.overlap === 'delayed' ? { trainBase: s.trainBase } : {}),
  };
}

/** The local time at which the next tick can change anything (Infinity: only an event can). */
export function nextDeadline(s: RoundState): number {
  switch (s.phase) {
    case 'unsynced':
    case 'syncing':
      // With a target: retry the resync; without one: ask for announces (if anyone could certify).
      return s.sync && (s.sync.target || s.trusted.length > 0 || s.roster.length > 0) ? s.sync.retryAt : Infinity;
    case 'waiting':
    case 'training':
    case 'collecting':
      return s.startedAt + submitMsOf(s);
    case 'agreement':
      return s.voter && s.voting && !s.decision ? s.attemptDeadline : Infinity;
    case 'fetching':
      return s.fetchDeadline;
    case 'applying':
      return s.decision && s.decision.commit.included.length === 0 ? -Infinity : Infinity;
    default:
      return Infinity;
  }
}

export function leaderOf(s: RoundState, attempt: number): string {
  return leaderAt(s.order, attempt);
}

// ───────────────────────────── init ─────────────────────────────

export interface InitOptions {
  self: string;
  params: RoundParams;
  now: number;
  /** Start at round 0 (genesis weights) with this roster; otherwise start unsynced. */
  genesis?: { roster: readonly string[] };
  /**
   * Unsynced start: the peers this one trusts (its bootstrap list, given by the user). It asks
   * for their announces and installs only a state one of them attests (docs/ROUNDS.md).
   */
  bootstrap?: readonly string[];
  /**
   * Restart after a crash: the last acceptorRecord() the driver persisted. Paxos acceptors must
   * not forget their votes, so with it the peer restores them for that round and never votes
   * in an earlier one; without it (unknown history) it sits out voting in the round it first
   * syncs into, which is only safe if that round is the one it crashed in or later and which
   * stalls a round that needs its vote for a majority.
   */
  acceptor?: AcceptorRecord;
}

/** What a driver must persist (durably, before sending what `step` returned) to restart safely. */
export interface AcceptorRecord {
  round: number;
  promised: number;
  accepted: Commit | null;
  proposed: number[];
}

export const AcceptorRecordSchema = z
  .object({
    round: RoundSchema,
    promised: AttemptSchema,
    accepted: CommitSchema.nullable(),
    proposed: z.array(AttemptSchema).max(1_000_000),
  })
  .strict();

/** The acceptor state to persist; compare with the last one saved and write when it changed. Null before sync. */
export function acceptorRecord(s: RoundState): AcceptorRecord | null {
  if (s.round < 0) return null;
  return { round: s.round, promised: s.promised, accepted: s.accepted, proposed: [...s.proposed] };
}

export function init(opts: InitOptions): StepResult {
  const self = PeerIdSchema.safeParse(opts.self);
  if (!self.success) throw new RoundStateError(`bad self peer id ${JSON.stringify(opts.self)}`);
  const params = RoundParamsSchema.safeParse(opts.params);
  if (!params.success)
    throw new RoundStateError(
      `bad round params: ${params.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
    );
  if (params.data.submitMs < params.data.trainMs) throw new RoundStateError('submitMs must be >= trainMs');
  if (!Number.isFinite(opts.now)) throw new RoundStateError('now must be finite');
  let restored: AcceptorRecord | null = null;
  if (opts.acceptor !== undefined) {
    const r = AcceptorRecordSchema.safeParse(opts.acceptor);
    if (!r.success)
      throw new RoundStateError(
        `bad acceptor record: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
      );
    restored = r.data;
  }
  const s: RoundState = {
    self: opts.self,
    params: params.data,
    now: opts.now,
    phase: 'unsynced',
    round: -1,
    weightsHash: '',
    trainBase: '',
    baseHeld: false,
    roster: [],
    missed: [],
    credit: [],
    age: [],
    stretch: [1000, 1000],
    voters: [],
    voter: false,
    seed: '',
    order: [],
    member: false,
    voting: false,
    noVoteThrough: restored ? restored.round - 1 : -1,
    restored,
    training: false,
    startedAt: opts.now,
    closedAt: null,
    trainingActive: false,
    updates: new Map(),
    byPeer: new Map(),
    joins: [],
    heard: [],
    excluded: [],
    ahead: [],
    promised: 0,
    accepted: null,
    attempt: 0,
    attemptDeadline: Infinity,
    promises: new Map(),
    proposed: [],
    votes: new Map(),
    pending: null,
    decision: null,
    fetchDeadline: Infinity,
    repliedTo: [],
    future: [],
    futureBytes: 0,
    futureBy: new Map(),
    announces: new Map(),
    prev: null,
    sync: { target: null, from: [], retryAt: opts.now },
    trusted: [...new Set(opts.bootstrap ?? [])]
      .filter((p) => p !== opts.self && PeerIdSchema.safeParse(p).success)
      .sort(compareIds)
      .slice(0, MAX_ROSTER),
    claims: new Map(),
    askAt: opts.now,
    answered: [],
  };
  const c: Ctx = { s, effects: [], rejected: [], event: 'tick', fresh: new WeakSet() };
  if (opts.genesis) {
    const roster = [...new Set(opts.genesis.roster)].sort(compareIds);
    if (roster.length === 0 || roster.length > MAX_ROSTER)
      throw new RoundStateError(`genesis roster must have 1..${MAX_ROSTER} peers`);
    for (const p of roster)
      if (!PeerIdSchema.safeParse(p).success) throw new RoundStateError(`bad peer id ${JSON.stringify(p)}`);
    // Genesis members are established: they vote from round 0.
    startRound(
      c,
      {
        round: 0,
        weightsHash: s.params.genesisWeightsHash,
        roster,
        missed: roster.map(() => 0),
        credit: roster.map(() => s.params.probation),
        age: roster.map(() => 0),
        stretch: [1000, 1000],
      },
      null,
    );
  }
  advance(c);
  return { state: s, effects: c.effects, rejected: c.rejected };
}

// ───────────────────────────── the reducer ─────────────────────────────

interface Ctx {
  s: RoundState;
  effects: Effect[];
  rejected: Rejection[];
  event: RoundEvent['type'];
  /** Containers copied in this step (ours to mutate); everything else may be shared with the input state. */
  fresh: WeakSet<object>;
}

/** The state's containers that handlers mutate in place (copy-on-write via own()). */
type Shared =
  | 'updates'
  | 'byPeer'
  | 'joins'
  | 'heard'
  | 'ahead'
  | 'future'
  | 'futureBy'
  | 'announces'
  | 'claims'
  | 'answered'
  | 'repliedTo'
  | 'proposed'
  | 'votes'
  | 'promises';

/**
 * Copy-on-write: step() copies the state shallowly, so its containers are the input's until a
 * handler writes one. own() gives the writable container: the first write in a step copies it
 * (one level: a Map's entries or an array's items are shared, and are never mutated in place,
 * or are copied by mine() before they are). Only what an event touches is copied.
 */
function own<K extends Shared>(c: Ctx, k: K): RoundState[K] {
  const s = c.s;
  const v = s[k] as object;
  if (!c.fresh.has(v)) {
    const copy = (v instanceof Map ? new Map(v as Map<unknown, unknown>) : [...(v as unknown[])]) as RoundState[K];
    s[k] = copy;
    c.fresh.add(copy as object);
  }
  return s[k];
}

/** A writable copy of `x`, an entry of an owned container (copied once per step). */
function mine<T extends object>(c: Ctx, x: T, copy: (x: T) => T): T {
  if (c.fresh.has(x)) return x;
  const y = copy(x);
  c.fresh.add(y);
  return y;
}

function reject(c: Ctx, reason: RejectReason, detail: string, from?: string): void {
  c.rejected.push(from === undefined ? { reason, detail, event: c.event } : { reason, detail, from, event: c.event });
}

export function step(state: RoundState, event: RoundEvent): StepResult {
  if (event.type === 'tick') {
    if (!Number.isFinite(event.now)) throw new InvalidInputError('tick: now must be finite');
    const now = Math.max(state.now, event.now);
    if (now < nextDeadline(state)) return { state: { ...state, now }, effects: [], rejected: [] };
  }
  // Copy-on-write (see own()): the input state is never mutated, and an event costs what it
  // touches, not the size of the state (structuredClone here cost ~5 ms an event with a full buffer).
  const s: RoundState = { ...state };
  const c: Ctx = { s, effects: [], rejected: [], event: event.type, fresh: new WeakSet() };
  switch (event.type) {
    case 'tick':
      s.now = Math.max(s.now, event.now);
      break;
    case 'message':
      handleMessage(c, event.msg);
      break;
    case 'trained':
      handleTrained(c, event);
      break;
    case 'applied':
      handleApplied(c, event);
      break;
    case 'synced':
      handleSynced(c, event.snapshot, event.local === true);
      break;
    case 'exclude': {
      const ps = Array.isArray(event.peers)
        ? event.peers.filter((p) => typeof p === 'string' && p.length > 0 && p.length <= 128)
        : null;
      if (!ps || ps.length > MAX_ROSTER) {
        reject(c, 'malformed', 'exclude: peers must be a list of peer ids');
        break;
      }
      s.excluded = [...new Set(ps)].sort(compareIds);
      break;
    }
    default:
      reject(c, 'malformed', `unknown event ${(event as { type: unknown }).type}`);
  }
  advance(c);
  return { state: s, effects: c.effects, rejected: c.rejected };
}

/** Time-driven transitions; runs after every event. */
function advance(c: Ctx): void {
  const s = c.s;
  for (let guard = 0; guard < 8; guard++) {
    const before = s.phase;
    switch (s.phase) {
      case 'unsynced':
      case 'syncing':
        if (s.sync && s.now >= s.sync.retryAt && nextDeadline(s) !== Infinity) {
          const t = s.sync.target;
          if (t) c.effects.push({ type: 'resync', from: [...s.sync.from], round: t.round, weightsHash: t.weightsHash });
          else ask(c);
          s.sync = { ...s.sync, retryAt: s.now + s.params.retryMs };
        }
        break;
      case 'waiting':
      case 'training':
      case 'collecting':
        if (shouldClose(s)) closeCollection(c);
        break;
      case 'agreement':
        if (s.decision) break;
        if (s.voter && s.voting) {
          if (s.now >= s.attemptDeadline && !behind(c)) timeoutAttempt(c);
        } else {
          behind(c);
        }
        break;
      case 'applying':
        if (s.decision && s.decision.commit.included.length === 0) finishRound(c, s.weightsHash);
        break;
      case 'fetching':
        // Catching up by replay: a peer still fetching a decided set keeps fetching it after a
        // majority announced the round's result (its holders keep the payloads KEEP_ROUNDS
        // rounds), then applies it and reaches the same θ hash. It resyncs only once the
        // catch-up window is over, or (checkClaims) once a quorum is two rounds ahead.
        if (s.now >= s.fetchDeadline && !(s.now >= catchUpUntil(s) && behind(c))) {
          s.fetchDeadline = s.now + s.params.retryMs;
          emitFetch(c);
        }
        break;
      default:
        break;
    }
    if (s.phase === before) return;
  }
}

/**
 * Resyncs (and returns true) if a majority of the roster has moved past this round: it
 * announced this round's result, or it is already sending later-round messages.
 */
function behind(c: Ctx): boolean {
  const s = c.s;
  const maj = majorityHash(s.announces.get(s.round), s.voters);
  if (maj) {
    startResync(c, maj.peers, { round: s.round + 1, weightsHash: maj.hash, snapHash: maj.snapHash });
    return true;
  }
  // A majority sends later-round traffic, but no certificate of a later state has reached us
  // (announces lost): ask for them. Traffic alone never moves us (anyone can claim a round).
  if (s.ahead.filter((p) => has(s.voters, p)).length >= majority(s.voters.length) && s.now >= s.askAt) ask(c);
  return false;
}

/** Broadcasts `ask` (members answer with their latest announce), at most once per retryMs. */
function ask(c: Ctx): void {
  const s = c.s;
  s.askAt = s.now + s.params.retryMs;
  c.effects.push({ type: 'broadcast', msg: { type: 'ask', from: s.self, round: Math.max(0, s.round) } });
}

/**
 * How long attempt `a` lasts: commitMs, growing by commitMs after each full pass over the
 * leader order, so that attempts eventually outlast any (unknown) message delay.
 */
export function attemptMs(s: Pick<RoundState, 'params' | 'order'>, a: number): number {
  return s.params.commitMs * (1 + Math.floor(a / Math.max(1, s.order.length)));
}

function shouldClose(s: RoundState): boolean {
  if (s.now >= s.startedAt + submitMsOf(s)) return true;
  if (!s.training) return s.roster.length + s.joins.length >= s.params.minPeers;
  const need = Math.max(1, Math.ceil(s.params.quorum * s.roster.length - 1e-9));
  return s.byPeer.size >= need;
}

/** Ends update collection; the leader of attempt 0 proposes unless `byCommit` (someone else's commit closed it). */
function closeCollection(c: Ctx, byCommit = false): void {
  const s = c.s;
  s.closedAt = s.now;
  s.phase = 'agreement';
  s.attemptDeadline = s.now + attemptMs(s, s.attempt);
  if (
    !byCommit &&
    s.voter &&
    s.voting &&
    !s.decision &&
    s.promised === 0 &&
    !s.proposed.includes(0) &&
    leaderAt(s.order, 0) === s.self
  ) {
    const v = ownValue(s);
    propose(c, { round: s.round, attempt: 0, leader: s.self, ...v });
  }
}

interface StartInfo extends Standing {
  round: number;
  weightsHash: string;
  /** Delayed mode: the updates' base, and whether the driver holds those weights. */
  trainBase?: string;
  baseHeld?: boolean;
}
interface Carry {
  promised: number;
  accepted: Commit | null;
  proposed: number[];
  /** Same round and same θ: what was collected is still valid. */
  keep: Pick<RoundState, 'startedAt' | 'updates' | 'byPeer' | 'joins' | 'heard'> | null;
}

function startRound(c: Ctx, info: StartInfo, carry: Carry | null, voting = true): void {
  const s = c.s,
    p = s.params;
  s.voting = voting && info.round > s.noVoteThrough;
  s.round = info.round;
  s.weightsHash = info.weightsHash;
  s.trainBase = p.overlap === 'delayed' ? (info.trainBase ?? info.weightsHash) : info.weightsHash;
  s.baseHeld = p.overlap === 'delayed' ? (info.baseHeld ?? true) : true;
  s.roster = info.roster;
  s.missed = info.missed;
  s.credit = info.credit;
  s.age = info.age;
  s.stretch = info.stretch;
  s.voters = votersOf(p, info);
  s.voter = has(s.voters, s.self);
  s.seed = roundSeed(p.runId, info.round);
  // Only voters lead: a thousand fresh identities hold no leader slot.
  s.order = leaderOrder(
    s.seed,
    s.voters,
    s.voters.map((v) => s.missed[s.roster.indexOf(v)]),
  );
  s.member = has(s.roster, s.self);
  s.training = s.roster.length >= p.minPeers;
  const keep = carry?.keep ?? null;
  s.startedAt = keep ? keep.startedAt : s.now;
  s.closedAt = null;
  s.trainingActive = false;
  s.updates = keep ? keep.updates : new Map();
  s.byPeer = keep ? keep.byPeer : new Map();
  s.joins = keep ? keep.joins : [];
  s.heard = keep ? keep.heard : [];
  s.ahead = [];
  s.promised = carry?.promised ?? 0;
  s.accepted = carry?.accepted ?? null;
  s.attempt = s.promised;
  s.attemptDeadline = Infinity;
  s.promises = new Map();
  s.proposed = carry ? [...carry.proposed] : [];
  s.votes = new Map();
  s.pending = null;
  s.decision = null;
  s.fetchDeadline = Infinity;
  s.repliedTo = [];
  s.answered = [];
  s.sync = null;
  for (const r of [...s.announces.keys()]) if (r < s.round - 1) own(c, 'announces').delete(r);
  // Claims of states we reached are spent; those of non-members no longer count.
  for (const [peer, cl] of [...s.claims]) {
    const keep = has(s.roster, peer) ? cl.filter((x) => x.round > s.round + 1) : [];
    if (keep.length === 0) own(c, 'claims').delete(peer);
    else if (keep.length !== cl.length) own(c, 'claims').set(peer, keep);
  }
  if (s.member && s.training && s.byPeer.has(s.self)) {
    s.phase = 'collecting'; // re-entered a round whose update we already published
  } else if (s.member && s.training && s.baseHeld) {
    s.phase = 'training';
    s.trainingActive = true;
    const shards = assignShards(s.seed, s.roster, p.numShards).get(s.self)!;
    c.effects.push({
      type: 'train',
      round: s.round,
      baseHash: s.trainBase,
      shards,
      steps: p.innerSteps,
      until: s.startedAt + trainMsOf(s),
    });
  } else {
    s.phase = s.training ? 'collecting' : 'waiting';
  }
  if (!s.member) c.effects.push({ type: 'broadcast', msg: { type: 'join', from: s.self, round: s.round } });
  const fut = s.future;
  s.future = [];
  s.futureBytes = 0;
  s.futureBy = new Map();
  for (const m of fut) {
    const r = msgRound(m);
    if (r === s.round) {
      if (has(s.roster, m.from)) hear(c, m.from);
      dispatch(c, m);
    } else if (r === s.round + 1) bufferFuture(c, m);
  }
  checkAnnouncements(c);
}

// ───────────────────────────── messages ─────────────────────────────

function handleMessage(c: Ctx, raw: Message): void {
  const s = c.s;
  const parsed = MessageSchema.safeParse(raw);
  if (!parsed.success) {
    const from = typeof (raw as { from?: unknown })?.from === 'string' ? (raw as { from: string }).from : undefined;
    reject(c, 'malformed', parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '), from);
    return;
  }
  const m = parsed.data;
  // Our own update can come back (fetched after a restart); any other message of ours is a replay.
  if (m.from === s.self && m.type !== 'update') {
    reject(c, 'self', `${m.type} claims to be from this peer`, m.from);
    return;
  }
  if (s.phase === 'unsynced' || s.phase === 'syncing') {
    // A sender becomes neither a source nor a target: only a certified claim does.
    if (m.type === 'announce' && claimant(s, m.from)) addClaim(c, m);
    else reject(c, 'not-synced', `${m.type} while ${s.phase}`, m.from);
    return;
  }
  if (m.type === 'ask') {
    handleAsk(c, m);
    return;
  }
  const r = msgRound(m);
  // A join asks to be admitted; its round only shows when the joiner synced. One that lags a
  // round or two (its state download outlasted a round) or runs one ahead still counts now:
  // else a joiner slower than the round never gets in.
  if (m.type === 'join' && r !== s.round && r >= s.round - 2 && r <= s.round + 1) {
    handleJoin(c, m);
    return;
  }
  // Any authenticated message from a member this round (or its announce of last round) shows it is alive.
  if ((r === s.round || (r === s.round - 1 && m.type === 'announce')) && has(s.roster, m.from)) hear(c, m.from);
  if (r === s.round) {
    dispatch(c, m);
    return;
  }
  if (r < s.round) {
    handleOld(c, m, r);
    return;
  }
  const member = has(s.roster, m.from);
  if (member && !has(s.ahead, m.from)) insertSorted(own(c, 'ahead'), m.from);
  // A member's announce of a later round is its claim that the run reached that state: a
  // quorum of our roster behind one claim certifies it, and only then do we resync (to it).
  if (m.type === 'announce' && has(s.voters, m.from)) {
    addClaim(c, m);
    return;
  }
  if (r === s.round + 1 && m.type !== 'decided' && m.type !== 'announce') {
    bufferFuture(c, m);
    return;
  }
  // Anything else from a later round changes nothing here: a claim of a round is not proof of it.
  reject(c, 'future-round', `${m.type} for round ${r} while at round ${s.round}`, m.from);
}

/** Estimated wire size of a message (its JSON). */
function msgBytes(m: Message): number {
  return JSON.stringify(m).length;
}

/**
 * Buffers a message for round+1: only from a member of this round's roster or a joiner our
 * decision admits, within FUTURE_BYTES in total and FUTURE_MEMBER_MSGS / FUTURE_MEMBER_BYTES per
 * sender. Anything dropped here is recovered later (updates are fetched when listed, commits
 * re-proposed, promises answered).
 */
function bufferFuture(c: Ctx, m: Message): void {
  const s = c.s;
  const r = msgRound(m);
  if (!has(s.roster, m.from) && !(s.decision?.commit.joins.includes(m.from) ?? false)) {
    reject(c, 'not-member', `${m.type} for round ${r} from non-member ${m.from}: not buffered`, m.from);
    return;
  }
  const size = msgBytes(m);
  const mine = s.futureBy.get(m.from) ?? { n: 0, bytes: 0 };
  if (mine.n >= FUTURE_MEMBER_MSGS || mine.bytes + size > FUTURE_MEMBER_BYTES || s.futureBytes + size > FUTURE_BYTES) {
    reject(
      c,
      'buffer-full',
      `future-round budget spent (${m.from}: ${mine.n} messages, ${mine.bytes} B; all: ${s.futureBytes} B); dropped ${m.type} for round ${r}`,
      m.from,
    );
    return;
  }
  own(c, 'future').push(m);
  s.futureBytes += size;
  own(c, 'futureBy').set(m.from, { n: mine.n + 1, bytes: mine.bytes + size });
}

/** Whose announces count as claims: voters of our round, or, with no roster yet, trusted peers. */
function claimant(s: RoundState, peer: string): boolean {
  return s.roster.length > 0 ? has(s.voters, peer) : has(s.trusted, peer);
}

/** Records a later-round announce as a claim and resyncs if it completes a certificate. */
function addClaim(c: Ctx, m: Extract<Message, { type: 'announce' }>): void {
  const s = c.s;
  const cl: Claim = { round: m.round + 1, weightsHash: m.weightsHash, snapHash: m.snapHash };
  if (cl.round <= s.round + 1 && s.roster.length > 0) {
    reject(c, 'stale-round', `announce of round ${m.round} while at round ${s.round}`, m.from);
    return;
  }
  const list = s.claims.get(m.from) ?? [];
  const same = list.find((x) => x.round === cl.round);
  if (same) {
    const eq = same.weightsHash === cl.weightsHash && same.snapHash === cl.snapHash;
    reject(c, eq ? 'duplicate' : 'equivocation', `second announce for round ${m.round}`, m.from);
    return;
  }
  const next = [...list, cl].sort((a, b) => a.round - b.round).slice(-CLAIMS_PER_PEER);
  own(c, 'claims').set(m.from, next);
  checkClaims(c);
}

/**
 * The newest certified claim, if any:
 * - holding a roster (synced, or resyncing): one that a quorum of our roster made;
 * - holding none (a joiner): one that a trusted peer made and no trusted peer contradicts for
 *   that round (a hostile entry in the bootstrap list can then stall a joiner, not mislead it).
 */
function certified(s: RoundState, only?: SyncTarget): { target: SyncTarget; by: string[] } | null {
  const groups = new Map<string, { target: SyncTarget; by: string[] }>();
  const want = only ? `${only.round}:${only.weightsHash}:${only.snapHash}` : null;
  const perRound = new Map<number, number>(); // round → distinct claimed states (by claimants)
  for (const [peer, list] of s.claims) {
    if (!claimant(s, peer)) continue;
    for (const x of list) {
      const key = `${x.round}:${x.weightsHash}:${x.snapHash}`;
      let g = groups.get(key);
      if (!g) {
        g = { target: { round: x.round, weightsHash: x.weightsHash, snapHash: x.snapHash }, by: [] };
        groups.set(key, g);
        perRound.set(x.round, (perRound.get(x.round) ?? 0) + 1);
      }
      g.by.push(peer);
    }
  }
  let best: { target: SyncTarget; by: string[] } | null = null;
  for (const [key, g] of groups) {
    if ((want !== null && key !== want) || (best && best.target.round >= g.target.round)) continue;
    g.by.sort(compareIds);
    const ok = s.roster.length > 0 ? isQuorum(s.voters, g.by) : perRound.get(g.target.round) === 1;
    if (ok) best = g;
  }
  return best;
}

/**
 * Whether a quorum of this round's voters announced (round+1, θ hash, snapshot hash) as the
 * result of our round: the certificate behind() resyncs on. It still certifies that state when
 * the target has moved further on during a slow download, so a lagging peer installs it and
 * moves forward instead of refusing it as stale and downloading again.
 */
function announcedNext(s: RoundState, round: number, weightsHash: string, snapHash?: string): boolean {
  if (s.roster.length === 0 || round !== s.round + 1) return false;
  const maj = majorityHash(s.announces.get(s.round), s.voters);
  return maj !== null && maj.hash === weightsHash && (snapHash === undefined || maj.snapHash === snapHash);
}

/**
 * For drivers choosing what to download: whether a state of this round and θ hash is the
 * target or certified now (the snapshot hash is checked on `synced`). Pure.
 */
export function wantsState(s: RoundState, round: number, weightsHash: string): boolean {
  if (s.phase !== 'unsynced' && s.phase !== 'syncing') return false;
  const t = s.sync?.target;
  if (t && t.round === round && t.weightsHash === weightsHash && s.roster.length > 0) return true;
  if (round < s.round) return false;
  if (announcedNext(s, round, weightsHash)) return true;
  for (const list of s.claims.values())
    for (const x of list)
      if (x.round === round && x.weightsHash === weightsHash && certified(s, x) !== null) return true;
  return false;
}

/** Resyncs to the newest certified state once one is newer than what we hold or aim at. */
function checkClaims(c: Ctx): void {
  const s = c.s;
  const cur = s.sync?.target;
  // A joiner's target stands only while no trusted peer contradicts it.
  if (cur && s.sync && s.roster.length === 0 && !certified(s, cur)) s.sync = { ...s.sync, target: null, from: [] };
  const cert = certified(s);
  if (!cert || cert.target.round <= (s.roster.length > 0 ? s.round + 1 : -1)) return;
  if (cur && cur.round >= cert.target.round) return;
  const from = cert.by.filter((p) => p !== s.self).slice(0, 8);
  if (s.phase === 'syncing' || s.phase === 'unsynced') s.sync = { target: cert.target, from, retryAt: s.now };
  else startResync(c, from, cert.target);
}

/** A peer asks for certificates: a member re-sends its latest announce, once per asker and round. */
function handleAsk(c: Ctx, m: Extract<Message, { type: 'ask' }>): void {
  const s = c.s;
  const p = s.prev;
  if (!p || p.resultHash === null || !has(p.roster, s.self)) return; // nothing of ours to attest
  if (s.answered.includes(m.from)) {
    reject(c, 'duplicate', 'already answered this round', m.from);
    return;
  }
  if (s.answered.length >= MAX_PENDING_JOINS) {
    reject(c, 'buffer-full', 'too many asks this round', m.from);
    return;
  }
  own(c, 'answered').push(m.from);
  c.effects.push({ type: 'send', to: m.from, msg: announceOf(s) });
}

function dispatch(c: Ctx, m: Message): void {
  switch (m.type) {
    case 'update':
      return handleUpdate(c, m);
    case 'commit':
      return handleCommit(c, m);
    case 'accept':
      return handleAccept(c, m);
    case 'promise':
      return handlePromise(c, m);
    case 'decided':
      return handleDecided(c, m);
    case 'announce':
      return handleAnnounce(c, m, c.s.roster);
    case 'join':
      return handleJoin(c, m);
  }
}

function handleOld(c: Ctx, m: Message, r: number): void {
  const s = c.s,
    prev = s.prev;
  if (m.type === 'announce' && prev && r === prev.round) {
    handleAnnounce(c, m, prev.roster);
    return;
  }
  // A straggler timed out on a round we finished (it missed the decision): tell it, once.
  if (
    prev &&
    m.type === 'promise' &&
    has(prev.roster, m.from) &&
    has(prev.roster, s.self) &&
    !prev.repliedTo.includes(m.from)
  ) {
    s.prev = { ...prev, repliedTo: [...prev.repliedTo, m.from] };
    c.effects.push({
      type: 'send',
      to: m.from,
      msg: { type: 'decided', from: s.self, commit: prev.decision.commit, signers: [...prev.decision.signers] },
    });
  }
  reject(c, 'stale-round', `${m.type} for round ${r} while at round ${s.round}`, m.from);
}

/** Protocol-state checks of a commit for the current round; null when acceptable. */
function checkCommit(s: RoundState, k: Commit): { reason: RejectReason; detail: string } | null {
  const p = s.params;
  if (k.round !== s.round) return { reason: 'stale-round', detail: `commit for round ${k.round}` };
  const want = leaderAt(s.order, k.attempt);
  if (k.leader !== want)
    return { reason: 'not-leader', detail: `${k.leader} does not lead attempt ${k.attempt} (leader is ${want})` };
  if (!s.training && k.included.length > 0) return { reason: 'malformed', detail: 'updates listed in a waiting round' };
  const cap = p.innerSteps * p.batch;
  for (let i = 0; i < k.included.length; i++) {
    const u = k.included[i];
    if (i > 0 && compareIds(k.included[i - 1].peer, u.peer) >= 0)
      return { reason: 'malformed', detail: 'included not sorted by peer / duplicate peer' };
    if (!has(s.roster, u.peer)) return { reason: 'not-member', detail: `included update from non-member ${u.peer}` };
    if (u.tokens > cap) return { reason: 'malformed', detail: `tokens ${u.tokens} over H·batch = ${cap}` };
  }
  for (let i = 0; i < k.joins.length; i++) {
    const j = k.joins[i];
    if (i > 0 && compareIds(k.joins[i - 1], j) >= 0)
      return { reason: 'malformed', detail: 'joins not sorted / duplicate' };
    if (has(s.roster, j)) return { reason: 'already-member', detail: `join of existing member ${j}` };
  }
  for (let i = 0; i < k.live.length; i++) {
    if (i > 0 && compareIds(k.live[i - 1], k.live[i]) >= 0)
      return { reason: 'malformed', detail: 'live not sorted / duplicate' };
    if (!has(s.roster, k.live[i])) return { reason: 'not-member', detail: `live lists non-member ${k.live[i]}` };
  }
  if (s.roster.length + k.joins.length > MAX_ROSTER)
    return { reason: 'malformed', detail: `roster would exceed ${MAX_ROSTER}` };
  const room = joinRoom(s);
  if (k.joins.length > room)
    return { reason: 'too-many-joins', detail: `${k.joins.length} joins; this round admits at most ${room}` };
  return null;
}

function handleUpdate(c: Ctx, m: UpdateMsg): void {
  const s = c.s;
  if (!has(s.roster, m.from)) {
    reject(c, 'not-member', `update from non-member ${m.from}`, m.from);
    return;
  }
  if (!s.training) {
    reject(c, 'wrong-phase', 'no training in a waiting round', m.from);
    return;
  }
  if (m.baseHash !== s.trainBase) {
    reject(
      c,
      'wrong-base',
      `update built on ${m.baseHash.slice(0, 12)}, round base is ${s.trainBase.slice(0, 12)}`,
      m.from,
    );
    return;
  }
  if (s.updates.has(m.updateHash)) {
    reject(c, 'duplicate', `update ${m.updateHash.slice(0, 12)} already held`, m.from);
    return;
  }
  const listed = (k: Commit | null | undefined) =>
    k?.included.some((u) => u.updateHash === m.updateHash && u.peer === m.from) ?? false;
  if (listed(s.decision?.commit) || listed(s.pending)) {
    // Asked for (fetched): store even if we hold a different update from this author.
    own(c, 'updates').set(m.updateHash, m);
    if (!s.byPeer.has(m.from)) own(c, 'byPeer').set(m.from, m.updateHash);
    if (s.phase === 'fetching' && missingUpdates(s).length === 0) startApply(c);
    else resumePending(c);
    return;
  }
  if (s.decision) {
    reject(c, 'late', 'round already decided', m.from);
    return;
  }
  if (s.byPeer.has(m.from)) {
    reject(c, 'equivocation', `second, different update from ${m.from}`, m.from);
    return;
  }
  own(c, 'updates').set(m.updateHash, m);
  own(c, 'byPeer').set(m.from, m.updateHash);
}

function holdsAll(s: RoundState, k: Commit): boolean {
  return k.included.every((u) => s.updates.has(u.updateHash));
}

function fetchFor(c: Ctx, k: Commit): void {
  const s = c.s;
  const missing = k.included.filter((u) => !s.updates.has(u.updateHash));
  const voters = s.votes.get(commitHash(k))?.signers ?? [];
  const from = [...new Set([...missing.map((u) => u.peer), k.leader, ...voters])].filter((p) => p !== s.self);
  c.effects.push({
    type: 'fetch',
    round: s.round,
    updates: missing.map((u) => ({ peer: u.peer, updateHash: u.updateHash })),
    from,
  });
}

/** Accepts / proposes the pending commit once every update it lists is held. */
function resumePending(c: Ctx): void {
  const s = c.s,
    k = s.pending;
  if (!k || !holdsAll(s, k)) return;
  s.pending = null;
  if (s.decision || k.attempt < s.promised) return;
  if (k.leader === s.self) {
    if (!s.proposed.includes(k.attempt)) propose(c, k);
  } else if (!(s.accepted && s.accepted.attempt === k.attempt)) {
    acceptCommit(c, k, true);
  }
}

function handleCommit(c: Ctx, m: Extract<Message, { type: 'commit' }>): void {
  const s = c.s,
    k = m.commit;
  if (m.from !== k.leader) {
    reject(c, 'not-leader', `commit signed by ${m.from} names leader ${k.leader}`, m.from);
    return;
  }
  const bad = checkCommit(s, k);
  if (bad) {
    reject(c, bad.reason, bad.detail, m.from);
    return;
  }
  const fresh = addVote(c, k, m.from); // the proposal is also the leader's acceptance
  if (!s.voter || !s.voting) {
    if (!fresh) reject(c, 'duplicate', 'commit already seen', m.from);
    return;
  }
  if (s.accepted && s.accepted.attempt === k.attempt) {
    if (commitHash(s.accepted) === commitHash(k)) reject(c, 'duplicate', 'commit already accepted', m.from);
    else reject(c, 'equivocation', `leader ${m.from} proposed two commits for attempt ${k.attempt}`, m.from);
    return;
  }
  if (k.attempt < s.promised) {
    reject(c, 'stale-attempt', `attempt ${k.attempt} < promised ${s.promised}`, m.from);
    return;
  }
  if (s.phase === 'training' || s.phase === 'collecting' || s.phase === 'waiting') closeCollection(c, true);
  if (s.decision) {
    acceptCommit(c, k, true);
    return;
  } // decided already (same value by Paxos); just help others
  if (!holdsAll(s, k)) {
    if (s.pending && commitHash(s.pending) === commitHash(k)) {
      reject(c, 'duplicate', 'commit already pending', m.from);
      return;
    }
    if (!s.pending || s.pending.attempt <= k.attempt) {
      s.pending = k;
      fetchFor(c, k);
    }
    return;
  }
  acceptCommit(c, k, true);
}

function acceptCommit(c: Ctx, k: Commit, broadcast: boolean): void {
  const s = c.s;
  s.promised = k.attempt;
  s.accepted = k;
  if (k.attempt > s.attempt) {
    s.attempt = k.attempt;
    s.attemptDeadline = s.now + attemptMs(s, k.attempt);
  }
  if (s.phase === 'training' || s.phase === 'collecting' || s.phase === 'waiting') closeCollection(c, true);
  if (broadcast) c.effects.push({ type: 'broadcast', msg: { type: 'accept', from: s.self, commit: k } });
  addVote(c, k, s.self);
}

/** Records `signer`'s acceptance of `k`; decides on a majority. False if already recorded. */
function addVote(c: Ctx, k: Commit, signer: string): boolean {
  const s = c.s;
  const h = commitHash(k);
  let v = s.votes.get(h);
  if (!v) {
    if (s.votes.size >= 4 * s.roster.length + 16) {
      // Keep the latest attempts: a value chosen earlier is re-proposed in every later attempt.
      let low: string | null = null,
        lowAttempt = Infinity;
      for (const [key, x] of s.votes)
        if (x.commit.attempt < lowAttempt) {
          low = key;
          lowAttempt = x.commit.attempt;
        }
      if (low === null || lowAttempt > k.attempt) return false;
      own(c, 'votes').delete(low);
    }
    v = { commit: k, signers: [] };
  }
  if (has(v.signers, signer)) return false;
  v = mine(c, v, (x) => ({ commit: x.commit, signers: [...x.signers] }));
  insertSorted(v.signers, signer);
  own(c, 'votes').set(h, v);
  if (!s.decision && isQuorum(s.voters, v.signers)) decide(c, k, h, [...v.signers]);
  return true;
}

function handleAccept(c: Ctx, m: Extract<Message, { type: 'accept' }>): void {
  const s = c.s;
  if (!has(s.voters, m.from)) {
    reject(
      c,
      has(s.roster, m.from) ? 'not-voter' : 'not-member',
      `accept from ${has(s.roster, m.from) ? 'a member on probation' : 'non-member'} ${m.from}`,
      m.from,
    );
    return;
  }
  const bad = checkCommit(s, m.commit);
  if (bad) {
    reject(c, bad.reason, bad.detail, m.from);
    return;
  }
  if (!addVote(c, m.commit, m.from)) reject(c, 'duplicate', 'accept already counted', m.from);
}

function handlePromise(c: Ctx, m: Extract<Message, { type: 'promise' }>): void {
  const s = c.s;
  if (!has(s.voters, m.from)) {
    reject(
      c,
      has(s.roster, m.from) ? 'not-voter' : 'not-member',
      `promise from ${has(s.roster, m.from) ? 'a member on probation' : 'non-member'} ${m.from}`,
      m.from,
    );
    return;
  }
  if (m.accepted) {
    const bad = checkCommit(s, m.accepted);
    if (bad) {
      reject(c, bad.reason, `promised commit: ${bad.detail}`, m.from);
      return;
    }
    if (m.accepted.attempt >= m.attempt) {
      reject(c, 'malformed', 'promise reports an accepted commit from its own or a later attempt', m.from);
      return;
    }
  }
  if (s.decision && s.member) {
    // Already decided: the sender missed it. Answer once instead of leading a new attempt.
    if (!s.repliedTo.includes(m.from)) {
      own(c, 'repliedTo').push(m.from);
      c.effects.push({
        type: 'send',
        to: m.from,
        msg: { type: 'decided', from: s.self, commit: s.decision.commit, signers: [...s.decision.signers] },
      });
    }
    return;
  }
  if (!s.voter || !s.voting) return;
  if (m.attempt > s.attempt) {
    // Another member gave up on an attempt we are still in (our clock started later, or we
    // were away): join its attempt so that the leader of it can gather a majority.
    if (s.phase === 'training' || s.phase === 'collecting' || s.phase === 'waiting') closeCollection(c, true);
    enterAttempt(c, m.attempt);
  }
  if (leaderAt(s.order, m.attempt) !== s.self) return; // not ours to act on
  if (m.attempt < s.promised) {
    reject(c, 'stale-attempt', `promise for attempt ${m.attempt} < promised ${s.promised}`, m.from);
    return;
  }
  const old = s.promises.get(m.attempt);
  if (old?.has(m.from)) {
    reject(c, 'duplicate', 'promise already counted', m.from);
    return;
  }
  const ps = mine(c, old ?? new Map<string, Commit | null>(), (x) => new Map(x));
  ps.set(m.from, m.accepted);
  own(c, 'promises').set(m.attempt, ps);
  tryLead(c, m.attempt);
}

function tryLead(c: Ctx, b: number): void {
  const s = c.s;
  if (
    !s.voter ||
    !s.voting ||
    s.decision ||
    s.proposed.includes(b) ||
    s.promised > b ||
    leaderAt(s.order, b) !== s.self
  )
    return;
  const ps = s.promises.get(b);
  if (!isQuorum(s.voters, [s.self, ...(ps?.keys() ?? [])])) return;
  let best = s.accepted;
  for (const a of ps?.values() ?? []) if (a && (!best || a.attempt > best.attempt)) best = a;
  const value = best ? { included: best.included, joins: best.joins, live: best.live } : ownValue(s);
  const k: Commit = { round: s.round, attempt: b, leader: s.self, ...value };
  if (holdsAll(s, k)) {
    propose(c, k);
    return;
  }
  if (!s.pending || s.pending.attempt <= b) {
    s.pending = k;
    fetchFor(c, k);
  }
}

function ownValue(s: RoundState): { included: IncludedUpdate[]; joins: string[]; live: string[] } {
  const included: IncludedUpdate[] = [];
  if (s.training) {
    const peers = [...s.byPeer.keys()].sort(compareIds);
    for (const peer of peers) {
      if (has(s.excluded, peer)) continue;
      const h = s.byPeer.get(peer)!;
      included.push({ peer, updateHash: h, tokens: tokensFor(s.params, s.updates.get(h)!.steps) });
    }
  }
  const room = joinRoom(s);
  const joins = s.joins
    .filter((j) => !has(s.roster, j))
    .sort((a, b) => compareIds(leaderRank(s.seed, a), leaderRank(s.seed, b)))
    .slice(0, room)
    .sort(compareIds);
  const live = [...s.heard];
  if (has(s.roster, s.self)) insertSorted(live, s.self);
  return { included, joins, live };
}

function propose(c: Ctx, k: Commit): void {
  const s = c.s;
  own(c, 'proposed').push(k.attempt);
  c.effects.push({ type: 'broadcast', msg: { type: 'commit', from: s.self, commit: k } });
  acceptCommit(c, k, false);
}

function timeoutAttempt(c: Ctx): void {
  const s = c.s;
  let a = s.attempt;
  while (s.now >= s.attemptDeadline) {
    a += 1;
    s.attemptDeadline += attemptMs(s, a);
  }
  enterAttempt(c, a);
}

/** Moves to attempt `a` (> current): promise it, tell everyone, and lead it if it is ours. */
function enterAttempt(c: Ctx, a: number): void {
  const s = c.s;
  if (a > s.attempt) s.attemptDeadline = Math.max(s.attemptDeadline, s.now + attemptMs(s, a));
  s.attempt = a;
  s.promised = Math.max(s.promised, a);
  if (s.pending && s.pending.attempt < s.promised) s.pending = null;
  for (const b of [...s.promises.keys()]) if (b < s.promised) own(c, 'promises').delete(b);
  c.effects.push({
    type: 'broadcast',
    msg: { type: 'promise', from: s.self, round: s.round, attempt: a, accepted: s.accepted },
  });
  tryLead(c, a);
}

function handleDecided(c: Ctx, m: Extract<Message, { type: 'decided' }>): void {
  const s = c.s,
    k = m.commit;
  if (!has(s.roster, m.from)) {
    reject(c, 'not-member', `decided from non-member ${m.from}`, m.from);
    return;
  }
  const bad = checkCommit(s, k);
  if (bad) {
    reject(c, bad.reason, bad.detail, m.from);
    return;
  }
  for (let i = 0; i < m.signers.length; i++) {
    if (!has(s.voters, m.signers[i])) {
      reject(c, 'bad-certificate', `signer ${m.signers[i]} is not a voter`, m.from);
      return;
    }
    if (i > 0 && compareIds(m.signers[i - 1], m.signers[i]) >= 0) {
      reject(c, 'bad-certificate', 'signers not sorted / duplicate', m.from);
      return;
    }
  }
  if (!isQuorum(s.voters, m.signers)) {
    reject(c, 'bad-certificate', `${m.signers.length} signers are not a quorum of ${s.voters.length} voters`, m.from);
    return;
  }
  if (s.decision) {
    if (s.decision.valueHash === valueHash(k)) reject(c, 'duplicate', 'already decided', m.from);
    else
      reject(
        c,
        'conflict',
        `decided value ${valueHash(k).slice(0, 12)} differs from ours ${s.decision.valueHash.slice(0, 12)}`,
        m.from,
      );
    return;
  }
  decide(c, k, commitHash(k), [...m.signers]);
}

function decide(c: Ctx, k: Commit, h: string, signers: string[]): void {
  const s = c.s;
  s.decision = { commit: k, commitHash: h, valueHash: valueHash(k), signers };
  s.pending = null;
  if (s.closedAt === null) s.closedAt = s.now;
  if (k.leader === s.self)
    c.effects.push({ type: 'broadcast', msg: { type: 'decided', from: s.self, commit: k, signers: [...signers] } });
  if (s.trainingActive) {
    s.trainingActive = false;
    c.effects.push({ type: 'stop-training', round: s.round });
  }
  startApply(c);
}

/** Rounds' worth of time a peer fetching a decided set keeps at it after the others moved on. */
export const CATCH_UP_ROUNDS = 2;

/**
 * Until when a peer in `fetching` replays its decided set rather than resync to the result a
 * majority announced (docs/ROUNDS.md "Catching up"): CATCH_UP_ROUNDS rounds' submit and commit
 * time from the round's start. A replayed round costs its missing payloads (kilobytes to
 * megabytes, from any holder); a resync costs θ and momentum (8 bytes a parameter), which
 * behind a NAT may come only through a relay. Pure.
 */
export function catchUpUntil(s: Pick<RoundState, 'params' | 'stretch' | 'startedAt'>): number {
  return s.startedAt + CATCH_UP_ROUNDS * (submitMsOf(s) + s.params.commitMs);
}

function missingUpdates(s: RoundState): IncludedUpdate[] {
  return s.decision ? s.decision.commit.included.filter((u) => !s.updates.has(u.updateHash)) : [];
}

function emitFetch(c: Ctx): void {
  const s = c.s,
    d = s.decision!;
  const missing = missingUpdates(s);
  const from = [...new Set([...d.signers, ...missing.map((u) => u.peer), d.commit.leader])].filter((p) => p !== s.self);
  c.effects.push({
    type: 'fetch',
    round: s.round,
    updates: missing.map((u) => ({ peer: u.peer, updateHash: u.updateHash })),
    from,
  });
}

function startApply(c: Ctx): void {
  const s = c.s,
    d = s.decision!;
  if (missingUpdates(s).length > 0) {
    s.phase = 'fetching';
    s.fetchDeadline = s.now + s.params.retryMs;
    emitFetch(c);
    return;
  }
  s.phase = 'applying';
  // An empty set changes nothing (θ and momentum stay): advance() finishes the round itself,
  // after the current event, so no handler ever continues inside a round that has ended.
  if (d.commit.included.length === 0) return;
  c.effects.push({
    type: 'apply',
    round: s.round,
    baseHash: s.weightsHash,
    valueHash: d.valueHash,
    included: d.commit.included.map((u) => ({ ...u })),
  });
}

function handleAnnounce(c: Ctx, m: Extract<Message, { type: 'announce' }>, roster: readonly string[]): void {
  const s = c.s;
  if (!has(roster, m.from)) {
    reject(c, 'not-member', `announce from non-member ${m.from}`, m.from);
    return;
  }
  const map = s.announces.get(m.round);
  const old = map?.get(m.from);
  if (old) {
    reject(
      c,
      old.weightsHash === m.weightsHash && old.snapHash === m.snapHash ? 'duplicate' : 'equivocation',
      `second announce for round ${m.round}`,
      m.from,
    );
    return;
  }
  announced(c, m.round).set(m.from, { weightsHash: m.weightsHash, valueHash: m.valueHash, snapHash: m.snapHash });
  checkAnnouncements(c);
}

/** The writable announce map of round `r`. */
function announced(c: Ctx, r: number): Map<string, { weightsHash: string; valueHash: string; snapHash: string }> {
  const m = mine(c, c.s.announces.get(r) ?? new Map(), (x) => new Map(x));
  own(c, 'announces').set(r, m);
  return m;
}

/** Notes that a member was heard from this round. */
function hear(c: Ctx, peer: string): void {
  if (!has(c.s.heard, peer)) insertSorted(own(c, 'heard'), peer);
}

/** The (weights hash, snapshot hash) a strict majority of `roster` announced, with who did. */
function majorityHash(
  map: Map<string, { weightsHash: string; snapHash: string }> | undefined,
  roster: readonly string[],
): { hash: string; snapHash: string; peers: string[] } | null {
  if (!map) return null;
  const by = new Map<string, string[]>();
  for (const [peer, a] of map) {
    if (!has(roster, peer)) continue;
    const key = `${a.weightsHash}:${a.snapHash}`;
    const l = by.get(key) ?? [];
    l.push(peer);
    by.set(key, l);
  }
  for (const [key, peers] of by)
    if (peers.length >= majority(roster.length)) {
      const [hash, snapHash] = key.split(':');
      return { hash, snapHash, peers: peers.sort(compareIds) };
    }
  return null;
}

function checkAnnouncements(c: Ctx): void {
  const s = c.s,
    prev = s.prev;
  if (!prev || prev.resultHash === null || s.phase === 'syncing' || s.phase === 'unsynced') return;
  const maj = majorityHash(s.announces.get(prev.round), prev.voters);
  if (maj && (maj.hash !== prev.resultHash || maj.snapHash !== prev.snapHash)) {
    s.prev = { ...prev, resultHash: null };
    startResync(
      c,
      maj.peers.filter((p) => p !== s.self),
      { round: prev.round + 1, weightsHash: maj.hash, snapHash: maj.snapHash },
    );
  }
}

function handleJoin(c: Ctx, m: Extract<Message, { type: 'join' }>): void {
  const s = c.s;
  if (!s.member) return; // only members (potential leaders) collect join requests
  if (has(s.roster, m.from)) {
    reject(c, 'already-member', `${m.from} is already in the roster`, m.from);
    return;
  }
  if (s.joins.includes(m.from)) {
    reject(c, 'duplicate', 'join already recorded', m.from);
    return;
  }
  if (s.joins.length >= MAX_PENDING_JOINS) {
    // Full: keep the best-ranked requests of this round (the order leaders admit in), so a flood
    // of fresh identities sent first cannot lock a later honest joiner out; it only dilutes its
    // odds. Costs MAX_PENDING_JOINS + 1 hashes, only while the list is full.
    const rank = leaderRank(s.seed, m.from);
    let worst = -1,
      worstRank = '';
    s.joins.forEach((j, i) => {
      const r = leaderRank(s.seed, j);
      if (compareIds(r, worstRank) > 0) {
        worst = i;
        worstRank = r;
      }
    });
    if (worst < 0 || compareIds(rank, worstRank) >= 0) {
      reject(c, 'buffer-full', 'too many pending joins, all ranked ahead of this one', m.from);
      return;
    }
    own(c, 'joins')[worst] = m.from;
    return;
  }
  own(c, 'joins').push(m.from);
}

// ───────────────────────────── driver events ─────────────────────────────

function handleTrained(c: Ctx, e: Extract<RoundEvent, { type: 'trained' }>): void {
  const s = c.s;
  if (e.round !== s.round || !s.trainingActive) {
    reject(c, 'late', `trained for round ${e.round} is not wanted now (round ${s.round}, ${s.phase})`);
    return;
  }
  if (typeof e.updateHash !== 'string' || !HEX64.test(e.updateHash)) {
    reject(c, 'malformed', 'trained: updateHash must be 64 hex digits');
    return;
  }
  if (!Number.isSafeInteger(e.steps) || e.steps < 0) {
    reject(c, 'malformed', `trained: bad step count ${e.steps}`);
    return;
  }
  s.trainingActive = false;
  if (s.phase === 'training') s.phase = 'collecting';
  if (e.steps === 0) return; // nothing trained: nothing to publish
  if (s.updates.has(e.updateHash)) {
    reject(c, 'duplicate', 'own update hash already held');
    return;
  }
  const msg: UpdateMsg = {
    type: 'update',
    from: s.self,
    round: s.round,
    baseHash: s.trainBase,
    updateHash: e.updateHash,
    steps: e.steps,
  };
  own(c, 'updates').set(e.updateHash, msg);
  own(c, 'byPeer').set(s.self, e.updateHash);
  c.effects.push({ type: 'broadcast', msg });
  if (s.params.overlap !== 'none') {
    // Next round builds on the weights held now (θ_round); its roster is not decided yet, so
    // this guesses that it is unchanged. The next `train` effect confirms or replaces it.
    const p = s.params;
    const shards = assignShards(roundSeed(p.runId, s.round + 1), s.roster, p.numShards).get(s.self)!;
    c.effects.push({ type: 'pretrain', round: s.round + 1, baseHash: s.weightsHash, shards, steps: p.innerSteps });
  }
}

function handleApplied(c: Ctx, e: Extract<RoundEvent, { type: 'applied' }>): void {
  const s = c.s;
  if (s.phase !== 'applying' || e.round !== s.round) {
    reject(c, 'unexpected', `applied for round ${e.round} while ${s.phase} at round ${s.round}`);
    return;
  }
  if (typeof e.weightsHash !== 'string' || !HEX64.test(e.weightsHash)) {
    reject(c, 'malformed', 'applied: weightsHash must be 64 hex digits');
    return;
  }
  finishRound(c, e.weightsHash);
}

function finishRound(c: Ctx, resultHash: string): void {
  const s = c.s,
    d = s.decision!;
  const next = nextRoster(s.params, s, d.commit, s.training);
  // The state round+1 starts from, exactly as snapshotOf() will give it: what we attest.
  const snapHash = snapshotHash({
    round: s.round + 1,
    weightsHash: resultHash,
    ...next,
    ...(s.params.overlap === 'delayed' ? { trainBase: s.weightsHash } : {}),
  });
  s.prev = {
    round: s.round,
    roster: s.roster,
    voters: s.voters,
    decision: d,
    resultHash,
    snapHash,
    repliedTo: s.repliedTo,
  };
  if (s.member) {
    announced(c, s.round).set(s.self, { weightsHash: resultHash, valueHash: d.valueHash, snapHash });
    c.effects.push({ type: 'broadcast', msg: announceOf(s) });
  }
  startRound(
    c,
    {
      round: s.round + 1,
      weightsHash: resultHash,
      ...next,
      trainBase: s.weightsHash,
      baseHeld: true,
    },
    null,
  );
}

/** This member's announce of the round it finished last (also what it re-sends on `ask`). */
function announceOf(s: RoundState): Message {
  const p = s.prev!;
  return {
    type: 'announce',
    from: s.self,
    round: p.round,
    weightsHash: p.resultHash!,
    valueHash: p.decision.valueHash,
    snapHash: p.snapHash,
  };
}

function startResync(c: Ctx, from: string[], target: SyncTarget): void {
  const s = c.s;
  if (s.trainingActive) {
    s.trainingActive = false;
    c.effects.push({ type: 'stop-training', round: s.round });
  }
  s.phase = 'syncing';
  s.sync = { target, from: from.filter((p) => p !== s.self).slice(0, 8), retryAt: s.now };
  // advance() emits the resync effect (now, then every retryMs until `synced`).
}

function handleSynced(c: Ctx, raw: RoundSnapshot, local: boolean): void {
  const s = c.s;
  if (s.phase !== 'unsynced' && s.phase !== 'syncing') {
    reject(c, 'late', `synced while ${s.phase} (a retried resync answered twice?)`);
    return;
  }
  if (local && (s.phase !== 'unsynced' || s.round >= 0)) {
    reject(c, 'unexpected', 'a local snapshot is only restored at start-up');
    return;
  }
  const parsed = SnapshotSchema.safeParse(raw);
  if (!parsed.success) {
    reject(c, 'malformed', parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
    return;
  }
  const snap = parsed.data;
  if (s.params.overlap === 'delayed' && snap.trainBase === undefined) {
    reject(c, 'malformed', 'snapshot of a delayed-mode run lacks trainBase');
    return;
  }
  const t = s.sync?.target ?? null;
  if (snap.round < s.round) {
    reject(c, 'stale-snapshot', `snapshot of round ${snap.round} is behind our round ${s.round}`);
    return;
  }
  // State only from agreement: exactly the certified (round, θ hash, snapshot hash), or this
  // peer's own file at start-up.
  const sh = snapshotHash(snap);
  const exact = (x: SyncTarget | null) =>
    x !== null && x.round === snap.round && x.weightsHash === snap.weightsHash && x.snapHash === sh;
  // The target, or (the target moved on during a slow download) any other state certified now;
  // a joiner's, whatever its target, only while its trusted peers still stand behind it.
  const ok =
    local ||
    (s.roster.length > 0 && exact(t)) ||
    announcedNext(s, snap.round, snap.weightsHash, sh) ||
    certified(s, { round: snap.round, weightsHash: snap.weightsHash, snapHash: sh }) !== null;
  if (!ok) {
    if (!t) {
      reject(c, 'uncertified', `snapshot of round ${snap.round} while no certified state is wanted`);
      return;
    }
    if (snap.round < t.round) {
      reject(c, 'stale-snapshot', `snapshot of round ${snap.round}, need round ${t.round}`);
      return;
    }
    if (snap.round !== t.round) {
      reject(c, 'uncertified', `snapshot of round ${snap.round}; the certified state is of round ${t.round}`);
      return;
    }
    if (snap.weightsHash !== t.weightsHash) {
      reject(
        c,
        'wrong-hash',
        `snapshot hash ${snap.weightsHash.slice(0, 12)} is not the certified ${t.weightsHash.slice(0, 12)}`,
      );
      return;
    }
    if (sh !== t.snapHash) {
      reject(c, 'wrong-hash', `snapshot roster/missed/base differ from the certified state of round ${t.round}`);
      return;
    }
    reject(c, 'uncertified', `the state of round ${snap.round} is no longer certified`);
    return;
  }
  // Paxos acceptors must not forget promises/acceptances: keep them when re-entering the same round.
  const same = s.phase === 'syncing' && s.round === snap.round && s.roster.join('\n') === snap.roster.join('\n');
  const keep =
    same && snap.weightsHash === s.weightsHash
      ? { startedAt: s.startedAt, updates: s.updates, byPeer: s.byPeer, joins: s.joins, heard: s.heard }
      : null;
  const rec = s.restored && s.restored.round === snap.round ? s.restored : null;
  const carry: Carry | null = same
    ? { promised: s.promised, accepted: s.accepted, proposed: s.proposed, keep }
    : rec
      ? { promised: rec.promised, accepted: rec.accepted, proposed: rec.proposed, keep: null }
      : null;
  if (!same || (s.prev && s.prev.round !== snap.round - 1)) s.prev = null;
  // From a fresh start we cannot know what we voted before a crash: sit out this round's voting.
  const voting = same ? s.voting : s.phase !== 'unsynced' || s.restored !== null;
  // Delayed mode: the installed snapshot is θ_round, not the base θ_{round-1} this round trains
  // from, so this peer only votes and applies in this round and trains from the next one.
  const heldBase = keep !== null && s.baseHeld;
  startRound(
    c,
    {
      round: snap.round,
      weightsHash: snap.weightsHash,
      roster: [...snap.roster],
      missed: [...snap.missed],
      credit: snap.credit ? [...snap.credit] : snap.roster.map(() => s.params.probation),
      age: snap.age ? [...snap.age] : snap.roster.map(() => 0),
      stretch: snap.stretch ? [snap.stretch[0], snap.stretch[1]] : [1000, 1000],
      trainBase: snap.trainBase ?? snap.weightsHash,
      baseHeld: heldBase,
    },
    carry,
    voting,
  );
}
