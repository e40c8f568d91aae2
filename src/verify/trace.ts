/**
 * A trainer's committed trace for one round, as the bulk object a validator fetches to audit it:
 * the state before step 1 (θ, AdamW m and v, step count) and the digests (weights hash, optimizer
 * hash) of the state after every step, whose leaves rebuild the Merkle root the trainer signed.
 *
 *   bytes = packF32({v, step, digests}, [θ, m, v])   (src/util/packed.ts)
 *
 * A trainer whose class is judged with a tolerance (a GPU: verify/backend.ts) also lists, in
 * `states`, the bulk-object hashes of its states 1..H (each `encodeState`, kept in its payload
 * store): a validator that re-executes on the CPU judges every step from the trainer's own
 * pre-state, which only the trainer has (its floats are not the CPU's).
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
  /** Bulk-object hashes of states 1..H (encodeState), for tolerance audits; absent on the CPU. */
  states?: string[];
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
    states: z.array(Hex).max(4096).optional(),
  })
  .strict()
  .refine((h) => h.states === undefined || h.states.length === h.digests.length - 1, {
    message: 'states must name states 1..H',
  });

export const maxTraceBytes = (params: number): number => 4 + 230 * 4097 + 64 + 12 * params;

export function encodeTrace(t: Trace): Uint8Array {
  return packF32({ v: 1, step: t.start.step, digests: t.digests, ...(t.states ? { states: t.states } : {}) }, [
    t.start.theta,
    t.start.m,
    t.start.v,
  ]);
}

/** One state (θ, m, v, step) as a bulk object: a tolerance-audited trainer's state i. */
export function encodeState(s: StepState): Uint8Array {
  return packF32({ v: 1, step: s.step }, [s.theta, s.m, s.v]);
}

const StateHeader = z.object({ v: z.literal(1), step: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER) }).strict();
export const maxStateBytes = (params: number): number => 64 + 12 * params;

/** Decodes an encodeState object of `params` parameters from untrusted bytes. */
export function decodeState(bytes: Uint8Array, params: number): StepState {
  if (bytes.length > maxStateBytes(params))
    throw new InvalidInputError(`state of ${bytes.length} bytes is over ${maxStateBytes(params)}`);
  const {
    head,
    arrays: [theta, m, v],
  } = unpackF32(bytes, 3, params, 'state');
  const h = StateHeader.safeParse(head);
  if (!h.success) throw new InvalidInputError(`state header: ${h.error.message.slice(0, 200)}`);
  return { theta, m, v, step: h.data.step };
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
  return { digests: h.data.digests, start, ...(h.data.states ? { states: h.data.states } : {}) };
}

/** The Merkle root over a trace's leaves (what the trainer signs in its commitment). */
export function traceRoot(digests: StateDigest[]): string {
  return new MerkleTree(digests.map(leafOf)).root;
}
