/**
 * Building a run manifest from options: the model shape, hyperparameters, timing and storage
 * settings that `tessera run create` and `tessera demo` take on the command line (and tests
 * pass directly), turned into a validated manifest with its genesis weights hash. Either over
 * the embedded Brown corpus (tokenized into the cache directory) or over a dataset stored by
 * `tessera data add` (named by CID; the genesis state is added to the same store).
 *
 * Fine-tuning (issue 19): `base` names a checkpoint directory (`tessera train`/`import` output;
 * its shape is the run's model) that is added to the store as a state checkpoint, so the manifest
 * names it by CID and hash; without `lora` the run fully fine-tunes it (θ0 = base), with `lora`
 * it trains an adapter on it (θ0 = the adapter's PEFT init). `lora` without `base` adapts the
 * run's own init(seed) model, named by hash alone (every peer can rebuild it): the demo's case.
 */
import { loadCorpus, prepareDataset } from '../data/index.js';
import { loadKernels } from '../kernels/index.js';
import { GPT } from '../model/gpt.js';
import { loadCheckpoint, weightsHash } from '../model/checkpoint.js';
import type { ModelConfig } from '../model/config.js';
import { LoraGPT } from '../model/lora-model.js';
import { loraSpecs, type LoraConfig } from '../model/lora.js';
import { DEFAULT_ADAMW } from '../train/adamw.js';
import { DEFAULT_OUTER } from './outer.js';
import { createManifest, type ManifestInput } from './manifest.js';
import { openStore, parseCid } from '../store/index.js';
import { readManifest } from '../store/dataset.js';
import { publishState } from '../store/checkpoint.js';
import { Tokenizer } from '../data/tokenizer.js';
import { InvalidInputError } from '../util/errors.js';

/**
 * With the sparse codec the outer step defaults to SparseLoCo's recipe (plain averaging, no
 * outer momentum, error feedback decaying by 0.95) rather than DiLoCo's Nesterov 0.7/0.9: in
 * `tessera sim` (M=4, H=30, 1M tokens) it ends 12.6% above data-parallel against 27.1% for
 * Nesterov 0.7/0.9 with full error feedback, and the demo's loss stops jumping.
 */
export const SPARSELOCO_OUTER = { lr: 1, momentum: 0 } as const;
export const SPARSELOCO_EF_BETA = 0.95;

export interface RunCreateOptions {
  vocab: number;
  ctx: number;
  dim: number;
  layers: number;
  heads: number;
  batch: number;
  inner: number;
  lr: number;
  codec: 'fp32' | 'fp16' | 'int8' | 'sparse';
  shards: number;
  seed: number;
  trainMs: number;
  submitMs: number;
  commitMs: number;
  quorum: number;
  minPeers: number;
  maxMissed: number;
  cacheDir: string;
  name?: string;
  /** Default 'eager': overlap each round's exchange with the next round's inner steps. */
  overlap?: 'none' | 'delayed' | 'shift' | 'eager';
  outerLr?: number;
  outerMomentum?: number;
  /** Storage: replicas per item, checkpoint interval and retention (manifest `storage`). */
  replicas?: number;
  checkpointEvery?: number;
  keepCheckpoints?: number;
  /** Relay limits every public peer applies per reservation (manifest `network.relay`); defaults in networkParams(). */
  relay?: { maxBytes?: number; maxSeconds?: number; maxReservations?: number };
  /** How agreed updates are combined (default 'clip': norms clipped to the median first). */
  aggregate?: 'mean' | 'clip' | 'trimmed' | 'centered';
  /** Deadlines may stretch up to this factor (manifest timing.maxStretch; 1 = fixed deadlines). */
  maxStretch?: number;
  /** Audit by re-execution: validators re-run each update with this probability (needs overlap none/delayed). */
  audit?: number;
  /** With `audit`: GPU trainers are judged with this relative tolerance (hyper.audit.tolerance.rel; other fields default). */
  auditTolerance?: number;
  /** Fine-tune this checkpoint directory (its config is the model; needs dataDir: the base is added to its store). */
  base?: string;
  /** The store the base checkpoint is added to (a peer's DATA_DIR). */
  dataDir?: string;
  /** LoRA fine-tuning (rank, alpha, GPT-2 target modules) of `base`, or of init(seed) without one. */
  lora?: LoraConfig;
}

