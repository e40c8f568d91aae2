/**
 * Hugging Face tokenizer.json codec for byte-level BPE (GPT-2 layout), so our tokenizers load
 * in @huggingface/tokenizers / `tokenizers` / transformers, and GPT-2-style files load here.
 *
 * Import is strict: the structure is checked with zod, then the vocabulary for consistency
 * (dense ids, all 256 byte tokens, every other token made by exactly the merges listed, one
 * <|endoftext|> special token). Any problem is a CorruptFileError naming the file; a vocab
 * size other than the expected one is a MismatchError naming the file and both sizes.
 */
import { z } from 'zod';
import { CorruptFileError, MismatchError } from '../util/errors.js';
import { EOT_TOKEN, byteLevelToBytes } from './bytelevel.js';
import type { Tokenizer, TokenizerParts } from './tokenizer.js';

const MAX_VOCAB = 1 << 20; // same as tokenizer.ts (not imported: avoids an import cycle at load)
const MAX_TOKEN_CHARS = 1 << 16;

const ByteLevelSchema = z.object({
  type: z.literal('ByteLevel'),
  add_prefix_space: z.boolean().optional(),
  trim_offsets: z.boolean().optional(),
  use_regex: z.boolean().optional(),
});

const AddedTokenSchema = z.object({
  id: z
    .number()
    .int()
    .min(0)
    .max(MAX_VOCAB - 1),
  content: z.string().max(1024),
  special: z.boolean().optional(),
  single_word: z.boolean().optional(),
  lstrip: z.boolean().optional(),
  rstrip: z.boolean().optional(),
  normalized: z.boolean().optional(),
});

const TokenString = z.string().min(1).max(MAX_TOKEN_CHARS);

const HfJsonSchema = z.object({
  version: z.string().max(32).optional(),
  truncation: z.null().optional(),
  padding: z.null().optional(),
  added_tokens: z.array(AddedTokenSchema).max(64),
  normalizer: z.null().optional(),
  pre_tokenizer: ByteLevelSchema.extend({
    add_prefix_space: z.literal(false),
    use_regex: z.literal(true).optional(),
  }),
  post_processor: ByteLevelSchema.nullable().optional(),
  decoder: ByteLevelSchema,
  model: z.object({
    type: z.literal('BPE'),
    dropout: z.null().optional(),
    unk_token: z.null().optional(),
    continuing_subword_prefix: z.union([z.null(), z.literal('')]).optional(),
    end_of_word_suffix: z.union([z.null(), z.literal('')]).optional(),
    fuse_unk: z.boolean().optional(),
    byte_fallback: z.literal(false).optional(),
    ignore_merges: z.literal(false).optional(),
    // Checked entry by entry below (zod records drop a "__proto__" key, a legal token).
    vocab: z.custom<Record<string, unknown>>(
      (v) => typeof v === 'object' && v !== null && !Array.isArray(v),
      'expected an object',
    ),
    merges: z
      .array(z.union([z.string().max(2 * MAX_TOKEN_CHARS + 1), z.tuple([TokenString, TokenString])]))
      .max(MAX_VOCAB),
  }),
});

/** The tokenizer.json object we write. */
export interface HfTokenizerJson {
  version: string;
  truncation: null;
  padding: null;
  added_tokens: Array<{
    id: number;
    content: string;
    single_word: boolean;
    lstrip: boolean;
    rstrip: boolean;
    normalized: boolean;
    special: boolean;
  }>;
  normalizer: null;
  pre_tokenizer: { type: 'ByteLevel'; add_prefix_space: boolean; trim_offsets: boolean; use_regex: boolean };
  post_processor: { type: 'ByteLevel'; add_prefix_space: boolean; trim_offsets: boolean; use_regex: boolean };
  decoder: { type: 'ByteLevel'; add_prefix_space: boolean; trim_offsets: boolean; use_regex: boolean };
  model: {
    type: 'BPE';
    dropout: null;
    unk_token: null;
    continuing_subword_prefix: null;
    end_of_word_suffix: null;
    fuse_unk: boolean;
    byte_fallback: boolean;
    ignore_merges: boolean;
    vocab: Record<string, number>;
    merges: string[];
  };
}

