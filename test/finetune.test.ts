/**
 * Fine-tuning data (src/data/finetune.ts): JSONL with "text" or "prompt"/"completion", bad lines
 * refused naming the line, the packed stream's loss mask, masked batches, and that masked
 * positions contribute zero loss and zero gradient (the kernels' cross-entropy row by row, and a
 * whole model: the masked mean's gradient is exactly the mean of the unmasked positions' own
 * gradients).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRefKernels } from '../src/kernels/ref.js';
import { GPT } from '../src/model/gpt.js';
import { Llama } from '../src/model/llama.js';
import { TINY_LLAMA } from '../src/model/llama-config.js';
import {
  MaskedBatchSampler,
  maskedEvalBatches,
  packExamples,
  parseFinetuneJsonl,
  readFinetuneJsonl,
} from '../src/data/finetune.js';
import { InvalidInputError } from '../src/util/errors.js';

/** One id per character: 'a' → 0, ... (V = 27 with eot 26). */
const encode = (s: string) => Array.from(s, (ch) => ch.charCodeAt(0) - 97);
const EOT = 26,
  V = 27;

test('JSONL: text and prompt/completion lines parse; blank lines are skipped', () => {
  const ex = parseFinetuneJsonl('{"text":"abc"}\n\n{"prompt":"ab","completion":"cd"}\r\n', 'f.jsonl');
  assert.deepEqual(ex, [
    { prompt: '', completion: 'abc' },
    { prompt: 'ab', completion: 'cd' },
  ]);
});

