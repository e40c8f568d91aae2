/**
 * A corpus turned into training data: a tokenizer (trained on the train split, or given) and
 * the train/validation token streams, cached on disk so `tessera train` does not retrain the
 * tokenizer or re-encode the corpus on every run.
 *
 * Stream layout: <|endoftext|> before every document and once at the end, i.e.
 * [eot, doc1..., eot, doc2..., eot]. Documents are encoded with encodeOrdinary, so a literal
 * "<|endoftext|>" inside a user document stays text.
 *
 * Cache: <cacheDir>/<key>/ {meta.json, tokenizer.json, train.bin, val.bin}, key = sha256 of
 * (corpus hashes, vocabSize, tokenizer version, given tokenizer's hash). An entry is built
 * in a temporary directory and renamed into place, so it is complete or absent; one that
 * fails validation (hashes, sizes, ids) is a CorruptFileError, never silently used.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { CorruptFileError, MismatchError, TesseraError } from '../util/errors.js';
import type { TokenArray } from './batches.js';
import { trainBpe } from './bpe-train.js';
import type { Corpus } from './corpus.js';
import { atomicWriteFile, readBytesCapped, readFileCapped, tmpSibling } from './files.js';
import { sha256HexNode } from '../util/hash-node.js';
import { TokenBuffer } from './token-buffer.js';
import { bytesPerToken, bytesToTokens, dtypeFor, toTokenArray, tokensToBytes } from './token-io.js';
import { TOKENIZER_VERSION, Tokenizer } from './tokenizer.js';

export { BatchSampler, evalBatchCount, evalBatches, unigramCrossEntropy, unigramEntropy } from './batches.js';
export type { Batch, TokenArray } from './batches.js';

export const DEFAULT_VOCAB_SIZE = 4096;
const CACHE_FORMAT_VERSION = 1;
const MAX_BIN_BYTES = 0x7fffffff;

export type DatasetStage = 'tokenizer' | 'encode-train' | 'encode-val';

export interface PrepareOptions {
  corpus: Corpus;
  /** Vocabulary for a newly trained tokenizer (default 4096); must match `tokenizer` if both are given. */
  vocabSize?: number;
  /** Use this tokenizer (e.g. a checkpoint's) instead of training one. */
  tokenizer?: Tokenizer;
  /** Cache root; without it nothing is read or written. */
  cacheDir?: string;
  onProgress?: (stage: DatasetStage, done: number, total: number) => void;
}

export interface SplitStats {
  docs: number;
  chars: number;
  tokens: number;
  sha256: string;
}

export interface Dataset {
  tokenizer: Tokenizer;
  train: TokenArray;
  val: TokenArray;
  corpusName: string;
  stats: { train: SplitStats; val: SplitStats };
  cacheKey: string;
  /** The cache entry directory, or null without cacheDir. */
  cachePath: string | null;
  fromCache: boolean;
}

const SplitStatsSchema = z
  .object({
    docs: z.number().int().min(0),
    chars: z.number().int().min(0),
    tokens: z
      .number()
      .int()
      .min(1)
      .max(MAX_BIN_BYTES / 2),
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
  })
  .strict();

const MetaSchema = z
  .object({
    format: z.literal('tessera-dataset'),
    version: z.literal(CACHE_FORMAT_VERSION),
    key: z.string().regex(/^[0-9a-f]{64}$/),
    corpusName: z.string().max(4096),
    vocabSize: z
      .number()
      .int()
      .min(257)
      .max(1 << 20),
    tokenizerVersion: z.literal(TOKENIZER_VERSION),
    tokenizerSha256: z.string().regex(/^[0-9a-f]{64}$/),
    dtype: z.enum(['uint16', 'int32']),
    train: SplitStatsSchema,
    val: SplitStatsSchema,
  })
  .strict();
type Meta = z.infer<typeof MetaSchema>;

/** Encode documents into one stream: [eot, doc1..., eot, doc2..., eot]. */
export function encodeDocuments(
  tok: Tokenizer,
  docs: readonly string[],
  onProgress?: (done: number, total: number) => void,
): TokenArray {
  const buf = new TokenBuffer(1 << 16);
  const every = Math.max(1, Math.floor(docs.length / 100));
  docs.forEach((d, i) => {
    buf.push(tok.eotId);
    tok.encodeOrdinaryInto(d, buf);
    if (onProgress && ((i + 1) % every === 0 || i + 1 === docs.length)) onProgress(i + 1, docs.length);
  });
  buf.push(tok.eotId);
  return toTokenArray(buf.view(), tok.vocabSize);
}

export function datasetCacheKey(corpus: Corpus, vocabSize: number, tokenizer?: Tokenizer): string {
  return sha256HexNode(
    JSON.stringify({
      format: CACHE_FORMAT_VERSION,
      tokenizerVersion: TOKENIZER_VERSION,
      vocabSize,
      trainHash: corpus.trainHash,
      valHash: corpus.valHash,
      tokenizer: tokenizer?.hash() ?? null,
    }),
  );
}

function chars(docs: readonly string[]): number {
  return docs.reduce((n, d) => n + d.length, 0);
}

