/**
 * The run's agreed state as this peer holds it: θ (one flat Float32Array), its hash, the outer
 * optimizer's momentum, and θ before the last apply (the base of the next round's job under
 * overlap). Only the node's apply and a verified sync change it; training jobs copy from it.
 */
import { weightsHash } from '../model/checkpoint.js';
import type { OuterNesterov } from '../swarm/outer.js';

export class Weights {
  /** θ: the weights after the last applied round. */
  readonly theta: Float32Array;
  hash: string;
  /** θ before the last apply, and its hash (kept only with overlap). */
  prev: { hash: string; weights: Float32Array } | null = null;

  constructor(
    theta: Float32Array,
    readonly outer: OuterNesterov,
  ) {
    this.theta = theta;
    this.hash = weightsHash(theta);
  }

  get length(): number {
    return this.theta.length;
  }

  /** Installs a state verified against its hash (a sync or the peer's own snapshot). */
  install(theta: Float32Array, momentum: Float32Array, hash: string): void {
    this.theta.set(theta);
    this.hash = hash;
    this.prev = null;
    this.outer.momentum.set(momentum);
  }

  /** The weights of base `hash`: θ, or θ before the last apply; null if neither. */
  base(hash: string): Float32Array | null {
    if (hash === this.hash) return this.theta;
    if (hash === this.prev?.hash) return this.prev.weights;
    return null;
  }
}
