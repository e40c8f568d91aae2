/**
 * Activation codecs for pipeline-parallel training: how the [B*T, C] activation matrix (and,
 * on the way back, its gradient) crosses a stage boundary between two untrusted peers.
 *
 *   fp32     lossless baseline, 4 bytes/value
 *   fp16     IEEE binary16, round to nearest even; |x| that would round past 65504 is
 *            clamped to +-65504 (saturation, not Inf: one outlier must not poison a stage)
 *   int8     per-row absmax: s = fround(max|x_row| / 127), q = round(x / s) (ties away from
 *            zero, so encode(-x) = -encode(x)), decoded = fround(q * s); |error| <= s/2
 *   lowrank  a fixed orthonormal basis U [C, k], derived from (C, k, seed) on both ends by
 *            subspaceBasis(); sends the k coefficients c = x_row . U, int8-quantised as above,
 *            and decodes c . U^T. The decode is the orthogonal projection of x onto span(U)
 *            (up to int8 error on c).
 *
 * The lowrank codec is only the transport half of Pluralis-style subspace compression. A
 * random fixed subspace captures about k/C of a generic activation's energy (see
 * bench/act-codec.ts); it is lossless-up-to-int8 only when the model keeps its residual
 * stream inside span(U), i.e. every block's output projection is re-projected onto U and the
 * (high-rank) token embedding is re-added on the receiving side. Those model-side changes
 * live in the model, not here. Used for gradients, the same codec is exact in the right
 * sense: the forward map x -> x U U^T is symmetric, so its backward is g -> g U U^T too.
 *
 * Wire format, little-endian. Header, 24 bytes:
 *   off 0   u8[4]  magic "TACT" (Tessera ACTivations)
 *   off 4   u8     version = 1
 *   off 5   u8     codec tag (1 fp32, 2 fp16, 3 int8, 4 lowrank)
 *   off 6   u16    reserved, 0
 *   off 8   u32    rows
 *   off 12  u32    cols
 *   off 16  u32    k (lowrank), else 0
 *   off 20  u32    basis fingerprint (lowrank: FNV-1a of U's float32 bytes), else 0
 * Payload:
 *   fp32     rows*cols float32                        total 24 + 4*rows*cols
 *   fp16     rows*cols binary16                       total 24 + 2*rows*cols
 *   int8     rows float32 scales | rows*cols int8     total 24 + 4*rows + rows*cols
 *   lowrank  rows float32 scales | rows*k int8        total 24 + 4*rows + rows*k
 * The receiver knows rows, cols and its own codec; decode() checks every header field against
 * them, then the exact length, and only then allocates. It rejects a non-finite, negative or
 * overflowing scale, int8 -128 (never produced), fp32 NaN/Inf and fp16 exponent 31, always
 * with ActDecodeError: never a RangeError, never NaN/Inf in the output.
 *
 * Why hand-written rather than a dependency: the whole thing is ~one matrix product and a
 * quantiser, but it has to be exact about bytes (the pipeline schedules on exactBytes), total
 * on hostile input, and bit-reproducible on both ends. The basis in particular must come out
 * with identical bits on every machine, so it is built from the seeded xoshiro Rng with only
 * +, -, *, / and sqrt (correctly rounded in IEEE 754; no Math.log/cos, whose last bit may
 * differ between engines), and every sum runs in float64 in index order. The binary16
 * conversion is shared with the pseudo-gradient codecs (src/swarm/compress/f16.ts, written by
 * hand because Math.f16round is Node >= 24 and overflows to Infinity). Pure: no I/O.
 */
import { z } from 'zod';
import { f16Table, f32BitsToF16Bits } from '../swarm/compress/f16.js';
import { InvalidInputError, TesseraError } from '../util/errors.js';
import { Rng } from '../util/rng.js';

/** A received activation message failed validation. Nothing was allocated from its claims. */
export class ActDecodeError extends TesseraError {
  constructor(message: string) {
    super('ACT_DECODE', message);
  }
}

export type ActCodecId = 'fp32' | 'fp16' | 'int8' | 'lowrank';
export const ACT_CODEC_IDS: readonly ActCodecId[] = Object.freeze(['fp32', 'fp16', 'int8', 'lowrank'] as const);

