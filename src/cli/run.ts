/** `tessera run create`: write a run manifest (default: a small model for a 2-core demo). */
import type { Command } from 'commander';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { int, num, oneOf } from './args.js';
import { say, result } from './output.js';
import { defaultCacheDir } from './train.js';
import { DEFAULT_OUTER } from '../swarm/outer.js';
import {
  SPARSELOCO_OUTER,
  buildManifest,
  buildManifestFromStore,
  buildManifestWithBase,
  type RunCreateOptions,
} from '../swarm/manifest-builder.js';
import { InvalidInputError } from '../util/errors.js';
import { parseLoraFlag } from '../train/finetune.js';

export function register(program: Command): void {
  const run = program.command('run').description('create and inspect swarm runs');
  run
    .command('create')
    .description('write a run manifest (default: a small GPT on the embedded Brown corpus, for a 2-core demo)')
    .requiredOption('--out <file>', 'manifest file to write')
    .option('--name <s>', 'human label')
    .option('--vocab <n>', 'vocabulary size', int(257, 1 << 20), 512)
    .option('--ctx <n>', 'context length', int(1, 65536), 64)
    .option('--dim <n>', 'model width', int(1, 65536), 64)
    .option('--layers <n>', 'transformer blocks', int(1, 1024), 2)
    .option('--heads <n>', 'attention heads', int(1, 1024), 4)
    .option('--batch <n>', 'sequences per inner step', int(1, 65536), 4)
    .option('--inner <n>', 'H: inner steps per round', int(1), 10)
    .option('--lr <x>', 'inner learning rate (constant)', num(1e-8, 10), 3e-3)
    .option('--codec <id>', 'fp32 | fp16 | int8 | sparse', oneOf('fp32', 'fp16', 'int8', 'sparse'), 'sparse')
    .option('--shards <n>', 'data shards', int(1), 16)
    .option(
      '--overlap <mode>',
      'eager | shift | delayed: train the next round during the exchange (docs/ROUNDS.md) | none',
      oneOf('eager', 'shift', 'delayed', 'none'),
      'eager',
    )
    .option(
      '--outer-lr <x>',
      `outer Nesterov learning rate (default ${DEFAULT_OUTER.lr}; ${SPARSELOCO_OUTER.lr} with the sparse codec)`,
      num(1e-6, 100),
    )
    .option(
      '--outer-momentum <x>',
      `outer Nesterov momentum (default ${DEFAULT_OUTER.momentum}; ${SPARSELOCO_OUTER.momentum} with the sparse codec)`,
      num(0, 0.999),
    )
    .option('--seed <n>', 'initialisation seed', int(0), 1)
    .option('--train-ms <n>', 'training budget per round', int(1), 1500)
    .option('--submit-ms <n>', 'update collection deadline', int(1), 2500)
    .option('--commit-ms <n>', 'agreement attempt length', int(1), 1500)
    .option('--quorum <x>', 'fraction of the roster whose updates close collection early', num(0.01, 1), 1)
    .option('--min-peers <n>', 'peers needed to train', int(1), 1)
    .option('--max-missed <n>', 'missed rounds before a member leaves the roster', int(1), 2)
    .option(
      '--max-stretch <x>',
      'deadlines may stretch up to this factor when updates come in short or late (default 4; 1 = fixed)',
      num(1, 16),
    )
    .option('--cache-dir <dir>', 'tokenizer and token cache', defaultCacheDir())
    .option(
      '--dataset <cid>',
      'train on a dataset from `tessera data add` (by CID; needs --data-dir): peers fetch shards, tokenizer and genesis weights from each other',
    )
    .option(
      '--data-dir <dir>',
      'the node data directory whose IPFS store holds --dataset (the genesis state is added there)',
    )
    .option(
      '--aggregate <rule>',
      'clip (each update clipped to the lower median norm, robust to a poisoned update) | trimmed (clipped, then coordinate-wise trimmed mean) | centered (clipped, then centered clipping) | mean',
      oneOf('clip', 'mean', 'trimmed', 'centered'),
      'clip',
    )
    .option(
      '--audit <p>',
      'audit by re-execution: trainers commit every inner step (Merkle root), validators re-run each update with probability p (needs --overlap none or delayed)',
      num(0, 1),
    )
    .option(
      '--audit-tolerance <rel>',
      "with --audit: GPU trainers may join, each step judged against the CPU's re-execution within this relative tolerance (hyper.audit.tolerance; docs/WEBGPU.md); without it every step is audited bit for bit",
      num(1e-9, 0.1),
    )
    .option('--replicas <n>', 'peers that pin each training shard and retained checkpoint (default 3)', int(1, 64))
    .option('--checkpoint-every <n>', 'keep a state checkpoint every N rounds (default 5)', int(1))
    .option('--keep-checkpoints <n>', 'checkpoints retained before garbage collection (default 3)', int(1, 1000))
    .option(
      '--base <dir>',
      "fine-tune this checkpoint (`tessera train`/`import` output; its shape is the run's model): added to --data-dir's store, named in the manifest by CID and weights hash; every peer checks the hash",
    )
    .option(
      '--lora <r,alpha,targets>',
      "train only a LoRA adapter on the base (e.g. 8,16,c_attn+c_fc; targets 'all' by default): rounds exchange the adapter alone. Without --base, the base is the run's init(seed) model",
    )
    .option('--json', 'print a JSON object on stdout', false)
    .action(
      async (
        o: Omit<RunCreateOptions, 'lora'> & {
          out: string;
          json: boolean;
          dataset?: string;
          dataDir?: string;
          lora?: string;
        },
      ) => {
        if (o.dataset !== undefined && o.dataDir === undefined)
          throw new InvalidInputError('--dataset needs --data-dir (the store that holds it)');
        if (o.base !== undefined && o.dataDir === undefined)
          throw new InvalidInputError('--base needs --data-dir (the store the base checkpoint is added to)');
        const opts: RunCreateOptions = { ...o, lora: o.lora !== undefined ? parseLoraFlag(o.lora) : undefined };
        if (o.auditTolerance !== undefined && o.audit === undefined)
          throw new InvalidInputError('--audit-tolerance goes with --audit');
        const { decoded, params } =
          o.dataset !== undefined
            ? await buildManifestFromStore({ ...opts, dataset: o.dataset, dataDir: o.dataDir! })
            : opts.base !== undefined
              ? await buildManifestWithBase(opts)
              : buildManifest(opts);
        const m = decoded.manifest;
        if (m.base)
          say(
            o,
            `base model ${m.base.weightsHash.slice(0, 12)}${m.base.cid ? ` (${m.base.cid})` : ' (init(seed))'}: ${m.lora ? `LoRA r=${m.lora.r} alpha=${m.lora.alpha} on ${m.lora.targets.join('+')}` : 'full fine-tuning'}`,
          );
        mkdirSync(dirname(o.out), { recursive: true });
        writeFileSync(o.out, JSON.stringify(decoded.manifest, null, 2) + '\n');
        say(
          o,
          `wrote ${o.out}: ${params} ${m.lora ? 'adapter ' : ''}parameters, H=${o.inner}, codec ${o.codec}, overlap ${o.overlap ?? 'eager'}`,
        );
        result(o, { runId: decoded.runId, out: o.out, params, manifest: decoded.manifest }, decoded.runId);
      },
    );
}
