/**
 * WGSL matrix kernels: the tiled GEMM (forward, dinp and dweight are strides of it) and dbias column sums.
 */
import { type KernelDef, ENTRY, TILE, TK, WG } from './common.js';

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
