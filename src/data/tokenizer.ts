/**
 * The byte-level BPE tokenizer used by Tessera (GPT-2 conventions), hand-written so that
 * training, encoding and Hugging Face tokenizer.json export/import all run in plain Node.
 *
 * Ids: the 256 byte tokens, merged tokens, and one special token <|endoftext|>
 * (eotId, the document separator). Tokenizers trained here use bytes = ids 0..255, merged
 * tokens 256.. in creation order and eotId = vocabSize - 1; loaded files may use any dense
 * layout (e.g. GPT-2's own tokenizer.json).
 *
 * Encoding: split on <|endoftext|> (encode only), pre-tokenize with the GPT-2 regex, then in
 * each pre-token repeatedly apply the lowest-rank merge, leftmost first (the same rule as
 * HF tokenizers). Results are cached per pre-token.
 */
import { createHash } from 'node:crypto';
import { CorruptFileError, InvalidInputError } from '../util/errors.js';
import { EOT_TOKEN, bytesToByteLevel, pretokenRegex, utf8 } from './bytelevel.js';
import { atomicWriteFile, readFileCapped } from './files.js';
import { TokenBuffer } from './token-buffer.js';
import { hfConfigJson, partsFromHfJson, toHfJson, type HfTokenizerJson } from './tokenizer-json.js';

/** Largest vocabulary accepted anywhere (matches the model config limit). */
export const MAX_VOCAB = 1 << 20;
/** Bumped whenever training or encoding would give different ids for the same input. */
export const TOKENIZER_VERSION = 1;
/** Largest tokenizer.json we will read. GPT-2's (50257 tokens) is ~1.4 MB. */
export const MAX_TOKENIZER_FILE_BYTES = 64 << 20;

/** The model of a tokenizer; built by the trainer or by the tokenizer.json codec. */
export interface TokenizerParts {
  /** UTF-8 bytes of every token, indexed by id; null exactly at eotId. */
  tokenBytes: (Uint8Array | null)[];
  /** Merges in rank order, flattened: [left0, right0, left1, right1, ...]. */
  merges: Int32Array;
  /** Id produced by each merge. */
  mergeResult: Int32Array;
  eotId: number;
}

const WORD_CACHE_MAX = 1 << 18;
const WORD_CACHE_MAX_CHARS = 64;
const TWO32 = 4294967296;

export class Tokenizer {
  readonly vocabSize: number;
  readonly eotId: number;
  private readonly tokenBytes: (Uint8Array | null)[];
  private readonly merges: Int32Array;
  private readonly mergeResult: Int32Array;
  private readonly byteToId: Int32Array;
  private readonly rank: Map<number, number>;
  private readonly cache = new Map<string, Int32Array>();
  private hashCache: string | null = null;

  /** Internal: use trainBpe, Tokenizer.fromJSON or Tokenizer.load. Parts must be consistent. */
  constructor(parts: TokenizerParts) {
    this.tokenBytes = parts.tokenBytes;
    this.vocabSize = parts.tokenBytes.length;
    this.eotId = parts.eotId;
    this.merges = parts.merges;
    this.mergeResult = parts.mergeResult;
    this.byteToId = new Int32Array(256).fill(-1);
    this.tokenBytes.forEach((b, id) => {
      if (b !== null && b.length === 1) this.byteToId[b[0]] = id;
    });
    this.rank = new Map();
    for (let r = 0; r < this.mergeResult.length; r++) {
      this.rank.set(this.merges[2 * r] * this.vocabSize + this.merges[2 * r + 1], r);
    }
  }

  static fromJSON(json: unknown, opts: { expectVocabSize?: number; source?: string } = {}): Tokenizer {
    return new Tokenizer(partsFromHfJson(json, opts));
  }

