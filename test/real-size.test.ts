/**
 * Issue 19 "Real sizes": the memory plan behind a GPT-2-small-sized swarm (bench/swarm-124m.ts)
 * changed how a few things are computed, never what they compute. Each is checked here against
 * the form it replaced, bit for bit, at toy sizes: the clipped mean without copies, the snapshot
 * bundle written piece by piece and served from its file, state checkpoints published from views,
 * error feedback formed in the caller's scratch Δ, and payloads decoded on use. And the transfer
 * deadlines that were fixed for toy sizes now follow the bytes (peer/deadlines.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { unixfs } from '@helia/unixfs';
import type { CID } from 'multiformats/cid';
import { clippedMean, clipToMedian, weightedMean } from '../src/swarm/robust.js';
import { applyCommitted, applyCommittedSparse } from '../src/swarm/apply.js';
import { OuterNesterov } from '../src/swarm/outer.js';
import { encodeBundle, maxBundleBytes, readBundleState, writeBundleFile } from '../src/peer/bundle.js';
import { MIN_LINK_BYTES_PER_S, stateBytes, transferDeadlineMs } from '../src/peer/deadlines.js';
import { PayloadStore } from '../src/peer/payloads.js';
import { stateCid } from '../src/store/checkpoint.js';
import { ErrorFeedback, getCodec, type SparseCodec } from '../src/swarm/compress/index.js';
import { GPT } from '../src/model/gpt.js';
import { loadKernels } from '../src/kernels/index.js';
import { CHECKPOINT_FORMAT, CHECKPOINT_VERSION, weightsHash } from '../src/model/checkpoint.js';
import { paramSpecs } from '../src/model/params.js';
import { encodeSafetensors } from '../src/model/safetensors.js';
import { Rng } from '../src/util/rng.js';
import type { RoundSnapshot } from '../src/swarm/round.js';

const rand = (n: number, seed: number, scale = 1) => {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => (r.nextFloat() - 0.5) * scale);
};
const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

test('clippedMean is weightedMean of clipToMedian, bit for bit, across blocks and with a zero update', () => {
  const n = 70_001; // more than one 2^16 accumulation block, and a short last block
  const sets = [
    [rand(n, 1), rand(n, 2, 100), rand(n, 3, 0.01)], // one clipped, one far below the bound
    [rand(n, 4), new Float32Array(n), rand(n, 5, 3)], // a free-rider's zero update
    [rand(n, 6)],
  ];
  for (const ds of sets) {
    const ws = ds.map((_, j) => 3 + 5 * j);
    const want = weightedMean(clipToMedian(ds).clipped, ws);
    const got = clippedMean(ds, ws);
    assert.ok(bits(got.delta).equals(bits(want)));
    assert.equal(got.bound, clipToMedian(ds).bound);
  }
  // And through applyCommitted's 'clip' rule (the default of new runs).
  const ups = sets[0].map((delta, j) => ({ peer: `p${j}`, tokens: 10 + j, delta }));
  const theta = rand(n, 9);
  const a = theta.slice();
  applyCommitted(a, new OuterNesterov(n, { lr: 1, momentum: 0 }), ups, 'clip');
  const b = theta.slice();
  new OuterNesterov(n, { lr: 1, momentum: 0 }).step(
    b,
    weightedMean(
      clipToMedian(ups.map((u) => u.delta)).clipped,
      ups.map((u) => u.tokens),
    ),
  );
  assert.ok(bits(a).equals(bits(b)));
});

test('a snapshot bundle written piece by piece is encodeBundle, served from its file, removed when pruned', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tessera-bundle-'));
  try {
    const P = 1000;
    const theta = rand(P, 11),
      momentum = rand(P, 12);
    const snap = { round: 7, weightsHash: weightsHash(theta) } as unknown as RoundSnapshot;
    const path = join(dir, 'snapshot.bin');
    const want = encodeBundle(snap, theta, momentum);
    const w = writeBundleFile(path, snap, theta, momentum);
    assert.equal(w.hash, createHash('sha256').update(want).digest('hex'));
    assert.equal(w.bytes, want.length);
    assert.ok(readFileSync(w.file).equals(Buffer.from(want)));
    assert.ok(readFileSync(path).equals(Buffer.from(want)), 'the resume file is the same bundle');
    const back = readBundleState(w.file, P);
    assert.ok(bits(back.theta).equals(bits(theta)) && bits(back.momentum).equals(bits(momentum)));
    // A later round replaces the resume file; the earlier round's file still serves its bundle.
    const w8 = writeBundleFile(path, { ...snap, round: 8 }, momentum, theta);
    assert.ok(readFileSync(w.file).equals(Buffer.from(want)));
    assert.equal(readFileSync(path).length, w8.bytes);
    const store = new PayloadStore();
    store.putFile(w.hash, w.file, 7, 2);
    assert.ok(Buffer.from((await store.bytes(w.hash))!).equals(Buffer.from(want)));
    store.prune(9);
    assert.ok(existsSync(w.file));
    store.prune(10);
    assert.equal(await store.bytes(w.hash), undefined);
    assert.ok(!existsSync(w.file), 'dropped with its entry');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a state checkpoint published from views has the CID of the concatenated files', async () => {
  const config = { vocabSize: 300, ctx: 8, dim: 16, layers: 1, heads: 2 };
  const g = new GPT(config, loadKernels({ threads: 1 }));
  g.init(3);
  const momentum = rand(g.numParams, 13);
  const s = { config, params: g.params, momentum, runId: 'a'.repeat(64), round: 4, snapshot: { r: 4 } };
  // The files as they were encoded before: each one contiguous buffer.
  const hash = weightsHash(g.params);
  const model = encodeSafetensors(
    paramSpecs(config).map((p) => ({
      name: p.name,
      shape: p.shape,
      data: g.params.subarray(p.offset, p.offset + p.size),
    })),
    { format: CHECKPOINT_FORMAT, weightsHash: hash },
  );
  const outer = encodeSafetensors([{ name: 'momentum', shape: [momentum.length], data: momentum }], {
    format: 'tessera-outer',
    weightsHash: hash,
  });
  const cfg = {
    format: CHECKPOINT_FORMAT,
    version: CHECKPOINT_VERSION,
    model: config,
    meta: {
      runId: s.runId,
      round: 4,
      snapshot: s.snapshot,
      momentumHash: createHash('sha256').update(bits(momentum)).digest('hex'),
    },
    weightsHash: hash,
    optimizer: false,
    extraFiles: ['outer.safetensors'],
  };
  const files = [
    { path: 'config.json', content: new TextEncoder().encode(JSON.stringify(cfg, null, 2) + '\n') },
    { path: 'model.safetensors', content: new Uint8Array(model) },
    { path: 'outer.safetensors', content: new Uint8Array(outer) },
  ];
  const hashOnly = { put: async (c: CID) => c, get: () => assert.fail('no reads'), has: async () => false };
  let want: CID | undefined;
  for await (const r of unixfs({ blockstore: hashOnly as never }).addAll(files, { wrapWithDirectory: true }))
    want = r.cid;
  assert.equal((await stateCid(s)).toString(), want!.toString());
});

test('error feedback formed in the scratch Δ gives the same bytes and residual', () => {
  const n = 5000;
  const codec = getCodec('sparse', { chunk: 256, k: 8 });
  const efA = new ErrorFeedback(n, 0.95),
    efB = new ErrorFeedback(n, 0.95);
  for (let r = 0; r < 3; r++) {
    const d = rand(n, 20 + r);
    const a = codec.encode(d.slice(), efA);
    const b = codec.encode(d, efB, true);
    assert.ok(Buffer.from(a.bytes).equals(Buffer.from(b.bytes)));
    assert.ok(bits(efA.residual).equals(bits(efB.residual)));
  }
});

test('payloads keep the encoded update and decode it on use; an eval model can run on θ itself', () => {
  const n = 4096;
  const codec = getCodec('sparse', { chunk: 256, k: 8 });
  const enc = codec.encode(rand(n, 30));
  const store = new PayloadStore();
  store.putUpdate('h', enc.bytes, 1, () => codec.decode(enc.bytes, n));
  assert.ok(store.hasUpdate('h') && !store.hasUpdate('x'));
  const d1 = store.delta('h')!;
  assert.ok(bits(d1).equals(bits(enc.decoded)));
  assert.notEqual(store.delta('h'), d1, 'a fresh array each time: nothing decoded is kept');
  store.noteMsg({ from: 'p', round: 1, baseHash: '0'.repeat(64), updateHash: 'h', steps: 1 } as never);
  const held = [...store.heldUpdates(1)];
  assert.equal(held.length, 1);
  assert.ok(bits(held[0].delta).equals(bits(enc.decoded)));

  const config = { vocabSize: 300, ctx: 8, dim: 16, layers: 1, heads: 2 };
  const k = loadKernels({ threads: 1 });
  const owner = new GPT(config, k);
  owner.init(5);
  const theta = owner.params.slice();
  const evalGpt = new GPT(config, k, theta);
  assert.equal(evalGpt.params, theta, 'no copy of θ');
  const x = Int32Array.from({ length: 8 }, (_, i) => (i * 7) % 300),
    y = Int32Array.from({ length: 8 }, (_, i) => (i * 11) % 300);
  assert.equal(evalGpt.loss(x, y, 1, 8), owner.loss(x, y, 1, 8));
  assert.throws(() => new GPT(config, k, new Float32Array(3)), /parameters/);
});

test('transfer deadlines keep their floor at toy sizes and grow with a real-sized payload', () => {
  const sparse = getCodec('sparse', { chunk: 1024, k: 64 });
  const toy = sparse.encodedSize(134_912); // the demo's model
  const gpt2Small = sparse.encodedSize(124_439_808);
  // Toy sizes: within a few ms of the old fixed deadlines.
  assert.ok(transferDeadlineMs(toy, 5000) - 5000 < 50);
  assert.ok(transferDeadlineMs(maxBundleBytes(134_912), 10_000) - 10_000 < 1100);
  // GPT-2 small: a 12.6 MB payload and a 1 GB bundle get the time an 8 Mbit/s link needs.
  assert.ok(gpt2Small > 12e6);
  assert.ok(transferDeadlineMs(gpt2Small, 5000) >= 5000 + (gpt2Small / MIN_LINK_BYTES_PER_S) * 1000);
  assert.ok(transferDeadlineMs(maxBundleBytes(124_439_808), 10_000) > 900_000);
  assert.equal(stateBytes(10), 80);
});

test('a sparse round applied from its entries block by block is applyCommitted of the decoded updates, bit for bit', () => {
  const n = 150_001; // three blocks, a short last one
  const codec = getCodec('sparse', { chunk: 1024, k: 16 }) as SparseCodec;
  const bytes = [rand(n, 40), rand(n, 41, 50), rand(n, 42, 0.1)].map((d) => codec.encode(d).bytes);
  const peers = ['pc', 'pa', 'pb']; // not in id order: both sort
  for (const rule of ['mean', 'clip'] as const)
    for (const mu of [0, 0.9]) {
      const theta = rand(n, 43);
      const dense = theta.slice(),
        sparse = theta.slice();
      const o1 = new OuterNesterov(n, { lr: 0.7, momentum: mu }),
        o2 = new OuterNesterov(n, { lr: 0.7, momentum: mu });
      o1.momentum.set(rand(n, 44));
      o2.momentum.set(o1.momentum);
      const ups = bytes.map((b, j) => ({ peer: peers[j], tokens: 64 * (j + 1), delta: codec.decode(b, n) }));
      applyCommitted(dense, o1, ups, rule);
      applyCommittedSparse(
        sparse,
        o2,
        bytes.map((b, j) => ({ peer: peers[j], tokens: 64 * (j + 1), ...codec.entries(b, n) })),
        rule,
      );
      assert.ok(bits(sparse).equals(bits(dense)), `${rule} μ=${mu}: weights`);
      assert.ok(bits(o2.momentum).equals(bits(o1.momentum)), `${rule} μ=${mu}: momentum`);
    }
  const e = codec.entries(bytes[0], n);
  const d = codec.decode(bytes[0], n);
  assert.ok(
    e.idx.every((x, k) => k === 0 || x > e.idx[k - 1]),
    'ascending',
  );
  assert.equal(d.filter((x) => x !== 0).length, e.val.filter((x) => x !== 0).length);
  for (let k = 0; k < e.idx.length; k++) assert.equal(e.val[k], d[e.idx[k]]);
});
