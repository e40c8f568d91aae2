/**
 * Export to a Hugging Face `transformers` GPT2LMHeadModel directory:
 *   model.safetensors       HF tensor names; Conv1D weights stored [in, out] (the transpose of
 *                           our nn.Linear [out, in]); lm_head omitted (tied to wte);
 *                           __metadata__ { format: "pt" } (transformers requires it)
 *   config.json             a complete GPT2Config
 *   tokenizer.json          the caller's tokenizer (Hugging Face tokenizers format)
 *   tokenizer_config.json   PreTrainedTokenizerFast, eot as bos/eos/unk
 *   generation_config.json  bos/eos = eot
 * Written atomically like checkpoints (see writeDirAtomic).
 *
 * The result loads with `GPT2LMHeadModel.from_pretrained(dir)` and
 * `AutoTokenizer.from_pretrained(dir)`; test/python/hf_gpt2_logits.py checks the logits.
 */
import { join } from 'node:path';
import { z } from 'zod';
import { InvalidInputError, MismatchError } from '../util/errors.js';
import { writeDirAtomic, writeTextFile } from './checkpoint.js';
import { ModelConfigSchema, type ModelConfig } from './config.js';
import { paramCount, paramViews } from './params.js';
import { writeSafetensors, type TensorToWrite } from './safetensors.js';

export const HF_FILES = [
  'model.safetensors',
  'config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'generation_config.json',
] as const;

export interface HFExportInput {
  config: ModelConfig;
  params: Float32Array;
  /** Parsed Hugging Face tokenizer.json. */
  tokenizerJson: object;
  /** End-of-text token id, used as bos/eos. */
  eotId: number;
  /**
   * tokenizer_config.json contents (e.g. the data layer's hfConfigJson); model_max_length is
   * set to ctx. Default: a minimal PreTrainedTokenizerFast config with eot as bos/eos/unk.
   */
  tokenizerConfig?: Record<string, unknown>;
}

/** out[c, r] = w[r, c] for w of shape [rows, cols]: nn.Linear [out, in] -> Conv1D [in, out]. */
export function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  if (w.length !== rows * cols) throw new RangeError(`transpose: ${w.length} != ${rows}x${cols}`);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const src = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = w[src + c];
  }
  return out;
}

/** The HF GPT2LMHeadModel tensors for our flat params, in HF's state_dict order (transposes are lazy). */
export function hfTensors(config: ModelConfig, params: Float32Array): TensorToWrite[] {
  const { vocabSize: V, ctx: T, dim: C } = config;
  const p = paramViews(config, params);
  const out: TensorToWrite[] = [
    { name: 'transformer.wte.weight', shape: [V, C], data: p.wte },
    { name: 'transformer.wpe.weight', shape: [T, C], data: p.wpe },
  ];
  p.layers.forEach((l, i) => {
    const h = `transformer.h.${i}.`;
    out.push(
      { name: h + 'ln_1.weight', shape: [C], data: l.ln1w },
      { name: h + 'ln_1.bias', shape: [C], data: l.ln1b },
      { name: h + 'attn.c_attn.weight', shape: [C, 3 * C], data: () => transpose(l.qkvw, 3 * C, C) },
      { name: h + 'attn.c_attn.bias', shape: [3 * C], data: l.qkvb },
      { name: h + 'attn.c_proj.weight', shape: [C, C], data: () => transpose(l.attprojw, C, C) },
      { name: h + 'attn.c_proj.bias', shape: [C], data: l.attprojb },
      { name: h + 'ln_2.weight', shape: [C], data: l.ln2w },
      { name: h + 'ln_2.bias', shape: [C], data: l.ln2b },
      { name: h + 'mlp.c_fc.weight', shape: [C, 4 * C], data: () => transpose(l.fcw, 4 * C, C) },
      { name: h + 'mlp.c_fc.bias', shape: [4 * C], data: l.fcb },
      { name: h + 'mlp.c_proj.weight', shape: [4 * C, C], data: () => transpose(l.fcprojw, C, 4 * C) },
      { name: h + 'mlp.c_proj.bias', shape: [C], data: l.fcprojb },
    );
  });
  out.push(
    { name: 'transformer.ln_f.weight', shape: [C], data: p.lnfw },
    { name: 'transformer.ln_f.bias', shape: [C], data: p.lnfb },
  );
  return out;
}

/** A complete transformers GPT2Config for `config`. */
export function hfConfig(config: ModelConfig, eotId: number): Record<string, unknown> {
  return {
    architectures: ['GPT2LMHeadModel'],
    model_type: 'gpt2',
    vocab_size: config.vocabSize,
    n_positions: config.ctx,
    n_ctx: config.ctx,
    n_embd: config.dim,
    n_layer: config.layers,
    n_head: config.heads,
    n_inner: null,
    activation_function: 'gelu_new',
    layer_norm_epsilon: 1e-5,
    resid_pdrop: 0,
    embd_pdrop: 0,
    attn_pdrop: 0,
    summary_first_dropout: 0,
    initializer_range: 0.02,
    bos_token_id: eotId,
    eos_token_id: eotId,
    tie_word_embeddings: true,
    scale_attn_weights: true,
    scale_attn_by_inverse_layer_idx: false,
    reorder_and_upcast_attn: false,
    use_cache: true,
    torch_dtype: 'float32',
  };
}

