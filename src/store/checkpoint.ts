/**
 * Swarm state checkpoints as IPFS directories. A checkpoint is a UnixFS directory that is also a
 * normal Tessera checkpoint directory (`ipfs get <cid>` or `tessera data get <cid> --out DIR`,
 * then `tessera eval --checkpoint DIR`):
 *
 *   config.json          model config, weights hash, and meta {runId, round, snapshot}
 *   model.safetensors    θ, with GPT-2 tensor names (a LoRA run's θ: the adapter, with its
 *                        layers.L.MODULE.lora_A/B names; then not a loadable GPT checkpoint)
 *   outer.safetensors    the outer optimizer's momentum (one flat tensor)
 *   tokenizer.json       (optional) the run's tokenizer
 *
 * Encoding is deterministic (fixed file order, fixed chunking), so honest peers holding the
 * same state produce the same CID. Reading caps every file's size before fetching it and checks
 * the weights and momentum hashes, so a wrong or oversized checkpoint is refused, not loaded.
 */
import { createHash } from 'node:crypto';
import { CID } from 'multiformats/cid';
import { unixfs } from '@helia/unixfs';
import type { AbortOptions } from '@libp2p/interface';
import { z } from 'zod';
import { ModelConfigSchema, type ModelConfig } from '../model/config.js';
import { paramCount, paramSpecs, type TensorSpec } from '../model/params.js';
import { CHECKPOINT_FORMAT, CHECKPOINT_VERSION, weightsHash } from '../model/checkpoint.js';
import { decodeSafetensors, encodeHeader, encodeSafetensors } from '../model/safetensors.js';
import { TesseraError } from '../util/errors.js';
import { MissingBlockError, type Store } from './index.js';

export const OUTER_FILE = 'outer.safetensors';
const MAX_JSON_BYTES = 1 << 20;
const MAX_TOKENIZER_BYTES = 64 << 20;

export class CheckpointCidError extends TesseraError {
  constructor(
    readonly cid: string,
    message: string,
  ) {
    super('BAD_CHECKPOINT', `checkpoint ${cid}: ${message}`);
  }
}

export const StateMetaSchema = z
  .object({
    runId: z.string().regex(/^[0-9a-f]{64}$/),
    round: z.number().int().min(0),
    /** The round snapshot (round.ts SnapshotSchema), checked by the caller. */
    snapshot: z.unknown(),
    momentumHash: z.string().regex(/^[0-9a-f]{64}$/),
  })
  .strict();
export type StateMeta = z.infer<typeof StateMetaSchema>;

const ConfigSchema = z
  .object({
    format: z.literal(CHECKPOINT_FORMAT),
    version: z.literal(CHECKPOINT_VERSION),
    model: ModelConfigSchema,
    meta: StateMetaSchema,
    weightsHash: z.string().regex(/^[0-9a-f]{64}$/),
    optimizer: z.literal(false),
    extraFiles: z.array(z.string()).max(8).optional(),
  })
  .strict();

function f32Hash(a: Float32Array): string {
  return createHash('sha256')
    .update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength))
    .digest('hex');
}

