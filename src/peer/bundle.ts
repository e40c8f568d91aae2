/**
 * A round-start snapshot as one bulk object: u32 header length | JSON header (the reducer's
 * RoundSnapshot) | weights f32 | momentum f32. Served to joiners by sha256 and written to
 * DATA_DIR so a stopped peer can resume. Decoding checks the exact length before allocating.
 * writeBundleFile writes the same bytes piece by piece from θ and the momentum (no 8P-byte
 * buffer: 1 GB at GPT-2 small) and keeps each round's file for serving; readBundleState reads
 * one back into fresh arrays.
 */
import { closeSync, fsyncSync, linkSync, openSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
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

/** Bytes per write of writeBundleFile (views of θ and the momentum, no copies). */
const WRITE_CHUNK = 64 << 20;

function writeAllSync(fd: number, bytes: Uint8Array, hash: ReturnType<typeof createHash>): void {
  for (let o = 0; o < bytes.length;) {
    const part = bytes.subarray(o, Math.min(bytes.length, o + WRITE_CHUNK));
    hash.update(part);
    for (let w = 0; w < part.length;) w += writeSync(fd, part, w, part.length - w);
    o += part.length;
  }
}

/**
 * Writes encodeBundle(snap, theta, momentum)'s bytes to `${path}.r${round}` (kept for serving
 * the round's bundle) and makes `path` (the resume file) the same file, atomically. Returns the
 * bundle's sha256 and the round file's path. Synchronous: θ may change right after.
 */
export function writeBundleFile(
  path: string,
  snap: RoundSnapshot,
  theta: Float32Array,
  momentum: Float32Array,
): { hash: string; file: string; bytes: number } {
  const head = new TextEncoder().encode(JSON.stringify(snap));
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, head.length, true);
  const file = `${path}.r${snap.round}`;
  const tmp = `${file}.tmp`;
  const hash = createHash('sha256');
  const fd = openSync(tmp, 'w');
  try {
    writeAllSync(fd, len, hash);
    writeAllSync(fd, head, hash);
    writeAllSync(fd, new Uint8Array(theta.buffer, theta.byteOffset, theta.byteLength), hash);
    writeAllSync(fd, new Uint8Array(momentum.buffer, momentum.byteOffset, momentum.byteLength), hash);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  // The resume file: a second name for the round file, swapped in atomically.
  rmSync(`${path}.tmp`, { force: true });
  linkSync(file, `${path}.tmp`);
  renameSync(`${path}.tmp`, path);
  return { hash: hash.digest('hex'), file, bytes: 4 + head.length + theta.byteLength + momentum.byteLength };
}

/** θ and the momentum of a bundle file written by writeBundleFile for P parameters (read straight into fresh arrays). */
export function readBundleState(file: string, P: number): { theta: Float32Array; momentum: Float32Array } {
  const fd = openSync(file, 'r');
  try {
    const len = new Uint8Array(4);
    if (readSync(fd, len, 0, 4, 0) !== 4) throw new InvalidInputError(`${file}: snapshot bundle too short`);
    const hl = new DataView(len.buffer).getUint32(0, true);
    const read = (pos: number): Float32Array => {
      const a = new Float32Array(P);
      const b = new Uint8Array(a.buffer);
      for (let o = 0; o < b.length;) {
        const n = readSync(fd, b, o, Math.min(WRITE_CHUNK, b.length - o), pos + o);
        if (n <= 0) throw new InvalidInputError(`${file}: snapshot bundle too short`);
        o += n;
      }
      return a;
    };
    return { theta: read(4 + hl), momentum: read(4 + hl + 4 * P) };
  } finally {
    closeSync(fd);
  }
}
