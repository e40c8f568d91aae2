/**
 * A trainer's backend class: what its audit commitment says its inner steps ran on, and so which
 * re-execution can reproduce them (docs/WEBGPU.md "Audits when trainers use GPUs").
 *
 * - `{device: 'cpu'}`: the CPU deterministic kernels, bitwise reproducible on every machine.
 *   Audited bit for bit by anyone; any mismatch is fraud (verify/audit.ts, exact rule). A
 *   commitment without a class means this (commitments written before classes existed).
 * - `{device: 'webgpu', vendor, architecture, adapter, kernels}`: a WebGPU adapter (as Dawn
 *   reports it; `adapter` is its description, which carries the driver) running the WGSL kernels
 *   whose sources hash to `kernels` (with the attention form). Same class, same bits (tested:
 *   src/kernels/webgpu/ is atomics-free with fixed summation orders). A validator of the same
 *   class re-executes bit for bit; everyone else re-executes on the CPU deterministic kernels
 *   and judges each step with the manifest's tolerance (verify/tolerance.ts). Fraud is only what
 *   breaks the tolerance, so every peer can check a proof whatever its hardware.
 *
 * Claiming a class is free, so nothing may rest on the claim being true: a non-CPU class buys at
 * most the manifest's tolerance (and only where the manifest sets one), a CPU claim gets the exact
 * rule, and a claim that a same-class validator cannot reproduce is recorded against the trainer.
 */
import { z } from 'zod';

const Hex64 = z.string().regex(/^[0-9a-f]{64}$/);
const Text = (n: number) => z.string().max(n);

export const BackendClassSchema = z.discriminatedUnion('device', [
  z.object({ device: z.literal('cpu') }).strict(),
  z
    .object({
      device: z.literal('webgpu'),
      vendor: Text(64),
      architecture: Text(64),
      adapter: Text(160),
      kernels: Hex64,
    })
    .strict(),
]);
export type BackendClass = z.infer<typeof BackendClassSchema>;

export const CPU_CLASS: BackendClass = { device: 'cpu' };

/** The class a commitment names (absent: the CPU). */
export function classOf(c: { backend?: BackendClass }): BackendClass {
  return c.backend ?? CPU_CLASS;
}

/** Exact equality of two classes (every field). */
export function sameClass(a: BackendClass, b: BackendClass): boolean {
  if (a.device !== b.device) return false;
  if (a.device === 'cpu' || b.device === 'cpu') return true;
  return (
    a.vendor === b.vendor && a.architecture === b.architecture && a.adapter === b.adapter && a.kernels === b.kernels
  );
}

/** Whether steps of this class are judged bit for bit by everyone (the CPU) or with a tolerance. */
export function exactEverywhere(c: BackendClass): boolean {
  return c.device === 'cpu';
}

/** One line for logs and audit records. */
export function describeClass(c: BackendClass): string {
  return c.device === 'cpu'
    ? 'cpu (deterministic kernels)'
    : `webgpu ${[c.vendor, c.architecture, c.adapter].filter((s) => s).join(' / ')} (kernels ${c.kernels.slice(0, 8)})`;
}
