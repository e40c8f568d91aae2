/**
 * Pipeline stages on WebGPU (`tessera stage --device webgpu`; src/model/stage-webgpu.ts,
 * src/pipeline/stage/device.ts) against the same stages on the CPU, through the stage services'
 * real calls (the in-memory transport carries the wire's bytes): one micro-batch's forward, loss
 * and backward give the same loss, the same activation gradients at every boundary and the same
 * weight gradients (to 1e-4 of the largest); AdamW steps through the pipeline driver keep the
 * weights within a stated tolerance of the CPU's; host-side calls (info, a gradient set) see and
 * change the device's state. Also with a learned bottleneck. SwiftShader here; same rule as
 * test/webgpu-kernels.test.ts: under CI=true a missing adapter fails, locally only a missing
 * chromium skips.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { GPT } from '../src/model/gpt.js';
import { splitStages } from '../src/model/stage.js';
import { DEFAULT_ADAMW } from '../src/train/adamw.js';
import { loadKernels } from '../src/kernels/index.js';
import { WebGpuDevice } from '../src/kernels/webgpu/device.js';
import { SWIFTSHADER_ICD_PATHS } from '../src/kernels/webgpu/node-icd.js';
import { Rng } from '../src/util/rng.js';
import type { Batch } from '../src/data/batches.js';
import { PipelineDriver } from '../src/pipeline/driver.js';
import { memoryTransport, type MemoryPeer } from '../src/pipeline/memory-transport.js';
import { StageClient } from '../src/pipeline/stage-client.js';
import { StageService } from '../src/pipeline/stage/service.js';
import { bytesToF32, f32ToBytes } from '../src/util/packed.js';
import { int32Bytes } from '../src/pipeline/stage-protocol.js';

const CI = process.env.CI === 'true';
const icd = process.env.VK_ICD_FILENAMES ?? SWIFTSHADER_ICD_PATHS.find((p) => existsSync(p)) ?? null;
if (icd) process.env.VK_ICD_FILENAMES = icd; // before Dawn loads
const skip = !icd && !CI ? 'chromium is not installed (no SwiftShader Vulkan ICD)' : false;

const cfg = { vocabSize: 64, ctx: 8, dim: 16, layers: 3, heads: 2 };
const B = 2,
  T = 8,
  N = B * T;
const DRIVER = 'driver';
const sig = () => ({ signal: AbortSignal.timeout(60_000) });
const f32 = (b: Uint8Array): Float32Array => bytesToF32(b, b.length / 4, 'reply');

function batches(n: number, seed: number): Batch[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => {
    const inputs = new Int32Array(N),
      targets = new Int32Array(N);
    for (let i = 0; i < N; i++) {
      inputs[i] = rng.nextInt(cfg.vocabSize);
      targets[i] = (inputs[i] * 7 + 3) % cfg.vocabSize;
    }
    targets[5] = -1; // an ignored position
    return { inputs, targets };
  });
}

function pipeline(genesis: Float32Array, S: number, device?: WebGpuDevice, bottleneck?: number) {
  const svc = new Map<string, StageService>();
  const lookup = (p: string): MemoryPeer | undefined => {
    const s = svc.get(p);
    return s ? { handle: (h, b, from) => s.handle(h, b, from), maxBody: s.maxBody } : undefined;
  };
  const k = loadKernels({ threads: 1 });
  const peers = splitStages(cfg, S).map((spec) => {
    const id = `${device ? 'gpu' : 'cpu'}-stage-${spec.index}`;
    const links = { peerId: id, dial: async () => id, client: new StageClient(memoryTransport(id, lookup)) };
    svc.set(
      id,
      new StageService(
        {
          config: cfg,
          spec,
          kernels: k,
          adamw: DEFAULT_ADAMW,
          codec: { id: 'fp32' },
          init: (st) => st.loadFromFull(genesis),
          drivers: [DRIVER],
          ...(device ? { device } : {}),
          ...(bottleneck !== undefined ? { bottleneck } : {}),
        },
        links,
      ),
    );
    return id;
  });
  const client = new StageClient(memoryTransport(DRIVER, lookup));
  const driver = new PipelineDriver({
    transport: memoryTransport(DRIVER, lookup),
    stages: peers.map((p) => [p]),
    dim: cfg.dim,
    vocabSize: cfg.vocabSize,
    codec: { id: 'fp32' },
    inflight: 1,
    ...(bottleneck !== undefined ? { bottleneck } : {}),
  });
  return { peers, svc, client, driver };
}

/** max |a − b| and max |b|. */
function diff(a: Float32Array, b: Float32Array): { d: number; scale: number } {
  assert.equal(a.length, b.length);
  let d = 0,
    scale = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return { d, scale };
}

/** One micro-batch through S = 3 stages by hand: forward, loss, backward; the boundary gradients and the loss. */
async function oneMicroBatch(p: ReturnType<typeof pipeline>, b: Batch) {
  const [s0, s1, s2] = p.peers,
    c = p.client,
    big = { ...sig(), maxBody: 1 << 24 };
  const a0 = (await c.call(s0, 'fwd', { micro: 0, B, T, train: true }, int32Bytes(b.inputs), big)).body;
  const a1 = (await c.call(s1, 'fwd', { micro: 0, B, T, train: true }, a0, big)).body;
  const body = new Uint8Array(a1.length + 4 * N);
  body.set(a1);
  body.set(int32Bytes(b.targets), a1.length);
  const last = await c.call(s2, 'last', { micro: 0, B, T, train: true, scale: 1 }, body, big);
  const d1 = (await c.call(s1, 'bwd', { micro: 0 }, last.body, big)).body;
  const d0 = (await c.call(s0, 'bwd', { micro: 0 }, d1, big)).body;
  assert.equal(d0.length, 0, 'the first stage returns no input gradient');
  const grads = await Promise.all(
    p.peers.map(async (id) => f32((await c.call(id, 'grads', { set: false }, new Uint8Array(0), big)).body)),
  );
  return { loss: last.head.loss, dAct: [f32(last.body), f32(d1)], acts: [a0, a1], grads };
}

