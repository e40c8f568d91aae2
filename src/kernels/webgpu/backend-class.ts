/**
 * The backend class (src/verify/backend.ts) of a WebGPU device running Tessera's WGSL kernels:
 * the adapter as Dawn reports it, and a hash of every kernel's source (wgsl.ts ALL_KERNELS) with
 * the attention form, so that "same class" means the same adapter, driver and kernels, the
 * condition under which two runs give the same bits (wgsl.ts: no atomics, fixed summation orders).
 */
import { sha256Hex } from '../../util/hash.js';
import type { BackendClass } from '../../verify/backend.js';
import { ALL_KERNELS } from './wgsl.js';

/** sha256 of the kernels' names, bindings, uniforms and WGSL bodies, and the attention form. */
export function kernelsDigest(attention: 'flash' | 'stored'): string {
  const parts = [...ALL_KERNELS]
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map((k) => JSON.stringify([k.name, k.args, k.params, k.body]));
  return sha256Hex(`tessera/webgpu/kernels/v1\n${attention}\n${parts.join('\n')}`);
}

export function webgpuClass(
  info: { vendor: string; architecture: string; description: string },
  attention: 'flash' | 'stored',
): BackendClass {
  const cut = (s: string, n: number) => s.slice(0, n);
  return {
    device: 'webgpu',
    vendor: cut(info.vendor, 64),
    architecture: cut(info.architecture, 64),
    adapter: cut(info.description, 160),
    kernels: kernelsDigest(attention),
  };
}
