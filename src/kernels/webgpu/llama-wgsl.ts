/**
 * WGSL kernels for what the Llama family adds to GPT-2: RMSNorm, rotary position embedding
 * (RoPE), the SwiGLU gate and causal grouped-query attention (GQA), forward and backward, with
 * the layouts and accumulate (+=) semantics of the `Kernels` contract (src/kernels/api.ts) and
 * its specification src/kernels/ref-llama.ts. Dispatched by llama.ts (WebGpuLlamaKernels).
 *
 * Same design as wgsl.ts (whose KernelDef, binding model and workgroup sizes these use): no
 * atomics, every output element written by one invocation, every sum in an order fixed by the
 * problem shape, so the same adapter and driver give the same bits.
 *
 *   RMSNorm    forward and dinp: one workgroup of RW threads per row (strided partial sums, then
 *              the RW partials in index order); dweight: one invocation per column, rows in order.
 *   RoPE       one invocation per rotated pair (position, head, i < hd/2), in place; cos/sin are
 *              the host's tables [T, hd/2] (llama-config.ts ropeTables, rounded to float32).
 *   SwiGLU     elementwise.
 *   GQA        as wgsl.ts's attention with stored probabilities, on separate q [B,T,NH,hd] and
 *              k, v [B,T,KV,hd]: forward and backward-dq per query row; dk and dv per KEY row of
 *              a kv head, summing the query heads of its group in increasing order, then the
 *              query positions t ≥ u in increasing order (the row that owns the output sums).
 */
import { RW, WG, type KernelDef } from './wgsl.js';

// The entry-point preamble and the fixed-order workgroup reduction, as wgsl.ts writes them for
// its own kernels (repeated here because wgsl.ts keeps them module-private).
const FLAT = 'let flat = wg.y * nwg.x + wg.x;';
const ENTRY = (size: string) =>
  `@compute @workgroup_size(${size})\nfn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid3: vec3u) {\n  let lid = lid3.x;\n  ${FLAT}`;
const REDUCE_SUM = `
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

/** out = x · r · w, r = 1/sqrt(mean(x²) + eps) per row; rstd[n] = r. One workgroup per row. */
export const RMSNORM_FWD: KernelDef = {
  name: 'llama_rmsnorm_fwd',
  args: [
    ['out', 'f32'],
    ['rstd', 'f32'],
    ['inp', 'f32'],
    ['w', 'f32'],
  ],
  params: [
    ['N', 'u32'],
    ['C', 'u32'],
    ['eps', 'f32'],
  ],
  body: `${REDUCE_SUM}
${ENTRY(String(RW))}
  let n = flat;
  if (n >= P.N) { return; }
  let x = P.o_inp + n * P.C;
  var s = 0.0;
  for (var c = lid; c < P.C; c += ${RW}u) { let v = inp[x + c]; s += v * v; }
  let r = 1.0 / sqrt(reduce_sum(s, lid) / f32(P.C) + P.eps);
  for (var c = lid; c < P.C; c += ${RW}u) { out[P.o_out + n * P.C + c] = inp[x + c] * r * w[P.o_w + c]; }
  if (lid == 0u) { rstd[P.o_rstd + n] = r; }
}`,
};

/** dinp += dout·w·r − x · r³/C · Σ(dout·w·x), one workgroup per row. */
export const RMSNORM_BWD_DINP: KernelDef = {
  name: 'llama_rmsnorm_bwd_dinp',
  args: [
    ['dinp', 'f32'],
    ['dout', 'f32'],
    ['inp', 'f32'],
    ['w', 'f32'],
    ['rstd', 'f32'],
  ],
  params: [
    ['N', 'u32'],
    ['C', 'u32'],
  ],
  body: `${REDUCE_SUM}
${ENTRY(String(RW))}
  let n = flat;
  if (n >= P.N) { return; }
  let x = P.o_inp + n * P.C;
  let dy = P.o_dout + n * P.C;
  let r = rstd[P.o_rstd + n];
  var s = 0.0;
  for (var c = lid; c < P.C; c += ${RW}u) { s += dout[dy + c] * w[P.o_w + c] * inp[x + c]; }
  let k = reduce_sum(s, lid) * r * r * r / f32(P.C);
  for (var c = lid; c < P.C; c += ${RW}u) {
    let i = P.o_dinp + n * P.C + c;
    dinp[i] = dinp[i] + (dout[dy + c] * w[P.o_w + c] * r - inp[x + c] * k);
  }
}`,
};

/** dweight[c] += Σ_n dout[n,c] · x[n,c] · rstd[n], one invocation per column, rows in order. */
export const RMSNORM_BWD_PARAMS: KernelDef = {
  name: 'llama_rmsnorm_bwd_params',
  args: [
    ['dw', 'f32'],
    ['dout', 'f32'],
    ['inp', 'f32'],
    ['rstd', 'f32'],
  ],
  params: [
    ['N', 'u32'],
    ['C', 'u32'],
  ],
  body: `
