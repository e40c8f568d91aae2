/**
 * A stage peer's compute on a GPU (`tessera stage --device webgpu`): the stage's parameters,
 * gradients and AdamW moments live in four flat device buffers (model/stage-webgpu.ts), and the
 * training calls (fwd, last, bwd, logits, norm, tied, step, reset, grads get) run there, with
 * only the activations (and their gradients), losses and scalars crossing to the host for the
 * wire (stage/compute.ts).
 *
 * Every other call (checkpoint shares, restore, rebuild, DiLoCo's Δ and outer step, info, tagged
 * gradient banks, look-ahead weights) keeps working on the host Stage and AdamW exactly as on a
 * CPU peer: before it, the parts the device changed are read back; after a call that changes host
 * state, the device copy is refreshed before the next device call. Which copy is current is kept
 * per part (parameters, gradients, moments), so a training step moves no weights across PCIe.
 * A move to another stage (placement) or a fresh optimizer replaces the host objects; the device
 * copy follows (the old stage's buffers are freed).
 */
import type { WebGpuDevice } from '../../kernels/webgpu/device.js';
import { WebGpuStage } from '../../model/stage-webgpu.js';
import { Stage } from '../../model/stage.js';
import type { AdamW } from '../../train/adamw.js';
import { DeviceRefusedError } from '../../util/errors.js';

export type Part = 'params' | 'grads' | 'opt';
type Where = 'host' | 'device' | 'both';
const ALL: readonly Part[] = ['params', 'grads', 'opt'];

/**
 * What the device copy follows: the service state's current stage and optimizer. Any stage the
 * service may hold; only a GPT-2 `Stage` has a device form (gpuStageOf refuses others).
 */
export interface HostSide {
  readonly stage: { readonly params: Float32Array; readonly grads: Float32Array };
  readonly opt: AdamW;
}

/** The GPT-2 stage behind `stage`, or a DeviceRefusedError: other model families run on the CPU. */
function gptStage(stage: HostSide['stage']): Stage {
  if (!(stage instanceof Stage))
    throw new DeviceRefusedError(
      '--device webgpu serves GPT-2 pipeline stages; this model family has no device stage yet: run it with --device cpu',
    );
  return stage;
}

export class StageDevice {
  private gpuStage: WebGpuStage;
  private opt: AdamW;
  private readonly where: Record<Part, Where> = { params: 'host', grads: 'host', opt: 'host' };

  constructor(
    readonly dev: WebGpuDevice,
    private readonly host: HostSide,
  ) {
    this.gpuStage = new WebGpuStage(dev, gptStage(host.stage));
    this.opt = host.opt;
  }

  /** The adapter, for the startup line. */
  get label(): string {
    const i = this.dev.adapterInfo;
    return [i.vendor, i.architecture, i.description].filter((s) => s).join(' / ') || 'unknown adapter';
  }

  /** Follows a replaced stage (a move) or optimizer (fresh moments): the host copy is then the current one. */
  private follow(): void {
    if (this.gpuStage.stage !== this.host.stage) {
      const old = this.gpuStage;
      void old.destroy().catch(() => undefined);
      this.gpuStage = new WebGpuStage(this.dev, gptStage(this.host.stage));
      for (const p of ALL) this.where[p] = 'host';
    }
    if (this.opt !== this.host.opt) {
      this.opt = this.host.opt;
      this.where.opt = 'host';
    }
  }

  /** The device stage with `parts` current there (uploading what only the host has). */
  onDevice(...parts: Part[]): WebGpuStage {
    this.follow();
    const g = this.gpuStage,
      st = this.host.stage;
    for (const p of parts) {
      if (this.where[p] !== 'host') continue;
      if (p === 'params') g.write('params', st.params);
      else if (p === 'grads') g.write('grads', st.grads);
      else {
        g.write('m', this.opt.m);
        g.write('v', this.opt.v);
      }
      this.where[p] = 'both';
    }
    return g;
  }

  /** The host Stage and AdamW with `parts` (default all) current (reading back what only the device has). */
  async onHost(...parts: Part[]): Promise<void> {
    this.follow();
    const g = this.gpuStage,
      st = this.host.stage;
    for (const p of parts.length ? parts : ALL) {
      if (this.where[p] !== 'device') continue;
      if (p === 'params') st.params.set(await g.read('params'));
      else if (p === 'grads') st.grads.set(await g.read('grads'));
      else {
        this.opt.m.set(await g.read('m'));
        this.opt.v.set(await g.read('v'));
      }
      this.where[p] = 'both';
    }
  }

  /** The host changed `parts` (default all): the device copy is stale until the next onDevice. */
  hostChanged(...parts: Part[]): void {
    for (const p of parts.length ? parts : ALL) this.where[p] = 'host';
  }

  /** Device work changed `parts`: the host copy is stale until the next onHost. */
  deviceChanged(...parts: Part[]): void {
    for (const p of parts) this.where[p] = 'device';
  }

  /** Gradients = 0 on both sides. */
  zeroGrads(): void {
    this.follow();
    this.host.stage.grads.fill(0);
    this.gpuStage.zeroGrad();
    this.where.grads = 'both';
  }

  /** Drops the held micro-batches on the device. */
  release(slot: number): void {
    if (this.gpuStage.stage === this.host.stage) this.gpuStage.release(slot);
  }
  resetSlots(): void {
    if (this.gpuStage.stage === this.host.stage) this.gpuStage.resetSlots();
  }

  /** Follows a move at once, so the old stage's buffers are freed now rather than at the next call. */
  rebind(): void {
    this.follow();
  }
}

/**
 * Tokens per second of one forward + backward of `stage` on the device (run.ts's measured
 * capacity, which placement reads): one untimed micro-batch of B sequences (pipeline
 * compilation), then three timed. Its own device buffers; `stage` only describes the shapes.
 */
export async function deviceThroughput(dev: WebGpuDevice, stage: HostSide['stage'], B: number): Promise<number> {
  const st = gptStage(stage);
  const gpu = new WebGpuStage(dev, st);
  const T = st.config.ctx,
    N = B * T;
  const input = st.first ? new Int32Array(N) : new Float32Array(N * st.width);
  const once = async (i: number) => {
    await gpu.forward(i, input, B, T);
    if (st.last) await gpu.loss(i, new Int32Array(N), true);
    await gpu.backward(i, st.last ? null : new Float32Array(N * st.width));
  };
  try {
    await once(0);
    const t0 = performance.now();
    for (let i = 1; i <= 3; i++) await once(i);
    return (3 * N) / Math.max(1e-3, (performance.now() - t0) / 1000);
  } finally {
    await gpu.destroy();
  }
}
