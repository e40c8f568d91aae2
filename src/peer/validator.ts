/**
 * The validator role: scores every update it holds for a round against θ_round (before the
 * apply) with the loss-delta test on 2 of each peer's assigned batches vs 2 random ones,
 * copy/replay and norm checks and the EMA history (src/verify/score.ts); folds in the audit's
 * verdicts; publishes the signed report on the control topic. Scoring runs after the apply, off
 * the agreement path: scores inform (and, with the ledger, pay), they do not change the agreed
 * weights.
 *
 * What a round pays (the ledger's score report, issue 16): each update of the decided set earns
 * its tokens (the aggregation weight the decided set records, min(steps, H)·batch·ctx) if its
 * verdict is clean: no hard or copy failure, not harmful, no failed audit, and a smoothed score
 * not below the flagging line (verify/score.ts payRefusal); else 0.
 * Every input of that verdict is agreed state (θ_round, the decided set, the round's beacon) or
 * history built from agreed state only (each peer's previous included update, an EMA fed by
 * decided-set verdicts only), so validators that held different late updates still sign the same
 * report. (Before, the report's scores were the loss-delta numbers of everything a validator
 * held: two validators holding different late updates, or with different histories, signed
 * different reports and the round missed its quorum.)
 *
 * Also selection by score, which every peer runs: the members a trusted validator flagged in a
 * recent report are left out of the update sets this peer proposes as leader.
 */
import type { Logger } from 'pino';
import type { Batch, TokenArray } from '../data/batches.js';
import type { ThetaModel } from '../model/lora-model.js';
import { assignShards, compareIds, roundSeed } from '../swarm/assign.js';
import type { CommittedUpdate } from '../swarm/apply.js';
import type { DecodedManifest } from '../swarm/manifest.js';
import { canonicalHash } from '../swarm/canonical.js';
import { firstBatches, validatorSeeds } from '../swarm/round-batches.js';
import { ScoreBook, harmful, payRefusal, roundFlag, scoreRound, type Submission } from '../verify/score.js';
import { spotCheck } from '../verify/audit.js';
import type { AuditRecord } from './report.js';
import type { ScoreEntry } from './wire.js';

/** Batches per peer (assigned) and of the random shard that a validator evaluates on. */
const K = 2;
/** Tries to get a shard's data for scoring (each within the node's fetch limit), and the pause between them. */
const SHARD_TRIES = 4;
const SHARD_RETRY_MS = 2000;
/** Senders whose latest score report is kept (the least recently updated is dropped first). */
export const MAX_REPORTS = 256;
/** Peers remembered as scored unflagged (the probation gate); the least recently scored go first. */
const MAX_CLEARED = 4096;
/**
 * A flag excludes a member from proposals until a trusted validator scores it unflagged. A report
 * that does not mention the member (its update arrived after the scoring, or was not fetched)
 * keeps the flag. Flags lapse only when no trusted report at all has arrived for this many
 * rounds, so a validator that went away cannot keep members out for ever.
 */
const EXCLUDE_ROUNDS = 3;

export interface ScoreReport {
  round: number;
  entries: ScoreEntry[];
}

/** One update of the decided set as the round's score report pays it. */
export interface PayEntry {
  peer: string;
  /** The update's tokens (decided set) if its verdict is clean, else 0. */
  points: number;
  /** Why it earns nothing (null when it earns its tokens). */
  reason: string | null;
}

/** What a round's scoring produced: every held update's entry (published), and the decided set's pay. */
export interface RoundScores {
  entries: ScoreEntry[];
  pay: PayEntry[];
}

export interface ValidatorDeps {
  manifest: DecodedManifest;
  numShards: number;
  self: string;
  /** Evaluates θ (a GPT, or a LoraGPT whose θ is its adapter). */
  evalGpt: ThetaModel;
  shardData: (shard: number, round: number) => Promise<TokenArray | null>;
  /** Audits one trainer's round by re-execution (audit.ts). */
  audit: (
    round: number,
    trainer: string,
    updateHash: string,
    roster: string[],
    delta: Float32Array,
  ) => Promise<AuditRecord>;
  /** This validator's own report, before it is published (selection by score folds it in). */
  scored: (report: ScoreReport) => void;
  publish: (body: { round: number; baseHash: string; reportHash: string; entries: ScoreEntry[] }) => void;
  logger: Logger;
}

