/**
 * WGSL kernels of the pseudo-gradient codecs (src/swarm/compress): Δ = base − θ, error feedback
 * x = β·residual + Δ, and the fp32, fp16, int8 and SparseLoCo (chunked top-k) encoders, with the
 * residual update residual = x − decoded. The host side is ../codec.ts.
 *
 * BIT-EXACT BY CONSTRUCTION: the encoded bytes must equal the CPU codec's for the same Δ, on
 * every adapter. So no kernel here does float arithmetic: values are handled as binary32 bit
 * patterns (u32), magnitudes compare as integers (for finite x, |x| orders like its bits with the
 * sign cleared), and the CPU's float64 arithmetic (the β·r + Δ fold, the subtractions, SparseLoCo's
 * two-level split) runs in exact integer soft-float (softfloat.ts). Ties break as on the CPU: the
 * top-k keeps the k largest |x| per chunk, the lower index on equal magnitudes.
 *
 * DETERMINISM: sums are integer sums (exact, so their order cannot matter). The int8 kernel's
 * per-bin sums use workgroup integer atomics on digit counters sized never to overflow: the only
 * atomics of the backend, and order-free because integer addition is exact; no float is ever
 * accumulated atomically.
 */
import { type KernelDef, ENTRY, RW, WG } from './common.js';
import { SOFT_F32, SOFT_F64, SOFT_FOLD32, SOFT_FOLD64, SOFT_U64 } from './softfloat.js';

/** Elements per workgroup of the fold and int8 sum-of-squares kernels. */
export const CODEC_CHUNK = RW * 64;
/** Elements per workgroup of the int8 quantiser (its counters take 2^16 adds of < 2^12 each). */
export const INT8_BLOCK = 1 << 16;
/** Counters per int8 bin: five 12-bit digits of Σ|v| for x >= 0, five for x < 0, and the count. */
export const INT8_BIN_COUNTERS = 11;
export const INT8_COUNTERS = 256 * INT8_BIN_COUNTERS;

/** Fixed-order u32 workgroup reduction over RW threads: op 0 sum, 1 min, 2 max. */
const REDUCE_U32 = `
var<workgroup> redu: array<u32, ${RW}>;
fn reduce_u32(v: u32, lid: u32, op: u32) -> u32 {
  redu[lid] = v;
  workgroupBarrier();
  var r = redu[0];
  for (var i = 1u; i < ${RW}u; i++) {
    let w = redu[i];
    if (op == 0u) { r += w; } else if (op == 1u) { r = min(r, w); } else { r = max(r, w); }
  }
  workgroupBarrier();
  return r;
}`;

/**
 * floor(|x| / 2^g) for binary32 magnitude bits ab (finite), as a 64-bit integer: the mantissa
 * shifted by (exponent of its lowest bit) − g. Callers choose g so the result has at most 60 bits.
 */
const TRUNC_SHIFT = `
fn trunc_shift(ab: u32, g: i32) -> vec2u {
  let ex = ab >> 23u;
  var mant = ab & 0x7fffffu;
  var lsb = -149;
  if (ex != 0u) { mant = mant | 0x800000u; lsb = i32(ex) - 150; }
  let sh = lsb - g;
  if (sh >= 0) { return u64_shl(vec2u(mant, 0u), u32(sh)); }
  return u64_shr(vec2u(mant, 0u), u32(-sh));
}`;

/** How the fold forms x: Δ alone, β ∈ {0, 1} (binary32 only), any other β (float64 emulation). */
export type FoldMode = 'delta' | 'ef32' | 'ef64';

const foldDefs = new Map<FoldMode, KernelDef>();

/**
 * x[i] = fround(β·r[i] + Δ[i]) with Δ[i] = fround(base[i] − loc[i]) (has_base) or loc[i], exactly
 * as JavaScript computes `beta * r[i] + delta[i]` into a Float32Array ('delta' mode: x = Δ). Per
 * workgroup of CODEC_CHUNK elements: part[2g] = the first index whose x is not finite (or
 * 0xffffffff), part[2g+1] = the largest |x| bits among the finite ones. One kernel per mode, so
 * each carries only the arithmetic it runs.
 */
