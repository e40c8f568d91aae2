/**
 * WGSL causal attention kernels: with stored probabilities (the `Kernels` contract) and
 * flash-style (log-sum-exp per row, recomputed in backward).
 */
import { type KernelDef, ENTRY, REDUCE, RW } from './common.js';

/** Index helpers shared by the attention kernels: row = (b*NH + h)*T + t. */
const ATT_IDX = `
  let t = flat % P.T;
  let bh = flat / P.T;
  let h = bh % P.NH;
  let b = bh / P.NH;
  let hs = P.C / P.NH;
  let C3 = 3u * P.C;
  let base = P.o_inp + b * P.T * C3 + h * hs;`;

/**
 * Causal attention forward, one workgroup per query row (b, h, t): scores, max, exp and sum, the
 * normalised probabilities into att (zeros above the diagonal), then out = att @ v. Each key u is
 * owned by one thread in all three phases; the output dimension i by one thread in the last.
 */
export const ATTENTION_FWD: KernelDef = {
  name: 'attention_fwd',
  args: [
    ['out', 'f32'],
    ['att', 'f32'],
    ['inp', 'f32'],
  ],
  params: [
    ['B', 'u32'],
    ['T', 'u32'],
    ['C', 'u32'],
    ['NH', 'u32'],
    ['scale', 'f32'],
  ],
  body: `${REDUCE}
${ENTRY(String(RW))}
  if (flat >= P.B * P.NH * P.T) { return; }
  ${ATT_IDX}
  let q = base + t * C3;
  let a = P.o_att + flat * P.T;
  var mx = -3.0e38;
  for (var u = lid; u <= t; u += ${RW}u) {
    let k = base + u * C3 + P.C;
    var s = 0.0;
    for (var i = 0u; i < hs; i++) { s += inp[q + i] * inp[k + i]; }
    s = s * P.scale;
    att[a + u] = s;
    mx = max(mx, s);
  }
  mx = reduce_max(mx, lid);
  var sum = 0.0;
  for (var u = lid; u <= t; u += ${RW}u) {
    let e = exp(att[a + u] - mx);
    att[a + u] = e;
    sum += e;
  }
  let inv = 1.0 / reduce_sum(sum, lid);
  for (var u = lid; u < P.T; u += ${RW}u) {
    if (u <= t) { att[a + u] = att[a + u] * inv; } else { att[a + u] = 0.0; }
  }
  storageBarrier();
  workgroupBarrier();
  let o = P.o_out + (b * P.T + t) * P.C + h * hs;
  for (var i = lid; i < hs; i += ${RW}u) {
    var s = 0.0;
    for (var u = 0u; u <= t; u++) { s += att[a + u] * inp[base + u * C3 + 2u * P.C + i]; }
    out[o + i] = s;
  }
}`,
};

/**
 * Attention backward, pass 1 (one workgroup per query row t): datt[u] = v_u . dout_t, the softmax
 * backward dpre[u] = p[u] (datt[u] - sum_j p[j] datt[j]) * scale written over datt, and
 * dq_t += sum_u dpre[u] k_u.
 */
