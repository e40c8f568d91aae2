/**
 * `tessera export --hf DIR`: a Hugging Face directory that transformers/PyTorch can load —
 * GPT2LMHeadModel for a GPT-2 checkpoint, LlamaForCausalLM for a Llama one (tokenizer.json,
 * when the checkpoint has one, copied as is).
 */
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { exportLlamaHF } from '../model/hf-llama.js';
import { MAX_TOKENIZER_BYTES } from '../model/hf-import.js';
import { readJsonFile } from '../model/json-file.js';
import { checkpointFormat, loadLlamaCheckpoint } from '../model/llama-checkpoint.js';
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
      'write a Hugging Face GPT2LMHeadModel or LlamaForCausalLM directory (model.safetensors, config.json, tokenizer.json)',
    )
    .option('--tokenizer <file>', "tokenizer.json (default: the checkpoint's)")
    .option('--json', 'print the written files on stdout', false)
    .action(async (o) => {
      if (!o.hf) throw new InvalidInputError('choose a format: --hf DIR');
      let ckDir: string = o.checkpoint;
      if (!existsSync(join(ckDir, 'config.json')) && existsSync(join(ckDir, 'checkpoint', 'config.json')))
        ckDir = join(ckDir, 'checkpoint');
      if (existsSync(join(ckDir, 'config.json')) && (await checkpointFormat(ckDir)) === 'tessera-llama') {
        const ck = await loadLlamaCheckpoint(ckDir);
        const tokPath: string | undefined = o.tokenizer ?? [join(ckDir, 'tokenizer.json')].find(existsSync);
        const dir = resolve(o.hf);
        const r = await exportLlamaHF(dir, {
          config: ck.config,
          params: ck.params,
          // Size- and JSON-checked, then copied byte for byte (a Llama tokenizer is not ours to parse).
          tokenizerJson: tokPath
            ? (await readJsonFile(tokPath, MAX_TOKENIZER_BYTES), await readFile(tokPath))
            : undefined,
        });
        say(o, `exported ${ck.weightsHash.slice(0, 12)}… as a Hugging Face Llama model`);
        result(o, { dir, files: r.files }, r.files.map((f) => `wrote ${f}`).join('\n'));
        return;
      }
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
