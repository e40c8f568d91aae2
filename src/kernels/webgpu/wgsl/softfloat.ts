/**
 * Exact IEEE 754 arithmetic in WGSL integer operations: binary64 add, multiply and divide with
 * round-to-nearest-even, conversions from binary32 and to binary32. For the GPU codec kernels
 * (codec.ts), whose output must equal the CPU codec's bit for bit.
 *
 * WHY HAND-WRITTEN AND WHY INTEGERS: the CPU codec (src/swarm/compress) computes in JavaScript
 * numbers, i.e. binary64, then rounds to binary32 on store (`f32[i] = beta * r + d`). WGSL has no
 * f64, and its f32 is no substitute even where one rounding would do: WGSL lets the compiler fuse
 * a*b+c into an FMA, lets an implementation flush subnormals to zero and assume no NaN or
 * infinity (so `x != x` may be folded away). Integer operations have none of that freedom, so
 * this library reproduces JavaScript's arithmetic exactly on every adapter. No WGSL library does
 * this (soft-float emulations exist for GLSL/CUDA, none for WGSL's u32-only integer set).
 *
 * Representation: `F64 { s, e, m }` is (-1)^s * m * 2^e with m a 64-bit unsigned held in a vec2u
 * (x = low word, y = high word), normalised to 2^52 <= m < 2^53, or m = 0 for a (signed) zero.
 * Subnormal binary64 results are NOT produced: the callers' operands keep every result inside
 * [2^-400, 2^400] or zero (codec.ts says why for each use), so rounding is always at bit 52.
 * Infinities and NaN are not represented: callers test binary32 inputs for them first.
 *
 * Every function is checked against JavaScript's own arithmetic on random and edge operands
 * (test/webgpu-codec.test.ts, `soft-float`).
 *
 * Four pieces, so a kernel carries only the code it calls (SwiftShader runs a shader several
 * times slower when float64 emulation merely sits in a branch it skips): SOFT_U64 (64-bit
 * integers as vec2u), SOFT_F32 (exact binary32 add/sub in u32 alone), SOFT_F64 (binary64; needs
 * SOFT_U64), SOFT_FOLD (the error-feedback fold; needs all three).
 */

export const SOFT_U64 = /* wgsl */ `


fn u64_add(a: vec2u, b: vec2u) -> vec2u {
  let lo = a.x + b.x;
  return vec2u(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}
fn u64_sub(a: vec2u, b: vec2u) -> vec2u {
  return vec2u(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}
fn u64_lt(a: vec2u, b: vec2u) -> bool { return a.y < b.y || (a.y == b.y && a.x < b.x); }
fn u64_is0(a: vec2u) -> bool { return a.x == 0u && a.y == 0u; }
/** a << s, 0 <= s < 64. */
fn u64_shl(a: vec2u, s: u32) -> vec2u {
  if (s == 0u) { return a; }
  if (s >= 32u) { return vec2u(0u, a.x << (s - 32u)); }
  return vec2u(a.x << s, (a.y << s) | (a.x >> (32u - s)));
}
/** a >> s, any s >= 0. */
fn u64_shr(a: vec2u, s: u32) -> vec2u {
  if (s == 0u) { return a; }
  if (s >= 64u) { return vec2u(0u, 0u); }
  if (s >= 32u) { return vec2u(a.y >> (s - 32u), 0u); }
  return vec2u((a.x >> s) | (a.y << (32u - s)), a.y >> s);
}
/** The bits of a below bit s (s <= 64) are not all zero. */
fn u64_low_nz(a: vec2u, s: u32) -> bool {
  if (s == 0u) { return false; }
  if (s >= 64u) { return !u64_is0(a); }
  if (s >= 32u) { return a.x != 0u || (a.y & ((1u << (s - 32u)) - 1u)) != 0u; }
  return (a.x & ((1u << s) - 1u)) != 0u;
}
/** Index of the highest set bit (a != 0). */
fn u64_msb(a: vec2u) -> u32 {
  if (a.y != 0u) { return 63u - countLeadingZeros(a.y); }
  return 31u - countLeadingZeros(a.x);
}
/** Full 32 x 32 -> 64-bit product. */
fn mul32(a: u32, b: u32) -> vec2u {
  let al = a & 0xffffu;
  let ah = a >> 16u;
  let bl = b & 0xffffu;
  let bh = b >> 16u;
  let ll = al * bl;
  let lh = al * bh;
  let hl = ah * bl;
  let hh = ah * bh;
  let r = u64_add(u64_add(vec2u(ll, hh), vec2u(lh << 16u, lh >> 16u)), vec2u(hl << 16u, hl >> 16u));
  return r;
}
`;

