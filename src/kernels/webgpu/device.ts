/// <reference types="@webgpu/types" />
/**
 * The WebGPU compute device: Tessera's kernels (src/kernels/api.ts) on GPU buffers, through Dawn
 * in the npm package `webgpu` (Vulkan, Metal or D3D12; on a machine without a GPU, SwiftShader's
 * Vulkan driver from Debian's chromium package).
 *
 * WHY HAND-WRITTEN: no library runs training kernels on WebGPU over caller-owned flat buffers (see
 * wgsl.ts); this file is the thin host side: adapter and device, buffers, pipelines, dispatch.
 *
 * Design (issue 18):
 * - Data lives in `GpuTensor`s: a GPU buffer, an element offset and a length. Parameters,
 *   gradients and AdamW moments are each ONE flat buffer with the CPU Float32Array's layout;
 *   `view()` makes the same named slices the CPU code makes with subarray(). Any offset works:
 *   each kernel binds whole buffers and receives element offsets in its uniform, so views need
 *   no 256-byte alignment, and two views of one buffer in one call share one binding.
 * - The kernel methods mirror `Kernels` (same argument order, shapes and += semantics) with
 *   GpuTensors in place of Float32Arrays. They only ENCODE work; it is submitted in order, in
 *   batches, and `read()` / `sync()` wait for it. A failed dispatch (validation, out of memory)
 *   surfaces as a WebGpuError at the next `sync()` or `read()`.
 * - Host data crosses only through `upload` / `write` / `read`, plus two scalars: `sumSquares`
 *   resolves to a number, and embeddingBackward takes the tokens as a host Int32Array (they come
 *   from the host anyway) so it can group positions by token for an atomics-free sum.
 * - Deterministic by construction: see wgsl.ts. Same adapter, same bits.
 * - Loads in a browser too (no static Node imports): `WebGpuDevice.fromGpu(navigator.gpu)`;
 *   `create()` is the Node path (Dawn, and optionally SwiftShader via node-icd.ts).
 */
import { InvalidInputError, WebGpuError, WebGpuUnavailableError } from '../../util/errors.js';
import * as W from './wgsl.js';
import type { KernelDef } from './wgsl.js';
import { GELU_FWD_OUT16, LAYERNORM_FWD_OUT16, gemmDef, withSubgroups } from './wgsl/precision.js';
import {
  ATTENTION_TILED_BWD_KV,
  ATTENTION_TILED_BWD_Q,
  ATTENTION_TILED_FWD,
  TILED_MAX_HS,
  tiledRows,
} from './wgsl/attention-tiled.js';

// WebGPU's usage flags (spec constants; Dawn's globals carry the same values).
const MAP_READ = 0x0001,
  COPY_SRC = 0x0004,
  COPY_DST = 0x0008,
  UNIFORM = 0x0040,
  STORAGE = 0x0080;
const MAP_MODE_READ = 0x0001;
/** Kernel calls encoded before a batch is submitted without being asked. */
const BATCH = 64;
const MAX_GROUPS = 65535;

/** Element types; 'f16' is binary16, 2 bytes an element (f16 storage, wgsl/precision.ts). */
export type DType = 'f32' | 'i32' | 'u32' | 'f16';
const BYTES: Record<DType, number> = { f32: 4, i32: 4, u32: 4, f16: 2 };

/** A typed range of a GPU buffer: elements [offset, offset + length) of `buffer`. */
export interface GpuTensor {
  readonly buffer: GPUBuffer;
  readonly offset: number;
  readonly length: number;
  readonly dtype: DType;
}

export interface WebGpuDeviceOptions {
  /**
   * 'auto' (default): the system's Vulkan drivers, unless VK_ICD_FILENAMES is set.
   * 'swiftshader': point VK_ICD_FILENAMES at SwiftShader's ICD before Dawn starts (no GPU needed).
   */
  adapter?: 'auto' | 'swiftshader';
  /** Extra Dawn options for `create()`, e.g. 'backend=vulkan'. */
  dawnOptions?: string[];
  /**
   * Workgroup reductions on subgroup operations (wgsl/precision.ts): off by default, the adapter
   * must offer the `subgroups` feature. Changes results in the last bits (order of the sums).
   */
  subgroups?: boolean;
  /**
   * f16 tensors as WGSL `array<f16>` (the adapter must offer `shader-f16`) instead of u32 pairs
   * through pack2x16float. Off by default; the same bytes either way.
   */
  shaderF16?: boolean;
}

/** The optional features a device was opened with. */
export interface WebGpuFeatures {
  subgroups: boolean;
  shaderF16: boolean;
}

