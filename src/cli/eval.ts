/**
 * `tessera eval`: mean next-token loss of a checkpoint (GPT-2, or a Llama-family one as
 * `tessera import --hf` writes; optionally plus a LoRA adapter) on a text file.
 */
import type { Command } from 'commander';
import { int } from './args.js';
import { say, result } from './output.js';
import { loadKernels } from '../kernels/index.js';
import { loadAnyModel, streamLoss } from './load.js';
import { readDocuments } from '../data/index.js';

export function register(program: Command): void {
  program
    .command('eval')
    .description('mean next-token loss (nats/token) of a checkpoint on a text, directory or JSONL file')
    .requiredOption('--checkpoint <dir>', 'checkpoint directory (or a run directory)')
    .requiredOption('--text <file>', 'text to score')
    .option('--tokenizer <file>', "tokenizer.json (default: the checkpoint's)")
    .option('--adapter <dir>', 'a PEFT LoRA adapter directory to apply (train --init --lora writes one)')
    .option('--threads <n>', 'worker threads', int(1, 1024), 2)
    .option('--json', 'print {"loss", "tokens"} on stdout', false)
    .action(async (o) => {
      const k = loadKernels({ threads: o.threads });
      const m = await loadAnyModel(o.checkpoint, k, o.tokenizer, o.adapter);
      const docs = readDocuments(o.text);
      // Documents are joined the way training saw them: each one preceded by its start token
      // (GPT-2: <|endoftext|>, predicted as the previous document's end; Llama: the BOS, which
      // is context only and never scored).
      const ids: number[] = [];
      for (const d of docs) for (const t of m.tokenizer.encodeDocument(d)) ids.push(t);
      say(
        o,
        `scoring ${ids.length.toLocaleString('en-US')} tokens from ${o.text} with ${m.arch === 'llama' ? 'Llama' : 'GPT-2'} ${m.weightsHash.slice(0, 12)}…`,
      );
      const r = streamLoss(m.model, ids, 16, m.tokenizer.bosId);
      result(
        o,
        { loss: r.loss, tokens: r.tokens },
        `loss ${r.loss.toFixed(4)} nats/token over ${r.tokens} tokens (perplexity ${Math.exp(r.loss).toFixed(1)})`,
      );
    });
}