export const SOFT_F32 = /* wgsl */ `
/** Binary32 bits b are Inf or NaN. */
fn f32_bad(b: u32) -> bool { return (b & 0x7f800000u) == 0x7f800000u; }

/**
 * The binary32 sum of finite binary32 a and b, rounded to nearest even, subnormals kept, overflow
 * to infinity: in u32 alone (mantissas with three guard bits). Equal to JavaScript's
 * Math.fround(a + b), whose float64 intermediate cannot change the result (53 >= 2*24 + 2).
 */
fn f32_add_exact(a: u32, b: u32) -> u32 {
  let aa = a & 0x7fffffffu;
  let ba = b & 0x7fffffffu;
  if (ba == 0u) {
    if (aa == 0u) { return a & b; }
    return a;
  }
  if (aa == 0u) { return b; }
  var x = a;
  var y = b;
  if (aa < ba) { x = b; y = a; }
  let xa = x & 0x7fffffffu;
  let ya = y & 0x7fffffffu;
  let ex = max(xa >> 23u, 1u);
  let ey = max(ya >> 23u, 1u);
  let mx = ((xa & 0x7fffffu) | select(0u, 0x800000u, xa >= 0x800000u)) << 3u;
  var my = ((ya & 0x7fffffu) | select(0u, 0x800000u, ya >= 0x800000u)) << 3u;
  let d = ex - ey;
  if (d >= 27u) {
    my = 1u;
  } else if (d > 0u) {
    my = (my >> d) | select(0u, 1u, (my & ((1u << d) - 1u)) != 0u);
  }
  let sx = x & 0x80000000u;
  var m = 0u;
  if (((x ^ y) & 0x80000000u) == 0u) {
    m = mx + my;
  } else {
    m = mx - my;
    if (m == 0u) { return 0u; }
  }
  var e = i32(ex);
  let p = i32(31u - countLeadingZeros(m));
  if (p > 26) {
    m = (m >> 1u) | (m & 1u);
    e += 1;
  } else if (p < 26) {
    let sh = min(26 - p, e - 1);
    m = m << u32(sh);
    e -= sh;
  }
  var r = m >> 3u;
  let g = m & 7u;
  if (g > 4u || (g == 4u && (r & 1u) == 1u)) { r += 1u; }
  if (r >= 0x1000000u) {
    r = r >> 1u;
    e += 1;
  }
  if (e >= 255) { return sx | 0x7f800000u; }
  if (r < 0x800000u) { return sx | r; }
  return sx | (u32(e) << 23u) | (r & 0x7fffffu);
}

/** JavaScript's Math.fround(a - b) for binary32 a, b (NaN bits if either is not finite). */
fn f32_sub_exact(a: u32, b: u32) -> u32 {
  if (f32_bad(a) || f32_bad(b)) { return 0x7fc00000u; }
  return f32_add_exact(a, b ^ 0x80000000u);
}
`;

