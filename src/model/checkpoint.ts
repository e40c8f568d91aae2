/**
 * Checkpoints: a directory holding
 *   model.safetensors      one F32 tensor per paramSpecs entry (names and shapes as in
 *                          params.ts), __metadata__ { format: "tessera-gpt2", weightsHash }
 *   config.json            { format: "tessera-gpt2", version: 1, model: ModelConfig, meta,
 *                            weightsHash, optimizer: boolean }
 *   optimizer.safetensors  (optional) AdamW moments m, v as flat [P] tensors, __metadata__
 *                          { format: "tessera-adamw", step, weightsHash, momentsHash }
 *   tokenizer.json etc.    (optional) companion files passed as `extraFiles`, same atomic step
 *
 * Saving is atomic: everything is written and fsynced into a hidden temporary directory next
 * to the target, which is then renamed over it, so a crash or error never leaves a partial
 * checkpoint (the previous one, if any, stays intact until the final rename).
 *
 * Loading trusts nothing: config.json is validated with zod, every tensor must exist with
 * the right shape and dtype and nothing else may be present, and the SHA-256 of the weights
 * must match the hash recorded at save time. Fresh arrays are returned only after every check
 * passed, so a failed load has no effect.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { endianness } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { z } from 'zod';
import { CorruptFileError, InvalidInputError, MismatchError, TesseraError } from '../util/errors.js';
import { ModelConfigSchema, type ModelConfig } from './config.js';
import { paramCount, paramSpecs } from './params.js';
import { SafetensorsReader, writeSafetensors } from './safetensors.js';

export const CHECKPOINT_FORMAT = 'tessera-gpt2';
export const CHECKPOINT_VERSION = 1;
export const OPTIMIZER_FORMAT = 'tessera-adamw';
export const MODEL_FILE = 'model.safetensors';
export const CONFIG_FILE = 'config.json';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
/** config.json larger than this is rejected before parsing. */
export const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

export interface OptimizerState {
  /** AdamW first moment, same flat layout as params. */
  m: Float32Array;
  /** AdamW second moment, same flat layout as params. */
  v: Float32Array;
  /** Number of optimizer steps taken so far (the next step is step + 1). */
  step: number;
}

export interface CheckpointData {
  config: ModelConfig;
  params: Float32Array;
  optimizer?: OptimizerState;
  meta?: Record<string, unknown>;
  /**
   * Companion files written into the checkpoint directory in the same atomic step, e.g.
   * `{ 'tokenizer.json': tokenizer.serialize() }`. Plain file names only; not read back by
   * loadCheckpoint.
   */
  extraFiles?: Record<string, string | Uint8Array>;
}

/** Files that may sit in a checkpoint directory (and so may be replaced by the next save). */
export const CHECKPOINT_COMPANION_FILES: readonly string[] = ['tokenizer.json'];

export interface LoadedCheckpoint {
  config: ModelConfig;
  params: Float32Array;
  optimizer?: OptimizerState;
  meta: Record<string, unknown>;
  weightsHash: string;
}

export interface LoadOptions {
  /** If given, the checkpoint's config must equal it (MismatchError otherwise). */
  expectConfig?: ModelConfig;
  /** Load optimizer.safetensors when present (default true). */
  loadOptimizer?: boolean;
}

const HEX64 = /^[0-9a-f]{64}$/;

const CheckpointConfigSchema = z
  .object({
    format: z.literal(CHECKPOINT_FORMAT),
    version: z.literal(CHECKPOINT_VERSION),
    model: ModelConfigSchema,
    meta: z.record(z.string(), z.unknown()),
    weightsHash: z.string().regex(HEX64, 'must be 64 lowercase hex digits'),
    optimizer: z.boolean(),
    /** Names of the companion files saved with it (extraFiles). */
    extraFiles: z
      .array(z.string().regex(/^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/))
      .max(1000)
      .optional(),
  })
  .strict();

export type CheckpointConfigFile = z.infer<typeof CheckpointConfigSchema>;

const LITTLE_ENDIAN_HOST = endianness() === 'LE';

function leBytes(a: Float32Array): Uint8Array {
  if (LITTLE_ENDIAN_HOST) return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const out = new Uint8Array(a.byteLength);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < a.length; i++) dv.setFloat32(4 * i, a[i], true);
  return out;
}

