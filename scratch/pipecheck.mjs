import { loadKernels } from '../dist/src/kernels/index.js';
import { loadCorpus, prepareDataset } from '../dist/src/data/index.js';
import { BatchSampler } from '../dist/src/data/batches.js';
import { GPT } from '../dist/src/model/gpt.js';
import { AdamW, DEFAULT_ADAMW } from '../dist/src/train/adamw.js';
import { startLocalPipeline } from '../dist/src/pipeline/local.js';
const config = { vocabSize: 512, ctx: 64, dim: 64, layers: 4, heads: 4 };
const B = 8, T = 64, M = 2, lr = 3e-3;
const ds = prepareDataset({ corpus: loadCorpus('brown'), vocabSize: 512, cacheDir: process.env.HOME + '/.cache/tessera' });
const s = new BatchSampler(ds.train, B, T, 7n);
const k = loadKernels({ threads: 1 });
const ref = new GPT(config, k); ref.init(1);
const lp = await startLocalPipeline({ config, stages: 4, kernels: k, adamw: DEFAULT_ADAMW, codec: { id: process.argv[2] ?? 'fp32' }, genesis: ref.params.slice() });
const opt = new AdamW(config, DEFAULT_ADAMW, k);
const n = (B / M) * T;
for (let i = 0; i < 200; i++) {
  const b = s.next();
  const got = await lp.driver.step(b, B, T, M, lr);
  ref.zeroGrad(); let want = 0;
  for (let m = 0; m < M; m++) want += ref.forwardBackward(b.inputs.subarray(m*n,(m+1)*n), b.targets.subarray(m*n,(m+1)*n), B/M, T, 1/M) / M;
  const norm = opt.update(ref.params, ref.grads, lr);
  if (i % 20 === 0 || i < 3) console.log(i, got.loss.toFixed(4), want.toFixed(4), got.gradNorm.toFixed(4), norm.toFixed(4));
}
await lp.close();
