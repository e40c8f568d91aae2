/**
 * Small file helpers for the data layer: bounded reads (never allocate from an untrusted
 * size without a cap), atomic writes (a crash never leaves a half-written file under the
 * final name) and sha256.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CorruptFileError, InvalidInputError } from '../util/errors.js';

/** stat() that turns "missing" into a clear InvalidInputError. */
export function statOrThrow(p: string, what: string): fs.Stats {
  try {
    return fs.statSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new InvalidInputError(`${what} not found: ${p}`);
    throw new InvalidInputError(`cannot read ${what} ${p}: ${(e as Error).message}`, { cause: e });
  }
}

/** Read a whole file, refusing files larger than maxBytes. */
export function readBytesCapped(p: string, maxBytes: number, what: string): Buffer {
  const st = statOrThrow(p, what);
  if (!st.isFile()) throw new InvalidInputError(`${what} is not a regular file: ${p}`);
  if (st.size > maxBytes) {
    throw new InvalidInputError(`${what} ${p} is ${st.size} bytes, more than the limit of ${maxBytes}`);
  }
  const buf = fs.readFileSync(p);
  if (buf.length > maxBytes)
    throw new InvalidInputError(`${what} ${p} grew past the limit of ${maxBytes} bytes while reading`);
  return buf;
}

/** Read a UTF-8 text file (BOM stripped); invalid UTF-8 is a CorruptFileError. */
export function readFileCapped(p: string, maxBytes: number, what: string): string {
  return decodeUtf8(readBytesCapped(p, maxBytes, what), p);
}

export function decodeUtf8(bytes: Uint8Array, source: string): string {
  try {
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(bytes);
  } catch (e) {
    throw new CorruptFileError(source, 'is not valid UTF-8 text', { cause: e });
  }
}

/** A unique sibling path for a temporary file or directory. */
export function tmpSibling(p: string): string {
  return path.join(path.dirname(p), `.${path.basename(p)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/** Write then rename, so readers see either the old file or the complete new one. */
export function atomicWriteFile(p: string, data: string | Uint8Array): void {
  fs.mkdirSync(path.dirname(p), { recursive: true });
  const tmp = tmpSibling(p);
  try {
    const fd = fs.openSync(tmp, 'w');
    try {
      fs.writeFileSync(fd, data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, p);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}
