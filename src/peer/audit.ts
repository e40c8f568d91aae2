/**
 * Audit by re-execution and fraud proofs, on the peer (manifest hyper.audit; the protocol is
 * src/verify/audit.ts). Every peer records the trainers' signed commitments and the roster and
 * base of each applied round. A validator re-executes a sampled trainer's whole round against
 * the trace it committed to and, on a mismatch, publishes a one-step fraud proof; any peer checks
 * a published proof with one re-executed step.
 *
 * Trainers on GPUs (docs/WEBGPU.md "Audits when trainers use GPUs"): a commitment names its
 * backend class (verify/backend.ts). The CPU class is audited bit for bit as above. Any other
 * class needs the manifest's tolerance (else the audit fails: the run admits no such trainer) and
 * a trace that lists the trainer's per-step states; then a validator whose own device is of that
 * very class re-executes there bit for bit (a twin model on its GPU, `useDevice`), and any other
 * validator re-executes on the CPU step by step from the trainer's states, fetched one at a time,
 * judging each with the tolerance (verify/audit-tolerance.ts). Fraud (a v2 proof, with the
 * post-state) is only a step beyond the tolerance; a same-class bit mismatch within it is recorded
 * as a failed audit ('irreproducible'), never published, since other peers cannot re-check it.
 *
 * Who may make us do what: any member of a round may commit (one per round, first write wins);
 * an audit fetches at most H+1 states of 12·P bytes each from the audited trainer, one at a time
 * (each checked against its committed digest before use), and re-executes at most H steps; a
 * published proof costs one fetch (capped at three states) and one step, checked once per proof.
 */
import type { Logger } from 'pino';
import type { TokenArray } from '../data/batches.js';
import type { Kernels } from '../kernels/api.js';
import type { ThetaModel } from '../model/lora-model.js';
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
  type AnyFraudProof,
  type AuditJob,
  type StepState,
  type TrainerOracle,
} from '../verify/audit.js';
import {
  auditSameClass,
  auditTolerance,
  type DeviceRunner,
  type StateOracle,
  type ToleranceRule,
  type ToleranceVerdict,
} from '../verify/audit-tolerance.js';
import { decodeFraudProof, encodeFraudProof, MAX_PROOF_BYTES } from '../verify/audit-wire.js';
import { classOf, describeClass, exactEverywhere, sameClass, type BackendClass } from '../verify/backend.js';
import { MerkleTree } from '../verify/merkle.js';
import { decodeState, decodeTrace, maxStateBytes, maxTraceBytes, traceRoot, type Trace } from '../verify/trace.js';
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
/** How long a fraud proof waits for its round's commitment and apply to reach this peer. */
const FRAUD_WAIT_MS = 15_000;

export interface AuditDeps {
  manifest: DecodedManifest;
  numShards: number;
  self: string;
  params: number;
  kernels: Kernels;
  /** The model θ belongs to, for re-execution (a LoRA run: a LoraGPT over the base; else a GPT). */
  makeModel?: () => ThetaModel;
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
  /** This validator's own device, for bit-for-bit audits of trainers of its class (useDevice). */
  private device: { backend: BackendClass; runner: (job: AuditJob) => DeviceRunner } | null = null;
  /** Same-class audits share the one device model: one at a time. */
  private deviceLock: Promise<unknown> = Promise.resolve();

  constructor(private readonly d: AuditDeps) {}

