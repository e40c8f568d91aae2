/**
 * A fine-tuning run's base model on this peer (manifest `base`, issue 19), and the models whose
 * flat parameters are the run's θ.
 *
 * The base comes from, in this order: the checkpoint directory the operator passed
 * (`tessera node --base DIR`), the state checkpoint the manifest names by CID (fetched from peers
 * through the IPFS store, verified block by block), or init(seed) when the manifest's hash names
 * the run's own initial model. Whatever the source, its weights hash must be the manifest's
 * base.weightsHash before anything trains on it.
 *
 * θ's model: with `lora`, a LoraGPT (θ = the adapter, the base frozen inside, model/lora-model.ts);
 * otherwise a GPT (θ = all its weights: pre-training, or full fine-tuning from θ0 = base).
 */
import type { Kernels } from '../kernels/api.js';
import { loadCheckpoint, weightsHash } from '../model/checkpoint.js';
import { GPT } from '../model/gpt.js';
import { LoraGPT, type ThetaModel } from '../model/lora-model.js';
import type { TensorSpec } from '../model/params.js';
import { loadState } from '../store/checkpoint.js';
import { parseCid, type Store } from '../store/index.js';
import type { Manifest } from '../swarm/manifest.js';
import { InvalidInputError, MismatchError } from '../util/errors.js';

export interface BaseSource {
  /** The IPFS store a base named by CID is fetched through. */
  store?: Store;
  /** A local checkpoint directory of the base (`tessera node --base`). */
  path?: string;
  signal: AbortSignal;
  kernels: Kernels;
}

/**
 * The run's base weights, verified against the manifest's hash; null for a run without a base.
 * Cost: one checkpoint read or fetch (4 bytes per parameter) and one hash.
 */
export async function loadBase(m: Manifest, src: BaseSource): Promise<Float32Array | null> {
  if (!m.base) return null;
  let params: Float32Array;
  let from: string;
  if (src.path !== undefined) {
    params = (await loadCheckpoint(src.path, { expectConfig: m.model, loadOptimizer: false })).params;
    from = src.path;
  } else if (m.base.cid !== undefined) {
    if (!src.store) throw new InvalidInputError(`the base model ${m.base.cid} is named by CID: it needs a store`);
    params = (await loadState(src.store, parseCid(m.base.cid), m.model, { signal: src.signal })).params;
    from = m.base.cid;
  } else {
    const g = new GPT(m.model, src.kernels);
    g.init(m.seed);
    params = g.params;
    from = `init(seed ${m.seed})`;
  }
  const h = weightsHash(params);
  if (h !== m.base.weightsHash)
    throw new MismatchError(
      `the base model from ${from} hashes to ${h.slice(0, 12)}, the run's manifest names ${m.base.weightsHash.slice(0, 12)}` +
        (m.base.cid === undefined && src.path === undefined ? ' (pass the base checkpoint with --base DIR)' : ''),
    );
  return params;
}

/** A model whose `params` are θ: a LoraGPT over `base` with `lora`, else a GPT (θ0 set by initialTheta). */
export function thetaModel(m: Manifest, kernels: Kernels, base: Float32Array | null): ThetaModel {
  if (!m.lora) return new GPT(m.model, kernels);
  if (!base) throw new InvalidInputError('a LoRA run needs its base model loaded');
  return new LoraGPT(m.model, kernels, base, m.lora);
}

/** Sets θ0 on `model`: the adapter's init(seed) (LoRA), the base (full fine-tuning), or init(seed). */
export function initialTheta(m: Manifest, model: ThetaModel, base: Float32Array | null): void {
  if (model instanceof LoraGPT) model.init(m.seed);
  else if (base) model.params.set(base);
  else (model as GPT).init(m.seed);
}

/** θ's tensor table when it is not the GPT-2 layout (a LoRA adapter's), for state checkpoints; else undefined. */
export function thetaSpecs(model: ThetaModel): readonly TensorSpec[] | undefined {
  return model instanceof LoraGPT ? model.specs : undefined;
}
