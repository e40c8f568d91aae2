/**
 * The codec contract and the error-feedback state that makes lossy codecs unbiased over time.
 *
 * encode() is the only place with state: with an ErrorFeedback it compresses
 *   x = beta * residual + delta   and then sets   residual = x - decoded,
 * so what was not transmitted this round (dropped by top-k, or lost to quantisation) is sent
 * in a later round. decode() is a pure function of (bytes, n). The `decoded` returned by
 * encode() IS decode(bytes, n), so a sender applies exactly what its receivers reconstruct.
 */
import { InvalidInputError } from '../../util/errors.js';
import { assertFinite, checkN, type CodecId } from './wire.js';

export type { CodecId } from './wire.js';

export interface EncodeResult {
  /** The complete wire message, framing included. */
  bytes: Uint8Array;
  /** Exactly what decode(bytes, n) returns on every receiver. */
  decoded: Float32Array;
}

export interface Codec {
  readonly id: CodecId;
  /**
   * Does not modify `delta`, unless `scratch`: then the caller has no further use for it and
   * β·residual + Δ may be formed in its place (saving a P-float copy; the bytes are the same).
   * Throws InvalidInputError on NaN/Inf input or a state of the wrong length.
   */
  encode(delta: Float32Array, state?: ErrorFeedback, scratch?: boolean): EncodeResult;
  /** Pure. Returns n finite values or throws DecodeError. */
  decode(bytes: Uint8Array, n: number): Float32Array;
  /** Exact byte length of encode(delta) for delta.length === n. */
  encodedSize(n: number): number;
}

/** Per-peer residual for error feedback: e <- beta*e + delta; send C(e); e <- e - decoded. */
export class ErrorFeedback {
  readonly residual: Float32Array;
  readonly beta: number;
  constructor(n: number, beta = 1) {
    checkN(n);
    if (!(beta >= 0 && beta <= 1))
      throw new InvalidInputError(`error-feedback decay beta must be in [0, 1], got ${beta}`);
    this.residual = new Float32Array(n);
    this.beta = beta;
  }
  clone(): ErrorFeedback {
    const c = new ErrorFeedback(this.residual.length, this.beta);
    c.residual.set(this.residual);
    return c;
  }
}

/** The per-peer encoder state; today only error feedback. */
export type CodecState = ErrorFeedback;

/** The shared encode path: fold in the residual, pack, decode back, update the residual. */
export function encodeWith(
  id: CodecId,
  pack: (x: Float32Array) => Uint8Array,
  decode: (bytes: Uint8Array, n: number) => Float32Array,
  delta: Float32Array,
  state?: ErrorFeedback,
  scratch = false,
): EncodeResult {
  if (!(delta instanceof Float32Array)) throw new InvalidInputError(`${id}: delta must be a Float32Array`);
  const n = delta.length;
  checkN(n);
  let x = delta;
  if (state) {
    const r = state.residual,
      beta = state.beta;
    if (r.length !== n)
      throw new InvalidInputError(`${id}: error-feedback state has ${r.length} elements, delta has ${n}`);
    x = scratch ? delta : new Float32Array(n);
    for (let i = 0; i < n; i++) x[i] = beta * r[i] + delta[i];
  }
  assertFinite(x, state ? `${id}: beta*residual + delta` : `${id}: delta`);
  const bytes = pack(x);
  const decoded = decode(bytes, n);
  if (state) {
    const r = state.residual; // updated only after encoding succeeded
    for (let i = 0; i < n; i++) r[i] = x[i] - decoded[i];
  }
  return { bytes, decoded };
}
