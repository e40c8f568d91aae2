/**
 * Audit by re-execution: per-step Merkle commitments, bisection to the first divergent inner
 * step, and one-step fraud proofs that any peer can check. Pure core: no I/O, no clocks.
 *
 * What a leaf commits to. Re-executing inner step i (1-based) alone needs the FULL state
 * after step i−1: θ, AdamW's m and v, and its step count t (bias correction); the batch and
 * learning rate are public functions of (run, round, i). So leaf i commits to that state:
 *   leaf_i = sha256("tessera/audit/leaf/v1\n" ‖ weightsHash(θ_i) ‖ optHash(m_i, v_i, t_i))
 * It is split in two hashes (not one hash of θ‖m‖v‖t) on purpose: leaf 0's weights half must
 * equal the round's public weights hash (anchoring the trace to θ_round), and a peer can check
 * that without the trainer's private moments (m, v carry over between rounds).
 *
 * Protocol. Trainer: runs H steps, commits root over leaves 0..H (leaf 0 = state before step 1),
 * keeps (or can regenerate) its intermediate states. Validator (sampled with probability p,
 * `spotCheck`): obtains state 0 from the trainer, checks it against leaf 0 and θ_round,
 * re-executes all H steps recording only its own leaf hashes (32 B each, never the states),
 * and compares roots. On a mismatch it bisects: it asks the trainer for leaf j with an
 * inclusion proof (a dishonest trainer answers from its faulty trace; the proof binds it to
 * its root) and keeps the invariant "leaf lo agrees, leaf hi differs": 1 + ⌈log2 H⌉ queries
 * (7 for H = 64). Then
 * it fetches the trainer's state k−1 (which hashes to the agreed leaf k−1), re-executes that
 * ONE step and gets a leaf ≠ leaf k: that single step is the fraud proof, checkable by any peer
 * with one step of compute. Locating costs no re-execution beyond that final step, because the
 * reference hashes come from the detection pass; without a reference trace no search can do
 * better than Ω(H) steps against a one-off fault (every transition of a faulty trace except
 * step k is locally consistent).
 *
 * Re-execution draws step i's batch with src/swarm/round-batches.ts and runs the one inner step
 * of src/train/inner-step.ts, the two functions a trainer's job is built on (node.ts runJob
 * derives the same seeds and float operations). A step with a non-finite loss fails the audit
 * (AuditError). Bitwise reproducibility needs the deterministic kernels
 * (`loadKernels({ deterministic: true })`).
 *
 * Trainers on GPUs (backend.ts, tolerance.ts, audit-tolerance.ts): a trainer whose commitment
 * names a non-CPU backend class is judged step by step against the CPU re-execution with the
 * manifest's tolerance, and its fraud proof (v 2) carries the committed post-state too, so that
 * any peer re-checks it with the same one step and the same rule. The CPU class keeps the exact
 * rule and the v 1 proof above.
 */
import { createHash } from 'node:crypto';
import type { Kernels } from '../kernels/api.js';
import type { ModelConfig } from '../model/config.js';
import { GPT } from '../model/gpt.js';
import { adamwFor, type ThetaModel } from '../model/lora-model.js';
import { weightsHash } from '../model/checkpoint.js';
import { AdamW, type AdamWSettings } from '../train/adamw.js';
import type { Schedule } from '../train/schedule.js';
import { innerStep } from '../train/inner-step.js';
import type { Batch, TokenArray } from '../data/batches.js';
import { roundBatches, type BatchSpec, type RoundBatches } from '../swarm/round-batches.js';
import { NonFiniteLossError, TesseraError } from '../util/errors.js';
import { lrAt } from '../train/schedule.js';
import { MerkleTree, verifyInclusion, type MerkleProof } from './merkle.js';
import { CPU_CLASS, exactEverywhere, sameClass, type BackendClass } from './backend.js';
import { judgeStep, type StepJudgement, type Tolerance } from './tolerance.js';

