/**
 * The WGSL compute kernels of the WebGPU backend: every kernel of `Kernels` (src/kernels/api.ts),
 * forward and backward, with the same layouts and accumulate (+=) semantics.
 *
 * WHY HAND-WRITTEN: no WebGPU library offers training kernels over caller-owned storage buffers
 * with llm.c's layouts, accumulate-into-gradient semantics and deterministic reductions
 * (the WebGPU ML runtimes, e.g. ONNX Runtime Web and TensorFlow.js, are inference graphs or own
 * their tensors, and reduce with float atomics or adapter-chosen splits).
 *
 * DETERMINISM BY CONSTRUCTION: no atomics anywhere. Every output element is written by exactly
 * one invocation, and every sum runs in a fixed order that depends only on the problem shape:
 * sequential loops, or a strided per-thread sum whose RW partials are then added in index order
 * (the workgroup size is a constant of the shader, never the adapter's choice). Two runs
 * on the same adapter and driver give the same bits. Across adapters results may differ in the
 * last bits: WGSL lets the compiler fuse a*b+c into an FMA and leaves exp/log/sqrt accuracy to
 * the implementation.
 *
 * Binding model (see device.ts): each kernel names its arguments; `buildShader` declares one
 * read_write storage binding per distinct GPU buffer among them (two views of one flat buffer,
 * e.g. a weight and its bias inside the parameter buffer, share a binding) and replaces each
 * argument name `x[` with that binding's name. Every argument's element offset `P.o_x` and the
 * shape parameters travel in one uniform struct `P` of 4-byte scalars.
 */

export type ArgType = 'f32' | 'i32';
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
const FLAT = 'let flat = wg.y * nwg.x + wg.x;';
const ENTRY = (size: string) =>
  `@compute @workgroup_size(${size})\nfn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_id) lid3: vec3u) {\n  let lid = lid3.x;\n  ${FLAT}`;

/**
 * Workgroup reduction over RW threads (sum or max): each thread posts its partial, then every
 * thread reads all RW partials in index order, so all of them hold the same value, summed in a
 * fixed order. Two barriers per reduction instead of a tree's log2(RW) + 1: barriers are what
 * costs most on SwiftShader, and on GPUs the RW reads are broadcasts from workgroup memory.
 */
const REDUCE = `
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
 * C[M,N] (= bias + | +=) A B with arbitrary element strides: A(i,k) = A[o_A + i*rsa + k*csa],
 * B(k,j) = B[o_B + k*rsb + j*csb], C(i,j) = C[o_C + i*ldc + j]. One workgroup per TILE x TILE
 * block of C; each C(i,j) is summed over k in increasing order (tiles of TK, then within).
 * The three layouts of the model (forward, dinp, dweight) are strides of this one kernel.
 */
export const GEMM: KernelDef = {
  name: 'gemm',
  args: [
    ['A', 'f32'],
    ['B', 'f32'],
    ['Cm', 'f32'],
    ['bias', 'f32'],
  ],
  params: [
    ['M', 'u32'],
    ['N', 'u32'],
    ['K', 'u32'],
    ['rsa', 'u32'],
    ['csa', 'u32'],
    ['rsb', 'u32'],
    ['csb', 'u32'],
    ['ldc', 'u32'],
    ['acc', 'u32'],
    ['has_bias', 'u32'],
  ],
  body: `
