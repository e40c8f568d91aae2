/**
 * `tessera eval` and `tessera generate` on a Llama checkpoint imported with `tessera import --hf`
 * (scripts/hf_fixtures.py: random weights, GQA, llama3 RoPE, and a Llama-2-style tokenizer.json
 * read through @huggingface/tokenizers), checked against an independent float64 PyTorch forward
 * on the same weights: eval's loss equals the cross-entropy of the PyTorch logits over the same
 * token stream (documents start with <s>, which is never scored), and greedy generation (no KV
 * cache) picks PyTorch's argmax at every step. Needs /usr/bin/python3 with torch, as
 * test/hf-import.test.ts does (skips without it, except under CI=true).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadHfTextTokenizer } from '../src/data/text-tokenizer.js';
import { CorruptFileError, MismatchError } from '../src/util/errors.js';

const PYTHON = process.env.TESSERA_HF_PYTHON || '/usr/bin/python3';
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SCRIPT = join(ROOT, 'scripts', 'hf_fixtures.py');
const CLI = join(ROOT, 'bin', 'tessera.js');

function torchMissing(): string | null {
  const r = spawnSync(PYTHON, ['-c', 'import torch'], { encoding: 'utf8' });
  if (r.error) return `${PYTHON} not runnable (${r.error.message})`;
  if (r.status !== 0) return `${PYTHON} cannot import torch: ${r.stderr.trim().split('\n').pop()}`;
  return null;
}
const NO_TORCH = torchMissing();
if (NO_TORCH && process.env.CI === 'true')
  throw new Error(`Llama CLI parity tests need torch under CI: ${NO_TORCH} (apt-get install python3-torch)`);
const skip = NO_TORCH ? `needs torch (${NO_TORCH}); apt-get install python3-torch` : false;

function fixtures(out: string, tokens: number[]): void {
  const r = spawnSync(
    PYTHON,
    [SCRIPT, '--arch', 'llama', '--out', out, '--tokenizer', '--tokens', JSON.stringify([tokens])],
    {
      encoding: 'utf8',
    },
  );
  assert.equal(r.status, 0, `hf_fixtures.py failed: ${r.stderr}`);
}

function cli(args: string[]): unknown {
  const r = spawnSync(process.execPath, [CLI, ...args, '--json'], { encoding: 'utf8' });
  assert.equal(r.status, 0, `tessera ${args[0]} failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** PyTorch's logits [T, V] for the fixture's one row of tokens. */
async function torchLogits(dir: string): Promise<{ T: number; V: number; at: (t: number) => number[] }> {
  const j = JSON.parse(await readFile(join(dir, 'logits.json'), 'utf8')) as { shape: number[]; logits: number[] };
  const [, T, V] = j.shape;
  return { T, V, at: (t) => j.logits.slice(t * V, (t + 1) * V) };
}

// Two documents as `tessera eval` reads a text file (split at <|endoftext|>), and their ids as the
// fixture's tokenizer gives them: each starts with <s> (1).
const DOCS = ['the cat and the dog', 'of the sea, it is good.'];
const IDS = [1, 34, 53, 42, 3, 37, 7, 34, 3, 7, 18, 10, 1, 54, 9, 34, 45, 8, 4, 31, 3, 50, 3, 49, 3, 10, 18, 18, 7, 30];

