/**
 * GPT-2 model configuration, validated with zod at every boundary (CLI flags, checkpoint
 * config.json, run manifests).
 */
import { z } from 'zod';

export const ModelConfigSchema = z
  .object({
    vocabSize: z
      .number()
      .int()
      .min(2)
      .max(1 << 20),
    ctx: z
      .number()
      .int()
      .min(1)
      .max(1 << 16),
    dim: z
      .number()
      .int()
      .min(1)
      .max(1 << 16),
    layers: z.number().int().min(1).max(1024),
    heads: z.number().int().min(1).max(1024),
  })
  .strict()
  .refine((c) => c.dim % c.heads === 0, { message: 'dim must be divisible by heads' });

export type ModelConfig = z.infer<typeof ModelConfigSchema>;

/** The reference configuration used by benchmarks and the default `tessera train`. */
export const DEFAULT_MODEL: ModelConfig = { vocabSize: 4096, ctx: 128, dim: 256, layers: 4, heads: 4 };
