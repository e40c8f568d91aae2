/**
 * The one inner step (src/train/inner-step.ts) and the round's batch derivation
 * (src/swarm/round-batches.ts): the step equals the hand-written sequence bitwise, micro-batches
 * accumulate in the documented order, a non-finite loss leaves the weights and the optimizer
 * untouched, and a trainer's sequential draws are exactly the batches an auditor derives.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { loadKernels } from '../src/kernels/index.js';
import { GPT } from '../src/model/gpt.js';
import { weightsHash } from '../src/model/checkpoint.js';
import { AdamW, DEFAULT_ADAMW } from '../src/train/adamw.js';
import { lrAt, type Schedule } from '../src/train/schedule.js';
import { innerStep } from '../src/train/inner-step.js';
import { BatchSampler, type Batch } from '../src/data/batches.js';
import { roundSeed } from '../src/swarm/assign.js';
import { sha256HexNode } from '../src/util/hash-node.js';
import { firstBatches, roundBatches, trainerSeed, validatorSeeds } from '../src/swarm/round-batches.js';
import { NonFiniteLossError, TesseraError } from '../src/util/errors.js';
import type { ModelConfig } from '../src/model/config.js';

const cfg: ModelConfig = { vocabSize: 31, ctx: 8, dim: 12, layers: 1, heads: 2 };
const B = 2,
  T = 8;
const kernels = loadKernels({ threads: 1, deterministic: true });
const schedule: Schedule = {
  kind: 'cosine',
  maxLr: 3e-3,
  minLrFrac: 0.1,
  warmupSteps: 2,
  totalSteps: 20,
  decayFrac: 0.2,
};
const runId = createHash('sha256').update('inner-step').digest('hex');

function tokens(seed: number, n: number): Uint16Array {
  const t = new Uint16Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    t[i] = (x >>> 16) % cfg.vocabSize;
  }
  return t;
}

function model(): { gpt: GPT; opt: AdamW } {
  const gpt = new GPT(cfg, kernels);
  gpt.init(5);
  return { gpt, opt: new AdamW(cfg, DEFAULT_ADAMW, kernels) };
}

const optHex = (o: AdamW): string => weightsHash(o.m) + weightsHash(o.v) + o.step;

test('innerStep equals zeroGrad, forwardBackward, lrAt, update, bitwise; micro-batches scale by 1/n', () => {
  const s = new BatchSampler(tokens(1, 500), B, T, 3n);
  const bs: Batch[] = Array.from({ length: 4 }, () => s.next());
  const a = model(),
    b = model();
  for (let i = 0; i < 3; i++) {
    const r = innerStep(a.gpt, a.opt, { batches: [bs[i]], B, T, schedule, step: 7 + i });
    b.gpt.zeroGrad();
    const loss = b.gpt.forwardBackward(bs[i].inputs, bs[i].targets, B, T);
    const gradNorm = b.opt.update(b.gpt.params, b.gpt.grads, lrAt(schedule, 7 + i));
    assert.deepEqual(r, { loss, lr: lrAt(schedule, 7 + i), gradNorm });
  }
  assert.equal(weightsHash(a.gpt.params), weightsHash(b.gpt.params));
  assert.equal(optHex(a.opt), optHex(b.opt));
  const r = innerStep(a.gpt, a.opt, { batches: bs.slice(0, 3), B, T, schedule, step: 10 });
  b.gpt.zeroGrad();
  let loss = 0;
  for (const mb of bs.slice(0, 3)) loss += b.gpt.forwardBackward(mb.inputs, mb.targets, B, T, 1 / 3) * (1 / 3);
  b.opt.update(b.gpt.params, b.gpt.grads, lrAt(schedule, 10));
  assert.equal(r.loss, loss);
  assert.equal(weightsHash(a.gpt.params), weightsHash(b.gpt.params));
});

test('a non-finite loss throws NonFiniteLossError before the optimizer touches anything', () => {
  const { gpt, opt } = model();
  const b = new BatchSampler(tokens(2, 500), B, T, 1n).next();
  innerStep(gpt, opt, { batches: [b], B, T, schedule, step: 0 });
  gpt.params.fill(NaN, 0, 50);
  const before = weightsHash(gpt.params),
    moments = optHex(opt);
  assert.throws(
    () => innerStep(gpt, opt, { batches: [b], B, T, schedule, step: 1 }),
    (e: unknown) =>
      e instanceof NonFiniteLossError &&
      e instanceof TesseraError &&
      e.code === 'NON_FINITE_LOSS' &&
      Number.isNaN(e.loss) &&
      e.step === 1 &&
      /loss is NaN at step 1; stopping before the weights are damaged/.test(e.message),
  );
  assert.equal(weightsHash(gpt.params), before);
  assert.equal(optHex(opt), moments);
});

test('roundBatches: sequential draws are the batches the specs name; seeds follow assignment positions', () => {
  const shards = [
    { shard: 4, tokens: tokens(3, 300) },
    { shard: 8, tokens: tokens(4, T + 1) },
    { shard: 2, tokens: null },
    { shard: 6, tokens: tokens(5, 200) },
  ];
  const base = BigInt('0x' + roundSeed(runId, 3).slice(0, 12));
  assert.equal(trainerSeed(runId, 3), base);
  const rb = roundBatches(runId, 3, shards, B, T);
  assert.deepEqual(
    rb.sources.map((u) => [u.shard, u.seed]),
    [
      [4, base],
      [6, base + 3n],
    ],
  );
  const samplers = rb.sources.map((u) => new BatchSampler(u.tokens, B, T, u.seed));
  const out: Batch = { inputs: new Int32Array(B * T), targets: new Int32Array(B * T) };
  for (let i = 0; i < 5; i++) {
    assert.ok(rb.next(out));
    const spec = rb.spec(i)!;
    assert.deepEqual(spec, { shard: i % 2 ? 6 : 4, seed: (base + (i % 2 ? 3n : 0n)).toString(), draw: i >> 1 });
    assert.deepEqual(rb.batch(spec), out);
    assert.deepEqual(samplers[i % 2].next(), out);
  }
  assert.equal(rb.batch({ shard: 8, seed: (base + 1n).toString(), draw: 0 }), null);
  const none = roundBatches(runId, 3, [{ shard: 1, tokens: tokens(6, T) }], B, T);
  assert.equal(none.spec(0), null);
  assert.equal(none.next(out), false);
});

test("validatorSeeds and firstBatches: the validator's assigned and random batches", () => {
  const beacon = sha256HexNode('decided set of round 9');
  const seed = sha256HexNode(`tessera/eval-seed/v1\n${runId}\n9\n${beacon}`);
  const v = BigInt('0x' + seed.slice(0, 12));
  assert.deepEqual(validatorSeeds(runId, 9, 7, beacon), {
    assigned: v + 1n,
    random: v + 2n,
    randomShard: Number(v % 7n),
    audit: seed,
  });
  assert.throws(() => validatorSeeds(runId, 9, 0, beacon), TesseraError);
  assert.throws(() => validatorSeeds(runId, 9, 7, 'not a digest'), TesseraError);
  const d = tokens(7, 400),
    s = new BatchSampler(d, B, T, v + 1n);
  assert.deepEqual(firstBatches(d, v + 1n, B, T, 2), [s.next(), s.next()]);
  assert.deepEqual(firstBatches(d.subarray(0, T + 1), v + 1n, B, T, 2), []);
  assert.deepEqual(firstBatches(null, v + 1n, B, T, 2), []);
});

test('evaluation seeds: unknown before the set closes, equal for every validator after', () => {
  // What a trainer could compute before submitting (run id and round) does not fix the seeds:
  // another decided set of the same round gives other seeds, other batches and another audit draw.
  const a = validatorSeeds(runId, 9, 64, sha256HexNode('set A'));
  const b = validatorSeeds(runId, 9, 64, sha256HexNode('set B'));
  assert.notEqual(a.assigned, b.assigned);
  assert.notEqual(a.audit, b.audit);
  // The old seed (run id and round alone) is none of them.
  const old = BigInt('0x' + roundSeed(runId, 9).slice(12, 24));
  assert.ok(![a.assigned, b.assigned].includes(old + 1n));
  // Two validators that saw the same decided set draw the same batches.
  assert.deepEqual(validatorSeeds(runId, 9, 64, sha256HexNode('set A')), a);
  const d = tokens(7, 4000);
  assert.notDeepEqual(firstBatches(d, a.assigned, B, T, 2), firstBatches(d, b.assigned, B, T, 2));
});