/** θ0, its hash and the manifest's base/lora fields, for a model and an optional loaded base. */
function genesisOf(o: RunCreateOptions, model: ModelConfig, base: { params: Float32Array; cid?: string } | null) {
  const kernels = loadKernels({ threads: 1 });
  const gpt = new GPT(model, kernels);
  gpt.init(o.seed);
  if (!o.lora && !base) return { theta: gpt.params, fields: {} };
  const b = base?.params ?? gpt.params;
  const baseField = { weightsHash: weightsHash(b), ...(base?.cid ? { cid: base.cid } : {}) };
  if (!o.lora) return { theta: b, fields: { base: baseField } };
  const lm = new LoraGPT(model, kernels, b, o.lora);
  lm.init(o.seed);
  return { theta: lm.params, fields: { base: baseField, lora: o.lora } };
}

/** Loads `o.base` and adds it to the store in `o.dataDir` (pinned); null without a base. */
async function addBase(
  o: RunCreateOptions,
): Promise<{ config: ModelConfig; params: Float32Array; cid: string } | null> {
  if (o.base === undefined) return null;
  if (o.dataDir === undefined) throw new InvalidInputError('a base checkpoint needs a store to add it to (dataDir)');
  const ck = await loadCheckpoint(o.base, { loadOptimizer: false });
  const store = await openStore(o.dataDir);
  try {
    const cid = await publishState(store, {
      config: ck.config,
      params: ck.params,
      momentum: new Float32Array(ck.params.length),
      runId: '0'.repeat(64),
      round: 0,
      snapshot: null,
    });
    await store.pin(cid);
    return { config: ck.config, params: ck.params, cid: cid.toString() };
  } finally {
    await store.stop();
  }
}

function hyperOf(o: RunCreateOptions): ManifestInput['hyper'] {
  const codec = o.codec === 'sparse' ? { id: 'sparse' as const, chunk: 1024, k: 64 } : { id: o.codec };
  return {
    innerSteps: o.inner,
    batch: o.batch,
    adamw: DEFAULT_ADAMW,
    schedule: { kind: 'constant', maxLr: o.lr, minLrFrac: 1, warmupSteps: 0, totalSteps: 1_000_000, decayFrac: 0.2 },
    outer: {
      ...(o.codec === 'sparse' ? SPARSELOCO_OUTER : DEFAULT_OUTER),
      ...(o.outerLr !== undefined ? { lr: o.outerLr } : {}),
      ...(o.outerMomentum !== undefined ? { momentum: o.outerMomentum } : {}),
    },
    codec,
    errorFeedback: o.codec === 'sparse' ? SPARSELOCO_EF_BETA : 0,
    overlap: o.overlap ?? 'eager',
    aggregate: o.aggregate ?? 'clip',
    ...(o.audit !== undefined
      ? { audit: { p: o.audit, ...(o.auditTolerance !== undefined ? { tolerance: { rel: o.auditTolerance } } : {}) } }
      : {}),
  };
}

function storageOf(o: RunCreateOptions): ManifestInput['storage'] {
  const s = {
    ...(o.replicas !== undefined ? { replicas: o.replicas } : {}),
    ...(o.checkpointEvery !== undefined ? { checkpointEvery: o.checkpointEvery } : {}),
    ...(o.keepCheckpoints !== undefined ? { keepCheckpoints: o.keepCheckpoints } : {}),
  };
  return Object.keys(s).length ? s : undefined;
}

/**
 * A run over a dataset stored by `tessera data add` in DATA_DIR's IPFS store: the manifest names
 * the dataset, tokenizer and genesis state by CID, so peers fetch them from each other and no
 * host has to serve them. The genesis state (θ0 and zero momentum) is added to the same store.
 */
