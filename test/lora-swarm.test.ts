/**
 * LoRA fine-tuning in the swarm (issue 19), with real `tessera node` processes on 127.0.0.1: a
 * base checkpoint is added to peer 0's IPFS store and named in the manifest by CID and hash with
 * a LoRA config; three peers load it (peers 1 and 2 fetch it from peer 0 and check its hash),
 * train only the adapter, and agree on θ (the adapter) round after round. Each round's update
 * payloads are the adapter's codec messages: far smaller than the full model's would be. The base
 * every peer trains on still hashes to the manifest's base in every report.
 *
 * Peer 0 also validates: it scores every update, against θ = the adapter.
 *
 * Also, without processes: the manifest's base/lora fields are zod-checked and part of the runId;
 * an audit re-executes a LoRA trainer's steps over the adapter alone, bit for bit, and catches a
 * tampered adapter step.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildManifest, buildManifestWithBase } from '../src/swarm/manifest-builder.js';
import { createManifest, ManifestError, type ManifestInput } from '../src/swarm/manifest.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { saveCheckpoint } from '../src/model/checkpoint.js';
import { GPT } from '../src/model/gpt.js';
import { paramCount } from '../src/model/params.js';
import { loraSpecs } from '../src/model/lora.js';
import { createRefKernels } from '../src/kernels/ref.js';
import { encodedSize } from '../src/swarm/compress/index.js';
import { loadKernels } from '../src/kernels/index.js';
import { LoraGPT } from '../src/model/lora-model.js';
import { weightsHash } from '../src/model/checkpoint.js';
import { DEFAULT_ADAMW } from '../src/train/adamw.js';
import { Stepper, commitSteps, reexecute, leafOf, type AuditJob } from '../src/verify/audit.js';
import { MerkleTree } from '../src/verify/merkle.js';
import { loadBase } from '../src/peer/base-model.js';
import { MismatchError } from '../src/util/errors.js';
import {
  dataDirFor,
  preparePeer,
  spawnPeer,
  stopAll,
  type PeerProc,
  agreedRounds,
  waitFor as waitForPeers,
} from './support/swarm.js';

const root = mkdtempSync(join(tmpdir(), 'tessera-lora-swarm-'));
const peers: PeerProc[] = [];
after(async () => {
  await stopAll(peers, 2000);
  rmSync(root, { recursive: true, force: true });
});

const model = { vocabSize: 512, ctx: 32, dim: 32, layers: 2, heads: 2 };
const lora = { r: 2, alpha: 4, targets: ['c_attn', 'c_fc'] };
const opts = {
  vocab: 512,
  ctx: 32,
  dim: 32,
  layers: 2,
  heads: 2,
  batch: 2,
  inner: 4,
  lr: 1e-2,
  codec: 'sparse' as const,
  shards: 8,
  seed: 7,
  trainMs: 800,
  submitMs: 1500,
  commitMs: 1000,
  quorum: 1,
  minPeers: 1,
  maxMissed: 2,
  cacheDir: defaultCacheDir(),
};

test('the manifest names the base and the LoRA config, zod-checked and part of the runId', () => {
  const a = buildManifest({ ...opts, lora }).decoded;
  assert.ok(a.manifest.base && a.manifest.lora, 'base and lora are in the manifest');
  const b = buildManifest({ ...opts, lora: { ...lora, r: 3 } }).decoded;
  assert.notEqual(a.runId, b.runId, 'the rank is part of the runId');
  const full = buildManifest(opts).decoded;
  assert.notEqual(a.runId, full.runId);
  const bad = (patch: Partial<ManifestInput>, what: RegExp) =>
    assert.throws(
      () => createManifest({ ...a.manifest, ...patch } as ManifestInput),
      (e: unknown) => {
        assert.ok(e instanceof ManifestError);
        assert.match(e.message, what);
        return true;
      },
    );
  bad({ lora: { ...lora, targets: ['q_proj'] } }, /unknown LoRA target/);
  bad({ lora: { r: 0, alpha: 4, targets: ['all'] } }, /lora/);
  bad({ lora: { ...lora, extra: 1 } as never }, /lora/);
  bad({ base: undefined }, /LoRA needs a base/);
  bad({ base: { weightsHash: 'x' } }, /base\.weightsHash/);
  // Full fine-tuning starts from the base: genesis must be it.
  bad({ lora: undefined }, /genesisWeightsHash must equal base\.weightsHash/);
});

test('full fine-tuning names the base as genesis; a peer refuses a base that does not hash to the manifest', async () => {
  const g = new GPT(model, createRefKernels());
  g.init(5);
  const dir = join(root, 'base-full');
  const { weightsHash: h } = await saveCheckpoint(dir, { config: model, params: g.params });
  const { decoded } = await buildManifestWithBase({ ...opts, base: dir, dataDir: join(root, 'store-full') });
  const m = decoded.manifest;
  assert.equal(m.base?.weightsHash, h);
  assert.equal(m.genesisWeightsHash, h, 'θ0 is the base');
  assert.equal(m.lora, undefined);
  const kernels = createRefKernels();
  const got = await loadBase(m, { path: dir, signal: AbortSignal.timeout(5000), kernels });
  assert.equal(weightsHash(got!), h);
  // Another checkpoint of the same shape, passed as --base: refused before anything trains.
  g.params[0] += 1e-3;
  const other = join(root, 'base-other');
  await saveCheckpoint(other, { config: model, params: g.params });
  await assert.rejects(loadBase(m, { path: other, signal: AbortSignal.timeout(5000), kernels }), MismatchError);
  // A LoRA run whose base is the init(seed) model, named by hash only: rebuilt and checked.
  const lm = buildManifest({ ...opts, lora }).decoded.manifest;
  assert.equal(lm.base?.cid, undefined);
  const rebuilt = await loadBase(lm, { signal: AbortSignal.timeout(5000), kernels });
  assert.equal(weightsHash(rebuilt!), lm.base!.weightsHash);
  await assert.rejects(
    loadBase({ ...lm, seed: lm.seed + 1 }, { signal: AbortSignal.timeout(5000), kernels }),
    /--base DIR/,
  );
});

test('audit by re-execution covers the adapter alone: same Merkle root, a tampered step caught', () => {
  const k = () => loadKernels({ threads: 1, deterministic: true });
  const g = new GPT(model, k());
  g.init(99);
  const base = g.params.slice();
  const tok = new Uint16Array(3000).map((_, i) => (i * 2654435761) % model.vocabSize);
  const job: AuditJob = {
    runId: 'a'.repeat(64),
    round: 2,
    innerSteps: 6,
    shards: [{ shard: 1, tokens: tok }],
    B: 2,
    T: model.ctx,
    schedule: { kind: 'constant', maxLr: 1e-2, minLrFrac: 1, warmupSteps: 0, totalSteps: 1000, decayFrac: 0.2 },
    adamw: DEFAULT_ADAMW,
  };
  const stepper = () => new Stepper(model, k(), job, () => new LoraGPT(model, k(), base, lora));
  const trainer = stepper();
  const lm = new LoraGPT(model, k(), base, lora);
  lm.init(7);
  const n = lm.numParams;
  const start = { theta: lm.params.slice(), m: new Float32Array(n), v: new Float32Array(n), step: 12 };
  const honest = commitSteps(trainer, start, { keep: true });
  assert.equal(honest.final.theta.length, n, 'the committed state is the adapter');
  assert.notEqual(weightsHash(honest.final.theta), weightsHash(start.theta), 'the adapter trained');
  const leaves = [leafOf(honest.digests[0]), ...reexecute(stepper(), start, 0, 6)];
  assert.equal(new MerkleTree(leaves).root, honest.root, 'an independent re-execution reaches the same root');
  const bad = commitSteps(stepper(), start, {
    tamper: (step, st) => {
      if (step === 3) st.gpt.params[5] += 1e-3;
    },
  });
  const again = [leafOf(bad.digests[0]), ...reexecute(stepper(), start, 0, 6)];
  assert.notEqual(new MerkleTree(again).root, bad.root, 'a tampered adapter step changes the root');
  assert.ok(
    (trainer.gpt as LoraGPT).base.every((x, i) => x === base[i]),
    'the base is untouched',
  );
});

test(
  '3 peers fine-tune a LoRA adapter on a base fetched by CID: hashes agree, payloads small, base unchanged',
  {
    timeout: 150_000,
  },
  async () => {
    const t0 = Date.now();
    // A base checkpoint (any GPT-2 weights of the run's shape; here a seeded init).
    const g = new GPT(model, createRefKernels());
    g.init(99);
    const baseDir = join(root, 'base');
    const { weightsHash: baseHash } = await saveCheckpoint(baseDir, { config: model, params: g.params });
    const { decoded, params } = await buildManifestWithBase({
      ...opts,
      base: baseDir,
      dataDir: dataDirFor(root, 0),
      lora,
    });
    const m = decoded.manifest;
    assert.equal(m.base?.weightsHash, baseHash);
    assert.ok(m.base?.cid, 'the base is named by CID');
    const adapter = loraSpecs({ arch: 'gpt2', config: model }, lora).reduce((n, s) => n + s.size, 0);
    assert.equal(params, adapter, 'θ is the adapter');
    const run = join(root, 'run.json');
    writeFileSync(run, JSON.stringify(m));
    const specs = await Promise.all([0, 1, 2].map((i) => preparePeer(i, dataDirFor(root, i))));
    const addrs = specs.map((s) => s.addr);
    for (const s of specs)
      peers.push(
        spawnPeer(s, {
          run,
          bootstrap: addrs,
          genesisPeers: specs.map((x) => x.peerId),
          cacheDir: opts.cacheDir,
          validator: s.index === 0,
        }),
      );

    await waitForPeers(
      peers,
      '3 agreed rounds with all 3 updates among 3 LoRA peers',
      () =>
        agreedRounds(peers).filter(
          (r) => peers[0].reports.find((x) => x.event === 'round' && x.round === r)!.included >= 3,
        ).length >= 3,
      100_000,
    );
    const rounds = agreedRounds(peers);
    const reports = peers.flatMap((p) => p.reports.filter((r) => r.event === 'round'));
    // θ moved: the adapter of the last agreed round is not the genesis adapter.
    const last = peers[0].reports.find((r) => r.event === 'round' && r.round === rounds.at(-1))!;
    assert.notEqual(last.weightsHash, m.genesisWeightsHash, 'the adapter trained');
    // Base unchanged on every peer, every round.
    for (const r of reports) assert.equal(r.baseHash, baseHash, `peer report round ${r.round}: base hash`);
    // Payloads: the decided set's adapter messages, against what full-model messages would be.
    const codec = {
      chunk: m.hyper.codec.id === 'sparse' ? m.hyper.codec.chunk : 0,
      k: m.hyper.codec.id === 'sparse' ? m.hyper.codec.k : 0,
    };
    const fullMsg = encodedSize('sparse', paramCount(model), codec);
    const loraMsg = encodedSize('sparse', adapter, codec);
    for (const r of reports.filter((x) => x.included > 0)) {
      assert.equal(r.payloadBytes, r.included * loraMsg, `round ${r.round}: payload = ${r.included} adapter messages`);
    }
    // The validator scored the adapter updates.
    const scored = peers[0].reports.flatMap((r) => r.scored ?? []);
    assert.ok(
      scored.some((x) => x.entries.length >= 3 && x.entries.every((e) => Number.isFinite(e.score))),
      'the validator scored rounds of 3 adapter updates',
    );
    assert.ok(fullMsg / loraMsg >= 10, `adapter message ${loraMsg} B vs full ${fullMsg} B`);
    console.log(
      JSON.stringify({
        seconds: (Date.now() - t0) / 1000,
        agreed: rounds,
        adapterParams: adapter,
        fullParams: paramCount(model),
        loraMsgBytes: loraMsg,
        fullMsgBytes: fullMsg,
        valLoss: last.valLoss,
      }),
    );
  },
);
