/**
 * One flat Float32Array for all parameters (and, with the same layout, gradients and AdamW
 * moments), with named views into it, as in llm.c.
 *
 * Layout is per-layer contiguous, in this order:
 *   wte [V,C], wpe [T,C],
 *   for each layer l: ln1.w [C], ln1.b [C], attn.qkv.w [3C,C], attn.qkv.b [3C], attn.proj.w [C,C],
 *                     attn.proj.b [C], ln2.w [C], ln2.b [C], mlp.fc.w [4C,C], mlp.fc.b [4C],
 *                     mlp.proj.w [C,4C], mlp.proj.b [C]
 *   lnf.w [C], lnf.b [C]
 * so that a pipeline stage (a block of layers) is one contiguous slice, and a checkpoint,
 * hash or pseudo-gradient is a plain slice of the buffer. Linear weights are [out, in]
 * (nn.Linear layout); the HF exporter transposes to Conv1D [in, out].
 */
import type { ModelConfig } from './config.js';

export interface TensorSpec {
  readonly name: string;
  readonly shape: readonly number[];
  readonly offset: number;
  readonly size: number;
  /** AdamW weight decay applies to matrices (and embeddings), not to biases or LayerNorm gains. */
  readonly decay: boolean;
}

export interface LayerViews {
  ln1w: Float32Array;
  ln1b: Float32Array;
  qkvw: Float32Array;
  qkvb: Float32Array;
  attprojw: Float32Array;
  attprojb: Float32Array;
  ln2w: Float32Array;
  ln2b: Float32Array;
  fcw: Float32Array;
  fcb: Float32Array;
  fcprojw: Float32Array;
  fcprojb: Float32Array;
}

export interface ParamViews {
  wte: Float32Array;
  wpe: Float32Array;
  layers: LayerViews[];
  lnfw: Float32Array;
  lnfb: Float32Array;
}

/** The ordered tensor table for a config. Pure: same config, same layout. */
export function paramSpecs(cfg: ModelConfig): TensorSpec[] {
  const { vocabSize: V, ctx: T, dim: C, layers: L } = cfg;
  const specs: TensorSpec[] = [];
  let offset = 0;
  const add = (name: string, shape: number[], decay: boolean) => {
    const size = shape.reduce((a, b) => a * b, 1);
    specs.push({ name, shape, offset, size, decay });
    offset += size;
  };
  add('wte', [V, C], true);
  add('wpe', [T, C], true);
  for (let l = 0; l < L; l++) {
    const p = `h.${l}.`;
    add(p + 'ln1.w', [C], false);
    add(p + 'ln1.b', [C], false);
    add(p + 'attn.qkv.w', [3 * C, C], true);
    add(p + 'attn.qkv.b', [3 * C], false);
    add(p + 'attn.proj.w', [C, C], true);
    add(p + 'attn.proj.b', [C], false);
    add(p + 'ln2.w', [C], false);
    add(p + 'ln2.b', [C], false);
    add(p + 'mlp.fc.w', [4 * C, C], true);
    add(p + 'mlp.fc.b', [4 * C], false);
    add(p + 'mlp.proj.w', [C, 4 * C], true);
    add(p + 'mlp.proj.b', [C], false);
  }
  add('lnf.w', [C], false);
  add('lnf.b', [C], false);
  return specs;
}

export function paramCount(cfg: ModelConfig): number {
  const s = paramSpecs(cfg);
  const last = s[s.length - 1];
  return last.offset + last.size;
}

/** Named views into `buf` (params, grads or optimizer moments share this layout). */
export function paramViews(cfg: ModelConfig, buf: Float32Array): ParamViews {
  const specs = paramSpecs(cfg);
  if (buf.length !== paramCount(cfg))
    throw new RangeError(`buffer has ${buf.length} floats, config needs ${paramCount(cfg)}`);
  const byName = new Map(specs.map((s) => [s.name, buf.subarray(s.offset, s.offset + s.size)]));
  const get = (n: string) => byName.get(n)!;
  const layers = Array.from({ length: cfg.layers }, (_, l) => layerViews(l, get));
  return { wte: get('wte'), wpe: get('wpe'), layers, lnfw: get('lnf.w'), lnfb: get('lnf.b') };
}

/** Layer `l`'s views, each looked up by its tensor name (`get('h.3.ln1.w')`); a pipeline stage uses it too. */
export function layerViews(l: number, get: (name: string) => Float32Array): LayerViews {
  const p = `h.${l}.`;
  return {
    ln1w: get(p + 'ln1.w'),
    ln1b: get(p + 'ln1.b'),
    qkvw: get(p + 'attn.qkv.w'),
    qkvb: get(p + 'attn.qkv.b'),
    attprojw: get(p + 'attn.proj.w'),
    attprojb: get(p + 'attn.proj.b'),
    ln2w: get(p + 'ln2.w'),
    ln2b: get(p + 'ln2.b'),
    fcw: get(p + 'mlp.fc.w'),
    fcb: get(p + 'mlp.fc.b'),
    fcprojw: get(p + 'mlp.proj.w'),
    fcprojb: get(p + 'mlp.proj.b'),
  };
}
