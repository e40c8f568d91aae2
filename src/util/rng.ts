/**
 * A small seeded PRNG so that batch sampling (and anything else random) is reproducible
 * across runs, machines and Node versions; Math.random cannot be seeded.
 *
 * Algorithm: xoshiro128** (32-bit words, fast with Math.imul), its 128-bit state filled
 * from the seed by splitmix64. Not cryptographic.
 */
import { InvalidInputError } from './errors.js';

const MASK64 = (1n << 64n) - 1n;
const TWO32 = 4294967296;

function splitmix64(state: bigint): [bigint, bigint] {
  const next = (state + 0x9e3779b97f4a7c15n) & MASK64;
  let z = next;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return [next, z ^ (z >> 31n)];
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

export class Rng {
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;

  /** `seed`: any safe integer (negative allowed) or bigint; only its low 64 bits matter. */
  constructor(seed: number | bigint) {
    if (typeof seed === 'number' && !Number.isSafeInteger(seed)) {
      throw new InvalidInputError(`RNG seed must be a safe integer, got ${seed}`);
    }
    let st = BigInt(seed) & MASK64;
    let out: bigint;
    const words: number[] = [];
    for (let i = 0; i < 2; i++) {
      [st, out] = splitmix64(st);
      words.push(Number(out & 0xffffffffn), Number(out >> 32n));
    }
    this.setState(words as [number, number, number, number]);
  }

  /** The raw generator state, for checkpointing. */
  getState(): [number, number, number, number] {
    return [this.s0 >>> 0, this.s1 >>> 0, this.s2 >>> 0, this.s3 >>> 0];
  }

  /** Restore a state from getState(). An all-zero state is invalid for xoshiro. */
  setState(state: readonly [number, number, number, number]): void {
    const w = state.map((x) => {
      if (!Number.isInteger(x) || x < 0 || x >= TWO32) throw new InvalidInputError(`bad RNG state word ${x}`);
      return x | 0;
    });
    if ((w[0] | w[1] | w[2] | w[3]) === 0) w[0] = 1;
    [this.s0, this.s1, this.s2, this.s3] = w as [number, number, number, number];
  }

  /** Uniform integer in [0, 2^32). */
  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9);
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result >>> 0;
  }

  /** Uniform float in [0, 1) with 53 random bits. */
  nextFloat(): number {
    const hi = this.nextU32() >>> 5; // 27 bits
    const lo = this.nextU32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Uniform integer in [0, n), unbiased (rejection sampling). 1 <= n <= 2^53. */
  nextInt(n: number): number {
    if (!Number.isSafeInteger(n) || n < 1)
      throw new InvalidInputError(`nextInt bound must be a positive safe integer, got ${n}`);
    if (n <= TWO32) {
      const limit = TWO32 - (TWO32 % n); // accept u < limit
      for (;;) {
        const u = this.nextU32();
        if (u < limit) return u % n;
      }
    }
    const TWO53 = 9007199254740992;
    const limit = TWO53 - (TWO53 % n);
    for (;;) {
      const u = (this.nextU32() >>> 11) * TWO32 + this.nextU32(); // 21 + 32 = 53 bits
      if (u < limit) return u % n;
    }
  }
}

/** A seeded uniform [0, 1) source as a plain function, for test data and benchmarks. */
export function uniform(seed: number | bigint): () => number {
  const r = new Rng(seed);
  return () => r.nextFloat();
}