export const ATTENTION_BWD_Q: KernelDef = {
  name: 'attention_bwd_q',
  args: [
    ['dinp', 'f32'],
    ['datt', 'f32'],
    ['dout', 'f32'],
    ['inp', 'f32'],
    ['att', 'f32'],
  ],
  params: [
    ['B', 'u32'],
    ['T', 'u32'],
    ['C', 'u32'],
    ['NH', 'u32'],
    ['scale', 'f32'],
  ],
  body: `${REDUCE}
${ENTRY(String(RW))}
  if (flat >= P.B * P.NH * P.T) { return; }
  ${ATT_IDX}
  let a = P.o_att + flat * P.T;
  let da = P.o_datt + flat * P.T;
  let o = P.o_dout + (b * P.T + t) * P.C + h * hs;
  var dot = 0.0;
  for (var u = lid; u <= t; u += ${RW}u) {
    let v = base + u * C3 + 2u * P.C;
    var s = 0.0;
    for (var i = 0u; i < hs; i++) { s += inp[v + i] * dout[o + i]; }
    datt[da + u] = s;
    dot += att[a + u] * s;
  }
  dot = reduce_sum(dot, lid);
  for (var u = lid; u <= t; u += ${RW}u) {
    datt[da + u] = att[a + u] * (datt[da + u] - dot) * P.scale;
  }
  storageBarrier();
  workgroupBarrier();
  let dq = P.o_dinp + (base - P.o_inp) + t * C3;
  for (var i = lid; i < hs; i += ${RW}u) {
    var s = 0.0;
    for (var u = 0u; u <= t; u++) { s += datt[da + u] * inp[base + u * C3 + P.C + i]; }
    dinp[dq + i] = dinp[dq + i] + s;
  }
}`,
};

/**
 * Attention backward, pass 2 (one workgroup per key row u, after pass 1): dk_u += sum_{t>=u}
 * dpre[t,u] q_t and dv_u += sum_{t>=u} p[t,u] dout_t, over t in increasing order. Splitting by the
 * row that owns the output is what keeps this free of atomics.
 */
export const ATTENTION_BWD_KV: KernelDef = {
  name: 'attention_bwd_kv',
  args: [
    ['dinp', 'f32'],
    ['datt', 'f32'],
    ['dout', 'f32'],
    ['inp', 'f32'],
    ['att', 'f32'],
  ],
  params: [
    ['B', 'u32'],
    ['T', 'u32'],
    ['C', 'u32'],
    ['NH', 'u32'],
    ['scale', 'f32'],
  ],
  body: `
${ENTRY(String(RW))}
  if (flat >= P.B * P.NH * P.T) { return; }
  ${ATT_IDX}
  let u = t;
  let dk = P.o_dinp + (base - P.o_inp) + u * C3 + P.C;
  let dv = dk + P.C;
  let rows = bh * P.T;
  for (var i = lid; i < hs; i += ${RW}u) {
    var sk = 0.0;
    var sv = 0.0;
    for (var tt = u; tt < P.T; tt++) {
      let r = (rows + tt) * P.T + u;
      sk += datt[P.o_datt + r] * inp[base + tt * C3 + i];
      sv += att[P.o_att + r] * dout[P.o_dout + (b * P.T + tt) * P.C + h * hs + i];
    }
    dinp[dk + i] = dinp[dk + i] + sk;
    dinp[dv + i] = dinp[dv + i] + sv;
  }
}`,
};

/**
 * Per-thread accumulators over the head dimension: thread lid owns dims lid + r*RW, r < 4
 * (hs <= 4*RW, checked by the host).
 */
const HS_MAX_R = 4;

/**
 * Flash-style causal attention forward (memory O(T) per row, not O(T^2)): one workgroup per query
 * row walks the keys in tiles of RW with an online softmax (running max m and sum l, the output
 * rescaled by exp(m_old - m_new) at each tile), and keeps only lse = m + log(l) per row for
 * backward. Each tile's probabilities go through workgroup memory so that every output dimension
 * sums them in key order. K/V tiles are not shared between query rows (one row per workgroup).
 */
