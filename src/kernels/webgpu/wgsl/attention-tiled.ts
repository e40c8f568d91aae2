/**
 * Flash attention with K/V tiles shared across query rows through workgroup memory: forward and
 * backward, causal, deterministic (no atomics; every sum in a fixed order), memory O(T) per row
 * (the log-sum-exp per row is all backward keeps).
 *
 * One workgroup takes BT query rows of one (batch, head) and walks the key tiles up to its last
 * row, so each K/V tile is read from global memory once per BT rows instead of once per row
 * (attention.ts's flash kernels, one workgroup per row). The forward keeps the running max m,
 * sum l and output of each of its rows (the online softmax, rescaled by exp(m_old − m_new) per
 * tile). Backward is two passes as in attention.ts, split by the row that owns the output: per
 * query tile, dq (recomputing p from lse, with D = dout·out per row); per key tile, dk and dv
 * over the query tiles at or below it, with its K/V tile resident and each Q/dout tile shared
 * across its keys.
 *
 * Tile sizes come from the head size (tiledRows): forward BT = min(16, 1024 / hs) rows and keys,
 * backward min(16, 512 / hs), so the Q, K, V (and dout) tiles fit WebGPU's guaranteed 16 KiB of
 * workgroup memory for any hs <= 256. BT is a uniform, not a constant: one pipeline per kernel
 * for every head size (SwiftShader compiles a constant-sized variant for seconds). Every thread
 * owns (row, dim) outputs e = lid + 64 r, r < ceil(BT hs / 64) <= 16.
 * Sums: each output over its key (or query) tiles in order, and within a tile over keys (queries)
 * in order. Not the same bits as the per-row kernels (the rescaling points differ), the same
 * math; both are checked against the reference (test/webgpu-kernels.test.ts).
 */
import { type KernelDef, ENTRY, RW } from './common.js';

/** Rows (and keys) per tile for head size hs <= 256: forward and backward. */
export function tiledRows(hs: number): { fwd: number; bwd: number } {
  return { fwd: Math.min(16, Math.floor(1024 / hs)), bwd: Math.max(1, Math.min(16, Math.floor(512 / hs))) };
}

/** Largest head size of the tiled kernels. */
export const TILED_MAX_HS = 256;
/** Workgroup tile buffers: forward BT·hs <= 1024 floats, backward <= 512; scores BT² <= 256. */
const NF = 1024,
  NB = 512,
  NS = 256,
  MAXBT = 16;

const PARAMS = [
  ['bt', 'u32'],
  ['B', 'u32'],
  ['T', 'u32'],
  ['C', 'u32'],
  ['NH', 'u32'],
  ['scale', 'f32'],
] as const;

/** Decodes flat into (b, h, tile) and the head's base in inp. */
const TILE_IDX = `
  let ntile = (P.T + P.bt - 1u) / P.bt;
  if (flat >= P.B * P.NH * ntile) { return; }
  let tile = flat % ntile;
  let bh = flat / ntile;
  let h = bh % P.NH;
  let b = bh / P.NH;
  let hs = P.C / P.NH;
  let C3 = 3u * P.C;
  let base = P.o_inp + b * P.T * C3 + h * hs;
  let t0 = tile * P.bt;
  let nrows = min(P.bt, P.T - t0);
  let n = P.bt * hs;
  let nout = (n + ${RW - 1}u) / ${RW}u;`;