export function codecFold(mode: FoldMode): KernelDef {
  let def = foldDefs.get(mode);
  if (def) return def;
  const lib =
    mode === 'ef64'
      ? `${SOFT_F32}${SOFT_U64}${SOFT_F64}${SOFT_FOLD64}`
      : mode === 'ef32'
        ? `${SOFT_F32}${SOFT_FOLD32}`
        : SOFT_F32;
  const fold =
    mode === 'ef64'
      ? 'f32_fold64(f64_from_bits(P.beta_lo, P.beta_hi), r, d)'
      : mode === 'ef32'
        ? 'f32_fold32(P.beta_hi != 0u, r, d)'
        : '';
  def = {
    name: `codec_fold_${mode}`,
    args: [
      ['xs', 'u32'],
      ['part', 'u32'],
      ['base', 'u32'],
      ['loc', 'u32'],
      ...(mode === 'delta' ? [] : [['res', 'u32'] as const]),
    ],
    params: [
      ['n', 'u32'],
      ['ng', 'u32'],
      ['has_base', 'u32'],
      ['beta_lo', 'u32'],
      ['beta_hi', 'u32'],
    ],
    body: `${lib}
${REDUCE_U32}
${ENTRY(String(RW))}
  if (flat >= P.ng) { return; }
  let g0 = flat * ${CODEC_CHUNK}u;
  var bad = 0xffffffffu;
  var amax = 0u;
  for (var k = 0u; k < ${CODEC_CHUNK / RW}u; k++) {
    let i = g0 + k * ${RW}u + lid;
    if (i < P.n) {
      var d = loc[P.o_loc + i];
      if (P.has_base != 0u) { d = f32_sub_exact(base[P.o_base + i], d); }
      var x = d;
      ${
        mode === 'delta'
          ? ''
          : `let r = res[P.o_res + i];
      if (f32_bad(d) || f32_bad(r)) { x = 0x7fc00000u; } else { x = ${fold}; }`
      }
      xs[P.o_xs + i] = x;
      if (f32_bad(x)) { bad = min(bad, i); } else { amax = max(amax, x & 0x7fffffffu); }
    }
  }
  let b = reduce_u32(bad, lid, 1u);
  let a = reduce_u32(amax, lid, 2u);
  if (lid == 0u) {
    part[P.o_part + 2u * flat] = b;
    part[P.o_part + 2u * flat + 1u] = a;
  }
}`,
  };
  foldDefs.set(mode, def);
  return def;
}

/** One pass of the (min, max) reduction of CODEC_FOLD's pairs: CODEC_CHUNK pairs per workgroup. */
export const CODEC_MINMAX: KernelDef = {
  name: 'codec_minmax',
  args: [
    ['outp', 'u32'],
    ['inp', 'u32'],
  ],
  params: [
    ['n', 'u32'],
    ['ng', 'u32'],
  ],
  body: `${REDUCE_U32}
${ENTRY(String(RW))}
  if (flat >= P.ng) { return; }
  var b = 0xffffffffu;
  var a = 0u;
  for (var k = 0u; k < ${CODEC_CHUNK / RW}u; k++) {
    let i = flat * ${CODEC_CHUNK}u + k * ${RW}u + lid;
    if (i < P.n) {
      b = min(b, inp[P.o_inp + 2u * i]);
      a = max(a, inp[P.o_inp + 2u * i + 1u]);
    }
  }
  let rb = reduce_u32(b, lid, 1u);
  let ra = reduce_u32(a, lid, 2u);
  if (lid == 0u) {
    outp[P.o_outp + 2u * flat] = rb;
    outp[P.o_outp + 2u * flat + 1u] = ra;
  }
}`,
};

