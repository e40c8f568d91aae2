/**
 * Fine-tuning data: JSONL files whose lines are either {"text": "..."} (train on every token) or
 * {"prompt": "...", "completion": "..."} (train only on the completion: the loss is masked to it).
 *
 * The examples become one token stream with a parallel loss mask, packed end to end like the
 * pre-training stream (each example preceded by the end-of-text token, which also ends the
 * previous one):
 *   eot p₁ … pₙ c₁ … cₘ eot p′₁ …      mask 0 0 … 0 1 … 1 1 0 …
 * mask[i] = 1 when token i is a token the model should learn to predict: every token of a text
 * example, a completion's tokens and the eot that ends it. A window of T+1 tokens becomes a batch
 * row whose target at t is tokens[s+t+1], or −1 where mask[s+t+1] = 0; the models' cross-entropy
 * (kernels' crossEntropyForwardBackward) gives a −1 target zero loss and zero gradient, and the
 * mean is over the unmasked targets only (gpt.ts / llama.ts lossImpl).
 *
 * Bad lines (not JSON, not an object, both or neither form, a non-string field, an empty
 * completion) are refused with an InvalidInputError naming the file and line. Sizes are capped
 * before reading. The tokenizer is the caller's (`encode`), so an imported model's own
 * tokenizer can be used.
 */