export async function buildManifestFromStore(o: RunCreateOptions & { dataset: string; dataDir: string }) {
  const base = await addBase(o);
  const store = await openStore(o.dataDir);
  try {
    const cid = parseCid(o.dataset);
    const dsm = await readManifest(store, cid);
    const tokBytes = await store.cat(dsm.tokenizer.cid, { maxBytes: 64 << 20 });
    const tok = Tokenizer.fromJSON(JSON.parse(new TextDecoder().decode(tokBytes)));
    if (tok.hash() !== dsm.tokenizer.sha256)
      throw new InvalidInputError(`tokenizer ${dsm.tokenizer.cid} does not match the dataset manifest's hash`);
    const minTokens = Math.min(...dsm.train.shards.map((s) => s.tokens));
    if (dsm.train.shards.length === 0 || minTokens < o.ctx + 2)
      throw new InvalidInputError(
        `dataset ${cid} needs training shards of at least ${o.ctx + 2} tokens (smallest has ${minTokens})`,
      );
    const model = base?.config ?? {
      vocabSize: dsm.tokenizer.vocabSize,
      ctx: o.ctx,
      dim: o.dim,
      layers: o.layers,
      heads: o.heads,
    };
    if (model.vocabSize !== dsm.tokenizer.vocabSize)
      throw new InvalidInputError(
        `the base model has a vocabulary of ${model.vocabSize}, the dataset's tokenizer ${dsm.tokenizer.vocabSize}`,
      );
    const g = genesisOf(o, model, base);
    const genesis = await publishState(store, {
      config: model,
      params: g.theta,
      momentum: new Float32Array(g.theta.length),
      ...(o.lora ? { specs: loraSpecs({ arch: 'gpt2', config: model }, o.lora) } : {}),
      runId: '0'.repeat(64),
      round: 0,
      snapshot: null,
    });
    await store.pin(genesis);
    const input: ManifestInput = {
      version: 1,
      name: o.name ?? `${dsm.name}-d${o.dim}-l${o.layers}`,
      model,
      tokenizerSha256: tok.hash(),
      tokenizerCid: dsm.tokenizer.cid.toString(),
      dataset: { name: dsm.name, cid: cid.toString(), numShards: dsm.train.shards.length },
      hyper: hyperOf(o),
      genesisWeightsHash: weightsHash(g.theta),
      genesisCid: genesis.toString(),
      ...g.fields,
      ...(storageOf(o) ? { storage: storageOf(o) } : {}),
      ...(o.relay ? { network: { relay: o.relay } } : {}),
      seed: o.seed,
      timing: {
        trainMs: o.trainMs,
        submitMs: o.submitMs,
        commitMs: o.commitMs,
        quorum: o.quorum,
        minPeers: o.minPeers,
        maxMissedRounds: o.maxMissed,
        ...(o.maxStretch !== undefined ? { maxStretch: o.maxStretch } : {}),
      },
    };
    return { decoded: createManifest(input), params: g.theta.length };
  } finally {
    await store.stop();
  }
}

/** A run over the embedded Brown corpus; with `base` (async: the base is added to the store first). */
export async function buildManifestWithBase(o: RunCreateOptions) {
  const base = await addBase(o);
  return buildManifestOn(o, base);
}

export function buildManifest(o: RunCreateOptions) {
  if (o.base !== undefined)
    throw new InvalidInputError('a base checkpoint is added to a store: use buildManifestWithBase');
  return buildManifestOn(o, null);
}

function buildManifestOn(o: RunCreateOptions, base: { config: ModelConfig; params: Float32Array; cid: string } | null) {
  const model = base?.config ?? { vocabSize: o.vocab, ctx: o.ctx, dim: o.dim, layers: o.layers, heads: o.heads };
  const ds = prepareDataset({ corpus: loadCorpus('brown'), vocabSize: model.vocabSize, cacheDir: o.cacheDir });
  const g = genesisOf(o, model, base);
  const input: ManifestInput = {
    version: 1,
    name: o.name ?? `brown-d${o.dim}-l${o.layers}`,
    model,
    tokenizerSha256: ds.tokenizer.hash(),
    dataset: { name: 'brown', trainTokensSha256: ds.stats.train.sha256, numShards: o.shards },
    hyper: hyperOf(o),
    ...(storageOf(o) ? { storage: storageOf(o) } : {}),
    ...(o.relay ? { network: { relay: o.relay } } : {}),
    genesisWeightsHash: weightsHash(g.theta),
    ...g.fields,
    seed: o.seed,
    timing: {
      trainMs: o.trainMs,
      submitMs: o.submitMs,
      commitMs: o.commitMs,
      quorum: o.quorum,
      minPeers: o.minPeers,
      maxMissedRounds: o.maxMissed,
      ...(o.maxStretch !== undefined ? { maxStretch: o.maxStretch } : {}),
    },
  };
  return { decoded: createManifest(input), params: g.theta.length };
}
