/**
 * Audit by re-execution and fraud proofs, on the peer (manifest hyper.audit; the protocol is
 * src/verify/audit.ts). Every peer records the trainers' signed commitments and the roster and
 * base of each applied round. A validator re-executes a sampled trainer's whole round against
 * the trace it committed to and, on a mismatch, publishes a one-step fraud proof; any peer checks
 * a published proof with one re-executed step.
 */
import type { Logger } from 'pino';
import type { TokenArray } from '../data/batches.js';
import type { Kernels } from '../kernels/api.js';
import { fetchBulk, type Host } from '../net/index.js';
import { assignShards, roundSeed } from '../swarm/assign.js';
import type { DecodedManifest } from '../swarm/manifest.js';
import { sha256HexNode } from '../util/hash-node.js';
import {
  Stepper,
  audit as auditTrace,
  cloneState,
  digestState,
  leafOf,
  verifyFraudProof,
  type AuditJob,
  type TrainerOracle,
} from '../verify/audit.js';
import { decodeFraudProof, encodeFraudProof, MAX_PROOF_BYTES } from '../verify/audit-wire.js';
import { MerkleTree } from '../verify/merkle.js';
import { decodeTrace, maxTraceBytes, traceRoot } from '../verify/trace.js';
import { SeenSet } from './admission.js';
import type { PayloadStore } from './payloads.js';
import type { AuditRecord, FraudRecord } from './report.js';
import type { Commitment, FraudNotice } from './wire.js';

/**
 * Rounds of commitments kept, behind the current round (fraud proofs and audits name recent
 * rounds). Commitments are keyed by (round, member) and only members of that round may write
 * one (the node checks), first write wins: nobody can evict or replace another's commitment,
 * and the map holds at most roster × (COMMIT_ROUNDS + 2) entries.
 */
export const COMMIT_ROUNDS = 16;
/** Fraud proofs remembered, so the same proof is downloaded and re-executed once. */
const SEEN_PROOFS = 1024;
/** Applied rounds whose roster and base are kept (fraud proofs name past rounds). */
const ROUND_INFO = 64;

export interface AuditDeps {
  manifest: DecodedManifest;
  numShards: number;
  self: string;
  params: number;
  kernels: Kernels;
  host: Host;
  payloads: PayloadStore;
  shardData: (shard: number, round: number) => Promise<TokenArray | null>;
  publishCommit: (c: Commitment) => void;
  publishFraud: (f: FraudNotice) => void;
  fetchMs: number;
  stopped: () => boolean;
  logger: Logger;
}

export class Audits {
  /** Commitments heard, by `round:peer`. */
  private readonly commits = new Map<string, Commitment>();
  /** Roster and base weights hash of each applied round. */
  private readonly roundInfo = new Map<number, { roster: string[]; baseHash: string }>();
  private fraudsSince: FraudRecord[] = [];
  /** Fraud notices already checked (by round, trainer, root and proof). */
  private readonly seenProofs = new SeenSet(SEEN_PROOFS);
  /** Trainers whose fraud in a round is already verified here (`round:trainer`): further proofs are not checked. */
  private readonly convicted = new SeenSet(SEEN_PROOFS);

  constructor(private readonly d: AuditDeps) {}

  /** Fraud proofs checked since the last call. */
  takeFrauds(): FraudRecord[] {
    return this.fraudsSince.splice(0);
  }

  /** This trainer's own commitment: recorded, then published. */
  commitOwn(c: Commitment): void {
    this.commits.set(`${c.round}:${this.d.self}`, c);
    this.prune(c.round);
    if (!this.d.stopped()) this.d.publishCommit(c);
  }

  /** A commitment heard on the topic (signed by `from`, a member of round c.round; the node checks). */
  onCommit(from: string, c: Commitment, now: number): void {
    const key = `${c.round}:${from}`;
    if (this.commits.has(key) || c.round < now - COMMIT_ROUNDS) return;
    this.commits.set(key, c);
    this.prune(now);
  }

