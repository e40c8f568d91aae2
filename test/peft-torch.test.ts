/**
 * The PEFT export (src/model/peft.ts) read by an independent implementation: a Hugging Face base
 * model from scripts/hf_fixtures.py is imported, a random LoRA adapter (B ≠ 0) on every target
 * module is exported in PEFT's layout, and scripts/peft_reference.py applies that adapter as PEFT
 * defines it (names, shapes, alpha/r, fan_in_fan_out for GPT-2's Conv1D) and runs the fixtures'
 * float64 PyTorch forward. Its logits must equal Tessera's base + adapter forward.
 *
 * Needs /usr/bin/python3 with torch (TESSERA_HF_PYTHON overrides); skips without it, except
 * under CI=true where it fails, as test/hf-import.test.ts does.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRefKernels } from '../src/kernels/ref.js';
import { GPT } from '../src/model/gpt.js';
import { readHF } from '../src/model/hf-import.js';
import { Llama } from '../src/model/llama.js';
import { LoraAdapter } from '../src/model/lora.js';
import { exportPeft } from '../src/model/peft.js';

const PYTHON = process.env.TESSERA_HF_PYTHON || '/usr/bin/python3';
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

function torchMissing(): string | null {
  const r = spawnSync(PYTHON, ['-c', 'import torch'], { encoding: 'utf8' });
  if (r.error) return `${PYTHON} not runnable (${r.error.message})`;
  if (r.status !== 0) return `${PYTHON} cannot import torch`;
  return null;
}
const NO_TORCH = torchMissing();
if (NO_TORCH && process.env.CI === 'true') throw new Error(`PEFT parity test needs torch under CI: ${NO_TORCH}`);

const TOKENS = [
  [1, 5, 9, 2, 33, 63, 0, 17, 4, 4],
  [7, 7, 3, 62, 21, 8, 30, 1, 9, 12],
];

for (const arch of ['gpt2', 'llama'] as const) {
  test(
    `${arch}: a PEFT adapter applied by an independent PyTorch reference gives Tessera's base + adapter logits`,
    { skip: NO_TORCH ? `needs torch (${NO_TORCH})` : false },
    async (t) => {
      const root = await mkdtemp(join(tmpdir(), 'tessera-peft-'));
      t.after(() => rm(root, { recursive: true, force: true }));
      const hf = join(root, 'hf');
      const fx = spawnSync(
        PYTHON,
        [join(ROOT, 'scripts', 'hf_fixtures.py'), '--arch', arch, '--out', hf, '--seed', '11'],
        {
          encoding: 'utf8',
        },
      );
      assert.equal(fx.status, 0, fx.stderr);
      const imp = await readHF(hf);
      const k = createRefKernels();
      const m = imp.arch === 'gpt2' ? new GPT(imp.config, k) : new Llama(imp.config, k);
      m.params.set(imp.params);
      const a = new LoraAdapter(imp, { r: 4, alpha: 12, targets: ['all'] });
      a.init(3);
      let s = 12345;
      for (const site of a.sites)
        for (let i = 0; i < site.b.size; i++) {
          s = (Math.imul(s, 1103515245) + 12345) >>> 0;
          a.params[site.b.offset + i] = ((s / 2 ** 32) * 2 - 1) * 0.2;
        }
      m.lora = a;
      await exportPeft(join(root, 'adapter'), a, { baseModelNameOrPath: hf });
      const out = join(root, 'ref.json');
      const r = spawnSync(
        PYTHON,
        [
          join(ROOT, 'scripts', 'peft_reference.py'),
          '--base',
          hf,
          '--adapter',
          join(root, 'adapter'),
          '--tokens',
          JSON.stringify(TOKENS),
          '--out',
          out,
        ],
        { encoding: 'utf8' },
      );
      assert.equal(r.status, 0, r.stderr);
      const ref = JSON.parse(await readFile(out, 'utf8')) as { logits: number[]; modules: string[] };
      assert.equal(ref.modules.length, a.sites.length);
      const got = m.logits(Int32Array.from(TOKENS.flat()), TOKENS.length, TOKENS[0].length);
      m.lora = null;
      const base = m.logits(Int32Array.from(TOKENS.flat()), TOKENS.length, TOKENS[0].length);
      let diff = 0,
        moved = 0;
      for (let i = 0; i < got.length; i++) {
        diff = Math.max(diff, Math.abs(got[i] - ref.logits[i]));
        moved = Math.max(moved, Math.abs(base[i] - ref.logits[i]));
      }
      console.log(
        `${arch} PEFT adapter vs independent PyTorch: max |logit diff| ${diff.toExponential(2)} (the adapter moves logits by up to ${moved.toFixed(3)}; ${ref.modules.length} modules)`,
      );
      assert.ok(moved > 1e-2, 'the adapter should change the logits');
      assert.ok(diff < 1e-4, `max logit difference ${diff}`);
    },
  );
}
