/**
 * The model a trainer steps, on the device it was asked for: `--device cpu | webgpu | auto` of
 * `tessera train`, `tessera node` and `tessera demo`.
 *
 * `TrainModel` is what the one inner step (inner-step.ts, `innerStepOn`) and a swarm node's
 * training job (peer/training.ts) need: forward + backward + clip + AdamW on one batch (the
 * StepModel operations), the flat parameters in and out, and the loss of a batch. Two
 * implementations: `CpuTrainModel` (GPT + AdamW over host Float32Arrays, exactly what ran
 * before) and `WebGpuTrainModel` (WebGpuGPT: parameters, gradients and AdamW m, v stay in GPU
 * buffers across steps; only getParams() brings θ back to the host).
 *
 * Why the host keeps the agreed state: a swarm's pseudo-gradient Δ = base − local, its codec,
 * its hash and the outer step must be bit-identical on every peer, whatever device trained.
 * The outer step and hashes run on the host. Δ and its codec run on the GPU where
 * `encodeUpdate` can (src/kernels/webgpu/codec.ts: the bytes equal the CPU codec's bit for
 * bit, so θ need not come back); otherwise on the host over the θ that getParams() returns.
 */
import type { Kernels } from '../kernels/api.js';
import type { ModelConfig } from '../model/config.js';
import { paramCount } from '../model/params.js';
import { GPT } from '../model/gpt.js';
import type { ThetaModel } from '../model/lora-model.js';
import type { WebGpuGPT } from '../model/gpt-webgpu.js';
import type { GpuTensor, WebGpuDevice } from '../kernels/webgpu/device.js';
import { gpuCodecRefusal, WebGpuEncoder } from '../kernels/webgpu/codec.js';
import type { Codec, ErrorFeedback } from '../swarm/compress/index.js';
import { DeviceRefusedError, InvalidInputError, WebGpuUnavailableError } from '../util/errors.js';
import { AdamW, type AdamWSettings } from './adamw.js';
import type { StepModel } from './inner-step.js';
import { CPU_CLASS, type BackendClass } from '../verify/backend.js';
import { webgpuClass } from '../kernels/webgpu/backend-class.js';

export interface OptimizerState {
  m: Float32Array;
  v: Float32Array;
  step: number;
}

export type DeviceChoice = 'cpu' | 'webgpu' | 'auto';
export const DEVICE_CHOICES: readonly DeviceChoice[] = ['cpu', 'webgpu', 'auto'];

export interface TrainModel extends StepModel {
  readonly device: 'cpu' | 'webgpu';
  /** For the startup line: kernels, or the adapter's vendor/architecture/description. */
  readonly label: string;
  /** What an audit commitment names as this model's backend class (verify/backend.ts). */
  readonly backend: BackendClass;
  readonly numParams: number;
  /** A host copy of the flat parameters θ (params.ts layout), after all work so far. */
  getParams(): Promise<Float32Array>;
  /**
   * Replaces θ (the optimizer state is kept, as a job's base replaces only the weights). asBase:
   * p is also the base that encodeUpdate forms Δ = base − θ against (kept on the device).
   */
  setParams(p: Float32Array, asBase?: boolean): Promise<void>;
  /** θ += now − began (a job moved onto a new base, peer/training.ts 'shift'/'eager'); a held base becomes now. */
  shiftParams(now: Float32Array, began: Float32Array): void;
  /**
   * Why encodeUpdate cannot run `codec` with error feedback `ef` on this model's device, or null
   * when it can. Fixed for a given model, codec and ef, so a peer decides once.
   */
  deviceCodecRefusal(codec: Codec, ef: ErrorFeedback | null): string | null;
  /**
   * The bytes of codec.encode(base − θ, ef) computed where θ lives (base from setParams(p, true)),
   * equal to the host's bit for bit; θ does not cross to the host. From the first call on, ef's
   * residual lives on the device (ef.residual on the host is no longer updated). Throws the
   * codec's InvalidInputError on a non-finite Δ, residual untouched.
   */
  encodeUpdate(codec: Codec, ef: ErrorFeedback | null): Promise<Uint8Array>;
  /** Mean cross-entropy of one batch, no gradients kept. */
  loss(inputs: Int32Array, targets: Int32Array, B: number, T: number): Promise<number>;
  /**
   * Runs f with the model to itself: a job's whole inner step, or its setParams / getParams, so
   * that a new job's base never lands between a stopped job's backward and its AdamW update
   * (GPU steps await read-backs; CPU steps are synchronous and need no lock).
   */
  exclusive<R>(f: () => Promise<R>): Promise<R>;
  /**
   * Compiles the device's kernels for batches of B×T with one throwaway step, then restores the
   * optimizer to its fresh state (a GPU compiles each pipeline on first use, which on SwiftShader
   * takes longer than a round's training budget). The CPU has nothing to warm. With `codec`, also
   * compiles the device codec's kernels (a throwaway encode of a small vector) when it runs there.
   */
  warmUp(B: number, T: number, codec?: { codec: Codec; ef: ErrorFeedback | null }): Promise<void>;
  /** A host copy of AdamW's m, v and step count (checkpoints of `tessera train`). */
  optimizerState(): Promise<OptimizerState>;
  setOptimizerState(s: OptimizerState): Promise<void>;
  /** Releases the device. */
  close(): void;
}

