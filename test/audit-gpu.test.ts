/**
 * Audits when trainers use GPUs (src/verify/backend.ts, tolerance.ts, audit-tolerance.ts), with a
 * real WebGPU trainer (SwiftShader here; same rule as test/webgpu-kernels.test.ts: under CI=true
 * a missing adapter fails, locally only a missing chromium skips):
 *
 * - an honest GPU trainer passes both audits: the CPU validator's step-by-step tolerance audit,
 *   and a same-class validator's bit-for-bit re-execution on its own device;
 * - a GPU trainer that perturbs its update beyond the tolerance (spread over all weights; one
 *   weight by a few learning rates; its second moment shrunk to zero on a coordinate) is caught
 *   at that step with a v2 fraud proof that another peer verifies through the wire form; one that
 *   stays inside the tolerance passes (that is what a claimed class buys, and all it buys);
 * - lying about the class buys nothing: a GPU trainer claiming the CPU class is convicted by the
 *   exact rule at step 1; a CPU trainer claiming the GPU's class is found irreproducible by the
 *   same-class validator and gets no more slack than the tolerance from the others; proofs of
 *   the wrong kind, under another tolerance or against an honest step are rejected.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { loadKernels } from '../src/kernels/index.js';
import { WebGpuDevice } from '../src/kernels/webgpu/device.js';
import { SWIFTSHADER_ICD_PATHS } from '../src/kernels/webgpu/node-icd.js';
import { webgpuClass } from '../src/kernels/webgpu/backend-class.js';
import { WebGpuGPT } from '../src/model/gpt-webgpu.js';
import { GPT } from '../src/model/gpt.js';
import { weightsHash } from '../src/model/checkpoint.js';
import type { ModelConfig } from '../src/model/config.js';
import { DEFAULT_ADAMW } from '../src/train/adamw.js';
import { lrAt } from '../src/train/schedule.js';
import { WebGpuTrainModel } from '../src/train/device-model.js';
import {
  Stepper,
  audit,
  cloneState,
  commitSteps,
  oracleFor,
  verifyFraudProof,
  type AnyFraudProof,
  type AuditJob,
  type StepState,
  type TrainerOracle,
  type ToleranceFraudProof,
  type VerifyContext,
} from '../src/verify/audit.js';
import {
  ModelStepper,
  auditSameClass,
  auditTolerance,
  commitStepsOn,
  deviceOracle,
  type DeviceCommitment,
  type ToleranceRule,
} from '../src/verify/audit-tolerance.js';
import { decodeFraudProof, encodeFraudProof } from '../src/verify/audit-wire.js';
import { CPU_CLASS, type BackendClass } from '../src/verify/backend.js';
import { DEFAULT_TOLERANCE } from '../src/verify/tolerance.js';

const CI = process.env.CI === 'true';
const icd = process.env.VK_ICD_FILENAMES ?? SWIFTSHADER_ICD_PATHS.find((p) => existsSync(p)) ?? null;
if (icd) process.env.VK_ICD_FILENAMES = icd; // before Dawn loads
const skip = !icd && !CI ? 'chromium is not installed (no SwiftShader Vulkan ICD)' : false;

const h = (s: string): string => createHash('sha256').update(s).digest('hex');
const H = 4;
const config: ModelConfig = { vocabSize: 64, ctx: 16, dim: 16, layers: 1, heads: 2 };
const round = 2;

function tokens(seed: number, n: number): Uint16Array {
  const t = new Uint16Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    t[i] = (x >>> 16) % config.vocabSize;
  }
  return t;
}

const job: AuditJob = {
  runId: h('gpu-run'),
  round,
  innerSteps: H,
  shards: [{ shard: 1, tokens: tokens(3, 3000) }],
  B: 2,
  T: 16,
  schedule: { kind: 'cosine', maxLr: 3e-3, minLrFrac: 0.1, warmupSteps: 2, totalSteps: 1000, decayFrac: 0.2 },
  adamw: DEFAULT_ADAMW,
};
/** The learning rate of inner step k (1-based), as the trainer and the validators take it. */
const lrOf = (k: number): number => lrAt(job.schedule, round * H + k - 1);
const cpuPeer = (): Stepper => new Stepper(config, loadKernels({ threads: 1, deterministic: true }), job);

function startState(): StepState {
  const g = new GPT(config, loadKernels({ threads: 1, deterministic: true }));
  g.init(7);
  const m = new Float32Array(g.numParams).map((_, i) => 1e-4 * Math.sin(i));
  const v = new Float32Array(g.numParams).map((_, i) => 1e-6 * (1 + Math.cos(i)));
  return { theta: g.params.slice(), m, v, step: round * H };
}
const start = startState();
const baseHash = weightsHash(start.theta);
const rule = (backend: BackendClass): ToleranceRule => ({ tolerance: DEFAULT_TOLERANCE, backend });