${ENTRY(String(WG))}
  let c = flat * ${WG}u + lid;
  if (c >= P.C) { return; }
  var s = dw[P.o_dw + c];
  for (var n = 0u; n < P.N; n++) {
    s += dout[P.o_dout + n * P.C + c] * inp[P.o_inp + n * P.C + c] * rstd[P.o_rstd + n];
  }
  dw[P.o_dw + c] = s;
}`,
};

/**
 * RoPE in place on x [B·T, nh, hd] (Hugging Face's rotate_half pairs: i with i + hd/2), one
 * invocation per pair; `sgn` = 1 rotates by +angle (forward), −1 by −angle (backward).
 */
export const ROPE: KernelDef = {
  name: 'llama_rope',
  args: [
    ['x', 'f32'],
    ['cs', 'f32'],
    ['sn', 'f32'],
  ],
  params: [
    ['BT', 'u32'],
    ['T', 'u32'],
    ['nh', 'u32'],
    ['half', 'u32'],
    ['sgn', 'f32'],
  ],
  body: `
${ENTRY(String(WG))}
  let j = flat * ${WG}u + lid;
  if (j >= P.BT * P.nh * P.half) { return; }
  let i = j % P.half;
  let row = j / P.half; // (n, h)
  let n = row / P.nh;
  let t = n % P.T;
  let o = P.o_x + row * 2u * P.half + i;
  let c = cs[P.o_cs + t * P.half + i];
  let s = P.sgn * sn[P.o_sn + t * P.half + i];
  let a = x[o];
  let z = x[o + P.half];
  x[o] = a * c - z * s;
  x[o + P.half] = z * c + a * s;
}`,
};

/** out = silu(gate) · up = gate / (1 + exp(−gate)) · up, elementwise. */
export const SWIGLU_FWD: KernelDef = {
  name: 'llama_swiglu_fwd',
  args: [
    ['out', 'f32'],
    ['gate', 'f32'],
    ['up', 'f32'],
  ],
  params: [['n', 'u32']],
  body: `
${ENTRY(String(WG))}
  let i = flat * ${WG}u + lid;
  if (i >= P.n) { return; }
  let g = gate[P.o_gate + i];
  out[P.o_out + i] = g / (1.0 + exp(-g)) * up[P.o_up + i];
}`,
};

/**
 * dgate += dout · up · σ (1 + g (1 − σ)), dup += dout · g σ, with e = exp(−g), σ = 1/(1 + e) and
 * 1 − σ = e σ (no cancellation; exp(−g) → +inf gives σ = 0 and e σ = NaN is avoided by the select).
 */
export const SWIGLU_BWD: KernelDef = {
  name: 'llama_swiglu_bwd',
  args: [
    ['dgate', 'f32'],
    ['dup', 'f32'],
    ['dout', 'f32'],
    ['gate', 'f32'],
    ['up', 'f32'],
  ],
  params: [['n', 'u32']],
  body: `
${ENTRY(String(WG))}
  let i = flat * ${WG}u + lid;
  if (i >= P.n) { return; }
  let g = gate[P.o_gate + i];
  let u = up[P.o_up + i];
  let d = dout[P.o_dout + i];
  let e = exp(-g);
  let s = 1.0 / (1.0 + e);
  let oms = select(e * s, 1.0, s == 0.0);
  dgate[P.o_dgate + i] = dgate[P.o_dgate + i] + d * u * s * (1.0 + g * oms);
  dup[P.o_dup + i] = dup[P.o_dup + i] + d * (g * s);
}`,
};

const GQA_PARAMS = [
  ['B', 'u32'],
  ['T', 'u32'],
  ['NH', 'u32'],
  ['KV', 'u32'],
  ['hd', 'u32'],
  ['scale', 'f32'],
] as const;

/** Index helpers of a query row flat = (b·NH + h)·T + t: its q/out row and its kv head's base. */
const GQA_IDX = `
  let t = flat % P.T;
  let bh = flat / P.T;
  let h = bh % P.NH;
  let b = bh / P.NH;
  let QW = P.NH * P.hd;
  let KW = P.KV * P.hd;
  let kh = h / (P.NH / P.KV);
  let qrow = (b * P.T + t) * QW + h * P.hd;
  let kvb = b * P.T * KW + kh * P.hd;`;

/**
 * GQA forward, one workgroup per query row (b, h, t): scores against the kv head's keys u ≤ t,
 * softmax into att (zeros above the diagonal), out = att @ v.
 */
export const GQA_FWD: KernelDef = {
  name: 'llama_gqa_fwd',
  args: [
    ['out', 'f32'],
    ['att', 'f32'],
    ['q', 'f32'],
    ['k', 'f32'],
    ['v', 'f32'],
  ],
  params: GQA_PARAMS,
  body: `${REDUCE_SUM}