  /** Commitments held (for tests and reports). */
  get commitCount(): number {
    return this.commits.size;
  }

  private prune(now: number): void {
    for (const [k, c] of this.commits) if (c.round < now - COMMIT_ROUNDS) this.commits.delete(k);
  }

  /** Round `round` is being applied with this roster on this base. */
  onApply(round: number, roster: string[], baseHash: string): void {
    this.roundInfo.set(round, { roster, baseHash });
    if (this.roundInfo.size > ROUND_INFO) this.roundInfo.delete(this.roundInfo.keys().next().value!);
  }

  /** The trainer's job as re-execution needs it: its assigned shards' tokens, H, batch, schedule. */
  private async job(round: number, trainer: string, roster: string[], steps: number): Promise<AuditJob | null> {
    const { manifest: dm } = this.d,
      m = dm.manifest;
    const shards = assignShards(roundSeed(dm.runId, round), roster, this.d.numShards).get(trainer) ?? [];
    const data = await Promise.all(shards.map((sh) => this.d.shardData(sh, round)));
    if (shards.length === 0 || data.some((d) => !d)) return null;
    return {
      runId: dm.runId,
      round,
      innerSteps: m.hyper.innerSteps,
      steps,
      shards: shards.map((shard, i) => ({ shard, tokens: data[i]! })),
      B: m.hyper.batch,
      T: m.model.ctx,
      schedule: m.hyper.schedule,
      adamw: m.hyper.adamw,
    };
  }

  /**
   * Audits one trainer's round: fetches its committed trace, checks it against the root it
   * signed, re-executes every step with deterministic kernels and, on a mismatch, bisects the
   * committed digests to the first wrong step and publishes a one-step fraud proof. With the
   * fp32 codec the update itself must equal the trace's end, bitwise.
   */
  async auditOne(
    round: number,
    trainer: string,
    updateHash: string,
    roster: string[],
    delta: Float32Array,
  ): Promise<AuditRecord> {
    const t0 = performance.now();
    const rec = (ok: boolean, reason: string | null, extra: Partial<AuditRecord> = {}): AuditRecord => ({
      round,
      trainer,
      ok,
      reason,
      steps: 0,
      ms: performance.now() - t0,
      ...extra,
    });
    // The commitment is published just before the update; give gossip a moment.
    let c = this.commits.get(`${round}:${trainer}`);
    for (let w = 0; !c && w < 30 && !this.d.stopped(); w++) {
      await new Promise((r) => setTimeout(r, 100));
      c = this.commits.get(`${round}:${trainer}`);
    }
    if (!c) return rec(false, 'no commitment');
    if (c.updateHash !== updateHash) return rec(false, 'commitment names another update');
    const P = this.d.params;
    let trace;
    try {
      const bytes = await fetchBulk(this.d.host, trainer, c.trace, {
        maxBytes: maxTraceBytes(P),
        signal: AbortSignal.timeout(this.d.fetchMs),
      });
      trace = decodeTrace(bytes, P);
    } catch (err) {
      return rec(false, `no valid trace: ${(err as Error).message}`.slice(0, 64));
    }
    if (trace.digests.length !== c.steps + 1 || traceRoot(trace.digests) !== c.root)
      return rec(false, 'trace does not match its root');
    const job = await this.job(round, trainer, roster, c.steps);
    if (!job) return rec(true, 'skipped: shard data unavailable');
    const st = new Stepper(this.d.manifest.manifest.model, this.d.kernels, job);
    const tree = new MerkleTree(trace.digests.map(leafOf));
    const start = trace.start;
    const oracle: TrainerOracle = {
      reveal: (i) => ({ digest: trace.digests[i], proof: tree.proof(i) }),
      // State i > 0 is only asked for after leaf i agreed with ours: regenerate it from the pre-state.
      state: (i) => {
        if (i === 0) return cloneState(start);
        st.load(start);
        for (let j = 0; j < i; j++) st.stepAt(j);
        return st.state();
      },
    };
    const base = this.d.payloads.msg(updateHash)?.baseHash ?? digestState(start).weights;
    let v;
    try {
      v = auditTrace(st, trainer, c.root, base, oracle);
    } catch (err) {
      return rec(false, `audit: ${(err as Error).message}`.slice(0, 64), { steps: st.executed });
    }
    if (v.ok) {
      if (this.d.manifest.manifest.hyper.codec.id === 'fp32') {
        const end = st.gpt.params;
        for (let i = 0; i < P; i++) {
          if (Math.fround(start.theta[i] - end[i]) !== delta[i])
            return rec(false, 'update is not the end of its trace', { steps: v.steps });
        }
      }
      return rec(true, null, { steps: v.steps });
    }
    if (v.reason === 'bad-anchor') return rec(false, 'trace not built on the round weights', { steps: v.steps });
    const bytes = encodeFraudProof(v.proof);
    const proof = sha256HexNode(bytes);
    this.d.payloads.putBlob(proof, bytes, round);
    if (!this.d.stopped()) this.d.publishFraud({ round, trainer, k: v.proof.k, root: c.root, proof });
    this.d.logger.warn(
      { round, trainer, k: v.proof.k, queries: v.bisect.queries, locateSteps: v.locateSteps, proofBytes: bytes.length },
      'fraud: published a fraud proof',
    );
    return rec(false, `fraud at step ${v.proof.k}`, { k: v.proof.k, steps: v.steps });
  }

