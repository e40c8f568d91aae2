/**
 * LoRA (src/model/lora.ts) on GPT-2 and Llama, and its PEFT export (src/model/peft.ts):
 * - gradients of A and B (and of the base inputs through the adapter) against float32 central
 *   differences, and exactly against the identities dA = s·Bᵀ·G, dB = s·G·Aᵀ where G is the
 *   effective weight's gradient that the base backward forms anyway;
 * - a fresh adapter (B = 0) gives bit-identical logits;
 * - training only the adapter lowers the loss while the base weights stay bit-identical;
 * - merged weights W + (alpha/r)·B·A give the logits of base + adapter;
 * - the PEFT layout: tensor names and shapes as PEFT's docs name them, adapter_config.json,
 *   an export → load round trip, and a merged Hugging Face export whose logits equal base + adapter.
 * Every model here is tiny (a few thousand parameters) and runs on the reference kernels.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRefKernels } from '../src/kernels/ref.js';
import { loadKernels } from '../src/kernels/index.js';
import type { ModelConfig } from '../src/model/config.js';
import { GPT } from '../src/model/gpt.js';
import { readHF } from '../src/model/hf-import.js';
import { TINY_LLAMA, type LlamaConfig } from '../src/model/llama-config.js';
import { Llama } from '../src/model/llama.js';
import {
  LoraAdapter,
  loraTrainable,
  resolveTargets,
  baseWeight,
  loraSites,
  type AnyModelConfig,
  type LoraConfig,
} from '../src/model/lora.js';
import { exportMergedHF, exportPeft, loadPeft, peftTensorName } from '../src/model/peft.js';
import { readSafetensors } from '../src/model/safetensors.js';
import { AdamW } from '../src/train/adamw.js';
import { innerStep } from '../src/train/inner-step.js';
import { InvalidInputError, MismatchError } from '../src/util/errors.js';
import { encodedSize, getCodec } from '../src/swarm/compress/index.js';
import { paramCount } from '../src/model/params.js';
import { weightsHash } from '../src/model/checkpoint.js';

const GCFG: ModelConfig = { vocabSize: 11, ctx: 8, dim: 8, layers: 2, heads: 2 };
const LCFG: LlamaConfig = {
  ...TINY_LLAMA,
  vocabSize: 11,
  dim: 8,
  heads: 4,
  kvHeads: 2,
  headDim: 4,
  hidden: 12,
  layers: 2,
  ropeTheta: 100,
  ropeScaling: { type: 'linear', factor: 2 },
};

function rand(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s / 0x100000000) * 2 - 1;
  };
}

type Model = GPT | Llama;

function model(arch: 'gpt2' | 'llama', seed: number): { m: Model; any: AnyModelConfig } {
  const k = createRefKernels();
  if (arch === 'gpt2') {
    const m = new GPT(GCFG, k);
    m.init(seed);
    // Bigger than init so every path carries signal in a 2-layer toy.
    const u = rand(seed + 100);
    for (let i = 0; i < m.params.length; i++) m.params[i] += 0.2 * u();
    return { m, any: { arch: 'gpt2', config: GCFG } };
  }
  const m = new Llama(LCFG, k);
  m.init(seed);
  const u = rand(seed + 100);
  for (let i = 0; i < m.params.length; i++) m.params[i] += 0.2 * u();
  return { m, any: { arch: 'llama', config: LCFG } };
}

function batch(V: number, B: number, T: number, seed: number): { tokens: Int32Array; targets: Int32Array } {
  const u = rand(seed);
  const tokens = Int32Array.from({ length: B * T }, () => Math.floor(((u() + 1) / 2) * V) % V);
  const targets = Int32Array.from({ length: B * T }, (_, i) => (i === 3 ? -1 : Math.floor(((u() + 1) / 2) * V) % V));
  return { tokens, targets };
}

const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

const ALL: Record<'gpt2' | 'llama', LoraConfig> = {
  gpt2: { r: 3, alpha: 6, targets: ['all'] },
  llama: { r: 3, alpha: 6, targets: ['all'] },
};

for (const arch of ['gpt2', 'llama'] as const) {
  test(`${arch}: LoRA gradients of A, B and the base path match finite differences and the exact identities`, () => {
    const { m, any } = model(arch, 3);
    const a = new LoraAdapter(any, ALL[arch]);
    a.init(5);
    const u = rand(77);
    for (const s of a.sites) for (let i = 0; i < s.b.size; i++) a.params[s.b.offset + i] = 0.3 * u(); // B ≠ 0
    m.lora = a;
    const B = 2,
      T = 5;
    const { tokens, targets } = batch(any.config.vocabSize, B, T, 9);
    const tr = loraTrainable(m, { freezeBase: false });
    tr.zeroGrad();
    tr.forwardBackward(tokens, targets, B, T);
    const gA = a.grads.slice(),
      gBase = m.grads.slice();
    // A frozen base (the default): the adapter's gradient bit for bit, no base gradient formed.
    const fr = loraTrainable(m);
    if (arch === 'gpt2') {
      m.grads.fill(7);
      fr.zeroGrad();
      fr.forwardBackward(tokens, targets, B, T);
      assert.ok(bits(a.grads).equals(bits(gA)), 'adapter gradients equal with the base frozen');
      assert.ok(
        m.grads.every((x) => x === 7),
        'a frozen base forms no gradient',
      );
      loraTrainable(m, { freezeBase: false });
      a.grads.set(gA);
    }

    // Exact identities against the effective weight's gradient G (what the base backward forms).
    let worstId = 0;
    for (const s of a.sites) {
      const G = baseWeight(any, gBase, s.layer, s.module);
      const { A, B: Bm } = a.tensors(s.layer, s.module)!;
      const r = a.config.r;
      for (let j = 0; j < r; j++)
        for (let i = 0; i < s.in; i++) {
          let want = 0; // dA[j,i] = s Σ_o B[o,j] G[o,i]
          for (let o = 0; o < s.out; o++) want += Bm[o * r + j] * G[o * s.in + i];
          want *= a.scale;
          const got = gA[s.a.offset + j * s.in + i];
          worstId = Math.max(worstId, Math.abs(got - want) / Math.max(1e-6, Math.abs(want) + Math.abs(got)));
        }
      for (let o = 0; o < s.out; o++)
        for (let j = 0; j < r; j++) {
          let want = 0; // dB[o,j] = s Σ_i G[o,i] A[j,i]
          for (let i = 0; i < s.in; i++) want += G[o * s.in + i] * A[j * s.in + i];
          want *= a.scale;
          const got = gA[s.b.offset + o * r + j];
          worstId = Math.max(worstId, Math.abs(got - want) / Math.max(1e-6, Math.abs(want) + Math.abs(got)));
        }
    }

    // Float32 central differences with Richardson extrapolation (as test/llama.test.ts does).
    const fd = (buf: Float32Array, i: number, grad: number) => {
      const x0 = buf[i];
      const central = (h: number) => {
        buf[i] = x0 + h;
        const fp = m.loss(tokens, targets, B, T);
        buf[i] = x0 - h;
        const fm = m.loss(tokens, targets, B, T);
        buf[i] = x0;
        return (fp - fm) / (Math.fround(x0 + h) - Math.fround(x0 - h));
      };
      const num = (4 * central(2.5e-2) - central(5e-2)) / 3;
      return Math.abs(num - grad) / Math.max(1e-3, Math.abs(num) + Math.abs(grad));
    };
    let worstA = 0,
      worstB = 0,
      worstBase = 0,
      n = 0;
    for (const s of a.sites) {
      for (let j = 0; j < s.a.size; j += Math.max(1, Math.floor(s.a.size / 5)), n++)
        worstA = Math.max(worstA, fd(a.params, s.a.offset + j, gA[s.a.offset + j]));
      for (let j = 0; j < s.b.size; j += Math.max(1, Math.floor(s.b.size / 5)), n++)
        worstB = Math.max(worstB, fd(a.params, s.b.offset + j, gA[s.b.offset + j]));
    }
    // The input path: base embedding and first-layer weights see gradients that went through the adapters.
    for (let j = 0; j < 60; j++) {
      const i = (j * 7919) % m.params.length;
      worstBase = Math.max(worstBase, fd(m.params, i, gBase[i]));
    }
    console.log(
      `${arch} LoRA: identity rel err ${worstId.toExponential(2)}; fd rel err A ${worstA.toExponential(2)}, B ${worstB.toExponential(2)}, base ${worstBase.toExponential(2)} (${n} adapter coords)`,
    );
    assert.ok(worstId < 1e-4, `identity error ${worstId}`);
    assert.ok(worstA < 1e-2, `A fd error ${worstA}`);
    assert.ok(worstB < 1e-2, `B fd error ${worstB}`);
    assert.ok(worstBase < 1e-2, `base fd error ${worstBase}`);
  });

  test(`${arch}: a fresh adapter leaves the logits bit-identical`, () => {
    const { m, any } = model(arch, 4);
    const { tokens } = batch(any.config.vocabSize, 2, 6, 1);
    const before = m.logits(tokens, 2, 6);
    const a = new LoraAdapter(any, ALL[arch]);
    a.init(1);
    m.lora = a;
    const after = m.logits(tokens, 2, 6);
    assert.ok(bits(before).equals(bits(after)), 'logits changed');
    m.lora = null;
    assert.ok(bits(m.logits(tokens, 2, 6)).equals(bits(before)));
  });

  test(`${arch}: training only the adapter lowers the loss; base weights stay bit-identical`, () => {
    const { m, any } = model(arch, 6);
    const base = weightsHash(m.params);
    const a = new LoraAdapter(any, {
      r: 4,
      alpha: 8,
      targets: arch === 'gpt2' ? ['c_attn', 'c_fc'] : ['q_proj', 'v_proj', 'up_proj'],
    });
    a.init(2);
    m.lora = a;
    const tr = loraTrainable(m);
    const opt = new AdamW(
      null,
      { beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0, gradClip: 1 },
      m.kernels,
      a.specs,
    );
    assert.equal(opt.m.length, a.numParams);
    const B = 2,
      T = 6;
    const { tokens, targets } = batch(any.config.vocabSize, B, T, 12);
    const l0 = m.loss(tokens, targets, B, T);
    const schedule = {
      kind: 'constant' as const,
      maxLr: 1e-2,
      minLrFrac: 1,
      warmupSteps: 0,
      totalSteps: 40,
      decayFrac: 0.2,
    };
    for (let step = 0; step < 40; step++)
      innerStep(tr, opt, { batches: [{ inputs: tokens, targets }], B, T, schedule, step });
    const l1 = m.loss(tokens, targets, B, T);
    console.log(
      `${arch} LoRA-only training: loss ${l0.toFixed(4)} → ${l1.toFixed(4)} (${a.numParams} adapter / ${m.params.length} base floats)`,
    );
    assert.ok(l1 < l0 - 0.1, `loss ${l0} → ${l1}`);
    assert.equal(weightsHash(m.params), base, 'base weights changed');
  });

  test(`${arch}: merged weights give the logits of base + adapter`, () => {
    const { m, any } = model(arch, 7);
    const a = new LoraAdapter(any, ALL[arch]);
    a.init(3);
    const u = rand(5);
    for (const s of a.sites) for (let i = 0; i < s.b.size; i++) a.params[s.b.offset + i] = 0.2 * u();
    m.lora = a;
    const { tokens } = batch(any.config.vocabSize, 2, 6, 3);
    const withAdapter = m.logits(tokens, 2, 6);
    const baseCopy = m.params.slice();
    const merged = a.merge(m.params);
    assert.ok(bits(m.params).equals(bits(baseCopy)), 'merge must not touch the base');
    m.lora = null;
    const plain = m.logits(tokens, 2, 6);
    m.params.set(merged);
    const mergedLogits = m.logits(tokens, 2, 6);
    let diff = 0,
      moved = 0;
    for (let i = 0; i < plain.length; i++) {
      diff = Math.max(diff, Math.abs(mergedLogits[i] - withAdapter[i]));
      moved = Math.max(moved, Math.abs(plain[i] - withAdapter[i]));
    }
    console.log(
      `${arch} merged vs base+adapter: max logit diff ${diff.toExponential(2)} (adapter moved logits by ${moved.toFixed(3)})`,
    );
    assert.ok(moved > 1e-2, 'the adapter should change the logits');
    assert.ok(diff < 1e-5, `max diff ${diff}`);
  });
}

test('native kernels: a fresh adapter leaves the logits bit-identical on both architectures', () => {
  const k = loadKernels();
  for (const m of [new GPT(GCFG, k), new Llama(LCFG, k)]) {
    m.init(2);
    const any: AnyModelConfig = m instanceof GPT ? { arch: 'gpt2', config: GCFG } : { arch: 'llama', config: LCFG };
    const { tokens } = batch(11, 2, 6, 5);
    const before = m.logits(tokens, 2, 6);
    const a = new LoraAdapter(any, { r: 8, alpha: 16, targets: ['all'] });
    a.init(7);
    m.lora = a;
    assert.ok(bits(m.logits(tokens, 2, 6)).equals(bits(before)), `${k.name} kernels: logits changed`);
  }
});

test('a pseudo-gradient of the adapter alone goes through the swarm codecs; payload sizes at GPT-2 small', () => {
  const { m, any } = model('gpt2', 12);
  const a = new LoraAdapter(any, { r: 4, alpha: 8, targets: ['all'] });
  a.init(1);
  m.lora = a;
  const start = a.params.slice();
  const opt = new AdamW(null, { beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0, gradClip: 1 }, m.kernels, a.specs);
  const { tokens, targets } = batch(11, 2, 6, 2);
  const schedule = {
    kind: 'constant' as const,
    maxLr: 1e-2,
    minLrFrac: 1,
    warmupSteps: 0,
    totalSteps: 5,
    decayFrac: 0.2,
  };
  for (let step = 0; step < 5; step++)
    innerStep(loraTrainable(m), opt, { batches: [{ inputs: tokens, targets }], B: 2, T: 6, schedule, step });
  const delta = new Float32Array(a.numParams);
  for (let i = 0; i < delta.length; i++) delta[i] = start[i] - a.params[i];
  for (const id of ['fp32', 'int8'] as const) {
    const c = getCodec(id);
    const enc = c.encode(delta);
    assert.equal(enc.bytes.length, encodedSize(id, a.numParams));
    assert.deepEqual(c.decode(enc.bytes, a.numParams), enc.decoded);
  }
  // The sizes at GPT-2 small (124M), computed from the layouts (nothing allocated).
  const small: ModelConfig = { vocabSize: 50257, ctx: 1024, dim: 768, layers: 12, heads: 12 };
  const full = paramCount(small);
  for (const [targetsList, r] of [
    [['c_attn'], 8],
    [['all'], 16],
  ] as const) {
    const sites = loraSites({ arch: 'gpt2', config: small }, { r, alpha: 2 * r, targets: [...targetsList] });
    const n = sites.reduce((t, s) => t + s.a.size + s.b.size, 0);
    const ratio = encodedSize('fp32', full) / encodedSize('fp32', n);
    console.log(
      `GPT-2 small LoRA r=${r} on ${targetsList.join('+')}: ${n.toLocaleString('en-US')} adapter floats vs ${full.toLocaleString('en-US')}; fp32 payload ${encodedSize('fp32', n).toLocaleString('en-US')} B vs ${encodedSize('fp32', full).toLocaleString('en-US')} B (${ratio.toFixed(0)}× smaller), int8 ${encodedSize('int8', n).toLocaleString('en-US')} B`,
    );
    assert.ok(ratio > 40, `ratio ${ratio}`);
  }
});

test('targets: names resolve per architecture, unknown ones are refused', () => {
  assert.deepEqual(resolveTargets('gpt2', ['c_proj']), ['attn.c_proj', 'mlp.c_proj']);
  assert.deepEqual(resolveTargets('llama', ['v_proj', 'q_proj', 'q_proj']), ['q_proj', 'v_proj']);
  assert.throws(() => resolveTargets('llama', ['c_attn']), InvalidInputError);
  assert.throws(
    () => new LoraAdapter({ arch: 'gpt2', config: GCFG }, { r: 0, alpha: 1, targets: ['c_fc'] }),
    InvalidInputError,
  );
  const a = new LoraAdapter({ arch: 'gpt2', config: GCFG }, { r: 2, alpha: 2, targets: ['c_fc'] });
  const l = new Llama(LCFG, createRefKernels());
  assert.throws(() => {
    l.lora = a;
  }, MismatchError);
  const g = new GPT({ ...GCFG, dim: 16 }, createRefKernels());
  assert.throws(() => {
    g.lora = a;
  }, MismatchError);
});

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'tessera-lora-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  return d;
}

/** PEFT's documented names (huggingface.co/docs/peft/developer_guides/checkpoint), written out by hand. */
const EXPECTED_LAYER0 = {
  llama: (C: number, Q: number, K: number, H: number, r: number) => [
    ['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', [r, C]],
    ['base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight', [Q, r]],
    ['base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight', [r, C]],
    ['base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight', [K, r]],
    ['base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight', [r, C]],
    ['base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight', [K, r]],
    ['base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight', [r, Q]],
    ['base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight', [C, r]],
    ['base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight', [r, C]],
    ['base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight', [H, r]],
    ['base_model.model.model.layers.0.mlp.up_proj.lora_A.weight', [r, C]],
    ['base_model.model.model.layers.0.mlp.up_proj.lora_B.weight', [H, r]],
    ['base_model.model.model.layers.0.mlp.down_proj.lora_A.weight', [r, H]],
    ['base_model.model.model.layers.0.mlp.down_proj.lora_B.weight', [C, r]],
  ],
  gpt2: (C: number, r: number) => [
    ['base_model.model.transformer.h.0.attn.c_attn.lora_A.weight', [r, C]],
    ['base_model.model.transformer.h.0.attn.c_attn.lora_B.weight', [3 * C, r]],
    ['base_model.model.transformer.h.0.attn.c_proj.lora_A.weight', [r, C]],
    ['base_model.model.transformer.h.0.attn.c_proj.lora_B.weight', [C, r]],
    ['base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight', [r, C]],
    ['base_model.model.transformer.h.0.mlp.c_fc.lora_B.weight', [4 * C, r]],
    ['base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight', [r, 4 * C]],
    ['base_model.model.transformer.h.0.mlp.c_proj.lora_B.weight', [C, r]],
  ],
};

