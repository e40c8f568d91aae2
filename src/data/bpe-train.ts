/**
 * Byte-level BPE training, written by hand: Tessera must train a tokenizer and export it in
 * Hugging Face format from plain Node, with no Python or Rust toolchain on the machine.
 *
 * Algorithm (as in GPT-2 / HF tokenizers): pre-tokenize with the GPT-2 regex, count each
 * distinct pre-token ("word"), start from its UTF-8 bytes, and repeatedly merge the most
 * frequent adjacent pair, counted over words weighted by their frequency. Pairs never cross
 * pre-token boundaries or the <|endoftext|> separator.
 *
 * Speed: pair counts are updated incrementally, only in the words that contain the merged
 * pair (an index pair -> words), and the best pair comes from a lazy max-heap: counts of
 * existing pairs only ever decrease, so a popped entry whose count is stale is re-pushed with
 * its current count. Ties are broken deterministically by the smaller (left id, right id),
 * ids being byte values for bytes and 256 + rank for merged tokens.
 */
import { InvalidInputError } from '../util/errors.js';
import { EOT_TOKEN, pretokenRegex, utf8 } from './bytelevel.js';
import { MAX_VOCAB, Tokenizer } from './tokenizer.js';

export interface TrainBpeOptions {
  /** Total vocabulary: 256 byte tokens + merges + 1 special token (<|endoftext|>). */
  vocabSize: number;
  /** Called every few merges with (merges done, merges total). */
  onProgress?: (done: number, total: number) => void;
}

/** Count the distinct pre-tokens of the text (documents may be given one by one). */
function countWords(text: string | Iterable<string>): Map<string, number> {
  const counts = new Map<string, number>();
  const chunks = typeof text === 'string' ? [text] : text;
  for (const chunk of chunks) {
    if (typeof chunk !== 'string') throw new InvalidInputError('trainBpe: text chunks must be strings');
    for (const section of chunk.split(EOT_TOKEN)) {
      const re = pretokenRegex();
      for (let m = re.exec(section); m !== null; m = re.exec(section)) counts.set(m[0], (counts.get(m[0]) ?? 0) + 1);
    }
  }
  return counts;
}

/** Lazy max-heap of (count, pair key); larger count first, then smaller key. */
class PairHeap {
  private counts: number[] = [];
  private keys: number[] = [];

  get size(): number {
    return this.counts.length;
  }

  private before(i: number, j: number): boolean {
    const ci = this.counts[i],
      cj = this.counts[j];
    return ci > cj || (ci === cj && this.keys[i] < this.keys[j]);
  }

  private swap(i: number, j: number): void {
    const c = this.counts[i];
    this.counts[i] = this.counts[j];
    this.counts[j] = c;
    const k = this.keys[i];
    this.keys[i] = this.keys[j];
    this.keys[j] = k;
  }

  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    let i = this.counts.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }

  /** Removes the top; returns [count, key]. Caller checks size first. */
  pop(): [number, number] {
    const top: [number, number] = [this.counts[0], this.keys[0]];
    const lastC = this.counts.pop()!,
      lastK = this.keys.pop()!;
    const n = this.counts.length;
    if (n > 0) {
      this.counts[0] = lastC;
      this.keys[0] = lastK;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1,
          r = l + 1;
        let m = i;
        if (l < n && this.before(l, m)) m = l;
        if (r < n && this.before(r, m)) m = r;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
    return top;
  }
}