/** Audit input is inconsistent (wrong sizes, a trainer answer that fails its proof, ...). */
export class AuditError extends TesseraError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('AUDIT_INVALID', message, options);
  }
}

/** The state after some number of inner steps: all that re-executing the next step needs. */
export interface StepState {
  theta: Float32Array;
  m: Float32Array;
  v: Float32Array;
  /** AdamW's update count t. */
  step: number;
}

export interface StateDigest {
  /** weightsHash(θ): sha256 of the float32 LE bytes, as everywhere in Tessera. */
  weights: string;
  /** optHash(m, v, t). */
  opt: string;
}

const LITTLE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
function le(a: Float32Array): Uint8Array {
  if (LITTLE) return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const out = new Uint8Array(a.byteLength),
    dv = new DataView(out.buffer);
  for (let i = 0; i < a.length; i++) dv.setFloat32(4 * i, a[i], true);
  return out;
}

export function optHash(m: Float32Array, v: Float32Array, step: number): string {
  const t = Buffer.alloc(8);
  t.writeBigUInt64BE(BigInt(step));
  return createHash('sha256').update('tessera/audit/opt/v1\n').update(t).update(le(m)).update(le(v)).digest('hex');
}

export function digestState(s: StepState): StateDigest {
  return { weights: weightsHash(s.theta), opt: optHash(s.m, s.v, s.step) };
}

export function leafOf(d: StateDigest): string {
  return createHash('sha256')
    .update('tessera/audit/leaf/v1\n')
    .update(Buffer.from(d.weights, 'hex'))
    .update(Buffer.from(d.opt, 'hex'))
    .digest('hex');
}

export function cloneState(s: StepState): StepState {
  return { theta: s.theta.slice(), m: s.m.slice(), v: s.v.slice(), step: s.step };
}

/** Everything public that fixes one trainer's inner steps in one round (as in node.ts runJob). */
export interface AuditJob {
  runId: string;
  round: number;
  /** H: steps per round (also the schedule's stride: step i of round r uses lrAt(r·H + i)). */
  innerSteps: number;
  /** Steps the trainer actually ran and committed (a node stops at its deadline): default H. */
  steps?: number;
  /** The trainer's assigned shards, in assignment order, with their tokens. */
  shards: { shard: number; tokens: TokenArray }[];
  B: number;
  T: number;
  schedule: Schedule;
  adamw: AdamWSettings;
}

/** Steps committed in a job: `steps` if given (1..H), else H. */
export function stepsOf(job: AuditJob): number {
  const n = job.steps ?? job.innerSteps;
  if (!Number.isSafeInteger(n) || n < 1 || n > job.innerSteps)
    throw new AuditError(`committed steps ${n} outside 1..${job.innerSteps}`);
  return n;
}

export type { BatchSpec } from '../swarm/round-batches.js';

/** The job's batches, exactly as node.ts runJob draws them (src/swarm/round-batches.ts). */
export function batchesOf(job: AuditJob): RoundBatches {
  return roundBatches(job.runId, job.round, job.shards, job.B, job.T);
}

function specIn(rb: RoundBatches, i: number): BatchSpec {
  const spec = rb.spec(i);
  if (!spec) throw new AuditError('no usable shard in the job');
  return spec;
}

function batchIn(rb: RoundBatches, spec: BatchSpec): Batch {
  const b = rb.batch(spec);
  if (!b) throw new AuditError(`batch spec names shard ${spec.shard} / seed ${spec.seed}, not in the job`);
  return b;
}

/** The batch inner step i (0-based) draws from the job's batches `rb`. */
export function batchAt(rb: RoundBatches, i: number): Batch {
  return batchIn(rb, specIn(rb, i));
}

/** Which batch inner step i (0-based) of the job draws. */
export function batchSpec(job: AuditJob, i: number): BatchSpec {
  return specIn(batchesOf(job), i);
}

export function batchFor(job: AuditJob, spec: BatchSpec): Batch {
  return batchIn(batchesOf(job), spec);
}