test(
  'stages on WebGPU match stages on the CPU: loss, boundary and weight gradients, AdamW steps',
  { skip },
  async (t) => {
    if (!icd) throw new Error('CI=true but no SwiftShader Vulkan ICD: install chromium (.ci/run does)');
    const dev = await WebGpuDevice.create({ adapter: 'swiftshader' });
    try {
      const ref = new GPT(cfg, loadKernels({ threads: 1 }));
      ref.init(5);
      const genesis = ref.params.slice();
      const cpu = pipeline(genesis, 3);
      const gpu = pipeline(genesis, 3, dev);
      const [b0, ...rest] = batches(4, 1);

      // 1. One micro-batch by hand.
      const c = await oneMicroBatch(cpu, b0);
      const g = await oneMicroBatch(gpu, b0);
      t.diagnostic(`loss cpu ${c.loss} webgpu ${g.loss}`);
      assert.ok(Math.abs(c.loss - g.loss) < 1e-5 * c.loss, 'loss');
      for (let i = 0; i < 2; i++) {
        const x = diff(f32(g.acts[i]), f32(c.acts[i]));
        assert.ok(x.d < 1e-4 * x.scale, `stage ${i} output activations: ${x.d} of ${x.scale}`);
        const y = diff(g.dAct[i], c.dAct[i]);
        assert.ok(y.d < 1e-4 * y.scale, `d(activations) into stage ${1 - i}: ${y.d} of ${y.scale}`);
      }
      for (let s = 0; s < 3; s++) {
        const x = diff(g.grads[s], c.grads[s]);
        t.diagnostic(
          `stage ${s} gradients: max |diff| ${x.d.toExponential(2)}, max |grad| ${x.scale.toExponential(2)}`,
        );
        assert.ok(x.d < 1e-4 * x.scale, `stage ${s} weight gradients`);
      }
      // A host-side call changes the device's state: a gradient set, read back.
      const big = { ...sig(), maxBody: 1 << 24 };
      const zeros = new Float32Array(g.grads[1].length);
      zeros[3] = 0.5;
      await gpu.client.call(gpu.peers[1], 'grads', { set: true }, f32ToBytes(zeros), big);
      const back = f32((await gpu.client.call(gpu.peers[1], 'grads', { set: false }, new Uint8Array(0), big)).body);
      assert.deepEqual(Array.from(back), Array.from(zeros), 'a gradient set on the host copy reaches the device');
      for (const p of [cpu, gpu]) for (const id of p.peers) await p.client.control(id, 'reset', {}, sig());

      // 2. Optimizer steps through the driver (norms, the tied gradient, AdamW), two micro-batches each.
      const lr = 1e-3;
      for (const [i, b] of rest.entries()) {
        const rc = await cpu.driver.step(b, B, T, 2, lr);
        const rg = await gpu.driver.step(b, B, T, 2, lr);
        assert.ok(Math.abs(rc.loss - rg.loss) < 1e-4 * rc.loss, `step ${i}: loss ${rg.loss} vs ${rc.loss}`);
        assert.ok(
          Math.abs(rc.gradNorm - rg.gradNorm) < 1e-4 * rc.gradNorm,
          `step ${i}: norm ${rg.gradNorm} vs ${rc.gradNorm}`,
        );
      }
      // `info` is a host-side call: it reads the device's weights back (and reports the step count).
      for (let s = 0; s < 3; s++) {
        const info = await gpu.client.control(gpu.peers[s], 'info', {}, sig());
        assert.equal(info.step, 3);
        const w = diff(gpu.svc.get(gpu.peers[s])!.state.stage.params, cpu.svc.get(cpu.peers[s])!.state.stage.params);
        t.diagnostic(`stage ${s} weights after 3 steps: max |diff| ${w.d.toExponential(2)} (lr ${lr})`);
        // Adam may move a weight whose gradient is ≈ 0 by up to ~lr on one side only: 1% of lr.
        assert.ok(w.d < 0.01 * lr, `stage ${s} weights drifted ${w.d}`);
      }
    } finally {
      dev.destroy();
    }
  },
);

test('stages on WebGPU with a learned bottleneck track the CPU', { skip }, async () => {
  if (!icd) throw new Error('CI=true but no SwiftShader Vulkan ICD');
  const dev = await WebGpuDevice.create({ adapter: 'swiftshader' });
  try {
    const ref = new GPT(cfg, loadKernels({ threads: 1 }));
    ref.init(9);
    const cpu = pipeline(ref.params.slice(), 2, undefined, 4);
    const gpu = pipeline(ref.params.slice(), 2, dev, 4);
    for (const b of batches(2, 3)) {
      const rc = await cpu.driver.step(b, B, T, 1, 1e-3);
      const rg = await gpu.driver.step(b, B, T, 1, 1e-3);
      assert.ok(Math.abs(rc.loss - rg.loss) < 1e-4 * rc.loss, `loss ${rg.loss} vs ${rc.loss}`);
      assert.ok(Math.abs(rc.gradNorm - rg.gradNorm) < 1e-4 * rc.gradNorm, `norm ${rg.gradNorm} vs ${rc.gradNorm}`);
    }
  } finally {
    dev.destroy();
  }
});