interface WebGpuModule {
  create(options: string[]): GPU;
}

interface Pending {
  encoder: GPUCommandEncoder;
  calls: number;
  temps: GPUBuffer[];
}

export class WebGpuDevice {
  private pending: Pending | null = null;
  private readonly errors: Promise<GPUError | null>[] = [];
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly dummy: { f32: GpuTensor; i32: GpuTensor };
  private lost: string | null = null;

  private constructor(
    /**
     * Dawn's instance. Held for the device's lifetime: if it is garbage-collected, Dawn destroys
     * the instance under the live device and the process crashes in its event loop.
     */
    private readonly gpu: GPU,
    readonly device: GPUDevice,
    /** Adapter vendor/architecture/description as Dawn reports them. */
    readonly adapterInfo: { vendor: string; architecture: string; device: string; description: string },
    /** Precision features in use (both off unless asked for and offered). */
    readonly features: WebGpuFeatures = { subgroups: false, shaderF16: false },
    /** What the adapter offers, asked for or not. */
    readonly adapterFeatures: WebGpuFeatures = { subgroups: false, shaderF16: false },
  ) {
    this.dummy = { f32: this.alloc(1, 'f32'), i32: this.alloc(1, 'i32') };
    void device.lost.then((l) => {
      this.lost = `${l.reason}: ${l.message}`;
    });
  }

  /** Opens the first adapter Dawn offers. Throws WebGpuUnavailableError when there is none. */
  static async create(opts: WebGpuDeviceOptions = {}): Promise<WebGpuDevice> {
    if (opts.adapter === 'swiftshader') {
      const { findSwiftShaderIcd, SWIFTSHADER_ICD_PATHS } = await import('./node-icd.js');
      const icd = findSwiftShaderIcd();
      if (!icd)
        throw new WebGpuUnavailableError(
          `no SwiftShader Vulkan ICD (looked in ${SWIFTSHADER_ICD_PATHS.join(', ')}): apt-get install chromium libvulkan1`,
        );
      process.env.VK_ICD_FILENAMES = icd;
    }
    let mod: WebGpuModule;
    try {
      mod = (await import('webgpu')) as unknown as WebGpuModule;
    } catch (err) {
      throw new WebGpuUnavailableError(`cannot load the webgpu package (Dawn): ${(err as Error).message}`, {
        cause: err,
      });
    }
    return WebGpuDevice.fromGpu(
      mod.create(opts.dawnOptions ?? []),
      'no Vulkan driver offered one (needs libvulkan1 and a GPU driver, or SwiftShader: apt-get ' +
        'install chromium libvulkan1, then VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json)',
      opts,
    );
  }

  /** Opens the first adapter of a WebGPU implementation: Dawn's in Node, `navigator.gpu` in a page. */
  static async fromGpu(
    gpu: GPU,
    hint = 'none offered',
    opts: Pick<WebGpuDeviceOptions, 'subgroups' | 'shaderF16'> = {},
  ): Promise<WebGpuDevice> {
    const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
    if (!adapter) throw new WebGpuUnavailableError(`no WebGPU adapter: ${hint}`);
    const L = adapter.limits;
    const offered = { subgroups: adapter.features.has('subgroups'), shaderF16: adapter.features.has('shader-f16') };
    for (const [flag, name] of [
      ['subgroups', 'subgroups'],
      ['shaderF16', 'shader-f16'],
    ] as const)
      if (opts[flag] && !offered[flag])
        throw new WebGpuUnavailableError(`${flag} asked for, but the adapter does not offer the ${name} feature`);
    const requiredFeatures: GPUFeatureName[] = [];
    if (opts.subgroups) requiredFeatures.push('subgroups' as GPUFeatureName);
    if (opts.shaderF16) requiredFeatures.push('shader-f16');
    let device: GPUDevice;
    try {
      device = await adapter.requestDevice({
        requiredFeatures,
        requiredLimits: {
          maxStorageBufferBindingSize: L.maxStorageBufferBindingSize,
          maxBufferSize: L.maxBufferSize,
          maxStorageBuffersPerShaderStage: Math.min(L.maxStorageBuffersPerShaderStage, 10),
          maxComputeWorkgroupStorageSize: L.maxComputeWorkgroupStorageSize,
        },
      });
    } catch (err) {
      throw new WebGpuUnavailableError(`the adapter refused a device: ${(err as Error).message}`, { cause: err });
    }
    const i = adapter.info;
    return new WebGpuDevice(
      gpu,
      device,
      { vendor: i.vendor, architecture: i.architecture, device: i.device, description: i.description },
      { subgroups: Boolean(opts.subgroups), shaderF16: Boolean(opts.shaderF16) },
      offered,
    );
  }