/** The CPU model: GPT + AdamW on the host, as every trainer ran before devices. */
export class CpuTrainModel implements TrainModel {
  readonly device = 'cpu' as const;
  readonly backend = CPU_CLASS;
  readonly label: string;
  readonly numParams: number;
  /** `gpt`: a GPT, or a LoraGPT (θ = its adapter; model/lora-model.ts). */
  constructor(
    readonly gpt: ThetaModel,
    readonly opt: AdamW,
  ) {
    this.label = `${gpt.kernels.name} kernels`;
    this.numParams = gpt.numParams;
  }
  zeroGrad(): void {
    this.gpt.zeroGrad();
  }
  forwardBackward(x: Int32Array, y: Int32Array, B: number, T: number, scale: number): number {
    return this.gpt.forwardBackward(x, y, B, T, scale);
  }
  update(lr: number): number {
    return this.opt.update(this.gpt.params, this.gpt.grads, lr);
  }
  getParams(): Promise<Float32Array> {
    return Promise.resolve(this.gpt.params.slice());
  }
  setParams(p: Float32Array): Promise<void> {
    this.gpt.params.set(p);
    return Promise.resolve();
  }
  shiftParams(now: Float32Array, began: Float32Array): void {
    const local = this.gpt.params;
    for (let i = 0; i < local.length; i++) local[i] += now[i] - began[i];
  }
  deviceCodecRefusal(): string | null {
    return 'the CPU model encodes on the host';
  }
  encodeUpdate(): Promise<Uint8Array> {
    return Promise.reject(new InvalidInputError('the CPU model has no device codec: encode Δ on the host'));
  }
  loss(x: Int32Array, y: Int32Array, B: number, T: number): Promise<number> {
    return Promise.resolve(this.gpt.loss(x, y, B, T));
  }
  exclusive<R>(f: () => Promise<R>): Promise<R> {
    return f();
  }
  warmUp(): Promise<void> {
    return Promise.resolve();
  }
  optimizerState(): Promise<OptimizerState> {
    return Promise.resolve({ m: this.opt.m.slice(), v: this.opt.v.slice(), step: this.opt.step });
  }
  setOptimizerState(s: OptimizerState): Promise<void> {
    this.opt.m.set(s.m);
    this.opt.v.set(s.v);
    this.opt.step = s.step;
    return Promise.resolve();
  }
  close(): void {}
}

/**
 * The WebGPU model. Every operation that touches the device runs through one promise chain, so a
 * setParams or getParams issued while a step awaits its read-back waits for that step to finish
 * (the CPU model gets this for free: its steps are synchronous). A shift is held on the host and
 * applied (one upload and one add on the GPU) before the next step or read.
 */
