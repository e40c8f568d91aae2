/**
 * Kernel selection: native (C++/OpenBLAS, multithreaded) when the addon loads, else the
 * TypeScript reference kernels with one loud warning.
 *
 * Environment: TESSERA_KERNELS=ref forces the reference kernels (no warning);
 * TESSERA_KERNELS=native forces the native kernels and throws if they cannot load (for CI).
 */
import type { Kernels } from './api.js';
import { createNativeKernels } from './native.js';
import { createRefKernels } from './ref.js';

export type { Kernels } from './api.js';
export { createRefKernels } from './ref.js';
export { createNativeKernels } from './native.js';

export interface LoadKernelsOptions {
  /** Which implementation to use (default 'native'); TESSERA_KERNELS overrides it. */
  prefer?: 'native' | 'ref';
  /** Worker threads for all kernels including BLAS (default: all cores). */
  threads?: number;
  /** Bitwise-reproducible mode (default false for native; ref is always deterministic). */
  deterministic?: boolean;
}

let warned = false;

function warnFallback(err: unknown): void {
  if (warned) return;
  warned = true;
  const reason = err instanceof Error ? err.message : String(err);
  process.stderr.write(
    '\n' +
      '*** tessera: WARNING: native kernels unavailable, using the TypeScript reference kernels ***\n' +
      '*** (10-100x slower). Reason: ' +
      reason +
      '\n' +
      '*** Fix: apt-get install g++ make python3 (and libopenblas-dev, optional: faster matmuls) && npm rebuild\n' +
      '*** (set TESSERA_KERNELS=ref to choose the reference kernels on purpose and silence this)\n\n',
  );
}

export function loadKernels(opts: LoadKernelsOptions = {}): Kernels {
  const env = process.env.TESSERA_KERNELS;
  const choice = env === 'ref' || env === 'native' ? env : (opts.prefer ?? 'native');
  let k: Kernels;
  if (choice === 'ref') {
    k = createRefKernels();
  } else {
    try {
      k = createNativeKernels();
    } catch (err) {
      if (env === 'native') throw err;
      warnFallback(err);
      k = createRefKernels();
    }
  }
  if (opts.threads !== undefined) k.setThreads(opts.threads);
  if (opts.deterministic !== undefined) k.setDeterministic(opts.deterministic);
  return k;
}