/** Forward: out [B,T,C] and lse [B,NH,T] from inp [B,T,3C]. */
export const ATTENTION_TILED_FWD: KernelDef = {
  name: 'attention_tiled_fwd',
  args: [
    ['out', 'f32'],
    ['lse', 'f32'],
    ['inp', 'f32'],
  ],
  params: PARAMS,
  body: `
var<workgroup> qs: array<f32, ${NF}>;
var<workgroup> ks: array<f32, ${NF}>;
var<workgroup> vs: array<f32, ${NF}>;
var<workgroup> ss: array<f32, ${NS}>;
var<workgroup> mrow: array<f32, ${MAXBT}>;
var<workgroup> lrow: array<f32, ${MAXBT}>;
var<workgroup> crow: array<f32, ${MAXBT}>;
${ENTRY(String(RW))}
  ${TILE_IDX}
  for (var e = lid; e < n; e += ${RW}u) {
    let r = e / hs;
    var v = 0.0;
    if (r < nrows) { v = inp[base + (t0 + r) * C3 + e % hs]; }
    qs[e] = v;
  }
  if (lid < P.bt) { mrow[lid] = -3.0e38; lrow[lid] = 0.0; }
  var acc: array<f32, 16>;
  let last = t0 + nrows - 1u;
  for (var u0 = 0u; u0 <= last; u0 += P.bt) {
    workgroupBarrier();
    for (var e = lid; e < n; e += ${RW}u) {
      let j = e / hs;
      var kv = 0.0;
      var vv = 0.0;
      if (u0 + j < P.T) {
        let at = base + (u0 + j) * C3 + P.C + e % hs;
        kv = inp[at];
        vv = inp[at + P.C];
      }
      ks[e] = kv;
      vs[e] = vv;
    }
    workgroupBarrier();
    for (var e = lid; e < (P.bt * P.bt); e += ${RW}u) {
      let r = e / P.bt;
      let j = e % P.bt;
      var s = -3.0e38;
      if (r < nrows && u0 + j <= t0 + r) {
        var d = 0.0;
        for (var i = 0u; i < hs; i++) { d += qs[r * hs + i] * ks[j * hs + i]; }
        s = d * P.scale;
      }
      ss[e] = s;
    }
    workgroupBarrier();
    if (lid < P.bt) {
      let r = lid;
      let mo = mrow[r];
      var tm = -3.0e38;
      for (var j = 0u; j < P.bt; j++) { tm = max(tm, ss[r * P.bt + j]); }
      let mn = max(mo, tm);
      var lt = 0.0;
      for (var j = 0u; j < P.bt; j++) {
        var p = 0.0;
        if (r < nrows && u0 + j <= t0 + r) { p = exp(ss[r * P.bt + j] - mn); }
        ss[r * P.bt + j] = p;
        lt += p;
      }
      let corr = exp(mo - mn);
      crow[r] = corr;
      lrow[r] = lrow[r] * corr + lt;
      mrow[r] = mn;
    }
    workgroupBarrier();
    for (var q = 0u; q < nout; q++) {
      let e = lid + q * ${RW}u;
      if (e < n) {
        let r = e / hs;
        let i = e % hs;
        var a = acc[q] * crow[r];
        for (var j = 0u; j < P.bt; j++) { a += ss[r * P.bt + j] * vs[j * hs + i]; }
        acc[q] = a;
      }
    }
  }
  for (var q = 0u; q < nout; q++) {
    let e = lid + q * ${RW}u;
    let r = e / hs;
    if (e < n && r < nrows) { out[P.o_out + (b * P.T + t0 + r) * P.C + h * hs + e % hs] = acc[q] / lrow[r]; }
  }
  if (lid < nrows) { lse[P.o_lse + bh * P.T + t0 + lid] = mrow[lid] + log(lrow[lid]); }
}`,
};

/**
 * Backward pass 1, per query tile: D = dout·out per row (into dd, for pass 2), then over key
 * tiles ds = p (dout·v − D) scale with p = exp(q·k scale − lse), and dq += Σ_u ds k_u.
 */
export const ATTENTION_TILED_BWD_Q: KernelDef = {
  name: 'attention_tiled_bwd_q',
  args: [
    ['dinp', 'f32'],
    ['dd', 'f32'],
    ['dout', 'f32'],
    ['inp', 'f32'],
    ['out', 'f32'],
    ['lse', 'f32'],
  ],
  params: PARAMS,
  body: `
var<workgroup> qs: array<f32, ${NB}>;
var<workgroup> gs: array<f32, ${NB}>;
var<workgroup> ks: array<f32, ${NB}>;
var<workgroup> vs: array<f32, ${NB}>;
var<workgroup> ss: array<f32, ${NS}>;
var<workgroup> lrow: array<f32, ${MAXBT}>;
var<workgroup> drow: array<f32, ${MAXBT}>;
${ENTRY(String(RW))}
  ${TILE_IDX}
  for (var e = lid; e < n; e += ${RW}u) {
    let r = e / hs;
    let i = e % hs;
    var qv = 0.0;
    var gv = 0.0;
    if (r < nrows) {
      qv = inp[base + (t0 + r) * C3 + i];
      gv = dout[P.o_dout + (b * P.T + t0 + r) * P.C + h * hs + i];
    }
    qs[e] = qv;
    gs[e] = gv;
  }
  if (lid < nrows) {
    let o = (b * P.T + t0 + lid) * P.C + h * hs;
    var D = 0.0;
    for (var i = 0u; i < hs; i++) { D += dout[P.o_dout + o + i] * out[P.o_out + o + i]; }
    drow[lid] = D;
    dd[P.o_dd + bh * P.T + t0 + lid] = D;
    lrow[lid] = lse[P.o_lse + bh * P.T + t0 + lid];
  }
  var acc: array<f32, 16>;
  let last = t0 + nrows - 1u;
  for (var u0 = 0u; u0 <= last; u0 += P.bt) {
    workgroupBarrier();
    for (var e = lid; e < n; e += ${RW}u) {
      let j = e / hs;
      var kv = 0.0;
      var vv = 0.0;
      if (u0 + j < P.T) {
        let at = base + (u0 + j) * C3 + P.C + e % hs;
        kv = inp[at];
        vv = inp[at + P.C];
      }
      ks[e] = kv;
      vs[e] = vv;
    }
    workgroupBarrier();
    for (var e = lid; e < (P.bt * P.bt); e += ${RW}u) {
      let r = e / P.bt;
      let j = e % P.bt;
      var ds = 0.0;
      if (r < nrows && u0 + j <= t0 + r) {
        var sc = 0.0;
        var dp = 0.0;
        for (var i = 0u; i < hs; i++) {
          sc += qs[r * hs + i] * ks[j * hs + i];
          dp += gs[r * hs + i] * vs[j * hs + i];
        }
        let p = exp(sc * P.scale - lrow[r]);
        ds = p * (dp - drow[r]) * P.scale;
      }
      ss[e] = ds;
    }
    workgroupBarrier();
    for (var q = 0u; q < nout; q++) {
      let e = lid + q * ${RW}u;
      if (e < n) {
        let r = e / hs;
        let i = e % hs;
        var a = acc[q];
        for (var j = 0u; j < P.bt; j++) { a += ss[r * P.bt + j] * ks[j * hs + i]; }
        acc[q] = a;
      }
    }
  }
  for (var q = 0u; q < nout; q++) {
    let e = lid + q * ${RW}u;
    let r = e / hs;
    if (e < n && r < nrows) {
      let at = P.o_dinp + (base - P.o_inp) + (t0 + r) * C3 + e % hs;
      dinp[at] = dinp[at] + acc[q];
    }
  }
}`,
};