export function trainBpe(text: string | Iterable<string>, opts: TrainBpeOptions): Tokenizer {
  const { vocabSize, onProgress } = opts;
  if (!Number.isInteger(vocabSize) || vocabSize < 257 || vocabSize > MAX_VOCAB) {
    throw new InvalidInputError(
      `vocabSize must be an integer in [257, ${MAX_VOCAB}] (256 bytes + merges + <|endoftext|>), got ${vocabSize}`,
    );
  }
  const numMerges = vocabSize - 257;
  const base = vocabSize; // pair key = left * base + right (small ints stay fast Map keys)

  // Words as byte-id arrays, with frequencies.
  const counts = countWords(text);
  const words: Int32Array[] = [];
  const freq: number[] = [];
  for (const [w, c] of counts) {
    const bytes = utf8(w);
    if (bytes.length < 2) continue; // a single byte holds no pair
    words.push(Int32Array.from(bytes));
    freq.push(c);
  }
  counts.clear();

  // Initial pair counts and the pair -> words index.
  const pairCount = new Map<number, number>();
  const where = new Map<number, number[]>();
  for (let w = 0; w < words.length; w++) {
    const s = words[w],
      f = freq[w];
    for (let i = 0; i + 1 < s.length; i++) {
      const key = s[i] * base + s[i + 1];
      pairCount.set(key, (pairCount.get(key) ?? 0) + f);
      const list = where.get(key);
      if (list === undefined) where.set(key, [w]);
      else if (list[list.length - 1] !== w) list.push(w);
    }
  }
  const heap = new PairHeap();
  for (const [key, c] of pairCount) heap.push(c, key);

  // Token table: bytes 0..255, then one id per new byte string, <|endoftext|> last.
  const tokenBytes: (Uint8Array | null)[] = [];
  const idOf = new Map<string, number>(); // latin1 key of the bytes -> id
  for (let b = 0; b < 256; b++) {
    tokenBytes.push(Uint8Array.of(b));
    idOf.set(String.fromCharCode(b), b);
  }
  const eotId = vocabSize - 1;
  const merges: number[] = [];
  const mergeResult: number[] = [];
  const mergedPairs = new Set<number>();
  const stamp = new Int32Array(words.length).fill(-1);
  const add = (key: number, delta: number): void => {
    const c = (pairCount.get(key) ?? 0) + delta;
    if (c === 0) pairCount.delete(key);
    else pairCount.set(key, c);
  };
  const progressEvery = Math.max(1, Math.floor(numMerges / 100));

  // One new token per iteration, except in the rare case where a merge rebuilds a byte
  // string that already is a token (then the merge reuses that id, as HF tokenizers does).
  for (let m = 0; tokenBytes.length < eotId; m++) {
    // Best pair: pop until an entry is current.
    let bestKey = -1;
    while (heap.size > 0) {
      const [c, key] = heap.pop();
      const cur = pairCount.get(key) ?? 0;
      if (cur === c) {
        bestKey = key;
        break;
      }
      if (cur > 0) heap.push(cur, key);
    }
    if (bestKey < 0) {
      throw new InvalidInputError(
        `training text is too small for vocabSize ${vocabSize}: only ${tokenBytes.length - 256} tokens could be ` +
          `learned (max vocabSize ${tokenBytes.length + 1}); use a smaller vocabulary or more text`,
      );
    }
    const a = Math.floor(bestKey / base),
      b = bestKey % base;
    const ab = new Uint8Array(tokenBytes[a]!.length + tokenBytes[b]!.length);
    ab.set(tokenBytes[a]!);
    ab.set(tokenBytes[b]!, tokenBytes[a]!.length);
    const abKey = Buffer.from(ab.buffer, ab.byteOffset, ab.length).toString('latin1');
    let z = idOf.get(abKey);
    if (z === undefined) {
      z = tokenBytes.length;
      tokenBytes.push(ab);
      idOf.set(abKey, z);
    }
    // A pair can only come back after an id was reused; then re-apply it, don't list it twice.
    if (!mergedPairs.has(bestKey)) {
      mergedPairs.add(bestKey);
      merges.push(a, b);
      mergeResult.push(z);
    }

    // Apply the merge in every word that contains (a, b), updating counts locally.
    const touched = new Set<number>();
    for (const w of where.get(bestKey)!) {
      if (stamp[w] === m) continue;
      stamp[w] = m;
      const s = words[w],
        f = freq[w];
      let hit = false;
      for (let i = 0; i + 1 < s.length; i++)
        if (s[i] === a && s[i + 1] === b) {
          hit = true;
          break;
        }
      if (!hit) continue; // stale index entry
      const out = new Int32Array(s.length);
      let n = 0;
      for (let i = 0; i < s.length;) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          add(bestKey, -f);
          if (n > 0) {
            const prev = out[n - 1];
            add(prev * base + a, -f);
            const k = prev * base + z;
            add(k, f);
            touched.add(k);
            where.get(k) ?? where.set(k, []);
            where.get(k)!.push(w);
          }
          if (i + 2 < s.length) {
            const next = s[i + 2];
            add(b * base + next, -f);
            const k = z * base + next;
            add(k, f);
            touched.add(k);
            where.get(k) ?? where.set(k, []);
            where.get(k)!.push(w);
          }
          out[n++] = z;
          i += 2;
        } else {
          out[n++] = s[i++];
        }
      }
      words[w] = out.slice(0, n);
    }
    where.delete(bestKey);
    pairCount.delete(bestKey);
    for (const k of touched) {
      const c = pairCount.get(k);
      if (c !== undefined) heap.push(c, k);
    }
    const done = tokenBytes.length - 256;
    if (onProgress && (done % progressEvery === 0 || done === numMerges)) onProgress(done, numMerges);
  }
  if (onProgress && numMerges === 0) onProgress(0, 0);
  tokenBytes.push(null); // <|endoftext|>
  return new Tokenizer({
    tokenBytes,
    merges: Int32Array.from(merges),
    mergeResult: Int32Array.from(mergeResult),
    eotId,
  });
}
