/**
 * A trainer's committed trace for one round, as the bulk object a validator fetches to audit it:
 * the state before step 1 (θ, AdamW m and v, step count) and the digests (weights hash, optimizer
 * hash) of the state after every step, whose leaves rebuild the Merkle root the trainer signed.
 *
 *   bytes = packF32({v, step, digests}, [θ, m, v])   (src/util/packed.ts)
 *
 * Decoding is size-capped and schema-checked (traces come from untrusted peers), and checks the
 * pre-state against digest 0, so a decoded trace is internally consistent; whether its root is
 * the one the trainer signed is the caller's check (`root`).
 */
import { z } from 'zod';
import { InvalidInputError } from '../util/errors.js';
import { packF32, unpackF32 } from '../util/packed.js';
import { digestState, leafOf, type StateDigest, type StepState } from './audit.js';
import { MerkleTree } from './merkle.js';

export interface Trace {
  digests: StateDigest[];
  start: StepState;
}

const Hex = z.string().regex(/^[0-9a-f]{64}$/);
const Header = z
  .object({
    v: z.literal(1),
    step: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    digests: z
      .array(z.object({ weights: Hex, opt: Hex }).strict())
      .min(2)
      .max(4097),
  })
  .strict();

export const maxTraceBytes = (params: number): number => 4 + 160 * 4097 + 64 + 12 * params;

export function encodeTrace(t: Trace): Uint8Array {
  return packF32({ v: 1, step: t.start.step, digests: t.digests }, [t.start.theta, t.start.m, t.start.v]);
}

export function decodeTrace(bytes: Uint8Array, params: number): Trace {
  if (bytes.length < 4 || bytes.length > maxTraceBytes(params))
    throw new InvalidInputError(`trace of ${bytes.length} bytes is outside 4..${maxTraceBytes(params)}`);
  const {
    head: raw,
    arrays: [theta, m, v],
  } = unpackF32(bytes, 3, params, 'trace');
  const h = Header.safeParse(raw);
  if (!h.success) throw new InvalidInputError(`trace header: ${h.error.message.slice(0, 200)}`);
  const start: StepState = { theta, m, v, step: h.data.step };
  const d0 = digestState(start);
  if (d0.weights !== h.data.digests[0].weights || d0.opt !== h.data.digests[0].opt)
    throw new InvalidInputError('trace: the pre-state does not hash to digest 0');
  return { digests: h.data.digests, start };
}

/** The Merkle root over a trace's leaves (what the trainer signs in its commitment). */
export function traceRoot(digests: StateDigest[]): string {
  return new MerkleTree(digests.map(leafOf)).root;
}
