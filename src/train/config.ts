/**
 * The full configuration of a single-machine training run: what `tessera train --config`
 * reads and what every checkpoint records. Flags override file values.
 */
import { z } from 'zod';
import { ModelConfigSchema, DEFAULT_MODEL } from '../model/config.js';
import { AdamWSchema, DEFAULT_ADAMW } from './adamw.js';

export const TrainConfigSchema = z
  .object({
    model: ModelConfigSchema,
    /** 'brown' (embedded) or a path to a text file, directory or JSONL file. */
    data: z.string().min(1),
    batch: z.number().int().min(1).max(65536),
    /** Fixed step count, or null to size the run by `minutes`. */
    steps: z.number().int().min(1).nullable(),
    minutes: z
      .number()
      .positive()
      .max(60 * 24 * 365),
    lr: z.number().positive().max(10),
    minLrFrac: z.number().min(0).max(1),
    warmup: z.number().int().min(0),
    schedule: z.enum(['cosine', 'wsd', 'constant']),
    adamw: AdamWSchema,
    seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    evalEvery: z.number().int().min(1),
    evalBatches: z.number().int().min(1),
    checkpointEvery: z.number().int().min(1),
    threads: z.number().int().min(1).max(1024),
    deterministic: z.boolean(),
  })
  .strict();
export type TrainConfig = z.infer<typeof TrainConfigSchema>;

export const DEFAULT_TRAIN: TrainConfig = {
  model: DEFAULT_MODEL,
  data: 'brown',
  batch: 16,
  steps: null,
  minutes: 10,
  lr: 2e-3,
  minLrFrac: 0.1,
  warmup: 100,
  schedule: 'cosine',
  adamw: DEFAULT_ADAMW,
  seed: 1,
  evalEvery: 100,
  evalBatches: 20,
  checkpointEvery: 500,
  threads: 2,
  deterministic: false,
};
