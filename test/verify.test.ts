/**
 * Issue 6 verification: adversary transforms, validator checks and scores, the ScoreBook's
 * EMA/decay, robust aggregation properties, and a tiny adversarial sim showing the defences
 * matter (a scaler wrecks an undefended swarm; the robust one stays near clean).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BEHAVIOURS,
  behave,
  parseBehaviour,
  parseBehaviours,
  l2,
  SCALER_FACTOR,
  type Behaviour,
} from '../src/verify/adversaries.js';
import {
  COPY_COS,
  EMA_ALPHA,
  HARM_NATS,
  MISS_DECAY,
  ScoreBook,
  copyChecks,
  cosine,
  hardChecks,
  lossDelta,
  roundFlag,
  scoreRound,
  type RoundVerdict,
  type Submission,
} from '../src/verify/score.js';
import {
  centeredClip,
  clipToMedian,
  lowerMedian,
  median,
  norm2,
  robustAggregate,
  selectTopG,
  trimmedMean,
  weightedMean,
} from '../src/swarm/robust.js';
import { InvalidInputError } from '../src/util/errors.js';
import { uniform } from '../src/util/rng.js';
import { loadKernels } from '../src/kernels/index.js';
import { loadCorpus, prepareDataset } from '../src/data/index.js';
import { runVerifySim } from '../src/verify/sim.js';

const vec = (xs: number[]) => Float32Array.from(xs);
const rand = (n: number, seed: number) => {
  const r = uniform(seed);
  return Float32Array.from({ length: n }, () => r() - 0.5);
};

test('behaviour names parse, with clear errors', () => {
  for (const b of BEHAVIOURS) assert.equal(parseBehaviour(b), b);
  assert.throws(
    () => parseBehaviour('evil'),
    (e: unknown) => e instanceof InvalidInputError && /expected one of/.test((e as Error).message),
  );
  assert.deepEqual(parseBehaviours('scaler:2', 4), ['honest', 'honest', 'scaler', 'scaler']);
  assert.deepEqual(parseBehaviours('1=copier,sign-flip:1', 4), ['honest', 'copier', 'honest', 'sign-flip']);
  assert.throws(() => parseBehaviours('9=scaler', 4), InvalidInputError);
  assert.throws(() => parseBehaviours('scaler:5', 4), InvalidInputError);
  assert.throws(() => parseBehaviours('scaler', 4), InvalidInputError);
});

test('each adversary transform does what it says', () => {
  const honest = rand(64, 1),
    other = rand(64, 2),
    prev = rand(64, 3);
  const ctx = (kinds: Behaviour[] = ['honest']) => ({
    honest,
    earlier: [other],
    earlierKinds: kinds,
    previous: prev,
    rng: uniform(9),
  });
  assert.deepEqual(behave('honest', ctx()), honest);
  assert.deepEqual(behave('wrong-data', ctx()), honest);
  assert.equal(l2(behave('free-rider-zero', ctx())), 0);
  const noise = behave('free-rider-noise', ctx());
  assert.ok(Math.abs(l2(noise) - l2(other)) < 1e-4 * l2(other));
  assert.ok(Math.abs(cosine(noise, honest)) < 0.5);
  assert.ok(cosine(behave('copier', ctx()), other) > COPY_COS);
  const sc = behave('scaler', ctx());
  sc.forEach((x, i) => assert.ok(Math.abs(x - SCALER_FACTOR * honest[i]) < 1e-4));
  behave('sign-flip', ctx()).forEach((x, i) => assert.equal(x, -honest[i]));
  assert.deepEqual(behave('stale', ctx()), prev);
  assert.deepEqual(behave('stale', { ...ctx(), previous: null }), honest);
  // Sybil: the first member submits noise, a later one copies it.
  const lead = behave('sybil', { ...ctx(), earlier: [], earlierKinds: [] });
  assert.ok(Math.abs(cosine(lead, honest)) < 0.5);
  assert.ok(cosine(behave('sybil', { ...ctx(['honest', 'sybil']), earlier: [other, lead] }), lead) > COPY_COS);
  // Inputs untouched.
  assert.deepEqual(honest, rand(64, 1));
});

test('hard checks: shape, finite, zero, norm, base hash', () => {
  const ok = (peer: string, d: Float32Array, h = 'h'): Submission => ({ peer, delta: d, baseHash: h });
  const a = rand(8, 1),
    b = rand(8, 2),
    c = rand(8, 3);
  const big = a.map((x) => x * 100);
  const nan = a.slice();
  nan[3] = NaN;
  const res = hardChecks(
    [
      ok('a', a),
      ok('b', b),
      ok('c', c),
      ok('d', big),
      ok('e', new Float32Array(8)),
      ok('f', nan),
      ok('g', rand(7, 4)),
      ok('h', b, 'old'),
    ],
    8,
    'h',
  );
  assert.deepEqual(res, [null, null, null, 'norm', 'zero', 'nonfinite', 'shape', 'base']);
  // A round of two, one of them ×100 (a decided set of two under load): the bound is the smaller norm.
  assert.deepEqual(hardChecks([ok('d', big), ok('a', a)], 8, 'h'), ['norm', null]);
});

test('copy detection: the earlier announcer wins; replays are caught', () => {
  const a = rand(256, 1),
    b = rand(256, 2);
  const copy = behave('copier', { honest: b, earlier: [a], earlierKinds: ['honest'], previous: null, rng: uniform(3) });
  const subs: Submission[] = [
    { peer: 'p2', delta: a, baseHash: 'h' },
    { peer: 'p1', delta: b, baseHash: 'h' },
    { peer: 'p0', delta: copy, baseHash: 'h' },
  ];
  assert.deepEqual(copyChecks(subs, [null, null, null]), [null, null, 0]);
  // Announcement order, not peer id, decides: reversed, the copier would be the original.
  assert.deepEqual(copyChecks([subs[2], subs[1], subs[0]], [null, null, null]), [null, null, 0]);
  assert.deepEqual(copyChecks(subs, [null, b, null]), [null, -1, 0]);
});

test('loss-delta: an update fitted to the assigned batches scores above free-riders, copiers and sign-flippers', () => {
  // Toy model: loss(θ, target) = ‖θ − target‖². Assigned batches are targets the peer fitted.
  const n = 256,
    theta = new Float32Array(n);
  const shared = rand(n, 10);
  const targets = Array.from({ length: 6 }, (_, i) => {
    const t = rand(n, 20 + i);
    return t.map((x, j) => x * 0.5 + shared[j]);
  });
  const assigned = targets.slice(0, 2),
    random = targets.slice(2, 4),
    other = targets.slice(4, 6);
  const loss = (p: Float32Array, t: Float32Array) => {
    let s = 0;
    for (let i = 0; i < n; i++) s += (p[i] - t[i]) ** 2;
    return s;
  };
  const fit = (ts: Float32Array[]) => {
    const d = new Float32Array(n);
    for (let i = 0; i < n; i++) d[i] = -(ts[0][i] + ts[1][i]) / 2;
    return d;
  };
  const before = (ts: Float32Array[]) => ts.map((t) => loss(theta, t));
  const score = (d: Float32Array) =>
    lossDelta(theta, d, 1, assigned, before(assigned), random, before(random), loss, new Float32Array(n)).score;
  const honest = fit(assigned);
  const s = score(honest);
  assert.ok(s > 0);
  assert.equal(score(new Float32Array(n)), 0);
  assert.ok(score(fit(other)) < s, 'a copied update fitted to someone else earns less');
  assert.equal(score(honest.map((x) => -x)), 0);
  // scoreRound: hard and copy failures score 0.
  const subs: Submission[] = [
    { peer: 'a', delta: honest, baseHash: 'h' },
    { peer: 'b', delta: honest.slice(), baseHash: 'h' },
  ];
  const v = scoreRound({
    theta,
    roundHash: 'h',
    lr: 1,
    subs,
    previous: [null, null],
    assigned: [assigned, assigned],
    beforeAssigned: [before(assigned), before(assigned)],
    random,
    beforeRandom: before(random),
    loss,
  });
  assert.ok(v[0].score > 0);
  assert.equal(v[1].score, 0);
  assert.equal(v[1].copyOf, 'a');
});

test('harmful means clearly worse on both the assigned and the random batches, beyond evaluation noise', () => {
  const v = (gainAssigned: number, gainRandom: number): RoundVerdict => ({
    peer: 'p',
    hard: null,
    copyOf: null,
    gainAssigned,
    gainRandom,
    score: 0,
  });
  // An honest update on a plateau (the swarm-behave drill measured −0.001 on the random batches): not flagged.
  assert.equal(roundFlag(v(-0.001, -0.001)), false);
  assert.equal(roundFlag(v(-HARM_NATS, -HARM_NATS)), false);
  assert.equal(roundFlag(v(-0.3, 0.01)), false, 'worse on one side only');
  assert.equal(roundFlag(v(0.01, -0.3)), false);
  assert.equal(roundFlag(v(-HARM_NATS - 1e-6, -0.28)), true);
  assert.equal(roundFlag(v(-0.34, -0.29)), true, 'a sign flip early in training');
  assert.equal(roundFlag({ ...v(0.5, 0.5), hard: 'norm' }), true);
  assert.equal(roundFlag({ ...v(0.5, 0.5), copyOf: 'q' }), true);
});

test('ScoreBook: EMA, decay on missed rounds, low-score flag', () => {
  const b = new ScoreBook();
  b.round({ a: 1, b: 1, c: 0 });
  assert.equal(b.get('a'), 1);
  b.round({ a: 0, c: 0 });
  assert.ok(Math.abs(b.get('a') - (1 - EMA_ALPHA)) < 1e-12);
  assert.equal(b.get('b'), MISS_DECAY);
  assert.equal(b.lowScore('c'), true);
  assert.equal(b.lowScore('b'), false); // only one scored round
  assert.deepEqual(b.peers(), ['a', 'b', 'c']);
  assert.throws(() => b.round({ a: NaN }), InvalidInputError);
});

test('robust aggregation: median, clipping bound, top-G ties, trimmed mean, permutation invariance', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 2, 3]), 2.5);
  const ds = [vec([3, 4]), vec([0, 1]), vec([60, 80]), vec([1, 0])];
  const { clipped, bound } = clipToMedian(ds);
  assert.equal(bound, 1, 'the lower median of the norms 5, 1, 100, 1');
  assert.equal(lowerMedian([4, 1, 2, 3]), 2);
  assert.equal(lowerMedian([7]), 7);
  // Two updates, one ×100: the bound is the honest norm, so the big one cannot outweigh it.
  assert.equal(clipToMedian([vec([3, 4]), vec([300, 400])]).bound, 5);
  clipped.forEach((c, j) => assert.ok(norm2(c) <= bound * (1 + 1e-6) && norm2(c) <= norm2(ds[j]) + 1e-6));
  assert.ok(Math.abs(cosine(clipped[2], ds[2]) - 1) < 1e-6);
  assert.deepEqual(
    selectTopG(
      [
        { peer: 'c', score: 1 },
        { peer: 'a', score: 2 },
        { peer: 'b', score: 1 },
      ],
      2,
    ),
    ['a', 'b'],
  );
  assert.throws(() => selectTopG([], 0), InvalidInputError);
  assert.deepEqual(trimmedMean([vec([1, -100]), vec([2, 0]), vec([3, 1]), vec([100, 2])], 1), vec([2.5, 0.5]));
  assert.throws(() => trimmedMean([vec([1]), vec([2])], 1), InvalidInputError);
  assert.deepEqual(weightedMean([vec([1, 2]), vec([3, 4])], [1, 3]), vec([2.5, 3.5]));
  // Centered clipping: an outlier moves the result by at most τ per iteration.
  const cc = centeredClip([vec([0, 0]), vec([0, 0]), vec([1000, 0])], [1, 1, 1], 1, 3);
  assert.ok(cc[0] < 400);
  const inputs = ds.map((d, j) => ({ peer: `p${j}`, delta: d, weight: 1 + j, score: j % 2 }));
  const r1 = robustAggregate(inputs, { clip: true, topG: 3, rule: 'mean', trim: 1, tau: 1, iters: 3 });
  const r2 = robustAggregate([...inputs].reverse(), { clip: true, topG: 3, rule: 'mean', trim: 1, tau: 1, iters: 3 });
  assert.deepEqual(r1.delta, r2.delta);
  assert.deepEqual(r1.used, ['p0', 'p1', 'p3']); // top-3 by score (p1, p3, then p0 by id), in id order
  assert.ok(norm2(r1.delta) <= r1.clipBound * (1 + 1e-6));
  for (const rule of ['trimmed', 'centered'] as const) {
    const a = robustAggregate(inputs, { clip: true, topG: null, rule, trim: 1, tau: 1, iters: 3 });
    assert.deepEqual(
      a.delta,
      robustAggregate([...inputs].reverse(), { clip: true, topG: null, rule, trim: 1, tau: 1, iters: 3 }).delta,
    );
  }
  assert.throws(() => robustAggregate([inputs[0], inputs[0]]), InvalidInputError);
});

test('tiny sim: a scaler wrecks the undefended swarm; the robust one stays near clean', async () => {
  const model = { vocabSize: 300, ctx: 16, dim: 16, layers: 1, heads: 2 };
  const kernels = loadKernels({ threads: 1, deterministic: true });
  const ds = prepareDataset({
    corpus: loadCorpus('brown'),
    vocabSize: 300,
    cacheDir: mkdtempSync(join(tmpdir(), 'tessera-verify-')),
  });
  const run = (spec: string, defence: 'none' | 'robust') =>
    runVerifySim({ train: ds.train, val: ds.val }, kernels, {
      model,
      behaviours: parseBehaviours(spec, 4),
      defence,
      batch: 2,
      H: 4,
      rounds: 5,
      lr: 1e-2,
      warmup: 2,
      seed: 3,
      evalK: 1,
      valBatches: 8,
    });
  const clean = await run('', 'none');
  const bad = await run('scaler:1', 'none');
  const good = await run('scaler:1', 'robust');
  assert.ok(
    bad.diverged || bad.finalValLoss > clean.finalValLoss * 1.2,
    `undefended ${bad.finalValLoss} vs clean ${clean.finalValLoss}`,
  );
  assert.ok(
    good.finalValLoss < clean.finalValLoss * 1.05,
    `robust ${good.finalValLoss} vs clean ${clean.finalValLoss}`,
  );
  assert.equal(good.firstFlag[3], 1);
  assert.deepEqual(good.flaggedRounds.slice(0, 3), [0, 0, 0]);
});