var<workgroup> As: array<f32, ${TILE * TK}>;
var<workgroup> Bs: array<f32, ${TILE * TK}>;
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let i0 = wg.y * ${TILE}u;
  let j0 = wg.x * ${TILE}u;
  let tid = lid.y * 16u + lid.x;
  var acc0 = vec4f(0.0);
  var acc1 = vec4f(0.0);
  var acc2 = vec4f(0.0);
  var acc3 = vec4f(0.0);
  for (var k0 = 0u; k0 < P.K; k0 += ${TK}u) {
    for (var r = 0u; r < ${(TILE * TK) / 256}u; r++) {
      let e = tid + r * 256u;
      let ii = e % ${TILE}u;
      let ka = e / ${TILE}u;
      var a = 0.0;
      if (i0 + ii < P.M && k0 + ka < P.K) { a = A[P.o_A + (i0 + ii) * P.rsa + (k0 + ka) * P.csa]; }
      As[ka * ${TILE}u + ii] = a;
      var b = 0.0;
      if (j0 + ii < P.N && k0 + ka < P.K) { b = B[P.o_B + (k0 + ka) * P.rsb + (j0 + ii) * P.csb]; }
      Bs[ka * ${TILE}u + ii] = b;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${TK}u; kk++) {
      let ab = kk * ${TILE}u + lid.y * 4u;
      let bb = kk * ${TILE}u + lid.x * 4u;
      let bv = vec4f(Bs[bb], Bs[bb + 1u], Bs[bb + 2u], Bs[bb + 3u]);
      acc0 += As[ab] * bv;
      acc1 += As[ab + 1u] * bv;
      acc2 += As[ab + 2u] * bv;
      acc3 += As[ab + 3u] * bv;
    }
    workgroupBarrier();
  }
  let accs = array<vec4f, 4>(acc0, acc1, acc2, acc3);
  for (var r = 0u; r < 4u; r++) {
    let i = i0 + lid.y * 4u + r;
    if (i >= P.M) { continue; }
    let ar = accs[r];
    for (var c = 0u; c < 4u; c++) {
      let j = j0 + lid.x * 4u + c;
      if (j >= P.N) { continue; }
      let idx = P.o_Cm + i * P.ldc + j;
      if (P.acc != 0u) {
        Cm[idx] = Cm[idx] + ar[c];
      } else if (P.has_bias != 0u) {
        Cm[idx] = ar[c] + bias[P.o_bias + j];
      } else {
        Cm[idx] = ar[c];
      }
    }
  }
}`,
};

/** dbias[o] += sum over rows n (in order) of dout[n, o]: one invocation per column. */
export const COLSUM: KernelDef = {
  name: 'colsum',
  args: [
    ['dbias', 'f32'],
    ['dout', 'f32'],
  ],
  params: [
    ['N', 'u32'],
    ['OC', 'u32'],
  ],
  body: `
${ENTRY(String(WG))}
  let o = flat * ${WG}u + lid;
  if (o >= P.OC) { return; }
  var s = 0.0;
  for (var n = 0u; n < P.N; n++) { s += dout[P.o_dout + n * P.OC + o]; }
  dbias[P.o_dbias + o] = dbias[P.o_dbias + o] + s;
}`,
};

/** LayerNorm forward, one workgroup per row: mean, then variance about it, then the output. */
export const LAYERNORM_FWD: KernelDef = {
  name: 'layernorm_fwd',
  args: [
    ['out', 'f32'],
    ['mean', 'f32'],
    ['rstd', 'f32'],
    ['inp', 'f32'],
    ['w', 'f32'],
    ['b', 'f32'],
  ],
  params: [
    ['N', 'u32'],
    ['C', 'u32'],
  ],
  body: `${REDUCE}
${ENTRY(String(RW))}
  let n = flat;
  if (n >= P.N) { return; }
  let x = P.o_inp + n * P.C;
  var s = 0.0;
  for (var c = lid; c < P.C; c += ${RW}u) { s += inp[x + c]; }
  let m = reduce_sum(s, lid) / f32(P.C);
  var v = 0.0;
  for (var c = lid; c < P.C; c += ${RW}u) { let d = inp[x + c] - m; v += d * d; }
  let r = 1.0 / sqrt(reduce_sum(v, lid) / f32(P.C) + 1e-5);
  for (var c = lid; c < P.C; c += ${RW}u) {
    out[P.o_out + n * P.C + c] = (inp[x + c] - m) * r * w[P.o_w + c] + b[P.o_b + c];
  }
  if (lid == 0u) { mean[P.o_mean + n] = m; rstd[P.o_rstd + n] = r; }
}`,
};

/** LayerNorm backward, input gradient: one workgroup per row. */
export const LAYERNORM_BWD_DINP: KernelDef = {
  name: 'layernorm_bwd_dinp',
  args: [
    ['dinp', 'f32'],
    ['dout', 'f32'],
    ['inp', 'f32'],
    ['w', 'f32'],
    ['mean', 'f32'],
    ['rstd', 'f32'],
  ],
  params: [
    ['N', 'u32'],
    ['C', 'u32'],
  ],
  body: `${REDUCE}
