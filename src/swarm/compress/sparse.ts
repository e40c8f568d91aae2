/**
 * SparseLoCo-style codec: chunked top-k, 2-bit values, bit-packed indices. With an
 * ErrorFeedback state (see codec.ts) the untransmitted mass is carried to later rounds,
 * which is what makes 1-2% density workable (Sarfi et al. 2025, arXiv:2508.15706).
 *
 * Selection: the vector is cut into chunks of C = 2^b elements (the last may be shorter,
 * length L). Each chunk keeps its kc = min(k, L) largest |x|; ties go to the lower index.
 * Values, 2 bits each: bit 1 = sign (1 = negative), bit 0 = magnitude level (0 -> a, 1 -> h).
 * Per chunk, the kept magnitudes are split in two groups by the threshold minimising squared
 * error (exact 1-D 2-means over the sorted magnitudes, split only between distinct values,
 * smallest such split on ties); a = mean of the low group, h = mean of the high group
 * (h = a when the high group is empty), both rounded to float32. So 0 <= a <= h.
 *
 * Wire (little-endian):
 *   12-byte common header | u32 C | u32 k                              20 bytes
 *   scales: per chunk, float32 a, float32 h                             8 * nChunks
 *   indices: K within-chunk indices, b bits each, LSB-first bit stream,
 *            ascending within each chunk, zero-padded to a byte          ceil(K*b / 8)
 *   codes: K 2-bit codes in the same order, same packing                ceil(K / 4)
 * where nChunks = ceil(n / C), K = sum over chunks of min(k, L_chunk).
 * Defaults C = 4096 (b = 12), k = 64 (density 1/64): per full chunk 8 + 96 + 16 = 120 bytes,
 * 0.0293 bytes/element, 136.5x smaller than fp32.
 * The decoder checks C is a power of two in [2, 65536], 1 <= k <= C, exact length, finite
 * 0 <= a <= h, every index < L and strictly increasing within its chunk, zero padding. A codec's
 * decode() also requires C and k to be its own (the run's manifest), before allocating; only
 * decodeAny (index.ts) takes them from the header.
 */
import { InvalidInputError } from '../../util/errors.js';
import { encodeWith, type Codec, type ErrorFeedback } from './codec.js';
import { DecodeError } from './errors.js';
import { BitReader, BitWriter, HEADER_BYTES, checkLength, checkN, readHeader, writeHeader } from './wire.js';

export interface SparseParams {
  /** Chunk length, a power of two in [2, 65536]. */
  chunk: number;
  /** Entries kept per chunk, in [1, chunk]. */
  k: number;
}

export const DEFAULT_SPARSE: Readonly<SparseParams> = Object.freeze({ chunk: 4096, k: 64 });
export const SPARSE_HEADER_BYTES = HEADER_BYTES + 8;
const MAX_CHUNK = 65536;

function log2Chunk(chunk: number): number {
  return 31 - Math.clz32(chunk);
}

function paramsError(p: SparseParams): string | null {
  const { chunk, k } = p;
  if (!Number.isInteger(chunk) || chunk < 2 || chunk > MAX_CHUNK || (chunk & (chunk - 1)) !== 0) {
    return `chunk must be a power of two in [2, ${MAX_CHUNK}], got ${chunk}`;
  }
  if (!Number.isInteger(k) || k < 1 || k > chunk) return `k must be an integer in [1, chunk=${chunk}], got ${k}`;
  return null;
}

export function resolveSparseParams(p: Partial<SparseParams> = {}): SparseParams {
  const chunk = p.chunk ?? DEFAULT_SPARSE.chunk;
  const out = { chunk, k: p.k ?? Math.max(1, Math.round(chunk / 64)) };
  const err = paramsError(out);
  if (err) throw new InvalidInputError(`sparse codec: ${err}`);
  return out;
}

/** Number of kept entries over the whole vector. */
export function sparseKept(n: number, p: SparseParams): number {
  if (n === 0) return 0;
  const chunks = Math.ceil(n / p.chunk);
  const last = n - (chunks - 1) * p.chunk;
  return (chunks - 1) * Math.min(p.k, p.chunk) + Math.min(p.k, last);
}

export function sparseSize(n: number, p: SparseParams): number {
  checkN(n);
  const K = sparseKept(n, p);
  return SPARSE_HEADER_BYTES + 8 * Math.ceil(n / p.chunk) + Math.ceil((K * log2Chunk(p.chunk)) / 8) + Math.ceil(K / 4);
}

