/**
 * Hugging Face LlamaForCausalLM layout: the tensor-name table between Tessera's llamaSpecs and
 * HF's state_dict names (shared by the importer and the exporter), the LlamaConfig that
 * config.json holds for a LlamaConfig of ours, and the exporter itself.
 *
 * HF stores every Llama projection as nn.Linear [out, in], which is Tessera's layout too, so
 * names map one to one with no transposes:
 *   embed ↔ model.embed_tokens.weight, norm ↔ model.norm.weight, lm_head ↔ lm_head.weight,
 *   layers.l.{attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down} ↔
 *   model.layers.l.{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
 *   mlp.{gate,up,down}_proj}.weight
 * The export is written atomically (writeDirAtomic) as F32 with __metadata__ { format: "pt" }.
 */
import { join } from 'node:path';
import { InvalidInputError } from '../util/errors.js';
import { writeDirAtomic, writeTextFile } from './checkpoint.js';
import { LlamaConfigSchema, type LlamaConfig } from './llama-config.js';
import { llamaParamCount, llamaSpecs } from './llama.js';
import { writeSafetensors } from './safetensors.js';

const LAYER_NAMES: Record<string, string> = {
  attn_norm: 'input_layernorm.weight',
  wq: 'self_attn.q_proj.weight',
  wk: 'self_attn.k_proj.weight',
  wv: 'self_attn.v_proj.weight',
  wo: 'self_attn.o_proj.weight',
  mlp_norm: 'post_attention_layernorm.weight',
  w_gate: 'mlp.gate_proj.weight',
  w_up: 'mlp.up_proj.weight',
  w_down: 'mlp.down_proj.weight',
};

/** The HF state_dict name of Tessera Llama tensor `name`. */
export function hfLlamaName(name: string): string {
  if (name === 'embed') return 'model.embed_tokens.weight';
  if (name === 'norm') return 'model.norm.weight';
  if (name === 'lm_head') return 'lm_head.weight';
  const m = /^layers\.(\d+)\.(\w+)$/.exec(name);
  if (!m || !LAYER_NAMES[m[2]]) throw new InvalidInputError(`no Hugging Face name for Llama tensor "${name}"`);
  return `model.layers.${m[1]}.${LAYER_NAMES[m[2]]}`;
}

/** A transformers LlamaConfig (config.json) for `cfg`. */
export function hfLlamaConfig(cfg: LlamaConfig, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const s = cfg.ropeScaling;
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: cfg.vocabSize,
    hidden_size: cfg.dim,
    intermediate_size: cfg.hidden,
    num_hidden_layers: cfg.layers,
    num_attention_heads: cfg.heads,
    num_key_value_heads: cfg.kvHeads,
    head_dim: cfg.headDim,
    max_position_embeddings: cfg.ctx,
    rms_norm_eps: cfg.normEps,
    rope_theta: cfg.ropeTheta,
    rope_scaling:
      s === null
        ? null
        : s.type === 'linear'
          ? { rope_type: 'linear', factor: s.factor }
          : {
              rope_type: 'llama3',
              factor: s.factor,
              low_freq_factor: s.lowFreqFactor,
              high_freq_factor: s.highFreqFactor,
              original_max_position_embeddings: s.originalMaxPositions,
            },
    hidden_act: 'silu',
    attention_bias: false,
    attention_dropout: 0,
    mlp_bias: false,
    pretraining_tp: 1,
    tie_word_embeddings: cfg.tiedEmbeddings,
    initializer_range: 0.02,
    use_cache: true,
    torch_dtype: 'float32',
    ...extra,
  };
}

export const HF_LLAMA_FILES = [
  'model.safetensors',
  'config.json',
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
] as const;

export interface HFLlamaExportInput {
  config: LlamaConfig;
  params: Float32Array;
  /** tokenizer.json bytes or text to copy as is (a Llama tokenizer is not ours to parse). */
  tokenizerJson?: string | Uint8Array;
  tokenizerConfigJson?: string | Uint8Array;
  bosTokenId?: number;
  eosTokenId?: number;
}

/** Write a Hugging Face LlamaForCausalLM directory to `dir`, atomically. */
export async function exportLlamaHF(dir: string, input: HFLlamaExportInput): Promise<{ files: string[] }> {
  const c = LlamaConfigSchema.safeParse(input.config);
  if (!c.success)
    throw new InvalidInputError(`invalid Llama config: ${c.error.issues.map((i) => i.message).join('; ')}`);
  const config = c.data;
  const P = llamaParamCount(config);
  if (!(input.params instanceof Float32Array) || input.params.length !== P)
    throw new InvalidInputError(`params has ${input.params?.length} floats but the config needs ${P}`);
  const ids: Record<string, unknown> = {};
  if (input.bosTokenId !== undefined) ids.bos_token_id = input.bosTokenId;
  if (input.eosTokenId !== undefined) ids.eos_token_id = input.eosTokenId;
  const tensors = llamaSpecs(config).map((s) => ({
    name: hfLlamaName(s.name),
    shape: s.shape,
    data: input.params.subarray(s.offset, s.offset + s.size),
  }));
  const files = await writeDirAtomic(dir, new Set(HF_LLAMA_FILES), async (tmp) => {
    const names: string[] = ['model.safetensors', 'config.json', 'generation_config.json'];
    await writeSafetensors(join(tmp, 'model.safetensors'), tensors, { format: 'pt' });
    await writeTextFile(join(tmp, 'config.json'), JSON.stringify(hfLlamaConfig(config, ids), null, 2) + '\n');
    await writeTextFile(
      join(tmp, 'generation_config.json'),
      JSON.stringify({ _from_model_config: true, ...ids }, null, 2) + '\n',
    );
    if (input.tokenizerJson !== undefined) {
      await writeTextFile(join(tmp, 'tokenizer.json'), input.tokenizerJson);
      names.push('tokenizer.json');
    }
    if (input.tokenizerConfigJson !== undefined) {
      await writeTextFile(join(tmp, 'tokenizer_config.json'), input.tokenizerConfigJson);
      names.push('tokenizer_config.json');
    }
    return names;
  });
  return { files };
}