export const SOFT_F64 = /* wgsl */ `
struct F64 { s: u32, e: i32, m: vec2u }

fn f64_zero(s: u32) -> F64 { return F64(s, 0, vec2u(0u, 0u)); }

/**
 * Rounds (-1)^s * (m + sticky) * 2^e to 53 bits, ties to even. sticky: a non-zero amount below
 * m's lowest bit was dropped; then m's top bit must be at 54 or above (so the drop only breaks
 * ties). m = 0 and no sticky gives a zero of sign s.
 */
fn f64_round(s: u32, e: i32, m: vec2u, sticky: bool) -> F64 {
  if (u64_is0(m)) { return f64_zero(s); }
  let p = u64_msb(m);
  if (p <= 52u) { return F64(s, e - i32(52u - p), u64_shl(m, 52u - p)); }
  let sh = p - 52u;
  var r = u64_shr(m, sh);
  let half = (u64_shr(m, sh - 1u).x & 1u) == 1u;
  let below = sticky || u64_low_nz(m, sh - 1u);
  if (half && (below || (r.x & 1u) == 1u)) { r = u64_add(r, vec2u(1u, 0u)); }
  var ee = e + i32(sh);
  if (r.y == 0x200000u) { r = u64_shr(r, 1u); ee += 1; }
  return F64(s, ee, r);
}

/** The binary32 value with bit pattern b, exactly (b finite). */
fn f64_from_f32(b: u32) -> F64 {
  let s = b >> 31u;
  let ex = (b >> 23u) & 0xffu;
  let mant = b & 0x7fffffu;
  if (ex == 0u) {
    if (mant == 0u) { return f64_zero(s); }
    return f64_round(s, -149, vec2u(mant, 0u), false);
  }
  return F64(s, i32(ex) - 179, u64_shl(vec2u(mant | 0x800000u, 0u), 29u));
}

/** The binary64 value with bit pattern (lo, hi): normal numbers and zeros. */
fn f64_from_bits(lo: u32, hi: u32) -> F64 {
  let s = hi >> 31u;
  let ex = (hi >> 20u) & 0x7ffu;
  if (ex == 0u) { return f64_zero(s); }
  return F64(s, i32(ex) - 1075, vec2u(lo, (hi & 0xfffffu) | 0x100000u));
}

/** IEEE bits (lo, hi) of a (normal or zero). */
fn f64_to_bits(a: F64) -> vec2u {
  if (u64_is0(a.m)) { return vec2u(0u, a.s << 31u); }
  return vec2u(a.m.x, (a.s << 31u) | (u32(a.e + 1075) << 20u) | (a.m.y & 0xfffffu));
}

fn f64_neg(a: F64) -> F64 { return F64(a.s ^ 1u, a.e, a.m); }

/** |a| < |b| (both normalised or zero). */
fn f64_mag_lt(a: F64, b: F64) -> bool {
  if (u64_is0(b.m)) { return false; }
  if (u64_is0(a.m)) { return true; }
  if (a.e != b.e) { return a.e < b.e; }
  return u64_lt(a.m, b.m);
}

/** a > b for a, b >= 0. */
fn f64_gt(a: F64, b: F64) -> bool { return f64_mag_lt(b, a); }

/** a + b, rounded (three guard bits: the classic guard, round and sticky). */
fn f64_add(a: F64, b: F64) -> F64 {
  let az = u64_is0(a.m);
  let bz = u64_is0(b.m);
  if (az && bz) { return f64_zero(a.s & b.s); }
  if (az) { return b; }
  if (bz) { return a; }
  var x = a;
  var y = b;
  if (f64_mag_lt(a, b)) { x = b; y = a; }
  let d = u32(x.e - y.e);
  let X = u64_shl(x.m, 3u);
  var Y = u64_shl(y.m, 3u);
  let lost = u64_low_nz(Y, min(d, 64u));
  Y = u64_shr(Y, d);
  if (lost) { Y.x = Y.x | 1u; }
  if (x.s == y.s) { return f64_round(x.s, x.e - 3, u64_add(X, Y), false); }
  let z = u64_sub(X, Y);
  if (u64_is0(z)) { return f64_zero(0u); }
  return f64_round(x.s, x.e - 3, z, false);
}

fn f64_sub(a: F64, b: F64) -> F64 { return f64_add(a, f64_neg(b)); }

/** a * b, rounded. */
fn f64_mul(a: F64, b: F64) -> F64 {
  let s = a.s ^ b.s;
  if (u64_is0(a.m) || u64_is0(b.m)) { return f64_zero(s); }
  // 53 x 53 bits: four 32 x 32 partial products into limbs p0..p3.
  let t0 = mul32(a.m.x, b.m.x);
  let t1 = mul32(a.m.x, b.m.y);
  let t2 = mul32(a.m.y, b.m.x);
  let t3 = mul32(a.m.y, b.m.y);
  let mid = u64_add(u64_add(vec2u(t0.y, 0u), vec2u(t1.x, 0u)), vec2u(t2.x, 0u));
  let hi = u64_add(u64_add(u64_add(t3, vec2u(t1.y, 0u)), vec2u(t2.y, 0u)), vec2u(mid.y, 0u));
  // product = hi * 2^64 + mid.x * 2^32 + t0.x, top bit at 104 or 105: keep bits 42.. (64 bits).
  let top = vec2u((mid.x >> 10u) | (hi.x << 22u), (hi.x >> 10u) | (hi.y << 22u));
  let sticky = t0.x != 0u || (mid.x & 0x3ffu) != 0u;
  return f64_round(s, a.e + b.e + 42, top, sticky);
}

/** a / b, rounded (b != 0): 56 quotient bits by restoring division, the remainder as sticky. */
fn f64_div(a: F64, b: F64) -> F64 {
  let s = a.s ^ b.s;
  if (u64_is0(a.m)) { return f64_zero(s); }
  var r = a.m;
  var q = vec2u(0u, 0u);
  for (var i = 0u; i < 56u; i++) {
    q = u64_shl(q, 1u);
    if (!u64_lt(r, b.m)) { r = u64_sub(r, b.m); q.x = q.x | 1u; }
    r = u64_shl(r, 1u);
  }
  return f64_round(s, a.e - b.e - 55, q, !u64_is0(r));
}

/**
 * a / s for an integer 1 <= s < 2^16, rounded: long division of a's mantissa, shifted so the
 * quotient has 56 or 57 bits, in 16-bit digits by u32 division; the remainder is the sticky bit.
 */
fn f64_div_u16(a: F64, s: u32) -> F64 {
  if (u64_is0(a.m)) { return a; }
  let L = 35u - countLeadingZeros(s);
  let w0 = a.m.x << L;
  let w1 = (a.m.y << L) | (a.m.x >> (32u - L));
  let w2 = a.m.y >> (32u - L);
  let dg = array<u32, 6>(w2 >> 16u, w2 & 0xffffu, w1 >> 16u, w1 & 0xffffu, w0 >> 16u, w0 & 0xffffu);
  var rem = 0u;
  var q = vec2u(0u, 0u);
  for (var i = 0u; i < 6u; i++) {
    let cur = (rem << 16u) | dg[i];
    q = u64_shl(q, 16u);
    q.x = q.x | (cur / s);
    rem = cur % s;
  }
  return f64_round(a.s, a.e - i32(L), q, rem != 0u);
}

/**
 * The binary32 bit pattern of a rounded to nearest even (JavaScript's ToFloat32), with binary32
 * subnormals, and infinity on overflow.
 */
fn f64_to_f32(a: F64) -> u32 {
  let sg = a.s << 31u;
  if (u64_is0(a.m)) { return sg; }
  let E = a.e + 52;
  if (E > 127) { return sg | 0x7f800000u; }
  // Bits kept: 24 for a normal result; fewer below 2^-126 (the subnormal grid is 2^-149).
  var sh = 29u;
  if (E < -126) { sh = 29u + u32(-126 - E); }
  if (sh > 64u) { return sg; }
  var r = u64_shr(a.m, sh);
  let half = (u64_shr(a.m, sh - 1u).x & 1u) == 1u;
  let below = u64_low_nz(a.m, sh - 1u);
  if (half && (below || (r.x & 1u) == 1u)) { r = u64_add(r, vec2u(1u, 0u)); }
  if (E < -126) { return sg | r.x; } // r = 2^23 is the smallest normal: its bits say so
  var ee = E;
  var mm = r.x;
  if (mm == 0x1000000u) { mm = mm >> 1u; ee += 1; }
  if (ee > 127) { return sg | 0x7f800000u; }
  return sg | (u32(ee + 127) << 23u) | (mm & 0x7fffffu);
}
`;

