/**
 * Learning-rate schedules: pure functions of the step, so every peer (and every re-execution
 * by a validator) computes the identical rate.
 */
import { z } from 'zod';

export const ScheduleSchema = z
  .object({
    kind: z.enum(['cosine', 'wsd', 'constant']),
    maxLr: z.number().positive().max(10),
    /** Floor as a fraction of maxLr. */
    minLrFrac: z.number().min(0).max(1),
    warmupSteps: z.number().int().min(0),
    totalSteps: z.number().int().min(1),
    /** WSD only: fraction of totalSteps spent in the final linear decay. */
    decayFrac: z.number().min(0).max(1).default(0.2),
  })
  .strict();
export type Schedule = z.infer<typeof ScheduleSchema>;

/** Learning rate for 0-based `step`. Linear warmup, then cosine / warmup-stable-decay / constant. */
export function lrAt(s: Schedule, step: number): number {
  const minLr = s.maxLr * s.minLrFrac;
  if (step < s.warmupSteps) return (s.maxLr * (step + 1)) / s.warmupSteps;
  if (s.kind === 'constant') return s.maxLr;
  if (step >= s.totalSteps) return minLr;
  if (s.kind === 'cosine') {
    const span = Math.max(1, s.totalSteps - s.warmupSteps);
    const progress = (step - s.warmupSteps) / span;
    return minLr + 0.5 * (s.maxLr - minLr) * (1 + Math.cos(Math.PI * progress));
  }
  const decaySteps = Math.max(1, Math.round(s.totalSteps * s.decayFrac));
  const decayStart = s.totalSteps - decaySteps;
  if (step < decayStart) return s.maxLr;
  return s.maxLr + (minLr - s.maxLr) * ((step - decayStart) / decaySteps);
}
