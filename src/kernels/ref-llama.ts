/**
 * Reference kernels for what the Llama family adds to GPT-2, forward and backward: token
 * embedding without positions, RMSNorm, rotary position embedding (RoPE), the SwiGLU gate and
 * causal grouped-query attention (GQA). The readable specification of the Llama part of the
 * `Kernels` contract (api.ts): `ref.ts` delegates to these, the native addon
 * (native/src/llama_impl.inc) and the WGSL kernels (webgpu/llama-wgsl.ts) are tested against them.
 *
 * Written like ref.ts: float64 accumulation, one thread, a fixed order, so they are
 * deterministic by construction.
 *
 * Conventions as in api.ts: row-major, activations [N, C] with N = B*T, backward kernels
 * ACCUMULATE into gradient buffers, nothing allocates. Every function accepts Float32Array or
 * Float64Array, so the gradient tests can run them in float64 against finite differences.
 * RoPE follows Hugging Face's rotate_half layout: within a head of width hd, element i pairs
 * with element i + hd/2 (not the interleaved (2i, 2i+1) pairs of Meta's original code).
 */

export type Arr = Float32Array | Float64Array;

/** out[n, :] = table[tokens[n], :] for N tokens of width C. */
export function embedForward(out: Arr, tokens: Int32Array, table: Arr, N: number, C: number): void {
  for (let n = 0; n < N; n++) {
    const o = n * C,
      e = tokens[n] * C;
    for (let c = 0; c < C; c++) out[o + c] = table[e + c];
  }
}

/** dtable[tokens[n], :] += dout[n, :], in token order (deterministic). */
export function embedBackward(dtable: Arr, dout: Arr, tokens: Int32Array, N: number, C: number): void {
  for (let n = 0; n < N; n++) {
    const o = n * C,
      e = tokens[n] * C;
    for (let c = 0; c < C; c++) dtable[e + c] += dout[o + c];
  }
}

/** out = inp * rsqrt(mean(inp²) + eps) * weight per row of C; keeps rstd[N] for backward. */
export function rmsnormForward(out: Arr, rstd: Arr, inp: Arr, weight: Arr, N: number, C: number, eps: number): void {
  for (let n = 0; n < N; n++) {
    const x = n * C;
    let ss = 0;
    for (let c = 0; c < C; c++) ss += inp[x + c] * inp[x + c];
    const r = 1 / Math.sqrt(ss / C + eps);
    for (let c = 0; c < C; c++) out[x + c] = inp[x + c] * r * weight[c];
    rstd[n] = r;
  }
}

/**
 * dinp += r·w⊙dout − inp · r³/C · Σ(dout⊙w⊙inp); dweight += Σ_n dout ⊙ inp·r.
 */
export function rmsnormBackward(
  dinp: Arr,
  dweight: Arr,
  dout: Arr,
  inp: Arr,
  weight: Arr,
  rstd: Arr,
  N: number,
  C: number,
): void {
  for (let n = 0; n < N; n++) {
    const x = n * C,
      r = rstd[n];
    let dot = 0;
    for (let c = 0; c < C; c++) dot += dout[x + c] * weight[c] * inp[x + c];
    const k = (dot * r * r * r) / C;
    for (let c = 0; c < C; c++) {
      dweight[c] += dout[x + c] * inp[x + c] * r;
      dinp[x + c] += dout[x + c] * weight[c] * r - inp[x + c] * k;
    }
  }
}

/**
 * Rotate, in place, x [B, T, nh, hd] by position t: for i < hd/2,
 *   x[i] ← x[i]·cos − x[i+hd/2]·sin,  x[i+hd/2] ← x[i+hd/2]·cos + x[i]·sin
 * with cos/sin [T', hd/2] from llama-config.ropeTables (T' ≥ T).
 */
export function ropeForward(x: Arr, cos: Arr, sin: Arr, B: number, T: number, nh: number, hd: number): void {
  rotate(x, cos, sin, B, T, nh, hd, 1);
}

/** The transpose of ropeForward (a rotation by −angle), in place on the gradient dx. */
export function ropeBackward(dx: Arr, cos: Arr, sin: Arr, B: number, T: number, nh: number, hd: number): void {
  rotate(dx, cos, sin, B, T, nh, hd, -1);
}

