/**
 * Llama checkpoints: the GPT-2 checkpoint format of checkpoint.ts with a Llama config.
 *   model.safetensors   one F32 tensor per llamaSpecs entry (Tessera names and shapes),
 *                       __metadata__ { format: "tessera-llama", weightsHash }
 *   config.json         { format: "tessera-llama", version: 1, model: LlamaConfig, meta,
 *                         weightsHash, optimizer: false, extraFiles? }
 *   tokenizer.json etc. (optional) companion files, written in the same atomic step
 *
 * A separate format name, not a union inside "tessera-gpt2", because every existing reader of
 * a GPT-2 checkpoint (training, the swarm, the IPFS store) builds a GPT from it: a Llama
 * checkpoint must be refused there by its format, not half-understood. Saving is atomic
 * (writeDirAtomic) and loading verifies config, tensor names, shapes, dtypes and the weights
 * hash before returning anything, exactly as checkpoint.ts does for GPT-2.
 */
import { join } from 'node:path';
import { z } from 'zod';
import { CorruptFileError, InvalidInputError } from '../util/errors.js';
import {
  CHECKPOINT_COMPANION_FILES,
  CHECKPOINT_FORMAT,
  CONFIG_FILE,
  MAX_CONFIG_BYTES,
  MODEL_FILE,
  OPTIMIZER_FILE,
  weightsHash,
  writeDirAtomic,
  writeTextFile,
} from './checkpoint.js';
import { readJsonFile } from './json-file.js';
import { LlamaConfigSchema, type LlamaConfig } from './llama-config.js';
import { llamaParamCount, llamaSpecs } from './llama.js';
import { SafetensorsReader, writeSafetensors } from './safetensors.js';

export const LLAMA_CHECKPOINT_FORMAT = 'tessera-llama';
export const LLAMA_CHECKPOINT_VERSION = 1;

const FILE_NAME = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/;

const LlamaCheckpointConfigSchema = z
  .object({
    format: z.literal(LLAMA_CHECKPOINT_FORMAT),
    version: z.literal(LLAMA_CHECKPOINT_VERSION),
    model: LlamaConfigSchema,
    meta: z.record(z.string(), z.unknown()),
    weightsHash: z.string().regex(/^[0-9a-f]{64}$/),
    optimizer: z.literal(false),
    extraFiles: z.array(z.string().regex(FILE_NAME)).max(1000).optional(),
  })
  .strict();

export interface LlamaCheckpointData {
  config: LlamaConfig;
  params: Float32Array;
  meta?: Record<string, unknown>;
  /** Companion files (plain names), e.g. { 'tokenizer.json': bytes }. */
  extraFiles?: Record<string, string | Uint8Array>;
}

export interface LoadedLlamaCheckpoint {
  config: LlamaConfig;
  params: Float32Array;
  meta: Record<string, unknown>;
  weightsHash: string;
}

