/**
 * Which batches a round's training and validation draw: pure functions of (runId, round) and
 * the assigned shards' tokens, so the trainer, a validator scoring it and an auditor
 * re-executing it derive the same ones.
 *
 * Trainer. The base seed is the first 48 bits of the round seed. Each assigned shard with at
 * least T+2 tokens is a source, in assignment order, with seed base + its position in the
 * assignment (unusable shards keep their position, so the seeds do not shift). Inner step i
 * (0-based) draws the next batch of source i mod n: its draw ⌊i/n⌋ (0-based).
 *
 * Validator. Its base seed is bits 48..95 of the round seed: the assigned batches of every
 * trainer come from a sampler with seed base+1 on the trainer's first shard, the random ones
 * from seed base+2 on shard base mod numShards.
 */
import { BatchSampler, type Batch, type TokenArray } from '../data/batches.js';
import { sha256Hex } from '../util/hash.js';
import { InvalidInputError } from '../util/errors.js';
import { roundSeed } from './assign.js';

/** Which batch an inner step draws: the `draw`-th (0-based) batch of sampler (shard, seed). */
export interface BatchSpec {
  shard: number;
  /** Sampler seed, decimal (a bigint). */
  seed: string;
  draw: number;
}

/** A usable assigned shard and the seed of its sampler. */
export interface RoundSource {
  shard: number;
  tokens: TokenArray;
  seed: bigint;
}

/** The trainer's base sampler seed of a round (source j gets base + j). */
export function trainerSeed(runId: string, round: number): bigint {
  return BigInt('0x' + roundSeed(runId, round).slice(0, 12));
}

/** A trainer's batches of one round (see the header). */
export class RoundBatches {
  /** The usable shards, in assignment order, with their seeds; empty when none is usable. */
  readonly sources: readonly RoundSource[];
  private samplers: BatchSampler[] | null = null;
  private drawn = 0;

  /** Use roundBatches(). */
  constructor(
    sources: readonly RoundSource[],
    readonly B: number,
    readonly T: number,
  ) {
    this.sources = sources;
  }

  /** Which batch inner step i (0-based) draws; null when no shard is usable. */
  spec(i: number): BatchSpec | null {
    const n = this.sources.length;
    if (n === 0) return null;
    if (!Number.isSafeInteger(i) || i < 0) throw new InvalidInputError(`inner step index must be >= 0, got ${i}`);
    const u = this.sources[i % n];
    return { shard: u.shard, seed: u.seed.toString(), draw: Math.floor(i / n) };
  }

  /** The batch a spec names, from a fresh sampler (random access); null if no source matches. */
  batch(spec: BatchSpec): Batch | null {
    const u = this.sources.find((x) => x.shard === spec.shard && x.seed.toString() === spec.seed);
    if (!u) return null;
    const { B, T } = this;
    const s = new BatchSampler(u.tokens, B, T, u.seed);
    const b: Batch = { inputs: new Int32Array(B * T), targets: new Int32Array(B * T) };
    for (let d = 0; d <= spec.draw; d++) s.next(b);
    return b;
  }

  /**
   * The trainer's sequential draw: fills `out` with the next inner step's batch (steps 0, 1, 2,
   * ... in order, one sampler per source). Returns false, leaving `out` alone, when no shard
   * is usable.
   */
  next(out: Batch): boolean {
    const n = this.sources.length;
    if (n === 0) return false;
    this.samplers ??= this.sources.map((u) => new BatchSampler(u.tokens, this.B, this.T, u.seed));
    this.samplers[this.drawn % n].next(out);
    this.drawn++;
    return true;
  }
}

/**
 * A trainer's batches of round `round`: `shards` are its assigned shards in assignment order,
 * with their tokens (null or undefined when unavailable: skipped, as a too-short shard is).
 */
export function roundBatches(
  runId: string,
  round: number,
  shards: readonly { shard: number; tokens: TokenArray | null | undefined }[],
  B: number,
  T: number,
): RoundBatches {
  const base = trainerSeed(runId, round);
  const sources = shards.flatMap((s, j) =>
    s.tokens && s.tokens.length >= T + 2 ? [{ shard: s.shard, tokens: s.tokens, seed: base + BigInt(j) }] : [],
  );
  return new RoundBatches(sources, B, T);
}

/**
 * The validator's sampler seeds of a round and the shard its random batches come from.
 *
 * They are drawn from the round's beacon: the value hash of the decided update set, which exists
 * only once the set has closed. A trainer therefore cannot know, when it trains and submits,
 * which of its shard's sequences (nor which random shard) it will be evaluated on, and cannot
 * overfit them; every validator still draws the same batches, since the decided set is agreed.
 * (Before: the seeds came from the run id and round alone, public from the start.)
 */
export interface ValidatorSeeds {
  /** Seed of the sampler on a trainer's first assigned shard (its "assigned" batches). */
  assigned: bigint;
  /** Seed of the sampler on `randomShard` (the "random" batches). */
  random: bigint;
  randomShard: number;
  /** Hex seed of the round's audit spot checks (verify/audit.ts spotCheck), from the same beacon. */
  audit: string;
}

const HEX64 = /^[0-9a-f]{64}$/;

/** The hex seed a round's evaluation draws from: (run, round, decided value hash). */
export function evaluationSeed(runId: string, round: number, beacon: string): string {
  if (!HEX64.test(beacon))
    throw new InvalidInputError(`the evaluation beacon must be a sha256 hex digest, got ${beacon.slice(0, 80)}`);
  return sha256Hex(`tessera/eval-seed/v1\n${runId}\n${round}\n${beacon}`);
}

export function validatorSeeds(runId: string, round: number, numShards: number, beacon: string): ValidatorSeeds {
  if (!Number.isSafeInteger(numShards) || numShards < 1) {
    throw new InvalidInputError(`numShards must be a positive integer, got ${numShards}`);
  }
  const seed = evaluationSeed(runId, round, beacon);
  const v = BigInt('0x' + seed.slice(0, 12));
  return { assigned: v + 1n, random: v + 2n, randomShard: Number(v % BigInt(numShards)), audit: seed };
}

/** The first k batches of a sampler with `seed` on `tokens`; [] when the shard is missing or too short. */
export function firstBatches(
  tokens: TokenArray | null | undefined,
  seed: bigint,
  B: number,
  T: number,
  k: number,
): Batch[] {
  if (!tokens || tokens.length < T + 2) return [];
  const s = new BatchSampler(tokens, B, T, seed);
  return Array.from({ length: k }, () => s.next());
}