/** SHA-256 (hex) of the flat float32 little-endian bytes of `params`. */
export function weightsHash(params: Float32Array): string {
  return createHash('sha256').update(leBytes(params)).digest('hex');
}

function momentsHash(m: Float32Array, v: Float32Array): string {
  return createHash('sha256').update(leBytes(m)).update(leBytes(v)).digest('hex');
}

/** Throws MismatchError unless the tokenizer's vocabulary size equals the model's. */
export function checkTokenizerMatches(config: ModelConfig, tokenizerVocabSize: number, path: string): void {
  if (config.vocabSize !== tokenizerVocabSize) {
    throw new MismatchError(
      `tokenizer ${path} has a vocabulary of ${tokenizerVocabSize} tokens but the model expects vocabSize ${config.vocabSize}`,
    );
  }
}

function describeZod(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`).join('; ');
}

function configDiff(a: ModelConfig, b: ModelConfig): string[] {
  const keys = ['vocabSize', 'ctx', 'dim', 'layers', 'heads'] as const;
  return keys.filter((k) => a[k] !== b[k]).map((k) => `${k} ${a[k]} (checkpoint) vs ${b[k]} (expected)`);
}

// ---------------------------------------------------------------------------------------------
// Atomic directory replacement, shared with the Hugging Face exporter.

async function fsyncPath(p: string): Promise<void> {
  try {
    const fh = await open(p, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch {
    // Directory fsync is not supported everywhere (e.g. Windows); best effort.
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

function pidAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const SIBLING_RE = /^\.(.+)\.(tmp|old)-(\d+)-[0-9a-f]{8}$/;

/**
 * Remove leftovers of saves to `base` that crashed (their process is gone): temporary
 * directories always; moved-aside previous versions only once `base` itself exists again.
 */
async function removeStaleSiblings(parent: string, base: string, targetExists: boolean): Promise<void> {
  let names: string[];
  try {
    names = await readdir(parent);
  } catch {
    return;
  }
  for (const n of names) {
    const m = SIBLING_RE.exec(n);
    if (!m || m[1] !== base || pidAlive(Number(m[3]))) continue;
    if (m[2] === 'tmp' || targetExists) await rm(join(parent, n), { recursive: true, force: true }).catch(() => {});
  }
}

/** Previous versions of `dir` moved aside by a save that crashed mid-swap (see writeDirAtomic). */
async function orphanedPrevious(dir: string): Promise<string[]> {
  const target = resolve(dir);
  try {
    return (await readdir(dirname(target)))
      .filter((n) => {
        const m = SIBLING_RE.exec(n);
        return m !== null && m[1] === basename(target) && m[2] === 'old';
      })
      .map((n) => join(dirname(target), n));
  } catch {
    return [];
  }
}

/**
 * Write a directory atomically: `fill(tmp)` writes its files into a fresh hidden temporary
 * directory next to `dir` and returns their names; then the temporary directory replaces
 * `dir`. If `dir` already exists it must be a directory containing only names from
 * `replaceable` (so that a typo can never wipe an unrelated directory). On any error the
 * temporary directory is removed and `dir` is left exactly as it was.
 */
export async function writeDirAtomic(
  dir: string,
  replaceable: ReadonlySet<string>,
  fill: (tmp: string) => Promise<string[]>,
): Promise<string[]> {
  const target = resolve(dir);
  const parent = dirname(target);
  const base = basename(target);
  if (!base || base === '.' || base === '..') throw new InvalidInputError(`invalid output directory "${dir}"`);

  // Refuse to replace something that is not ours before writing anything.
  if (await exists(target)) {
    const st = await stat(target);
    if (!st.isDirectory())
      throw new InvalidInputError(`${target} exists and is not a directory; refusing to replace it`);
    const foreign = (await readdir(target)).filter((n) => !replaceable.has(n));
    if (foreign.length > 0) {
      throw new InvalidInputError(
        `${target} already exists and holds files that this writer did not put there (${foreign.slice(0, 5).join(', ')}); refusing to replace it`,
      );
    }
  }

  await mkdir(parent, { recursive: true });
  await removeStaleSiblings(parent, base, await exists(target));
  const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
  const tmp = join(parent, `.${base}.tmp-${tag}`);
  const old = join(parent, `.${base}.old-${tag}`);
  await mkdir(tmp);
  let files: string[];
  try {
    files = await fill(tmp);
    await fsyncPath(tmp);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true }).catch(() => {});
    throw e;
  }

  // Swap in. POSIX cannot atomically exchange two non-empty directories, so move the old one
  // aside first, and move it back if the final rename fails.
  let movedOld = false;
  try {
    if (await exists(target)) {
      await rename(target, old);
      movedOld = true;
    }
    await rename(tmp, target);
  } catch (e) {
    if (movedOld) await rename(old, target).catch(() => {});
    await rm(tmp, { recursive: true, force: true }).catch(() => {});
    throw e;
  }
  await fsyncPath(parent);
  if (movedOld) await rm(old, { recursive: true, force: true }).catch(() => {});
  return files.map((f) => join(target, f));
}

// ---------------------------------------------------------------------------------------------

function validateForSave(data: CheckpointData): {
  config: ModelConfig;
  meta: Record<string, unknown>;
  extra: Record<string, string | Uint8Array>;
} {
  const c = ModelConfigSchema.safeParse(data.config);
  if (!c.success) throw new InvalidInputError(`invalid model config: ${describeZod(c.error)}`);
  const config = c.data;
  const P = paramCount(config);
  if (!(data.params instanceof Float32Array) || data.params.length !== P) {
    throw new InvalidInputError(`params has ${data.params?.length} floats but the config needs ${P}`);
  }
  if (data.optimizer) {
    const { m, v, step } = data.optimizer;
    if (!(m instanceof Float32Array) || m.length !== P)
      throw new InvalidInputError(`optimizer.m has ${m?.length} floats, expected ${P}`);
    if (!(v instanceof Float32Array) || v.length !== P)
      throw new InvalidInputError(`optimizer.v has ${v?.length} floats, expected ${P}`);
    if (!Number.isSafeInteger(step) || step < 0)
      throw new InvalidInputError(`optimizer.step must be a non-negative integer, got ${step}`);
  }
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
  for (const [name, body] of Object.entries(extra)) {
    if (
      !/^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/.test(name) ||
      [MODEL_FILE, CONFIG_FILE, OPTIMIZER_FILE].includes(name)
    ) {
      throw new InvalidInputError(`extraFiles: invalid or reserved file name "${name}"`);
    }
    if (typeof body !== 'string' && !(body instanceof Uint8Array))
      throw new InvalidInputError(`extraFiles["${name}"] must be a string or Uint8Array`);
  }
  return { config, meta, extra };
}

/**
 * Save a checkpoint into `dir`, atomically replacing any previous checkpoint there.
 * Returns the written file paths and the weights hash. The arrays are written as they are,
 * not copied: do not modify params or moments until the promise settles (a checkpoint saved
 * while training goes on would fail its hash check on load).
 */
export async function saveCheckpoint(
  dir: string,
  data: CheckpointData,
): Promise<{ files: string[]; weightsHash: string }> {
  const { config, meta, extra } = validateForSave(data);
  const hash = weightsHash(data.params);
  const specs = paramSpecs(config);
  const replaceable = new Set([
    MODEL_FILE,
    CONFIG_FILE,
    OPTIMIZER_FILE,
    ...CHECKPOINT_COMPANION_FILES,
    ...Object.keys(extra),
    ...(await previousExtraFiles(dir)),
  ]);
  const files = await writeDirAtomic(dir, replaceable, async (tmp) => {
    const names: string[] = [];
    for (const [name, body] of Object.entries(extra)) {
      await writeTextFile(join(tmp, name), body);
      names.push(name);
    }
    await writeSafetensors(
      join(tmp, MODEL_FILE),
      specs.map((s) => ({ name: s.name, shape: s.shape, data: data.params.subarray(s.offset, s.offset + s.size) })),
      { format: CHECKPOINT_FORMAT, weightsHash: hash },
    );
    names.push(MODEL_FILE);
    if (data.optimizer) {
      const { m, v, step } = data.optimizer;
      const P = data.params.length;
      await writeSafetensors(
        join(tmp, OPTIMIZER_FILE),
        [
          { name: 'm', shape: [P], data: m },
          { name: 'v', shape: [P], data: v },
        ],
        { format: OPTIMIZER_FORMAT, step: String(step), weightsHash: hash, momentsHash: momentsHash(m, v) },
      );
      names.push(OPTIMIZER_FILE);
    }
    const cfgFile: CheckpointConfigFile = {
      format: CHECKPOINT_FORMAT,
      version: CHECKPOINT_VERSION,
      model: config,
      meta,
      weightsHash: hash,
      optimizer: data.optimizer !== undefined,
      ...(Object.keys(extra).length ? { extraFiles: Object.keys(extra) } : {}),
    };
    await writeTextFile(join(tmp, CONFIG_FILE), JSON.stringify(cfgFile, null, 2) + '\n');
    names.push(CONFIG_FILE);
    return names;
  });
  return { files, weightsHash: hash };
}

/** The extraFiles recorded by the checkpoint now in `dir`, if it is a readable one; else []. */
async function previousExtraFiles(dir: string): Promise<string[]> {
  try {
    return (await readConfigFile(join(dir, CONFIG_FILE))).extraFiles ?? [];
  } catch {
    return [];
  }
}

/** Write a small file (text as UTF-8) and fsync it. */
export async function writeTextFile(path: string, body: string | Uint8Array): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(body);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function readConfigFile(path: string): Promise<CheckpointConfigFile> {
  let size: number;
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new CorruptFileError(path, 'not a regular file');
    size = st.size;
  } catch (e) {
    if (e instanceof TesseraError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new CorruptFileError(path, code === 'ENOENT' ? 'file is missing' : `cannot read (${code})`, { cause: e });
  }
  if (size > MAX_CONFIG_BYTES)
    throw new CorruptFileError(path, `file is ${size} bytes, over the ${MAX_CONFIG_BYTES}-byte cap`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(await readFile(path));
  } catch (e) {
    throw new CorruptFileError(path, `cannot read as UTF-8 text (${(e as Error).message})`, { cause: e });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CorruptFileError(path, `not valid JSON (${(e as Error).message})`, { cause: e });
  }
  if ((json as { format?: unknown } | null)?.format === 'tessera-llama')
    throw new InvalidInputError(
      `${path} is a Llama checkpoint (format "tessera-llama"); this reader takes GPT-2 checkpoints (see llama-checkpoint.ts)`,
    );
  const r = CheckpointConfigSchema.safeParse(json);
  if (!r.success) throw new CorruptFileError(path, `not a valid Tessera checkpoint config: ${describeZod(r.error)}`);
  return r.data;
}

function shapeStr(s: readonly number[]): string {
  return `[${s.join(',')}]`;
}

async function loadModelFile(path: string, config: ModelConfig, expectedHash: string): Promise<Float32Array> {
  const r = await SafetensorsReader.open(path);
  try {
    const md = r.header.metadata;
    if (md.format !== CHECKPOINT_FORMAT)
      throw new CorruptFileError(
        path,
        `metadata format is ${JSON.stringify(md.format)}, expected "${CHECKPOINT_FORMAT}"`,
      );
    if (md.weightsHash !== expectedHash) {
      throw new CorruptFileError(
        path,
        `metadata weightsHash ${md.weightsHash} differs from config.json's ${expectedHash} (files from different checkpoints?)`,
      );
    }
    const specs = paramSpecs(config);
    const want = new Set(specs.map((s) => s.name));
    const missing = specs.filter((s) => !r.header.byName.has(s.name)).map((s) => s.name);
    if (missing.length)
      throw new CorruptFileError(
        path,
        `missing tensor(s): ${missing.slice(0, 10).join(', ')}${missing.length > 10 ? ` and ${missing.length - 10} more` : ''}`,
      );
    const extra = r.header.tensors.filter((t) => !want.has(t.name)).map((t) => t.name);
    if (extra.length)
      throw new CorruptFileError(
        path,
        `unexpected tensor(s): ${extra.slice(0, 10).join(', ')}${extra.length > 10 ? ` and ${extra.length - 10} more` : ''}`,
      );
    for (const s of specs) {
      const t = r.header.byName.get(s.name)!;
      if (t.dtype !== 'F32') throw new CorruptFileError(path, `tensor "${s.name}" has dtype ${t.dtype}, expected F32`);
      if (shapeStr(t.shape) !== shapeStr(s.shape)) {
        throw new CorruptFileError(
          path,
          `tensor "${s.name}" has shape ${shapeStr(t.shape)}, expected ${shapeStr(s.shape)} for the config.json model`,
        );
      }
    }
    const params = new Float32Array(paramCount(config));
    for (const s of specs) await r.readInto(s.name, params.subarray(s.offset, s.offset + s.size));
    const got = weightsHash(params);
    if (got !== expectedHash) {
      throw new CorruptFileError(
        path,
        `weights hash mismatch: recorded ${expectedHash}, data hashes to ${got} (the tensor data is corrupted)`,
      );
    }
    return params;
  } finally {
    await r.close();
  }
}

