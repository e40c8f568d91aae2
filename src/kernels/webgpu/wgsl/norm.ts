/**
 * WGSL LayerNorm kernels: forward, input gradient, and weight/bias gradients.
 */
import { type KernelDef, ENTRY, REDUCE, RW, WG } from './common.js';

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
