/**
 * Reading a small JSON file from disk without trusting it: the size is checked against a cap
 * before the file is read, the bytes must be UTF-8, and the text must parse; each failure is a
 * CorruptFileError naming the file. Shared by the Hugging Face importer (config.json, the shard
 * index) and the Llama checkpoint loader.
 */
import { readFile, stat } from 'node:fs/promises';
import { CorruptFileError, TesseraError } from '../util/errors.js';

/** Parsed JSON of `path` (≤ maxBytes), as `unknown` for the caller's schema to check. */
export async function readJsonFile(path: string, maxBytes: number): Promise<unknown> {
  let size: number;
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new CorruptFileError(path, 'not a regular file');
    size = st.size;
  } catch (e) {
    if (e instanceof TesseraError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new CorruptFileError(path, code === 'ENOENT' ? 'file is missing' : `cannot read (${code})`, { cause: e });
  }
  if (size > maxBytes) throw new CorruptFileError(path, `file is ${size} bytes, over the ${maxBytes}-byte cap`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(await readFile(path));
  } catch (e) {
    throw new CorruptFileError(path, `cannot read as UTF-8 text (${(e as Error).message})`, { cause: e });
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new CorruptFileError(path, `not valid JSON (${(e as Error).message})`, { cause: e });
  }
}

/** True if `path` exists (any kind of file). */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
