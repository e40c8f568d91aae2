/**
 * Import a Hugging Face model directory (GPT2LMHeadModel or LlamaForCausalLM) into Tessera's
 * flat parameter layout, and write it as a Tessera checkpoint.
 *
 * What is read, and what is checked before any output exists:
 *   config.json                      size-capped, zod-checked; model_type / architectures must
 *                                    be GPT-2 or Llama (anything else: UnsupportedModelError),
 *                                    and every architectural switch Tessera does not implement
 *                                    (another activation, biases on a Llama, yarn RoPE, ...) is
 *                                    refused by name rather than silently computed differently
 *   model.safetensors, or, when it   headers validated by SafetensorsReader (header cap, byte
 *   is absent (HF's order),          sizes consistent with shapes and file size); an index may
 *   model.safetensors.index.json     name only plain files in DIR, each must exist, and the
 *     + the shards it names          index and the shards must agree tensor by tensor
 *   every tensor                     present, with exactly the shape config.json implies, and
 *                                    a float dtype (F32, F16 or BF16; F16/BF16 are converted to
 *                                    F32); a tensor the config does not account for is a
 *                                    mismatch (e.g. a config with fewer layers than the files)
 *   tokenizer.json (optional)        copied as is into the checkpoint, size-capped
 * Parameters are allocated only after all shapes passed (so their size is bounded by the files'
 * sizes), and the checkpoint is written by writeDirAtomic: a failure leaves no output behind.
 *
 * GPT-2 stores its projections as Conv1D [in, out]; they are transposed to Tessera's [out, in].
 * Llama's nn.Linear [out, in] needs no transpose. Buffers HF sometimes saves (GPT-2's attn.bias
 * causal masks, old Llamas' rotary_emb.inv_freq) are ignored; a saved lm_head.weight under tied
 * embeddings must equal the embedding bit for bit.
 */
import { readFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { z } from 'zod';
import { CorruptFileError, InvalidInputError, MismatchError, TesseraError } from '../util/errors.js';
import { saveCheckpoint } from './checkpoint.js';
import { ModelConfigSchema, type ModelConfig } from './config.js';
import { transpose } from './hf.js';
import { hfLlamaName } from './hf-llama.js';
import { pathExists, readJsonFile } from './json-file.js';
import { saveLlamaCheckpoint } from './llama-checkpoint.js';
import { LlamaConfigSchema, type LlamaConfig, type RopeScaling } from './llama-config.js';
import { llamaParamCount, llamaSpecs } from './llama.js';
import { paramCount, paramSpecs } from './params.js';
import { SafetensorsReader, type DType, type TensorInfo } from './safetensors.js';

/** The model directory holds an architecture (or an option of one) that Tessera does not implement. */
export class UnsupportedModelError extends TesseraError {
  constructor(message: string) {
    super('UNSUPPORTED_MODEL', message);
  }
}

export const MAX_HF_CONFIG_BYTES = 4 * 1024 * 1024;
export const MAX_INDEX_BYTES = 64 * 1024 * 1024;
export const MAX_TOKENIZER_BYTES = 64 * 1024 * 1024;
export const MAX_SHARDS = 10_000;
/** Largest model imported (floats): 2^31, i.e. 8 GiB of float32 parameters. */
export const MAX_IMPORT_PARAMS = 2 ** 31;
/** Dtypes accepted for weights; F16 and BF16 are converted to F32. */
export const IMPORT_DTYPES: readonly DType[] = ['F32', 'F16', 'BF16'];

export type HFModelConfig = { arch: 'gpt2'; config: ModelConfig } | { arch: 'llama'; config: LlamaConfig };

export interface ImportReport {
  arch: 'gpt2' | 'llama';
  /** The weight files read, relative to the source directory. */
  files: string[];
  sharded: boolean;
  tensors: number;
  params: number;
  /** Source tensors per dtype, e.g. { BF16: 19 }. */
  dtypes: Record<string, number>;
  /** True when any tensor was converted from F16/BF16 to F32. */
  converted: boolean;
  /** Tensors in the files that were skipped on purpose (mask buffers, a tied lm_head). */
  ignored: string[];
}

export type ImportedHF = HFModelConfig & { params: Float32Array; report: ImportReport };

const int = z.number().int().min(1).max(Number.MAX_SAFE_INTEGER);

const HFGpt2Schema = z
  .object({
    vocab_size: int,
    n_positions: int,
    n_embd: int,
    n_layer: int,
    n_head: int,
    n_inner: int.nullable().optional(),
    activation_function: z.string().optional(),
    layer_norm_epsilon: z.number().positive().optional(),
    tie_word_embeddings: z.boolean().optional(),
    scale_attn_weights: z.boolean().optional(),
    scale_attn_by_inverse_layer_idx: z.boolean().optional(),
    add_cross_attention: z.boolean().optional(),
  })
  .passthrough();

const HFLlamaSchema = z
  .object({
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int.nullable().optional(),
    head_dim: int.nullable().optional(),
    max_position_embeddings: int,
    rms_norm_eps: z.number().positive().optional(),
    rope_theta: z.number().positive().optional(),
    rope_scaling: z.record(z.string(), z.unknown()).nullable().optional(),
    hidden_act: z.string().optional(),
    attention_bias: z.boolean().optional(),
    mlp_bias: z.boolean().optional(),
    tie_word_embeddings: z.boolean().optional(),
  })
  .passthrough();

const IndexSchema = z
  .object({
    metadata: z.record(z.string(), z.unknown()).optional(),
    weight_map: z.record(z.string(), z.string()),
  })
  .passthrough();

/** A shard name an index may use: a plain file in the model directory. */
const SHARD_NAME = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$/;

function zodText(e: z.ZodError): string {
  return e.issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`).join('; ');
}

function list(names: readonly string[], n = 8): string {
  return names.slice(0, n).join(', ') + (names.length > n ? ` and ${names.length - n} more` : '');
}

/**
 * Map a parsed config.json onto a Tessera config. Throws UnsupportedModelError for other
 * architectures or options, CorruptFileError for a malformed config (path names the file).
 */
export function parseHFConfig(json: unknown, path = 'config.json'): HFModelConfig {
  if (json === null || typeof json !== 'object' || Array.isArray(json))
    throw new CorruptFileError(path, 'config.json is not a JSON object');
  const raw = json as Record<string, unknown>;
  const modelType = typeof raw.model_type === 'string' ? raw.model_type : undefined;
  const archs = Array.isArray(raw.architectures) ? raw.architectures.filter((a) => typeof a === 'string') : [];
  const kind =
    modelType === 'gpt2' || (modelType === undefined && archs.includes('GPT2LMHeadModel'))
      ? 'gpt2'
      : modelType === 'llama' || (modelType === undefined && archs.includes('LlamaForCausalLM'))
        ? 'llama'
        : null;
  const supported = 'supported: GPT2LMHeadModel (model_type "gpt2") and LlamaForCausalLM (model_type "llama")';
  if (kind === null)
    throw new UnsupportedModelError(
      `${path}: model_type ${JSON.stringify(modelType ?? null)} (architectures ${JSON.stringify(archs)}) is not supported; ${supported}`,
    );
  const head = kind === 'gpt2' ? 'GPT2LMHeadModel' : 'LlamaForCausalLM';
  if (archs.length > 0 && !archs.includes(head))
    throw new UnsupportedModelError(`${path}: architectures ${JSON.stringify(archs)} is not ${head}; ${supported}`);
  return kind === 'gpt2' ? parseGpt2(raw, path) : parseLlama(raw, path);
}

function parseGpt2(raw: Record<string, unknown>, path: string): HFModelConfig {
  const r = HFGpt2Schema.safeParse(raw);
  if (!r.success) throw new CorruptFileError(path, `not a valid GPT2Config: ${zodText(r.error)}`);
  const c = r.data;
  const refuse = (what: string) => new UnsupportedModelError(`${path}: GPT-2 with ${what} is not supported`);
  const act = c.activation_function ?? 'gelu_new';
  if (act !== 'gelu_new' && act !== 'gelu_pytorch_tanh')
    throw refuse(`activation_function "${act}" (Tessera implements the tanh GELU, "gelu_new")`);
  const eps = c.layer_norm_epsilon ?? 1e-5;
  if (Math.abs(eps - 1e-5) > 1e-12) throw refuse(`layer_norm_epsilon ${eps} (Tessera's LayerNorm uses 1e-5)`);
  if (c.n_inner != null && c.n_inner !== 4 * c.n_embd) throw refuse(`n_inner ${c.n_inner} ≠ 4·n_embd`);
  if (c.tie_word_embeddings === false) throw refuse('untied embeddings (tie_word_embeddings false)');
  if (c.scale_attn_weights === false) throw refuse('scale_attn_weights false');
  if (c.scale_attn_by_inverse_layer_idx === true) throw refuse('scale_attn_by_inverse_layer_idx');
  if (c.add_cross_attention === true) throw refuse('cross-attention');
  const cfg = { vocabSize: c.vocab_size, ctx: c.n_positions, dim: c.n_embd, layers: c.n_layer, heads: c.n_head };
  const m = ModelConfigSchema.safeParse(cfg);
  if (!m.success) throw new UnsupportedModelError(`${path}: GPT-2 config out of Tessera's range: ${zodText(m.error)}`);
  return { arch: 'gpt2', config: m.data };
}

function ropeScaling(s: Record<string, unknown> | null | undefined, path: string): RopeScaling | null {
  if (s == null) return null;
  const type = s.rope_type ?? s.type;
  const num = (k: string): number => {
    const v = s[k];
    if (typeof v !== 'number' || !Number.isFinite(v))
      throw new CorruptFileError(path, `rope_scaling.${k} must be a number, got ${JSON.stringify(v)}`);
    return v;
  };
  if (type === 'default') return null;
  if (type === 'linear') return { type: 'linear', factor: num('factor') };
  if (type === 'llama3')
    return {
      type: 'llama3',
      factor: num('factor'),
      lowFreqFactor: num('low_freq_factor'),
      highFreqFactor: num('high_freq_factor'),
      originalMaxPositions: num('original_max_position_embeddings'),
    };
  throw new UnsupportedModelError(
    `${path}: rope_scaling type ${JSON.stringify(type)} is not supported (supported: default, linear, llama3)`,
  );
}

function parseLlama(raw: Record<string, unknown>, path: string): HFModelConfig {
  const r = HFLlamaSchema.safeParse(raw);
  if (!r.success) throw new CorruptFileError(path, `not a valid LlamaConfig: ${zodText(r.error)}`);
  const c = r.data;
  const refuse = (what: string) => new UnsupportedModelError(`${path}: Llama with ${what} is not supported`);
  const act = c.hidden_act ?? 'silu';
  if (act !== 'silu') throw refuse(`hidden_act "${act}" (Tessera implements SwiGLU with silu)`);
  if (c.attention_bias === true) throw refuse('attention_bias');
  if (c.mlp_bias === true) throw refuse('mlp_bias');
  const heads = c.num_attention_heads;
  const headDim = c.head_dim ?? c.hidden_size / heads;
  if (!Number.isInteger(headDim))
    throw new CorruptFileError(path, `hidden_size ${c.hidden_size} is not divisible by num_attention_heads ${heads}`);
  const cfg: LlamaConfig = {
    arch: 'llama',
    vocabSize: c.vocab_size,
    ctx: c.max_position_embeddings,
    dim: c.hidden_size,
    layers: c.num_hidden_layers,
    heads,
    kvHeads: c.num_key_value_heads ?? heads,
    headDim,
    hidden: c.intermediate_size,
    normEps: c.rms_norm_eps ?? 1e-6,
    ropeTheta: c.rope_theta ?? 10000,
    ropeScaling: ropeScaling(c.rope_scaling, path),
    tiedEmbeddings: c.tie_word_embeddings ?? false,
  };
  const m = LlamaConfigSchema.safeParse(cfg);
  if (!m.success) throw new UnsupportedModelError(`${path}: Llama config out of Tessera's range: ${zodText(m.error)}`);
  return { arch: 'llama', config: m.data };
}

/** One tensor Tessera needs: its HF name, the shape HF stores, where it goes in the flat buffer. */
interface Wanted {
  hf: string;
  shape: readonly number[];
  offset: number;
  size: number;
  /** Stored as [in, out] (GPT-2 Conv1D): transpose [rows=in, cols=out] into [out, in]. */
  transpose?: [number, number];
}

const GPT2_NAMES: Record<string, [string, boolean]> = {
  'ln1.w': ['ln_1.weight', false],
  'ln1.b': ['ln_1.bias', false],
  'attn.qkv.w': ['attn.c_attn.weight', true],
  'attn.qkv.b': ['attn.c_attn.bias', false],
  'attn.proj.w': ['attn.c_proj.weight', true],
  'attn.proj.b': ['attn.c_proj.bias', false],
  'ln2.w': ['ln_2.weight', false],
  'ln2.b': ['ln_2.bias', false],
  'mlp.fc.w': ['mlp.c_fc.weight', true],
  'mlp.fc.b': ['mlp.c_fc.bias', false],
  'mlp.proj.w': ['mlp.c_proj.weight', true],
  'mlp.proj.b': ['mlp.c_proj.bias', false],
};

function gpt2Wanted(cfg: ModelConfig, prefix: string): Wanted[] {
  return paramSpecs(cfg).map((s) => {
    const top: Record<string, string> = {
      wte: 'wte.weight',
      wpe: 'wpe.weight',
      'lnf.w': 'ln_f.weight',
      'lnf.b': 'ln_f.bias',
    };
    if (top[s.name]) return { hf: prefix + top[s.name], shape: s.shape, offset: s.offset, size: s.size };
    const m = /^h\.(\d+)\.(.+)$/.exec(s.name)!;
    const [name, conv] = GPT2_NAMES[m[2]];
    const hf = `${prefix}h.${m[1]}.${name}`;
    if (!conv) return { hf, shape: s.shape, offset: s.offset, size: s.size };
    const [out, inp] = s.shape;
    return { hf, shape: [inp, out], offset: s.offset, size: s.size, transpose: [inp, out] };
  });
}

function llamaWanted(cfg: LlamaConfig): Wanted[] {
  return llamaSpecs(cfg).map((s) => ({ hf: hfLlamaName(s.name), shape: s.shape, offset: s.offset, size: s.size }));
}

/** Where each tensor of the model lives: name → (reader, info), built from one file or an index. */
class WeightSource {
  private constructor(
    readonly files: string[],
    readonly sharded: boolean,
    readonly readers: SafetensorsReader[],
    readonly where: Map<string, { reader: SafetensorsReader; info: TensorInfo }>,
  ) {}

  static async open(dir: string): Promise<WeightSource> {
    const indexPath = join(dir, 'model.safetensors.index.json');
    const single = join(dir, 'model.safetensors');
    const readers: SafetensorsReader[] = [];
    const where = new Map<string, { reader: SafetensorsReader; info: TensorInfo }>();
    try {
      // Hugging Face's loader takes model.safetensors before an index; so do we.
      if (!(await pathExists(single)) && (await pathExists(indexPath))) {
        const r = IndexSchema.safeParse(await readJsonFile(indexPath, MAX_INDEX_BYTES));
        if (!r.success) throw new CorruptFileError(indexPath, `not a valid safetensors index: ${zodText(r.error)}`);
        const map = r.data.weight_map;
        const shards = [...new Set(Object.values(map))].sort();
        if (shards.length === 0) throw new CorruptFileError(indexPath, 'weight_map is empty');
        if (shards.length > MAX_SHARDS)
          throw new CorruptFileError(indexPath, `names ${shards.length} shards, over the ${MAX_SHARDS} cap`);
        for (const s of shards)
          if (!SHARD_NAME.test(s) || s === 'model.safetensors.index.json')
            throw new CorruptFileError(indexPath, `shard name ${JSON.stringify(s)} is not a plain file name in ${dir}`);
        const missing = [];
        for (const s of shards) if (!(await pathExists(join(dir, s)))) missing.push(s);
        if (missing.length)
          throw new CorruptFileError(indexPath, `names shard file(s) that do not exist in ${dir}: ${list(missing)}`);
        for (const s of shards) {
          const reader = await SafetensorsReader.open(join(dir, s));
          readers.push(reader);
          for (const info of reader.header.tensors) {
            if (map[info.name] !== s)
              throw new CorruptFileError(
                reader.path,
                `holds tensor "${info.name}" which the index ${map[info.name] === undefined ? 'does not list' : `places in ${map[info.name]}`}`,
              );
            where.set(info.name, { reader, info });
          }
        }
        const unplaced = Object.keys(map).filter((n) => !where.has(n));
        if (unplaced.length)
          throw new CorruptFileError(indexPath, `lists tensor(s) missing from their shard: ${list(unplaced)}`);
        return new WeightSource(shards, true, readers, where);
      }
      if (!(await pathExists(single)))
        throw new CorruptFileError(single, 'file is missing (and there is no model.safetensors.index.json)');
      const reader = await SafetensorsReader.open(single);
      readers.push(reader);
      for (const info of reader.header.tensors) where.set(info.name, { reader, info });
      return new WeightSource(['model.safetensors'], false, readers, where);
    } catch (e) {
      await Promise.all(readers.map((r) => r.close().catch(() => {})));
      throw e;
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.readers.map((r) => r.close().catch(() => {})));
  }
}

function shapeText(s: readonly number[]): string {
  return `[${s.join(',')}]`;
}

/** Read and check a Hugging Face model directory; returns Tessera params. Writes nothing. */
export async function readHF(dir: string): Promise<ImportedHF> {
  const cfgPath = join(dir, 'config.json');
  if (!(await pathExists(dir))) throw new InvalidInputError(`model directory ${dir} does not exist`);
  const parsed = parseHFConfig(await readJsonFile(cfgPath, MAX_HF_CONFIG_BYTES), cfgPath);
  const src = await WeightSource.open(dir);
  try {
    const names = [...src.where.keys()];
    let wanted: Wanted[];
    let ignorable: (n: string) => boolean;
    let P: number;
    let embedName: string;
    let tied: boolean;
    if (parsed.arch === 'gpt2') {
      const prefix = names.some((n) => n.startsWith('transformer.')) ? 'transformer.' : '';
      wanted = gpt2Wanted(parsed.config, prefix);
      const L = parsed.config.layers;
      const buf = new RegExp(`^${prefix.replace('.', '\\.')}h\\.(\\d+)\\.attn\\.(masked_)?bias$`);
      ignorable = (n) => {
        const m = buf.exec(n);
        return m !== null && Number(m[1]) < L;
      };
      P = paramCount(parsed.config);
      embedName = prefix + 'wte.weight';
      tied = true;
    } else {
      wanted = llamaWanted(parsed.config);
      const L = parsed.config.layers;
      ignorable = (n) => {
        const m = /^model\.layers\.(\d+)\.self_attn\.rotary_emb\.inv_freq$/.exec(n);
        return m !== null && Number(m[1]) < L;
      };
      P = llamaParamCount(parsed.config);
      embedName = 'model.embed_tokens.weight';
      tied = parsed.config.tiedEmbeddings;
    }
    const lmHead = 'lm_head.weight';
    const wantedNames = new Set(wanted.map((w) => w.hf));
    const where = (f: { reader: SafetensorsReader }) => basename(f.reader.path);

    // Names: everything the config implies is present, nothing else is.
    const missing = wanted.filter((w) => !src.where.has(w.hf)).map((w) => w.hf);
    if (missing.length)
      throw new CorruptFileError(
        join(dir, src.sharded ? 'model.safetensors.index.json' : 'model.safetensors'),
        `missing tensor(s) that config.json requires: ${list(missing)}`,
      );
    const ignored = names.filter((n) => !wantedNames.has(n) && (ignorable(n) || (tied && n === lmHead)));
    const unexpected = names.filter((n) => !wantedNames.has(n) && !ignored.includes(n));
    if (unexpected.length)
      throw new MismatchError(
        `${dir}: config.json does not account for tensor(s) ${list(unexpected)} (does the config describe this model?)`,
      );
    // Dtypes and shapes, before any parameter memory is allocated.
    const dtypes: Record<string, number> = {};
    for (const w of wanted) {
      const f = src.where.get(w.hf)!;
      if (!IMPORT_DTYPES.includes(f.info.dtype))
        throw new CorruptFileError(
          f.reader.path,
          `tensor "${w.hf}" has dtype ${f.info.dtype}; only ${IMPORT_DTYPES.join(', ')} weights can be imported`,
        );
      if (shapeText(f.info.shape) !== shapeText(w.shape))
        throw new MismatchError(
          `${join(dir, where(f))}: tensor "${w.hf}" has shape ${shapeText(f.info.shape)} but config.json implies ${shapeText(w.shape)}`,
        );
      dtypes[f.info.dtype] = (dtypes[f.info.dtype] ?? 0) + 1;
    }
    if (tied && src.where.has(lmHead)) {
      const f = src.where.get(lmHead)!;
      const e = src.where.get(embedName)!;
      if (shapeText(f.info.shape) !== shapeText(e.info.shape) || !IMPORT_DTYPES.includes(f.info.dtype))
        throw new MismatchError(
          `${dir}: config.json ties the embeddings but ${lmHead} is not shaped like ${embedName}`,
        );
    }
    if (P > MAX_IMPORT_PARAMS)
      throw new InvalidInputError(`model has ${P} parameters, over the ${MAX_IMPORT_PARAMS} cap`);

    const params = new Float32Array(P);
    for (const w of wanted) {
      const f = src.where.get(w.hf)!;
      const dst = params.subarray(w.offset, w.offset + w.size);
      if (w.transpose) {
        const stored = new Float32Array(w.size);
        await f.reader.readInto(w.hf, stored);
        dst.set(transpose(stored, w.transpose[0], w.transpose[1]));
      } else await f.reader.readInto(w.hf, dst);
    }
    if (tied && src.where.has(lmHead)) {
      const head = await src.where.get(lmHead)!.reader.readF32(lmHead);
      const e = wanted.find((w) => w.hf === embedName)!;
      const embed = params.subarray(e.offset, e.offset + e.size);
      const a = new Uint32Array(head.buffer),
        b = new Uint32Array(embed.slice().buffer);
      for (let i = 0; i < a.length; i++)
        if (a[i] !== b[i])
          throw new MismatchError(
            `${dir}: config.json ties the embeddings (tie_word_embeddings) but ${lmHead} differs from ${embedName}`,
          );
    }
    const report: ImportReport = {
      arch: parsed.arch,
      files: src.files,
      sharded: src.sharded,
      tensors: wanted.length,
      params: P,
      dtypes,
      converted: Object.keys(dtypes).some((d) => d !== 'F32'),
      ignored,
    };
    return { ...parsed, params, report } as ImportedHF;
  } finally {
    await src.close();
  }
}

const TokenIdSchema = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const SpecialIdsSchema = z
  .object({
    bos_token_id: TokenIdSchema.nullable().optional(),
    eos_token_id: z
      .union([TokenIdSchema, z.array(TokenIdSchema).max(16)])
      .nullable()
      .optional(),
  })
  .passthrough();

/**
 * config.json's bos_token_id and eos_token_id (one id or, as Llama 3 has, a list), kept in the
 * checkpoint's meta so that generation stops where the model was trained to; malformed ones are
 * left out (they are not needed to compute anything).
 */
async function specialTokenIds(path: string): Promise<{ bosTokenId?: number; eosTokenIds?: number[] }> {
  const r = SpecialIdsSchema.safeParse(await readJsonFile(path, MAX_HF_CONFIG_BYTES));
  if (!r.success) return {};
  const { bos_token_id: bos, eos_token_id: eos } = r.data;
  return {
    ...(typeof bos === 'number' ? { bosTokenId: bos } : {}),
    ...(eos !== null && eos !== undefined ? { eosTokenIds: typeof eos === 'number' ? [eos] : eos } : {}),
  };
}

export interface ImportResult extends ImportReport {
  out: string;
  written: string[];
  weightsHash: string;
  tokenizer: boolean;
}

/**
 * Import `dir` (a Hugging Face model directory) into a Tessera checkpoint at `out`. Every
 * check of readHF runs before anything is written; the checkpoint is written atomically.
 */
export async function importHF(dir: string, out: string): Promise<ImportResult> {
  const src = resolve(dir),
    dst = resolve(out);
  if (src === dst) throw new InvalidInputError('the output directory must differ from the model directory');
  const m = await readHF(src);
  const extraFiles: Record<string, Uint8Array> = {};
  const tokPath = join(src, 'tokenizer.json');
  if (await pathExists(tokPath)) {
    // Size-checked, UTF-8 and JSON-checked, then copied byte for byte.
    await readJsonFile(tokPath, MAX_TOKENIZER_BYTES);
    extraFiles['tokenizer.json'] = await readFile(tokPath);
  }
  const meta = {
    importedFrom: 'huggingface',
    arch: m.report.arch,
    sourceDtypes: m.report.dtypes,
    sourceFiles: m.report.files,
    ...(await specialTokenIds(join(src, 'config.json'))),
  };
  const saved =
    m.arch === 'gpt2'
      ? await saveCheckpoint(dst, { config: m.config, params: m.params, meta, extraFiles })
      : await saveLlamaCheckpoint(dst, { config: m.config, params: m.params, meta, extraFiles });
  return {
    ...m.report,
    out: dst,
    written: saved.files,
    weightsHash: saved.weightsHash,
    tokenizer: 'tokenizer.json' in extraFiles,
  };
}