export interface StateToPublish {
  config: ModelConfig;
  params: Float32Array;
  momentum: Float32Array;
  runId: string;
  round: number;
  snapshot: unknown;
  tokenizerJson?: Uint8Array;
  /** θ's tensor table when θ is not the GPT-2 layout of `config` (a LoRA run's adapter). */
  specs?: readonly TensorSpec[];
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * A safetensors file's bytes as pieces: its header, then each tensor's values as a view (no
 * copy: at GPT-2 small a concatenated file is 0.5 GB, twice over with the copy UnixFS was
 * handed). The importer re-chunks its input, so the blocks and the CID are those of the whole file.
 */
function safetensorsPieces(
  tensors: { name: string; shape: readonly number[]; data: Float32Array }[],
  metadata: Record<string, string>,
): Uint8Array<ArrayBuffer>[] {
  if (!LITTLE_ENDIAN) return [new Uint8Array(encodeSafetensors(tensors, metadata))];
  const out: Uint8Array<ArrayBuffer>[] = [new Uint8Array(encodeHeader(tensors, metadata))];
  for (const t of tensors) out.push(new Uint8Array(t.data.buffer as ArrayBuffer, t.data.byteOffset, t.data.byteLength));
  return out;
}

/** Encodes the files of a state checkpoint (deterministic bytes; the arrays must not change until they are consumed). */
export function stateFiles(s: StateToPublish): { path: string; content: Uint8Array<ArrayBuffer>[] }[] {
  const hash = weightsHash(s.params);
  const model = safetensorsPieces(
    (s.specs ?? paramSpecs(s.config)).map((p) => ({
      name: p.name,
      shape: p.shape,
      data: s.params.subarray(p.offset, p.offset + p.size),
    })),
    { format: CHECKPOINT_FORMAT, weightsHash: hash },
  );
  const outer = safetensorsPieces([{ name: 'momentum', shape: [s.momentum.length], data: s.momentum }], {
    format: 'tessera-outer',
    weightsHash: hash,
  });
  const config = {
    format: CHECKPOINT_FORMAT,
    version: CHECKPOINT_VERSION,
    model: s.config,
    meta: { runId: s.runId, round: s.round, snapshot: s.snapshot, momentumHash: f32Hash(s.momentum) },
    weightsHash: hash,
    optimizer: false as const,
    extraFiles: [OUTER_FILE, ...(s.tokenizerJson ? ['tokenizer.json'] : [])],
  };
  const files = [
    { path: 'config.json', content: [new TextEncoder().encode(JSON.stringify(config, null, 2) + '\n')] },
    { path: 'model.safetensors', content: model },
    { path: OUTER_FILE, content: outer },
  ];
  if (s.tokenizerJson) files.push({ path: 'tokenizer.json', content: [new Uint8Array(s.tokenizerJson)] });
  return files;
}

/**
 * The CID publishState gives a state, computed without storing anything: the same importer and
 * settings over a blockstore that keeps no block, so only hashing (no disk, no event-loop turn
 * per block). What a validator's score report names, at once, however far the loaded store's
 * publishing queue trails (issue 16: publishes took 5-15 s each at load 20, the queue grew by
 * minutes, and every report waited 30 s for its CID, then signed without it).
 */
export async function stateCid(s: StateToPublish): Promise<CID> {
  const hashOnly = {
    put: async (cid: CID) => cid,
    get: () => {
      throw new CheckpointCidError('?', 'hash-only import reads no block');
    },
    has: async () => false,
  };
  let root: CID | undefined;
  for await (const r of unixfs({ blockstore: hashOnly as never }).addAll(stateFiles(s), { wrapWithDirectory: true }))
    root = r.cid;
  if (!root) throw new CheckpointCidError('?', 'import produced no root');
  return root;
}

/** Adds a state checkpoint to the store; returns the directory CID. */
export async function publishState(store: Store, s: StateToPublish, options: AbortOptions = {}): Promise<CID> {
  let root: CID | undefined;
  for await (const r of store.fs.addAll(stateFiles(s), { wrapWithDirectory: true, signal: options.signal }))
    root = r.cid;
  if (!root) throw new CheckpointCidError('?', 'import produced no root');
  return root;
}

async function readFile(store: Store, cid: CID, path: string, max: number, options: AbortOptions): Promise<Uint8Array> {
  let size: bigint;
  try {
    const st = await store.fs.stat(cid, { path, signal: options.signal });
    if (st.type !== 'file' && st.type !== 'raw')
      throw new CheckpointCidError(cid.toString(), `${path} is a ${st.type}, not a file`);
    size = BigInt(st.size);
  } catch (err) {
    if (err instanceof CheckpointCidError) throw err;
    if (options.signal?.aborted) throw new MissingBlockError(`${cid}/${path}`, 'not fetched before the deadline');
    throw new CheckpointCidError(cid.toString(), `cannot read ${path}: ${(err as Error).message}`);
  }
  if (size > BigInt(max))
    throw new CheckpointCidError(cid.toString(), `${path} is ${size} bytes, over the ${max}-byte limit`);
  const out = new Uint8Array(Number(size));
  let o = 0;
  try {
    for await (const chunk of store.fs.cat(cid, { path, signal: options.signal })) {
      if (o + chunk.length > out.length)
        throw new CheckpointCidError(cid.toString(), `${path} is longer than its recorded size`);
      out.set(chunk, o);
      o += chunk.length;
    }
  } catch (err) {
    if (err instanceof CheckpointCidError) throw err;
    if (options.signal?.aborted) throw new MissingBlockError(`${cid}/${path}`, 'not fetched before the deadline');
    throw new CheckpointCidError(cid.toString(), `cannot read ${path}: ${(err as Error).message}`);
  }
  if (o !== out.length) throw new CheckpointCidError(cid.toString(), `${path} is shorter than its recorded size`);
  return out;
}

export interface LoadedState {
  config: ModelConfig;
  params: Float32Array;
  momentum: Float32Array;
  meta: StateMeta;
  weightsHash: string;
}

/** Fetches (from peers if needed) and verifies a state checkpoint; `expect` pins the model shape. */
export async function loadState(
  store: Store,
  cid: CID,
  expect: ModelConfig,
  options: AbortOptions & { specs?: readonly TensorSpec[] } = {},
): Promise<LoadedState> {
  const specs = options.specs ?? paramSpecs(expect);
  const c = cid.toString();
  let cfgValue: unknown;
  try {
    cfgValue = JSON.parse(
      new TextDecoder('utf-8', { fatal: true }).decode(
        await readFile(store, cid, 'config.json', MAX_JSON_BYTES, options),
      ),
    );
  } catch (err) {
    if (err instanceof TesseraError) throw err;
    throw new CheckpointCidError(c, `config.json is not JSON: ${(err as Error).message}`);
  }
  const parsed = ConfigSchema.safeParse(cfgValue);
  if (!parsed.success)
    throw new CheckpointCidError(
      c,
      `config.json: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
    );
  const cfg = parsed.data;
  for (const k of ['vocabSize', 'ctx', 'dim', 'layers', 'heads'] as const) {
    if (cfg.model[k] !== expect[k])
      throw new CheckpointCidError(c, `model ${k} is ${cfg.model[k]}, the run has ${expect[k]}`);
  }
  const P = options.specs ? specs.reduce((n, t) => Math.max(n, t.offset + t.size), 0) : paramCount(expect);
  const model = decodeSafetensors(
    await readFile(store, cid, 'model.safetensors', 4 * P + MAX_JSON_BYTES, options),
    `${c}/model.safetensors`,
  );
  const params = new Float32Array(P);
  for (const s of specs) {
    const t = model.tensors.get(s.name);
    if (!t || t.data.length !== s.size)
      throw new CheckpointCidError(c, `model.safetensors lacks tensor ${s.name} of ${s.size} floats`);
    params.set(t.data, s.offset);
  }
  if (model.tensors.size !== specs.length) throw new CheckpointCidError(c, 'model.safetensors has unexpected tensors');
  const wh = weightsHash(params);
  if (wh !== cfg.weightsHash)
    throw new CheckpointCidError(
      c,
      `weights hash to ${wh.slice(0, 12)}, config.json says ${cfg.weightsHash.slice(0, 12)}`,
    );
  const outer = decodeSafetensors(
    await readFile(store, cid, OUTER_FILE, 4 * P + MAX_JSON_BYTES, options),
    `${c}/${OUTER_FILE}`,
  );
  const mt = outer.tensors.get('momentum');
  if (!mt || mt.data.length !== P)
    throw new CheckpointCidError(c, `${OUTER_FILE} lacks a momentum tensor of ${P} floats`);
  const momentum = Float32Array.from(mt.data);
  if (f32Hash(momentum) !== cfg.meta.momentumHash)
    throw new CheckpointCidError(c, 'momentum does not match its recorded hash');
  return { config: cfg.model, params, momentum, meta: cfg.meta, weightsHash: wh };
}

/** The tokenizer.json stored in a checkpoint, if any. */
export async function loadStateTokenizer(store: Store, cid: CID, options: AbortOptions = {}): Promise<Uint8Array> {
  return await readFile(store, cid, 'tokenizer.json', MAX_TOKENIZER_BYTES, options);
}