${ENTRY(String(RW))}
  if (flat >= P.B * P.NH * P.T) { return; }
  ${GQA_IDX}
  let a = P.o_att + flat * P.T;
  var mx = -3.0e38;
  for (var u = lid; u <= t; u += ${RW}u) {
    let kr = P.o_k + kvb + u * KW;
    var s = 0.0;
    for (var i = 0u; i < P.hd; i++) { s += q[P.o_q + qrow + i] * k[kr + i]; }
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
  for (var i = lid; i < P.hd; i += ${RW}u) {
    var s = 0.0;
    for (var u = 0u; u <= t; u++) { s += att[a + u] * v[P.o_v + kvb + u * KW + i]; }
    out[P.o_out + qrow + i] = s;
  }
}`,
};

/**
 * GQA backward, pass 1 (one workgroup per query row): datt[u] = v_u · dout_t, the softmax
 * backward dpre[u] = p[u] (datt[u] − Σ_j p[j] datt[j]) · scale written over datt, and
 * dq_t += Σ_u dpre[u] k_u.
 */
export const GQA_BWD_Q: KernelDef = {
  name: 'llama_gqa_bwd_q',
  args: [
    ['dq', 'f32'],
    ['datt', 'f32'],
    ['dout', 'f32'],
    ['k', 'f32'],
    ['v', 'f32'],
    ['att', 'f32'],
  ],
  params: GQA_PARAMS,
  body: `${REDUCE_SUM}
${ENTRY(String(RW))}
  if (flat >= P.B * P.NH * P.T) { return; }
  ${GQA_IDX}
  let a = P.o_att + flat * P.T;
  let da = P.o_datt + flat * P.T;
  var dot = 0.0;
  for (var u = lid; u <= t; u += ${RW}u) {
    let vr = P.o_v + kvb + u * KW;
    var s = 0.0;
    for (var i = 0u; i < P.hd; i++) { s += v[vr + i] * dout[P.o_dout + qrow + i]; }
    datt[da + u] = s;
    dot += att[a + u] * s;
  }
  dot = reduce_sum(dot, lid);
  for (var u = lid; u <= t; u += ${RW}u) { datt[da + u] = att[a + u] * (datt[da + u] - dot) * P.scale; }
  for (var u = t + 1u + lid; u < P.T; u += ${RW}u) { datt[da + u] = 0.0; }
  storageBarrier();
  workgroupBarrier();
  for (var i = lid; i < P.hd; i += ${RW}u) {
    var s = 0.0;
    for (var u = 0u; u <= t; u++) { s += datt[da + u] * k[P.o_k + kvb + u * KW + i]; }
    dq[P.o_dq + qrow + i] = dq[P.o_dq + qrow + i] + s;
  }
}`,
};

/**
 * GQA backward, pass 2 (after pass 1; one workgroup per key row (b, g, u) of kv head g):
 * dk_u += Σ_h Σ_{t≥u} dpre[b,h,t,u] q_{h,t} and dv_u += Σ_h Σ_{t≥u} p[b,h,t,u] dout_{h,t} over
 * the query heads h of g's group in increasing order, and t in increasing order.
 */
export const GQA_BWD_KV: KernelDef = {
  name: 'llama_gqa_bwd_kv',
  args: [
    ['dk', 'f32'],
    ['dv', 'f32'],
    ['datt', 'f32'],
    ['dout', 'f32'],
    ['q', 'f32'],
    ['att', 'f32'],
  ],
  params: GQA_PARAMS,
  body: `
${ENTRY(String(RW))}
  if (flat >= P.B * P.KV * P.T) { return; }
  let u = flat % P.T;
  let bg = flat / P.T;
  let g = bg % P.KV;
  let b = bg / P.KV;
  let QW = P.NH * P.hd;
  let KW = P.KV * P.hd;
  let group = P.NH / P.KV;
  let kr = (b * P.T + u) * KW + g * P.hd;
  for (var i = lid; i < P.hd; i += ${RW}u) {
    var sk = 0.0;
    var sv = 0.0;
    for (var h = g * group; h < (g + 1u) * group; h++) {
      let rows = (b * P.NH + h) * P.T;
      for (var tt = u; tt < P.T; tt++) {
        let r = (rows + tt) * P.T + u;
        let qr = (b * P.T + tt) * QW + h * P.hd + i;
        sk += datt[P.o_datt + r] * q[P.o_q + qr];
        sv += att[P.o_att + r] * dout[P.o_dout + qr];
      }
    }
    dk[P.o_dk + kr + i] = dk[P.o_dk + kr + i] + sk;
    dv[P.o_dv + kr + i] = dv[P.o_dv + kr + i] + sv;
  }
}`,
};

/** Every Llama kernel (tests compile each once). */
export const LLAMA_KERNELS: readonly KernelDef[] = [
  RMSNORM_FWD,
  RMSNORM_BWD_DINP,
  RMSNORM_BWD_PARAMS,
  ROPE,
  SWIGLU_FWD,
  SWIGLU_BWD,
  GQA_FWD,
  GQA_BWD_Q,
  GQA_BWD_KV,
];
