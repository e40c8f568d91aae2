/**
 * What evaluation and sampling need from a decoder-only language model, whichever family it is:
 * `GPT` (gpt.ts) and `Llama` (llama.ts) both provide it. Logits and loss are computed without a
 * KV cache: each call runs the whole window.
 */
export interface CausalLM {
  readonly config: { readonly ctx: number; readonly vocabSize: number };
  /** Logits [B*T*V] for `tokens` (a copy, safe to keep). */
  logits(tokens: Int32Array, B: number, T: number): Float32Array;
  /** Mean cross-entropy (nats/token) of predicting `targets` (−1 = ignore), no gradients. */
  loss(tokens: Int32Array, targets: Int32Array, B: number, T: number): number;
}