${ENTRY(String(RW))}
  let n = flat;
  if (n >= P.N) { return; }
  let x = n * P.C;
  let m = mean[P.o_mean + n];
  let r = rstd[P.o_rstd + n];
  var a = 0.0;
  var b = 0.0;
  for (var c = lid; c < P.C; c += ${RW}u) {
    let norm = (inp[P.o_inp + x + c] - m) * r;
    let dn = w[P.o_w + c] * dout[P.o_dout + x + c];
    a += dn;
    b += dn * norm;
  }
  let dnm = reduce_sum(a, lid) / f32(P.C);
  let dnnm = reduce_sum(b, lid) / f32(P.C);
  for (var c = lid; c < P.C; c += ${RW}u) {
    let norm = (inp[P.o_inp + x + c] - m) * r;
    let dn = w[P.o_w + c] * dout[P.o_dout + x + c];
    let i = P.o_dinp + x + c;
    dinp[i] = dinp[i] + (dn - dnm - norm * dnnm) * r;
  }
}`,
};

/** LayerNorm backward, dweight and dbias: one invocation per column, rows in order. */
export const LAYERNORM_BWD_PARAMS: KernelDef = {
  name: 'layernorm_bwd_params',
  args: [
    ['dw', 'f32'],
    ['db', 'f32'],
    ['dout', 'f32'],
    ['inp', 'f32'],
    ['mean', 'f32'],
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
  var sw = dw[P.o_dw + c];
  var sb = db[P.o_db + c];
  for (var n = 0u; n < P.N; n++) {
    let d = dout[P.o_dout + n * P.C + c];
    let norm = (inp[P.o_inp + n * P.C + c] - mean[P.o_mean + n]) * rstd[P.o_rstd + n];
    sw += norm * d;
    sb += d;
  }
  dw[P.o_dw + c] = sw;
  db[P.o_db + c] = sb;
}`,
};

// GELU through s = 1 / (1 + exp(-2u)) as in the native kernels: 0.5 x (1 + tanh u) = x s, and
// sech^2 u = 4 s (1 - s). No cancellation and no NaN for large |x| (exp overflows to +inf, s = 0).
const GELU_FN = `
fn gelu_s(x: f32) -> f32 {
  let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
  return 1.0 / (1.0 + exp(-2.0 * u));
}`;

export const GELU_FWD: KernelDef = {
  name: 'gelu_fwd',
  args: [
    ['out', 'f32'],
    ['inp', 'f32'],
  ],
  params: [['n', 'u32']],
  body: `${GELU_FN}
${ENTRY(String(WG))}
  let i = flat * ${WG}u + lid;
  if (i >= P.n) { return; }
  let x = inp[P.o_inp + i];
  out[P.o_out + i] = x * gelu_s(x);
}`,
};

export const GELU_BWD: KernelDef = {
  name: 'gelu_bwd',
  args: [
    ['dinp', 'f32'],
    ['inp', 'f32'],
    ['dout', 'f32'],
  ],
  params: [['n', 'u32']],
  body: `${GELU_FN}
${ENTRY(String(WG))}
  let i = flat * ${WG}u + lid;
  if (i >= P.n) { return; }
  let x = inp[P.o_inp + i];
  let s = gelu_s(x);
  let g = s + 2.0 * x * s * (1.0 - s) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
  dinp[P.o_dinp + i] = dinp[P.o_dinp + i] + g * dout[P.o_dout + i];
}`,
};

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