function zodText(e: z.ZodError): string {
  return e.issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`).join('; ');
}

/** The `format` field of the checkpoint in `dir` ("tessera-gpt2" or "tessera-llama"). */
export async function checkpointFormat(
  dir: string,
): Promise<typeof CHECKPOINT_FORMAT | typeof LLAMA_CHECKPOINT_FORMAT> {
  const path = join(dir, CONFIG_FILE);
  const json = await readJsonFile(path, MAX_CONFIG_BYTES);
  const f = (json as { format?: unknown } | null)?.format;
  if (f === CHECKPOINT_FORMAT || f === LLAMA_CHECKPOINT_FORMAT) return f;
  throw new CorruptFileError(path, `not a Tessera checkpoint config (format ${JSON.stringify(f)})`);
}

/** Save a Llama checkpoint into `dir`, atomically replacing a previous one there. */
export async function saveLlamaCheckpoint(
  dir: string,
  data: LlamaCheckpointData,
): Promise<{ files: string[]; weightsHash: string }> {
  const c = LlamaConfigSchema.safeParse(data.config);
  if (!c.success) throw new InvalidInputError(`invalid Llama config: ${zodText(c.error)}`);
  const config = c.data;
  const P = llamaParamCount(config);
  if (!(data.params instanceof Float32Array) || data.params.length !== P)
    throw new InvalidInputError(`params has ${data.params?.length} floats but the config needs ${P}`);
  let meta: Record<string, unknown> = {};
  if (data.meta !== undefined) {
    if (data.meta === null || typeof data.meta !== 'object' || Array.isArray(data.meta))
      throw new InvalidInputError('meta must be a plain object');
    try {
      meta = JSON.parse(JSON.stringify(data.meta)) as Record<string, unknown>;
    } catch (e) {
      throw new InvalidInputError(`meta is not JSON-serialisable: ${(e as Error).message}`, { cause: e });
    }
  }
  const extra = data.extraFiles ?? {};
  for (const name of Object.keys(extra))
    if (!FILE_NAME.test(name) || [MODEL_FILE, CONFIG_FILE, OPTIMIZER_FILE].includes(name))
      throw new InvalidInputError(`extraFiles: invalid or reserved file name "${name}"`);
  const hash = weightsHash(data.params);
  const specs = llamaSpecs(config);
  const replaceable = new Set([MODEL_FILE, CONFIG_FILE, ...CHECKPOINT_COMPANION_FILES, ...Object.keys(extra)]);
  const files = await writeDirAtomic(dir, replaceable, async (tmp) => {
    const names: string[] = [];
    for (const [name, body] of Object.entries(extra)) {
      await writeTextFile(join(tmp, name), body);
      names.push(name);
    }
    await writeSafetensors(
      join(tmp, MODEL_FILE),
      specs.map((s) => ({ name: s.name, shape: s.shape, data: data.params.subarray(s.offset, s.offset + s.size) })),
      { format: LLAMA_CHECKPOINT_FORMAT, weightsHash: hash },
    );
    names.push(MODEL_FILE);
    const cfgFile: z.infer<typeof LlamaCheckpointConfigSchema> = {
      format: LLAMA_CHECKPOINT_FORMAT,
      version: LLAMA_CHECKPOINT_VERSION,
      model: config,
      meta,
      weightsHash: hash,
      optimizer: false,
      ...(Object.keys(extra).length ? { extraFiles: Object.keys(extra) } : {}),
    };
    await writeTextFile(join(tmp, CONFIG_FILE), JSON.stringify(cfgFile, null, 2) + '\n');
    names.push(CONFIG_FILE);
    return names;
  });
  return { files, weightsHash: hash };
}

/** Load and fully verify a Llama checkpoint; fresh arrays only when every check passed. */
export async function loadLlamaCheckpoint(dir: string): Promise<LoadedLlamaCheckpoint> {
  const cfgPath = join(dir, CONFIG_FILE);
  const r = LlamaCheckpointConfigSchema.safeParse(await readJsonFile(cfgPath, MAX_CONFIG_BYTES));
  if (!r.success)
    throw new CorruptFileError(cfgPath, `not a valid Tessera Llama checkpoint config: ${zodText(r.error)}`);
  const cfg = r.data;
  const path = join(dir, MODEL_FILE);
  const reader = await SafetensorsReader.open(path);
  try {
    const md = reader.header.metadata;
    if (md.format !== LLAMA_CHECKPOINT_FORMAT)
      throw new CorruptFileError(
        path,
        `metadata format is ${JSON.stringify(md.format)}, expected "${LLAMA_CHECKPOINT_FORMAT}"`,
      );
    if (md.weightsHash !== cfg.weightsHash)
      throw new CorruptFileError(
        path,
        `metadata weightsHash differs from config.json's (files from different checkpoints?)`,
      );
    const specs = llamaSpecs(cfg.model);
    const want = new Set(specs.map((s) => s.name));
    const extraT = reader.header.tensors.filter((t) => !want.has(t.name)).map((t) => t.name);
    if (extraT.length) throw new CorruptFileError(path, `unexpected tensor(s): ${extraT.slice(0, 10).join(', ')}`);
    for (const s of specs) {
      const t = reader.header.byName.get(s.name);
      if (!t) throw new CorruptFileError(path, `missing tensor "${s.name}"`);
      if (t.dtype !== 'F32') throw new CorruptFileError(path, `tensor "${s.name}" has dtype ${t.dtype}, expected F32`);
      if (t.shape.join(',') !== s.shape.join(','))
        throw new CorruptFileError(path, `tensor "${s.name}" has shape [${t.shape}], expected [${s.shape}]`);
    }
    const params = new Float32Array(llamaParamCount(cfg.model));
    for (const s of specs) await reader.readInto(s.name, params.subarray(s.offset, s.offset + s.size));
    const got = weightsHash(params);
    if (got !== cfg.weightsHash)
      throw new CorruptFileError(path, `weights hash mismatch: recorded ${cfg.weightsHash}, data hashes to ${got}`);
    return { config: cfg.model, params, meta: cfg.meta, weightsHash: got };
  } finally {
    await reader.close();
  }
}
