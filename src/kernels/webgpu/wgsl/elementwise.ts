/**
 * WGSL elementwise and per-column kernels: GELU, embedding forward/backward, add, scale, sum of
 * squares, AdamW.
 */
import { type KernelDef, ENTRY, REDUCE, RW, SUMSQ_CHUNK, WG } from './common.js';

// GELU through s = 1 / (1 + exp(-2u)) as in the native kernels: 0.5 x (1 + tanh u) = x s, and
// sech^2 u = 4 s (1 - s). No cancellation and no NaN for large |x| (exp overflows to +inf, s = 0).
export const GELU_FN = `
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