/**
 * Column sums of a row-major table of 64-bit (wide = 1: u32 pairs, low word first) or 32-bit
 * unsigned integers into 64-bit totals, rows in order, one invocation per column. Exact.
 */
export const CODEC_U64SUM: KernelDef = {
  name: 'codec_u64sum',
  args: [
    ['outp', 'u32'],
    ['inp', 'u32'],
  ],
  params: [
    ['cols', 'u32'],
    ['rows', 'u32'],
    ['wide', 'u32'],
  ],
  body: `${SOFT_U64}
${ENTRY(String(WG))}
  let c = flat * ${WG}u + lid;
  if (c >= P.cols) { return; }
  var s = vec2u(0u, 0u);
  for (var r = 0u; r < P.rows; r++) {
    let at = r * P.cols + c;
    if (P.wide != 0u) {
      s = u64_add(s, vec2u(inp[P.o_inp + 2u * at], inp[P.o_inp + 2u * at + 1u]));
    } else {
      s = u64_add(s, vec2u(inp[P.o_inp + at], 0u));
    }
  }
  outp[P.o_outp + 2u * c] = s.x;
  outp[P.o_outp + 2u * c + 1u] = s.y;
}`,
};

/** The CPU fp16 codec's f32BitsToF16Bits (saturating, ties to even) and its exact inverse. */
const F16_BITS = `
fn f16_bits(bits: u32) -> u32 {
  let sign = (bits >> 16u) & 0x8000u;
  let ex = (bits >> 23u) & 0xffu;
  let mant = bits & 0x7fffffu;
  if (ex == 0xffu) { return sign | 0x7bffu; }
  let e = i32(ex) - 112;
  if (e >= 31) { return sign | 0x7bffu; }
  if (e <= 0) {
    let shift = u32(14 - e);
    if (shift > 24u) { return sign; }
    let full = mant | 0x800000u;
    var h = full >> shift;
    let rem = full & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u) == 1u)) { h += 1u; }
    return sign | h;
  }
  var h = (u32(e) << 10u) | (mant >> 13u);
  let rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) == 1u)) { h += 1u; }
  if (h >= 0x7c00u) { return sign | 0x7bffu; }
  return sign | h;
}
fn f16_to_f32_bits(h: u32) -> u32 {
  let s = (h & 0x8000u) << 16u;
  let ex = (h >> 10u) & 0x1fu;
  let mant = h & 0x3ffu;
  if (ex == 0u) {
    if (mant == 0u) { return s; }
    let p = 31u - countLeadingZeros(mant);
    return s | ((p + 103u) << 23u) | ((mant << (23u - p)) & 0x7fffffu);
  }
  return s | ((ex + 112u) << 23u) | (mant << 13u);
}`;

/**
 * fp16: outw[w] = the binary16 bits of x[2w] | x[2w+1] << 16 (the wire's little-endian pairs);
 * with has_ef, x[i] becomes the residual fround(x[i] − decoded[i]).
 */
export const CODEC_FP16: KernelDef = {
  name: 'codec_fp16',
  args: [
    ['outw', 'u32'],
    ['xs', 'u32'],
  ],
  params: [
    ['n', 'u32'],
    ['has_ef', 'u32'],
  ],
  body: `${SOFT_F32}
${F16_BITS}
${ENTRY(String(WG))}
  let w = flat * ${WG}u + lid;
  if (2u * w >= P.n) { return; }
  var word = 0u;
  for (var e = 0u; e < 2u; e++) {
    let i = 2u * w + e;
    if (i < P.n) {
      let b = xs[P.o_xs + i];
      let h = f16_bits(b);
      word = word | (h << (16u * e));
      if (P.has_ef != 0u) { xs[P.o_xs + i] = f32_sub_exact(b, f16_to_f32_bits(h)); }
    }
  }
  outw[P.o_outw + w] = word;
}`,
};

