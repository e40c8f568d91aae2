/**
 * Audit by re-execution (issue 6): Merkle proofs, honest audits, fault localisation by
 * bisection for faults at several inner steps of H = 64, fraud proofs verified by a separate
 * peer (fresh kernels and model), and forged proofs rejected. Tiny model, synthetic tokens.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { loadKernels } from '../src/kernels/index.js';
import { GPT } from '../src/model/gpt.js';
import { weightsHash } from '../src/model/checkpoint.js';
import { DEFAULT_ADAMW } from '../src/train/adamw.js';
import { MerkleTree, merkleRoot, verifyInclusion, MerkleError } from '../src/verify/merkle.js';
import {
  Stepper,
  audit,
  bisect,
  commitSteps,
  oracleFor,
  reexecute,
  verifyFraudProof,
  spotCheck,
  leafOf,
  cloneState,
  type AuditJob,
  type FraudProof,
  type StepState,
  type TrainerOracle,
} from '../src/verify/audit.js';
import { decodeFraudProof, encodeFraudProof } from '../src/verify/audit-wire.js';
import type { ModelConfig } from '../src/model/config.js';

const h = (s: string): string => createHash('sha256').update(s).digest('hex');

test('merkle: every proof of trees of 1..9 leaves verifies; any tampering fails', () => {
  for (let n = 1; n <= 9; n++) {
    const leaves = Array.from({ length: n }, (_, i) => h(`leaf ${i}`));
    const t = new MerkleTree(leaves);
    assert.equal(t.root, merkleRoot(leaves));
    for (let i = 0; i < n; i++) {
      const p = t.proof(i);
      assert.ok(verifyInclusion(t.root, leaves[i], p), `n=${n} i=${i}`);
      assert.equal(verifyInclusion(t.root, h('other'), p), false);
      for (let j = 0; j < n; j++)
        if (j !== i)
          assert.equal(verifyInclusion(t.root, leaves[i], { ...p, index: j }), false, `n=${n} i=${i} as ${j}`);
      for (let s = 0; s < p.siblings.length; s++) {
        const sib = [...p.siblings];
        sib[s] = h('x');
        assert.equal(verifyInclusion(t.root, leaves[i], { ...p, siblings: sib }), false);
        assert.equal(
          verifyInclusion(t.root, leaves[i], { ...p, siblings: p.siblings.filter((_, q) => q !== s) }),
          false,
        );
      }
      assert.equal(verifyInclusion(t.root, leaves[i], { ...p, siblings: [...p.siblings, h('extra')] }), false);
      for (let m = 1; m <= 9; m++)
        if (m !== n && i < m) assert.equal(verifyInclusion(t.root, leaves[i], { ...p, count: m }), false);
      assert.equal(verifyInclusion(h('root'), leaves[i], p), false);
    }
  }
  // An inner node is not a leaf, and duplicating the last leaf changes the root.
  const ls = [h('a'), h('b'), h('c')];
  assert.notEqual(merkleRoot(ls), merkleRoot([...ls, ls[2]]));
  assert.throws(() => merkleRoot([]), MerkleError);
  assert.throws(() => merkleRoot(['zz']), MerkleError);
  assert.throws(() => new MerkleTree(ls).proof(3), MerkleError);
});

test('spot-check: deterministic, with the configured probability', () => {
  const seed = h('seed');
  assert.equal(spotCheck(seed, 'v1', 't1', 0.3), spotCheck(seed, 'v1', 't1', 0.3));
  assert.equal(spotCheck(seed, 'v1', 't1', 0), false);
  assert.equal(spotCheck(seed, 'v1', 't1', 1), true);
  let hits = 0;
  for (let i = 0; i < 4000; i++) if (spotCheck(seed, 'v1', `t${i}`, 0.25)) hits++;
  assert.ok(Math.abs(hits / 4000 - 0.25) < 0.03, `rate ${hits / 4000}`);
});

// ---- a tiny model and one trainer's round --------------------------------------------------

const H = 64;
const config: ModelConfig = { vocabSize: 64, ctx: 16, dim: 16, layers: 1, heads: 2 };
const runId = h('run');
const round = 3;

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
  runId,
  round,
  innerSteps: H,
  shards: [
    { shard: 5, tokens: tokens(1, 2000) },
    { shard: 9, tokens: tokens(2, 1500) },
  ],
  B: 2,
  T: 16,
  schedule: { kind: 'cosine', maxLr: 3e-3, minLrFrac: 0.1, warmupSteps: 10, totalSteps: 1000, decayFrac: 0.2 },
  adamw: DEFAULT_ADAMW,
};

/** A fresh peer: its own kernels object and model. */
function peer(threads: number): Stepper {
  return new Stepper(config, loadKernels({ threads, deterministic: true }), job);
}

function startState(): StepState {
  const g = new GPT(config, loadKernels({ threads: 1, deterministic: true }));
  g.init(7);
  // Non-zero moments and step count, as after earlier rounds (AdamW state carries over).
  const m = new Float32Array(g.numParams).map((_, i) => 1e-4 * Math.sin(i));
  const v = new Float32Array(g.numParams).map((_, i) => 1e-6 * (1 + Math.cos(i)));
  return { theta: g.params.slice(), m, v, step: round * H };
}

const start = startState();
const baseHash = weightsHash(start.theta);
const trainerPeer = peer(1);
const honest = commitSteps(trainerPeer, start, { keep: true });

function faulty(k: number): ReturnType<typeof commitSteps> {
  return commitSteps(peer(1), start, {
    keep: true,
    tamper: (step, s) => {
      if (step === k) s.gpt.params[3] += 1e-3;
    },
  });
}

