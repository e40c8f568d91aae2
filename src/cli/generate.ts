/**
 * `tessera generate`: sample text from a checkpoint, or (`--swarm pipe.json`) through the stage
 * holders of a running pipeline, no peer of which holds the whole model; usage is metered per
 * stage (the tokens each stage processed), ready to pay that stage's owners.
 */
import type { Command } from 'commander';
import { int, num, collect } from './args.js';
import { say, result } from './output.js';
import { loadKernels } from '../kernels/index.js';
import { loadAnyModel } from './load.js';
import { sample } from '../model/sample.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { createHost } from '../net/host.js';
import { PipelineDriver } from '../pipeline/driver.js';
import { discoverStages, listenToRun, readPipeManifest } from '../pipeline/run.js';
import { loadCorpus, prepareDataset } from '../data/index.js';
import { defaultCacheDir } from './train.js';
import { InvalidInputError } from '../util/errors.js';

interface SwarmGen {
  swarm: string;
  bootstrap?: string[];
  prompt: string;
  maxTokens: number;
  temperature: number;
  topK: number;
  seed: number;
  waitMs: number;
  json: boolean;
}

/** Through a pipeline's stage holders (the driver's forward-only path). */
async function generateSwarm(o: SwarmGen): Promise<void> {
  const { manifest: m, runId } = readPipeManifest(o.swarm, '--swarm');
  if (!o.bootstrap?.length) throw new InvalidInputError("--swarm needs --bootstrap <a stage peer's multiaddr>");
  const dir = mkdtempSync(join(tmpdir(), 'tessera-generate-'));
  const host = await createHost({
    dataDir: dir,
    bootstrap: o.bootstrap,
    logger: pino({ level: process.env.TESSERA_LOG ?? 'warn' }, pino.destination(2)),
  });
  const { dir: sd, close } = listenToRun(host, runId, m.stages);
  try {
    const stages = await discoverStages(host, sd, { timeoutMs: o.waitMs, runId });
    const tok = prepareDataset({
      corpus: loadCorpus(m.data),
      vocabSize: m.model.vocabSize,
      cacheDir: defaultCacheDir(),
    }).tokenizer;
    const driver = new PipelineDriver({
      host,
      stages,
      dim: m.model.dim,
      vocabSize: m.model.vocabSize,
      codec: m.codec,
      ...(m.bottleneck !== undefined ? { width: m.bottleneck } : {}),
    });
    const g = await driver.generate([tok.eotId, ...tok.encodeOrdinary(o.prompt)], Math.min(o.maxTokens, 256), {
      ctx: m.model.ctx,
      temperature: Math.max(1e-3, o.temperature),
      topK: o.topK || m.model.vocabSize,
      seed: o.seed,
    });
    const cut = g.tokens.indexOf(tok.eotId);
    const completion = tok.decode(cut >= 0 ? g.tokens.slice(0, cut) : g.tokens);
    result(
      o,
      {
        prompt: o.prompt,
        completion,
        tokens: g.tokens.length,
        stages: stages.map((p) => p.length),
        usagePerStage: g.usage,
      },
      `${o.prompt}${completion}\n(through ${m.stages} stages, ${stages.map((p, i) => `stage ${i}: ${p.map((x) => x.slice(-8)).join('/')}`).join(', ')}; tokens processed per stage: ${g.usage.join(', ')})`,
    );
  } finally {
    close();
    await host.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

export function register(program: Command): void {
  program
    .command('generate')
    .description('continue a prompt with a trained or imported checkpoint (GPT-2 or Llama)')
    .option('--checkpoint <dir>', 'checkpoint directory (or a run directory)')
    .option(
      '--swarm <pipe.json>',
      'generate through the stage holders of a running pipeline (no single peer holds the model)',
    )
    .option('--bootstrap <ma...>', 'with --swarm: a stage peer to connect to', collect)
    .option('--wait-ms <n>', 'with --swarm: how long to wait for a ready peer on every stage', int(1), 30_000)
    .option('--prompt <text>', 'text to continue', '')
    .option('--max-tokens <n>', 'tokens to generate', int(1, 100000), 100)
    .option('--temperature <x>', 'sampling temperature (0 = greedy)', num(0, 100), 0.8)
    .option('--top-k <n>', 'sample from the k most likely tokens (0 = all)', int(0), 40)
    .option('--seed <n>', 'sampling seed', int(0), 1)
    .option('--tokenizer <file>', "tokenizer.json (default: the checkpoint's)")
    .option('--adapter <dir>', 'a PEFT LoRA adapter directory to apply (train --init --lora writes one)')
    .option('--threads <n>', 'worker threads', int(1, 1024), 2)
    .option('--json', 'print {"prompt", "completion", "tokens", "promptIds", "ids"} on stdout', false)
    .action(async (o) => {
      if ((o.checkpoint === undefined) === (o.swarm === undefined))
        throw new InvalidInputError('give either --checkpoint <dir> or --swarm <pipe.json>');
      if (o.swarm) return generateSwarm(o as SwarmGen);
      const k = loadKernels({ threads: o.threads });
      const m = await loadAnyModel(o.checkpoint, k, o.tokenizer, o.adapter);
      // The prompt starts like a document (GPT-2: <|endoftext|>; Llama: its BOS). No KV cache:
      // each new token runs the model on the whole window (src/model/sample.ts).
      const prompt = m.tokenizer.encodeDocument(o.prompt);
      const stop = m.tokenizer.eosIds;
      const out: number[] = [];
      if (!o.json) process.stdout.write(o.prompt);
      let printed = '';
      for (const id of sample(m.model, prompt, {
        maxNewTokens: o.maxTokens,
        temperature: o.temperature,
        topK: o.topK,
        seed: o.seed,
        stopTokens: stop,
      })) {
        if (stop.includes(id)) break;
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
      if (!o.json) {
        process.stdout.write(completion.slice(printed.length) + '\n');
        say(o, `(${out.length} tokens, temperature ${o.temperature}, top-k ${o.topK}, seed ${o.seed})`);
      }
      result(o, { prompt: o.prompt, completion, tokens: out.length, promptIds: prompt, ids: out });
    });
}
