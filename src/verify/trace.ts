/**
 * A trainer's committed trace for one round, as the bulk object a validator fetches to audit it:
 * the state before step 1 (θ, AdamW m and v, step count) and the digests (weights hash, optimizer
 * hash) of the state after every step, whose leaves rebuild the Merkle root the trainer signed.
 *
 *   bytes = u32 header length | JSON header {v, step, digests} | θ f32 | m f32 | v f32   (little endian)
 *
 * Decoding is size-capped and schema-checked (traces come from untrusted peers), and checks the
 * pre-state against digest 0, so a decoded trace is internally consistent; whether its root is
 * the one the trainer signed is the caller's check (`root`).
 */
import { z } from 'zod';
import { InvalidInputError } from '../util/errors.js';
import { digestState, leafOf, type StateDigest, type StepState } from './audit.js';
import { MerkleTree } from './merkle.js';

export interface Trace { digests: StateDigest[]; start: StepState }

const Hex = z.string().regex(/^[0-9a-f]{64}$/);
const Header = z.object({
  v: z.literal(1),
  step: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  digests: z.array(z.object({ weights: Hex, opt: Hex }).strict()).min(2).max(4097),
}).strict();

export const maxTraceBytes = (params: number): number => 4 + 160 * 4097 + 64 + 12 * params;

export function encodeTrace(t: Trace): Uint8Array {
  const P = t.start.theta.length;
  const head = new TextEncoder().encode(JSON.stringify({ v: 1, step: t.start.step, digests: t.digests }));
  const out = new Uint8Array(4 + head.length + 12 * P);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, head.length, true);
  out.set(head, 4);
  let o = 4 + head.length;
  for (const a of [t.start.theta, t.start.m, t.start.v]) {
    for (let i = 0; i < P; i++) dv.setFloat32(o + 4 * i, a[i], true);
    o += 4 * P;
  }
  return out;
}

export function decodeTrace(bytes: Uint8Array, params: number): Trace {
  if (bytes.length < 4 || bytes.length > maxTraceBytes(params)) throw new InvalidInputError(`trace of ${bytes.length} bytes is outside 4..${maxTraceBytes(params)}`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const hl = dv.getUint32(0, true);
  if (bytes.length !== 4 + hl + 12 * params) throw new InvalidInputError(`trace has ${bytes.length} bytes, expected ${4 + hl + 12 * params} for ${params} parameters`);
  let head: z.infer<typeof Header>;
  try {
    head = Header.parse(JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + hl))));
  } catch (err) {
    throw new InvalidInputError(`trace header: ${(err as Error).message.slice(0, 200)}`);
  }
  const arr = (k: number) => {
    const a = new Float32Array(params);
    const o = 4 + hl + 4 * params * k;
    for (let i = 0; i < params; i++) a[i] = dv.getFloat32(o + 4 * i, true);
    return a;
  };
  const start: StepState = { theta: arr(0), m: arr(1), v: arr(2), step: head.step };
  const d0 = digestState(start);
  if (d0.weights !== head.digests[0].weights || d0.opt !== head.digests[0].opt) throw new InvalidInputError('trace: the pre-state does not hash to digest 0');
  return { digests: head.digests, start };
}

/** The Merkle root over a trace's leaves (what the trainer signs in its commitment). */
export function traceRoot(digests: StateDigest[]): string {
  return new MerkleTree(digests.map(leafOf)).root;
}
