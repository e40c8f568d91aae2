/**
 * Reference kernels in plain TypeScript: the executable specification of `Kernels`.
 *
 * Written for clarity, not speed (about 10-100x slower than native). They accumulate in
 * float64 and store float32, are single-threaded and run in a fixed order, so they are
 * deterministic by construction. Used by tests as ground truth and as the fallback when
 * the native addon cannot load.
 */
import type { Kernels } from './api.js';
import {
  gqaBackward,
  gqaForward,
  rmsnormBackward,
  rmsnormForward,
  ropeBackward,
  ropeForward,
  swigluBackward,
  swigluForward,
} from './ref-llama.js';

const GELU_K = Math.sqrt(2 / Math.PI);

export function createRefKernels(): Kernels {
  let threads = 1;
  let deterministic = true;
  return {
    name: 'ref',
    setThreads(n) {
      threads = Math.max(1, n | 0);
    },
    getThreads() {
      return threads;
    },
    setDeterministic(on) {
      deterministic = on;
    },
    getDeterministic() {
      return deterministic;
    },

    matmulForward(out, inp, weight, bias, N, C, OC) {
      for (let n = 0; n < N; n++) {
        const x = n * C;
        for (let o = 0; o < OC; o++) {
          let s = bias ? bias[o] : 0;
          const w = o * C;
          for (let c = 0; c < C; c++) s += inp[x + c] * weight[w + c];
          out[n * OC + o] = s;
        }
      }
    },

    matmulBackward(dinp, dweight, dbias, dout, inp, weight, N, C, OC) {
      for (let n = 0; n < N; n++) {
        for (let c = 0; c < C; c++) {
          let s = 0;
          for (let o = 0; o < OC; o++) s += dout[n * OC + o] * weight[o * C + c];
          dinp[n * C + c] += s;
        }
      }
      for (let o = 0; o < OC; o++) {
        for (let c = 0; dweight && c < C; c++) {
          let s = 0;
          for (let n = 0; n < N; n++) s += dout[n * OC + o] * inp[n * C + c];
          dweight[o * C + c] += s;
        }
        if (dbias) {
          let s = 0;
          for (let n = 0; n < N; n++) s += dout[n * OC + o];
          dbias[o] += s;
        }
      }
    },

    layernormForward(out, mean, rstd, inp, weight, bias, N, C) {
      for (let n = 0; n < N; n++) {
        const x = n * C;
        let m = 0;
        for (let c = 0; c < C; c++) m += inp[x + c];
        m /= C;
        let v = 0;
        for (let c = 0; c < C; c++) {
          const d = inp[x + c] - m;
          v += d * d;
        }
        v /= C;
        const r = 1 / Math.sqrt(v + 1e-5);
        for (let c = 0; c < C; c++) out[x + c] = (inp[x + c] - m) * r * weight[c] + bias[c];
        mean[n] = m;
        rstd[n] = r;
      }
    },

    layernormBackward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C) {
      for (let n = 0; n < N; n++) {
        const x = n * C;
        const m = mean[n],
          r = rstd[n];
        let dnormMean = 0,
          dnormNormMean = 0;
        for (let c = 0; c < C; c++) {
          const norm = (inp[x + c] - m) * r;
          const dnorm = weight[c] * dout[x + c];
          dnormMean += dnorm;
          dnormNormMean += dnorm * norm;
        }
        dnormMean /= C;
        dnormNormMean /= C;
        for (let c = 0; c < C; c++) {
          const norm = (inp[x + c] - m) * r;
          const dnorm = weight[c] * dout[x + c];
          dbias[c] += dout[x + c];
          dweight[c] += norm * dout[x + c];
          dinp[x + c] += (dnorm - dnormMean - norm * dnormNormMean) * r;
        }
      }
    },

    geluForward(out, inp, n) {
      for (let i = 0; i < n; i++) {
        const x = inp[i];
        out[i] = 0.5 * x * (1 + Math.tanh(GELU_K * (x + 0.044715 * x * x * x)));
      }
    },

    geluBackward(dinp, inp, dout, n) {
      for (let i = 0; i < n; i++) {
        const x = inp[i];
        const u = GELU_K * (x + 0.044715 * x * x * x);
        const th = Math.tanh(u);
        const sech2 = 1 - th * th;
        const g = 0.5 * (1 + th) + 0.5 * x * sech2 * GELU_K * (1 + 3 * 0.044715 * x * x);
        dinp[i] += g * dout[i];
      }
    },

    attentionForward(out, att, inp, B, T, C, NH) {
      const hs = C / NH,
        C3 = 3 * C,
        sc = 1 / Math.sqrt(hs);
      for (let b = 0; b < B; b++)
        for (let h = 0; h < NH; h++)
          for (let t = 0; t < T; t++) {
            const q = b * T * C3 + t * C3 + h * hs;
            const a = ((b * NH + h) * T + t) * T;
            let max = -Infinity;
            for (let u = 0; u <= t; u++) {
              const k = b * T * C3 + u * C3 + C + h * hs;
              let s = 0;
              for (let i = 0; i < hs; i++) s += inp[q + i] * inp[k + i];
              s *= sc;
              att[a + u] = s;
              if (s > max) max = s;
            }
            let sum = 0;
            for (let u = 0; u <= t; u++) {
              const e = Math.exp(att[a + u] - max);
              att[a + u] = e;
              sum += e;
            }
            for (let u = 0; u < T; u++) att[a + u] = u <= t ? att[a + u] / sum : 0;
            const o = b * T * C + t * C + h * hs;
            for (let i = 0; i < hs; i++) {
              let s = 0;
              for (let u = 0; u <= t; u++) s += att[a + u] * inp[b * T * C3 + u * C3 + 2 * C + h * hs + i];
              out[o + i] = s;
            }
          }
    },

    attentionBackward(dinp, datt, dout, inp, att, B, T, C, NH) {
      const hs = C / NH,
        C3 = 3 * C,
        sc = 1 / Math.sqrt(hs);
      for (let b = 0; b < B; b++)
        for (let h = 0; h < NH; h++)
          for (let t = 0; t < T; t++) {
            const a = ((b * NH + h) * T + t) * T;
            const o = b * T * C + t * C + h * hs;
            // d(att) and d(v)
            for (let u = 0; u <= t; u++) {
              const v = b * T * C3 + u * C3 + 2 * C + h * hs;
              let s = 0;
              for (let i = 0; i < hs; i++) {
                s += inp[v + i] * dout[o + i];
                dinp[v + i] += att[a + u] * dout[o + i];
              }
              datt[a + u] = s;
            }
            // softmax backward: dpre[u] = p[u] * (datt[u] - sum_j p[j] datt[j])
            let dot = 0;
            for (let u = 0; u <= t; u++) dot += att[a + u] * datt[a + u];
            const q = b * T * C3 + t * C3 + h * hs;
            for (let u = 0; u <= t; u++) {
              const dpre = att[a + u] * (datt[a + u] - dot) * sc;
              const k = b * T * C3 + u * C3 + C + h * hs;
              for (let i = 0; i < hs; i++) {
                dinp[q + i] += inp[k + i] * dpre;
                dinp[k + i] += inp[q + i] * dpre;
              }
            }
          }
    },

    crossEntropyForwardBackward(losses, dlogits, logits, targets, N, V, dlossScale) {
      for (let n = 0; n < N; n++) {
        const x = n * V,
          y = targets[n];
        let max = -Infinity;
        for (let v = 0; v < V; v++) if (logits[x + v] > max) max = logits[x + v];
        let sum = 0;
        for (let v = 0; v < V; v++) sum += Math.exp(logits[x + v] - max);
        const lse = max + Math.log(sum);
        losses[n] = y < 0 ? 0 : lse - logits[x + y];
        if (dlogits) {
          for (let v = 0; v < V; v++) {
            const p = Math.exp(logits[x + v] - lse);
            dlogits[x + v] = y < 0 ? 0 : (p - (v === y ? 1 : 0)) * dlossScale;
          }
        }
      }
    },

    softmax(probs, logits, N, V) {
      for (let n = 0; n < N; n++) {
        const x = n * V;
        let max = -Infinity;
        for (let v = 0; v < V; v++) if (logits[x + v] > max) max = logits[x + v];
        let sum = 0;
        for (let v = 0; v < V; v++) sum += Math.exp(logits[x + v] - max);
        for (let v = 0; v < V; v++) probs[x + v] = Math.exp(logits[x + v] - max) / sum;
      }
    },

    embeddingForward(out, tokens, wte, wpe, B, T, C) {
      for (let b = 0; b < B; b++)
        for (let t = 0; t < T; t++) {
          const o = (b * T + t) * C,
            e = tokens[b * T + t] * C,
            p = t * C;
          for (let c = 0; c < C; c++) out[o + c] = wte[e + c] + wpe[p + c];
        }
    },

    embeddingBackward(dwte, dwpe, dout, tokens, B, T, C) {
      for (let b = 0; b < B; b++)
        for (let t = 0; t < T; t++) {
          const o = (b * T + t) * C,
            e = tokens[b * T + t] * C,
            p = t * C;
          for (let c = 0; c < C; c++) {
            dwte[e + c] += dout[o + c];
            dwpe[p + c] += dout[o + c];
          }
        }
    },

    add(out, a, b, n) {
      for (let i = 0; i < n; i++) out[i] = a[i] + b[i];
    },

    sumSquares(x) {
      let s = 0;
      for (let i = 0; i < x.length; i++) s += x[i] * x[i];
      return s;
    },

    scale(x, s) {
      for (let i = 0; i < x.length; i++) x[i] *= s;
    },

    adamw(params, grads, m, v, lr, beta1, beta2, eps, weightDecay, step) {
      const bc1 = 1 - Math.pow(beta1, step),
        bc2 = 1 - Math.pow(beta2, step);
      for (let i = 0; i < params.length; i++) {
        const g = grads[i];
        const mi = beta1 * m[i] + (1 - beta1) * g;
        const vi = beta2 * v[i] + (1 - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const mhat = mi / bc1,
          vhat = vi / bc2;
        params[i] -= lr * (mhat / (Math.sqrt(vhat) + eps) + weightDecay * params[i]);
      }
    },

    // The Llama family: the reference kernels of ref-llama.ts.
    rmsnormForward,
    rmsnormBackward,
    ropeForward,
    ropeBackward,
    swigluForward,
    swigluBackward,
    gqaForward,
    gqaBackward,
  };
}
