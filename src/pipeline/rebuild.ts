/**
 * Rebuilding a lost stage from its neighbours, without a checkpoint (CheckFree, Blagoev et al.
 * 2025): a middle stage whose last peer died is re-initialized as a weighted mean of the stages
 * before and after it, layer for layer, weighted by the norms of their latest gradients; training
 * then pulls it back into place. Pure functions here; the calls are in stage-server.ts and driver.ts.
 *
 * Containment (issue 8: no peer holds weights beyond its own stage): the new peer must learn the
 * mean, which becomes its own stage, but not either neighbour's weights. So each neighbour sends
 * its weighted layers in 32-bit fixed point plus (or minus) one shared one-time pad, mod 2³²:
 *
 *   part_L = fix(a·θ_L) + r,   part_R = fix(b·θ_R) − r,   part_L + part_R = fix(a·θ_L) + fix(b·θ_R)
 *
 * with r drawn from AES-256-CTR under a seed that the driver gives to the two neighbours only.
 * Either part alone is uniformly distributed whatever the weights (a one-time pad over Z/2³²), the
 * sum is exact in fixed point, and the driver, which knows r, never sees a part: the neighbours
 * send them straight to the new peer. It holds only as long as the driver and the new peer do not
 * collude, as the XOR checkpoint shares hold only while their two holders do not.
 *
 * Written by hand: the pad, the fixed point and the layer map are a few lines each, and no
 * library offers secure two-party sums of float tensors.
 */
import { createCipheriv } from 'node:crypto';
import { InvalidInputError } from '../util/errors.js';
import type { PipelineStage as Stage } from '../model/pipeline-stage.js';

/** Fixed point: 24 fraction bits, so values must stay within ±127 (weights do, by far). */
export const FIX_BITS = 24;
const FIX = 2 ** FIX_BITS;
const LIMIT = 127;

/** The one-time pad: `n` uint32 words of AES-256-CTR keystream under `seed` (32 bytes). */
function pad(seed: Uint8Array, n: number): Uint32Array {
  if (seed.length !== 32) throw new InvalidInputError(`a rebuild seed is 32 bytes, got ${seed.length}`);
  const c = createCipheriv('aes-256-ctr', seed, new Uint8Array(16));
  const ks = c.update(new Uint8Array(4 * n));
  const out = new Uint32Array(n);
  const dv = new DataView(ks.buffer, ks.byteOffset, ks.byteLength);
  for (let i = 0; i < n; i++) out[i] = dv.getUint32(4 * i, true);
  return out;
}

/** One neighbour's part: fix(weight·x) + sign·pad(seed), mod 2³², little-endian. */
export function maskedPart(x: Float32Array, weight: number, seed: Uint8Array, sign: 1 | -1): Uint8Array {
  if (!(weight >= 0 && weight <= 1)) throw new InvalidInputError(`a rebuild weight is in [0, 1], got ${weight}`);
  const r = pad(seed, x.length);
  const out = new Uint8Array(4 * x.length);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < x.length; i++) {
    // |x| ≤ 127 and weights summing to ≤ 1 keep the sum of the parts within int32.
    if (!(Math.abs(x[i]) <= LIMIT))
      throw new InvalidInputError(`value ${x[i]} at ${i} is outside the fixed-point range (±${LIMIT})`);
    dv.setUint32(4 * i, (Math.round(weight * x[i] * FIX) + sign * r[i]) >>> 0, true);
  }
  return out;
}

/** The sum of the parts (the pads cancel), back in floats. */
export function unmaskSum(parts: Uint8Array[], n: number): Float32Array {
  for (const p of parts)
    if (p.length !== 4 * n) throw new InvalidInputError(`a rebuild part must be ${4 * n} bytes, got ${p.length}`);
  const out = new Float32Array(n);
  const dvs = parts.map((p) => new DataView(p.buffer, p.byteOffset, p.byteLength));
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (const dv of dvs) s = (s + dv.getUint32(4 * i, true)) >>> 0;
    out[i] = (s | 0) / FIX; // as int32: two's complement
  }
  return out;
}

/** CheckFree's weights: each neighbour in proportion to its gradient norm (equal when both are 0). */
export function mixWeights(normL: number, normR: number): [number, number] {
  if (!(normL >= 0 && normR >= 0 && Number.isFinite(normL + normR)))
    throw new InvalidInputError(`gradient norms must be finite and ≥ 0, got ${normL}, ${normR}`);
  const t = normL + normR;
  return t === 0 ? [0.5, 0.5] : [normL / t, normR / t];
}

/**
 * A stage's transformer layers as (key, view) pairs, keyed by position within the stage
 * (`0.attn.qkv.w` is its first layer's, whichever model layer that is). Two stages with the same
 * number of layers have the same keys in the same order; embeddings, head, final norm and
 * bottleneck projections are not layers and are not listed.
 */
export function layerViews(
  stage: Stage,
  of: 'params' | 'grads' = 'params',
): { keys: string[]; views: Float32Array[]; size: number } {
  const buf = of === 'params' ? stage.params : stage.grads;
  const keys: string[] = [],
    views: Float32Array[] = [];
  let size = 0;
  for (const s of stage.specs) {
    const m = /^(?:h|layers)\.(\d+)\.(.+)$/.exec(s.name); // GPT-2 h.<l>.*, Llama layers.<l>.*
    if (!m) continue;
    keys.push(`${Number(m[1]) - stage.spec.l0}.${m[2]}`);
    views.push(buf.subarray(s.offset, s.offset + s.size));
    size += s.size;
  }
  return { keys, views, size };
}

/** The layers' values in one array (the order of `layerViews`). */
export function gatherLayers(stage: Stage): Float32Array {
  const { views, size } = layerViews(stage);
  const out = new Float32Array(size);
  let o = 0;
  for (const v of views) {
    out.set(v, o);
    o += v.length;
  }
  return out;
}

/** Writes `values` (the order of `layerViews`) into the stage's layers. */
export function scatterLayers(stage: Stage, values: Float32Array): void {
  const { views, size } = layerViews(stage);
  if (values.length !== size) throw new InvalidInputError(`layer values: expected ${size}, got ${values.length}`);
  let o = 0;
  for (const v of views) {
    v.set(values.subarray(o, o + v.length));
    o += v.length;
  }
}