/** Tokenizer + token streams for a corpus, from the cache when possible. */
export function prepareDataset(opts: PrepareOptions): Dataset {
  const { corpus, cacheDir, onProgress } = opts;
  if (opts.tokenizer !== undefined && opts.vocabSize !== undefined && opts.vocabSize !== opts.tokenizer.vocabSize) {
    throw new MismatchError(
      `vocabSize ${opts.vocabSize} was asked for, but the given tokenizer has ${opts.tokenizer.vocabSize}`,
    );
  }
  const vocabSize = opts.tokenizer?.vocabSize ?? opts.vocabSize ?? DEFAULT_VOCAB_SIZE;
  const key = datasetCacheKey(corpus, vocabSize, opts.tokenizer);
  const entry = cacheDir === undefined ? null : path.join(cacheDir, key);
  if (entry !== null && fs.existsSync(entry)) {
    return {
      ...loadEntry(entry, key, opts.tokenizer),
      corpusName: corpus.name,
      cacheKey: key,
      cachePath: entry,
      fromCache: true,
    };
  }

  const tokenizer =
    opts.tokenizer ?? trainBpe(corpus.train, { vocabSize, onProgress: (d, t) => onProgress?.('tokenizer', d, t) });
  const train = encodeDocuments(tokenizer, corpus.train, (d, t) => onProgress?.('encode-train', d, t));
  const val = encodeDocuments(tokenizer, corpus.val, (d, t) => onProgress?.('encode-val', d, t));
  const stats = {
    train: {
      docs: corpus.train.length,
      chars: chars(corpus.train),
      tokens: train.length,
      sha256: sha256HexNode(tokensToBytes(train)),
    },
    val: {
      docs: corpus.val.length,
      chars: chars(corpus.val),
      tokens: val.length,
      sha256: sha256HexNode(tokensToBytes(val)),
    },
  };
  if (entry !== null) {
    writeEntry(
      entry,
      {
        format: 'tessera-dataset',
        version: CACHE_FORMAT_VERSION,
        key,
        corpusName: corpus.name,
        vocabSize,
        tokenizerVersion: TOKENIZER_VERSION,
        tokenizerSha256: tokenizer.hash(),
        dtype: dtypeFor(vocabSize),
        ...stats,
      },
      tokenizer,
      train,
      val,
    );
  }
  return { tokenizer, train, val, corpusName: corpus.name, stats, cacheKey: key, cachePath: entry, fromCache: false };
}

function writeEntry(entry: string, meta: Meta, tok: Tokenizer, train: TokenArray, val: TokenArray): void {
  const tmp = tmpSibling(entry);
  fs.mkdirSync(tmp, { recursive: true });
  try {
    tok.save(path.join(tmp, 'tokenizer.json'));
    atomicWriteFile(path.join(tmp, 'train.bin'), tokensToBytes(train));
    atomicWriteFile(path.join(tmp, 'val.bin'), tokensToBytes(val));
    atomicWriteFile(path.join(tmp, 'meta.json'), JSON.stringify(meta, null, 2) + '\n');
    try {
      fs.renameSync(tmp, entry);
    } catch (e) {
      // Another process finished the same entry first: theirs is equivalent.
      if (!fs.existsSync(entry)) throw e;
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

function loadEntry(
  entry: string,
  key: string,
  given?: Tokenizer,
): Pick<Dataset, 'tokenizer' | 'train' | 'val' | 'stats'> {
  const hint = ' (delete this cache directory to rebuild it)';
  const bad = (file: string, msg: string, cause?: unknown): never => {
    throw new CorruptFileError(path.join(entry, file), msg + hint, { cause });
  };
  try {
    let raw: unknown;
    try {
      raw = JSON.parse(readFileCapped(path.join(entry, 'meta.json'), 1 << 20, 'dataset cache metadata'));
    } catch (e) {
      if (e instanceof TesseraError) throw e;
      bad('meta.json', 'not valid JSON', e);
    }
    const parsed = MetaSchema.safeParse(raw);
    if (!parsed.success) bad('meta.json', `invalid metadata: ${z.prettifyError(parsed.error)}`);
    const meta = parsed.data!;
    if (meta.key !== key) bad('meta.json', `key ${meta.key} does not match the directory's ${key}`);
    if (meta.dtype !== dtypeFor(meta.vocabSize))
      bad('meta.json', `dtype ${meta.dtype} does not fit vocabSize ${meta.vocabSize}`);
    const tokenizer = Tokenizer.load(path.join(entry, 'tokenizer.json'), { expectVocabSize: meta.vocabSize });
    if (tokenizer.hash() !== meta.tokenizerSha256)
      bad('tokenizer.json', `sha256 ${tokenizer.hash()} does not match meta.json's ${meta.tokenizerSha256}`);
    if (given !== undefined && given.hash() !== tokenizer.hash()) {
      throw new MismatchError(`${entry}: cached tokenizer differs from the given one`);
    }
    const readSplit = (name: 'train' | 'val'): TokenArray => {
      const file = `${name}.bin`;
      const want = meta[name].tokens * bytesPerToken(meta.dtype);
      const size = fs.statSync(path.join(entry, file)).size;
      if (size !== want) bad(file, `is ${size} bytes, expected ${want} (${meta[name].tokens} ${meta.dtype} tokens)`);
      const bytes = readBytesCapped(path.join(entry, file), want, 'dataset cache tokens');
      if (sha256HexNode(bytes) !== meta[name].sha256) bad(file, 'sha256 does not match meta.json');
      const tokens = bytesToTokens(bytes, meta.dtype);
      for (let i = 0; i < tokens.length; i++) {
        if (tokens[i] < 0 || tokens[i] >= meta.vocabSize)
          bad(file, `token ${i} has id ${tokens[i]} outside the vocabulary`);
      }
      return tokens;
    };
    return {
      tokenizer: given ?? tokenizer,
      train: readSplit('train'),
      val: readSplit('val'),
      stats: { train: meta.train, val: meta.val },
    };
  } catch (e) {
    if (e instanceof CorruptFileError || e instanceof MismatchError) throw e;
    if (e instanceof TesseraError) throw new CorruptFileError(entry, e.message + hint, { cause: e });
    throw new CorruptFileError(entry, `unreadable cache entry: ${(e as Error).message}${hint}`, { cause: e });
  }
}