/**
 * Fused softmax + cross-entropy, one workgroup per row: max, sum of exp, log-sum-exp; the loss;
 * then (has_d) dlogits = (softmax - onehot) * dscale. dlogits may alias logits: every read of a
 * logit precedes the barrier before the first write, and each element is rewritten by the thread
 * that read it.
 */
export const CROSSENTROPY: KernelDef = {
  name: 'crossentropy',
  args: [
    ['losses', 'f32'],
    ['dlogits', 'f32'],
    ['logits', 'f32'],
    ['targets', 'i32'],
  ],
  params: [
    ['N', 'u32'],
    ['V', 'u32'],
    ['dscale', 'f32'],
    ['has_d', 'u32'],
  ],
  body: `${REDUCE}
${ENTRY(String(RW))}
  let n = flat;
  if (n >= P.N) { return; }
  let x = P.o_logits + n * P.V;
  var mx = -3.0e38;
  for (var v = lid; v < P.V; v += ${RW}u) { mx = max(mx, logits[x + v]); }
  mx = reduce_max(mx, lid);
  var s = 0.0;
  for (var v = lid; v < P.V; v += ${RW}u) { s += exp(logits[x + v] - mx); }
  let lse = mx + log(reduce_sum(s, lid));
  let y = targets[P.o_targets + n];
  if (lid == 0u) {
    if (y < 0) { losses[P.o_losses + n] = 0.0; } else { losses[P.o_losses + n] = lse - logits[x + u32(y)]; }
  }
  storageBarrier();
  workgroupBarrier();
  if (P.has_d != 0u) {
    let d = P.o_dlogits + n * P.V;
    for (var v = lid; v < P.V; v += ${RW}u) {
      if (y < 0) {
        dlogits[d + v] = 0.0;
      } else {
        let p = exp(logits[x + v] - lse);
        var oh = 0.0;
        if (i32(v) == y) { oh = 1.0; }
        dlogits[d + v] = (p - oh) * P.dscale;
      }
    }
  }
}`,
};

/** probs = softmax(logits) row by row (probs may alias logits). */
export const SOFTMAX: KernelDef = {
  name: 'softmax',
  args: [
    ['probs', 'f32'],
    ['logits', 'f32'],
  ],
  params: [
    ['N', 'u32'],
    ['V', 'u32'],
  ],
  body: `${REDUCE}
${ENTRY(String(RW))}
  let n = flat;
  if (n >= P.N) { return; }
  let x = P.o_logits + n * P.V;
  var mx = -3.0e38;
  for (var v = lid; v < P.V; v += ${RW}u) { mx = max(mx, logits[x + v]); }
  mx = reduce_max(mx, lid);
  var s = 0.0;
  for (var v = lid; v < P.V; v += ${RW}u) { s += exp(logits[x + v] - mx); }
  let inv = 1.0 / reduce_sum(s, lid);
  for (var v = lid; v < P.V; v += ${RW}u) { probs[P.o_probs + n * P.V + v] = exp(logits[x + v] - mx) * inv; }
}`,
};

/** out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:], one invocation per element. */
export const EMBEDDING_FWD: KernelDef = {
  name: 'embedding_fwd',
  args: [
    ['out', 'f32'],
    ['tokens', 'i32'],
    ['wte', 'f32'],
    ['wpe', 'f32'],
  ],
  params: [
    ['BT', 'u32'],
    ['T', 'u32'],
    ['C', 'u32'],
  ],
  body: `
${ENTRY(String(WG))}
  let i = flat * ${WG}u + lid;
  if (i >= P.BT * P.C) { return; }
  let n = i / P.C;
  let c = i % P.C;
  let tok = u32(tokens[P.o_tokens + n]);
  out[P.o_out + i] = wte[P.o_wte + tok * P.C + c] + wpe[P.o_wpe + (n % P.T) * P.C + c];
}`,
};