test('determinism: independent re-executions (other kernels object, other thread count) give the same root', () => {
  const v = peer(2);
  const leaves = [leafOf(honest.digests[0]), ...reexecute(v, start, 0, H)];
  assert.equal(new MerkleTree(leaves).root, honest.root);
  assert.deepEqual(leaves, honest.leaves);
});

test('honest trainer passes the audit with no bisection', () => {
  const v = peer(2);
  const r = audit(v, 'trainer', honest.root, baseHash, oracleFor(honest));
  assert.deepEqual(r, { ok: true, steps: H });
});

const ks = [1, 2, 17, 33, 63, 64, 5, 28, 47];
const proofs = new Map<number, { proof: FraudProof; root: string }>();

test('faults at step k of H=64 are located exactly, with <= 7 re-executed steps to locate', () => {
  const rows: unknown[] = [];
  for (const k of ks) {
    const c = faulty(k);
    assert.notEqual(c.root, honest.root);
    const v = peer(2);
    const r = audit(v, 'trainer', c.root, baseHash, oracleFor(c));
    assert.equal(r.ok, false);
    if (r.ok || r.reason !== 'fraud') throw new Error('expected fraud');
    assert.equal(r.bisect.k, k);
    assert.equal(r.proof.k, k);
    assert.ok(r.bisect.queries <= 7, `queries ${r.bisect.queries}`);
    assert.ok(r.locateSteps <= 7, `steps ${r.locateSteps}`);
    assert.equal(r.locateSteps, 1);
    proofs.set(k, { proof: r.proof, root: c.root });
    rows.push({ k, located: r.bisect.k, queries: r.bisect.queries, locateSteps: r.locateSteps });
  }
  process.stderr.write(JSON.stringify(rows) + '\n');
});

test('fraud proofs verify on another peer (fresh kernels, fresh model), through the wire form', () => {
  for (const k of ks) {
    const { proof, root } = proofs.get(k)!;
    const other = peer(1);
    const wire = encodeFraudProof(proof);
    const back = decodeFraudProof(wire);
    const r = verifyFraudProof(back, { stepper: other, root, trainer: 'trainer', baseHash });
    assert.deepEqual(r, { ok: true, k });
    assert.equal(other.executed, 1, 'exactly one step re-executed');
  }
});

test('forged proofs are rejected', () => {
  const { proof, root } = proofs.get(17)!;
  const ctx = (): Parameters<typeof verifyFraudProof>[1] => ({ stepper: peer(1), root, trainer: 'trainer', baseHash });
  const reject = (p: FraudProof, c = ctx()): string => {
    const r = verifyFraudProof(p, c);
    assert.equal(r.ok, false);
    return r.ok ? '' : r.reason;
  };
  // Honest trainer falsely accused: a proof built from its real trace.
  const hp: FraudProof = {
    ...proof,
    root: honest.root,
    k: 17,
    pre: { digest: honest.digests[16], proof: honest.tree.proof(16) },
    post: { digest: honest.digests[17], proof: honest.tree.proof(17) },
    state: cloneState(honest.states![16]),
  };
  assert.match(reject(hp, { ...ctx(), root: honest.root }), /no fraud/);
  // Wrong leaf: a made-up post digest.
  assert.match(
    reject({ ...proof, post: { ...proof.post, digest: { ...proof.post.digest, opt: h('x') } } }),
    /post leaf/,
  );
  // Wrong inclusion path.
  const sib = [...proof.pre.proof.siblings];
  sib[0] = h('y');
  assert.match(reject({ ...proof, pre: { ...proof.pre, proof: { ...proof.pre.proof, siblings: sib } } }), /pre leaf/);
  // Leaves not adjacent / wrong index.
  assert.match(reject({ ...proof, k: 18 }), /adjacent/);
  // Tampered pre-state.
  const st = cloneState(proof.state);
  st.theta[0] += 1e-6;
  assert.match(reject({ ...proof, state: st }), /pre-state/);
  const st2 = cloneState(proof.state);
  st2.step += 1;
  assert.match(reject({ ...proof, state: st2 }), /pre-state/);
  // Wrong batch, wrong trainer, wrong root.
  assert.match(reject({ ...proof, batch: { ...proof.batch, draw: proof.batch.draw + 1 } }), /batch/);
  assert.match(reject(proof, { ...ctx(), trainer: 'someone else' }), /commitment/);
  assert.match(reject(proof, { ...ctx(), root: honest.root }), /commitment/);
  // Wire: size cap and malformed input.
  assert.throws(() => decodeFraudProof(encodeFraudProof(proof), 100), /cap/);
  assert.throws(() => decodeFraudProof(new TextEncoder().encode('{"v":1}')), /malformed/);
  assert.throws(() => decodeFraudProof(new TextEncoder().encode('not json')), /not JSON/);
});

test('a trainer whose leaf 0 is not the round weights fails at the anchor; lying answers are caught', () => {
  const other = cloneState(start);
  other.theta[0] += 1;
  const c = commitSteps(peer(1), other, { keep: true });
  assert.deepEqual(audit(peer(2), 'trainer', c.root, baseHash, oracleFor(c)), {
    ok: false,
    reason: 'bad-anchor',
    steps: 0,
  });
  // A trainer answering bisection queries from a trace other than the one it committed.
  const f = faulty(33);
  const liar: TrainerOracle = { ...oracleFor(f), reveal: (i) => oracleFor(honest).reveal(i) };
  assert.throws(
    () =>
      bisect(
        liar,
        f.root,
        honest.leaves.map((l, i) => (i >= 40 ? h('z') : l)),
      ),
    /does not verify/,
  );
});
