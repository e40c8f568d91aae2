/**
 * Wire form of a fraud proof: JSON with the states' float32 arrays as base64 (little endian).
 * v 1 (exact rule) carries the pre-state; v 2 (tolerance rule, a GPU-class trainer) also the
 * committed post-state, the tolerance and the claimed backend class. Decoding is size-capped
 * before parsing, zod-checked, and never evaluates anything, because proofs come from untrusted
 * peers.
 */
import { z } from 'zod';
import { InvalidInputError } from '../util/errors.js';
import type { AnyFraudProof, StepState } from './audit.js';
import { BackendClassSchema } from './backend.js';
import { ToleranceSchema } from './tolerance.js';

/** Default cap: a v 1 proof of a ~20M-parameter model (one state: 3 × 4 B × P, base64), a v 2 of ~10M (two). */
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

const StateWire = z.object({ theta: B64, m: B64, v: B64, step: z.number().int().min(0) }).strict();

const ExactProofWire = z
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
    state: StateWire,
  })
  .strict();

const ToleranceProofWire = ExactProofWire.extend({
  v: z.literal(2),
  postState: StateWire,
  tolerance: ToleranceSchema,
  backend: BackendClassSchema,
}).strict();

export const FraudProofWire = z.discriminatedUnion('v', [ExactProofWire, ToleranceProofWire]);

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

const stateToWire = (s: StepState) => ({ theta: toB64(s.theta), m: toB64(s.m), v: toB64(s.v), step: s.step });

function stateFromWire(w: z.infer<typeof StateWire>, what: string): StepState {
  const s = {
    theta: fromB64(w.theta, `${what} theta`),
    m: fromB64(w.m, `${what} m`),
    v: fromB64(w.v, `${what} v`),
    step: w.step,
  };
  if (s.m.length !== s.theta.length || s.v.length !== s.theta.length)
    throw new InvalidInputError(`fraud proof ${what} arrays differ in length`);
  return s;
}

export function encodeFraudProof(p: AnyFraudProof): Uint8Array {
  const wire =
    p.v === 1
      ? { ...p, state: stateToWire(p.state) }
      : { ...p, state: stateToWire(p.state), postState: stateToWire(p.postState) };
  return new TextEncoder().encode(JSON.stringify(wire));
}

/** Parses a proof from untrusted bytes; throws InvalidInputError if oversized or malformed. */
export function decodeFraudProof(bytes: Uint8Array, maxBytes = MAX_PROOF_BYTES): AnyFraudProof {
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
  const state = stateFromWire(w.state, 'state');
  if (w.v === 1) return { ...w, state };
  const postState = stateFromWire(w.postState, 'post-state');
  if (postState.theta.length !== state.theta.length) throw new InvalidInputError('fraud proof states differ in length');
  return { ...w, state, postState };
}
