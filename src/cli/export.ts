/** `tessera export --hf DIR`: a Hugging Face GPT-2 directory that transformers/PyTorch can load. */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { say, result } from './output.js';
import { loadModel } from './load.js';
import { exportHF } from '../model/hf.js';
import { createRefKernels } from '../kernels/ref.js';
import { InvalidInputError } from '../util/errors.js';

export function register(program: Command): void {
  program
    .command('export')
    .description('export a checkpoint to another format')
    .requiredOption('--checkpoint <dir>', 'checkpoint directory (or a run directory)')
    .option(
      '--hf <dir>',
      'write a Hugging Face GPT2LMHeadModel directory (model.safetensors, config.json, tokenizer.json)',
    )
    .option('--tokenizer <file>', "tokenizer.json (default: the checkpoint's)")
    .option('--json', 'print the written files on stdout', false)
    .action(async (o) => {
      if (!o.hf) throw new InvalidInputError('choose a format: --hf DIR');
      // Export moves bytes only; the reference kernels avoid loading the native addon.
      const m = await loadModel(o.checkpoint, createRefKernels(), o.tokenizer);
      const dir = resolve(o.hf);
      const r = await exportHF(dir, {
        config: m.gpt.config,
        params: m.gpt.params,
        tokenizerJson: m.tokenizer.toJSON(),
        eotId: m.tokenizer.eotId,
      });
      say(o, `exported ${m.weightsHash.slice(0, 12)}… as a Hugging Face GPT-2 model`);
      result(o, { dir, files: r.files }, r.files.map((f) => `wrote ${f}`).join('\n'));
    });
}