export interface ActCodecSpec {
  id: ActCodecId;
  /** lowrank only (required there): subspace dimension, 1 <= k <= cols. */
  k?: number;
  /** lowrank only: basis seed, any safe integer; default DEFAULT_SUBSPACE_SEED. */
  seed?: number;
}

export interface ActCodec {
  readonly id: ActCodecId;
  /** The row width this codec was built for; encode/decode must be called with it. */
  readonly cols: number;
  /** x: row-major [rows, cols], finite. Does not modify x. Throws InvalidInputError. */
  encode(x: Float32Array, rows: number, cols: number): Uint8Array;
  /** Pure. Returns rows*cols finite values or throws ActDecodeError (InvalidInputError for bad rows/cols). */
  decode(bytes: Uint8Array, rows: number, cols: number): Float32Array;
  /** Exact byte length of encode(x, rows, cols). */
  encodedSize(rows: number): number;
}

export const ACT_HEADER_BYTES = 24;
export const ACT_VERSION = 1;
const MAGIC = [0x54, 0x41, 0x43, 0x54] as const; // "TACT"
const TAGS: Record<ActCodecId, number> = { fp32: 1, fp16: 2, int8: 3, lowrank: 4 };
/** Largest row width (matches ModelConfig.dim's bound). */
export const MAX_ACT_COLS = 1 << 16;
/** Largest rows*cols a message may carry (1 GiB as fp32). */
export const MAX_ACT_VALUES = 2 ** 28;
export const DEFAULT_SUBSPACE_SEED = 0;
const FLT_MAX = 3.4028234663852886e38;
/** Host byte order; the fp32 typed-array fast path is only taken on little-endian hosts. */
const IS_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

const SafeInt = z.number().int().min(Number.MIN_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER);
const ActCodecSpecSchema = z
  .object({
    id: z.enum(['fp32', 'fp16', 'int8', 'lowrank']),
    k: z.number().int().min(1).max(MAX_ACT_COLS).optional(),
    seed: SafeInt.optional(),
  })
  .strict()
  .superRefine((s, ctx) => {
    if (s.id === 'lowrank' && s.k === undefined)
      ctx.addIssue({ code: 'custom', path: ['k'], message: 'lowrank needs k' });
    if (s.id !== 'lowrank' && (s.k !== undefined || s.seed !== undefined)) {
      ctx.addIssue({ code: 'custom', path: [], message: `k and seed only apply to lowrank, not ${s.id}` });
    }
  });

function checkCols(cols: number): void {
  if (!Number.isSafeInteger(cols) || cols < 1 || cols > MAX_ACT_COLS) {
    throw new InvalidInputError(`activation width must be an integer in [1, ${MAX_ACT_COLS}], got ${cols}`);
  }
}

function checkRows(rows: number, cols: number): void {
  if (!Number.isSafeInteger(rows) || rows < 1 || rows * cols > MAX_ACT_VALUES) {
    throw new InvalidInputError(
      `activation rows must be an integer >= 1 with rows*cols <= ${MAX_ACT_VALUES}, got rows=${rows}, cols=${cols}`,
    );
  }
}

