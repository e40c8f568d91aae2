/**
 * A round-start snapshot as one bulk object: u32 header length | JSON header (the reducer's
 * RoundSnapshot) | weights f32 | momentum f32. Served to joiners by sha256 and written to
 * DATA_DIR so a stopped peer can resume. Decoding checks the exact length before allocating.
 */
import { InvalidInputError } from '../util/errors.js';
import { SnapshotSchema, type RoundSnapshot } from '../swarm/round.js';

export interface Bundle {
  snap: RoundSnapshot;
  theta: Float32Array;
  momentum: Float32Array;
}

export function encodeBundle(snap: RoundSnapshot, theta: Float32Array, momentum: Float32Array): Uint8Array {
  const head = new TextEncoder().encode(JSON.stringify(snap));
  const out = new Uint8Array(4 + head.length + theta.byteLength + momentum.byteLength);
  new DataView(out.buffer).setUint32(0, head.length, true);
  out.set(head, 4);
  out.set(new Uint8Array(theta.buffer, theta.byteOffset, theta.byteLength), 4 + head.length);
  out.set(
    new Uint8Array(momentum.buffer, momentum.byteOffset, momentum.byteLength),
    4 + head.length + theta.byteLength,
  );
  return out;
}

export function decodeBundle(bytes: Uint8Array, P: number): Bundle {
  if (bytes.length < 4) throw new InvalidInputError('snapshot bundle too short');
  const hl = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true);
  if (bytes.length !== 4 + hl + 8 * P) {
    throw new InvalidInputError(`snapshot bundle has ${bytes.length} bytes, expected ${4 + hl + 8 * P}`);
  }
  const snap = SnapshotSchema.parse(JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + hl))));
  const body = new Uint8Array(bytes.subarray(4 + hl)); // aligned copy (a Buffer's slice() would be a view)
  return {
    snap,
    theta: new Float32Array(body.buffer, 0, P).slice(),
    momentum: new Float32Array(body.buffer, 4 * P, P).slice(),
  };
}

/** The largest bundle a peer will download for P parameters. */
export const maxBundleBytes = (P: number): number => 8 * P + 65536;