export class Validator {
  /** Smoothed scores of everything this validator scored (selection by score, the published entries). */
  private readonly scoreBook = new ScoreBook();
  /** Smoothed scores of decided-set updates only: agreed history, for what a round pays. */
  private readonly agreedBook = new ScoreBook();
  /** Each peer's previous update this validator held (the replay check of updates left out). */
  private readonly prevDelta = new Map<string, Float32Array>();
  /** Each peer's previous update in a decided set (the replay check of the decided set: agreed). */
  private readonly prevIncluded = new Map<string, Float32Array>();
  /** This validator's latest report, and every report since the last round report. */
  latest: ScoreReport | null = null;
  private scoredSince: ScoreReport[] = [];
  readonly auditsSince: AuditRecord[] = [];

  constructor(private readonly d: ValidatorDeps) {}

  /** Reports scored since the last call. */
  takeScored(): ScoreReport[] {
    return this.scoredSince.splice(0);
  }

  /** Audit records since the last call. */
  takeAudits(): AuditRecord[] {
    return this.auditsSince.splice(0);
  }

  /**
   * Scores round `round`'s updates against θ_round: `included` (the decided set, which the round
   * pays) and `extras` (held updates left out of it, scored for selection only), with their hashes
   * by peer; returns the entries and the decided set's pay, or null if the round could not be
   * scored (shard data missing, an error). `beacon` is the decided set's value hash: the batches
   * evaluated on, and which trainers are audited, are drawn from it (round-batches.ts
   * validatorSeeds), so no trainer knows them when it submits.
   */
  async validate(
    round: number,
    beacon: string,
    theta: Float32Array,
    baseHash: string,
    roster: string[],
    included: CommittedUpdate[],
    extras: CommittedUpdate[],
    hashes: Map<string, string>,
  ): Promise<RoundScores | null> {
    const { manifest: dm, logger } = this.d;
    const t0 = performance.now();
    try {
      const m = dm.manifest,
        B = m.hyper.batch,
        T = m.model.ctx;
      const assign = assignShards(roundSeed(dm.runId, round), roster, this.d.numShards);
      // Shard data comes from peers (IPFS) and a loaded machine misses fetch deadlines: scoring is
      // off the agreement path, so it asks again (issue 16: a validator that could not fetch the
      // shards of the first rounds left them unscored, and unminted).
      const batchesOf = async (shard: number, seed: bigint): Promise<Batch[]> => {
        for (let t = 1; ; t++) {
          const b = firstBatches(await this.d.shardData(shard, round), seed, B, T, K);
          if (b.length > 0 || t >= SHARD_TRIES) return b;
          await new Promise((r) => setTimeout(r, SHARD_RETRY_MS));
        }
      };
      const seeds = validatorSeeds(dm.runId, round, this.d.numShards, beacon);
      // The decided set first (peer order), then the extras: checks of the decided set look only
      // at the decided set (the norm bound, copies of earlier submissions), so they are agreed.
      const byId = (a: CommittedUpdate, b: CommittedUpdate) => compareIds(a.peer, b.peer);
      const inc = [...included].sort(byId);
      const nInc = inc.length;
      const random = await batchesOf(seeds.randomShard, seeds.random);
      const assigned: Batch[][] = [];
      const ups: CommittedUpdate[] = [];
      for (const [j, u] of [...inc, ...[...extras].sort(byId)].entries()) {
        const a = await batchesOf((assign.get(u.peer) ?? [0])[0], seeds.assigned);
        if (a.length === 0 && j >= nInc) continue; // an extra without its data is not scored
        assigned.push(a);
        ups.push(u);
      }
      if (random.length === 0 || assigned.some((a) => a.length === 0)) {
        logger.warn({ round }, 'validator could not score the round: shard data missing after retries');
        return null;
      }
      const subs: Submission[] = ups.map((u) => ({ peer: u.peer, delta: u.delta, baseHash }));
      const g = this.d.evalGpt;
      const loss = (params: Float32Array, b: Batch) => {
        g.params.set(params);
        return g.loss(b.inputs, b.targets, B, T);
      };
      const verdicts = scoreRound({
        theta,
        roundHash: baseHash,
        lr: m.hyper.outer.lr,
        subs,
        previous: subs.map((s, j) => (j < nInc ? this.prevIncluded : this.prevDelta).get(s.peer) ?? null),
        boundOf: nInc,
        assigned,
        beforeAssigned: assigned.map((bs) => bs.map((b) => loss(theta, b))),
        random,
        beforeRandom: random.map((b) => loss(theta, b)),
        loss,
      });
      for (const [j, s] of subs.entries()) {
        this.prevDelta.set(s.peer, s.delta);
        if (j < nInc) this.prevIncluded.set(s.peer, s.delta);
      }
      // Audit by re-execution (manifest hyper.audit): the sampled trainers' whole traces; a
      // failed audit zeroes the round's score.
      const failed = new Map<string, string>();
      if (m.hyper.audit) {
        for (const s of subs) {
          if (s.peer === this.d.self || !spotCheck(seeds.audit, this.d.self, s.peer, m.hyper.audit.p)) continue;
          const rec = await this.d.audit(round, s.peer, hashes.get(s.peer) ?? '', roster, s.delta);
          this.auditsSince.push(rec);
          if (!rec.ok) failed.set(s.peer, rec.reason ?? 'audit');
          logger[rec.ok ? 'info' : 'warn'](
            { round, peer: s.peer, reason: rec.reason, steps: rec.steps, ms: Math.round(rec.ms) },
            rec.ok ? 'audit passed' : 'audit failed',
          );
        }
      }
      this.scoreBook.round(Object.fromEntries(verdicts.map((v) => [v.peer, failed.has(v.peer) ? 0 : v.score])));
      this.agreedBook.round(
        Object.fromEntries(verdicts.slice(0, nInc).map((v) => [v.peer, failed.has(v.peer) ? 0 : v.score])),
      );
      const pay: PayEntry[] = verdicts.slice(0, nInc).map((v, j) => {
        const reason = payRefusal(v, failed.get(v.peer) ?? null, this.agreedBook.lowScore(v.peer));
        // The decided set's weight: sequences (min(steps, H)·batch) times the context.
        return { peer: v.peer, points: reason ? 0 : inc[j].tokens * T, reason };
      });
      const entries = verdicts.map((v) => {
        if (failed.has(v.peer))
          return {
            peer: v.peer,
            score: 0,
            ema: this.scoreBook.get(v.peer),
            flagged: true,
            reason: failed.get(v.peer)!.slice(0, 64),
          };
        const flagged = roundFlag(v) || this.scoreBook.lowScore(v.peer);
        const reason =
          v.hard ??
          (v.copyOf ? `copy of ${v.copyOf.slice(-8)}` : harmful(v) ? 'harmful' : flagged ? 'low score' : null);
        logger[flagged ? 'warn' : 'debug'](
          { round, peer: v.peer, reason, gainAssigned: v.gainAssigned, gainRandom: v.gainRandom },
          flagged ? 'validator flagged an update' : 'validator scored an update',
        );
        return { peer: v.peer, score: v.score, ema: this.scoreBook.get(v.peer), flagged, reason };
      });
      logger.info(
        {
          round,
          included: nInc,
          held: verdicts.length,
          ms: Math.round(performance.now() - t0),
          verdicts: verdicts.map(
            (v, j) =>
              `${v.peer.slice(-6)}${j < nInc ? '' : '(extra)'} A${v.gainAssigned.toFixed(4)} R${v.gainRandom.toFixed(4)} ` +
              `${entries[j].flagged ? `!${entries[j].reason}` : 'ok'}${j < nInc ? ` pay ${pay[j].points}${pay[j].reason ? `(${pay[j].reason})` : ''}` : ''}`,
          ),
        },
        'scored round',
      );
      this.latest = { round, entries };
      this.scoredSince.push({ round, entries });
      this.d.scored({ round, entries });
      const reportHash = canonicalHash({ round, baseHash, entries });
      this.d.publish({ round, baseHash, reportHash, entries });
      return { entries, pay };
    } catch (err) {
      logger.warn({ round, err: (err as Error).message }, 'validator could not score the round');
      return null;
    }
  }
}