/** Validates a spec (zod) against a row width; throws InvalidInputError. */
export function parseActCodecSpec(spec: ActCodecSpec, cols: number): Required<ActCodecSpec> {
  checkCols(cols);
  const r = ActCodecSpecSchema.safeParse(spec);
  if (!r.success) {
    throw new InvalidInputError(
      `invalid activation codec spec: ${r.error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`).join('; ')}`,
    );
  }
  const s = r.data;
  if (s.id !== 'lowrank') return { id: s.id, k: 0, seed: 0 };
  const k = s.k as number;
  if (k > cols) throw new InvalidInputError(`lowrank k=${k} exceeds the activation width ${cols}`);
  return { id: 'lowrank', k, seed: s.seed ?? DEFAULT_SUBSPACE_SEED };
}

function sizeFor(id: ActCodecId, k: number, rows: number, cols: number): number {
  const n = rows * cols;
  switch (id) {
    case 'fp32':
      return ACT_HEADER_BYTES + 4 * n;
    case 'fp16':
      return ACT_HEADER_BYTES + 2 * n;
    case 'int8':
      return ACT_HEADER_BYTES + 4 * rows + n;
    case 'lowrank':
      return ACT_HEADER_BYTES + 4 * rows + rows * k;
  }
}

/** Exact byte length of the message getActCodec(spec, cols).encode(x, rows, cols) returns. */
export function exactBytes(spec: ActCodecSpec, rows: number, cols: number): number {
  const s = parseActCodecSpec(spec, cols);
  checkRows(rows, cols);
  return sizeFor(s.id, s.k, rows, cols);
}

// ---------------------------------------------------------------------------------------------
// The subspace basis

/**
 * A [cols, k] row-major matrix (U[i*k + j]) with orthonormal columns, the same bits for the
 * same (cols, k, seed) on every machine: columns are uniform [-1, 1) vectors from Rng(seed),
 * orthogonalised by modified Gram-Schmidt run twice ("twice is enough") in float64, then
 * normalised and rounded to float32. Cost O(cols * k^2).
 */
export function subspaceBasis(cols: number, k: number, seed: number = DEFAULT_SUBSPACE_SEED): Float32Array {
  checkCols(cols);
  if (!Number.isSafeInteger(k) || k < 1 || k > cols)
    throw new InvalidInputError(`subspace k must be an integer in [1, ${cols}], got ${k}`);
  if (!Number.isSafeInteger(seed)) throw new InvalidInputError(`subspace seed must be a safe integer, got ${seed}`);
  const rng = new Rng(seed);
  const Q = new Float64Array(cols * k); // column-major work copy: column j at [j*cols, (j+1)*cols)
  const v = new Float64Array(cols);
  for (let j = 0; j < k; j++) {
    for (let attempt = 0; ; attempt++) {
      if (attempt > 64)
        throw new InvalidInputError(`subspace basis: could not draw column ${j} (cols=${cols}, k=${k})`);
      let n0 = 0;
      for (let i = 0; i < cols; i++) {
        v[i] = 2 * rng.nextFloat() - 1;
        n0 += v[i] * v[i];
      }
      for (let pass = 0; pass < 2; pass++) {
        for (let p = 0; p < j; p++) {
          const o = p * cols;
          let d = 0;
          for (let i = 0; i < cols; i++) d += v[i] * Q[o + i];
          for (let i = 0; i < cols; i++) v[i] -= d * Q[o + i];
        }
      }
      let nn = 0;
      for (let i = 0; i < cols; i++) nn += v[i] * v[i];
      if (!(nn > 1e-12 * n0)) continue; // v was (numerically) inside the span so far: redraw
      const inv = 1 / Math.sqrt(nn);
      const o = j * cols;
      for (let i = 0; i < cols; i++) Q[o + i] = v[i] * inv;
      break;
    }
  }
  const U = new Float32Array(cols * k);
  for (let i = 0; i < cols; i++) for (let j = 0; j < k; j++) U[i * k + j] = Q[j * cols + i];
  return U;
}

/** FNV-1a over the little-endian float32 bytes: a tag so mismatched bases fail loudly. */
function fingerprint(U: Float32Array): number {
  const dv = new DataView(U.buffer, U.byteOffset, U.byteLength);
  let h = 0x811c9dc5;
  for (let i = 0; i < U.length; i++) {
    const w = dv.getUint32(4 * i, true);
    for (let b = 0; b < 32; b += 8) h = Math.imul(h ^ ((w >>> b) & 0xff), 0x01000193);
  }
  return h >>> 0;
}

// ---------------------------------------------------------------------------------------------
// Framing

interface Frame {
  id: ActCodecId;
  cols: number;
  k: number;
  tag: number;
}

function checkEncodeArgs(f: Frame, x: Float32Array, rows: number, cols: number): void {
  if (cols !== f.cols) throw new InvalidInputError(`${f.id}: codec built for ${f.cols} columns, called with ${cols}`);
  checkRows(rows, cols);
  if (!(x instanceof Float32Array)) throw new InvalidInputError(`${f.id}: activations must be a Float32Array`);
  if (x.length !== rows * cols)
    throw new InvalidInputError(`${f.id}: expected ${rows}x${cols} = ${rows * cols} values, got ${x.length}`);
  for (let i = 0; i < x.length; i++) {
    if (!Number.isFinite(x[i]))
      throw new InvalidInputError(`${f.id}: activation [${Math.floor(i / cols)}, ${i % cols}] is not finite (${x[i]})`);
  }
}

function writeHeader(f: Frame, out: Uint8Array, rows: number): DataView {
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  out.set(MAGIC, 0);
  out[4] = ACT_VERSION;
  out[5] = TAGS[f.id];
  dv.setUint16(6, 0, true);
  dv.setUint32(8, rows, true);
  dv.setUint32(12, f.cols, true);
  dv.setUint32(16, f.k, true);
  dv.setUint32(20, f.tag, true);
  return dv;
}

/** All header checks, then the exact length; returns a view for the payload. */
function readHeader(f: Frame, bytes: Uint8Array, rows: number, cols: number): DataView {
  if (cols !== f.cols) throw new InvalidInputError(`${f.id}: codec built for ${f.cols} columns, called with ${cols}`);
  checkRows(rows, cols);
  if (!(bytes instanceof Uint8Array)) throw new ActDecodeError(`${f.id}: message is not a Uint8Array`);
  if (bytes.length < ACT_HEADER_BYTES)
    throw new ActDecodeError(
      `${f.id}: message of ${bytes.length} bytes is shorter than the ${ACT_HEADER_BYTES}-byte header`,
    );
  for (let i = 0; i < 4; i++)
    if (bytes[i] !== MAGIC[i]) throw new ActDecodeError(`${f.id}: bad magic (not a Tessera activation message)`);
  if (bytes[4] !== ACT_VERSION) throw new ActDecodeError(`${f.id}: unsupported version ${bytes[4]}`);
  if (bytes[5] !== TAGS[f.id]) {
    const got = ACT_CODEC_IDS.find((id) => TAGS[id] === bytes[5]);
    throw new ActDecodeError(`${f.id}: codec mismatch, message is ${got ?? `unknown tag ${bytes[5]}`}`);
  }
  if (bytes[6] !== 0 || bytes[7] !== 0) throw new ActDecodeError(`${f.id}: reserved header bytes are not zero`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const r = dv.getUint32(8, true),
    c = dv.getUint32(12, true),
    k = dv.getUint32(16, true),
    tag = dv.getUint32(20, true);
  if (r !== rows || c !== cols)
    throw new ActDecodeError(`${f.id}: shape mismatch, expected ${rows}x${cols}, header says ${r}x${c}`);
  if (k !== f.k) throw new ActDecodeError(`${f.id}: k mismatch, expected ${f.k}, header says ${k}`);
  if (tag !== f.tag)
    throw new ActDecodeError(
      `${f.id}: basis mismatch (fingerprint ${tag.toString(16)}, ours ${f.tag.toString(16)}; different seed?)`,
    );
  const want = sizeFor(f.id, f.k, rows, cols);
  if (bytes.length !== want) throw new ActDecodeError(`${f.id}: expected exactly ${want} bytes, got ${bytes.length}`);
  return dv;
}

// ---------------------------------------------------------------------------------------------
// Per-row int8 quantiser (shared by int8 and lowrank)

/** Smallest positive float32; a row whose absmax/127 underflows to 0 uses it instead. */
const MIN_SCALE = 2 ** -149;

/** s such that fround(127 * s) is finite: anything larger cannot come from a finite row. */
function scaleOk(s: number): boolean {
  return Number.isFinite(s) && s >= 0 && Math.fround(127 * s) <= FLT_MAX;
}

/** Quantises v[0..n) into out[o..o+n) as int8; returns the float32 scale. */
function quantRow(id: ActCodecId, v: ArrayLike<number>, n: number, out: Uint8Array, o: number): number {
  let m = 0;
  for (let i = 0; i < n; i++) {
    const a = Math.abs(v[i]);
    if (a > m) m = a;
  }
  if (m === 0) {
    out.fill(0, o, o + n);
    return 0;
  }
  const s = Math.max(Math.fround(m / 127), MIN_SCALE);
  if (!scaleOk(s)) throw new InvalidInputError(`${id}: row magnitude ${m} is too large to quantise`);
  for (let i = 0; i < n; i++) {
    const t = v[i] / s;
    let q = t < 0 ? -Math.round(-t) : Math.round(t);
    if (q > 127) q = 127;
    else if (q < -127) q = -127;
    out[o + i] = q & 0xff;
  }
  return s;
}

function readScale(id: ActCodecId, dv: DataView, r: number): number {
  const s = dv.getFloat32(ACT_HEADER_BYTES + 4 * r, true);
  if (!scaleOk(s)) throw new ActDecodeError(`${id}: row ${r} has an invalid scale ${s}`);
  return s;
}

function readQ(id: ActCodecId, bytes: Uint8Array, p: number): number {
  const b = bytes[p];
  if (b === 0x80) throw new ActDecodeError(`${id}: int8 value -128 at byte ${p} (never produced)`);
  return b < 128 ? b : b - 256;
}

// ---------------------------------------------------------------------------------------------
// The codecs

function fp32Codec(cols: number): ActCodec {
  const f: Frame = { id: 'fp32', cols, k: 0, tag: 0 };
  return Object.freeze({
    id: 'fp32' as const,
    cols,
    encodedSize: (rows: number) => {
      checkRows(rows, cols);
      return sizeFor('fp32', 0, rows, cols);
    },
    encode(x: Float32Array, rows: number, c: number): Uint8Array {
      checkEncodeArgs(f, x, rows, c);
      const out = new Uint8Array(sizeFor('fp32', 0, rows, cols));
      const dv = writeHeader(f, out, rows);
      if (IS_LE) out.set(new Uint8Array(x.buffer, x.byteOffset, x.byteLength), ACT_HEADER_BYTES);
      else for (let i = 0; i < x.length; i++) dv.setFloat32(ACT_HEADER_BYTES + 4 * i, x[i], true);
      return out;
    },
    decode(bytes: Uint8Array, rows: number, c: number): Float32Array {
      const dv = readHeader(f, bytes, rows, c);
      const n = rows * cols,
        out = new Float32Array(n);
      if (IS_LE) new Uint8Array(out.buffer).set(bytes.subarray(ACT_HEADER_BYTES));
      else for (let i = 0; i < n; i++) out[i] = dv.getFloat32(ACT_HEADER_BYTES + 4 * i, true);
      for (let i = 0; i < n; i++) {
        if (!Number.isFinite(out[i])) throw new ActDecodeError(`fp32: value ${i} is not finite`);
      }
      return out;
    },
  });
}

function fp16Codec(cols: number): ActCodec {
  const f: Frame = { id: 'fp16', cols, k: 0, tag: 0 };
  return Object.freeze({
    id: 'fp16' as const,
    cols,
    encodedSize: (rows: number) => {
      checkRows(rows, cols);
      return sizeFor('fp16', 0, rows, cols);
    },
    encode(x: Float32Array, rows: number, c: number): Uint8Array {
      checkEncodeArgs(f, x, rows, c);
      const out = new Uint8Array(sizeFor('fp16', 0, rows, cols));
      writeHeader(f, out, rows);
      const bits = new Uint32Array(x.buffer, x.byteOffset, x.length); // needs x 4-byte aligned: always for a Float32Array
      for (let i = 0, o = ACT_HEADER_BYTES; i < x.length; i++, o += 2) {
        const h = f32BitsToF16Bits(bits[i]);
        out[o] = h & 0xff;
        out[o + 1] = h >>> 8;
      }
      return out;
    },
    decode(bytes: Uint8Array, rows: number, c: number): Float32Array {
      readHeader(f, bytes, rows, c);
      const t = f16Table();
      const n = rows * cols,
        out = new Float32Array(n);
      for (let i = 0, o = ACT_HEADER_BYTES; i < n; i++, o += 2) {
        const h = bytes[o] | (bytes[o + 1] << 8);
        if ((h & 0x7c00) === 0x7c00) throw new ActDecodeError(`fp16: value ${i} is Inf or NaN`);
        out[i] = t[h];
      }
      return out;
    },
  });
}

function int8Codec(cols: number): ActCodec {
  const f: Frame = { id: 'int8', cols, k: 0, tag: 0 };
  return Object.freeze({
    id: 'int8' as const,
    cols,
    encodedSize: (rows: number) => {
      checkRows(rows, cols);
      return sizeFor('int8', 0, rows, cols);
    },
    encode(x: Float32Array, rows: number, c: number): Uint8Array {
      checkEncodeArgs(f, x, rows, c);
      const out = new Uint8Array(sizeFor('int8', 0, rows, cols));
      const dv = writeHeader(f, out, rows);
      const q0 = ACT_HEADER_BYTES + 4 * rows;
      for (let r = 0; r < rows; r++) {
        const s = quantRow('int8', x.subarray(r * cols, (r + 1) * cols), cols, out, q0 + r * cols);
        dv.setFloat32(ACT_HEADER_BYTES + 4 * r, s, true);
      }
      return out;
    },
    decode(bytes: Uint8Array, rows: number, c: number): Float32Array {
      const dv = readHeader(f, bytes, rows, c);
      const out = new Float32Array(rows * cols);
      const q0 = ACT_HEADER_BYTES + 4 * rows;
      for (let r = 0; r < rows; r++) {
        const s = readScale('int8', dv, r);
        for (let i = 0, p = q0 + r * cols, o = r * cols; i < cols; i++) out[o + i] = readQ('int8', bytes, p + i) * s;
      }
      return out;
    },
  });
}

function lowrankCodec(cols: number, k: number, seed: number): ActCodec {
  const U = subspaceBasis(cols, k, seed);
  const f: Frame = { id: 'lowrank', cols, k, tag: fingerprint(U) };
  return Object.freeze({
    id: 'lowrank' as const,
    cols,
    encodedSize: (rows: number) => {
      checkRows(rows, cols);
      return sizeFor('lowrank', k, rows, cols);
    },
    encode(x: Float32Array, rows: number, c: number): Uint8Array {
      checkEncodeArgs(f, x, rows, c);
      const out = new Uint8Array(sizeFor('lowrank', k, rows, cols));
      const dv = writeHeader(f, out, rows);
      const q0 = ACT_HEADER_BYTES + 4 * rows;
      const coef = new Float64Array(k);
      for (let r = 0; r < rows; r++) {
        coef.fill(0);
        for (let i = 0, xo = r * cols; i < cols; i++) {
          const xi = x[xo + i];
          if (xi === 0) continue;
          for (let j = 0, b = i * k; j < k; j++) coef[j] += xi * U[b + j];
        }
        const s = quantRow('lowrank', coef, k, out, q0 + r * k);
        dv.setFloat32(ACT_HEADER_BYTES + 4 * r, s, true);
      }
      return out;
    },
    decode(bytes: Uint8Array, rows: number, c: number): Float32Array {
      const dv = readHeader(f, bytes, rows, c);
      const out = new Float32Array(rows * cols);
      const q0 = ACT_HEADER_BYTES + 4 * rows;
      const coef = new Float64Array(k);
      for (let r = 0; r < rows; r++) {
        const s = readScale('lowrank', dv, r);
        for (let j = 0, p = q0 + r * k; j < k; j++) coef[j] = readQ('lowrank', bytes, p + j) * s; // exact in float64
        for (let i = 0, o = r * cols; i < cols; i++) {
          let acc = 0;
          for (let j = 0, b = i * k; j < k; j++) acc += coef[j] * U[b + j];
          const v = Math.fround(acc);
          if (!Number.isFinite(v)) throw new ActDecodeError(`lowrank: row ${r} decodes to a non-finite value`);
          out[o + i] = v;
        }
      }
      return out;
    },
  });
}

/**
 * The codec for `spec` at row width `cols` (validated with zod; throws InvalidInputError).
 * lowrank builds its basis here, O(cols * k^2): build once per stage boundary and keep it.
 */
export function getActCodec(spec: ActCodecSpec, cols: number): ActCodec {
  const s = parseActCodecSpec(spec, cols);
  switch (s.id) {
    case 'fp32':
      return fp32Codec(cols);
    case 'fp16':
      return fp16Codec(cols);
    case 'int8':
      return int8Codec(cols);
    case 'lowrank':
      return lowrankCodec(cols, s.k, s.seed);
  }
}