export const ATTENTION_FLASH_FWD: KernelDef = {
  name: 'attention_flash_fwd',
  args: [
    ['out', 'f32'],
    ['lse', 'f32'],
    ['inp', 'f32'],
  ],
  params: [
    ['B', 'u32'],
    ['T', 'u32'],
    ['C', 'u32'],
    ['NH', 'u32'],
    ['scale', 'f32'],
  ],
  body: `${REDUCE}
var<workgroup> pe: array<f32, ${RW}>;
${ENTRY(String(RW))}
  if (flat >= P.B * P.NH * P.T) { return; }
  ${ATT_IDX}
  let q = base + t * C3;
  var acc: array<f32, ${HS_MAX_R}>;
  var m = -3.0e38;
  var l = 0.0;
  for (var u0 = 0u; u0 <= t; u0 += ${RW}u) {
    let u = u0 + lid;
    var s = -3.0e38;
    if (u <= t) {
      let k = base + u * C3 + P.C;
      var d = 0.0;
      for (var i = 0u; i < hs; i++) { d += inp[q + i] * inp[k + i]; }
      s = d * P.scale;
    }
    let mn = max(m, reduce_max(s, lid));
    var e = 0.0;
    if (u <= t) { e = exp(s - mn); }
    let lt = reduce_sum(e, lid);
    pe[lid] = e;
    workgroupBarrier();
    let corr = exp(m - mn);
    l = l * corr + lt;
    let nu = min(${RW}u, t + 1u - u0);
    for (var r = 0u; r < ${HS_MAX_R}u; r++) {
      let i = lid + r * ${RW}u;
      if (i < hs) {
        var a = acc[r] * corr;
        for (var j = 0u; j < nu; j++) { a += pe[j] * inp[base + (u0 + j) * C3 + 2u * P.C + i]; }
        acc[r] = a;
      }
    }
    workgroupBarrier();
    m = mn;
  }
  let o = P.o_out + (b * P.T + t) * P.C + h * hs;
  for (var r = 0u; r < ${HS_MAX_R}u; r++) {
    let i = lid + r * ${RW}u;
    if (i < hs) { out[o + i] = acc[r] / l; }
  }
  if (lid == 0u) { lse[P.o_lse + flat] = m + log(l); }
}`,
};

/**
 * Flash-style attention backward, pass 1 (one workgroup per query row t): D_t = dout_t . out_t
 * (kept for pass 2), then over key tiles the probabilities recomputed from lse,
 * ds = p (dout_t . v_u - D_t) scale, and dq_t += sum_u ds_u k_u in key order.
 */
export const ATTENTION_FLASH_BWD_Q: KernelDef = {
  name: 'attention_flash_bwd_q',
  args: [
    ['dinp', 'f32'],
    ['dd', 'f32'],
    ['dout', 'f32'],
    ['inp', 'f32'],
    ['out', 'f32'],
    ['lse', 'f32'],
  ],
  params: [
    ['B', 'u32'],
    ['T', 'u32'],
    ['C', 'u32'],
    ['NH', 'u32'],
    ['scale', 'f32'],
  ],
  body: `${REDUCE}
var<workgroup> pe: array<f32, ${RW}>;
${ENTRY(String(RW))}
  if (flat >= P.B * P.NH * P.T) { return; }
  ${ATT_IDX}
  let q = base + t * C3;
  let o = (b * P.T + t) * P.C + h * hs;
  var dpart = 0.0;
  for (var r = 0u; r < ${HS_MAX_R}u; r++) {
    let i = lid + r * ${RW}u;
    if (i < hs) { dpart += dout[P.o_dout + o + i] * out[P.o_out + o + i]; }
  }
  let D = reduce_sum(dpart, lid);
  if (lid == 0u) { dd[P.o_dd + flat] = D; }
  let L = lse[P.o_lse + flat];
  var acc: array<f32, ${HS_MAX_R}>;
  for (var u0 = 0u; u0 <= t; u0 += ${RW}u) {
    let u = u0 + lid;
    var ds = 0.0;
    if (u <= t) {
      let k = base + u * C3 + P.C;
      var sc = 0.0;
      var dp = 0.0;
      for (var i = 0u; i < hs; i++) {
        sc += inp[q + i] * inp[k + i];
        dp += dout[P.o_dout + o + i] * inp[k + P.C + i];
      }
      let p = exp(sc * P.scale - L);
      ds = p * (dp - D) * P.scale;
    }
    pe[lid] = ds;
    workgroupBarrier();
    let nu = min(${RW}u, t + 1u - u0);
    for (var r = 0u; r < ${HS_MAX_R}u; r++) {
      let i = lid + r * ${RW}u;
      if (i < hs) {
        var a = acc[r];
        for (var j = 0u; j < nu; j++) { a += pe[j] * inp[base + (u0 + j) * C3 + P.C + i]; }
        acc[r] = a;
      }
    }
    workgroupBarrier();
  }
  let dq = P.o_dinp + (base - P.o_inp) + t * C3;
  for (var r = 0u; r < ${HS_MAX_R}u; r++) {
    let i = lid + r * ${RW}u;
    if (i < hs) { dinp[dq + i] = dinp[dq + i] + acc[r]; }
  }
}`,
};