test('tessera eval and generate on an imported Llama match an independent PyTorch forward', { skip }, async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'tessera-llama-cli-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  const hf = join(root, 'hf'),
    ck = join(root, 'ck');
  fixtures(hf, IDS);
  const imp = cli(['import', '--hf', hf, '--out', ck]) as { arch: string; tokenizer: boolean };
  assert.equal(imp.arch, 'llama');
  assert.equal(imp.tokenizer, true);

  // The checkpoint's tokenizer (through @huggingface/tokenizers) gives the ids the fixture scored.
  const tok = loadHfTextTokenizer(join(ck, 'tokenizer.json'), { vocabSize: 64, eosIds: [2] });
  assert.deepEqual(
    DOCS.flatMap((d) => tok.encodeDocument(d)),
    IDS,
  );
  assert.equal(tok.bosId, 1);
  assert.equal(tok.decode(IDS.slice(0, 12)), DOCS[0]);

  // The checkpoint keeps config.json's special ids.
  const meta = (JSON.parse(await readFile(join(ck, 'config.json'), 'utf8')) as { meta: Record<string, unknown> }).meta;
  assert.equal(meta.bosTokenId, 1);
  assert.deepEqual(meta.eosTokenIds, [2]);

  // eval: mean cross-entropy of PyTorch's logits over every target that is not a document's <s>.
  const ref = await torchLogits(hf);
  let sum = 0,
    n = 0;
  for (let i = 0; i + 1 < IDS.length; i++) {
    if (IDS[i + 1] === 1) continue;
    const l = ref.at(i);
    const max = Math.max(...l);
    const lse = max + Math.log(l.reduce((a, x) => a + Math.exp(x - max), 0));
    sum += lse - l[IDS[i + 1]];
    n++;
  }
  const text = join(root, 'eval.txt');
  await writeFile(text, DOCS.join('<|endoftext|>'));
  const ev = cli(['eval', '--checkpoint', ck, '--text', text, '--threads', '1']) as { loss: number; tokens: number };
  console.log(`tessera eval on the imported Llama: ${ev.loss.toFixed(6)} vs PyTorch ${(sum / n).toFixed(6)}`);
  assert.equal(ev.tokens, n);
  assert.ok(Math.abs(ev.loss - sum / n) < 1e-4, `${ev.loss} vs ${sum / n}`);

  // generate, greedy, KV-less: every new token is PyTorch's argmax over the sequence so far.
  const g = cli([
    'generate',
    '--checkpoint',
    ck,
    '--prompt',
    'the cat',
    '--temperature',
    '0',
    '--max-tokens',
    '12',
    '--threads',
    '1',
  ]) as { promptIds: number[]; ids: number[]; completion: string; tokens: number };
  assert.deepEqual(g.promptIds, [1, 34, 53, 42]);
  assert.ok(g.ids.length >= 1 && g.ids.length <= 12, `${g.ids}`);
  assert.ok(!g.ids.includes(2), 'generation stops before </s>');
  assert.equal(g.completion, tok.decode(g.ids));
  const seq = [...g.promptIds, ...g.ids];
  const hf2 = join(root, 'hf2');
  fixtures(hf2, seq.slice(0, -1));
  const ref2 = await torchLogits(hf2);
  for (let j = 0; j < g.ids.length; j++) {
    const l = ref2.at(g.promptIds.length - 1 + j);
    assert.equal(g.ids[j], l.indexOf(Math.max(...l)), `token ${j} of ${g.ids}`);
  }
  console.log(`tessera generate (greedy) on the imported Llama: ${JSON.stringify(g.completion)} = PyTorch's argmax`);

  // The imported checkpoint as the genesis of a local pipeline: two stage peers, Brown in its tokens.
  const p = cli([
    'pipeline',
    '--init',
    ck,
    '--stages',
    '2',
    '--steps',
    '4',
    '--checkpoint-every',
    '0',
    '--prompt',
    'the cat',
  ]) as { steps: number; valLoss: number; sample: string; usagePerStage: number[] };
  assert.equal(p.steps, 4);
  assert.ok(Number.isFinite(p.valLoss), `${p.valLoss}`);
  assert.equal(p.usagePerStage.length, 2);
  assert.ok(p.usagePerStage.every((u) => u > 0));
  console.log(`tessera pipeline --init (imported Llama, 2 stages): val loss ${p.valLoss.toFixed(3)}`);
});

test('a tokenizer.json that does not fit the model is refused with a typed error', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'tessera-llama-tok-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  const path = join(root, 'tokenizer.json');
  const vocab = { '<unk>': 0, '</s>': 1, a: 2, b: 3 };
  await writeFile(
    path,
    JSON.stringify({
      added_tokens: [{ id: 1, content: '</s>', special: true }],
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: { type: 'Fuse' },
      model: { type: 'BPE', vocab, merges: [], unk_token: '<unk>' },
    }),
  );
  assert.throws(() => loadHfTextTokenizer(path, { vocabSize: 3 }), MismatchError);
  const ok = loadHfTextTokenizer(path, { vocabSize: 4 });
  assert.deepEqual(ok.eosIds, [1]);
  assert.equal(ok.bosId, null);
  assert.deepEqual(ok.encodeDocument('ab'), [1, 2, 3], 'no BOS: a document starts with the end-of-text id');
  await writeFile(path, '{"model": ');
  assert.throws(() => loadHfTextTokenizer(path, { vocabSize: 4 }), CorruptFileError);
});
