/**
 * A hand-written reader and writer for the safetensors format
 * (https://huggingface.co/docs/safetensors): an 8-byte little-endian u64 header length N,
 * N bytes of UTF-8 JSON `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}`,
 * then the raw tensor bytes, offsets relative to the start of the data section.
 *
 * The reader trusts nothing in the file: the header length is checked against the file size
 * and a cap before anything is allocated, every entry is validated (dtype known, shape made of
 * non-negative safe integers, byte length = numel * dtype size), and the tensors must tile the
 * data section exactly (contiguous, non-overlapping, no gap, no trailing bytes, not truncated).
 * Any violation is a CorruptFileError naming the file and the problem.
 *
 * Tensors are read straight into fresh Float32Arrays (F32, and F16/BF16/F64 converted), one
 * at a time, so a multi-GB file never needs a second in-memory copy. The writer emits F32
 * only and pads the header with spaces to a multiple of 8 bytes, as the format allows, so
 * the data section is 8-byte aligned.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { endianness } from 'node:os';
import { z } from 'zod';
import { CorruptFileError, InvalidInputError } from '../util/errors.js';

/** Default cap on the JSON header (the reference implementation uses 100 MB too). */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

const DTYPE_SIZE = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
} as const;

export type DType = keyof typeof DTYPE_SIZE;
/** Dtypes this reader converts to float32. */
export const FLOAT_DTYPES: readonly DType[] = ['F32', 'F16', 'BF16', 'F64'];

export interface TensorInfo {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly numel: number;
  /** Byte offsets relative to the start of the data section. */
  readonly begin: number;
  readonly end: number;
}

export interface SafetensorsHeader {
  /** Tensors in data order (ascending begin). */
  readonly tensors: readonly TensorInfo[];
  readonly byName: ReadonlyMap<string, TensorInfo>;
  readonly metadata: Readonly<Record<string, string>>;
  /** Header length N as stored in the first 8 bytes. */
  readonly headerBytes: number;
  /** Absolute file offset of the data section: 8 + N. */
  readonly dataStart: number;
  readonly fileSize: number;
}

export interface TensorToWrite {
  readonly name: string;
  readonly shape: readonly number[];
  /** The values, or a function producing them when written (so that e.g. transposed copies
   *  of a large model exist one at a time, not all at once). */
  readonly data: Float32Array | (() => Float32Array);
}

function resolveData(t: TensorToWrite, numel: number): Float32Array {
  const d = typeof t.data === 'function' ? t.data() : t.data;
  if (!(d instanceof Float32Array) || d.length !== numel) {
    throw new InvalidInputError(
      `tensor "${t.name}": shape [${t.shape.join(',')}] has ${numel} elements but data has ${d?.length}`,
    );
  }
  return d;
}

export interface ReadOptions {
  /** Cap on the JSON header length; default MAX_HEADER_BYTES. */
  maxHeaderBytes?: number;
}

const LITTLE_ENDIAN_HOST = endianness() === 'LE';

const TensorEntrySchema = z
  .object({
    dtype: z.string(),
    shape: z.array(z.number().int().min(0).max(Number.MAX_SAFE_INTEGER)),
    data_offsets: z.tuple([
      z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
      z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    ]),
  })
  .strict();

const MetadataSchema = z.record(z.string(), z.string());

function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    n *= d;
    if (!Number.isSafeInteger(n)) return Number.NaN;
  }
  return n;
}