async function loadOptimizerFile(path: string, P: number, hash: string): Promise<OptimizerState> {
  const r = await SafetensorsReader.open(path);
  try {
    const md = r.header.metadata;
    if (md.format !== OPTIMIZER_FORMAT)
      throw new CorruptFileError(
        path,
        `metadata format is ${JSON.stringify(md.format)}, expected "${OPTIMIZER_FORMAT}"`,
      );
    if (md.weightsHash !== hash)
      throw new CorruptFileError(path, `optimizer state belongs to weights ${md.weightsHash}, not ${hash}`);
    if (
      typeof md.step !== 'string' ||
      !/^(0|[1-9][0-9]{0,15})$/.test(md.step) ||
      !Number.isSafeInteger(Number(md.step))
    ) {
      throw new CorruptFileError(path, `metadata step ${JSON.stringify(md.step)} is not a non-negative integer`);
    }
    const names = r.header.tensors.map((t) => t.name).sort();
    if (names.join(',') !== 'm,v')
      throw new CorruptFileError(path, `expected exactly tensors m and v, found ${names.join(', ') || 'none'}`);
    for (const t of r.header.tensors) {
      if (t.dtype !== 'F32' || shapeStr(t.shape) !== shapeStr([P])) {
        throw new CorruptFileError(path, `tensor "${t.name}" is ${t.dtype}${shapeStr(t.shape)}, expected F32[${P}]`);
      }
    }
    const m = await r.readF32('m');
    const v = await r.readF32('v');
    const got = momentsHash(m, v);
    if (got !== md.momentsHash)
      throw new CorruptFileError(
        path,
        `moments hash mismatch: recorded ${md.momentsHash}, data hashes to ${got} (the tensor data is corrupted)`,
      );
    return { m, v, step: Number(md.step) };
  } finally {
    await r.close();
  }
}