function rotate(x: Arr, cos: Arr, sin: Arr, B: number, T: number, nh: number, hd: number, sign: 1 | -1): void {
  const half = hd / 2;
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++) {
      const row = (b * T + t) * nh * hd,
        tab = t * half;
      for (let h = 0; h < nh; h++) {
        const o = row + h * hd;
        for (let i = 0; i < half; i++) {
          const c = cos[tab + i],
            s = sign * sin[tab + i];
          const a = x[o + i],
            z = x[o + i + half];
          x[o + i] = a * c - z * s;
          x[o + i + half] = z * c + a * s;
        }
      }
    }
}

/** out = silu(gate) ⊙ up, silu(g) = g·σ(g). */
export function swigluForward(out: Arr, gate: Arr, up: Arr, n: number): void {
  for (let i = 0; i < n; i++) {
    const g = gate[i];
    out[i] = (g / (1 + Math.exp(-g))) * up[i];
  }
}

/** dgate += dout·up·σ(g)(1 + g(1 − σ(g))); dup += dout·silu(g). */
export function swigluBackward(dgate: Arr, dup: Arr, dout: Arr, gate: Arr, up: Arr, n: number): void {
  for (let i = 0; i < n; i++) {
    const g = gate[i];
    const sg = 1 / (1 + Math.exp(-g));
    dgate[i] += dout[i] * up[i] * sg * (1 + g * (1 - sg));
    dup[i] += dout[i] * g * sg;
  }
}

/**
 * Causal grouped-query attention. q [B, T, NH, hd], k and v [B, T, KV, hd] (already rotated);
 * query head h reads kv head floor(h / (NH/KV)) (Hugging Face's repeat_kv order). Scale
 * 1/sqrt(hd). out [B, T, NH, hd]; att [B, NH, T, T] keeps the softmax probabilities (upper
 * triangle zero) for backward.
 */
export function gqaForward(
  out: Arr,
  att: Arr,
  q: Arr,
  k: Arr,
  v: Arr,
  B: number,
  T: number,
  NH: number,
  KV: number,
  hd: number,
): void {
  const group = NH / KV,
    sc = 1 / Math.sqrt(hd),
    qw = NH * hd,
    kw = KV * hd;
  for (let b = 0; b < B; b++)
    for (let h = 0; h < NH; h++) {
      const kh = Math.floor(h / group) * hd;
      for (let t = 0; t < T; t++) {
        const qo = (b * T + t) * qw + h * hd;
        const a = ((b * NH + h) * T + t) * T;
        let max = -Infinity;
        for (let u = 0; u <= t; u++) {
          const ko = (b * T + u) * kw + kh;
          let s = 0;
          for (let i = 0; i < hd; i++) s += q[qo + i] * k[ko + i];
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
        for (let i = 0; i < hd; i++) {
          let s = 0;
          for (let u = 0; u <= t; u++) s += att[a + u] * v[(b * T + u) * kw + kh + i];
          out[qo + i] = s;
        }
      }
    }
}

/**
 * Backward of gqaForward: dq, dk, dv ACCUMULATE (a kv head sums the gradients of every query
 * head in its group); datt [B, NH, T, T] is scratch (overwritten).
 */
export function gqaBackward(
  dq: Arr,
  dk: Arr,
  dv: Arr,
  datt: Arr,
  dout: Arr,
  q: Arr,
  k: Arr,
  v: Arr,
  att: Arr,
  B: number,
  T: number,
  NH: number,
  KV: number,
  hd: number,
): void {
  const group = NH / KV,
    sc = 1 / Math.sqrt(hd),
    qw = NH * hd,
    kw = KV * hd;
  for (let b = 0; b < B; b++)
    for (let h = 0; h < NH; h++) {
      const kh = Math.floor(h / group) * hd;
      for (let t = 0; t < T; t++) {
        const qo = (b * T + t) * qw + h * hd;
        const a = ((b * NH + h) * T + t) * T;
        for (let u = 0; u <= t; u++) {
          const vo = (b * T + u) * kw + kh;
          let s = 0;
          for (let i = 0; i < hd; i++) {
            s += v[vo + i] * dout[qo + i];
            dv[vo + i] += att[a + u] * dout[qo + i];
          }
          datt[a + u] = s;
        }
        let dot = 0;
        for (let u = 0; u <= t; u++) dot += att[a + u] * datt[a + u];
        for (let u = 0; u <= t; u++) {
          const dpre = att[a + u] * (datt[a + u] - dot) * sc;
          const ko = (b * T + u) * kw + kh;
          for (let i = 0; i < hd; i++) {
            dq[qo + i] += k[ko + i] * dpre;
            dk[ko + i] += q[qo + i] * dpre;
          }
        }
      }
    }
}
