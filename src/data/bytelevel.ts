/**
 * GPT-2 byte-level conventions, shared by training, encoding and the tokenizer.json codec:
 * the pre-tokenizer regex and the bytes_to_unicode table that renders each byte as a
 * printable character (so that every token is a visible JSON string, as in GPT-2's files).
 */

/** The special token that separates documents (BOS/EOS), as in GPT-2. */
export const EOT_TOKEN = '<|endoftext|>';

/**
 * GPT-2's pre-tokenizer pattern, exactly the one @huggingface/tokenizers (JS) uses for
 * ByteLevel with use_regex=true. Each match is merged independently.
 */
export const PRETOKEN_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/** A fresh global regex (global regexes carry lastIndex state, so never share one). */
export function pretokenRegex(): RegExp {
  return new RegExp(PRETOKEN_PATTERN, 'gu');
}

/** GPT-2 bytes_to_unicode: byte value -> single printable character. */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const table = new Array<string>(256);
  for (let i = 0; i < 256; i++) table[bs[i]] = String.fromCharCode(cs[i]);
  return table;
})();

/** Inverse of BYTE_TO_CHAR: char code -> byte, or -1 for characters outside the alphabet. */
const CHAR_TO_BYTE: Int16Array = (() => {
  const t = new Int16Array(512).fill(-1);
  BYTE_TO_CHAR.forEach((c, b) => {
    t[c.charCodeAt(0)] = b;
  });
  return t;
})();

/** Bytes -> byte-level string, e.g. [0x20, 0x61] -> "Ġa". */
export function bytesToByteLevel(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += BYTE_TO_CHAR[bytes[i]];
  return s;
}

/** Byte-level string -> bytes, or null when it contains a character outside the alphabet. */
export function byteLevelToBytes(s: string): Uint8Array | null {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const b = c < 512 ? CHAR_TO_BYTE[c] : -1;
    if (b < 0) return null;
    out[i] = b;
  }
  return out;
}

const encoder = new TextEncoder();

/** UTF-8 bytes of a string (lone surrogates become U+FFFD, like TextEncoder everywhere). */
export function utf8(s: string): Uint8Array {
  return encoder.encode(s);
}