/**
 * Runs inner steps on its own GPT and AdamW. One per peer role (trainer, validator, verifier):
 * "another peer" is simply another Stepper over fresh kernels.
 */
export class Stepper {
  readonly gpt: ThetaModel;
  readonly opt: AdamW;
  /** Inner steps executed by this stepper so far (the audit cost counter). */
  executed = 0;
  private readonly batches: RoundBatches;
  /** `make`: the model θ belongs to (a LoRA run's LoraGPT, θ = the adapter); default a GPT of `config`. */
  constructor(
    readonly config: ModelConfig,
    kernels: Kernels,
    readonly job: AuditJob,
    make?: () => ThetaModel,
  ) {
    this.gpt = make ? make() : new GPT(config, kernels);
    this.opt = adamwFor(this.gpt, job.adamw, kernels);
    this.batches = batchesOf(job);
  }

  load(s: StepState): void {
    const n = this.gpt.numParams;
    if (s.theta.length !== n || s.m.length !== n || s.v.length !== n)
      throw new AuditError(`state size does not match the model (${n} parameters)`);
    if (!Number.isSafeInteger(s.step) || s.step < 0) throw new AuditError(`bad optimizer step ${s.step}`);
    this.gpt.params.set(s.theta);
    this.opt.m.set(s.m);
    this.opt.v.set(s.v);
    this.opt.step = s.step;
  }

  state(): StepState {
    return { theta: this.gpt.params.slice(), m: this.opt.m.slice(), v: this.opt.v.slice(), step: this.opt.step };
  }

  digest(): StateDigest {
    return { weights: weightsHash(this.gpt.params), opt: optHash(this.opt.m, this.opt.v, this.opt.step) };
  }

  /**
   * Executes inner step i (0-based) on the loaded state: the trainer's batch for step i and
   * the one inner step (src/train/inner-step.ts) that node.ts runJob runs. A non-finite loss
   * is an audit failure (AuditError), the state left as it was before the step.
   */
  stepAt(i: number): void {
    const { job } = this;
    const b = batchIn(this.batches, specIn(this.batches, i));
    const step = job.round * job.innerSteps + i;
    try {
      innerStep(this.gpt, this.opt, { batches: [b], B: job.B, T: job.T, schedule: job.schedule, step });
    } catch (err) {
      if (!(err instanceof NonFiniteLossError)) throw err;
      throw new AuditError(`inner step ${i + 1}: loss is ${err.loss}`, { cause: err });
    }
    this.executed++;
  }
}

/**
 * Re-executes `count` steps from `from`, the state after `index` steps. Returns the leaves
 * of states index+1 .. index+count (the stepper holds the final state).
 */
export function reexecute(st: Stepper, from: StepState, index: number, count: number): string[] {
  st.load(from);
  const leaves: string[] = [];
  for (let i = index; i < index + count; i++) {
    st.stepAt(i);
    leaves.push(leafOf(st.digest()));
  }
  return leaves;
}

export interface Commitment {
  root: string;
  /** Leaves 0..H. */
  leaves: string[];
  digests: StateDigest[];
  tree: MerkleTree;
  /** Full states 0..H when `keep` was set (the trainer's store for answering audits). */
  states: StepState[] | null;
  final: StepState;
}

export interface CommitOptions {
  /** Keep every intermediate state (small models / tests; big models regenerate instead). */
  keep?: boolean;
  /** Fault injection: called after inner step k (1-based) with the state, which it may corrupt. */
  tamper?: (k: number, s: Stepper) => void;
}

/** A trainer runs its H inner steps from `start` and commits to every intermediate state. */
export function commitSteps(st: Stepper, start: StepState, opts: CommitOptions = {}): Commitment {
  const H = stepsOf(st.job);
  st.load(start);
  const digests: StateDigest[] = [st.digest()];
  const states: StepState[] | null = opts.keep ? [cloneState(start)] : null;
  for (let i = 0; i < H; i++) {
    st.stepAt(i);
    opts.tamper?.(i + 1, st);
    digests.push(st.digest());
    states?.push(st.state());
  }
  const leaves = digests.map(leafOf);
  const tree = new MerkleTree(leaves);
  return { root: tree.root, leaves, digests, tree, states, final: st.state() };
}

