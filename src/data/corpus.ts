/**
 * Corpora as train/validation document lists, with one fixed, deterministic split rule for
 * every source, and the default Brown corpus pinned by sha256 so that a changed corpus
 * package can never silently change what "the default run" trains on.
 *
 * Split rule: documents in their given (sorted) order; document i goes to validation iff
 * i % 10 == 9 (10%). A source with fewer than 10 documents has each document cut into 10
 * line-aligned pieces first, so validation is never empty.
 */
import { CorruptFileError, InvalidInputError } from '../util/errors.js';
import { brownDir, brownDocuments } from './brown.js';
import { EOT_TOKEN } from './bytelevel.js';
import { sha256HexNode } from '../util/hash-node.js';

export const VAL_EVERY = 10;

export interface Corpus {
  /** "brown" or the path it was read from. */
  name: string;
  train: string[];
  val: string[];
  /** sha256 of the documents joined by <|endoftext|> (see docsHash). */
  trainHash: string;
  valHash: string;
}

/** Pinned sha256 of the Brown train / validation texts (docsHash). */
export const BROWN_TRAIN_SHA256 = 'fb226b3ba771060551f91dfc1f1b2b92647e806fcb32259dc68afe8a5aecd473';
export const BROWN_VAL_SHA256 = '055c5796811deee2e050d8cb38de59d4b8f7a10fefc3d44fa348066337acd15c';

/** Fingerprint of a document list: sha256 of the documents joined by "<|endoftext|>". */
export function docsHash(docs: readonly string[]): string {
  return sha256HexNode(docs.join(EOT_TOKEN));
}

/** Cut text into `k` pieces near equal length, at newlines when possible, else whitespace. */
export function cutDocument(text: string, k: number): string[] {
  const pieces: string[] = [];
  let start = 0;
  for (let p = 1; p < k; p++) {
    const target = Math.max(start, Math.round((text.length * p) / k));
    let cut = text.indexOf('\n', target);
    const limit = target + Math.ceil(text.length / k / 2);
    if (cut < 0 || cut > limit) {
      const ws = text.slice(target, limit).search(/\s/);
      cut = ws >= 0 ? target + ws : target;
    }
    // Never split a surrogate pair.
    const c = text.charCodeAt(cut);
    if (cut > 0 && cut < text.length && c >= 0xdc00 && c <= 0xdfff) cut++;
    cut = Math.min(Math.max(cut, start), text.length);
    pieces.push(text.slice(start, cut));
    start = cut;
  }
  pieces.push(text.slice(start));
  return pieces.filter((s) => s.trim().length > 0);
}

/** Apply the split rule (see header). */
export function splitDocuments(docs: readonly string[]): { train: string[]; val: string[] } {
  const units = docs.length >= VAL_EVERY ? docs : docs.flatMap((d) => cutDocument(d, VAL_EVERY));
  const train: string[] = [];
  const val: string[] = [];
  units.forEach((d, i) => (i % VAL_EVERY === VAL_EVERY - 1 ? val : train).push(d));
  if (train.length === 0 || val.length === 0) {
    throw new InvalidInputError(`corpus is too small to split into train and validation (${docs.length} documents)`);
  }
  return { train, val };
}

export function makeCorpus(name: string, docs: readonly string[]): Corpus {
  const { train, val } = splitDocuments(docs);
  return { name, train, val, trainHash: docsHash(train), valHash: docsHash(val) };
}

/** Throw a CorruptFileError unless the corpus has exactly the pinned hashes. */
export function checkPinnedHashes(corpus: Corpus, pinned: { train: string; val: string }, source: string): void {
  if (corpus.trainHash !== pinned.train || corpus.valHash !== pinned.val) {
    throw new CorruptFileError(
      source,
      `the ${corpus.name} corpus text does not match its pinned hashes (did the package change?): ` +
        `train ${corpus.trainHash} (pinned ${pinned.train}), val ${corpus.valHash} (pinned ${pinned.val})`,
    );
  }
}

/** The default corpus (Brown: 450 train / 50 validation documents), verified against the pinned hashes. */
export function loadBrownCorpus(): Corpus {
  const corpus = makeCorpus(
    'brown',
    brownDocuments().map((d) => d.text),
  );
  checkPinnedHashes(corpus, { train: BROWN_TRAIN_SHA256, val: BROWN_VAL_SHA256 }, brownDir());
  return corpus;
}