/**
 * int8, pass 1: per workgroup of CODEC_CHUNK elements, Σ v² with v = floor(|x| / 2^gs) < 2^26,
 * as three 64-bit column sums of v = a·2^13 + b: Σa² (·2^26), Σ2ab (·2^13), Σb².
 */
export const CODEC_INT8_SS: KernelDef = {
  name: 'codec_int8_ss',
  args: [
    ['part', 'u32'],
    ['xs', 'u32'],
  ],
  params: [
    ['n', 'u32'],
    ['ng', 'u32'],
    ['gs', 'i32'],
  ],
  body: `${SOFT_U64}
${TRUNC_SHIFT}
var<workgroup> acc: array<vec2u, ${RW * 3}>;
${ENTRY(String(RW))}
  if (flat >= P.ng) { return; }
  var s0 = vec2u(0u, 0u);
  var s1 = vec2u(0u, 0u);
  var s2 = vec2u(0u, 0u);
  for (var k = 0u; k < ${CODEC_CHUNK / RW}u; k++) {
    let i = flat * ${CODEC_CHUNK}u + k * ${RW}u + lid;
    if (i < P.n) {
      let v = trunc_shift(xs[P.o_xs + i] & 0x7fffffffu, P.gs).x;
      let a = v >> 13u;
      let b = v & 0x1fffu;
      s0 = u64_add(s0, vec2u(a * a, 0u));
      s1 = u64_add(s1, vec2u(2u * a * b, 0u));
      s2 = u64_add(s2, vec2u(b * b, 0u));
    }
  }
  acc[3u * lid] = s0;
  acc[3u * lid + 1u] = s1;
  acc[3u * lid + 2u] = s2;
  workgroupBarrier();
  if (lid < 3u) {
    var t = vec2u(0u, 0u);
    for (var j = 0u; j < ${RW}u; j++) { t = u64_add(t, acc[3u * j + lid]); }
    part[P.o_part + 2u * (3u * flat + lid)] = t.x;
    part[P.o_part + 2u * (3u * flat + lid) + 1u] = t.y;
  }
}`,
};

/**
 * int8, pass 2: the bin of every element and the per-bin integer sums. kth holds 255 ordered
 * keys: bin(x) = #{j : key(x) >= kth[j]}, key(x) the order-preserving u32 image of x (the host
 * computes kth from the scale so that this equals the CPU's clamp(round(x/scale) + 128)). Bytes
 * go four to a word into qw. Per bin, counters of |v| = floor(|x| / 2^gb) < 2^60 in 12-bit
 * digits (x >= 0 and x < 0 apart) and the count go to part[g * INT8_COUNTERS ..].
 */
export const CODEC_INT8_Q: KernelDef = {
  name: 'codec_int8_q',
  args: [
    ['qw', 'u32'],
    ['part', 'u32'],
    ['xs', 'u32'],
    ['kth', 'u32'],
  ],
  params: [
    ['n', 'u32'],
    ['ng', 'u32'],
    ['gb', 'i32'],
  ],
  body: `${SOFT_U64}
${TRUNC_SHIFT}
var<workgroup> thr: array<u32, 256>;
var<workgroup> cnt: array<atomic<u32>, ${INT8_COUNTERS}>;
${ENTRY(String(WG))}
  if (flat >= P.ng) { return; }
  if (lid < 255u) { thr[lid] = kth[P.o_kth + lid]; }
  workgroupBarrier();
  let w0 = flat * ${INT8_BLOCK / 4}u;
  for (var k = 0u; k < ${INT8_BLOCK / 4 / WG}u; k++) {
    let w = w0 + k * ${WG}u + lid;
    if (4u * w < P.n) {
      var word = 0u;
      for (var e = 0u; e < 4u; e++) {
        let i = 4u * w + e;
        if (i < P.n) {
          let b = xs[P.o_xs + i];
          let key = select(b ^ 0x80000000u, ~b, (b >> 31u) == 1u);
          var lo = 0u;
          var hi = 255u;
          while (lo < hi) {
            let mid = (lo + hi) / 2u;
            if (thr[mid] <= key) { lo = mid + 1u; } else { hi = mid; }
          }
          word = word | (lo << (8u * e));
          let v = trunc_shift(b & 0x7fffffffu, P.gb);
          let at = lo * ${INT8_BIN_COUNTERS}u + select(0u, 5u, (b >> 31u) == 1u);
          for (var d = 0u; d < 5u; d++) {
            let dg = u64_shr(v, 12u * d).x & 0xfffu;
            if (dg != 0u) { atomicAdd(&cnt[at + d], dg); }
          }
          atomicAdd(&cnt[lo * ${INT8_BIN_COUNTERS}u + 10u], 1u);
        }
      }
      qw[P.o_qw + w] = word;
    }
  }
  workgroupBarrier();
  for (var c = lid; c < ${INT8_COUNTERS}u; c += ${WG}u) {
    part[P.o_part + flat * ${INT8_COUNTERS}u + c] = atomicLoad(&cnt[c]);
  }
}`,
};