/** A revealed leaf: its preimage (the two hashes) and its inclusion proof. */
export interface Reveal {
  digest: StateDigest;
  proof: MerkleProof;
}

/** How a validator queries a trainer (over the network in a node; a function here). */
export interface TrainerOracle {
  reveal(i: number): Reveal;
  state(i: number): StepState;
}

/** A trainer answering from its commitment (honest or faulty: it answers from its own trace). */
export function oracleFor(c: Commitment): TrainerOracle {
  return {
    reveal: (i) => ({ digest: c.digests[i], proof: c.tree.proof(i) }),
    state: (i) => {
      if (!c.states) throw new AuditError('trainer kept no states');
      return cloneState(c.states[i]);
    },
  };
}

export function checkedReveal(o: Pick<TrainerOracle, 'reveal'>, root: string, count: number, i: number): Reveal {
  const r = o.reveal(i);
  if (r.proof.index !== i || r.proof.count !== count || !verifyInclusion(root, leafOf(r.digest), r.proof)) {
    throw new AuditError(`trainer's reveal of leaf ${i} does not verify against its root`);
  }
  return r;
}

export function checkedState(o: TrainerOracle, d: StateDigest, i: number): StepState {
  return checkedDigest(o.state(i), d, i);
}

/** `s` is the state the trainer's leaf i commits to (by its digest), else AuditError. */
export function checkedDigest(s: StepState, d: StateDigest, i: number): StepState {
  const got = digestState(s);
  if (got.weights !== d.weights || got.opt !== d.opt)
    throw new AuditError(`trainer's state ${i} does not match its leaf`);
  return s;
}

export interface BisectResult {
  /** First divergent step k (1-based): leaf k−1 agrees, leaf k differs. */
  k: number;
  /** Leaf reveals asked of the trainer. */
  queries: number;
}

/**
 * Bisects a trainer's committed leaves against reference leaves (the validator's own,
 * from re-execution) to an index k with leaf k−1 equal and leaf k different. Requires
 * reference[0] to agree and the roots to differ. O(log H) queries, no steps.
 */
export function bisect(o: Pick<TrainerOracle, 'reveal'>, root: string, reference: string[]): BisectResult {
  const count = reference.length,
    H = count - 1;
  let queries = 0;
  const agrees = (i: number): boolean => {
    queries++;
    return leafOf(checkedReveal(o, root, count, i).digest) === reference[i];
  };
  let lo = 0,
    hi = H;
  if (agrees(H)) {
    // The trace left the reference and came back (adversarial): find any differing leaf.
    hi = -1;
    for (let i = H - 1; i > 0 && hi < 0; i--) if (!agrees(i)) hi = i;
    if (hi < 0) throw new AuditError('no leaf differs from the reference');
  }
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (agrees(mid)) lo = mid;
    else hi = mid;
  }
  return { k: hi, queries };
}

export interface FraudProof {
  v: 1;
  runId: string;
  round: number;
  trainer: string;
  root: string;
  /** Leaves in the tree (H+1). */
  count: number;
  /** The inner step (1-based) whose committed result is wrong. */
  k: number;
  pre: Reveal;
  post: Reveal;
  batch: BatchSpec;
  /** The full state k−1, which hashes to `pre.digest` (the one large part). */
  state: StepState;
}

/**
 * A fraud proof against a trainer whose class is judged with a tolerance (backend.ts): the exact
 * proof's fields plus the trainer's committed post-state k, which hashes to `post.digest`, and
 * the rule it breaks (the manifest's tolerance, the claimed class). A checker re-executes step k
 * from `state` on the CPU deterministic kernels and judges `postState` with tolerance.ts.
 */
