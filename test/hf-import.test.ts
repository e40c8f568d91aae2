/**
 * `tessera import --hf`: parity of imported GPT-2 and Llama checkpoints against an independent
 * PyTorch forward (scripts/hf_fixtures.py, float64, on the stored weights), export → import
 * bit-identity for both architectures, and bad input refused with a clear, typed error and no
 * output left behind (missing tensor, wrong shape, wrong dtype, a config that does not match the
 * tensors, an index naming a missing shard, unsupported architectures and RoPE types).
 *
 * The parity tests need /usr/bin/python3 with torch (Debian's python3-torch; TESSERA_HF_PYTHON
 * overrides the interpreter). Without it they skip with a message, except under CI=true where
 * they fail. Every fixture is tiny and generated into a temporary directory at test time.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRefKernels } from '../src/kernels/ref.js';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import type { ModelConfig } from '../src/model/config.js';
import { GPT } from '../src/model/gpt.js';
import { exportHF } from '../src/model/hf.js';
import { importHF, UnsupportedModelError } from '../src/model/hf-import.js';
import { exportLlamaHF } from '../src/model/hf-llama.js';
import { checkpointFormat, loadLlamaCheckpoint } from '../src/model/llama-checkpoint.js';
import { TINY_LLAMA, type LlamaConfig } from '../src/model/llama-config.js';
import { Llama } from '../src/model/llama.js';
import { paramSpecs } from '../src/model/params.js';
import { readSafetensors, writeSafetensors } from '../src/model/safetensors.js';
import { CorruptFileError, MismatchError, TesseraError } from '../src/util/errors.js';

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
  throw new Error(`hf-import parity tests need torch under CI: ${NO_TORCH} (apt-get install python3-torch)`);
const skipNoTorch = NO_TORCH ? `needs torch (${NO_TORCH}); apt-get install python3-torch` : false;

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'tessera-hfi-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  return d;
}

function fixtures(out: string, args: string[]): void {
  const r = spawnSync(PYTHON, [SCRIPT, '--out', out, ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, `hf_fixtures.py failed: ${r.stderr}`);
}

interface RefLogits {
  tokens: number[][];
  shape: [number, number, number];
  logits: number[];
}

async function importedLogits(out: string, tokens: number[][]): Promise<Float32Array> {
  const B = tokens.length,
    T = tokens[0].length;
  const ids = Int32Array.from(tokens.flat());
  if ((await checkpointFormat(out)) === 'tessera-llama') {
    const ck = await loadLlamaCheckpoint(out);
    const m = new Llama(ck.config, createRefKernels());
    m.params.set(ck.params);
    return m.logits(ids, B, T);
  }
  const ck = await loadCheckpoint(out);
  const g = new GPT(ck.config, createRefKernels());
  g.params.set(ck.params);
  return g.logits(ids, B, T);
}

const PARITY: { name: string; args: string[] }[] = [
  { name: 'Llama, fp32, GQA 4:2, llama3 rope_scaling, untied', args: ['--arch', 'llama', '--seed', '1'] },
  {
    name: 'Llama, fp32, linear rope_scaling, tied',
    args: ['--arch', 'llama', '--seed', '2', '--rope', 'linear', '--tied'],
  },
  {
    name: 'Llama, bf16, 3 shards + index',
    args: ['--arch', 'llama', '--seed', '3', '--dtype', 'bf16', '--shards', '3'],
  },
  {
    name: 'Llama, fp16, no rope scaling',
    args: ['--arch', 'llama', '--seed', '4', '--dtype', 'f16', '--rope', 'none'],
  },
  { name: 'GPT-2, fp32', args: ['--arch', 'gpt2', '--seed', '5'] },
  {
    name: 'GPT-2, fp16, hub names (no transformer. prefix, attn.bias buffers), 2 shards',
    args: ['--arch', 'gpt2', '--seed', '6', '--dtype', 'f16', '--bare-names', '--shards', '2'],
  },
];

for (const c of PARITY) {
  test(`parity with an independent PyTorch forward: ${c.name}`, { skip: skipNoTorch }, async (t) => {
    const root = await tempDir(t);
    const hf = join(root, 'hf'),
      out = join(root, 'ck');
    fixtures(hf, c.args);
    const r = await importHF(hf, out);
    const ref = JSON.parse(await readFile(join(hf, 'logits.json'), 'utf8')) as RefLogits;
    const got = await importedLogits(out, ref.tokens);
    assert.equal(got.length, ref.logits.length);
    let maxDiff = 0,
      maxAbs = 0;
    for (let i = 0; i < got.length; i++) {
      maxDiff = Math.max(maxDiff, Math.abs(got[i] - ref.logits[i]));
      maxAbs = Math.max(maxAbs, Math.abs(ref.logits[i]));
    }
    console.log(
      `parity ${c.name}: max |logit diff| ${maxDiff.toExponential(2)} (max |logit| ${maxAbs.toFixed(2)}, ${r.params} params, ${JSON.stringify(r.dtypes)})`,
    );
    assert.ok(maxDiff < 1e-4, `max logit difference ${maxDiff}`);
  });
}

// ---------------------------------------------------------------------------------------------
// Fixtures built in TypeScript (no torch needed): exports of random Tessera models.

const LCFG: LlamaConfig = { ...TINY_LLAMA, ropeScaling: { type: 'linear', factor: 2 } };
const GCFG: ModelConfig = { vocabSize: 40, ctx: 8, dim: 16, layers: 2, heads: 2 };

function fill(buf: Float32Array, seed: number): void {
  let s = seed >>> 0 || 1;
  for (let i = 0; i < buf.length; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    buf[i] = ((s / 0x100000000) * 2 - 1) * 0.3;
  }
}

async function llamaHF(dir: string, cfg: LlamaConfig = LCFG): Promise<Llama> {
  const m = new Llama(cfg, createRefKernels());
  fill(m.params, 77);
  await exportLlamaHF(dir, { config: cfg, params: m.params, tokenizerJson: '{"model":{"type":"BPE","vocab":{}}}' });
  return m;
}

function tinyTokenizer(V: number): object {
  const vocab: Record<string, number> = {};
  for (let i = 0; i < V - 1; i++) vocab[String.fromCharCode(65 + i)] = i;
  return {
    version: '1.0',
    added_tokens: [{ id: V - 1, content: '<|endoftext|>', special: true }],
    model: { type: 'BPE', vocab, merges: [] },
  };
}

/**
 * Rewrite a safetensors file: drop tensors and edit header entries, keeping raw bytes;
 * `copies` adds tensors as byte copies of others ({ new: existing }).
 */