/**
 * Embedding backward for wte: the host groups positions by token (csr: for the j-th distinct
 * token, its positions in increasing order), so each (token, column) is summed by one invocation
 * in position order, exactly the reference's order, without atomics.
 */
export const EMBEDDING_BWD_WTE: KernelDef = {
  name: 'embedding_bwd_wte',
  args: [
    ['dwte', 'f32'],
    ['dout', 'f32'],
    ['csr', 'i32'],
  ],
  params: [
    ['U', 'u32'],
    ['C', 'u32'],
  ],
  body: `
${ENTRY(String(WG))}
  let i = flat * ${WG}u + lid;
  if (i >= P.U * P.C) { return; }
  let j = i / P.C;
  let c = i % P.C;
  // csr layout: [token_0..token_{U-1}, start_0..start_U, positions...]
  let tok = u32(csr[P.o_csr + j]);
  let s0 = u32(csr[P.o_csr + P.U + j]);
  let s1 = u32(csr[P.o_csr + P.U + j + 1u]);
  let w = P.o_dwte + tok * P.C + c;
  var acc = dwte[w];
  for (var p = s0; p < s1; p++) {
    let pos = u32(csr[P.o_csr + 2u * P.U + 1u + p]);
    acc += dout[P.o_dout + pos * P.C + c];
  }
  dwte[w] = acc;
}`,
};

/** Embedding backward for wpe: dwpe[t,c] += sum over b (in order) of dout[b,t,c]. */
export const EMBEDDING_BWD_WPE: KernelDef = {
  name: 'embedding_bwd_wpe',
  args: [
    ['dwpe', 'f32'],
    ['dout', 'f32'],
  ],
  params: [
    ['B', 'u32'],
    ['T', 'u32'],
    ['C', 'u32'],
  ],
  body: `
${ENTRY(String(WG))}
  let i = flat * ${WG}u + lid;
  if (i >= P.T * P.C) { return; }
  var acc = dwpe[P.o_dwpe + i];
  for (var b = 0u; b < P.B; b++) { acc += dout[P.o_dout + b * P.T * P.C + i]; }
  dwpe[P.o_dwpe + i] = acc;
}`,
};

export const ADD: KernelDef = {
  name: 'add',
  args: [
    ['out', 'f32'],
    ['a', 'f32'],
    ['b', 'f32'],
  ],
  params: [['n', 'u32']],
  body: `
${ENTRY(String(WG))}
  let i = flat * ${WG}u + lid;
  if (i >= P.n) { return; }
  out[P.o_out + i] = a[P.o_a + i] + b[P.o_b + i];
}`,
};

export const SCALE: KernelDef = {
  name: 'scale',
  args: [['x', 'f32']],
  params: [
    ['n', 'u32'],
    ['s', 'f32'],
  ],
  body: `
${ENTRY(String(WG))}
  let i = flat * ${WG}u + lid;
  if (i >= P.n) { return; }
  x[P.o_x + i] = x[P.o_x + i] * P.s;
}`,
};

/**
 * Sum of squares, pass 1: workgroup g sums elements [g*SUMSQ_CHUNK, (g+1)*SUMSQ_CHUNK) (each
 * thread a fixed stride, then the partials in order) into part[g]. Pass 2 is the same kernel over
 * `part` with square = 0, until one value is left: a fixed order for a given length.
 */