export interface ToleranceFraudProof extends Omit<FraudProof, 'v'> {
  v: 2;
  postState: StepState;
  tolerance: Tolerance;
  backend: BackendClass;
}
export type AnyFraudProof = FraudProof | ToleranceFraudProof;

export type AuditVerdict =
  | { ok: true; steps: number }
  | { ok: false; reason: 'bad-anchor'; steps: number }
  | { ok: false; reason: 'fraud'; proof: FraudProof; bisect: BisectResult; steps: number; locateSteps: number };

/**
 * A validator's full audit of one trainer's round: anchor check, H-step re-execution, and on
 * a mismatch bisection plus the one confirming step. `st` is the validator's own Stepper.
 */
export function audit(st: Stepper, trainer: string, root: string, baseHash: string, o: TrainerOracle): AuditVerdict {
  const H = stepsOf(st.job),
    count = H + 1;
  const start = st.executed;
  const r0 = checkedReveal(o, root, count, 0);
  if (r0.digest.weights !== baseHash) return { ok: false, reason: 'bad-anchor', steps: 0 };
  const s0 = checkedState(o, r0.digest, 0);
  const reference = [leafOf(r0.digest), ...reexecute(st, s0, 0, H)];
  const full = st.executed - start;
  if (new MerkleTree(reference).root === root) return { ok: true, steps: full };
  const b = bisect(o, root, reference);
  const before = st.executed;
  const proof = makeFraudProof(st, trainer, root, b.k, o);
  if (!proof)
    throw new AuditError(`step ${b.k} re-executes to the committed leaf; the reference trace is inconsistent`);
  return {
    ok: false,
    reason: 'fraud',
    proof,
    bisect: b,
    steps: st.executed - start,
    locateSteps: st.executed - before,
  };
}

/**
 * Builds the fraud proof for step k from the trainer's answers, re-executing that one step.
 * Returns null if the step is in fact correct.
 */
export function makeFraudProof(
  st: Stepper,
  trainer: string,
  root: string,
  k: number,
  o: TrainerOracle,
): FraudProof | null {
  const { job } = st,
    count = stepsOf(job) + 1;
  const pre = checkedReveal(o, root, count, k - 1),
    post = checkedReveal(o, root, count, k);
  const state = checkedState(o, pre.digest, k - 1);
  const [got] = reexecute(st, state, k - 1, 1);
  if (got === leafOf(post.digest)) return null;
  return {
    v: 1,
    runId: job.runId,
    round: job.round,
    trainer,
    root,
    count,
    k,
    pre,
    post,
    batch: batchSpec(job, k - 1),
    state,
  };
}

export interface VerifyContext {
  /** A fresh stepper for the job the proof is about (the verifying peer's own model). */
  stepper: Stepper;
  /** The root the accused trainer signed, as this peer received it. */
  root: string;
  trainer: string;
  /** weightsHash of the round's weights θ_round. */
  baseHash: string;
  /** The backend class the trainer's commitment names (absent: the CPU, judged bit for bit). */
  backend?: BackendClass;
  /** The run manifest's tolerance (hyper.audit.tolerance); absent: no tolerance proof is valid. */
  tolerance?: Tolerance | null;
}

export type ProofVerdict = { ok: true; k: number } | { ok: false; reason: string };

/**
 * Checks a fraud proof with exactly ONE re-executed step. Never throws on a bad proof. A v 1
 * proof (exact rule) is valid only against a CPU-class trainer; a v 2 proof (tolerance rule) only
 * against a trainer whose class is judged with a tolerance, and only under the manifest's.
 */