/**
 * Load and fully verify a checkpoint. Throws CorruptFileError (naming the file and the problem)
 * or MismatchError (expectConfig differs); returns fresh arrays only when every check passed.
 */
export async function loadCheckpoint(dir: string, opts: LoadOptions = {}): Promise<LoadedCheckpoint> {
  const cfgPath = join(dir, CONFIG_FILE);
  if (!(await exists(dir))) {
    const orphans = await orphanedPrevious(dir);
    if (orphans.length) {
      throw new CorruptFileError(
        dir,
        `checkpoint directory is missing: a save was interrupted while replacing it; the previous checkpoint is in ${orphans.join(', ')} (rename it back to use it)`,
      );
    }
  }
  const cfg = await readConfigFile(cfgPath);
  if (opts.expectConfig) {
    const diff = configDiff(cfg.model, opts.expectConfig);
    if (diff.length) throw new MismatchError(`checkpoint ${dir} has a different model config: ${diff.join(', ')}`);
  }
  const params = await loadModelFile(join(dir, MODEL_FILE), cfg.model, cfg.weightsHash);
  let optimizer: OptimizerState | undefined;
  const optPath = join(dir, OPTIMIZER_FILE);
  if (cfg.optimizer) {
    if (opts.loadOptimizer !== false) optimizer = await loadOptimizerFile(optPath, params.length, cfg.weightsHash);
    else if (!(await exists(optPath)))
      throw new CorruptFileError(optPath, 'file is missing (config.json says the checkpoint has optimizer state)');
  } else if (await exists(optPath)) {
    throw new CorruptFileError(optPath, 'unexpected file: config.json says the checkpoint has no optimizer state');
  }
  return { config: cfg.model, params, optimizer, meta: cfg.meta, weightsHash: cfg.weightsHash };
}
