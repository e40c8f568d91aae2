/**
 * WGSL row kernels at the head of the model: fused softmax + cross-entropy, and softmax.
 */
import { type KernelDef, ENTRY, REDUCE, RW } from './common.js';

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
