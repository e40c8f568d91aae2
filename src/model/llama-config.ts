/**
 * Llama-family model configuration (Llama 2/3, TinyLlama, SmolLM and other LlamaForCausalLM
 * checkpoints), validated with zod at every boundary, and the RoPE frequency table it implies.
 *
 * Kept apart from config.ts's GPT-2 ModelConfig on purpose: the swarm, the pipeline and the
 * GPT-2 checkpoints key on ModelConfig's exact shape, and a Llama config carries fields
 * (kv heads, MLP width, RoPE, norm eps, tied head) that GPT-2 has no place for. The `arch`
 * literal tells the two apart in any JSON that may hold either.
 */
import { z } from 'zod';

const RopeScalingSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('linear'), factor: z.number().min(1).max(1e6) }).strict(),
  z
    .object({
      type: z.literal('llama3'),
      factor: z.number().min(1).max(1e6),
      lowFreqFactor: z.number().positive().max(1e6),
      highFreqFactor: z.number().positive().max(1e6),
      originalMaxPositions: z
        .number()
        .int()
        .min(1)
        .max(1 << 24),
    })
    .strict()
    .refine((s) => s.highFreqFactor > s.lowFreqFactor, { message: 'highFreqFactor must exceed lowFreqFactor' }),
]);

export type RopeScaling = z.infer<typeof RopeScalingSchema>;

const dimension = (max: number) => z.number().int().min(1).max(max);

export const LlamaConfigSchema = z
  .object({
    arch: z.literal('llama'),
    vocabSize: z
      .number()
      .int()
      .min(2)
      .max(1 << 20),
    /** Longest sequence the model is run on (HF max_position_embeddings). */
    ctx: dimension(1 << 20),
    /** Residual width (HF hidden_size). */
    dim: dimension(1 << 16),
    layers: dimension(1024),
    /** Query heads (HF num_attention_heads). */
    heads: dimension(1024),
    /** Key/value heads (HF num_key_value_heads); heads must be a multiple of it (GQA). */
    kvHeads: dimension(1024),
    /** Per-head width (HF head_dim, default dim / heads); even, for RoPE's pairs. */
    headDim: dimension(1 << 12),
    /** SwiGLU hidden width (HF intermediate_size). */
    hidden: dimension(1 << 18),
    /** RMSNorm epsilon (HF rms_norm_eps). */
    normEps: z.number().positive().max(1),
    /** RoPE base (HF rope_theta). */
    ropeTheta: z.number().positive().max(1e12),
    ropeScaling: RopeScalingSchema.nullable(),
    /** lm_head shares the embedding matrix (HF tie_word_embeddings). */
    tiedEmbeddings: z.boolean(),
  })
  .strict()
  .refine((c) => c.heads % c.kvHeads === 0, { message: 'heads must be a multiple of kvHeads' })
  .refine((c) => c.headDim % 2 === 0, { message: 'headDim must be even (RoPE rotates pairs)' });

export type LlamaConfig = z.infer<typeof LlamaConfigSchema>;

/**
 * RoPE inverse frequencies inv_freq[i] = theta^(-2i/headDim), i < headDim/2, with the config's
 * scaling applied as Hugging Face's rope_init_fns do: `linear` divides every frequency by
 * factor (positions / factor); `llama3` keeps high frequencies, divides low ones by factor and
 * interpolates in between by wavelength. Computed in float64.
 */
export function ropeInvFreq(cfg: Pick<LlamaConfig, 'headDim' | 'ropeTheta' | 'ropeScaling'>): Float64Array {
  const half = cfg.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(cfg.ropeTheta, (2 * i) / cfg.headDim);
  const s = cfg.ropeScaling;
  if (s?.type === 'linear') for (let i = 0; i < half; i++) inv[i] /= s.factor;
  else if (s?.type === 'llama3') {
    const lowWavelen = s.originalMaxPositions / s.lowFreqFactor;
    const highWavelen = s.originalMaxPositions / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const wavelen = (2 * Math.PI) / inv[i];
      if (wavelen > lowWavelen) inv[i] = inv[i] / s.factor;
      else if (wavelen >= highWavelen) {
        const smooth = (s.originalMaxPositions / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        inv[i] = ((1 - smooth) * inv[i]) / s.factor + smooth * inv[i];
      }
    }
  }
  return inv;
}

/** cos and sin of position·inv_freq, each [T, headDim/2] row-major, float64. */
export function ropeTables(
  cfg: Pick<LlamaConfig, 'headDim' | 'ropeTheta' | 'ropeScaling'>,
  T: number,
): { cos: Float64Array; sin: Float64Array } {
  const inv = ropeInvFreq(cfg);
  const half = inv.length;
  const cos = new Float64Array(T * half),
    sin = new Float64Array(T * half);
  for (let t = 0; t < T; t++)
    for (let i = 0; i < half; i++) {
      const a = t * inv[i];
      cos[t * half + i] = Math.cos(a);
      sin[t * half + i] = Math.sin(a);
    }
  return { cos, sin };
}

/** A tiny Llama config for tests and examples (GQA 4:2, untied head). */
export const TINY_LLAMA: LlamaConfig = {
  arch: 'llama',
  vocabSize: 64,
  ctx: 16,
  dim: 32,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  headDim: 8,
  hidden: 48,
  normEps: 1e-5,
  ropeTheta: 10000,
  ropeScaling: null,
  tiedEmbeddings: false,
};