/** int8 residual: x[i] = fround(x[i] − lut[q[i]]). */
export const CODEC_INT8_RES: KernelDef = {
  name: 'codec_int8_res',
  args: [
    ['xs', 'u32'],
    ['qw', 'u32'],
    ['lut', 'u32'],
  ],
  params: [['n', 'u32']],
  body: `${SOFT_F32}
${ENTRY(String(WG))}
  let i = flat * ${WG}u + lid;
  if (i >= P.n) { return; }
  let q = (qw[P.o_qw + i / 4u] >> (8u * (i % 4u))) & 0xffu;
  xs[P.o_xs + i] = f32_sub_exact(xs[P.o_xs + i], lut[P.o_lut + q]);
}`,
};

/** Shape of a sparse chunk, shared by the sparse kernels (one workgroup per chunk). */
const CHUNK_SHAPE = `
  let c = flat;
  let start = c * P.C;
  let len = min(P.C, P.n - start);
  let kc = min(P.k, len);
  let ob = P.o_sel + c * P.k;`;

/** Largest k the GPU SparseLoCo encoder takes (its levels kernel sorts the kept in workgroup memory). */
export const SPARSE_MAX_K = 512;

/**
 * SparseLoCo top-k, one workgroup per chunk: sel[c*k + j], j < kc, the local indices of the kc
 * largest |x| of chunk c in ascending order, ties to the lower index (the CPU codec's order).
 * The kc-th largest magnitude τ is found by radix selection on the magnitude bits, 8 bits a pass
 * (4 passes, each an integer histogram of the next byte among the elements matching the prefix
 * so far); then every |x| > τ and the first kc − #{|x| > τ} indices with |x| = τ are kept,
 * written in index order through a fixed-order prefix sum over the threads' contiguous segments.
 * The histogram counts with workgroup integer atomics: counts are exact, so their order is moot.
 */