  /** Any peer: checks a published fraud proof with one re-executed step, and records the outcome. */
  async checkFraud(by: string, b: FraudNotice): Promise<void> {
    const done = (verified: boolean, reason: string | null) => {
      this.fraudsSince.push({ round: b.round, trainer: b.trainer, k: b.k, by, verified, reason });
      this.d.logger.warn(
        { round: b.round, trainer: b.trainer, k: b.k, by, verified, reason },
        verified ? 'verified a fraud proof' : 'rejected a fraud proof',
      );
    };
    // The same proof is checked once; a trainer already convicted for a round needs no second proof.
    if (!this.seenProofs.first(`${b.round}:${b.trainer}:${b.root}:${b.proof}`)) return;
    if (!this.convicted.first(`${b.round}:${b.trainer}`)) return;
    let verified = false;
    try {
      const c = this.commits.get(`${b.round}:${b.trainer}`);
      const r = this.roundInfo.get(b.round);
      if (!c || c.root !== b.root || !r) {
        done(false, 'no matching commitment or round here');
        return;
      }
      const P = this.d.params;
      const cap = Math.min(MAX_PROOF_BYTES, 2 * maxTraceBytes(P));
      const proof = decodeFraudProof(
        await fetchBulk(this.d.host, by, b.proof, { maxBytes: cap, signal: AbortSignal.timeout(this.d.fetchMs) }),
        cap,
      );
      const job = await this.job(b.round, b.trainer, r.roster, c.steps);
      if (!job) {
        done(false, 'shard data unavailable');
        return;
      }
      const base = this.d.payloads.msg(c.updateHash)?.baseHash ?? r.baseHash;
      const v = verifyFraudProof(proof, {
        stepper: new Stepper(this.d.manifest.manifest.model, this.d.kernels, job),
        root: c.root,
        trainer: b.trainer,
        baseHash: base,
      });
      verified = v.ok;
      done(v.ok, v.ok ? null : v.reason);
    } catch (err) {
      done(false, (err as Error).message.slice(0, 64));
    } finally {
      // Only a verified proof settles the trainer's round; a bad one leaves room for a good one.
      if (!verified) this.convicted.forget(`${b.round}:${b.trainer}`);
    }
  }
}