export class WebGpuTrainModel implements TrainModel {
  readonly device = 'webgpu' as const;
  readonly label: string;
  readonly numParams: number;
  readonly backend: BackendClass;
  private chain: Promise<unknown> = Promise.resolve();
  private lock: Promise<unknown> = Promise.resolve();
  private shift: Float32Array | null = null;
  /** The job's base on the device (setParams(p, true)), and a new one a shift has announced. */
  private base: GpuTensor | null = null;
  private nextBase: Float32Array | null = null;
  private encoder: { enc: WebGpuEncoder; codec: Codec; ef: ErrorFeedback | null } | null = null;
  constructor(
    readonly dev: WebGpuDevice,
    readonly gpt: WebGpuGPT,
    /** False for a twin: closing it leaves the shared device to its owner. */
    private readonly ownsDevice = true,
  ) {
    const i = dev.adapterInfo;
    this.label = adapterLabel(dev);
    this.numParams = gpt.numParams;
    this.backend = webgpuClass(i, {
      attention: gpt.attention,
      f16Storage: gpt.options.f16Storage,
      ...dev.features,
    });
  }
  /**
   * A second model on the same device (its own weights, gradients and moments; the pipelines are
   * shared and already compiled): a validator's same-class audits run on it while jobs train here.
   */
  async twin(): Promise<WebGpuTrainModel> {
    const { WebGpuGPT } = await import('../model/gpt-webgpu.js');
    const g = this.gpt;
    return new WebGpuTrainModel(this.dev, new WebGpuGPT(this.dev, g.config, g.settings, g.attention, g.options), false);
  }
  private serial<R>(f: () => Promise<R> | R): Promise<R> {
    const next = this.chain.then(async () => {
      this.applyShift();
      return f();
    });
    this.chain = next.catch(() => undefined);
    return next;
  }
  private applyShift(): void {
    if (this.nextBase && this.base) this.dev.write(this.base, this.nextBase);
    this.nextBase = null;
    const s = this.shift;
    if (!s) return;
    this.shift = null;
    const t = this.dev.upload(s);
    this.dev.add(this.gpt.params, this.gpt.params, t, s.length);
    this.dev.release(t);
  }
  exclusive<R>(f: () => Promise<R>): Promise<R> {
    const next = this.lock.then(f);
    this.lock = next.catch(() => undefined);
    return next;
  }
  warmUp(B: number, T: number, codec?: { codec: Codec; ef: ErrorFeedback | null }): Promise<void> {
    return this.exclusive(() =>
      this.serial(async () => {
        if (codec && !this.deviceCodecRefusal(codec.codec, codec.ef)) {
          // Pipelines are cached per kernel, not per size: a small vector compiles them all.
          const n = Math.min(this.numParams, 4096);
          const ef = codec.ef && { beta: codec.ef.beta, residual: new Float32Array(n) };
          const enc = new WebGpuEncoder(this.dev, codec.codec, n, ef);
          const base = this.dev.alloc(n),
            local = this.dev.alloc(n); // two buffers, as θ and the base are (the binding pattern is part of a pipeline)
          await enc.encode(local, base);
          enc.destroy();
          this.dev.release(base);
          this.dev.release(local);
          await this.dev.sync();
        }
        const g = this.gpt,
          d = this.dev;
        const zeros = new Int32Array(B * T);
        const keep = await d.read(g.params);
        g.zeroGrad();
        await g.forwardBackward(zeros, zeros, B, T, 1);
        await g.update(0);
        d.write(g.params, keep);
        d.zero(g.grads);
        d.zero(g.m);
        d.zero(g.v);
        g.step = 0;
        await d.sync();
      }),
    );
  }
  optimizerState(): Promise<OptimizerState> {
    return this.serial(async () => ({
      m: await this.dev.read(this.gpt.m),
      v: await this.dev.read(this.gpt.v),
      step: this.gpt.step,
    }));
  }
  setOptimizerState(s: OptimizerState): Promise<void> {
    return this.serial(() => {
      this.dev.write(this.gpt.m, s.m);
      this.dev.write(this.gpt.v, s.v);
      this.gpt.step = s.step;
    });
  }
  zeroGrad(): void {
    // In order with the other operations (a pending shift is applied first).
    void this.serial(() => this.gpt.zeroGrad());
  }
  forwardBackward(x: Int32Array, y: Int32Array, B: number, T: number, scale: number): Promise<number> {
    return this.serial(() => this.gpt.forwardBackward(x, y, B, T, scale));
  }
  update(lr: number): Promise<number> {
    return this.serial(() => this.gpt.update(lr));
  }
  getParams(): Promise<Float32Array> {
    return this.serial(() => this.dev.read(this.gpt.params));
  }
  setParams(p: Float32Array, asBase = false): Promise<void> {
    this.shift = null;
    this.nextBase = null;
    return this.serial(() => {
      this.gpt.setParams(p);
      if (asBase) {
        this.base ??= this.dev.alloc(this.numParams);
        this.dev.copy(this.base, this.gpt.params);
      }
    });
  }
  shiftParams(now: Float32Array, began: Float32Array): void {
    const s = this.shift ?? new Float32Array(now.length);
    for (let i = 0; i < s.length; i++) s[i] += now[i] - began[i];
    this.shift = s;
    if (this.base) this.nextBase = now.slice();
  }
  deviceCodecRefusal(codec: Codec, ef: ErrorFeedback | null): string | null {
    return gpuCodecRefusal(codec, this.numParams, ef ? ef.beta : null);
  }
  encodeUpdate(codec: Codec, ef: ErrorFeedback | null): Promise<Uint8Array> {
    return this.serial(() => {
      if (!this.base) throw new InvalidInputError('encodeUpdate: no base on the device (setParams(p, true) first)');
      const why = this.deviceCodecRefusal(codec, ef);
      if (why) throw new InvalidInputError(`encodeUpdate: ${why}`);
      const e = this.encoder;
      if (!e || e.codec !== codec || e.ef !== ef) {
        e?.enc.destroy();
        const enc = new WebGpuEncoder(this.dev, codec, this.numParams, ef && { beta: ef.beta, residual: ef.residual });
        this.encoder = { enc, codec, ef };
      }
      return this.encoder!.enc.encode(this.gpt.params, this.base);
    });
  }
  loss(x: Int32Array, y: Int32Array, B: number, T: number): Promise<number> {
    return this.serial(() => this.gpt.loss(x, y, B, T)); // forward only: gradients untouched
  }
  close(): void {
    if (this.ownsDevice) this.dev.destroy();
  }
}