function describeZod(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`).join('; ');
}

/**
 * Parse and validate the header, given the first 8 bytes' value, the header bytes and the
 * file size. Pure; used by both the file and the in-memory readers.
 */
export function parseHeader(
  path: string,
  headerLen: bigint,
  headerBytes: Uint8Array,
  fileSize: number,
): SafetensorsHeader {
  const fail = (msg: string, cause?: unknown): never => {
    throw new CorruptFileError(path, msg, cause === undefined ? undefined : { cause });
  };
  const N = Number(headerLen);
  if (headerBytes.length !== N) fail(`internal: header buffer has ${headerBytes.length} bytes, expected ${N}`);

  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch (e) {
    return fail('safetensors header is not valid UTF-8', e);
  }
  if (!text.startsWith('{')) fail('safetensors header does not start with "{"');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    return fail(`safetensors header is not valid JSON (${(e as Error).message})`, e);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) fail('safetensors header is not a JSON object');

  let metadata: Record<string, string> = {};
  const tensors: TensorInfo[] = [];
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      const m = MetadataSchema.safeParse(raw);
      if (!m.success) fail(`safetensors __metadata__ must map strings to strings (${describeZod(m.error)})`);
      else metadata = m.data;
      continue;
    }
    if (name.length === 0) fail('safetensors header has a tensor with an empty name');
    const e = TensorEntrySchema.safeParse(raw);
    if (!e.success) return fail(`tensor "${name}": bad header entry (${describeZod(e.error)})`);
    const {
      dtype,
      shape,
      data_offsets: [begin, end],
    } = e.data;
    if (!Object.hasOwn(DTYPE_SIZE, dtype)) fail(`tensor "${name}": unknown dtype "${dtype}"`);
    const numel = numelOf(shape);
    if (!Number.isSafeInteger(numel)) fail(`tensor "${name}": shape [${shape.join(',')}] is too large`);
    if (end < begin) fail(`tensor "${name}": data_offsets [${begin}, ${end}] end before begin`);
    const want = numel * DTYPE_SIZE[dtype as DType];
    if (end - begin !== want) {
      fail(
        `tensor "${name}": data_offsets [${begin}, ${end}] span ${end - begin} bytes but ${dtype}[${shape.join(',')}] needs ${want}`,
      );
    }
    tensors.push({ name, dtype: dtype as DType, shape, numel, begin, end });
  }

  // Tensors must tile the data section exactly: sorted by offset, each starting where the
  // previous ended, the last ending at the end of the file.
  const dataStart = 8 + N;
  const dataLen = fileSize - dataStart;
  tensors.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const t of tensors) {
    if (t.begin < cursor)
      fail(
        `tensor "${t.name}": data_offsets [${t.begin}, ${t.end}] overlap the previous tensor (which ends at ${cursor})`,
      );
    if (t.begin > cursor)
      fail(`tensor "${t.name}": gap of ${t.begin - cursor} bytes before it in the data section (at ${cursor})`);
    cursor = t.end;
  }
  if (cursor > dataLen) {
    fail(
      `file is truncated: tensors need ${cursor} data bytes but only ${dataLen} follow the header (file ${fileSize} bytes)`,
    );
  }
  if (cursor < dataLen) fail(`${dataLen - cursor} trailing bytes after the last tensor`);

  return {
    tensors,
    byName: new Map(tensors.map((t) => [t.name, t])),
    metadata,
    headerBytes: N,
    dataStart,
    fileSize,
  };
}

/** Validate the 8-byte length prefix against the file size and cap; returns N. */
function checkHeaderLength(path: string, headerLen: bigint, fileSize: number, maxHeaderBytes: number): number {
  if (headerLen > BigInt(fileSize - 8)) {
    throw new CorruptFileError(
      path,
      `safetensors header length ${headerLen} exceeds the ${fileSize - 8} bytes after the length prefix (file truncated or not a safetensors file)`,
    );
  }
  if (headerLen > BigInt(maxHeaderBytes)) {
    throw new CorruptFileError(path, `safetensors header length ${headerLen} exceeds the ${maxHeaderBytes}-byte cap`);
  }
  if (headerLen < 2n) throw new CorruptFileError(path, `safetensors header length ${headerLen} is too small`);
  return Number(headerLen);
}

/** Convert `count` elements of `dtype` from little-endian `src` into `dst` (float32). */
function convertToF32(src: Uint8Array, dtype: DType, dst: Float32Array, path: string, name: string): void {
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const n = dst.length;
  switch (dtype) {
    case 'F32':
      // Copy first: src may not be 4-byte aligned.
      if (LITTLE_ENDIAN_HOST) {
        dst.set(new Float32Array(new Uint8Array(src).buffer));
        return;
      }
      for (let i = 0; i < n; i++) dst[i] = dv.getFloat32(4 * i, true);
      return;
    case 'F64':
      for (let i = 0; i < n; i++) dst[i] = dv.getFloat64(8 * i, true);
      return;
    case 'BF16': {
      const u = new Uint32Array(1),
        f = new Float32Array(u.buffer);
      for (let i = 0; i < n; i++) {
        u[0] = dv.getUint16(2 * i, true) << 16;
        dst[i] = f[0];
      }
      return;
    }
    case 'F16':
      for (let i = 0; i < n; i++) dst[i] = halfToFloat(dv.getUint16(2 * i, true));
      return;
    default:
      throw new CorruptFileError(
        path,
        `tensor "${name}" has dtype ${dtype}; only ${FLOAT_DTYPES.join('/')} can be read as float32`,
      );
  }
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? Number.NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/**
 * An open safetensors file whose header has been validated. Read tensors with readF32 /
 * readInto; close() when done (or use readSafetensors for the whole file at once).
 */
export class SafetensorsReader {
  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    readonly header: SafetensorsHeader,
  ) {}

  static async open(path: string, opts: ReadOptions = {}): Promise<SafetensorsReader> {
    const maxHeaderBytes = opts.maxHeaderBytes ?? MAX_HEADER_BYTES;
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new CorruptFileError(path, 'file is missing', { cause: e });
      throw new CorruptFileError(path, `cannot open (${code ?? (e as Error).message})`, { cause: e });
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new CorruptFileError(path, 'not a regular file');
      const fileSize = st.size;
      if (fileSize < 8)
        throw new CorruptFileError(path, `file is ${fileSize} bytes, too short for a safetensors header`);
      const lenBuf = Buffer.alloc(8);
      await readExactly(fh, lenBuf, 0, path);
      const headerLen = lenBuf.readBigUInt64LE(0);
      const N = checkHeaderLength(path, headerLen, fileSize, maxHeaderBytes);
      const hb = Buffer.alloc(N);
      await readExactly(fh, hb, 8, path);
      const header = parseHeader(path, headerLen, hb, fileSize);
      return new SafetensorsReader(path, fh, header);
    } catch (e) {
      await fh.close().catch(() => {});
      throw e;
    }
  }

  /** Read tensor `name` into a fresh Float32Array (converting F16/BF16/F64). */
  async readF32(name: string): Promise<Float32Array> {
    const t = this.info(name);
    const dst = new Float32Array(t.numel);
    await this.readInto(name, dst);
    return dst;
  }

  /** Read tensor `name` into `dst` (length must equal numel). */
  async readInto(name: string, dst: Float32Array): Promise<void> {
    const t = this.info(name);
    if (dst.length !== t.numel)
      throw new InvalidInputError(`readInto("${name}"): destination has ${dst.length} floats, tensor has ${t.numel}`);
    const pos = this.header.dataStart + t.begin;
    if (t.dtype === 'F32' && LITTLE_ENDIAN_HOST) {
      await readExactly(this.fh, new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength), pos, this.path);
      return;
    }
    if (!FLOAT_DTYPES.includes(t.dtype)) {
      throw new CorruptFileError(
        this.path,
        `tensor "${name}" has dtype ${t.dtype}; only ${FLOAT_DTYPES.join('/')} can be read as float32`,
      );
    }
    const raw = new Uint8Array(t.end - t.begin);
    await readExactly(this.fh, raw, pos, this.path);
    convertToF32(raw, t.dtype, dst, this.path, name);
  }

  private info(name: string): TensorInfo {
    const t = this.header.byName.get(name);
    if (!t) throw new CorruptFileError(this.path, `tensor "${name}" is missing`);
    return t;
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

async function readExactly(fh: FileHandle, dst: Uint8Array, position: number, path: string): Promise<void> {
  // fh.read is limited to 2 GiB per call; loop in chunks.
  const CHUNK = 1 << 30;
  let done = 0;
  while (done < dst.length) {
    const len = Math.min(CHUNK, dst.length - done);
    const { bytesRead } = await fh.read(dst, done, len, position + done);
    if (bytesRead === 0)
      throw new CorruptFileError(
        path,
        `unexpected end of file at byte ${position + done} (file changed while reading?)`,
      );
    done += bytesRead;
  }
}

export interface LoadedTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

/** Read and validate a whole safetensors file; every tensor converted to float32. */
export async function readSafetensors(
  path: string,
  opts: ReadOptions = {},
): Promise<{
  metadata: Record<string, string>;
  tensors: Map<string, LoadedTensor>;
}> {
  const r = await SafetensorsReader.open(path, opts);
  try {
    const tensors = new Map<string, LoadedTensor>();
    for (const t of r.header.tensors)
      tensors.set(t.name, { dtype: t.dtype, shape: t.shape, data: await r.readF32(t.name) });
    return { metadata: { ...r.header.metadata }, tensors };
  } finally {
    await r.close();
  }
}

/** Decode an in-memory safetensors file (same validation as the file reader). */
export function decodeSafetensors(
  bytes: Uint8Array,
  path = '<memory>',
  opts: ReadOptions = {},
): {
  header: SafetensorsHeader;
  tensors: Map<string, LoadedTensor>;
} {
  const maxHeaderBytes = opts.maxHeaderBytes ?? MAX_HEADER_BYTES;
  if (bytes.length < 8)
    throw new CorruptFileError(path, `file is ${bytes.length} bytes, too short for a safetensors header`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = dv.getBigUint64(0, true);
  const N = checkHeaderLength(path, headerLen, bytes.length, maxHeaderBytes);
  const header = parseHeader(path, headerLen, bytes.subarray(8, 8 + N), bytes.length);
  const tensors = new Map<string, LoadedTensor>();
  for (const t of header.tensors) {
    const data = new Float32Array(t.numel);
    convertToF32(bytes.subarray(header.dataStart + t.begin, header.dataStart + t.end), t.dtype, data, path, t.name);
    tensors.set(t.name, { dtype: t.dtype, shape: t.shape, data });
  }
  return { header, tensors };
}

/** Build the padded header bytes for F32 tensors written in the given order. */
export function encodeHeader(tensors: readonly TensorToWrite[], metadata?: Record<string, string>): Buffer {
  const obj: Record<string, unknown> = {};
  if (metadata) {
    const m = MetadataSchema.safeParse(metadata);
    if (!m.success)
      throw new InvalidInputError(`safetensors metadata must map strings to strings (${describeZod(m.error)})`);
    obj.__metadata__ = m.data;
  }
  let offset = 0;
  for (const t of tensors) {
    if (t.name === '__metadata__' || t.name.length === 0)
      throw new InvalidInputError(`invalid tensor name "${t.name}"`);
    if (Object.hasOwn(obj, t.name)) throw new InvalidInputError(`duplicate tensor name "${t.name}"`);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      throw new InvalidInputError(`tensor "${t.name}": bad shape [${t.shape.join(',')}]`);
    const numel = numelOf(t.shape);
    if (!Number.isSafeInteger(numel))
      throw new InvalidInputError(`tensor "${t.name}": shape [${t.shape.join(',')}] is too large`);
    if (typeof t.data !== 'function') resolveData(t, numel);
    const bytes = numel * 4;
    obj[t.name] = { dtype: 'F32', shape: [...t.shape], data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  const json = Buffer.from(JSON.stringify(obj), 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded > MAX_HEADER_BYTES)
    throw new InvalidInputError(`safetensors header would be ${padded} bytes, over the ${MAX_HEADER_BYTES}-byte cap`);
  const out = Buffer.alloc(8 + padded, 0x20);
  out.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(out, 8);
  return out;
}

function f32Bytes(data: Float32Array): Uint8Array {
  if (LITTLE_ENDIAN_HOST) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint8Array(data.byteLength);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < data.length; i++) dv.setFloat32(4 * i, data[i], true);
  return out;
}

/** Encode F32 tensors into an in-memory safetensors file. */
export function encodeSafetensors(tensors: readonly TensorToWrite[], metadata?: Record<string, string>): Buffer {
  const header = encodeHeader(tensors, metadata);
  return Buffer.concat([header, ...tensors.map((t) => f32Bytes(resolveData(t, numelOf(t.shape))))]);
}

/**
 * Write F32 tensors to `path` (created or truncated), streaming each tensor's bytes without
 * copying the whole file into memory, then fsync. Not atomic by itself: callers write into
 * a temporary directory and rename (see checkpoint.ts).
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[],
  metadata?: Record<string, string>,
): Promise<void> {
  const header = encodeHeader(tensors, metadata);
  const fh = await open(path, 'w');
  try {
    await writeAll(fh, header);
    for (const t of tensors) await writeAll(fh, f32Bytes(resolveData(t, numelOf(t.shape))));
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  const CHUNK = 1 << 30;
  for (let done = 0; done < bytes.length;) {
    const { bytesWritten } = await fh.write(bytes, done, Math.min(CHUNK, bytes.length - done));
    done += bytesWritten;
  }
}