import { z } from 'zod';
import { InvalidInputError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import type { Batch } from './batches.js';
import { decodeUtf8, readBytesCapped } from './files.js';

export interface FinetuneExample {
  /** Context the loss does not train on ('' for a text example). */
  prompt: string;
  /** What the loss trains on (the whole text of a text example). */
  completion: string;
}

/** Cap on a fine-tuning file (bytes). */
export const MAX_FINETUNE_BYTES = 512 << 20;
/** Cap on the packed stream (tokens), checked before it is allocated. */
export const MAX_FINETUNE_TOKENS = 2 ** 30;

const TextLine = z.object({ text: z.string() }).strict();
const PairLine = z.object({ prompt: z.string(), completion: z.string().min(1) }).strict();

/** Examples of a JSONL text (blank lines skipped); `source` names the file in errors. */
export function parseFinetuneJsonl(text: string, source: string): FinetuneExample[] {
  const out: FinetuneExample[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '') return;
    const where = `${source}:${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new InvalidInputError(`${where}: not valid JSON: ${(e as Error).message}`);
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v))
      throw new InvalidInputError(`${where}: each line must be a JSON object`);
    const keys = Object.keys(v);
    if ('text' in v && ('prompt' in v || 'completion' in v))
      throw new InvalidInputError(`${where}: give either "text" or "prompt" and "completion", not both`);
    if ('text' in v) {
      const r = TextLine.safeParse(v);
      if (!r.success)
        throw new InvalidInputError(
          `${where}: a text line is {"text": string} (got fields ${keys.join(', ')}; ${r.error.issues[0]?.message})`,
        );
      if (r.data.text.trim() === '') return;
      out.push({ prompt: '', completion: r.data.text });
      return;
    }
    const r = PairLine.safeParse(v);
    if (!r.success) {
      const missing = ['prompt', 'completion'].filter((k) => !(k in v));
      throw new InvalidInputError(
        missing.length
          ? `${where}: missing "${missing.join('" and "')}" (a line is {"text"} or {"prompt", "completion"})`
          : `${where}: "prompt" must be a string and "completion" a non-empty string, and no other fields (${r.error.issues[0]?.path.join('.')}: ${r.error.issues[0]?.message})`,
      );
    }
    out.push(r.data);
  });
  if (out.length === 0) throw new InvalidInputError(`${source} holds no examples`);
  return out;
}

/** Examples of a JSONL file, read with a size cap. */
export function readFinetuneJsonl(path: string, maxBytes = MAX_FINETUNE_BYTES): FinetuneExample[] {
  const bytes = readBytesCapped(path, maxBytes, 'fine-tuning file');
  return parseFinetuneJsonl(decodeUtf8(bytes, path), path);
}

/** A packed token stream and its loss mask (1 = predict this token). */
export interface MaskedStream {
  tokens: Int32Array;
  mask: Uint8Array;
}

/**
 * Pack `examples` as described above, tokenised by `encode` (which must not add special tokens);
 * `eot` separates and ends examples.
 */
export function packExamples(
  examples: readonly FinetuneExample[],
  encode: (text: string) => ArrayLike<number>,
  eot: number,
  vocabSize: number,
): MaskedStream {
  if (!Number.isInteger(eot) || eot < 0 || eot >= vocabSize)
    throw new InvalidInputError(`end-of-text id ${eot} is outside the vocabulary [0, ${vocabSize})`);
  const parts: { p: ArrayLike<number>; c: ArrayLike<number> }[] = [];
  let n = 1;
  for (const ex of examples) {
    const p = ex.prompt === '' ? [] : encode(ex.prompt);
    const c = encode(ex.completion);
    n += p.length + c.length + 1;
    if (n > MAX_FINETUNE_TOKENS)
      throw new InvalidInputError(`fine-tuning data is over ${MAX_FINETUNE_TOKENS} tokens; split it`);
    parts.push({ p, c });
  }
  const tokens = new Int32Array(n),
    mask = new Uint8Array(n);
  let o = 0;
  tokens[o++] = eot;
  const put = (ids: ArrayLike<number>, m: number) => {
    for (let i = 0; i < ids.length; i++) {
      const t = ids[i];
      if (!Number.isInteger(t) || t < 0 || t >= vocabSize)
        throw new InvalidInputError(`token id ${t} is outside the vocabulary [0, ${vocabSize})`);
      tokens[o] = t;
      mask[o++] = m;
    }
  };
  for (const { p, c } of parts) {
    put(p, 0);
    put(c, 1);
    tokens[o] = eot;
    mask[o++] = 1;
  }
  return { tokens, mask };
}

/** Row `row` of `out` from the window starting at `s`: masked targets are −1. */
function fillMasked(st: MaskedStream, s: number, T: number, out: Batch, row: number): void {
  const o = row * T;
  for (let t = 0; t < T; t++) {
    out.inputs[o + t] = st.tokens[s + t];
    out.targets[o + t] = st.mask[s + t + 1] ? st.tokens[s + t + 1] : -1;
  }
}

function checkStream(st: MaskedStream, B: number, T: number): void {
  if (!Number.isInteger(B) || B < 1 || !Number.isInteger(T) || T < 1)
    throw new InvalidInputError(`batch shape must be positive integers, got B=${B} T=${T}`);
  if (st.mask.length !== st.tokens.length)
    throw new InvalidInputError(`mask has ${st.mask.length} entries for ${st.tokens.length} tokens`);
  if (st.tokens.length < T + 1)
    throw new InvalidInputError(`fine-tuning stream has ${st.tokens.length} tokens, fewer than one window of ${T + 1}`);
}

/** Random windows of T+1 from a seeded PRNG, as BatchSampler, with the loss mask applied. */
export class MaskedBatchSampler {
  readonly rng: Rng;
  constructor(
    readonly stream: MaskedStream,
    readonly B: number,
    readonly T: number,
    seed: number | bigint,
  ) {
    checkStream(stream, B, T);
    this.rng = new Rng(seed);
  }

  next(): Batch {
    const { B, T } = this;
    const batch = { inputs: new Int32Array(B * T), targets: new Int32Array(B * T) };
    const starts = this.stream.tokens.length - T;
    for (let b = 0; b < B; b++) fillMasked(this.stream, this.rng.nextInt(starts), T, batch, b);
    return batch;
  }
}

/** Non-overlapping windows over the whole stream, full batches only (at most maxBatches), masked. */
export function maskedEvalBatches(st: MaskedStream, B: number, T: number, maxBatches = Infinity): Batch[] {
  checkStream(st, B, T);
  const windows = Math.floor((st.tokens.length - 1) / T);
  const batches = Math.min(Math.floor(windows / B), maxBatches);
  if (batches < 1)
    throw new InvalidInputError(
      `fine-tuning stream has ${st.tokens.length} tokens, too few for one batch of ${B}×${T + 1}`,
    );
  const out: Batch[] = [];
  for (let i = 0; i < batches; i++) {
    const batch = { inputs: new Int32Array(B * T), targets: new Int32Array(B * T) };
    for (let b = 0; b < B; b++) fillMasked(st, (i * B + b) * T, T, batch, b);
    out.push(batch);
  }
  return out;
}