/**
 * Selection by score, on every peer: the members trusted validators flagged in a report of the
 * last 3 rounds (hard checks, copies, failed audits, a low smoothed score; not 'harmful' alone,
 * which noise can trigger) are left out of this peer's proposals (the reducer's 'exclude' event).
 */
export class Exclusions {
  private excluded: string[] = [];
  /** Per member, the last round a trusted validator flagged it. */
  private readonly flaggedAt = new Map<string, number>();
  /** The newest round of any trusted report folded in (-1: none yet). */
  private lastTrusted = -1;
  /** Members a trusted validator has scored unflagged at least once (newest last; capped). */
  private readonly cleared = new Set<string>();
  /** Sorted: this round's members on probation (the reducer's credit below the probation). */
  private probationers: string[] = [];
  /** Latest score report received from each validator. */
  readonly reports = new Map<string, ScoreReport>();

  /**
   * `gate`: this peer has a trusted validator (its own role, or --trust-validators). Then a
   * member on probation is proposed only once a trusted validator has scored one of its updates
   * unflagged (validators score held updates whether applied or not), so an identity with no
   * verified work never lands an update, and never earns the credit that would give it a vote.
   */
  constructor(private readonly d: { logger: Logger; exclude: (peers: string[]) => void; gate?: boolean }) {}