async function editSafetensors(
  path: string,
  edit: (h: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>) => void,
  copies: Record<string, string> = {},
): Promise<void> {
  const raw = await readFile(path);
  const n = Number(raw.readBigUInt64LE(0));
  const header = JSON.parse(raw.subarray(8, 8 + n).toString('utf8')) as Record<string, never>;
  const meta = header.__metadata__;
  delete header.__metadata__;
  const entries = header as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const bytes = new Map(
    Object.entries(entries).map(([k, e]) => [k, raw.subarray(8 + n + e.data_offsets[0], 8 + n + e.data_offsets[1])]),
  );
  for (const [to, from] of Object.entries(copies)) {
    entries[to] = { ...entries[from] };
    bytes.set(to, bytes.get(from)!);
  }
  edit(entries);
  const out: Record<string, unknown> = { __metadata__: meta };
  const blobs: Buffer[] = [];
  let off = 0;
  for (const [k, e] of Object.entries(entries)) {
    const b = bytes.get(k)!;
    out[k] = { ...e, data_offsets: [off, off + b.length] };
    blobs.push(b);
    off += b.length;
  }
  const h = Buffer.from(JSON.stringify(out));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  await writeFile(path, Buffer.concat([len, h, ...blobs]));
}

/** Split dir/model.safetensors into `n` F32 shards with an index (HF's sharded layout). */
async function shard(dir: string, n: number): Promise<string[]> {
  const { tensors } = await readSafetensors(join(dir, 'model.safetensors'));
  const names = [...tensors.keys()];
  const per = Math.ceil(names.length / n);
  const weightMap: Record<string, string> = {};
  const files: string[] = [];
  for (let s = 0; s < n; s++) {
    const file = `model-0000${s + 1}-of-0000${n}.safetensors`;
    const part = names.slice(s * per, (s + 1) * per);
    await writeSafetensors(
      join(dir, file),
      part.map((name) => ({ name, shape: tensors.get(name)!.shape, data: tensors.get(name)!.data })),
      { format: 'pt' },
    );
    for (const name of part) weightMap[name] = file;
    files.push(file);
  }
  await unlink(join(dir, 'model.safetensors'));
  await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  return files;
}