export const CODEC_TOPK: KernelDef = {
  name: 'codec_topk',
  args: [
    ['sel', 'u32'],
    ['xs', 'u32'],
  ],
  params: [
    ['n', 'u32'],
    ['C', 'u32'],
    ['k', 'u32'],
    ['chunks', 'u32'],
  ],
  body: `
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> pick: vec2u;
var<workgroup> cg: array<u32, ${RW}>;
var<workgroup> ce: array<u32, ${RW}>;
${ENTRY(String(RW))}
  if (flat >= P.chunks) { return; }
  ${CHUNK_SHAPE}
  let xb = P.o_xs + start;
  if (kc == len) {
    for (var i = lid; i < len; i += ${RW}u) { sel[ob + i] = i; }
    return;
  }
  var prefix = 0u;
  var mask = 0u;
  var need = kc;
  for (var ps = 0u; ps < 4u; ps++) {
    let sh = 24u - 8u * ps;
    for (var b = lid; b < 256u; b += ${RW}u) { atomicStore(&hist[b], 0u); }
    workgroupBarrier();
    for (var i = lid; i < len; i += ${RW}u) {
      let a = xs[xb + i] & 0x7fffffffu;
      if ((a & mask) == prefix) { atomicAdd(&hist[(a >> sh) & 0xffu], 1u); }
    }
    workgroupBarrier();
    if (lid == 0u) {
      // From the top byte down: the bucket holding the need-th largest.
      var above = 0u;
      var b = 255u;
      loop {
        let h = atomicLoad(&hist[b]);
        if (above + h >= need || b == 0u) { break; }
        above += h;
        b -= 1u;
      }
      pick = vec2u(b, above);
    }
    workgroupBarrier();
    let pk = pick;
    prefix = prefix | (pk.x << sh);
    mask = mask | (0xffu << sh);
    need -= pk.y;
    workgroupBarrier();
  }
  let tau = prefix;
  let seg = (len + ${RW - 1}u) / ${RW}u;
  let s0 = min(lid * seg, len);
  let s1 = min(s0 + seg, len);
  var ng = 0u;
  var ne = 0u;
  for (var i = s0; i < s1; i++) {
    let a = xs[xb + i] & 0x7fffffffu;
    if (a > tau) { ng += 1u; } else if (a == tau) { ne += 1u; }
  }
  cg[lid] = ng;
  ce[lid] = ne;
  workgroupBarrier();
  var gbefore = 0u;
  var ebefore = 0u;
  for (var j = 0u; j < lid; j++) {
    gbefore += cg[j];
    ebefore += ce[j];
  }
  var pos = gbefore + min(ebefore, need);
  var er = ebefore;
  for (var i = s0; i < s1; i++) {
    let a = xs[xb + i] & 0x7fffffffu;
    if (a > tau) {
      sel[ob + pos] = i;
      pos += 1u;
    } else if (a == tau) {
      if (er < need) { sel[ob + pos] = i; pos += 1u; }
      er += 1u;
    }
  }
}`,
};

/**
 * SparseLoCo levels, one workgroup per chunk: the kept magnitudes sorted ascending in workgroup
 * memory (by rank: equal magnitudes are interchangeable), then the CPU codec's twoLevels in
 * exact binary64 (softfloat.ts) with the same operations: one invocation forms the prefix sums
 * p_s in order (p_kc is the CPU's total: the same additions from 0), then every split s is
 * scored in parallel, p_s²/s + (total − p_s)²/(kc − s), and the best score wins, the smallest s
 * on equal scores (the CPU keeps the first best of its ascending scan). lv[2c], lv[2c+1] = the
 * binary32 bits of a and h; tt[c] = the threshold magnitude. Divisions are by the integers s
 * and kc − s (f64_div_u16).
 */
