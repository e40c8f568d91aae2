/**
 * Audits of trainers whose backend class is judged with a tolerance (GPUs: backend.ts), the rule
 * being the run manifest's (tolerance.ts). Three pieces, over the exact protocol of audit.ts:
 *
 * - `auditTolerance`: a validator of another class (the usual case: the CPU) re-executes every
 *   step on the CPU deterministic kernels from the trainer's own committed pre-state (fetched:
 *   its floats are not the CPU's) and judges the trainer's committed post-state. The first step
 *   over the tolerance becomes a v 2 fraud proof: pre-state, post-state, their leaves with
 *   inclusion proofs, the rule, so any peer re-checks it with one step (audit.ts
 *   verifyFraudProof). Cost: H steps and H state transfers per audited round.
 * - `auditSameClass`: a validator of the trainer's own class re-executes the round on its device
 *   from the committed start and compares Merkle roots, bit for bit, with no state transfer for an
 *   honest trainer. On a mismatch it bisects (audit.ts `bisect`, O(log H) reveals) to the first
 *   differing step k, fetches states k−1 and k and judges step k on the CPU with the tolerance:
 *   a proof if it breaks it; otherwise the finding 'irreproducible' (the steps do not reproduce
 *   on the class the trainer claims: a lie about the class, or a class that is not
 *   deterministic), which a peer of another class cannot re-check, so it is recorded against the
 *   trainer locally (a failed audit, a zero score that round) and never published as fraud.
 * - `commitStepsOn` and `ModelStepper`: a trainer's round on any device (TrainModel), as
 *   peer/training.ts runs it, for tests and benchmarks; and a device-side re-executor.
 */
import type { TrainModel } from '../train/device-model.js';
import { innerStepOn } from '../train/inner-step.js';
import type { RoundBatches } from '../swarm/round-batches.js';
import { NonFiniteLossError } from '../util/errors.js';
import { MerkleTree } from './merkle.js';
import {
  AuditError,
  batchAt,
  batchSpec,
  batchesOf,
  bisect,
  checkedDigest,
  checkedReveal,
  cloneState,
  digestState,
  judgeReexecuted,
  leafOf,
  stepsOf,
  type AuditJob,
  type BisectResult,
  type Reveal,
  type StateDigest,
  type Stepper,
  type StepState,
  type ToleranceFraudProof,
} from './audit.js';
import type { BackendClass } from './backend.js';
import type { StepJudgement, Tolerance } from './tolerance.js';

/** Re-executes inner steps on a device (asynchronously): the same-class validator's, or a trainer's. */
export interface DeviceRunner {
  readonly job: AuditJob;
  readonly executed: number;
  load(s: StepState): Promise<void>;
  state(): Promise<StepState>;
  stepAt(i: number): Promise<void>;
}

/** A trainer answering an audit: leaf reveals from its trace, its states (fetched: async). */
export interface StateOracle {
  reveal(i: number): Reveal;
  state(i: number): StepState | Promise<StepState>;
}

/** The rule a trainer of a tolerance-judged class is held to: the manifest's tolerance, its claimed class. */
export interface ToleranceRule {
  tolerance: Tolerance;
  backend: BackendClass;
}

export type ToleranceVerdict =
  | { ok: true; steps: number }
  | { ok: false; reason: 'bad-anchor'; steps: number }
  | {
      ok: false;
      reason: 'fraud';
      proof: ToleranceFraudProof;
      judgement: StepJudgement;
      steps: number;
      bisect?: BisectResult;
    }
  | { ok: false; reason: 'irreproducible'; k: number; judgement: StepJudgement; steps: number; bisect: BisectResult };

function proofAt(
  st: Stepper,
  trainer: string,
  root: string,
  k: number,
  pre: { reveal: Reveal; state: StepState },
  post: { reveal: Reveal; state: StepState },
  rule: ToleranceRule,
): ToleranceFraudProof {
  const { job } = st;
  return {
    v: 2,
    runId: job.runId,
    round: job.round,
    trainer,
    root,
    count: stepsOf(job) + 1,
    k,
    pre: pre.reveal,
    post: post.reveal,
    batch: batchSpec(job, k - 1),
    state: pre.state,
    postState: post.state,
    tolerance: rule.tolerance,
    backend: rule.backend,
  };
}

/**
 * A validator of another class (the CPU stepper `st`, deterministic kernels): judges each of the
 * trainer's H committed steps from its committed pre-state, with the tolerance.
 */
export async function auditTolerance(
  st: Stepper,
  trainer: string,
  root: string,
  baseHash: string,
  o: StateOracle,
  rule: ToleranceRule,
): Promise<ToleranceVerdict> {
  const H = stepsOf(st.job),
    count = H + 1,
    began = st.executed;
  const r0 = checkedReveal(o, root, count, 0);
  if (r0.digest.weights !== baseHash) return { ok: false, reason: 'bad-anchor', steps: 0 };
  let pre = { reveal: r0, state: checkedDigest(await o.state(0), r0.digest, 0) };
  for (let k = 1; k <= H; k++) {
    const rk = checkedReveal(o, root, count, k);
    const post = { reveal: rk, state: checkedDigest(await o.state(k), rk.digest, k) };
    const judgement = judgeReexecuted(st, pre.state, k, post.state, rule.tolerance);
    if (!judgement.ok)
      return {
        ok: false,
        reason: 'fraud',
        proof: proofAt(st, trainer, root, k, pre, post, rule),
        judgement,
        steps: st.executed - began,
      };
    pre = post;
  }
  return { ok: true, steps: st.executed - began };
}

