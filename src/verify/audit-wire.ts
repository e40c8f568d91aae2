/**
 * Wire form of a FraudProof: JSON with the pre-state's float32 arrays as base64 (little
 * endian). Decoding is size-capped before parsing, zod-checked, and never evaluates
 * anything, because proofs come from untrusted peers.
 */
import { z } from 'zod';
import { InvalidInputError } from '../util/errors.js';
import type { FraudProof } from './audit.js';

/** Default cap: enough for the pre-state of a ~20M-parameter model (3 × 4 B × P, base64). */
export const MAX_PROOF_BYTES = 320 * 1024 * 1024;

const Hex = z.string().regex(/^[0-9a-f]{64}$/);
const B64 = z.string().regex(/^[A-Za-z0-9+/]*={0,2}$/);
const Reveal = z
  .object({
    digest: z.object({ weights: Hex, opt: Hex }).strict(),
    proof: z
      .object({
        index: z.number().int().min(0),
        count: z
          .number()
          .int()
          .min(1)
          .max(1 << 20),
        siblings: z.array(Hex).max(32),
      })
      .strict(),
  })
  .strict();

export const FraudProofWire = z
  .object({
    v: z.literal(1),
    runId: Hex,
    round: z.number().int().min(0),
    trainer: z.string().min(1).max(256),
    root: Hex,
    count: z
      .number()
      .int()
      .min(2)
      .max(1 << 20),
    k: z.number().int().min(1),
    pre: Reveal,
    post: Reveal,
    batch: z
      .object({
        shard: z.number().int().min(0),
        seed: z.string().regex(/^[0-9]{1,40}$/),
        draw: z.number().int().min(0),
      })
      .strict(),
    state: z.object({ theta: B64, m: B64, v: B64, step: z.number().int().min(0) }).strict(),
  })
  .strict();

const LITTLE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function toB64(a: Float32Array): string {
  if (LITTLE) return Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
  const b = Buffer.alloc(a.byteLength);
  for (let i = 0; i < a.length; i++) b.writeFloatLE(a[i], 4 * i);
  return b.toString('base64');
}

function fromB64(s: string, what: string): Float32Array {
  const b = Buffer.from(s, 'base64');
  if (b.length % 4 !== 0) throw new InvalidInputError(`fraud proof ${what}: ${b.length} bytes is not float32 data`);
  if (LITTLE) return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  const out = new Float32Array(b.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = b.readFloatLE(4 * i);
  return out;
}

export function encodeFraudProof(p: FraudProof): Uint8Array {
  const { state, ...rest } = p;
  const wire = {
    ...rest,
    state: { theta: toB64(state.theta), m: toB64(state.m), v: toB64(state.v), step: state.step },
  };
  return new TextEncoder().encode(JSON.stringify(wire));
}

/** Parses a proof from untrusted bytes; throws InvalidInputError if oversized or malformed. */
export function decodeFraudProof(bytes: Uint8Array, maxBytes = MAX_PROOF_BYTES): FraudProof {
  if (bytes.length > maxBytes)
    throw new InvalidInputError(`fraud proof is ${bytes.length} bytes, over the ${maxBytes}-byte cap`);
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (err) {
    throw new InvalidInputError('fraud proof is not JSON', { cause: err });
  }
  const r = FraudProofWire.safeParse(json);
  if (!r.success) throw new InvalidInputError(`fraud proof is malformed: ${r.error.issues[0]?.message ?? 'invalid'}`);
  const w = r.data;
  const state = {
    theta: fromB64(w.state.theta, 'theta'),
    m: fromB64(w.state.m, 'm'),
    v: fromB64(w.state.v, 'v'),
    step: w.state.step,
  };
  if (state.m.length !== state.theta.length || state.v.length !== state.theta.length)
    throw new InvalidInputError('fraud proof state arrays differ in length');
  return { ...w, state };
}