/**
 * Writes into sel[0..kc) the local indices of the kc largest |x[start+i]|, i < len, ties to
 * the lower index, in ascending index order. Min-heap of the current best kc, root = worst.
 */
function topK(x: Float32Array, start: number, len: number, kc: number, sel: Int32Array): void {
  if (kc === len) {
    for (let i = 0; i < len; i++) sel[i] = i;
    return;
  }
  const worse = (i: number, j: number): boolean => {
    const ai = Math.abs(x[start + i]),
      aj = Math.abs(x[start + j]);
    return ai < aj || (ai === aj && i > j);
  };
  const sift = (pos: number): void => {
    for (;;) {
      const l = 2 * pos + 1,
        r = l + 1;
      let m = pos;
      if (l < kc && worse(sel[l], sel[m])) m = l;
      if (r < kc && worse(sel[r], sel[m])) m = r;
      if (m === pos) return;
      const t = sel[pos];
      sel[pos] = sel[m];
      sel[m] = t;
      pos = m;
    }
  };
  for (let i = 0; i < kc; i++) sel[i] = i;
  for (let i = (kc >> 1) - 1; i >= 0; i--) sift(i);
  let floor = Math.abs(x[start + sel[0]]);
  for (let i = kc; i < len; i++) {
    // A later index never wins a tie, so strictly greater is the whole test.
    if (Math.abs(x[start + i]) > floor) {
      sel[0] = i;
      sift(0);
      floor = Math.abs(x[start + sel[0]]);
    }
  }
  sel.subarray(0, kc).sort();
}

/** Best 2-level split of ascending magnitudes m[0..kc): returns [a, h, threshold]. */
function twoLevels(m: Float64Array, kc: number): [number, number, number] {
  let total = 0;
  for (let j = 0; j < kc; j++) total += m[j];
  let best = -1,
    bestS = kc,
    prefix = 0,
    bestPrefix = total;
  for (let s = 1; s <= kc; s++) {
    prefix += m[s - 1];
    if (s < kc && m[s - 1] === m[s]) continue; // never split equal magnitudes
    const hi = total - prefix;
    const score = (prefix * prefix) / s + (s < kc ? (hi * hi) / (kc - s) : 0);
    if (score > best) {
      best = score;
      bestS = s;
      bestPrefix = prefix;
    }
  }
  const a = Math.fround(bestPrefix / bestS);
  const h = bestS < kc ? Math.fround((total - bestPrefix) / (kc - bestS)) : a;
  return [a, h, m[bestS - 1]];
}

function packSparse(x: Float32Array, p: SparseParams): Uint8Array {
  const n = x.length,
    C = p.chunk,
    bits = log2Chunk(C);
  const chunks = Math.ceil(n / C);
  const K = sparseKept(n, p);
  const out = new Uint8Array(sparseSize(n, p));
  const dv = writeHeader(out, 'sparse', n);
  dv.setUint32(HEADER_BYTES, C, true);
  dv.setUint32(HEADER_BYTES + 4, p.k, true);
  const idxOff = SPARSE_HEADER_BYTES + 8 * chunks;
  const codeOff = idxOff + Math.ceil((K * bits) / 8);
  const iw = new BitWriter(out, idxOff),
    cw = new BitWriter(out, codeOff);
  const sel = new Int32Array(Math.min(p.k, C));
  const mags = new Float64Array(sel.length);
  for (let c = 0; c < chunks; c++) {
    const start = c * C,
      len = Math.min(C, n - start),
      kc = Math.min(p.k, len);
    topK(x, start, len, kc, sel);
    for (let j = 0; j < kc; j++) mags[j] = Math.abs(x[start + sel[j]]);
    mags.subarray(0, kc).sort();
    const [a, h, t] = twoLevels(mags, kc);
    dv.setFloat32(SPARSE_HEADER_BYTES + 8 * c, a, true);
    dv.setFloat32(SPARSE_HEADER_BYTES + 8 * c + 4, h, true);
    for (let j = 0; j < kc; j++) {
      const v = x[start + sel[j]];
      iw.write(sel[j], bits);
      cw.write((v < 0 ? 2 : 0) | (Math.abs(v) > t ? 1 : 0), 2);
    }
  }
  iw.finish();
  cw.finish();
  return out;
}

function decodeSparse(bytes: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  walkSparse(bytes, n, (i, v) => (out[i] = v));
  return out;
}

/**
 * The kept entries of a sparse message, in ascending index order, with every check decode()
 * makes: what decode() returns is zero elsewhere. A real-sized update is then K indices and
 * values (at GPT-2 small and 64 of 1024: 62 MB) rather than n floats (0.5 GB).
 */
