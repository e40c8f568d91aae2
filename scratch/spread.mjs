import { loadKernels } from '../dist/src/kernels/index.js';
import { loadCorpus, prepareDataset } from '../dist/src/data/index.js';
import { BatchSampler, evalBatches } from '../dist/src/data/batches.js';
import { GPT } from '../dist/src/model/gpt.js';
import { AdamW, DEFAULT_ADAMW } from '../dist/src/train/adamw.js';
const config = { vocabSize: 512, ctx: 64, dim: 64, layers: 4, heads: 4 };
const B = 8, T = 64, M = 2, lr = 3e-3, steps = Number(process.argv[2] ?? 1000);
const ds = prepareDataset({ corpus: loadCorpus('brown'), vocabSize: 512, cacheDir: process.env.HOME + '/.cache/tessera' });
const val = [...evalBatches(ds.val, B, T, 16)];
const k = loadKernels({ threads: 1 });
for (const seed of [7n, 8n, 9n]) {
  const s = new BatchSampler(ds.train, B, T, seed);
  const ref = new GPT(config, k); ref.init(1);
  const opt = new AdamW(config, DEFAULT_ADAMW, k);
  const n = (B / M) * T;
  for (let i = 0; i < steps; i++) { const b = s.next(); ref.zeroGrad(); for (let m = 0; m < M; m++) ref.forwardBackward(b.inputs.subarray(m*n,(m+1)*n), b.targets.subarray(m*n,(m+1)*n), B/M, T, 1/M); opt.update(ref.params, ref.grads, lr); }
  console.log(`data order ${seed}: val ${(val.reduce((t, b) => t + ref.loss(b.inputs, b.targets, B, T), 0) / val.length).toFixed(4)}`);
}
