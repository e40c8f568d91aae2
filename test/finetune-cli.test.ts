/**
 * `tessera train --init DIR`: fine-tuning a checkpoint alone from the command line, on tiny
 * models. LoRA on a GPT-2 checkpoint (validation loss falls, the base weights' hash is unchanged,
 * a PEFT adapter and a merged Hugging Face model are written, and `eval --adapter` applies the
 * adapter), full fine-tuning of a Llama
 * checkpoint (a loadable checkpoint of the same format with new weights), and bad input refused
 * with a clear message (a LoRA flag without --init, a malformed JSONL line named by number).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { trainBpe } from '../src/data/index.js';
import { createRefKernels } from '../src/kernels/ref.js';
import { saveCheckpoint } from '../src/model/checkpoint.js';
import { GPT } from '../src/model/gpt.js';
import { readHF } from '../src/model/hf-import.js';
import { loadLlamaCheckpoint, saveLlamaCheckpoint } from '../src/model/llama-checkpoint.js';
import { TINY_LLAMA } from '../src/model/llama-config.js';
import { Llama } from '../src/model/llama.js';
import { loadPeft } from '../src/model/peft.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLI = join(ROOT, 'bin', 'tessera.js');

const WORDS = ['red', 'blue', 'green', 'cat', 'dog', 'sun', 'moon', 'tree'];
function jsonl(): string {
  const lines: string[] = [];
  for (let i = 0; i < 40; i++) {
    const w = WORDS[i % WORDS.length];
    lines.push(JSON.stringify({ prompt: `say ${w}:`, completion: ` ${w} ${w}` }));
  }
  return lines.join('\n') + '\n';
}

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    env: { ...process.env, TESSERA_LOG: 'warn' },
  });
}

test('train --init: LoRA on a GPT-2 checkpoint, then full fine-tuning of a Llama checkpoint', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'tessera-ftcli-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  const data = join(root, 'data.jsonl');
  await writeFile(data, jsonl());
  const tok = trainBpe(jsonl(), { vocabSize: 260 });
  const k = createRefKernels();

  const g = new GPT({ vocabSize: tok.vocabSize, ctx: 16, dim: 16, layers: 1, heads: 2 }, k);
  g.init(1);
  await saveCheckpoint(join(root, 'gpt'), {
    config: g.config,
    params: g.params,
    extraFiles: { 'tokenizer.json': tok.serialize() },
  });
  const common = ['--jsonl', data, '--batch', '4', '--ctx', '16', '--threads', '1', '--json'];
  const r = cli([
    'train',
    '--init',
    join(root, 'gpt'),
    '--lora',
    '4,8,all',
    '--steps',
    '40',
    '--lr',
    '1e-2',
    '--merged',
    '--out',
    join(root, 'out-lora'),
    ...common,
  ]);
  assert.equal(r.status, 0, r.stderr);
  const s = JSON.parse(r.stdout) as {
    mode: string;
    initialValLoss: number;
    finalValLoss: number;
    baseHashBefore: string;
    baseHashAfter: string;
    trainableParams: number;
    baseParams: number;
    files: Record<string, string>;
  };
  console.log(
    `CLI LoRA (GPT-2): val ${s.initialValLoss.toFixed(4)} → ${s.finalValLoss.toFixed(4)}, ${s.trainableParams} of ${s.baseParams} floats trained`,
  );
  assert.equal(s.mode, 'lora');
  assert.ok(s.finalValLoss < s.initialValLoss - 0.05, `${s.initialValLoss} → ${s.finalValLoss}`);
  assert.equal(s.baseHashAfter, s.baseHashBefore);
  assert.ok(existsSync(join(s.files.adapter, 'adapter_config.json')));
  const a = await loadPeft(s.files.adapter, { arch: 'gpt2', config: g.config });
  assert.equal(a.numParams, s.trainableParams);
  const merged = await readHF(s.files.merged);
  assert.equal(merged.arch, 'gpt2');
  // eval with and without the adapter: it loads, applies, and changes the loss.
  const text = join(root, 'eval.txt');
  await writeFile(text, WORDS.map((w) => `say ${w}: ${w} ${w}`).join('\n'));
  const ev = (extra: string[]) => {
    const e = cli(['eval', '--checkpoint', join(root, 'gpt'), '--text', text, '--json', ...extra]);
    assert.equal(e.status, 0, e.stderr);
    return (JSON.parse(e.stdout) as { loss: number }).loss;
  };
  const plain = ev([]),
    adapted = ev(['--adapter', s.files.adapter]);
  console.log(`CLI eval: base ${plain.toFixed(4)}, with adapter ${adapted.toFixed(4)}`);
  assert.ok(adapted < plain, `${plain} → ${adapted}`);

  const l = new Llama(
    {
      ...TINY_LLAMA,
      vocabSize: tok.vocabSize,
      ctx: 16,
      dim: 16,
      hidden: 24,
      heads: 2,
      kvHeads: 1,
      headDim: 8,
      layers: 1,
    },
    k,
  );
  l.init(2);
  await saveLlamaCheckpoint(join(root, 'llama'), {
    config: l.config,
    params: l.params,
    extraFiles: { 'tokenizer.json': tok.serialize() },
  });
  const f = cli([
    'train',
    '--init',
    join(root, 'llama'),
    '--steps',
    '15',
    '--lr',
    '5e-3',
    '--out',
    join(root, 'out-full'),
    ...common,
  ]);
  assert.equal(f.status, 0, f.stderr);
  const fs = JSON.parse(f.stdout) as {
    mode: string;
    initialValLoss: number;
    finalValLoss: number;
    baseHashBefore: string;
    files: Record<string, string>;
  };
  console.log(`CLI full (Llama): val ${fs.initialValLoss.toFixed(4)} → ${fs.finalValLoss.toFixed(4)}`);
  assert.equal(fs.mode, 'full');
  assert.ok(fs.finalValLoss < fs.initialValLoss);
  const ck = await loadLlamaCheckpoint(fs.files.checkpoint);
  assert.notEqual(ck.weightsHash, fs.baseHashBefore);
  assert.ok(existsSync(join(fs.files.checkpoint, 'tokenizer.json')));

  // Bad input: LoRA flags without --init, and a malformed line named by number.
  const e1 = cli(['train', '--lora', '4,8', '--steps', '1', '--out', join(root, 'x')]);
  assert.equal(e1.status, 1);
  assert.match(e1.stderr, /--lora needs --init/);
  await writeFile(join(root, 'bad.jsonl'), '{"text":"ok"}\n{"prompt":"no completion"}\n');
  const e2 = cli(['train', '--init', join(root, 'gpt'), '--jsonl', join(root, 'bad.jsonl'), '--out', join(root, 'y')]);
  assert.equal(e2.status, 1);
  assert.match(e2.stderr, /bad\.jsonl:2: missing "completion"/);
  const e3 = cli([
    'train',
    '--init',
    join(root, 'gpt'),
    '--jsonl',
    data,
    '--lora',
    '4,8,q_proj',
    '--out',
    join(root, 'z'),
  ]);
  assert.equal(e3.status, 1);
  assert.match(e3.stderr, /unknown LoRA target "q_proj" for GPT-2/);
});
