/** `tessera generate`: sample text from a checkpoint. */
import type { Command } from 'commander';
import { int, num } from './args.js';
import { say, result } from './output.js';
import { loadKernels } from '../kernels/index.js';
import { loadModel } from './load.js';
import { sample } from '../model/sample.js';

export function register(program: Command): void {
  program.command('generate')
    .description('continue a prompt with a trained checkpoint')
    .requiredOption('--checkpoint <dir>', 'checkpoint directory (or a run directory)')
    .option('--prompt <text>', 'text to continue', '')
    .option('--max-tokens <n>', 'tokens to generate', int(1, 100000), 100)
    .option('--temperature <x>', 'sampling temperature (0 = greedy)', num(0, 100), 0.8)
    .option('--top-k <n>', 'sample from the k most likely tokens (0 = all)', int(0), 40)
    .option('--seed <n>', 'sampling seed', int(0), 1)
    .option('--tokenizer <file>', 'tokenizer.json (default: the checkpoint\'s)')
    .option('--threads <n>', 'worker threads', int(1, 1024), 2)
    .option('--json', 'print {"prompt", "completion", "tokens"} on stdout', false)
    .action(async (o) => {
      const k = loadKernels({ threads: o.threads });
      const m = await loadModel(o.checkpoint, k, o.tokenizer);
      const prompt = [m.tokenizer.eotId, ...m.tokenizer.encodeOrdinary(o.prompt)];
      const out: number[] = [];
      if (!o.json) process.stdout.write(o.prompt);
      let printed = '';
      for (const id of sample(m.gpt, prompt, { maxNewTokens: o.maxTokens, temperature: o.temperature, topK: o.topK, seed: o.seed, stopToken: m.tokenizer.eotId })) {
        if (id === m.tokenizer.eotId) break;
        out.push(id);
        if (!o.json) {
          // Decode the whole completion each time so multi-byte characters split across tokens print correctly.
          const text = m.tokenizer.decode(out);
          const safe = text.endsWith('\uFFFD') ? text.slice(0, -1) : text;
          process.stdout.write(safe.slice(printed.length));
          printed = safe;
        }
      }
      const completion = m.tokenizer.decode(out);
      if (!o.json) { process.stdout.write(completion.slice(printed.length) + '\n'); say(o, `(${out.length} tokens, temperature ${o.temperature}, top-k ${o.topK}, seed ${o.seed})`); }
      result(o, { prompt: o.prompt, completion, tokens: out.length });
    });
}
