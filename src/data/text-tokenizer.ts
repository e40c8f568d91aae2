/**
 * The tokenizer a trained or imported model is read and written with, as `tessera eval` and
 * `tessera generate` need it: a document becomes ids (with the token that starts a document),
 * ids become text, and generation stops at an end-of-text id.
 *
 * Two sources:
 *   - Tessera's own byte-level BPE (tokenizer.ts; GPT-2 checkpoints trained here or imported
 *     with GPT-2's tokenizer.json): a document starts with <|endoftext|>, which also ends one.
 *   - Any Hugging Face tokenizer.json (Llama 2's SentencePiece-style BPE, Llama 3's tiktoken-style
 *     BPE, SmolLM's, ...) through @huggingface/tokenizers: Tessera's BPE implements GPT-2's
 *     layout only, and that library implements every normalizer, pre-tokenizer, model, post-
 *     processor and decoder tokenizer.json can name. A document starts with what the file's
 *     post-processor puts before a text (Llama's <s> / <|begin_of_text|>), else with the
 *     end-of-text id (GPT-2's convention).
 * The end-of-text ids are the checkpoint's (`tessera import --hf` keeps config.json's
 * eos_token_id), else the first of the usual names the vocabulary has.
 */
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import { CorruptFileError, InvalidInputError, MismatchError } from '../util/errors.js';
import { readFileCapped } from './files.js';
import { MAX_TOKENIZER_FILE_BYTES, type Tokenizer } from './tokenizer.js';

/** Names of end-of-text tokens, in the order they are looked for. */
export const EOS_TOKEN_NAMES = ['<|endoftext|>', '</s>', '<|end_of_text|>', '<|eot_id|>', '<|im_end|>'];

export interface TextTokenizer {
  /** 'tessera': Tessera's byte-level BPE; 'hf': a tokenizer.json through @huggingface/tokenizers. */
  readonly kind: 'tessera' | 'hf';
  /** One more than the largest id it produces. */
  readonly vocabSize: number;
  /** Generation stops at any of these (the first is the document separator when there is no BOS). */
  readonly eosIds: readonly number[];
  /** The id the tokenizer puts before every text (Llama's <s>), or null (GPT-2). */
  readonly bosId: number | null;
  /** A document as the model saw documents in training: its start id, then the text's ids. */
  encodeDocument(text: string): number[];
  decode(ids: readonly number[]): string;
}

/** Tessera's own tokenizer: documents start with <|endoftext|>. */
export function tesseraTextTokenizer(tok: Tokenizer): TextTokenizer {
  return {
    kind: 'tessera',
    vocabSize: tok.vocabSize,
    eosIds: [tok.eotId],
    bosId: null,
    encodeDocument: (text) => [tok.eotId, ...tok.encodeOrdinary(text)],
    decode: (ids) => tok.decode(ids),
  };
}

export interface HfTextTokenizerOptions {
  /** The model's vocabulary: every id the tokenizer can produce must be below it. */
  vocabSize: number;
  /** End-of-text ids the checkpoint names (config.json's eos_token_id); default: by name. */
  eosIds?: readonly number[];
}

/**
 * Loads a Hugging Face tokenizer.json (size-capped, JSON-checked) with @huggingface/tokenizers.
 * Throws CorruptFileError for an unreadable or unsupported file, MismatchError when its ids do
 * not fit the model's vocabulary, InvalidInputError when no end-of-text id can be found.
 */
export function loadHfTextTokenizer(path: string, o: HfTextTokenizerOptions): TextTokenizer {
  const text = readFileCapped(path, MAX_TOKENIZER_FILE_BYTES, 'tokenizer file');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CorruptFileError(path, `not valid JSON: ${(e as Error).message}`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json))
    throw new CorruptFileError(path, 'not a tokenizer.json object');
  let tok: HFTokenizer;
  try {
    tok = new HFTokenizer(json, {});
  } catch (e) {
    throw new CorruptFileError(path, `@huggingface/tokenizers cannot load it: ${(e as Error).message}`, { cause: e });
  }
  let maxId = -1;
  for (const id of tok.get_vocab(true).values()) maxId = Math.max(maxId, id);
  if (maxId >= o.vocabSize)
    throw new MismatchError(`${path}: the tokenizer has ids up to ${maxId}, the model's vocabulary is ${o.vocabSize}`);
  let eosIds = (o.eosIds ?? []).filter((id) => Number.isInteger(id) && id >= 0 && id < o.vocabSize);
  if (!eosIds.length) {
    for (const name of EOS_TOKEN_NAMES) {
      const id = tok.token_to_id(name);
      if (id !== undefined) {
        eosIds = [id];
        break;
      }
    }
  }
  if (!eosIds.length)
    throw new InvalidInputError(`${path}: no end-of-text token (none of ${EOS_TOKEN_NAMES.join(', ')})`);
  // What the post-processor puts before a text: encode('') with special tokens is that prefix
  // (and any suffix, which we do not use: a document must not end before it is written).
  const template = tok.encode('', { add_special_tokens: true }).ids;
  const bosId = template.length > 0 && !eosIds.includes(template[0]) ? template[0] : null;
  const start = bosId ?? eosIds[0];
  return {
    kind: 'hf',
    vocabSize: maxId + 1,
    eosIds,
    bosId,
    encodeDocument: (t) => [start, ...tok.encode(t, { add_special_tokens: false }).ids],
    decode: (ids) => tok.decode([...ids], { skip_special_tokens: true }),
  };
}