function sparseEntries(bytes: Uint8Array, n: number): { idx: Uint32Array; val: Float32Array } {
  const K = sparseKept(n, readSparseParams(bytes));
  const idx = new Uint32Array(K),
    val = new Float32Array(K);
  let j = 0;
  walkSparse(bytes, n, (i, v) => {
    idx[j] = i;
    val[j++] = v;
  });
  return { idx, val };
}

/** Checks a sparse message for n values and hands each kept (index, value) to `emit`, in ascending index order. */
function walkSparse(bytes: Uint8Array, n: number, emit: (i: number, v: number) => void): void {
  const dv = readHeader(bytes, 'sparse', n);
  const p = readSparseParams(bytes);
  checkLength(bytes, sparseSize(n, p), 'sparse');
  const C = p.chunk,
    bits = log2Chunk(C);
  const chunks = Math.ceil(n / C);
  const K = sparseKept(n, p);
  const idxOff = SPARSE_HEADER_BYTES + 8 * chunks;
  const idxLen = Math.ceil((K * bits) / 8);
  const ir = new BitReader(bytes, idxOff, idxLen);
  const cr = new BitReader(bytes, idxOff + idxLen, Math.ceil(K / 4));
  for (let c = 0; c < chunks; c++) {
    const a = dv.getFloat32(SPARSE_HEADER_BYTES + 8 * c, true);
    const h = dv.getFloat32(SPARSE_HEADER_BYTES + 8 * c + 4, true);
    if (!(Number.isFinite(a) && Number.isFinite(h) && a >= 0 && a <= h)) {
      throw new DecodeError(`sparse: chunk ${c} scales (${a}, ${h}) are not finite with 0 <= a <= h`);
    }
    const start = c * C,
      len = Math.min(C, n - start),
      kc = Math.min(p.k, len);
    let prev = -1;
    for (let j = 0; j < kc; j++) {
      const i = ir.read(bits);
      if (i >= len || i <= prev) throw new DecodeError(`sparse: chunk ${c} index ${i} out of range or not ascending`);
      prev = i;
      const code = cr.read(2);
      const mag = code & 1 ? h : a;
      emit(start + i, code & 2 ? -mag : mag);
    }
  }
  ir.checkPadding('sparse indices');
  cr.checkPadding('sparse codes');
}

export interface SparseCodec extends Codec {
  readonly id: 'sparse';
  readonly params: Readonly<SparseParams>;
  /** decode()'s checks, and its non-zero entries only (ascending index): no n-float array. */
  entries(bytes: Uint8Array, n: number): { idx: Uint32Array; val: Float32Array };
}

export function sparseCodec(params: Partial<SparseParams> = {}): SparseCodec {
  const p = Object.freeze(resolveSparseParams(params));
  const pack = (x: Float32Array) => packSparse(x, p);
  const own = (bytes: Uint8Array, n: number): void => {
    readHeader(bytes, 'sparse', n);
    const q = readSparseParams(bytes);
    if (q.chunk !== p.chunk || q.k !== p.k)
      throw new DecodeError(
        `sparse: payload says chunk ${q.chunk} k ${q.k}, this run's codec is chunk ${p.chunk} k ${p.k}`,
      );
  };
  return Object.freeze({
    id: 'sparse' as const,
    params: p,
    encode: (delta: Float32Array, state?: ErrorFeedback, scratch?: boolean) =>
      encodeWith('sparse', pack, decodeSparse, delta, state, scratch),
    // The chunk and k are the run's (this codec's), never the sender's: a payload that claims
    // others is refused before anything is allocated, so its decoded size is exactly n floats.
    decode: (bytes: Uint8Array, n: number) => {
      own(bytes, n);
      return decodeSparse(bytes, n);
    },
    entries: (bytes: Uint8Array, n: number) => {
      own(bytes, n);
      return sparseEntries(bytes, n);
    },
    encodedSize: (n: number) => sparseSize(n, p),
  });
}

/** Chunk and k claimed by a sparse message whose common header is already known good. */
export function readSparseParams(bytes: Uint8Array): SparseParams {
  if (bytes.length < SPARSE_HEADER_BYTES) {
    throw new DecodeError(`sparse: ${bytes.length} bytes is shorter than the ${SPARSE_HEADER_BYTES}-byte header`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const p = { chunk: dv.getUint32(HEADER_BYTES, true), k: dv.getUint32(HEADER_BYTES + 4, true) };
  const err = paramsError(p);
  if (err) throw new DecodeError(`sparse: ${err}`);
  return p;
}