export function verifyFraudProof(p: AnyFraudProof, ctx: VerifyContext): ProofVerdict {
  const job = ctx.stepper.job,
    H = stepsOf(job);
  const backend = ctx.backend ?? CPU_CLASS;
  const no = (reason: string): ProofVerdict => ({ ok: false, reason });
  try {
    if (p.v !== 1 && p.v !== 2) return no('version');
    if (p.v === 1 && !exactEverywhere(backend)) return no('an exact proof against a class judged with a tolerance');
    if (p.v === 2) {
      if (exactEverywhere(backend)) return no('a tolerance proof against a cpu-class trainer (judged bit for bit)');
      if (!sameClass(p.backend, backend)) return no("not the class the trainer's commitment names");
      if (!ctx.tolerance || !sameTolerance(p.tolerance, ctx.tolerance)) return no("not the manifest's tolerance");
    }
    if (p.runId !== job.runId || p.round !== job.round) return no('other round');
    if (p.trainer !== ctx.trainer || p.root !== ctx.root) return no("not the trainer's commitment");
    if (p.count !== H + 1 || !Number.isSafeInteger(p.k) || p.k < 1 || p.k > H) return no('step out of range');
    if (p.pre.proof.index !== p.k - 1 || p.post.proof.index !== p.k) return no('leaves not adjacent');
    if (p.pre.proof.count !== p.count || p.post.proof.count !== p.count) return no('leaf count');
    if (!verifyInclusion(p.root, leafOf(p.pre.digest), p.pre.proof)) return no('pre leaf not in the commitment');
    if (!verifyInclusion(p.root, leafOf(p.post.digest), p.post.proof)) return no('post leaf not in the commitment');
    if (p.k === 1 && p.pre.digest.weights !== ctx.baseHash) return no("leaf 0 is not the round's weights");
    const d = digestState(p.state);
    if (d.weights !== p.pre.digest.weights || d.opt !== p.pre.digest.opt)
      return no('pre-state does not match leaf k-1');
    if (p.v === 2) {
      const e = digestState(p.postState);
      if (e.weights !== p.post.digest.weights || e.opt !== p.post.digest.opt)
        return no('post-state does not match leaf k');
    }
    const spec = batchSpec(job, p.k - 1);
    if (spec.shard !== p.batch.shard || spec.seed !== p.batch.seed || spec.draw !== p.batch.draw)
      return no('batch spec');
    if (p.v === 1) {
      const [got] = reexecute(ctx.stepper, p.state, p.k - 1, 1);
      if (got === leafOf(p.post.digest)) return no('step re-executes to the committed leaf: no fraud');
      return { ok: true, k: p.k };
    }
    const j = judgeReexecuted(ctx.stepper, p.state, p.k, p.postState, p.tolerance);
    if (j.ok) return no('the step is within the tolerance: no fraud');
    return { ok: true, k: p.k };
  } catch (err) {
    return no(err instanceof Error ? err.message : String(err));
  }
}

/** Two tolerances are the same rule (every field equal). */
export function sameTolerance(a: Tolerance, b: Tolerance): boolean {
  return a.rel === b.rel && a.outliers === b.outliers && a.cap === b.cap;
}

/**
 * Re-executes step k (1-based) on `st` from the committed pre-state and judges the committed
 * post-state with the tolerance rule (tolerance.ts). One step of compute.
 */
export function judgeReexecuted(
  st: Stepper,
  pre: StepState,
  k: number,
  post: StepState,
  tolerance: Tolerance,
): StepJudgement {
  const { job } = st;
  reexecute(st, pre, k - 1, 1);
  const ref = st.state();
  return judgeStep(pre, ref, post, {
    lr: lrAt(job.schedule, job.round * job.innerSteps + k - 1),
    adamw: job.adamw,
    tol: tolerance,
  });
}

/**
 * Spot-check draw: does `validator` audit `trainer` this round? Deterministic from
 * (round seed, validator, trainer), so anyone can recompute who was due to audit whom, and
 * with probability p (53-bit uniform from sha256).
 */
export function spotCheck(seed: string, validator: string, trainer: string, p: number): boolean {
  if (!(p >= 0 && p <= 1)) throw new AuditError(`spot-check probability must be in [0, 1], got ${p}`);
  const h = createHash('sha256').update(`tessera/audit/spot/v1\n${seed}\n${validator}\n${trainer}`).digest();
  const u = Number(h.readBigUInt64BE(0) >> 11n) / 2 ** 53;
  return u < p;
}