test('JSONL: bad lines are refused with the file and line named', async (t) => {
  const bad: [string, RegExp][] = [
    ['{"text":"a"}\n{"text": nope}', /f\.jsonl:2: not valid JSON/],
    ['[1,2]', /f\.jsonl:1: each line must be a JSON object/],
    ['{"text":"a","prompt":"b","completion":"c"}', /f\.jsonl:1: give either "text" or "prompt" and "completion"/],
    ['{"text":"a"}\n{"text":"b"}\n{"prompt":"x"}', /f\.jsonl:3: missing "completion"/],
    ['{"completion":"x"}', /f\.jsonl:1: missing "prompt"/],
    ['{"prompt":1,"completion":"x"}', /f\.jsonl:1: "prompt" must be a string/],
    ['{"prompt":"a","completion":""}', /f\.jsonl:1: .*non-empty/],
    ['{"prompt":"a","completion":"b","extra":1}', /f\.jsonl:1: .*no other fields/],
    ['{"text":5}', /f\.jsonl:1: a text line is/],
    ['\n\n', /f\.jsonl holds no examples/],
  ];
  for (const [text, re] of bad)
    assert.throws(
      () => parseFinetuneJsonl(text, 'f.jsonl'),
      (e: Error) => e instanceof InvalidInputError && re.test(e.message),
      text,
    );
  const dir = await mkdtemp(join(tmpdir(), 'tessera-ft-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const p = join(dir, 'big.jsonl');
  await writeFile(p, '{"text":"' + 'a'.repeat(100) + '"}\n');
  assert.throws(() => readFinetuneJsonl(p, 50), InvalidInputError);
  assert.equal(readFinetuneJsonl(p).length, 1);
});

test('packing: the mask covers completions, text and each example’s closing eot, never prompts', () => {
  const st = packExamples(
    [
      { prompt: 'ab', completion: 'c' },
      { prompt: '', completion: 'de' },
    ],
    encode,
    EOT,
    V,
  );
  assert.deepEqual([...st.tokens], [EOT, 0, 1, 2, EOT, 3, 4, EOT]);
  assert.deepEqual([...st.mask], [0, 0, 0, 1, 1, 1, 1, 1]);
  assert.throws(() => packExamples([{ prompt: '', completion: 'a|' }], encode, EOT, V), InvalidInputError);
  // Eval windows: inputs tokens[s..s+T), targets tokens[s+1..] or −1 where masked.
  const [b] = maskedEvalBatches(st, 1, 7);
  assert.deepEqual([...b.inputs], [EOT, 0, 1, 2, EOT, 3, 4]);
  assert.deepEqual([...b.targets], [-1, -1, 2, EOT, 3, 4, EOT]);
  const s = new MaskedBatchSampler(st, 3, 4, 1);
  const r = s.next();
  for (let i = 0; i < r.inputs.length; i++) {
    // every target is either −1 or the token that follows the input in the stream
    assert.ok(r.targets[i] === -1 || r.targets[i] >= 0);
  }
});

test('cross-entropy: a masked row has zero loss and zero dlogits', () => {
  const k = createRefKernels();
  const N = 3,
    Vv = 5;
  const logits = Float32Array.from({ length: N * Vv }, (_, i) => Math.sin(i));
  const losses = new Float32Array(N),
    dl = new Float32Array(N * Vv);
  k.crossEntropyForwardBackward(losses, dl, logits, Int32Array.from([2, -1, 4]), N, Vv, 0.5);
  assert.equal(losses[1], 0);
  for (let v = 0; v < Vv; v++) assert.equal(dl[Vv + v], 0);
  assert.ok(losses[0] > 0 && losses[2] > 0);
});

for (const arch of ['gpt2', 'llama'] as const) {
  test(`${arch}: masked positions contribute zero gradient; the mean is over unmasked positions`, () => {
    const k = createRefKernels();
    const m =
      arch === 'gpt2'
        ? new GPT({ vocabSize: V, ctx: 8, dim: 8, layers: 1, heads: 2 }, k)
        : new Llama(
            { ...TINY_LLAMA, vocabSize: V, ctx: 8, dim: 8, heads: 2, kvHeads: 1, headDim: 4, hidden: 8, layers: 1 },
            k,
          );
    m.init(3);
    const st = packExamples(
      [
        { prompt: 'abc', completion: 'de' },
        { prompt: 'f', completion: 'gh' },
      ],
      encode,
      EOT,
      V,
    );
    const B = 1,
      T = 8;
    const [b] = maskedEvalBatches(st, B, T);
    const unmasked = [...b.targets.keys()].filter((i) => b.targets[i] >= 0);
    assert.ok(unmasked.length > 0 && unmasked.length < T);
    m.zeroGrad();
    const loss = m.forwardBackward(b.inputs, b.targets, B, T);
    const g = m.grads.slice();
    // Each unmasked position alone: the masked batch's gradient is exactly their mean.
    const sum = new Float64Array(g.length);
    let lsum = 0;
    for (const i of unmasked) {
      const only = new Int32Array(T).fill(-1);
      only[i] = b.targets[i];
      m.zeroGrad();
      lsum += m.forwardBackward(b.inputs, only, B, T);
      for (let j = 0; j < g.length; j++) sum[j] += m.grads[j];
    }
    let worst = 0,
      scale = 0;
    for (let j = 0; j < g.length; j++) {
      worst = Math.max(worst, Math.abs(g[j] - sum[j] / unmasked.length));
      scale = Math.max(scale, Math.abs(g[j]));
    }
    assert.ok(Math.abs(loss - lsum / unmasked.length) < 1e-5, `loss ${loss} vs ${lsum / unmasked.length}`);
    assert.ok(worst < 1e-6 * Math.max(1, scale), `gradient differs by ${worst}`);
    // Every position masked: zero loss and a gradient of exact zeros.
    m.zeroGrad();
    assert.equal(m.forwardBackward(b.inputs, new Int32Array(T).fill(-1), B, T), 0);
    assert.ok(m.grads.every((x) => x === 0));
    console.log(
      `${arch}: ${unmasked.length}/${T} positions unmasked, masked-mean vs per-position gradient diff ${worst.toExponential(2)}`,
    );
  });
}
