/**
 * A SHA-256 binary Merkle tree over 32-byte leaves, with inclusion proofs.
 *
 * Why this shape: a trainer commits to H+1 per-step state hashes with ONE 32-byte root, and
 * later reveals single leaves (bisection answers, fraud proofs) with log2(H) siblings each.
 *
 * - Domain separation: a leaf node is sha256(0x00 ‖ leaf), an inner node sha256(0x01 ‖ L ‖ R),
 *   so no inner node can be passed off as a leaf (second-preimage attacks).
 * - An odd node at the end of a level is promoted unchanged (never duplicated), so two
 *   different leaf lists cannot share a root (the CVE-2012-2459 ambiguity of duplication).
 * - The root binds the leaf count: root = sha256(0x02 ‖ u32be(count) ‖ top), so a proof for
 *   index i of an n-leaf tree cannot be replayed against a tree of another size.
 * Pure: no I/O. Bad input throws MerkleError (a TesseraError).
 */
import { createHash } from 'node:crypto';
import { TesseraError } from '../util/errors.js';

/** Most leaves one tree may have (a round has H+1 of them; H is at most a few thousand). */
export const MAX_LEAVES = 1 << 20;
export const HEX32 = /^[0-9a-f]{64}$/;

/** Malformed tree input or proof (not "proof does not verify": that is a `false`). */
export class MerkleError extends TesseraError {
  constructor(message: string) {
    super('MERKLE_INVALID', message);
  }
}

export interface MerkleProof {
  /** 0-based leaf index. */
  index: number;
  /** Number of leaves in the tree. */
  count: number;
  /** Sibling hashes (hex), bottom-up; promoted levels contribute none. */
  siblings: string[];
}

function sha(...parts: Uint8Array[]): Buffer {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}

const LEAF = Uint8Array.of(0),
  NODE = Uint8Array.of(1),
  ROOT = Uint8Array.of(2);

function bytes32(hex: string, what: string): Buffer {
  if (typeof hex !== 'string' || !HEX32.test(hex)) throw new MerkleError(`${what} must be 64 lowercase hex digits`);
  return Buffer.from(hex, 'hex');
}

function checkCount(count: number): void {
  if (!Number.isSafeInteger(count) || count < 1 || count > MAX_LEAVES) {
    throw new MerkleError(`leaf count must be an integer in [1, ${MAX_LEAVES}], got ${count}`);
  }
}

function finish(count: number, top: Uint8Array): string {
  const n = Buffer.alloc(4);
  n.writeUInt32BE(count);
  return sha(ROOT, n, top).toString('hex');
}

/** All levels, leaf-node level first. */
function levels(leaves: string[]): Buffer[][] {
  checkCount(leaves.length);
  const out: Buffer[][] = [leaves.map((l, i) => sha(LEAF, bytes32(l, `leaf ${i}`)))];
  while (out[out.length - 1].length > 1) {
    const cur = out[out.length - 1],
      next: Buffer[] = [];
    for (let i = 0; i < cur.length; i += 2) next.push(i + 1 < cur.length ? sha(NODE, cur[i], cur[i + 1]) : cur[i]);
    out.push(next);
  }
  return out;
}

/** The root (hex) of `leaves` (hex 32-byte strings). */
export function merkleRoot(leaves: string[]): string {
  const ls = levels(leaves);
  return finish(leaves.length, ls[ls.length - 1][0]);
}

/** A built tree: the root plus proofs for any leaf without recomputing. */
export class MerkleTree {
  readonly root: string;
  private readonly ls: Buffer[][];
  constructor(readonly leaves: readonly string[]) {
    this.ls = levels([...leaves]);
    this.root = finish(leaves.length, this.ls[this.ls.length - 1][0]);
  }

  proof(index: number): MerkleProof {
    const count = this.leaves.length;
    if (!Number.isSafeInteger(index) || index < 0 || index >= count)
      throw new MerkleError(`leaf index ${index} out of range [0, ${count})`);
    const siblings: string[] = [];
    let i = index;
    for (let d = 0; d < this.ls.length - 1; d++) {
      const lvl = this.ls[d],
        sib = i ^ 1;
      if (sib < lvl.length) siblings.push(lvl[sib].toString('hex'));
      i >>= 1;
    }
    return { index, count, siblings };
  }
}

/**
 * True iff `leaf` sits at `proof.index` of a `proof.count`-leaf tree with root `root`.
 * Throws MerkleError only for malformed arguments (bad hex, bad count or index).
 */
export function verifyInclusion(root: string, leaf: string, proof: MerkleProof): boolean {
  checkCount(proof.count);
  const { index, count, siblings } = proof;
  if (!Number.isSafeInteger(index) || index < 0 || index >= count)
    throw new MerkleError(`leaf index ${index} out of range [0, ${count})`);
  if (!Array.isArray(siblings) || siblings.length > 32) throw new MerkleError('too many siblings');
  bytes32(root, 'root');
  let h: Buffer = sha(LEAF, bytes32(leaf, 'leaf'));
  let i = index,
    width = count,
    used = 0;
  while (width > 1) {
    const sib = i ^ 1;
    if (sib < width) {
      if (used >= siblings.length) return false;
      const s = bytes32(siblings[used++], 'sibling');
      h = (i & 1) === 0 ? sha(NODE, h, s) : sha(NODE, s, h);
    }
    i >>= 1;
    width = Math.ceil(width / 2);
  }
  if (used !== siblings.length) return false;
  return finish(count, h) === root;
}
