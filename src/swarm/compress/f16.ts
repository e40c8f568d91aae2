/**
 * IEEE 754 binary16 conversion, written out by hand: Math.f16round exists in Node 24 but not
 * in Node 22 (package.json allows >=22), and it rounds overflow to Infinity where we saturate.
 *
 * f32ToF16Bits: round-to-nearest, ties-to-even (same as Math.f16round on finite inputs whose
 * result is finite), with |x| that would round past 65504 saturating to +-65504 instead of
 * becoming Infinity. Signed zeros and subnormals are kept. Precondition: x is finite.
 */

const F16_MAX_BITS = 0x7bff; // 65504

/** `bits` is the binary32 bit pattern (as from a Uint32Array view) of a finite float. */
export function f32BitsToF16Bits(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | F16_MAX_BITS; // not reached for finite input; saturate anyway
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 31) return sign | F16_MAX_BITS;
  if (e <= 0) {
    // Result is subnormal (or zero): value / 2^-24 = full >> (14 - e), rounded to nearest even.
    const shift = 14 - e;
    if (shift > 24) return sign; // below half the smallest subnormal: rounds to zero
    const full = mant | 0x800000;
    let h = full >>> shift;
    const rem = full & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1) === 1)) h++; // carry into 0x400 is the right normal
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++; // mantissa carry bumps the exponent
  if (h >= 0x7c00) return sign | F16_MAX_BITS;
  return sign | h;
}

let table: Float32Array | null = null;

/** All 65536 binary16 values as float32 (exact); Inf/NaN patterns map to NaN. */
export function f16Table(): Float32Array {
  if (table) return table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 31) t[h] = NaN;
    else if (exp === 0) t[h] = s * mant * 2 ** -24;
    else t[h] = s * (1024 + mant) * 2 ** (exp - 25);
  }
  table = t;
  return t;
}

/** Convenience for tests and callers: round one number through binary16 (saturating). */
export function f16Round(x: number): number {
  const f = new Float32Array([x]);
  return f16Table()[f32BitsToF16Bits(new Uint32Array(f.buffer)[0])];
}
