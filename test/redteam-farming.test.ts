/**
 * Red team (issue 15, "validator scores can be farmed"): a trainer that knows which batches a
 * validator will evaluate it on can train on exactly those and overfit them, raising its
 * loss-delta score (gain on its assigned batches minus gain on a random shard) above an honest
 * trainer's. Before issue 15 the validator's seeds came from the run id and round alone, which
 * every trainer knows before it trains. Now they come from the decided set's value hash
 * (round-batches.ts validatorSeeds), which exists only after the set has closed.
 *
 * One run measures both, side by side, with the real scorer (verify/score.ts scoreRound) on a
 * tiny GPT over Brown: the honest trainer draws its shard's sequences with its own sampler; the
 * farmer spends the same inner steps on the two batches the old rule predicts.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { BatchSampler, type Batch, type TokenArray } from '../src/data/batches.js';
import { loadCorpus, prepareDataset } from '../src/data/index.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { loadKernels } from '../src/kernels/index.js';
import { GPT } from '../src/model/gpt.js';
import { roundSeed } from '../src/swarm/assign.js';
import { firstBatches, trainerSeed, validatorSeeds } from '../src/swarm/round-batches.js';
import { AdamW, DEFAULT_ADAMW } from '../src/train/adamw.js';
import { innerStep } from '../src/train/inner-step.js';
import { sha256HexNode } from '../src/util/hash-node.js';
import { scoreRound, type Submission } from '../src/verify/score.js';

const model = { vocabSize: 512, ctx: 32, dim: 32, layers: 1, heads: 2 };
const B = 4,
  T = 32,
  H = 24,
  K = 2,
  ROUND = 5,
  OUTER_LR = 0.7,
  NUM_SHARDS = 16;
const schedule = { kind: 'constant' as const, maxLr: 3e-3, minLrFrac: 0, warmupSteps: 0, totalSteps: 1, decayFrac: 0 };
const runId = sha256HexNode('redteam-farming run');

test('score farming: predictable validation batches pay an overfitting trainer; beacon-drawn ones do not', () => {
  const ds = prepareDataset({ corpus: loadCorpus('brown'), vocabSize: model.vocabSize, cacheDir: defaultCacheDir() });
  const per = Math.floor(ds.train.length / NUM_SHARDS);
  const shard = (i: number) => ds.train.subarray(i * per, (i + 1) * per) as TokenArray;
  const k = loadKernels({ threads: 1, deterministic: true });
  const gpt = new GPT(model, k);
  gpt.init(7);
  // Start past the first steep descent, so gains measure fitting the shard, not the unigram.
  const warm = new AdamW(model, DEFAULT_ADAMW, k);
  const ws = new BatchSampler(shard(15), B, T, 99n);
  for (let i = 0; i < 60; i++) innerStep(gpt, warm, { batches: [ws.next()], B, T, schedule, step: i });
  const theta = gpt.params.slice();

  const mine = shard(3);
  const train = (next: (i: number) => Batch): Float32Array => {
    gpt.params.set(theta);
    const opt = new AdamW(model, DEFAULT_ADAMW, k);
    for (let i = 0; i < H; i++) innerStep(gpt, opt, { batches: [next(i)], B, T, schedule, step: i });
    const d = new Float32Array(theta.length);
    for (let i = 0; i < d.length; i++) d[i] = theta[i] - gpt.params[i];
    return d;
  };
  const honestSampler = new BatchSampler(mine, B, T, trainerSeed(runId, ROUND));
  const honest = train(() => honestSampler.next());
  // The farmer predicts the validator's batches with the rule every trainer could compute before.
  const old = BigInt('0x' + roundSeed(runId, ROUND).slice(12, 24));
  const predicted = firstBatches(mine, old + 1n, B, T, K);
  const farmer = train((i) => predicted[i % K]);

  const loss = (p: Float32Array, b: Batch) => {
    gpt.params.set(p);
    return gpt.loss(b.inputs, b.targets, B, T);
  };
  const shares = (assignedSeed: bigint, randomShard: number, randomSeed: bigint) => {
    const assigned = firstBatches(mine, assignedSeed, B, T, K);
    const random = firstBatches(shard(randomShard), randomSeed, B, T, K);
    const subs: Submission[] = [
      { peer: 'farmer', delta: farmer, baseHash: 'x' },
      { peer: 'honest', delta: honest, baseHash: 'x' },
    ];
    const v = scoreRound({
      theta,
      roundHash: 'x',
      lr: OUTER_LR,
      subs,
      previous: [null, null],
      assigned: [assigned, assigned],
      beforeAssigned: [assigned.map((b) => loss(theta, b)), assigned.map((b) => loss(theta, b))],
      random,
      beforeRandom: random.map((b) => loss(theta, b)),
      loss,
    });
    const [f, h] = v.map((x) => x.score);
    return { farmer: f, honest: h, farmerShare: f / (f + h) };
  };
  // Before: the validator's seeds were public (run id, round).
  const before = shares(old + 1n, Number(old % BigInt(NUM_SHARDS)), old + 2n);
  // After: drawn from the decided set's value hash, unknown to the farmer when it trained. One
  // draw of K batches is noisy, so the expectation over 24 decided sets is what it can earn.
  const after = { farmer: 0, honest: 0, farmerShare: 0 };
  for (let j = 0; j < 24; j++) {
    const s = validatorSeeds(runId, ROUND, NUM_SHARDS, sha256HexNode(`a decided set of round ${ROUND}: ${j}`));
    const r = shares(s.assigned, s.randomShard, s.random);
    after.farmer += r.farmer / 24;
    after.honest += r.honest / 24;
  }
  after.farmerShare = after.farmer / (after.farmer + after.honest);
  console.log(
    `redteam-farming: farmer/honest score before ${before.farmer.toFixed(4)}/${before.honest.toFixed(4)} ` +
      `(farmer's share ${(100 * before.farmerShare).toFixed(1)}%), after ${after.farmer.toFixed(4)}/` +
      `${after.honest.toFixed(4)} (${(100 * after.farmerShare).toFixed(1)}%)`,
  );
  assert.ok(before.farmerShare > 0.6, `the attack worked against public seeds (farmer share ${before.farmerShare})`);
  assert.ok(
    after.farmerShare <= 0.5,
    `against beacon seeds the farmer earns no more than honest (${after.farmerShare})`,
  );
});