async function editJson(path: string, edit: (j: Record<string, unknown>) => void): Promise<void> {
  const j = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  edit(j);
  await writeFile(path, JSON.stringify(j));
}

/** The import fails with `cls` and a message matching `re`, and leaves nothing at or next to `out`. */
async function refused(hf: string, out: string, cls: new (...a: never[]) => TesseraError, re: RegExp): Promise<void> {
  await assert.rejects(importHF(hf, out), (e: unknown) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${String(e)}`);
    assert.match((e as Error).message, re);
    return true;
  });
  const left = (await readdir(dirname(out))).filter((n) => n.includes('ck'));
  assert.deepEqual(left, [], 'no output directory or temporary sibling is left behind');
}

test('export → import is bit-identical for Llama (single file and sharded), and names its tokenizer', async (t) => {
  const root = await tempDir(t);
  const m = await llamaHF(join(root, 'hf'));
  const r = await importHF(join(root, 'hf'), join(root, 'ck'));
  assert.equal(r.arch, 'llama');
  assert.equal(r.tokenizer, true);
  assert.deepEqual(r.dtypes, { F32: 21 });
  const ck = await loadLlamaCheckpoint(join(root, 'ck'));
  assert.deepEqual(ck.config, LCFG);
  assert.ok(Buffer.from(ck.params.buffer).equals(Buffer.from(m.params.buffer)), 'params bit-identical');
  assert.ok((await readdir(join(root, 'ck'))).includes('tokenizer.json'));
  // A GPT-2 reader refuses a Llama checkpoint by its format, with a clear message.
  await assert.rejects(loadCheckpoint(join(root, 'ck')), /is a Llama checkpoint \(format "tessera-llama"\)/);
  await shard(join(root, 'hf'), 3);
  const r2 = await importHF(join(root, 'hf'), join(root, 'ck2'));
  assert.equal(r2.sharded, true);
  assert.equal(r2.files.length, 3);
  assert.equal(r2.weightsHash, r.weightsHash);
});

test('export → import is bit-identical for GPT-2 (Conv1D transposes undone exactly); tied lm_head ignored', async (t) => {
  const root = await tempDir(t);
  const g = new GPT(GCFG, createRefKernels());
  fill(g.params, 99);
  await exportHF(join(root, 'hf'), { config: GCFG, params: g.params, tokenizerJson: tinyTokenizer(40), eotId: 39 });
  // A hub-style file may also carry lm_head.weight equal to wte: accepted and ignored.
  const p = paramSpecs(GCFG)[0];
  await editSafetensors(join(root, 'hf', 'model.safetensors'), () => {}, {
    'lm_head.weight': 'transformer.wte.weight',
  });
  const r = await importHF(join(root, 'hf'), join(root, 'ck'));
  assert.deepEqual(r.ignored, ['lm_head.weight']);
  const ck = await loadCheckpoint(join(root, 'ck'));
  assert.deepEqual(ck.config, GCFG);
  assert.ok(Buffer.from(ck.params.buffer).equals(Buffer.from(g.params.buffer)), 'params bit-identical');
  assert.equal(p.name, 'wte');
});

test('refused: a missing tensor', async (t) => {
  const root = await tempDir(t);
  await llamaHF(join(root, 'hf'));
  await editSafetensors(join(root, 'hf', 'model.safetensors'), (h) => {
    delete h['model.layers.1.mlp.up_proj.weight'];
  });
  await refused(join(root, 'hf'), join(root, 'ck'), CorruptFileError, /missing tensor.*model\.layers\.1\.mlp\.up_proj/);
});

test('refused: a wrong shape', async (t) => {
  const root = await tempDir(t);
  await llamaHF(join(root, 'hf'));
  await editSafetensors(join(root, 'hf', 'model.safetensors'), (h) => {
    h['model.norm.weight'].shape = [16, 2]; // same bytes, wrong shape
  });
  await refused(join(root, 'hf'), join(root, 'ck'), MismatchError, /model\.norm\.weight.*shape \[16,2\].*\[32\]/);
});

test('refused: a wrong dtype', async (t) => {
  const root = await tempDir(t);
  await llamaHF(join(root, 'hf'));
  await editSafetensors(join(root, 'hf', 'model.safetensors'), (h) => {
    h['model.layers.0.self_attn.k_proj.weight'].dtype = 'I32';
  });
  await refused(join(root, 'hf'), join(root, 'ck'), CorruptFileError, /k_proj\.weight.*dtype I32.*F32, F16, BF16/);
});

test('refused: a config that does not match the tensors (fewer layers; other kv heads)', async (t) => {
  const root = await tempDir(t);
  await llamaHF(join(root, 'hf'));
  await editJson(join(root, 'hf', 'config.json'), (j) => {
    j.num_hidden_layers = 1;
  });
  await refused(join(root, 'hf'), join(root, 'ck'), MismatchError, /does not account for.*model\.layers\.1\./);
  await editJson(join(root, 'hf', 'config.json'), (j) => {
    j.num_hidden_layers = 2;
    j.num_key_value_heads = 4;
  });
  await refused(join(root, 'hf'), join(root, 'ck'), MismatchError, /k_proj\.weight.*shape \[16,32\].*\[32,32\]/);
  await editJson(join(root, 'hf', 'config.json'), (j) => {
    j.num_key_value_heads = 2;
    j.tie_word_embeddings = true; // lm_head present and different from the embedding
  });
  await refused(join(root, 'hf'), join(root, 'ck'), MismatchError, /ties the embeddings.*lm_head\.weight differs/);
});

test('refused: an index that names a missing shard, or disagrees with the shards', async (t) => {
  const root = await tempDir(t);
  await llamaHF(join(root, 'hf'));
  const files = await shard(join(root, 'hf'), 2);
  await unlink(join(root, 'hf', files[1]));
  await refused(join(root, 'hf'), join(root, 'ck'), CorruptFileError, /shard file\(s\) that do not exist.*of-00002/);
  await llamaHF(join(root, 'hf2'));
  await shard(join(root, 'hf2'), 2);
  await editJson(join(root, 'hf2', 'model.safetensors.index.json'), (j) => {
    (j.weight_map as Record<string, string>)['model.norm.weight'] = files[0];
  });
  await refused(join(root, 'hf2'), join(root, 'ck'), CorruptFileError, /model\.norm\.weight.*index places in/);
  await editJson(join(root, 'hf2', 'model.safetensors.index.json'), (j) => {
    (j.weight_map as Record<string, string>)['model.norm.weight'] = '../escape.safetensors';
  });
  await refused(join(root, 'hf2'), join(root, 'ck'), CorruptFileError, /not a plain file name/);
});

test('refused: other architectures and options, by name', async (t) => {
  const root = await tempDir(t);
  await llamaHF(join(root, 'hf'));
  const cfg = join(root, 'hf', 'config.json');
  const cases: [(j: Record<string, unknown>) => void, RegExp][] = [
    [
      (j) => ((j.model_type = 'mistral'), (j.architectures = ['MistralForCausalLM'])),
      /model_type "mistral".*supported/,
    ],
    [(j) => (j.architectures = ['LlamaForSequenceClassification']), /is not LlamaForCausalLM/],
    [(j) => (j.rope_scaling = { rope_type: 'yarn', factor: 4 }), /rope_scaling type "yarn"/],
    [(j) => (j.attention_bias = true), /attention_bias/],
    [(j) => (j.hidden_act = 'gelu'), /hidden_act "gelu"/],
  ];
  const orig = await readFile(cfg, 'utf8');
  for (const [edit, re] of cases) {
    await writeFile(cfg, orig);
    await editJson(cfg, edit);
    await refused(join(root, 'hf'), join(root, 'ck'), UnsupportedModelError, re);
  }
});

test('tessera import --hf prints a report (--json) and exits 1 with a typed error on bad input', async (t) => {
  const root = await tempDir(t);
  await llamaHF(join(root, 'hf'));
  const ok = spawnSync(
    process.execPath,
    [CLI, 'import', '--hf', join(root, 'hf'), '--out', join(root, 'ck'), '--json'],
    {
      encoding: 'utf8',
    },
  );
  assert.equal(ok.status, 0, ok.stderr);
  const rep = JSON.parse(ok.stdout) as { arch: string; params: number; out: string; converted: boolean };
  assert.equal(rep.arch, 'llama');
  assert.equal(rep.params, new Llama(LCFG, createRefKernels()).numParams);
  assert.equal(rep.out, join(root, 'ck'));
  const human = spawnSync(process.execPath, [CLI, 'import', '--hf', join(root, 'hf'), '--out', join(root, 'ck3')], {
    encoding: 'utf8',
  });
  assert.equal(human.status, 0, human.stderr);
  assert.match(human.stderr, /imported Llama model .*parameters in 21 tensors \(21 F32\)/);
  await editJson(join(root, 'hf', 'config.json'), (j) => (j.model_type = 'bert'));
  const bad = spawnSync(
    process.execPath,
    [CLI, 'import', '--hf', join(root, 'hf'), '--out', join(root, 'ck2'), '--json'],
    {
      encoding: 'utf8',
    },
  );
  assert.equal(bad.status, 1);
  assert.equal((JSON.parse(bad.stdout) as { error: { code: string } }).error.code, 'UNSUPPORTED_MODEL');
  assert.ok(!(await readdir(root)).includes('ck2'));
});

test('tessera export --hf writes a Llama checkpoint back byte for byte: HF → import → export → import', async (t) => {
  const root = await tempDir(t);
  await llamaHF(join(root, 'hf'));
  const run = (...args: string[]) => {
    const r = spawnSync(process.execPath, [CLI, ...args, '--json'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as { weightsHash?: string; files?: string[] };
  };
  const first = run('import', '--hf', join(root, 'hf'), '--out', join(root, 'ck'));
  run('export', '--checkpoint', join(root, 'ck'), '--hf', join(root, 'hf2'));
  const a = await readFile(join(root, 'hf', 'model.safetensors')),
    b = await readFile(join(root, 'hf2', 'model.safetensors'));
  assert.ok(a.equals(b), 'model.safetensors byte-identical after the round trip');
  assert.deepEqual(
    JSON.parse(await readFile(join(root, 'hf2', 'config.json'), 'utf8')),
    JSON.parse(await readFile(join(root, 'hf', 'config.json'), 'utf8')),
  );
  assert.ok(
    (await readFile(join(root, 'hf2', 'tokenizer.json'))).equals(await readFile(join(root, 'hf', 'tokenizer.json'))),
  );
  const second = run('import', '--hf', join(root, 'hf2'), '--out', join(root, 'ck2'));
  assert.equal(second.weightsHash, first.weightsHash);
});