  // -------------------------------------------------------------------------------------------
  // Buffers

  /** A new zero-filled tensor of n elements. */
  alloc(n: number, dtype: DType = 'f32'): GpuTensor {
    if (!Number.isInteger(n) || n < 0) throw new InvalidInputError(`alloc: bad length ${n}`);
    const buffer = this.device.createBuffer({
      size: Math.max(16, Math.ceil((n * BYTES[dtype]) / 16) * 16),
      usage: STORAGE | COPY_SRC | COPY_DST,
    });
    return { buffer, offset: 0, length: n, dtype };
  }

  /** A new tensor holding a copy of `data`. */
  upload(data: Float32Array | Int32Array | Uint32Array): GpuTensor {
    // (f16 tensors are written by kernels, and read back with readF16.)
    const t = this.alloc(data.length, data instanceof Int32Array ? 'i32' : data instanceof Uint32Array ? 'u32' : 'f32');
    this.write(t, data);
    return t;
  }

  /** Elements [offset, offset + length) of t, as its own tensor (no copy). */
  view(t: GpuTensor, offset: number, length: number): GpuTensor {
    if (
      !Number.isInteger(offset) ||
      !Number.isInteger(length) ||
      offset < 0 ||
      length < 0 ||
      offset + length > t.length
    )
      throw new InvalidInputError(`view [${offset}, ${offset + length}) outside a tensor of ${t.length}`);
    return { buffer: t.buffer, offset: t.offset + offset, length, dtype: t.dtype };
  }

  /** Copies host data into t (after all work encoded so far). */
  write(t: GpuTensor, data: Float32Array | Int32Array | Uint32Array): void {
    if (data.length !== t.length)
      throw new InvalidInputError(`write: ${data.length} elements into a tensor of ${t.length}`);
    this.flush();
    if (data.length)
      this.device.queue.writeBuffer(t.buffer, t.offset * 4, data.buffer, data.byteOffset, data.byteLength);
  }

  /** dst = src (equal lengths), a copy on the GPU in order with the kernels. */
  copy(dst: GpuTensor, src: GpuTensor): void {
    if (dst.length !== src.length || dst.dtype === 'f16' || src.dtype === 'f16')
      throw new InvalidInputError(`copy: ${src.length} elements into a tensor of ${dst.length} (4-byte types only)`);
    if (dst.length)
      this.begin().encoder.copyBufferToBuffer(src.buffer, src.offset * 4, dst.buffer, dst.offset * 4, dst.length * 4);
  }

  /** t = 0, in order with the kernels (a buffer clear on the GPU, no host data). */
  zero(t: GpuTensor): void {
    if (t.dtype === 'f16') throw new InvalidInputError('zero: not for f16 tensors');
    if (t.length) this.begin().encoder.clearBuffer(t.buffer, t.offset * 4, t.length * 4);
  }

  /** Waits for all work so far and returns an f16 tensor's values as f32 (exact). */
  async readF16(t: GpuTensor): Promise<Float32Array> {
    if (t.dtype !== 'f16') throw new InvalidInputError('readF16: not an f16 tensor');
    const h = new Uint16Array(await this.readBytes(t));
    const out = new Float32Array(t.length);
    for (let i = 0; i < t.length; i++) {
      const e = (h[i] >> 10) & 31,
        m = h[i] & 1023,
        v = e === 0 ? m * 2 ** -24 : e === 31 ? (m ? NaN : Infinity) : (1024 + m) * 2 ** (e - 25);
      out[i] = h[i] & 0x8000 ? -v : v;
    }
    return out;
  }

  /** Waits for all work so far and returns t's contents. */
  async read(t: GpuTensor): Promise<Float32Array> {
    const bytes = await this.readBytes(t);
    return new Float32Array(bytes);
  }

  async readInt(t: GpuTensor): Promise<Int32Array> {
    return new Int32Array(await this.readBytes(t));
  }

  async readU32(t: GpuTensor): Promise<Uint32Array> {
    return new Uint32Array(await this.readBytes(t));
  }

  private async readBytes(t: GpuTensor): Promise<ArrayBuffer> {
    const size = t.length * BYTES[t.dtype];
    if (t.dtype === 'f16' && (t.offset % 2 || t.length % 2))
      throw new InvalidInputError('read: an f16 view must start and end on a 4-byte boundary');
    if (size === 0) {
      await this.sync();
      return new ArrayBuffer(0);
    }
    const staging = this.device.createBuffer({ size: Math.ceil(size / 4) * 4, usage: MAP_READ | COPY_DST });
    const enc = this.begin();
    enc.encoder.copyBufferToBuffer(t.buffer, t.offset * BYTES[t.dtype], staging, 0, size);
    this.flush();
    await this.sync();
    await staging.mapAsync(MAP_MODE_READ);
    const out = staging.getMappedRange().slice(0);
    staging.unmap();
    staging.destroy();
    return out;
  }