export function toHfJson(tok: Tokenizer): HfTokenizerJson {
  // Null prototype: a token spelled "__proto__" must become an ordinary key.
  const vocab = Object.create(null) as Record<string, number>;
  for (let id = 0; id < tok.vocabSize; id++) vocab[tok.tokenString(id)] = id;
  const merges: string[] = [];
  for (let r = 0; r < tok.mergeCount; r++) {
    const [a, b] = tok.merge(r);
    merges.push(`${tok.tokenString(a)} ${tok.tokenString(b)}`);
  }
  const byteLevel = (trimOffsets: boolean) => ({
    type: 'ByteLevel' as const,
    add_prefix_space: false,
    trim_offsets: trimOffsets,
    use_regex: true,
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [
      {
        id: tok.eotId,
        content: EOT_TOKEN,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      },
    ],
    normalizer: null,
    pre_tokenizer: byteLevel(true),
    post_processor: byteLevel(false),
    decoder: byteLevel(true),
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
}

/** tokenizer_config.json companion (GPT-2 style; no cleanup, so decode is exact). */
export function hfConfigJson(tok: Tokenizer): Record<string, unknown> {
  return {
    tokenizer_class: 'GPT2Tokenizer',
    add_prefix_space: false,
    bos_token: EOT_TOKEN,
    eos_token: EOT_TOKEN,
    unk_token: EOT_TOKEN,
    clean_up_tokenization_spaces: false,
    added_tokens_decoder: {
      [String(tok.eotId)]: {
        content: EOT_TOKEN,
        lstrip: false,
        normalized: false,
        rstrip: false,
        single_word: false,
        special: true,
      },
    },
  };
}

export function partsFromHfJson(json: unknown, opts: { expectVocabSize?: number; source?: string }): TokenizerParts {
  const source = opts.source ?? '<tokenizer.json>';
  const fail = (msg: string): never => {
    throw new CorruptFileError(source, msg);
  };
  const parsed = HfJsonSchema.safeParse(json);
  if (!parsed.success) fail(`not a supported byte-level BPE tokenizer.json:\n${z.prettifyError(parsed.error)}`);
  const { added_tokens: added, model } = parsed.data!;

  if (added.length !== 1 || added[0].content !== EOT_TOKEN || added[0].special !== true) {
    fail(
      `added_tokens must be exactly one special ${EOT_TOKEN} token, found [${added.map((t) => JSON.stringify(t.content)).join(', ')}]`,
    );
  }
  const eotId = added[0].id;

  // Vocabulary: dense ids 0..V-1, one string per id.
  const entries = Object.entries(model.vocab);
  const eotInVocab = Object.prototype.hasOwnProperty.call(model.vocab, EOT_TOKEN);
  const vocabSize = entries.length + (eotInVocab ? 0 : 1);
  if (vocabSize > MAX_VOCAB) fail(`vocabulary has ${vocabSize} tokens, more than the limit of ${MAX_VOCAB}`);
  if (eotId >= vocabSize) fail(`${EOT_TOKEN} has id ${eotId} but the vocabulary has only ${vocabSize} tokens`);
  const tokenBytes = new Array<Uint8Array | null>(vocabSize);
  const filled = new Uint8Array(vocabSize);
  filled[eotId] = 1;
  tokenBytes[eotId] = null;
  for (const [token, id] of entries) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= vocabSize) {
      fail(
        `vocab entry ${JSON.stringify(token)} has id ${JSON.stringify(id)}, expected an integer in [0, ${vocabSize}) (ids must be dense)`,
      );
    }
    const i = id as number;
    if (token === EOT_TOKEN) {
      if (i !== eotId) fail(`${EOT_TOKEN} has id ${i} in the vocab but ${eotId} in added_tokens`);
      continue;
    }
    if (filled[i]) fail(`id ${i} is used twice in the vocab (ids must be dense and unique)`);
    if (token.length === 0 || token.length > MAX_TOKEN_CHARS)
      fail(`vocab token with id ${i} has bad length ${token.length}`);
    const bytes = byteLevelToBytes(token);
    if (bytes === null) fail(`vocab token ${JSON.stringify(token)} (id ${i}) is not in GPT-2 byte-level form`);
    filled[i] = 1;
    tokenBytes[i] = bytes;
  }
  const singleBytes = tokenBytes.filter((b) => b !== null && b.length === 1).length;
  if (singleBytes !== 256) fail(`vocabulary must contain all 256 byte tokens, found ${singleBytes}`);

  // Merges: both sides and the concatenation must be tokens; no pair twice.
  const idOf = new Map<string, number>();
  for (const [token, id] of entries) idOf.set(token, id as number);
  const merges = new Int32Array(2 * model.merges.length);
  const mergeResult = new Int32Array(model.merges.length);
  const seenPairs = new Set<number>();
  const produced = new Uint8Array(vocabSize);
  model.merges.forEach((m, r) => {
    const pair: string[] = typeof m === 'string' ? m.split(' ') : m;
    if (pair.length !== 2 || pair[0] === '' || pair[1] === '')
      fail(`merge #${r} ${JSON.stringify(m)} is not two tokens`);
    const a = idOf.get(pair[0]),
      b = idOf.get(pair[1]),
      c = idOf.get(pair[0] + pair[1]);
    if (a === undefined || b === undefined || a === eotId || b === eotId)
      fail(`merge #${r} ${JSON.stringify(m)} uses a token missing from the vocab`);
    if (c === undefined)
      fail(`merge #${r} ${JSON.stringify(m)} produces ${JSON.stringify(pair[0] + pair[1])}, missing from the vocab`);
    const key = a! * vocabSize + b!;
    if (seenPairs.has(key)) fail(`merge #${r} ${JSON.stringify(m)} appears twice`);
    seenPairs.add(key);
    merges[2 * r] = a!;
    merges[2 * r + 1] = b!;
    mergeResult[r] = c!;
    produced[c!] = 1;
  });
  let producedCount = 0;
  for (let i = 0; i < vocabSize; i++) producedCount += produced[i];
  if (vocabSize !== 256 + producedCount + 1) {
    fail(
      `inconsistent vocabulary: it has ${vocabSize} tokens, but 256 bytes + ${producedCount} merged tokens + 1 special = ${257 + producedCount}`,
    );
  }
  if (opts.expectVocabSize !== undefined && opts.expectVocabSize !== vocabSize) {
    throw new MismatchError(
      `${source}: tokenizer has vocab size ${vocabSize}, but ${opts.expectVocabSize} was expected`,
    );
  }
  return { tokenBytes, merges, mergeResult, eotId };
}