/**
 * Flash-style attention backward, pass 2 (one workgroup per key row u, after pass 1): over query
 * tiles t >= u, p and ds recomputed as in pass 1; dk_u += sum_t ds q_t and dv_u += sum_t p dout_t
 * in query order.
 */
export const ATTENTION_FLASH_BWD_KV: KernelDef = {
  name: 'attention_flash_bwd_kv',
  args: [
    ['dinp', 'f32'],
    ['dd', 'f32'],
    ['dout', 'f32'],
    ['inp', 'f32'],
    ['lse', 'f32'],
  ],
  params: [
    ['B', 'u32'],
    ['T', 'u32'],
    ['C', 'u32'],
    ['NH', 'u32'],
    ['scale', 'f32'],
  ],
  body: `
var<workgroup> pe: array<f32, ${RW}>;
var<workgroup> pp: array<f32, ${RW}>;
${ENTRY(String(RW))}
  if (flat >= P.B * P.NH * P.T) { return; }
  ${ATT_IDX}
  let u = t;
  let k = base + u * C3 + P.C;
  let rows = bh * P.T;
  var ak: array<f32, ${HS_MAX_R}>;
  var av: array<f32, ${HS_MAX_R}>;
  for (var t0 = u; t0 < P.T; t0 += ${RW}u) {
    let tq = t0 + lid;
    var p = 0.0;
    var ds = 0.0;
    if (tq < P.T) {
      let q = base + tq * C3;
      let o = P.o_dout + (b * P.T + tq) * P.C + h * hs;
      var sc = 0.0;
      var dp = 0.0;
      for (var i = 0u; i < hs; i++) {
        sc += inp[q + i] * inp[k + i];
        dp += dout[o + i] * inp[k + P.C + i];
      }
      p = exp(sc * P.scale - lse[P.o_lse + rows + tq]);
      ds = p * (dp - dd[P.o_dd + rows + tq]) * P.scale;
    }
    pe[lid] = ds;
    pp[lid] = p;
    workgroupBarrier();
    let nt = min(${RW}u, P.T - t0);
    for (var r = 0u; r < ${HS_MAX_R}u; r++) {
      let i = lid + r * ${RW}u;
      if (i < hs) {
        var a = ak[r];
        var c = av[r];
        for (var j = 0u; j < nt; j++) {
          a += pe[j] * inp[base + (t0 + j) * C3 + i];
          c += pp[j] * dout[P.o_dout + (b * P.T + t0 + j) * P.C + h * hs + i];
        }
        ak[r] = a;
        av[r] = c;
      }
    }
    workgroupBarrier();
  }
  let dk = P.o_dinp + (base - P.o_inp) + u * C3 + P.C;
  for (var r = 0u; r < ${HS_MAX_R}u; r++) {
    let i = lid + r * ${RW}u;
    if (i < hs) {
      dinp[dk + i] = dinp[dk + i] + ak[r];
      dinp[dk + P.C + i] = dinp[dk + P.C + i] + av[r];
    }
  }
}`,
};

/** Largest head size the flash kernels take (each thread owns HS_MAX_R dimensions). */
export const FLASH_MAX_HS = HS_MAX_R * RW;
