/**
 * Fine-tuning a checkpoint on WebGPU (`tessera train --init DIR --device webgpu`, issue 18's
 * "Llama has no --device webgpu in train"): full fine-tuning of a Llama checkpoint (GQA) and of a
 * GPT-2 one runs its steps on the adapter (SwiftShader here) and ends within a stated tolerance
 * of the same run on the CPU, with a loadable checkpoint of new weights; LoRA with --device
 * webgpu is refused before any work, with a message that names the way out. Same rule as
 * test/webgpu-kernels.test.ts: under CI=true a missing adapter fails; locally only a missing
 * chromium skips.
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
import { SWIFTSHADER_ICD_PATHS } from '../src/kernels/webgpu/node-icd.js';
import { saveCheckpoint } from '../src/model/checkpoint.js';
import { GPT } from '../src/model/gpt.js';
import { loadLlamaCheckpoint, saveLlamaCheckpoint } from '../src/model/llama-checkpoint.js';
import { TINY_LLAMA } from '../src/model/llama-config.js';
import { Llama } from '../src/model/llama.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'tessera.js');
const CI = process.env.CI === 'true';
const icd = process.env.VK_ICD_FILENAMES ?? SWIFTSHADER_ICD_PATHS.find((p) => existsSync(p)) ?? null;
const skip = !icd && !CI ? 'chromium is not installed (no SwiftShader Vulkan ICD)' : false;

const WORDS = ['red', 'blue', 'green', 'cat', 'dog', 'sun', 'moon', 'tree'];
const jsonl = () =>
  Array.from({ length: 40 }, (_, i) =>
    JSON.stringify({ prompt: `say ${WORDS[i % 8]}:`, completion: ` ${WORDS[i % 8]} ${WORDS[(i + 3) % 8]}` }),
  ).join('\n') + '\n';

interface Summary {
  mode: string;
  device: string;
  initialValLoss: number;
  finalValLoss: number;
  baseHashBefore: string;
  files: Record<string, string>;
}

test(
  'train --init --device webgpu: full fine-tuning of Llama and GPT-2 checkpoints tracks the CPU; LoRA is refused',
  { skip, timeout: 300_000 },
  async (t) => {
    assert.ok(icd, 'CI=true: no SwiftShader Vulkan ICD for the WebGPU adapter (apt-get install chromium libvulkan1)');
    const root = await mkdtemp(join(tmpdir(), 'tessera-gpu-ft-'));
    t.after(() => rm(root, { recursive: true, force: true }));
    const data = join(root, 'data.jsonl');
    await writeFile(data, jsonl());
    const tok = trainBpe(jsonl(), { vocabSize: 260 });
    const k = createRefKernels();
    const extraFiles = { 'tokenizer.json': tok.serialize() };
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
        layers: 2,
      },
      k,
    );
    l.init(2);
    await saveLlamaCheckpoint(join(root, 'llama'), { config: l.config, params: l.params, extraFiles });
    const g = new GPT({ vocabSize: tok.vocabSize, ctx: 16, dim: 16, layers: 1, heads: 2 }, k);
    g.init(1);
    await saveCheckpoint(join(root, 'gpt'), { config: g.config, params: g.params, extraFiles });

    const cli = (args: string[]) =>
      spawnSync(process.execPath, [CLI, 'train', ...args], {
        encoding: 'utf8',
        env: { ...process.env, TESSERA_LOG: 'warn', VK_ICD_FILENAMES: icd! },
        timeout: 240_000,
      });
    const common = ['--jsonl', data, '--batch', '4', '--ctx', '16', '--threads', '1', '--deterministic'];
    const run = (init: string, device: string): Summary => {
      const r = cli([
        '--init',
        join(root, init),
        ...common,
        ...['--steps', '12', '--lr', '5e-3', '--eval-batches', '2', '--device', device, '--json'],
        ...['--out', join(root, `${init}-${device}`)],
      ]);
      assert.equal(r.status, 0, r.stderr);
      return JSON.parse(r.stdout) as Summary;
    };

    for (const init of ['llama', 'gpt']) {
      const cpu = run(init, 'cpu');
      const gpu = run(init, 'webgpu');
      const line = `${init}: val ${gpu.initialValLoss.toFixed(6)} → ${gpu.finalValLoss.toFixed(6)} on webgpu, ${cpu.initialValLoss.toFixed(6)} → ${cpu.finalValLoss.toFixed(6)} on cpu`;
      t.diagnostic(line);
      assert.equal(cpu.device, 'cpu');
      assert.equal(gpu.device, 'webgpu');
      assert.equal(gpu.mode, 'full');
      assert.ok(gpu.finalValLoss < gpu.initialValLoss - 0.05, `it learned on the device: ${line}`);
      // The WGSL kernels match the CPU's to ~1e-6 per op (test/webgpu-*.test.ts); over 12 AdamW
      // steps the validation loss stays within 1e-3 of the CPU run's.
      assert.ok(Math.abs(gpu.initialValLoss - cpu.initialValLoss) < 1e-4, line);
      assert.ok(Math.abs(gpu.finalValLoss - cpu.finalValLoss) < 1e-3, line);
      if (init === 'llama') {
        const ck = await loadLlamaCheckpoint(gpu.files.checkpoint);
        assert.notEqual(ck.weightsHash, gpu.baseHashBefore, 'the saved weights are the trained ones');
      }
    }

    const refused = cli([
      '--init',
      join(root, 'gpt'),
      ...common,
      '--lora',
      '4,8',
      '--device',
      'webgpu',
      '--out',
      join(root, 'x'),
    ]);
    assert.notEqual(refused.status, 0);
    assert.match(refused.stderr, /--device webgpu refused: LoRA fine-tuning runs on the CPU/);
    assert.ok(!existsSync(join(root, 'x', 'adapter')), 'nothing written');
  },
);