async function gpuModel(): Promise<{ dev: WebGpuDevice; model: WebGpuTrainModel }> {
  const dev = await WebGpuDevice.create({ adapter: 'swiftshader' });
  return { dev, model: new WebGpuTrainModel(dev, new WebGpuGPT(dev, config, DEFAULT_ADAMW)) };
}

/** ‖a − b‖₂ */
function dist(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return Math.sqrt(s);
}

test(
  'audits of GPU trainers: honest passes, beyond the tolerance is fraud, a lie about the class buys nothing',
  {
    skip,
    timeout: 600_000,
  },
  async (t) => {
    if (!icd) throw new Error('CI=true but no SwiftShader Vulkan ICD: install chromium (.ci/run does)');
    const trainer = await gpuModel();
    const validator = await gpuModel(); // a second device of the same class
    try {
      const cls = webgpuClass(trainer.dev.adapterInfo, { attention: 'flash' });
      const gpu = new ModelStepper(trainer.model, job);
      const honest = await commitStepsOn(gpu, start);

      // 1. Honest: within the tolerance on the CPU, bit for bit on the same class.
      const v1 = await auditTolerance(cpuPeer(), 'gpu', honest.root, baseHash, deviceOracle(honest), rule(cls));
      assert.deepEqual(v1, { ok: true, steps: H });
      const same = await auditSameClass(
        new ModelStepper(validator.model, job),
        cpuPeer(),
        'gpu',
        honest.root,
        baseHash,
        deviceOracle(honest),
        rule(cls),
      );
      assert.deepEqual(same, { ok: true, steps: H }, 'same class: the same bits');
      // How far the honest GPU step is from the CPU's, in units of the tolerance (for the record).
      const ref = cpuPeer();
      ref.load(honest.states[0]);
      ref.stepAt(0);
      const d0 = dist(honest.states[1].theta, ref.state().theta),
        u0 = dist(ref.state().theta, start.theta);
      t.diagnostic(
        `honest GPU step 1: ‖θ_gpu − θ_cpu‖ = ${d0.toExponential(2)}, the step's ‖Δθ‖ = ${u0.toExponential(2)}`,
      );
      assert.ok(d0 < DEFAULT_TOLERANCE.rel * u0, 'an honest GPU step is well inside the tolerance');

      // 2. Cheaters on the GPU, caught at their step with a proof any CPU peer verifies.
      const cheat = async (k: number, edit: (s: StepState, pre: StepState) => void): Promise<DeviceCommitment> =>
        commitStepsOn(new ModelStepper(trainer.model, job), start, {
          tamper: (step, s) => {
            if (step !== k) return;
            const e = cloneState(s);
            edit(e, honest.states[k - 1]);
            return e;
          },
        });
      // Any claimed class gets the same rule: an exotic one that no validator holds.
      assert.equal(cls.device, 'webgpu');
      const claimed: BackendClass = {
        ...(cls as BackendClass & { device: 'webgpu' }),
        vendor: 'nvidia',
        adapter: 'NVIDIA H100 80GB HBM3',
      };
      const cases: [string, number, (s: StepState, pre: StepState) => void][] = [
        [
          'spread over every weight, 10× the L2 budget',
          2,
          (s, pre) => {
            const u = dist(s.theta, pre.theta);
            const e = (10 * DEFAULT_TOLERANCE.rel * u) / Math.sqrt(s.theta.length);
            for (let i = 0; i < s.theta.length; i++) s.theta[i] += i % 2 ? e : -e;
          },
        ],
        ['one weight moved by 5 learning rates', 3, (s) => void (s.theta[100] += 5 * lrOf(3))],
        [
          'the second moment of a coordinate shrunk to zero (a later step would move it by lr·m/ε)',
          4,
          (s) => {
            let j = 0;
            for (let i = 1; i < s.v.length; i++) if (s.v[i] < s.v[j] && s.m[i] !== 0) j = i;
            s.v[j] = 0;
          },
        ],
      ];
      for (const [what, k, edit] of cases) {
        const c = await cheat(k, edit);
        const r = await auditTolerance(cpuPeer(), 'gpu', c.root, baseHash, deviceOracle(c), rule(claimed));
        if (r.ok || r.reason !== 'fraud') throw new Error(`${what}: not caught (${JSON.stringify(r)})`);
        assert.equal(r.proof.k, k, what);
        t.diagnostic(`${what}: caught at step ${k} (${r.judgement.reason})`);
        const back = decodeFraudProof(encodeFraudProof(r.proof));
        const other = cpuPeer();
        assert.deepEqual(
          verifyFraudProof(back, {
            stepper: other,
            root: c.root,
            trainer: 'gpu',
            baseHash,
            backend: claimed,
            tolerance: DEFAULT_TOLERANCE,
          }),
          { ok: true, k },
          `${what}: another peer verifies the proof`,
        );
        assert.equal(other.executed, 1, 'with one re-executed step');
        // The same-class validator finds it too (bit mismatch, then the tolerance): the same proof.
        const sc = await auditSameClass(
          new ModelStepper(validator.model, job),
          cpuPeer(),
          'gpu',
          c.root,
          baseHash,
          deviceOracle(c),
          rule(cls),
        );
        assert.ok(!sc.ok && sc.reason === 'fraud' && sc.proof.k === k, `${what}: same-class validator`);
      }

      // 3. Inside the tolerance: not fraud. This is what a class buys: rel of a step, per step.
      const small = await cheat(2, (s, pre) => {
        const u = dist(s.theta, pre.theta);
        const e = (0.3 * DEFAULT_TOLERANCE.rel * u) / Math.sqrt(s.theta.length);
        for (let i = 0; i < s.theta.length; i++) s.theta[i] += e;
      });
      const vs = await auditTolerance(cpuPeer(), 'gpu', small.root, baseHash, deviceOracle(small), rule(claimed));
      assert.deepEqual(vs, { ok: true, steps: H }, 'a perturbation inside the tolerance passes the CPU audit');

      // 4. Lies about the class.
      // (a) A GPU trainer that claims the CPU class meets the exact rule: fraud at step 1.
      const exactOracle: TrainerOracle = {
        reveal: deviceOracle(honest).reveal,
        state: (i) => cloneState(honest.states[i]),
      };
      const ex = audit(cpuPeer(), 'gpu', honest.root, baseHash, exactOracle);
      if (ex.ok || ex.reason !== 'fraud') throw new Error('a GPU trainer claiming the cpu class was not convicted');
      assert.equal(ex.proof.k, 1);
      const exCtx = { root: honest.root, trainer: 'gpu', baseHash };
      assert.deepEqual(verifyFraudProof(ex.proof, { ...exCtx, stepper: cpuPeer(), backend: CPU_CLASS }), {
        ok: true,
        k: 1,
      });
      // ...and the same exact proof is no proof against the class it really has (judged with the tolerance).
      assert.match(reason(verifyFraudProof(ex.proof, { ...exCtx, stepper: cpuPeer(), backend: cls })), /exact proof/);
      // (b) A CPU trainer claiming the GPU's class: the same-class validator cannot reproduce it.
      const cpuTrainer = commitSteps(cpuPeer(), start, { keep: true });
      const ir = await auditSameClass(
        new ModelStepper(validator.model, job),
        cpuPeer(),
        'liar',
        cpuTrainer.root,
        baseHash,
        oracleFor(cpuTrainer),
        rule(cls),
      );
      assert.ok(!ir.ok && ir.reason === 'irreproducible' && ir.k === 1, `irreproducible: ${JSON.stringify(ir)}`);
      // (c) Proofs of the wrong kind or rule are refused; an honest step is no fraud.
      const bad = await cheat(2, (s) => void (s.theta[7] += 10 * lrOf(2)));
      const caught = await auditTolerance(cpuPeer(), 'gpu', bad.root, baseHash, deviceOracle(bad), rule(cls));
      if (caught.ok || caught.reason !== 'fraud') throw new Error('not caught');
      const ctx: Omit<VerifyContext, 'stepper'> = {
        root: bad.root,
        trainer: 'gpu',
        baseHash,
        backend: cls,
        tolerance: DEFAULT_TOLERANCE,
      };
      const p = caught.proof;
      assert.deepEqual(verifyFraudProof(p, { ...ctx, stepper: cpuPeer() }), { ok: true, k: 2 });
      const rej = (q: AnyFraudProof, c: Partial<typeof ctx> = {}): string =>
        reason(verifyFraudProof(q, { ...ctx, ...c, stepper: cpuPeer() }));
      assert.match(rej(p, { backend: CPU_CLASS }), /cpu-class trainer/);
      assert.match(rej(p, { tolerance: { ...DEFAULT_TOLERANCE, rel: 0.05 } }), /manifest's tolerance/);
      assert.match(rej(p, { tolerance: null }), /manifest's tolerance/);
      assert.match(rej({ ...p, backend: claimed }), /class the trainer's commitment names/);
      const post = cloneState(p.postState);
      post.theta[7] -= 1e-9;
      assert.match(rej({ ...p, postState: post }), /post-state does not match/);
      // An honest trainer accused with its own states: within the tolerance, no fraud.
      const accuse: ToleranceFraudProof = {
        ...p,
        root: honest.root,
        pre: deviceOracle(honest).reveal(1),
        post: deviceOracle(honest).reveal(2),
        state: cloneState(honest.states[1]),
        postState: cloneState(honest.states[2]),
      };
      assert.match(rej(accuse, { root: honest.root }), /within the tolerance/);
    } finally {
      trainer.dev.destroy();
      validator.dev.destroy();
    }
  },
);

function reason(v: { ok: true; k: number } | { ok: false; reason: string }): string {
  assert.equal(v.ok, false, 'expected a rejection');
  return v.ok ? '' : v.reason;
}