/**
 * JavaScript's Math.fround(beta * r + d) for binary32 r and d (finite). FOLD32 for beta 1
 * (Math.fround(r + d)) or 0 (a zero with r's sign, plus d), in binary32 alone (SOFT_F32);
 * FOLD64 for any other float64 beta: beta * r and the sum each round to float64 first
 * (SOFT_U64 and SOFT_F64).
 */
export const SOFT_FOLD32 = /* wgsl */ `
fn f32_fold32(beta_one: bool, r: u32, d: u32) -> u32 {
  if (beta_one) { return f32_add_exact(r, d); }
  return f32_add_exact(r & 0x80000000u, d);
}
`;

export const SOFT_FOLD64 = /* wgsl */ `
/** beta * r for a binary32 r (bits): f64_mul with r's 24-bit mantissa, two 32 x 32 products. */
fn f64_mul_f32(b: F64, r: u32) -> F64 {
  let s = b.s ^ (r >> 31u);
  let ra = r & 0x7fffffffu;
  if (ra == 0u || u64_is0(b.m)) { return f64_zero(s); }
  var mr = ra & 0x7fffffu;
  var er = i32(ra >> 23u) - 150;
  if ((ra >> 23u) == 0u) {
    let sh = countLeadingZeros(mr) - 8u;
    mr = mr << sh;
    er = -149 - i32(sh);
  } else {
    mr = mr | 0x800000u;
  }
  // mr in [2^23, 2^24), so P = mr * b.m in [2^75, 2^77): keep P >> 13, the rest is sticky.
  let lo = mul32(mr, b.m.x);
  let hi = mul32(mr, b.m.y);
  let w1 = lo.y + hi.x;
  let w2 = hi.y + select(0u, 1u, w1 < lo.y);
  let top = vec2u((w1 << 19u) | (lo.x >> 13u), (w2 << 19u) | (w1 >> 13u));
  return f64_round(s, b.e + er + 13, top, (lo.x & 0x1fffu) != 0u);
}
fn f32_fold64(beta: F64, r: u32, d: u32) -> u32 {
  return f64_to_f32(f64_add(f64_mul_f32(beta, r), f64_from_f32(d)));
}
`;