export interface OpenModelOptions {
  config: ModelConfig;
  adamw: AdamWSettings;
  kernels: Kernels;
  /** The run's hyper.audit, if it audits: without a tolerance, GPUs are refused (gpuAuditRefusal). */
  audit?: { tolerance?: unknown } | null;
  /** The run's H (hyper.innerSteps): with `audit`, sizes the states a GPU trainer keeps. */
  innerSteps?: number;
  /** Told which device 'auto' chose, and why. */
  log?: (line: string) => void;
}

/**
 * Why an audited run cannot take a GPU trainer, or null when it can. A run whose manifest sets
 * `hyper.audit.tolerance` judges GPU trainers' steps within it (docs/WEBGPU.md "Audits when
 * trainers use GPUs"); one that sets none audits every step bit for bit on the CPU deterministic
 * kernels, and a fraud proof must be checkable by every peer, so a GPU trainer there would be
 * convicted for its rounding alone, whoever validates it.
 */
export function gpuAuditRefusal(
  audit: { tolerance?: unknown } | null | undefined,
  size?: { params: number; innerSteps: number },
): string | null {
  if (!audit) return null;
  if (audit.tolerance === undefined)
    return (
      'this run audits trainers (hyper.audit) with no tolerance: validators re-execute steps bit for bit on ' +
      "the CPU deterministic kernels, which a GPU's floats do not reproduce. A run that lets GPU trainers " +
      'join sets hyper.audit.tolerance (tessera run create --audit-tolerance <rel>): their steps are then judged ' +
      'within it (docs/WEBGPU.md)'
    );
  // An audited GPU trainer keeps every step's state (θ, m, v) for validators, for its round and
  // the two after it (peer/payloads.ts): 3 · H · 12 · P bytes of host memory.
  const held = size ? 3 * size.innerSteps * 12 * size.params : 0;
  if (held > GPU_AUDIT_STATE_BYTES)
    return (
      `an audited GPU trainer keeps every inner step's state for validators: ${(held / 2 ** 30).toFixed(1)} GiB ` +
      `for H=${size!.innerSteps} and ${size!.params} parameters, over the ${GPU_AUDIT_STATE_BYTES / 2 ** 30} GiB ` +
      'cap (docs/WEBGPU.md): train on the cpu, or use a run with fewer inner steps'
    );
  return null;
}

