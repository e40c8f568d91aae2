/**
 * `tessera import --hf DIR --out DIR`: bring a Hugging Face GPT-2 or Llama-family model
 * directory (config.json + model.safetensors or a sharded set with its index, optional
 * tokenizer.json) in as a Tessera checkpoint. Every check runs before anything is written, and
 * the checkpoint appears atomically or not at all (src/model/hf-import.ts).
 */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { importHF } from '../model/hf-import.js';
import { InvalidInputError } from '../util/errors.js';
import { result, say } from './output.js';

export function register(program: Command): void {
  program
    .command('import')
    .description('import a Hugging Face model (GPT2LMHeadModel or LlamaForCausalLM) as a Tessera checkpoint')
    .option('--hf <dir>', 'Hugging Face model directory (config.json, model.safetensors or an index + shards)')
    .requiredOption('--out <dir>', 'checkpoint directory to write (created atomically)')
    .option('--json', 'print the import report on stdout', false)
    .action(async (o: { hf?: string; out: string; json: boolean }) => {
      if (!o.hf) throw new InvalidInputError('choose a source format: --hf DIR');
      const r = await importHF(resolve(o.hf), resolve(o.out));
      const dtypes = Object.entries(r.dtypes)
        .map(([d, n]) => `${n} ${d}`)
        .join(', ');
      say(
        o,
        `imported ${r.arch === 'gpt2' ? 'GPT-2' : 'Llama'} model from ${resolve(o.hf)}: ${r.params.toLocaleString('en-US')} parameters in ${r.tensors} tensors (${dtypes}${r.converted ? ', converted to F32' : ''}) from ${r.files.length} file(s)` +
          (r.ignored.length ? `; ignored ${r.ignored.length} buffer tensor(s)` : '') +
          (r.tokenizer ? '; tokenizer.json copied' : ''),
      );
      result(o, r, `wrote ${r.out} (weights ${r.weightsHash.slice(0, 12)}…)`);
    });
}
