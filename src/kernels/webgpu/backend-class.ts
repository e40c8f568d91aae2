/**
 * The backend class (src/verify/backend.ts) of a WebGPU device running Tessera's WGSL kernels:
 * the adapter as Dawn reports it, and a hash of every kernel's source (wgsl.ts ALL_KERNELS) with
 * the attention form, so that "same class" means the same adapter, driver and kernels, the
 * condition under which two runs give the same bits (wgsl.ts: no atomics, fixed summation orders).
 * The form also names the precision flags (f16 storage, subgroup reductions, shader-f16), which
 * change the last bits.
 */
import { sha256Hex } from '../../util/hash.js';
import type { BackendClass } from '../../verify/backend.js';
import { ALL_KERNELS } from './wgsl.js';

/** How a model runs the kernels: the attention form and the precision flags. */
export interface KernelForm {
  attention: 'flash' | 'flash-row' | 'stored';
  f16Storage?: boolean;
  subgroups?: boolean;
  shaderF16?: boolean;
}

const formLine = (f: KernelForm): string =>
  [f.attention, f.f16Storage ? 'f16-storage' : '', f.subgroups ? 'subgroups' : '', f.shaderF16 ? 'shader-f16' : '']
    .filter((s) => s)
    .join(' ');

/** sha256 of the kernels' names, bindings, uniforms and WGSL bodies, and the form they run in. */
export function kernelsDigest(form: KernelForm): string {
  const parts = [...ALL_KERNELS]
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map((k) => JSON.stringify([k.name, k.args, k.params, k.body]));
  return sha256Hex(`tessera/webgpu/kernels/v1\n${formLine(form)}\n${parts.join('\n')}`);
}

export function webgpuClass(
  info: { vendor: string; architecture: string; description: string },
  form: KernelForm,
): BackendClass {
  const cut = (s: string, n: number) => s.slice(0, n);
  return {
    device: 'webgpu',
    vendor: cut(info.vendor, 64),
    architecture: cut(info.architecture, 64),
    adapter: cut(info.description, 160),
    kernels: kernelsDigest(form),
  };
}
