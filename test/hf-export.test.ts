import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GPT } from '../src/model/gpt.js';
import { createRefKernels, loadKernels } from '../src/kernels/index.js';
import { exportHF, hfConfig, transpose } from '../src/model/hf.js';
import type { ModelConfig } from '../src/model/config.js';
import { paramSpecs } from '../src/model/params.js';
import { readSafetensors } from '../src/model/safetensors.js';
import { InvalidInputError, MismatchError } from '../src/util/errors.js';

const CFG: ModelConfig = { vocabSize: 97, ctx: 16, dim: 32, layers: 2, heads: 4 };
const EOT = 96;
// Debian's python3-torch lives at /usr/bin/python3 (a pyenv python3 may shadow it on PATH).
// TESSERA_HF_PYTHON can point at an interpreter that also has `transformers`, to check with
// GPT2LMHeadModel itself instead of the script's independent implementation of HF's layout.
const PYTHON = process.env.TESSERA_HF_PYTHON || '/usr/bin/python3';
// dist/test/hf-export.test.js -> repo root
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SCRIPT = join(ROOT, 'test', 'python', 'hf_gpt2_logits.py');

/** A minimal valid Hugging Face tokenizer.json: 96 single-character tokens + <|endoftext|>. */
function tinyTokenizer(): object {
  const vocab: Record<string, number> = {};
  for (let i = 0; i < 96; i++) vocab[String.fromCharCode(32 + i)] = i;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [
      {
        id: EOT,
        content: '<|endoftext|>',
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      },
    ],
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: null,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges: [],
    },
  };
}

/**
 * A GPT with every parameter random and O(0.1-1) (not just the GPT-2 init, whose zero biases
 * and unit LayerNorm gains would hide layout mistakes in those tensors).
 */
function randomModel(): GPT {
  const gpt = new GPT(CFG, createRefKernels());
  gpt.init(1234);
  let s = 0x9e3779b9;
  const u = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s / 0x100000000) * 2 - 1;
  };
  for (const spec of paramSpecs(CFG)) {
    const v = gpt.params.subarray(spec.offset, spec.offset + spec.size);
    if (spec.shape.length === 1) {
      const isGain = /ln[12f]\.w$/.test(spec.name);
      for (let i = 0; i < v.length; i++) v[i] = (isGain ? 1 : 0) + 0.2 * u();
    } else {
      for (let i = 0; i < v.length; i++) v[i] = 0.15 * u();
    }
  }
  return gpt;
}

function torchAvailable(): string | null {
  const r = spawnSync(PYTHON, ['-c', 'import torch'], { encoding: 'utf8' });
  if (r.error) return `${PYTHON} not runnable (${r.error.message})`;
  if (r.status !== 0) return `${PYTHON} cannot import torch: ${r.stderr.trim().split('\n').pop()}`;
  return null;
}

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'tessera-hf-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  return d;
}

test('transpose maps nn.Linear [out,in] to Conv1D [in,out]', () => {
  const w = new Float32Array([1, 2, 3, 4, 5, 6]); // [2,3]
  assert.deepEqual([...transpose(w, 2, 3)], [1, 4, 2, 5, 3, 6]);
});