const TokenizerJsonSchema = z
  .object({
    model: z
      .object({ vocab: z.union([z.record(z.string(), z.number().int()), z.array(z.unknown())]).optional() })
      .passthrough(),
    added_tokens: z.array(z.object({ id: z.number().int(), content: z.string() }).passthrough()).optional(),
  })
  .passthrough();

/** Token count implied by a tokenizer.json (max id + 1), and the string for `id` if found. */
function tokenizerInfo(tok: object, id: number): { size: number; tokenString?: string } {
  const r = TokenizerJsonSchema.safeParse(tok);
  if (!r.success)
    throw new InvalidInputError('tokenizerJson is not a Hugging Face tokenizer.json (needs a "model" object)');
  let maxId = -1;
  let tokenString: string | undefined;
  const vocab = r.data.model.vocab;
  if (vocab && !Array.isArray(vocab)) {
    for (const [s, i] of Object.entries(vocab)) {
      if (i > maxId) maxId = i;
      if (i === id) tokenString = s;
    }
  } else if (Array.isArray(vocab)) {
    maxId = vocab.length - 1; // Unigram: [[piece, score], ...]
    const e = vocab[id];
    if (Array.isArray(e) && typeof e[0] === 'string') tokenString = e[0];
  }
  for (const t of r.data.added_tokens ?? []) {
    if (t.id > maxId) maxId = t.id;
    if (t.id === id) tokenString = t.content;
  }
  return { size: maxId + 1, tokenString };
}

/**
 * Write a Hugging Face GPT-2 directory to `dir`, atomically replacing a previous export there.
 * The tokenizer may be smaller than the model's vocabulary (padded vocab), never larger.
 */
export async function exportHF(dir: string, input: HFExportInput): Promise<{ files: string[] }> {
  const c = ModelConfigSchema.safeParse(input.config);
  if (!c.success)
    throw new InvalidInputError(`invalid model config: ${c.error.issues.map((i) => i.message).join('; ')}`);
  const config = c.data;
  const P = paramCount(config);
  if (!(input.params instanceof Float32Array) || input.params.length !== P) {
    throw new InvalidInputError(`params has ${input.params?.length} floats but the config needs ${P}`);
  }
  const { eotId } = input;
  if (!Number.isInteger(eotId) || eotId < 0 || eotId >= config.vocabSize) {
    throw new InvalidInputError(`eotId ${eotId} is outside the vocabulary [0, ${config.vocabSize})`);
  }
  if (input.tokenizerJson === null || typeof input.tokenizerJson !== 'object')
    throw new InvalidInputError('tokenizerJson must be an object');
  const tok = tokenizerInfo(input.tokenizerJson, eotId);
  if (tok.size > config.vocabSize) {
    throw new MismatchError(`tokenizer has ${tok.size} tokens but the model vocabSize is ${config.vocabSize}`);
  }
  const tokenizerText = JSON.stringify(input.tokenizerJson);

  const tokenizerConfig: Record<string, unknown> = input.tokenizerConfig
    ? { ...input.tokenizerConfig, model_max_length: config.ctx }
    : {
        tokenizer_class: 'PreTrainedTokenizerFast',
        model_max_length: config.ctx,
        add_prefix_space: false,
        clean_up_tokenization_spaces: false,
      };
  if (!input.tokenizerConfig && tok.tokenString !== undefined) {
    tokenizerConfig.bos_token = tok.tokenString;
    tokenizerConfig.eos_token = tok.tokenString;
    tokenizerConfig.unk_token = tok.tokenString;
  }
  const generationConfig = { _from_model_config: true, bos_token_id: eotId, eos_token_id: eotId };

  const tensors = hfTensors(config, input.params);
  const files = await writeDirAtomic(dir, new Set(HF_FILES), async (tmp) => {
    await writeSafetensors(join(tmp, 'model.safetensors'), tensors, { format: 'pt' });
    await writeTextFile(join(tmp, 'config.json'), JSON.stringify(hfConfig(config, eotId), null, 2) + '\n');
    await writeTextFile(join(tmp, 'tokenizer.json'), tokenizerText);
    await writeTextFile(join(tmp, 'tokenizer_config.json'), JSON.stringify(tokenizerConfig, null, 2) + '\n');
    await writeTextFile(join(tmp, 'generation_config.json'), JSON.stringify(generationConfig, null, 2) + '\n');
    return [...HF_FILES];
  });
  return { files };
}