export const CODEC_LEVELS: KernelDef = {
  name: 'codec_levels',
  args: [
    ['lv', 'u32'],
    ['tt', 'u32'],
    ['sel', 'u32'],
    ['xs', 'u32'],
  ],
  params: [
    ['n', 'u32'],
    ['C', 'u32'],
    ['k', 'u32'],
    ['chunks', 'u32'],
  ],
  body: `${SOFT_U64}${SOFT_F64}
var<workgroup> mg: array<u32, ${SPARSE_MAX_K}>;
var<workgroup> srt: array<u32, ${SPARSE_MAX_K}>;
var<workgroup> pre: array<vec3u, ${SPARSE_MAX_K + 1}>;
var<workgroup> bs: array<vec4u, ${RW}>;
fn pre_get(s: u32) -> F64 { let v = pre[s]; return F64(0u, bitcast<i32>(v.x), v.yz); }
${ENTRY(String(RW))}
  if (flat >= P.chunks) { return; }
  ${CHUNK_SHAPE}
  let xb = P.o_xs + start;
  for (var j = lid; j < kc; j += ${RW}u) { mg[j] = xs[xb + sel[ob + j]] & 0x7fffffffu; }
  workgroupBarrier();
  for (var j = lid; j < kc; j += ${RW}u) {
    let mj = mg[j];
    var rank = 0u;
    for (var l = 0u; l < kc; l++) {
      let ml = mg[l];
      if (ml < mj || (ml == mj && l < j)) { rank += 1u; }
    }
    srt[rank] = mj;
  }
  workgroupBarrier();
  if (lid == 0u) {
    var p = f64_zero(0u);
    pre[0] = vec3u(0u, 0u, 0u);
    for (var j = 0u; j < kc; j++) {
      p = f64_add(p, f64_from_f32(srt[j]));
      pre[j + 1u] = vec3u(bitcast<u32>(p.e), p.m);
    }
  }
  workgroupBarrier();
  let total = pre_get(kc);
  // Best split of this invocation's s = lid + 1, lid + 1 + RW, ...: (score bits, s), s = 0 if none.
  var best = f64_zero(0u);
  var bestS = 0u;
  for (var s = lid + 1u; s <= kc; s += ${RW}u) {
    if (s < kc && srt[s - 1u] == srt[s]) { continue; }
    let p = pre_get(s);
    var score = f64_div_u16(f64_mul(p, p), s);
    if (s < kc) {
      let hi = f64_sub(total, p);
      score = f64_add(score, f64_div_u16(f64_mul(hi, hi), kc - s));
    }
    if (bestS == 0u || f64_gt(score, best)) { best = score; bestS = s; }
  }
  bs[lid] = vec4u(bitcast<u32>(best.e), best.m, bestS);
  workgroupBarrier();
  if (lid != 0u) { return; }
  var win = 0u;
  var wbest = f64_zero(0u);
  for (var t = 0u; t < ${RW}u; t++) {
    let v = bs[t];
    if (v.w == 0u) { continue; }
    let sc = F64(0u, bitcast<i32>(v.x), v.yz);
    if (win == 0u || f64_gt(sc, wbest) || (!f64_gt(wbest, sc) && v.w < win)) { win = v.w; wbest = sc; }
  }
  let bp = pre_get(win);
  let a = f64_to_f32(f64_div_u16(bp, win));
  var h = a;
  if (win < kc) { h = f64_to_f32(f64_div_u16(f64_sub(total, bp), kc - win)); }
  lv[P.o_lv + 2u * c] = a;
  lv[P.o_lv + 2u * c + 1u] = h;
  tt[P.o_tt + c] = srt[win - 1u];
}`,
};

/** The 2-bit code of kept element j (sign: x < 0, so −0 is positive; level: |x| > t). */
const SPARSE_CODE = `
  let c = j / P.k;
  let xi = c * P.C + sel[P.o_sel + j];
  let xb = xs[P.o_xs + xi];
  let ab = xb & 0x7fffffffu;
  let neg = (xb >> 31u) == 1u && ab != 0u;
  let big = ab > tt[P.o_tt + c];`;

/**
 * SparseLoCo wire streams, one invocation per output word: words [0, nidx) are the LSB-first
 * stream of the K b-bit indices (entry j at stream bit j*b), words [nidx, nidx + ncode) the
 * stream of the K 2-bit codes. Each word gathers the entries that overlap it, so no two
 * invocations write one word.
 */
export const CODEC_SPARSE_PACK: KernelDef = {
  name: 'codec_sparse_pack',
  args: [
    ['outw', 'u32'],
    ['sel', 'u32'],
    ['tt', 'u32'],
    ['xs', 'u32'],
  ],
  params: [
    ['C', 'u32'],
    ['k', 'u32'],
    ['K', 'u32'],
    ['bits', 'u32'],
    ['nidx', 'u32'],
    ['ncode', 'u32'],
  ],
  body: `
${ENTRY(String(WG))}
  let w = flat * ${WG}u + lid;
  if (w >= P.nidx + P.ncode) { return; }
  var word = 0u;
  if (w < P.nidx) {
    let b0 = 32u * w;
    let j0 = b0 / P.bits;
    let j1 = min((b0 + 31u) / P.bits, P.K - 1u);
    for (var j = j0; j <= j1; j++) {
      let v = sel[P.o_sel + j];
      let p = j * P.bits;
      if (p >= b0) { word = word | (v << (p - b0)); } else { word = word | (v >> (b0 - p)); }
    }
  } else {
    let cw = w - P.nidx;
    for (var e = 0u; e < 16u; e++) {
      let j = 16u * cw + e;
      if (j >= P.K) { break; }
      ${SPARSE_CODE}
      word = word | ((select(0u, 2u, neg) | select(0u, 1u, big)) << (2u * e));
    }
  }
  outw[P.o_outw + w] = word;
}`,
};