  /** Waits for all submitted work; throws WebGpuError if any of it was refused. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    const errs = (await Promise.all(this.errors.splice(0))).filter((e): e is GPUError => e !== null);
    if (errs.length) throw new WebGpuError(`WebGPU refused work: ${errs.map((e) => e.message).join('; ')}`);
    if (this.lost) throw new WebGpuError(`WebGPU device lost: ${this.lost}`);
  }

  /** Releases the device (all its buffers become invalid). */
  destroy(): void {
    this.pending = null;
    this.device.destroy();
  }

  // -------------------------------------------------------------------------------------------
  // Dispatch

  private begin(): Pending {
    if (!this.pending) {
      this.device.pushErrorScope('out-of-memory');
      this.device.pushErrorScope('validation');
      this.pending = { encoder: this.device.createCommandEncoder(), calls: 0, temps: [] };
    }
    return this.pending;
  }

  private flush(): void {
    const p = this.pending;
    if (!p) return;
    this.pending = null;
    this.device.queue.submit([p.encoder.finish()]);
    for (const b of p.temps) b.destroy(); // freed once the submitted work no longer needs them
    this.errors.push(this.device.popErrorScope(), this.device.popErrorScope());
  }

  private pipeline(def: KernelDef, slots: number[]): GPUComputePipeline {
    const key = def.name + ':' + slots.join(',');
    let p = this.pipelines.get(key);
    if (!p) {
      const code = W.buildShader(def, slots, this.features.shaderF16);
      const module = this.device.createShaderModule({ code, label: key });
      p = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label: key });
      this.pipelines.set(key, p);
    }
    return p;
  }

  /**
   * Encodes one dispatch of `def` over `groups` workgroups (a 2-D grid past 65535). Public for
   * kernels outside the `Kernels` contract (the codec kernels of codec.ts, the Llama kernels of llama.ts, probes in tests).
   */
  launch(
    def: KernelDef,
    args: readonly GpuTensor[],
    params: Record<string, number>,
    groups: number | [number, number],
  ): void {
    const [gx, gy] =
      typeof groups === 'number' ? [Math.min(groups, MAX_GROUPS), Math.ceil(groups / MAX_GROUPS)] : groups;
    if (gx === 0 || gy === 0) return;
    if (gx > MAX_GROUPS || gy > MAX_GROUPS)
      throw new InvalidInputError(`${def.name}: problem too large for one dispatch`);
    def.args.forEach(([name, type], i) => {
      if ((type === 'f16') !== (args[i].dtype === 'f16'))
        throw new InvalidInputError(`${def.name}: argument ${name} is ${type}, the tensor ${args[i].dtype}`);
    });
    if (this.features.subgroups) def = withSubgroups(def);
    // One binding per distinct buffer.
    const buffers: GPUBuffer[] = [];
    const slots = args.map((a) => {
      let s = buffers.indexOf(a.buffer);
      if (s < 0) s = buffers.push(a.buffer) - 1;
      return s;
    });
    const u = new DataView(new ArrayBuffer(Math.ceil(((def.args.length + def.params.length) * 4) / 16) * 16));
    let at = 0;
    def.args.forEach((_, i) => {
      u.setUint32(at, args[i].offset, true);
      at += 4;
    });
    for (const [name, type] of def.params) {
      const v = params[name];
      if (v === undefined) throw new TypeError(`${def.name}: missing parameter ${name}`);
      if (type === 'f32') u.setFloat32(at, v, true);
      else if (type === 'i32') u.setInt32(at, v, true);
      else u.setUint32(at, v, true);
      at += 4;
    }
    const p = this.begin();
    const ubuf = this.device.createBuffer({ size: u.byteLength, usage: UNIFORM | COPY_DST });
    this.device.queue.writeBuffer(ubuf, 0, u.buffer);
    p.temps.push(ubuf);
    const pipe = this.pipeline(def, slots);
    const bind = this.device.createBindGroup({
      layout: pipe.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: ubuf } },
        ...buffers.map((buffer, i) => ({ binding: i + 1, resource: { buffer } })),
      ],
    });
    const pass = p.encoder.beginComputePass();
    pass.setPipeline(pipe);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(gx, gy);
    pass.end();
    if (++p.calls >= BATCH) this.flush();
  }

  /** A scratch tensor holding `data`; pass it to release() after the dispatch that last uses it. */
  private temp(data: Int32Array): GpuTensor {
    const t = this.alloc(data.length, 'i32');
    this.device.queue.writeBuffer(t.buffer, 0, data.buffer, data.byteOffset, data.byteLength);
    return t;
  }

  /**
   * Frees a scratch tensor once the work encoded so far is submitted (destroying it earlier would
   * invalidate dispatches not yet submitted; destroying it after submission is safe).
   */
  release(t: GpuTensor): void {
    this.begin().temps.push(t.buffer);
  }

  // -------------------------------------------------------------------------------------------
  // Kernels: the `Kernels` contract on GpuTensors (see src/kernels/api.ts for each one).

  /** C[M,N] (= bias + | +=) A B with element strides (see wgsl.ts GEMM). */
  private gemm(
    C: GpuTensor,
    A: GpuTensor,
    B: GpuTensor,
    bias: GpuTensor | null,
    M: number,
    N: number,
    K: number,
    s: { rsa: number; csa: number; rsb: number; csb: number; ldc: number },
    acc: boolean,
  ): void {
    this.launch(
      gemmDef(A.dtype === 'f16', B.dtype === 'f16'),
      [A, B, C, bias ?? this.dummy.f32],
      { M, N, K, ...s, acc: acc ? 1 : 0, has_bias: bias ? 1 : 0 },
      [Math.ceil(N / W.TILE), Math.ceil(M / W.TILE)],
    );
  }

  /** out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias[OC] (bias may be null). */
  matmulForward(
    out: GpuTensor,
    inp: GpuTensor,
    weight: GpuTensor,
    bias: GpuTensor | null,
    N: number,
    C: number,
    OC: number,
  ): void {
    need('matmulForward', [out, N * OC], [inp, N * C], [weight, OC * C], [bias, OC]);
    this.gemm(out, inp, weight, bias, N, OC, C, { rsa: C, csa: 1, rsb: 1, csb: C, ldc: OC }, false);
  }

  /** dinp += dout @ weight; dweight += dout^T @ inp; dbias += column sums of dout (may be null). */
  matmulBackward(
    dinp: GpuTensor,
    dweight: GpuTensor,
    dbias: GpuTensor | null,
    dout: GpuTensor,
    inp: GpuTensor,
    weight: GpuTensor,
    N: number,
    C: number,
    OC: number,
  ): void {
    need(
      'matmulBackward',
      [dinp, N * C],
      [dweight, OC * C],
      [dbias, OC],
      [dout, N * OC],
      [inp, N * C],
      [weight, OC * C],
    );
    this.gemm(dinp, dout, weight, null, N, C, OC, { rsa: OC, csa: 1, rsb: C, csb: 1, ldc: C }, true);
    this.gemm(dweight, dout, inp, null, OC, C, N, { rsa: 1, csa: OC, rsb: C, csb: 1, ldc: C }, true);
    if (dbias) this.launch(W.COLSUM, [dbias, dout], { N, OC }, Math.ceil(OC / W.WG));
  }

  layernormForward(
    out: GpuTensor,
    mean: GpuTensor,
    rstd: GpuTensor,
    inp: GpuTensor,
    weight: GpuTensor,
    bias: GpuTensor,
    N: number,
    C: number,
  ): void {
    need('layernormForward', [out, N * C], [mean, N], [rstd, N], [inp, N * C], [weight, C], [bias, C]);
    if (out.dtype === 'f16' && (C % 2 || out.offset % 2))
      throw new InvalidInputError('layernormForward: an f16 output needs an even C and offset');
    const def = out.dtype === 'f16' ? LAYERNORM_FWD_OUT16 : W.LAYERNORM_FWD;
    this.launch(def, [out, mean, rstd, inp, weight, bias], { N, C }, N);
  }

  layernormBackward(
    dinp: GpuTensor,
    dweight: GpuTensor,
    dbias: GpuTensor,
    dout: GpuTensor,
    inp: GpuTensor,
    weight: GpuTensor,
    mean: GpuTensor,
    rstd: GpuTensor,
    N: number,
    C: number,
  ): void {
    need(
      'layernormBackward',
      [dinp, N * C],
      [dweight, C],
      [dbias, C],
      [dout, N * C],
      [inp, N * C],
      [weight, C],
      [mean, N],
      [rstd, N],
    );
    this.launch(W.LAYERNORM_BWD_DINP, [dinp, dout, inp, weight, mean, rstd], { N, C }, N);
    this.launch(W.LAYERNORM_BWD_PARAMS, [dweight, dbias, dout, inp, mean, rstd], { N, C }, Math.ceil(C / W.WG));
  }

  geluForward(out: GpuTensor, inp: GpuTensor, n: number): void {
    need('geluForward', [out, n], [inp, n]);
    if (out.dtype === 'f16') {
      if (n % 2 || out.offset % 2) throw new InvalidInputError('geluForward: an f16 output needs an even n and offset');
      this.launch(GELU_FWD_OUT16, [out, inp], { n }, Math.ceil(n / 2 / W.WG));
    } else this.launch(W.GELU_FWD, [out, inp], { n }, Math.ceil(n / W.WG));
  }

  geluBackward(dinp: GpuTensor, inp: GpuTensor, dout: GpuTensor, n: number): void {
    need('geluBackward', [dinp, n], [inp, n], [dout, n]);
    this.launch(W.GELU_BWD, [dinp, inp, dout], { n }, Math.ceil(n / W.WG));
  }

  /** Causal attention; att [B,NH,T,T] keeps the probabilities, as `Kernels` does (see attentionForwardFlash). */
  attentionForward(out: GpuTensor, att: GpuTensor, inp: GpuTensor, B: number, T: number, C: number, NH: number): void {
    attnShape(C, NH);
    need('attentionForward', [out, B * T * C], [att, B * NH * T * T], [inp, B * T * 3 * C]);
    this.launch(W.ATTENTION_FWD, [out, att, inp], { B, T, C, NH, scale: 1 / Math.sqrt(C / NH) }, B * NH * T);
  }

  /** dinp [B,T,3C] += ...; datt [B,NH,T,T] is scratch (overwritten). */
  attentionBackward(
    dinp: GpuTensor,
    datt: GpuTensor,
    dout: GpuTensor,
    inp: GpuTensor,
    att: GpuTensor,
    B: number,
    T: number,
    C: number,
    NH: number,
  ): void {
    attnShape(C, NH);
    need(
      'attentionBackward',
      [dinp, B * T * 3 * C],
      [datt, B * NH * T * T],
      [dout, B * T * C],
      [inp, B * T * 3 * C],
      [att, B * NH * T * T],
    );
    const p = { B, T, C, NH, scale: 1 / Math.sqrt(C / NH) };
    this.launch(W.ATTENTION_BWD_Q, [dinp, datt, dout, inp, att], p, B * NH * T);
    this.launch(W.ATTENTION_BWD_KV, [dinp, datt, dout, inp, att], p, B * NH * T);
  }

  /**
   * Flash-style causal attention: out [B,T,C] and lse [B,NH,T] (the log-sum-exp per query row)
   * instead of the probabilities, so memory is O(T), not O(T^2). Head size at most FLASH_MAX_HS.
   */
  attentionForwardFlash(
    out: GpuTensor,
    lse: GpuTensor,
    inp: GpuTensor,
    B: number,
    T: number,
    C: number,
    NH: number,
  ): void {
    attnShape(C, NH);
    if (C / NH > W.FLASH_MAX_HS) throw new InvalidInputError(`attention: head size ${C / NH} > ${W.FLASH_MAX_HS}`);
    need('attentionForwardFlash', [out, B * T * C], [lse, B * NH * T], [inp, B * T * 3 * C]);
    this.launch(W.ATTENTION_FLASH_FWD, [out, lse, inp], { B, T, C, NH, scale: 1 / Math.sqrt(C / NH) }, B * NH * T);
  }

  /**
   * Backward of attentionForwardFlash: dinp [B,T,3C] += ..., recomputing the probabilities from
   * lse; `dd` [B,NH,T] is scratch (overwritten with dout . out per row).
   */
  attentionBackwardFlash(
    dinp: GpuTensor,
    dd: GpuTensor,
    dout: GpuTensor,
    inp: GpuTensor,
    out: GpuTensor,
    lse: GpuTensor,
    B: number,
    T: number,
    C: number,
    NH: number,
  ): void {
    attnShape(C, NH);
    if (C / NH > W.FLASH_MAX_HS) throw new InvalidInputError(`attention: head size ${C / NH} > ${W.FLASH_MAX_HS}`);
    need(
      'attentionBackwardFlash',
      [dinp, B * T * 3 * C],
      [dd, B * NH * T],
      [dout, B * T * C],
      [inp, B * T * 3 * C],
      [out, B * T * C],
      [lse, B * NH * T],
    );
    const p = { B, T, C, NH, scale: 1 / Math.sqrt(C / NH) };
    this.launch(W.ATTENTION_FLASH_BWD_Q, [dinp, dd, dout, inp, out, lse], p, B * NH * T);
    this.launch(W.ATTENTION_FLASH_BWD_KV, [dinp, dd, dout, inp, lse], p, B * NH * T);
  }

  /**
   * Flash attention with K/V tiles shared across query rows (wgsl/attention-tiled.ts): the same
   * contract as attentionForwardFlash (out and lse [B,NH,T]), BT query rows per workgroup.
   */
  attentionForwardTiled(
    out: GpuTensor,
    lse: GpuTensor,
    inp: GpuTensor,
    B: number,
    T: number,
    C: number,
    NH: number,
  ): void {
    const bt = tiledRows(tiledHs(C, NH)).fwd;
    need('attentionForwardTiled', [out, B * T * C], [lse, B * NH * T], [inp, B * T * 3 * C]);
    const p = { bt, B, T, C, NH, scale: 1 / Math.sqrt(C / NH) };
    this.launch(ATTENTION_TILED_FWD, [out, lse, inp], p, B * NH * Math.ceil(T / bt));
  }

  /** Backward of attentionForwardTiled, the contract of attentionBackwardFlash. */
  attentionBackwardTiled(
    dinp: GpuTensor,
    dd: GpuTensor,
    dout: GpuTensor,
    inp: GpuTensor,
    out: GpuTensor,
    lse: GpuTensor,
    B: number,
    T: number,
    C: number,
    NH: number,
  ): void {
    const bt = tiledRows(tiledHs(C, NH)).bwd;
    need(
      'attentionBackwardTiled',
      [dinp, B * T * 3 * C],
      [dd, B * NH * T],
      [dout, B * T * C],
      [inp, B * T * 3 * C],
      [out, B * T * C],
      [lse, B * NH * T],
    );
    const p = { bt, B, T, C, NH, scale: 1 / Math.sqrt(C / NH) };
    const groups = B * NH * Math.ceil(T / bt);
    this.launch(ATTENTION_TILED_BWD_Q, [dinp, dd, dout, inp, out, lse], p, groups);
    this.launch(ATTENTION_TILED_BWD_KV, [dinp, dd, dout, inp, lse], p, groups);
  }

  /** losses[N]; dlogits (may be null, may alias logits) = (softmax - onehot) * dlossScale. */
  crossEntropyForwardBackward(
    losses: GpuTensor,
    dlogits: GpuTensor | null,
    logits: GpuTensor,
    targets: GpuTensor,
    N: number,
    V: number,
    dlossScale: number,
  ): void {
    need('crossEntropyForwardBackward', [losses, N], [dlogits, N * V], [logits, N * V], [targets, N]);
    if (targets.dtype !== 'i32') throw new InvalidInputError('crossEntropyForwardBackward: targets must be i32');
    this.launch(
      W.CROSSENTROPY,
      [losses, dlogits ?? this.dummy.f32, logits, targets],
      { N, V, dscale: dlossScale, has_d: dlogits ? 1 : 0 },
      N,
    );
  }

  softmax(probs: GpuTensor, logits: GpuTensor, N: number, V: number): void {
    need('softmax', [probs, N * V], [logits, N * V]);
    this.launch(W.SOFTMAX, [probs, logits], { N, V }, N);
  }

  /** out = wte[tokens] + wpe; tokens is an i32 tensor whose values must be < wte rows (checked on upload by the caller). */
  embeddingForward(
    out: GpuTensor,
    tokens: GpuTensor,
    wte: GpuTensor,
    wpe: GpuTensor,
    B: number,
    T: number,
    C: number,
  ): void {
    need('embeddingForward', [out, B * T * C], [tokens, B * T], [wpe, T * C]);
    if (tokens.dtype !== 'i32') throw new InvalidInputError('embeddingForward: tokens must be i32');
    this.launch(W.EMBEDDING_FWD, [out, tokens, wte, wpe], { BT: B * T, T, C }, Math.ceil((B * T * C) / W.WG));
  }

  /** dwte[tok] += dout; dwpe[t] += dout, in position order. `tokens` is the host copy. */
  embeddingBackward(
    dwte: GpuTensor,
    dwpe: GpuTensor,
    dout: GpuTensor,
    tokens: Int32Array,
    B: number,
    T: number,
    C: number,
  ): void {
    need('embeddingBackward', [dwpe, T * C], [dout, B * T * C]);
    if (tokens.length < B * T) throw new InvalidInputError(`embeddingBackward: tokens has ${tokens.length} < ${B * T}`);
    const V = dwte.length / C;
    // Group positions by token, each group in position order: [tokens..., starts..., positions...].
    const first = new Map<number, number[]>();
    for (let p = 0; p < B * T; p++) {
      const tok = tokens[p];
      if (!Number.isInteger(tok) || tok < 0 || tok >= V)
        throw new InvalidInputError(`embeddingBackward: token ${tok} at ${p} outside [0, ${V})`);
      let list = first.get(tok);
      if (!list) first.set(tok, (list = []));
      list.push(p);
    }
    const U = first.size;
    const csr = new Int32Array(2 * U + 1 + B * T);
    let j = 0,
      at = 0;
    for (const [tok, list] of first) {
      csr[j] = tok;
      csr[U + j] = at;
      for (const p of list) csr[2 * U + 1 + at++] = p;
      j++;
    }
    csr[2 * U] = at;
    if (U) {
      const t = this.temp(csr);
      this.launch(W.EMBEDDING_BWD_WTE, [dwte, dout, t], { U, C }, Math.ceil((U * C) / W.WG));
      this.release(t);
    }
    this.launch(W.EMBEDDING_BWD_WPE, [dwpe, dout], { B, T, C }, Math.ceil((T * C) / W.WG));
  }

  add(out: GpuTensor, a: GpuTensor, b: GpuTensor, n: number): void {
    need('add', [out, n], [a, n], [b, n]);
    this.launch(W.ADD, [out, a, b], { n }, Math.ceil(n / W.WG));
  }

  scale(x: GpuTensor, s: number): void {
    this.launch(W.SCALE, [x], { n: x.length, s }, Math.ceil(x.length / W.WG));
  }

  /**
   * Sum of squares of x, on the GPU in a fixed order (float32, unlike the CPU kernels' double),
   * left in a one-element tensor; `sumSquares` reads it back.
   */
  sumSquaresInto(out: GpuTensor, x: GpuTensor): void {
    need('sumSquares', [out, 1]);
    let n = x.length,
      src = x,
      square = 1;
    for (;;) {
      const ng = Math.max(1, Math.ceil(n / W.SUMSQ_CHUNK));
      const dst = ng === 1 ? out : this.alloc(ng);
      this.launch(W.SUMSQ, [dst, src], { n, square, ng }, ng);
      if (src !== x) this.release(src); // after its last use
      if (ng === 1) return;
      src = dst;
      n = ng;
      square = 0;
    }
  }

  async sumSquares(x: GpuTensor): Promise<number> {
    const out = this.alloc(1);
    this.sumSquaresInto(out, x);
    const r = (await this.read(out))[0];
    out.buffer.destroy();
    return r;
  }

  /** AdamW over equal-length slices, `step` 1-based (bias corrections computed here, as native does). */
  adamw(
    params: GpuTensor,
    grads: GpuTensor,
    m: GpuTensor,
    v: GpuTensor,
    lr: number,
    beta1: number,
    beta2: number,
    eps: number,
    weightDecay: number,
    step: number,
  ): void {
    const n = params.length;
    need('adamw', [grads, n], [m, n], [v, n]);
    if (!Number.isInteger(step) || step < 1)
      throw new InvalidInputError(`adamw: step must be an integer >= 1, got ${step}`);
    this.launch(
      W.ADAMW,
      [params, grads, m, v],
      {
        n,
        lr,
        b1: beta1,
        b2: beta2,
        eps,
        wd: weightDecay,
        ib1: 1 / (1 - Math.pow(beta1, step)),
        ib2: 1 / (1 - Math.pow(beta2, step)),
      },
      Math.ceil(n / W.WG),
    );
  }
}

/** Every tensor must hold at least its shape's elements (a short one would read out of bounds). */
function need(kernel: string, ...checks: [GpuTensor | null, number][]): void {
  for (const [t, n] of checks) {
    if (t && t.length < n) throw new InvalidInputError(`${kernel}: a tensor has ${t.length} elements, needs ${n}`);
    if (n > 0xffffffff) throw new InvalidInputError(`${kernel}: ${n} elements exceed 32-bit indexing`);
  }
}

/** The head size C / NH, checked for the tiled kernels (at most TILED_MAX_HS). */
function tiledHs(C: number, NH: number): number {
  attnShape(C, NH);
  const hs = C / NH;
  if (hs > TILED_MAX_HS) throw new InvalidInputError(`attention: head size ${hs} > ${TILED_MAX_HS}`);
  return hs;
}

function attnShape(C: number, NH: number): void {
  if (NH < 1 || C % NH !== 0) throw new InvalidInputError(`attention: C=${C} is not a multiple of NH=${NH}`);
}