for (const arch of ['gpt2', 'llama'] as const) {
  test(`${arch}: PEFT export has PEFT's tensor names, shapes and adapter_config.json, and loads back bit for bit`, async (t) => {
    const dir = await tempDir(t);
    const { any } = model(arch, 1);
    const a = new LoraAdapter(any, ALL[arch]);
    a.init(9);
    const u = rand(3);
    for (const s of a.sites) for (let i = 0; i < s.b.size; i++) a.params[s.b.offset + i] = 0.1 * u();
    await exportPeft(join(dir, 'adapter'), a, { baseModelNameOrPath: `tiny-${arch}` });
    const st = await readSafetensors(join(dir, 'adapter', 'adapter_model.safetensors'));
    const got = [...st.tensors.entries()].map(([name, x]) => [name, [...x.shape]]);
    const r = a.config.r;
    const layer0 = arch === 'llama' ? EXPECTED_LAYER0.llama(8, 16, 8, 12, r) : EXPECTED_LAYER0.gpt2(GCFG.dim, r);
    const layer1 = layer0.map(([n, s]) => [(n as string).replace(/\.(0)\./, '.1.'), s]);
    assert.deepEqual(
      got.sort((x, y) => ((x[0] as string) < (y[0] as string) ? -1 : 1)),
      [...layer0, ...layer1].sort((x, y) => ((x[0] as string) < (y[0] as string) ? -1 : 1)),
    );
    assert.equal(st.metadata.format, 'pt');
    assert.equal(
      peftTensorName(arch, 1, arch === 'llama' ? 'down_proj' : 'mlp.c_proj', 'B'),
      layer1[layer1.length - 1][0],
    );
    const cfg = JSON.parse(await readFile(join(dir, 'adapter', 'adapter_config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    assert.equal(cfg.peft_type, 'LORA');
    assert.equal(cfg.task_type, 'CAUSAL_LM');
    assert.equal(cfg.r, 3);
    assert.equal(cfg.lora_alpha, 6);
    assert.equal(cfg.base_model_name_or_path, `tiny-${arch}`);
    assert.equal(cfg.fan_in_fan_out, arch === 'gpt2');
    assert.deepEqual(
      cfg.target_modules,
      arch === 'gpt2'
        ? ['c_attn', 'attn.c_proj', 'c_fc', 'mlp.c_proj']
        : ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
    );
    const back = await loadPeft(join(dir, 'adapter'), any);
    assert.ok(bits(back.params).equals(bits(a.params)));
    assert.equal(back.scale, a.scale);
    // The other architecture's model is refused.
    const other: AnyModelConfig = arch === 'gpt2' ? { arch: 'llama', config: LCFG } : { arch: 'gpt2', config: GCFG };
    await assert.rejects(
      loadPeft(join(dir, 'adapter'), other),
      (e: Error) => e instanceof MismatchError || e instanceof InvalidInputError,
    );
  });

  test(`${arch}: the merged Hugging Face export imports back with the logits of base + adapter`, async (t) => {
    const dir = await tempDir(t);
    const { m, any } = model(arch, 8);
    const a = new LoraAdapter(any, ALL[arch]);
    a.init(4);
    const u = rand(8);
    for (const s of a.sites) for (let i = 0; i < s.b.size; i++) a.params[s.b.offset + i] = 0.2 * u();
    m.lora = a;
    const { tokens } = batch(any.config.vocabSize, 1, 7, 4);
    const want = m.logits(tokens, 1, 7);
    const V = any.config.vocabSize;
    const vocab: Record<string, number> = {};
    for (let i = 0; i < V - 1; i++) vocab[String.fromCharCode(65 + i)] = i;
    const tok = {
      version: '1.0',
      added_tokens: [{ id: V - 1, content: '<|endoftext|>', special: true }],
      model: { type: 'BPE', vocab, merges: [] },
    };
    if (arch === 'gpt2')
      await exportMergedHF(join(dir, 'hf'), { arch, adapter: a, params: m.params, tokenizerJson: tok, eotId: V - 1 });
    else
      await exportMergedHF(join(dir, 'hf'), { arch, adapter: a, params: m.params, tokenizerJson: JSON.stringify(tok) });
    const imp = await readHF(join(dir, 'hf'));
    assert.equal(imp.arch, arch);
    const k = createRefKernels();
    const fresh = imp.arch === 'gpt2' ? new GPT(imp.config, k) : new Llama(imp.config, k);
    fresh.params.set(imp.params);
    const got = fresh.logits(tokens, 1, 7);
    let diff = 0;
    for (let i = 0; i < got.length; i++) diff = Math.max(diff, Math.abs(got[i] - want[i]));
    console.log(`${arch} merged HF export vs base+adapter: max logit diff ${diff.toExponential(2)}`);
    assert.ok(diff < 1e-5, `max diff ${diff}`);
  });
}