/** SparseLoCo residual at the kept entries: x = fround(x − (±a or ±h)); elsewhere x − 0 = x. */
export const CODEC_SPARSE_RES: KernelDef = {
  name: 'codec_sparse_res',
  args: [
    ['xs', 'u32'],
    ['sel', 'u32'],
    ['tt', 'u32'],
    ['lv', 'u32'],
  ],
  params: [
    ['C', 'u32'],
    ['k', 'u32'],
    ['K', 'u32'],
  ],
  body: `${SOFT_F32}
${ENTRY(String(WG))}
  let j = flat * ${WG}u + lid;
  if (j >= P.K) { return; }
  ${SPARSE_CODE}
  var mag = lv[P.o_lv + 2u * c];
  if (big) { mag = lv[P.o_lv + 2u * c + 1u]; }
  xs[P.o_xs + xi] = f32_sub_exact(xb, select(mag, mag | 0x80000000u, neg));
}`,
};

/** Test kernel for softfloat.ts: out[i] = op(a[i], b[i]) on binary64 bit pairs (see the test). */
export const SOFTFLOAT_PROBE: KernelDef = {
  name: 'softfloat_probe',
  args: [
    ['outp', 'u32'],
    ['inp', 'u32'],
  ],
  params: [
    ['n', 'u32'],
    ['op', 'u32'],
  ],
  body: `${SOFT_U64}${SOFT_F64}${SOFT_F32}${SOFT_FOLD32}${SOFT_FOLD64}
${ENTRY(String(WG))}
  let i = flat * ${WG}u + lid;
  if (i >= P.n) { return; }
  let a = f64_from_bits(inp[P.o_inp + 4u * i], inp[P.o_inp + 4u * i + 1u]);
  let b = f64_from_bits(inp[P.o_inp + 4u * i + 2u], inp[P.o_inp + 4u * i + 3u]);
  var r = vec2u(0u, 0u);
  switch (P.op) {
    case 0u: { r = f64_to_bits(f64_add(a, b)); }
    case 1u: { r = f64_to_bits(f64_mul(a, b)); }
    case 2u: { r = f64_to_bits(f64_div(a, b)); }
    case 3u: { r = vec2u(f64_to_f32(a), select(0u, 1u, f64_gt(a, b))); }
    case 4u: { r = f64_to_bits(f64_from_f32(inp[P.o_inp + 4u * i])); }
    case 5u: { r = vec2u(f32_sub_exact(inp[P.o_inp + 4u * i], inp[P.o_inp + 4u * i + 1u]), 0u); }
    default: {
      let lo = inp[P.o_inp + 4u * i + 2u];
      let hi = inp[P.o_inp + 4u * i + 3u];
      let rr = inp[P.o_inp + 4u * i];
      let dd = inp[P.o_inp + 4u * i + 1u];
      if (lo == 0u && (hi == 0u || hi == 0x3ff00000u)) {
        r = vec2u(f32_fold32(hi != 0u, rr, dd), 0u);
      } else {
        r = vec2u(f32_fold64(f64_from_bits(lo, hi), rr, dd), 0u);
      }
    }
  }
  outp[P.o_outp + 2u * i] = r.x;
  outp[P.o_outp + 2u * i + 1u] = r.y;
}`,
};