  /** A round started: its members on probation (sorted or not). */
  setProbation(now: number, probationers: readonly string[]): void {
    this.probationers = [...probationers].sort(compareIds);
    this.update(now);
  }

  /** A validator's report arrived (`trusted`: the peer trusts that validator, or it is its own). */
  onReport(from: string | null, report: ScoreReport, trusted: boolean, round: number): void {
    if (from !== null) {
      // Senders are validators or members (the node checks); the map is capped anyway.
      const old = this.reports.get(from);
      if (!old || old.round < report.round) {
        this.reports.delete(from);
        this.reports.set(from, { round: report.round, entries: report.entries });
        if (this.reports.size > MAX_REPORTS) this.reports.delete(this.reports.keys().next().value!);
      }
    }
    if (trusted) this.update(round, report);
  }

  /** Recomputes the excluded set at round `now`, after folding in `report`; tells the reducer if it changed. */
  update(now: number, report?: ScoreReport): void {
    // An unflagged score clears a flag. A report that does not mention a member (its update
    // arrived too late to be scored) changes nothing, so a left-out member is not let back in by a gap.
    if (report) {
      this.lastTrusted = Math.max(this.lastTrusted, report.round);
      for (const e of report.entries) {
        if (e.flagged && e.reason !== 'harmful')
          this.flaggedAt.set(e.peer, Math.max(report.round, this.flaggedAt.get(e.peer) ?? -1));
        else if (!e.flagged && (this.flaggedAt.get(e.peer) ?? -1) < report.round) this.flaggedAt.delete(e.peer);
        if (!e.flagged) {
          this.cleared.delete(e.peer);
          this.cleared.add(e.peer);
          if (this.cleared.size > MAX_CLEARED) this.cleared.delete(this.cleared.values().next().value!);
        }
      }
    }
    const live = this.lastTrusted >= now - EXCLUDE_ROUNDS;
    const out = new Set(live ? this.flaggedAt.keys() : []);
    // The probation gate lapses with the validators too: newcomers must not wait on a silent one.
    if (this.d.gate && live) for (const p of this.probationers) if (!this.cleared.has(p)) out.add(p);
    const next = [...out].sort(compareIds);
    if (next.join() === this.excluded.join()) return;
    if (next.length)
      this.d.logger.warn(
        { round: now, peers: next },
        'leaving flagged or unscored probationers out of proposed update sets',
      );
    this.excluded = next;
    this.d.exclude(next);
  }

  /** Mean smoothed score per peer over the latest report of each validator heard (and `own`). */
  meanScores(own: ScoreReport | null): Record<string, number> {
    const sum = new Map<string, { s: number; n: number }>();
    const reports = [...this.reports.values(), ...(own ? [own] : [])];
    for (const r of reports)
      for (const e of r.entries) {
        const a = sum.get(e.peer) ?? { s: 0, n: 0 };
        a.s += e.ema;
        a.n++;
        sum.set(e.peer, a);
      }
    return Object.fromEntries([...sum].map(([p, a]) => [p, a.s / a.n]));
  }
}