  /** Read a tokenizer.json (size-capped, validated). */
  static load(path: string, opts: { expectVocabSize?: number } = {}): Tokenizer {
    const text = readFileCapped(path, MAX_TOKENIZER_FILE_BYTES, 'tokenizer file');
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new CorruptFileError(path, `not valid JSON (truncated or corrupt?): ${(e as Error).message}`);
    }
    return Tokenizer.fromJSON(json, { ...opts, source: path });
  }

  /** UTF-8 bytes of a token (null for the special token). */
  tokenBytesOf(id: number): Uint8Array | null {
    this.checkId(id);
    return this.tokenBytes[id];
  }

  /** A token as text in GPT-2 byte-level form ("Ġthe"), or "<|endoftext|>". */
  tokenString(id: number): string {
    const b = this.tokenBytesOf(id);
    return b === null ? EOT_TOKEN : bytesToByteLevel(b);
  }

  /** Number of merges (rank order). */
  get mergeCount(): number {
    return this.mergeResult.length;
  }

  /** Merge r as [left id, right id, result id]. */
  merge(r: number): [number, number, number] {
    return [this.merges[2 * r], this.merges[2 * r + 1], this.mergeResult[r]];
  }

  /** Encode text; a literal "<|endoftext|>" in the text becomes eotId (as in HF tokenizers). */
  encode(text: string): number[] {
    if (typeof text !== 'string') throw new InvalidInputError('encode: text must be a string');
    const out = new TokenBuffer(Math.ceil(text.length / 3) + 16);
    const parts = text.split(EOT_TOKEN);
    for (let i = 0; i < parts.length; i++) {
      if (i > 0) out.push(this.eotId);
      this.encodeOrdinaryInto(parts[i], out);
    }
    return Array.from(out.view());
  }

  /** Encode text treating "<|endoftext|>" as ordinary characters (for untrusted documents). */
  encodeOrdinary(text: string): number[] {
    const out = new TokenBuffer(Math.ceil(text.length / 3) + 16);
    this.encodeOrdinaryInto(text, out);
    return Array.from(out.view());
  }

  /** Append the ids of `text` (no special tokens recognised) to `out`. */
  encodeOrdinaryInto(text: string, out: TokenBuffer): void {
    if (typeof text !== 'string') throw new InvalidInputError('encode: text must be a string');
    const re = pretokenRegex(); // exec loop, not match(): no array of every pre-token of a huge text
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      const w = m[0];
      let ids = this.cache.get(w);
      if (ids === undefined) {
        ids = this.bpeWord(utf8(w));
        if (w.length <= WORD_CACHE_MAX_CHARS) {
          if (this.cache.size >= WORD_CACHE_MAX) this.cache.clear();
          this.cache.set(w, ids);
        }
      }
      out.pushAll(ids);
    }
  }

  private pairRank(a: number, b: number): number {
    return this.rank.get(a * this.vocabSize + b) ?? -1;
  }

  /** BPE on one pre-token: lowest-rank pair first, leftmost on ties (heap of rank*2^32+pos). */
  private bpeWord(bytes: Uint8Array): Int32Array {
    const n = bytes.length;
    const tok = new Int32Array(n);
    for (let i = 0; i < n; i++) tok[i] = this.byteToId[bytes[i]];
    if (n < 2) return tok;
    const next = new Int32Array(n),
      prev = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap: number[] = [];
    const push = (v: number): void => {
      heap.push(v);
      let i = heap.length - 1;
      while (i > 0) {
        const p = (i - 1) >> 1;
        if (heap[p] <= v) break;
        heap[i] = heap[p];
        i = p;
      }
      heap[i] = v;
    };
    const pop = (): number => {
      const top = heap[0];
      const last = heap.pop()!;
      const len = heap.length;
      if (len > 0) {
        let i = 0;
        for (;;) {
          const l = 2 * i + 1;
          if (l >= len) break;
          const c = l + 1 < len && heap[l + 1] < heap[l] ? l + 1 : l;
          if (heap[c] >= last) break;
          heap[i] = heap[c];
          i = c;
        }
        heap[i] = last;
      }
      return top;
    };
    for (let i = 0; i + 1 < n; i++) {
      const r = this.pairRank(tok[i], tok[i + 1]);
      if (r >= 0) push(r * TWO32 + i);
    }
    while (heap.length > 0) {
      const e = pop();
      const r = Math.floor(e / TWO32);
      const i = e - r * TWO32;
      if (tok[i] < 0) continue;
      const j = next[i];
      if (j < 0 || this.pairRank(tok[i], tok[j]) !== r) continue;
      tok[i] = this.mergeResult[r];
      tok[j] = -1;
      const nj = next[j];
      next[i] = nj;
      if (nj >= 0) prev[nj] = i;
      const p = prev[i];
      if (p >= 0) {
        const rp = this.pairRank(tok[p], tok[i]);
        if (rp >= 0) push(rp * TWO32 + p);
      }
      if (nj >= 0) {
        const rn = this.pairRank(tok[i], tok[nj]);
        if (rn >= 0) push(rn * TWO32 + i);
      }
    }
    let count = 0;
    for (let i = 0; i >= 0; i = next[i]) count++;
    const out = new Int32Array(count);
    count = 0;
    for (let i = 0; i >= 0; i = next[i]) out[count++] = tok[i];
    return out;
  }

  private checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new InvalidInputError(`token id ${id} is out of range [0, ${this.vocabSize})`);
    }
  }

  /** Ids -> text. Invalid UTF-8 (e.g. a cut multi-byte character) decodes to U+FFFD. */
  decode(ids: ArrayLike<number>): string {
    const decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
    let text = '';
    let start = 0;
    const flush = (end: number): void => {
      let len = 0;
      for (let k = start; k < end; k++) len += this.tokenBytes[ids[k]]!.length;
      const bytes = new Uint8Array(len);
      let o = 0;
      for (let k = start; k < end; k++) {
        const b = this.tokenBytes[ids[k]]!;
        bytes.set(b, o);
        o += b.length;
      }
      text += decoder.decode(bytes);
    };
    for (let k = 0; k < ids.length; k++) {
      this.checkId(ids[k]);
      if (this.tokenBytes[ids[k]] === null) {
        flush(k);
        text += EOT_TOKEN;
        start = k + 1;
      }
    }
    flush(ids.length);
    return text;
  }

  /** Hugging Face tokenizer.json object (loadable by @huggingface/tokenizers and `tokenizers`). */
  toJSON(): HfTokenizerJson {
    return toHfJson(this);
  }

  /** A matching tokenizer_config.json object (second argument of HF tokenizers.js' Tokenizer). */
  hfConfig(): Record<string, unknown> {
    return hfConfigJson(this);
  }

  /** The canonical tokenizer.json text: exactly what save() writes and hash() digests. */
  serialize(): string {
    return JSON.stringify(this.toJSON(), null, 2) + '\n';
  }

  /** sha256 (hex) of serialize(), i.e. of the saved tokenizer.json file. */
  hash(): string {
    this.hashCache ??= createHash('sha256').update(this.serialize()).digest('hex');
    return this.hashCache;
  }

  /** Write tokenizer.json atomically (temp file + rename). */
  save(path: string): void {
    atomicWriteFile(path, this.serialize());
  }
}