export const SUMSQ: KernelDef = {
  name: 'sumsq',
  args: [
    ['part', 'f32'],
    ['x', 'f32'],
  ],
  params: [
    ['n', 'u32'],
    ['square', 'u32'],
    ['ng', 'u32'],
  ],
  body: `${REDUCE}
${ENTRY(String(RW))}
  if (flat >= P.ng) { return; }
  let g0 = flat * ${SUMSQ_CHUNK}u;
  var s = 0.0;
  for (var k = 0u; k < ${SUMSQ_CHUNK / RW}u; k++) {
    let i = g0 + k * ${RW}u + lid;
    if (i < P.n) {
      let v = x[P.o_x + i];
      if (P.square != 0u) { s += v * v; } else { s += v; }
    }
  }
  let r = reduce_sum(s, lid);
  if (lid == 0u) { part[P.o_part + flat] = r; }
}`,
};

/** AdamW, elementwise, the native kernels' formula (bias corrections passed in as reciprocals). */
export const ADAMW: KernelDef = {
  name: 'adamw',
  args: [
    ['p', 'f32'],
    ['g', 'f32'],
    ['m', 'f32'],
    ['v', 'f32'],
  ],
  params: [
    ['n', 'u32'],
    ['lr', 'f32'],
    ['b1', 'f32'],
    ['b2', 'f32'],
    ['eps', 'f32'],
    ['wd', 'f32'],
    ['ib1', 'f32'],
    ['ib2', 'f32'],
  ],
  body: `
${ENTRY(String(WG))}
  let i = flat * ${WG}u + lid;
  if (i >= P.n) { return; }
  let gi = g[P.o_g + i];
  let mi = P.b1 * m[P.o_m + i] + (1.0 - P.b1) * gi;
  let vi = P.b2 * v[P.o_v + i] + (1.0 - P.b2) * gi * gi;
  m[P.o_m + i] = mi;
  v[P.o_v + i] = vi;
  let pi = p[P.o_p + i];
  p[P.o_p + i] = pi - P.lr * ((mi * P.ib1) / (sqrt(vi * P.ib2) + P.eps) + P.wd * pi);
}`,
};

/**
 * The WGSL module for `def` with its arguments mapped onto bindings: slots[i] is the binding
 * (after the uniform at 0) of argument i; arguments with equal slots share one buffer.
 */
export function buildShader(def: KernelDef, slots: readonly number[]): string {
  const fields = [...def.args.map(([n]) => `o_${n}: u32`), ...def.params.map(([n, t]) => `${n}: ${t}`)];
  const decl: string[] = [
    `struct Params {\n  ${fields.join(',\n  ')},\n}`,
    '@group(0) @binding(0) var<uniform> P: Params;',
  ];
  const seen = new Map<number, ArgType>();
  def.args.forEach(([, t], i) => {
    const s = slots[i];
    const prev = seen.get(s);
    if (prev === undefined) {
      seen.set(s, t);
      decl.push(`@group(0) @binding(${s + 1}) var<storage, read_write> bnd${s}: array<${t}>;`);
    } else if (prev !== t) {
      throw new TypeError(`${def.name}: one buffer bound as both ${prev} and ${t}`);
    }
  });
  let body = def.body;
  def.args.forEach(([n], i) => {
    body = body.replace(new RegExp(`\\b${n}\\[`, 'g'), `bnd${slots[i]}[`);
  });
  return decl.join('\n') + '\n' + body;
}

export const ALL_KERNELS: readonly KernelDef[] = [
  GEMM,
  COLSUM,
  LAYERNORM_FWD,
  LAYERNORM_BWD_DINP,
  LAYERNORM_BWD_PARAMS,
  GELU_FWD,
  GELU_BWD,
  ATTENTION_FWD,
  ATTENTION_BWD_Q,
  ATTENTION_BWD_KV,
  ATTENTION_FLASH_FWD,
  ATTENTION_FLASH_BWD_Q,
  ATTENTION_FLASH_BWD_KV,
  CROSSENTROPY,
  SOFTMAX,
  EMBEDDING_FWD,
  EMBEDDING_BWD_WTE,
  EMBEDDING_BWD_WPE,
  ADD,
  SCALE,
  SUMSQ,
  ADAMW,
];