test('export writes HF names, Conv1D layouts, a full GPT2Config and tokenizer files', async (t) => {
  const root = await tempDir(t);
  const dir = join(root, 'hf');
  const gpt = randomModel();
  const { files } = await exportHF(dir, {
    config: CFG,
    params: gpt.params,
    tokenizerJson: tinyTokenizer(),
    eotId: EOT,
  });
  const names = [
    'config.json',
    'generation_config.json',
    'model.safetensors',
    'tokenizer.json',
    'tokenizer_config.json',
  ];
  assert.deepEqual((await readdir(dir)).sort(), names);
  assert.equal(files.length, 5);
  assert.deepEqual(await readdir(root), ['hf'], 'no temp dirs left');

  const st = await readSafetensors(join(dir, 'model.safetensors'));
  assert.deepEqual(st.metadata, { format: 'pt' });
  assert.equal(st.tensors.size, 2 + 12 * CFG.layers + 2);
  assert.ok(!st.tensors.has('lm_head.weight'));
  const C = CFG.dim;
  assert.deepEqual(st.tensors.get('transformer.wte.weight')!.shape, [97, C]);
  assert.deepEqual(st.tensors.get('transformer.wpe.weight')!.shape, [16, C]);
  assert.deepEqual(st.tensors.get('transformer.h.1.attn.c_attn.weight')!.shape, [C, 3 * C]);
  assert.deepEqual(st.tensors.get('transformer.h.1.attn.c_proj.weight')!.shape, [C, C]);
  assert.deepEqual(st.tensors.get('transformer.h.1.mlp.c_fc.weight')!.shape, [C, 4 * C]);
  assert.deepEqual(st.tensors.get('transformer.h.1.mlp.c_proj.weight')!.shape, [4 * C, C]);
  // Spot-check the transpose: c_attn.weight[i, o] == qkv.w[o, i].
  const qkv = gpt.p.layers[1].qkvw,
    cattn = st.tensors.get('transformer.h.1.attn.c_attn.weight')!.data;
  for (const [o, i] of [
    [0, 0],
    [95, 3],
    [40, 31],
    [64, 17],
  ])
    assert.equal(cattn[i * 3 * C + o], qkv[o * C + i]);
  assert.deepEqual([...st.tensors.get('transformer.h.0.mlp.c_fc.bias')!.data], [...gpt.p.layers[0].fcb]);

  const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
  assert.deepEqual(config, hfConfig(CFG, EOT));
  assert.equal(config.model_type, 'gpt2');
  assert.deepEqual(config.architectures, ['GPT2LMHeadModel']);
  assert.equal(config.n_embd, 32);
  assert.equal(config.n_positions, 16);
  assert.equal(config.activation_function, 'gelu_new');
  assert.equal(config.eos_token_id, EOT);
  assert.equal(config.n_inner, null);
  const tc = JSON.parse(await readFile(join(dir, 'tokenizer_config.json'), 'utf8'));
  assert.equal(tc.eos_token, '<|endoftext|>');
  assert.equal(tc.tokenizer_class, 'PreTrainedTokenizerFast');
  assert.deepEqual(JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8')), tinyTokenizer());
  const gc = JSON.parse(await readFile(join(dir, 'generation_config.json'), 'utf8'));
  assert.equal(gc.eos_token_id, EOT);

  // Re-export replaces the directory.
  await exportHF(dir, { config: CFG, params: gpt.params, tokenizerJson: tinyTokenizer(), eotId: 0 });
  assert.equal(JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')).eos_token_id, 0);
  assert.deepEqual(await readdir(root), ['hf']);
});

test('export validates its inputs and writes nothing on error', async (t) => {
  const root = await tempDir(t);
  const dir = join(root, 'hf');
  const gpt = randomModel();
  await assert.rejects(
    exportHF(dir, { config: CFG, params: gpt.params, tokenizerJson: tinyTokenizer(), eotId: 97 }),
    InvalidInputError,
  );
  await assert.rejects(
    exportHF(dir, { config: CFG, params: gpt.params.subarray(1), tokenizerJson: tinyTokenizer(), eotId: 96 }),
    InvalidInputError,
  );
  const big = tinyTokenizer() as { added_tokens: { id: number; content: string }[] };
  big.added_tokens.push({ id: 200, content: '<|pad|>' });
  await assert.rejects(
    exportHF(dir, { config: CFG, params: gpt.params, tokenizerJson: big, eotId: 96 }),
    (e: unknown) => e instanceof MismatchError && /201/.test(e.message) && /97/.test(e.message),
  );
  assert.deepEqual(await readdir(root), []);
});

test('HF export reproduces our logits in PyTorch (HF GPT-2 layout)', async (t) => {
  const why = torchAvailable();
  if (why) {
    t.skip(`skipping: ${why}; the HF logits check needs PyTorch at ${PYTHON}`);
    return;
  }
  const root = await tempDir(t);
  const dir = join(root, 'hf');
  const gpt = randomModel();
  await exportHF(dir, { config: CFG, params: gpt.params, tokenizerJson: tinyTokenizer(), eotId: EOT });
  // Our logits from the reference kernels and, when the addon loads, the native kernels too.
  const models: [string, GPT][] = [['ref', gpt]];
  const k = loadKernels();
  if (k.name !== 'ref') {
    const g = new GPT(CFG, k);
    g.params.set(gpt.params);
    models.push([k.name, g]);
  }

  for (const [B, T] of [
    [2, 16],
    [3, 5],
  ]) {
    const tokens = new Int32Array(B * T);
    for (let i = 0; i < tokens.length; i++) tokens[i] = (i * 37 + 11 + B) % CFG.vocabSize;
    tokens[0] = EOT;
    const rows = Array.from({ length: B }, (_, b) => Array.from(tokens.subarray(b * T, (b + 1) * T)));
    const r = spawnSync(PYTHON, [SCRIPT], {
      input: JSON.stringify({ dir, tokens: rows }),
      encoding: 'utf8',
      maxBuffer: 64 << 20,
    });
    assert.equal(r.status, 0, `python failed: ${r.stderr}`);
    const out = JSON.parse(r.stdout) as { impl: string; shape: number[]; logits: number[][][] };
    t.diagnostic(`B=${B} T=${T}: python used the ${out.impl} implementation`);
    assert.deepEqual(out.shape, [B, T, CFG.vocabSize]);
    const theirs = out.logits.flat(2);
    for (const [name, model] of models) {
      const ours = model.logits(tokens, B, T);
      assert.equal(theirs.length, ours.length);
      let maxDiff = 0,
        maxAbs = 0;
      for (let i = 0; i < ours.length; i++) {
        maxDiff = Math.max(maxDiff, Math.abs(ours[i] - theirs[i]));
        maxAbs = Math.max(maxAbs, Math.abs(ours[i]));
      }
      t.diagnostic(
        `B=${B} T=${T} ${name} kernels: max |logit| ${maxAbs.toFixed(3)}, max abs diff ${maxDiff.toExponential(2)}`,
      );
      assert.ok(maxAbs > 0.5, 'logits are not trivially small');
      assert.ok(maxDiff < 1e-4, `${name} kernels: max abs logit diff ${maxDiff} >= 1e-4`);
    }
  }
});