/** Host memory an audited GPU trainer may hold in kept states (gpuAuditRefusal). */
export const GPU_AUDIT_STATE_BYTES = 4 * 2 ** 30;

/**
 * Dawn's first adapter as a device: the system's GPU, or SwiftShader where VK_ICD_FILENAMES
 * names its ICD (or TESSERA_WEBGPU_ADAPTER=swiftshader). With no adapter, 'auto' says so through
 * `log` and returns null (train on the CPU); 'webgpu' throws WebGpuUnavailableError.
 */
export async function openWebGpu(
  device: 'webgpu' | 'auto',
  log?: (line: string) => void,
): Promise<WebGpuDevice | null> {
  const { WebGpuDevice } = await import('../kernels/webgpu/device.js');
  try {
    return await WebGpuDevice.create({
      adapter: process.env.TESSERA_WEBGPU_ADAPTER === 'swiftshader' ? 'swiftshader' : 'auto',
    });
  } catch (err) {
    if (device === 'auto' && err instanceof WebGpuUnavailableError) {
      log?.(`device auto: cpu (${err.message})`);
      return null;
    }
    throw err;
  }
}

/** For the start-up line: the adapter's vendor / architecture / description. */
export function adapterLabel(dev: WebGpuDevice): string {
  const i = dev.adapterInfo;
  return `adapter ${[i.vendor, i.architecture, i.description].filter((s) => s).join(' / ') || 'unknown'}`;
}

/**
 * The model on the chosen device. 'auto': WebGPU when an adapter is found (and the run's audit,
 * if any, has a tolerance), else the CPU, saying which. 'webgpu' throws WebGpuUnavailableError
 * without an adapter and DeviceRefusedError on a run audited bit for bit. The adapter is Dawn's
 * first: the system's GPU, or SwiftShader where VK_ICD_FILENAMES names its ICD (or
 * TESSERA_WEBGPU_ADAPTER=swiftshader).
 */
export async function openTrainModel(device: DeviceChoice, o: OpenModelOptions): Promise<TrainModel> {
  const cpu = () => new CpuTrainModel(new GPT(o.config, o.kernels), new AdamW(o.config, o.adamw, o.kernels));
  if (device === 'cpu') return cpu();
  const why = gpuAuditRefusal(
    o.audit,
    o.innerSteps !== undefined ? { params: paramCount(o.config), innerSteps: o.innerSteps } : undefined,
  );
  if (why) {
    if (device === 'webgpu') throw new DeviceRefusedError(`--device webgpu refused: ${why}`);
    o.log?.(`device auto: cpu, because ${why}`);
    return cpu();
  }
  const dev = await openWebGpu(device, o.log);
  if (!dev) return cpu();
  const { WebGpuGPT } = await import('../model/gpt-webgpu.js');
  const m = new WebGpuTrainModel(dev, new WebGpuGPT(dev, o.config, o.adamw));
  if (device === 'auto') o.log?.(`device auto: webgpu (${m.label})`);
  return m;
}