/**
 * A validator of the trainer's own class: `dev` re-executes on that device, bit for bit; `cpu`
 * (deterministic kernels) judges the first differing step with the tolerance.
 */
export async function auditSameClass(
  dev: DeviceRunner,
  cpu: Stepper,
  trainer: string,
  root: string,
  baseHash: string,
  o: StateOracle,
  rule: ToleranceRule,
): Promise<ToleranceVerdict> {
  const H = stepsOf(dev.job),
    count = H + 1,
    began = dev.executed + cpu.executed;
  const r0 = checkedReveal(o, root, count, 0);
  if (r0.digest.weights !== baseHash) return { ok: false, reason: 'bad-anchor', steps: 0 };
  await dev.load(checkedDigest(await o.state(0), r0.digest, 0));
  const reference = [leafOf(r0.digest)];
  for (let i = 0; i < H; i++) {
    await dev.stepAt(i);
    reference.push(leafOf(digestState(await dev.state())));
  }
  if (new MerkleTree(reference).root === root) return { ok: true, steps: dev.executed + cpu.executed - began };
  const b = bisect(o, root, reference);
  const rp = checkedReveal(o, root, count, b.k - 1),
    rq = checkedReveal(o, root, count, b.k);
  const pre = { reveal: rp, state: checkedDigest(await o.state(b.k - 1), rp.digest, b.k - 1) };
  const post = { reveal: rq, state: checkedDigest(await o.state(b.k), rq.digest, b.k) };
  const judgement = judgeReexecuted(cpu, pre.state, b.k, post.state, rule.tolerance);
  const steps = dev.executed + cpu.executed - began;
  if (judgement.ok) return { ok: false, reason: 'irreproducible', k: b.k, judgement, steps, bisect: b };
  const proof = proofAt(cpu, trainer, root, b.k, pre, post, rule);
  return { ok: false, reason: 'fraud', proof, judgement, steps, bisect: b };
}

/** Inner steps on any device's model (src/train/device-model.ts), as a node's training job runs them. */
export class ModelStepper implements DeviceRunner {
  executed = 0;
  private readonly batches: RoundBatches;
  constructor(
    readonly model: TrainModel,
    readonly job: AuditJob,
  ) {
    this.batches = batchesOf(job);
  }

  async load(s: StepState): Promise<void> {
    const n = this.model.numParams;
    if (s.theta.length !== n || s.m.length !== n || s.v.length !== n)
      throw new AuditError(`state size does not match the model (${n} parameters)`);
    if (!Number.isSafeInteger(s.step) || s.step < 0) throw new AuditError(`bad optimizer step ${s.step}`);
    await this.model.exclusive(async () => {
      await this.model.setParams(s.theta);
      await this.model.setOptimizerState({ m: s.m, v: s.v, step: s.step });
    });
  }

  state(): Promise<StepState> {
    return this.model.exclusive(async () => {
      const theta = await this.model.getParams();
      const o = await this.model.optimizerState();
      return { theta, m: o.m, v: o.v, step: o.step };
    });
  }

  /** Inner step i (0-based) of the job: its batch, its learning rate, the one inner step. */
  async stepAt(i: number): Promise<void> {
    const { job } = this;
    const b = batchAt(this.batches, i);
    const step = job.round * job.innerSteps + i;
    try {
      await this.model.exclusive(() =>
        innerStepOn(this.model, { batches: [b], B: job.B, T: job.T, schedule: job.schedule, step }),
      );
    } catch (err) {
      if (!(err instanceof NonFiniteLossError)) throw err;
      throw new AuditError(`inner step ${i + 1}: loss is ${err.loss}`, { cause: err });
    }
    this.executed++;
  }
}

export interface DeviceCommitment {
  root: string;
  digests: StateDigest[];
  leaves: string[];
  tree: MerkleTree;
  /** States 0..H (the trainer's store for answering audits). */
  states: StepState[];
}

/**
 * A trainer's round on a device, committing to every step's state (as peer/training.ts does for
 * a GPU trainer). `tamper` (fault injection) may return a changed state after step k, from
 * which the trainer then continues.
 */
export async function commitStepsOn(
  dev: DeviceRunner,
  start: StepState,
  opts: { tamper?: (k: number, s: StepState) => StepState | void } = {},
): Promise<DeviceCommitment> {
  const H = stepsOf(dev.job);
  await dev.load(start);
  const states = [cloneState(start)];
  for (let i = 0; i < H; i++) {
    await dev.stepAt(i);
    let s = await dev.state();
    const t = opts.tamper?.(i + 1, s);
    if (t) {
      s = t;
      await dev.load(s);
    }
    states.push(s);
  }
  const digests = states.map(digestState);
  const leaves = digests.map(leafOf);
  const tree = new MerkleTree(leaves);
  return { root: tree.root, digests, leaves, tree, states };
}

/** A trainer answering from its device commitment (honest or faulty: it answers from its own trace). */
export function deviceOracle(c: DeviceCommitment): StateOracle {
  return {
    reveal: (i) => ({ digest: c.digests[i], proof: c.tree.proof(i) }),
    state: (i) => cloneState(c.states[i]),
  };
}
