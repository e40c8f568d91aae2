/**
 * What every WGSL kernel file shares: the KernelDef shape, the workgroup sizes, the entry-point
 * preamble, the fixed-order workgroup reduction and `buildShader` (arguments onto bindings).
 * See ../wgsl.ts for the design (determinism, binding model).
 */
/** 'f16': binary16 elements, read with ld_<name>(i) and written with st2_<name>(i, v0, v1) (see precision.ts). */
export type ArgType = 'f32' | 'i32' | 'u32' | 'f16';
export type ParamType = 'u32' | 'f32' | 'i32';

export interface KernelDef {
  /** Unique name (pipeline cache key together with the binding pattern). */
  name: string;
  /** Storage arguments, in binding order. The body indexes them as `name[P.o_name + i]`. */
  args: readonly (readonly [string, ArgType])[];
  /** Scalar uniforms besides the offsets, readable in the body as `P.name`. */
  params: readonly (readonly [string, ParamType])[];
  /** WGSL: module-scope declarations and `@compute fn main`. */
  body: string;
  /**
   * WGSL extensions the body needs (`f16`, `subgroups`): emitted as `enable` directives. The
   * device compiles such a kernel only when the adapter granted the matching feature.
   */
  enable?: readonly string[];
}

/** Threads per workgroup of the elementwise and per-column kernels. */
export const WG = 256;
/**
 * Threads per workgroup of the row kernels (one workgroup per row: LayerNorm, attention,
 * softmax, cross-entropy, sum of squares) and the width of their reductions. 64: wide enough
 * for the rows of the model, and SwiftShader runs 256-thread workgroups with barriers several
 * times slower than 64-thread ones (measured: LayerNorm forward 7x).
 */
export const RW = 64;
/** GEMM output tile (TILE x TILE per workgroup of 16 x 16 threads, 4 x 4 outputs each) and k step. */
export const TILE = 64;
export const TK = 16;
/** Elements summed by one workgroup in the first pass of sumSquares. */
export const SUMSQ_CHUNK = RW * 64;

/** The flat workgroup index of a dispatch that may use a 2-D grid (more than 65535 groups). */
export const FLAT = 'let flat = wg.y * nwg.x + wg.x;';
export const ENTRY = (size: string) =>
  `@compute @workgroup_size(${size})\nfn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid3: vec3u) {\n  let lid = lid3.x;\n  ${FLAT}`;

/**
 * Workgroup reduction over RW threads (sum or max): each thread posts its partial, then every
 * thread reads all RW partials in index order, so all of them hold the same value, summed in a
 * fixed order. Two barriers per reduction instead of a tree's log2(RW) + 1: barriers are what
 * costs most on SwiftShader, and on GPUs the RW reads are broadcasts from workgroup memory.
 */
export const REDUCE = `
var<workgroup> red: array<f32, ${RW}>;
fn reduce_sum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  var r = 0.0;
  for (var i = 0u; i < ${RW}u; i++) { r += red[i]; }
  workgroupBarrier();
  return r;
}
fn reduce_max(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  var r = red[0];
  for (var i = 1u; i < ${RW}u; i++) { r = max(r, red[i]); }
  workgroupBarrier();
  return r;
}`;

/**
 * The WGSL module for `def` with its arguments mapped onto bindings: slots[i] is the binding
 * (after the uniform at 0) of argument i; arguments with equal slots share one buffer. An 'f16'
 * argument is `array<f16>` with native16 (the device has shader-f16, and `enable f16` is
 * emitted), else `array<u32>` holding pairs; either way its accessors ld_/st2_ are defined here.
 */
export function buildShader(def: KernelDef, slots: readonly number[], native16 = false): string {
  const fields = [...def.args.map(([n]) => `o_${n}: u32`), ...def.params.map(([n, t]) => `${n}: ${t}`)];
  const has16 = def.args.some(([, t]) => t === 'f16');
  const decl: string[] = [
    ...[...(def.enable ?? []), ...(has16 && native16 ? ['f16'] : [])].map((e) => `enable ${e};`),
    `struct Params {\n  ${fields.join(',\n  ')},\n}`,
    '@group(0) @binding(0) var<uniform> P: Params;',
  ];
  const seen = new Map<number, ArgType>();
  const access: string[] = [];
  def.args.forEach(([n, t], i) => {
    const s = slots[i];
    const prev = seen.get(s);
    if (prev === undefined) {
      seen.set(s, t);
      const elem = t === 'f16' ? (native16 ? 'f16' : 'u32') : t;
      decl.push(`@group(0) @binding(${s + 1}) var<storage, read_write> bnd${s}: array<${elem}>;`);
    } else if (prev !== t) {
      throw new TypeError(`${def.name}: one buffer bound as both ${prev} and ${t}`);
    }
    if (t === 'f16')
      access.push(
        native16
          ? `fn ld_${n}(i: u32) -> f32 { return f32(bnd${s}[i]); }\n` +
              `fn st2_${n}(i: u32, v0: f32, v1: f32) { bnd${s}[i] = f16(v0); bnd${s}[i + 1u] = f16(v1); }`
          : `fn ld_${n}(i: u32) -> f32 { return unpack2x16float(bnd${s}[i >> 1u])[i & 1u]; }\n` +
              `fn st2_${n}(i: u32, v0: f32, v1: f32) { bnd${s}[i >> 1u] = pack2x16float(vec2f(v0, v1)); }`,
      );
  });
  let body = def.body;
  def.args.forEach(([n], i) => {
    body = body.replace(new RegExp(`\\b${n}\\[`, 'g'), `bnd${slots[i]}[`);
  });
  return [...decl, ...access].join('\n') + '\n' + body;
}