/**
 * Backward pass 2, per key tile (after pass 1): its K/V tile stays in workgroup memory while
 * the query tiles at or below it stream through; dk += Σ_t ds q_t, dv += Σ_t p dout_t over t in
 * increasing order.
 */
export const ATTENTION_TILED_BWD_KV: KernelDef = {
  name: 'attention_tiled_bwd_kv',
  args: [
    ['dinp', 'f32'],
    ['dd', 'f32'],
    ['dout', 'f32'],
    ['inp', 'f32'],
    ['lse', 'f32'],
  ],
  params: PARAMS,
  body: `
var<workgroup> qs: array<f32, ${NB}>;
var<workgroup> gs: array<f32, ${NB}>;
var<workgroup> ks: array<f32, ${NB}>;
var<workgroup> vs: array<f32, ${NB}>;
var<workgroup> ss: array<f32, ${NS}>;
var<workgroup> ps: array<f32, ${NS}>;
var<workgroup> lrow: array<f32, ${MAXBT}>;
var<workgroup> drow: array<f32, ${MAXBT}>;
${ENTRY(String(RW))}
  ${TILE_IDX}
  let u0 = t0;
  let nkeys = nrows;
  for (var e = lid; e < n; e += ${RW}u) {
    let j = e / hs;
    var kv = 0.0;
    var vv = 0.0;
    if (j < nkeys) {
      let at = base + (u0 + j) * C3 + P.C + e % hs;
      kv = inp[at];
      vv = inp[at + P.C];
    }
    ks[e] = kv;
    vs[e] = vv;
  }
  var ak: array<f32, 16>;
  var av: array<f32, 16>;
  for (var q0 = u0; q0 < P.T; q0 += P.bt) {
    let nq = min(P.bt, P.T - q0);
    workgroupBarrier();
    for (var e = lid; e < n; e += ${RW}u) {
      let r = e / hs;
      let i = e % hs;
      var qv = 0.0;
      var gv = 0.0;
      if (r < nq) {
        qv = inp[base + (q0 + r) * C3 + i];
        gv = dout[P.o_dout + (b * P.T + q0 + r) * P.C + h * hs + i];
      }
      qs[e] = qv;
      gs[e] = gv;
    }
    if (lid < nq) {
      lrow[lid] = lse[P.o_lse + bh * P.T + q0 + lid];
      drow[lid] = dd[P.o_dd + bh * P.T + q0 + lid];
    }
    workgroupBarrier();
    for (var e = lid; e < (P.bt * P.bt); e += ${RW}u) {
      let r = e / P.bt;
      let j = e % P.bt;
      var p = 0.0;
      var ds = 0.0;
      if (r < nq && j < nkeys && u0 + j <= q0 + r) {
        var sc = 0.0;
        var dp = 0.0;
        for (var i = 0u; i < hs; i++) {
          sc += qs[r * hs + i] * ks[j * hs + i];
          dp += gs[r * hs + i] * vs[j * hs + i];
        }
        p = exp(sc * P.scale - lrow[r]);
        ds = p * (dp - drow[r]) * P.scale;
      }
      ps[e] = p;
      ss[e] = ds;
    }
    workgroupBarrier();
    for (var q = 0u; q < nout; q++) {
      let e = lid + q * ${RW}u;
      if (e < n) {
        let j = e / hs;
        let i = e % hs;
        var a = ak[q];
        var c = av[q];
        for (var r = 0u; r < P.bt; r++) {
          a += ss[r * P.bt + j] * qs[r * hs + i];
          c += ps[r * P.bt + j] * gs[r * hs + i];
        }
        ak[q] = a;
        av[q] = c;
      }
    }
  }
  for (var q = 0u; q < nout; q++) {
    let e = lid + q * ${RW}u;
    let j = e / hs;
    if (e < n && j < nkeys) {
      let at = P.o_dinp + (base - P.o_inp) + (u0 + j) * C3 + P.C + e % hs;
      dinp[at] = dinp[at] + ak[q];
      dinp[at + P.C] = dinp[at + P.C] + av[q];
    }
  }
}`,
};
