/**
 * User training text: a .txt/.md file, a .jsonl file (one {"text": "..."} object per line),
 * or a directory of those (recursive, sorted by path so the corpus is deterministic).
 *
 * Documents: each .jsonl line is one; a .txt/.md file is one, or several if it contains
 * <|endoftext|> separators. Sizes are capped, bad input is an InvalidInputError naming the
 * file (and line), and the result is split with the same rule as the Brown corpus.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { InvalidInputError } from '../util/errors.js';
import { EOT_TOKEN } from './bytelevel.js';
import { loadBrownCorpus, makeCorpus, type Corpus } from './corpus.js';
import { decodeUtf8, readBytesCapped, statOrThrow } from './files.js';

export interface TextSourceOptions {
  /** Cap on the total bytes read (default 512 MiB, about V8's longest string). */
  maxBytes?: number;
  /** Cap on the number of files in a directory (default 100000). */
  maxFiles?: number;
}

const DEFAULT_MAX_BYTES = 512 << 20;
const DEFAULT_MAX_FILES = 100_000;
const TEXT_EXT = new Set(['.txt', '.md']);
const JsonlLine = z.object({ text: z.string() });

function isSourceFile(name: string): boolean {
  const ext = path.extname(name).toLowerCase();
  return TEXT_EXT.has(ext) || ext === '.jsonl';
}

/** Files under dir (hidden entries and symlinks skipped), sorted by relative path. */
function listFiles(dir: string, maxFiles: number): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    const entries = fs.readdirSync(path.join(dir, rel), { withFileTypes: true });
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const r = rel === '' ? e.name : `${rel}/${e.name}`;
      if (e.isDirectory()) walk(r);
      else if (e.isFile() && isSourceFile(e.name)) {
        out.push(r);
        if (out.length > maxFiles) throw new InvalidInputError(`${dir} has more than ${maxFiles} text files`);
      }
    }
  };
  walk('');
  // Code-unit order, independent of locale and of the file system's listing order.
  return out.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)).map((r) => path.join(dir, r));
}

/** Documents of a JSONL text: one per non-blank line. */
export function parseJsonl(text: string, source: string): string[] {
  const docs: string[] = [];
  const lines = text.split('\n');
  lines.forEach((raw, i) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (e) {
      throw new InvalidInputError(`${source}:${i + 1}: not valid JSON: ${(e as Error).message}`);
    }
    const parsed = JsonlLine.safeParse(value);
    if (!parsed.success) {
      throw new InvalidInputError(`${source}:${i + 1}: each line must be an object with a "text" string field`);
    }
    docs.push(parsed.data.text);
  });
  return docs;
}

/** Documents of a plain text file: split at <|endoftext|>, blank documents dropped. */
export function parseText(text: string): string[] {
  return text.split(EOT_TOKEN).filter((d) => d.trim().length > 0);
}

/** All documents of a file or directory, in deterministic order. */
export function readDocuments(p: string, opts: TextSourceOptions = {}): string[] {
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
  const st = statOrThrow(p, 'text source');
  const files = st.isDirectory() ? listFiles(p, opts.maxFiles ?? DEFAULT_MAX_FILES) : [p];
  if (files.length === 0) throw new InvalidInputError(`${p} contains no .txt, .md or .jsonl files`);
  const docs: string[] = [];
  let budget = maxBytes;
  for (const f of files) {
    const bytes = readBytesCapped(f, budget, `text file (corpus limit ${maxBytes} bytes, ${budget} left)`);
    budget -= bytes.length;
    const text = decodeUtf8(bytes, f);
    for (const d of path.extname(f).toLowerCase() === '.jsonl' ? parseJsonl(text, f) : parseText(text)) docs.push(d);
  }
  if (docs.length === 0) throw new InvalidInputError(`${p} contains no text`);
  return docs;
}

/** A user corpus, split into train/validation like the Brown corpus. */
export function loadTextSource(p: string, opts: TextSourceOptions = {}): Corpus {
  return makeCorpus(p, readDocuments(p, opts));
}

/** The corpus named on the command line: "brown" (or nothing) is the embedded default. */
export function loadCorpus(source?: string, opts: TextSourceOptions = {}): Corpus {
  return source === undefined || source === 'brown' ? loadBrownCorpus() : loadTextSource(source, opts);
}