  /** Re-execute rounds of trainers of class `backend` on this runner (a twin model on this node's GPU). */
  useDevice(backend: BackendClass, runner: (job: AuditJob) => DeviceRunner): void {
    this.device = { backend, runner };
  }

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
    const cls = classOf(c);
    if (!exactEverywhere(cls)) {
      const tolerance = this.d.manifest.manifest.hyper.audit?.tolerance;
      if (!tolerance) return rec(false, 'a gpu class in a run audited bit for bit');
      if (trace.states?.length !== c.steps) return rec(false, 'gpu trace lists no per-step states');
      const job = await this.job(round, trainer, roster, c.steps);
      if (!job) return rec(true, 'skipped: shard data unavailable');
      return this.auditGpu(rec, c, trainer, trace, job, { tolerance, backend: cls }, updateHash, delta);
    }
    const job = await this.job(round, trainer, roster, c.steps);
    if (!job) return rec(true, 'skipped: shard data unavailable');
    const st = new Stepper(this.d.manifest.manifest.model, this.d.kernels, job, this.d.makeModel);
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
    this.publishProof(round, trainer, c.root, v.proof, { queries: v.bisect.queries, locateSteps: v.locateSteps });
    return rec(false, `fraud at step ${v.proof.k}`, { k: v.proof.k, steps: v.steps });
  }

  private publishProof(round: number, trainer: string, root: string, p: AnyFraudProof, log: object): void {
    const bytes = encodeFraudProof(p);
    const proof = sha256HexNode(bytes);
    this.d.payloads.putBlob(proof, bytes, round);
    if (!this.d.stopped()) this.d.publishFraud({ round, trainer, k: p.k, root, proof });
    this.d.logger.warn(
      { round, trainer, k: p.k, rule: p.v === 1 ? 'exact' : 'tolerance', proofBytes: bytes.length, ...log },
      'fraud: published a fraud proof',
    );
  }

  /**
   * A GPU-class trainer's round: bit for bit on this validator's own device when it is of that
   * class, else step by step on the CPU within the manifest's tolerance, from the trainer's states.
   */
  private async auditGpu(
    rec: (ok: boolean, reason: string | null, extra?: Partial<AuditRecord>) => AuditRecord,
    c: Commitment,
    trainer: string,
    trace: Trace,
    job: AuditJob,
    rule: ToleranceRule,
    updateHash: string,
    delta: Float32Array,
  ): Promise<AuditRecord> {
    const P = this.d.params;
    const objects = trace.states!;
    // The trainer's states, fetched when asked (each checked against its leaf by the audit); the
    // last two are kept, since each step needs its pre-state again as the next one's post-state.
    const kept = new Map<number, Promise<StepState>>();
    const fetchState = (i: number): Promise<StepState> => {
      let p = kept.get(i);
      if (!p) {
        p = fetchBulk(this.d.host, trainer, objects[i - 1], {
          maxBytes: maxStateBytes(P),
          signal: AbortSignal.timeout(this.d.fetchMs),
        }).then((bytes) => decodeState(bytes, P));
        kept.set(i, p);
        for (const k of kept.keys()) if (kept.size > 2 && k !== i) kept.delete(k);
      }
      return p;
    };
    const tree = new MerkleTree(trace.digests.map(leafOf));
    const oracle: StateOracle = {
      reveal: (i) => ({ digest: trace.digests[i], proof: tree.proof(i) }),
      state: (i) => (i === 0 ? cloneState(trace.start) : fetchState(i)),
    };
    const base = this.d.payloads.msg(updateHash)?.baseHash ?? digestState(trace.start).weights;
    const cpu = new Stepper(this.d.manifest.manifest.model, this.d.kernels, job, this.d.makeModel);
    const dev = this.device && sameClass(this.device.backend, rule.backend) ? this.device : null;
    let v: ToleranceVerdict;
    try {
      if (dev) {
        const run = this.deviceLock.then(() =>
          auditSameClass(dev.runner(job), cpu, trainer, c.root, base, oracle, rule),
        );
        this.deviceLock = run.catch(() => undefined);
        v = await run;
      } else v = await auditTolerance(cpu, trainer, c.root, base, oracle, rule);
    } catch (err) {
      return rec(false, `audit: ${(err as Error).message}`.slice(0, 64), { steps: cpu.executed });
    }
    const how = dev ? 'same class, bit for bit' : 'cpu, within the tolerance';
    if (v.ok) {
      if (this.d.manifest.manifest.hyper.codec.id === 'fp32') {
        // The update must be the end of the trace, bit for bit: the trainer's own last state.
        let end: Float32Array;
        try {
          end = (await oracle.state(c.steps)).theta;
        } catch (err) {
          return rec(false, `no final state: ${(err as Error).message}`.slice(0, 64), { steps: v.steps });
        }
        for (let i = 0; i < P; i++)
          if (Math.fround(trace.start.theta[i] - end[i]) !== delta[i])
            return rec(false, 'update is not the end of its trace', { steps: v.steps });
      }
      this.d.logger.info(
        { round: job.round, trainer, how, backend: describeClass(rule.backend) },
        'audit: gpu trainer passed',
      );
      return rec(true, null, { steps: v.steps });
    }
    if (v.reason === 'bad-anchor') return rec(false, 'trace not built on the round weights', { steps: v.steps });
    if (v.reason === 'irreproducible')
      return rec(false, `irreproducible on its claimed class at step ${v.k}`, { k: v.k, steps: v.steps });
    this.publishProof(job.round, trainer, c.root, v.proof, { how, broken: v.judgement.reason });
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
      // The proof may outrun this peer: the trainer's commitment, or this peer's apply of the
      // round (a slower device), may still be on the way. Wait a bounded while (senders are
      // validators or members, rate-limited per round by the node; each proof is waited on once).
      let c = this.commits.get(`${b.round}:${b.trainer}`);
      let r = this.roundInfo.get(b.round);
      for (let w = 0; (!c || !r) && w < FRAUD_WAIT_MS / 100 && !this.d.stopped(); w++) {
        await new Promise((res) => setTimeout(res, 100));
        c = this.commits.get(`${b.round}:${b.trainer}`);
        r = this.roundInfo.get(b.round);
      }
      if (!c || c.root !== b.root || !r) {
        done(false, 'no matching commitment or round here');
        return;
      }
      const P = this.d.params;
      // A v2 proof (a GPU-class trainer) carries two states; a v1 one, one.
      const cap = Math.min(MAX_PROOF_BYTES, 3 * maxTraceBytes(P));
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
        stepper: new Stepper(this.d.manifest.manifest.model, this.d.kernels, job, this.d.makeModel),
        root: c.root,
        trainer: b.trainer,
        baseHash: base,
        backend: classOf(c),
        tolerance: this.d.manifest.manifest.hyper.audit?.tolerance ?? null,
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
