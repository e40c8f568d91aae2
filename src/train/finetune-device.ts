/**
 * Full fine-tuning of an existing checkpoint on a WebGPU device: `tessera train --init DIR
 * --device webgpu|auto`, for GPT-2 (WebGpuGPT) and Llama-family models (WebGpuLlama).
 * Parameters, gradients and AdamW's m and v stay in GPU buffers across steps. θ comes back to
 * the host once, at the end, to be saved. Each step is the one inner step (inner-step.ts
 * `innerStepOn`: the same schedule, clip and AdamW as the CPU path), so a device run tracks the
 * CPU within the WGSL kernels' tolerance.
 *
 * LoRA stays on the CPU: the adapter's layer hooks have no WGSL kernels, and `--device webgpu`
 * with `--lora` is refused before any work starts.
 */
import type { LlamaConfig } from '../model/llama-config.js';
import type { ModelConfig } from '../model/config.js';
import type { AnyModelConfig } from '../model/lora.js';
import type { WebGpuDevice } from '../kernels/webgpu/device.js';
import { DeviceRefusedError } from '../util/errors.js';
import type { AdamWSettings } from './adamw.js';
import { adapterLabel, openWebGpu } from './device-model.js';
import { innerStepOn, type StepModel } from './inner-step.js';
import type { Schedule } from './schedule.js';
import type { Batch } from './trainer.js';

export type FinetuneDevice = 'cpu' | 'webgpu' | 'auto';

/** One full fine-tuning model on a device: the steps, validation and θ back to the host. */
export interface DeviceFinetuner {
  /** For the start-up line: the adapter's vendor / architecture / description. */
  readonly label: string;
  /** One optimizer step at schedule index `step` (0-based). */
  step(
    b: Batch,
    B: number,
    T: number,
    schedule: Schedule,
    step: number,
  ): Promise<{ loss: number; lr: number; gradNorm: number }>;
  /** Mean loss of one batch, the forward pass only. */
  loss(b: Batch, B: number, T: number): Promise<number>;
  /** A host copy of θ (the checkpoint's layout) after every step so far. */
  readParams(): Promise<Float32Array>;
  close(): void;
}

interface GpuModel extends StepModel {
  loss(tokens: Int32Array, targets: Int32Array, B: number, T: number): Promise<number>;
  setParams(p: Float32Array): void;
  readonly params: Parameters<WebGpuDevice['read']>[0];
}

export interface OpenFinetunerOptions {
  any: AnyModelConfig;
  /** θ0: the checkpoint's weights (host). */
  params: Float32Array;
  adamw: AdamWSettings;
  lora: boolean;
  log?: (line: string) => void;
}

/**
 * The device model for `device`, or null to train on the CPU ('cpu'; 'auto' with LoRA or no
 * adapter, said through `log`). 'webgpu' with LoRA is refused (DeviceRefusedError); 'webgpu'
 * with no adapter throws WebGpuUnavailableError.
 */
export async function openDeviceFinetuner(
  device: FinetuneDevice,
  o: OpenFinetunerOptions,
): Promise<DeviceFinetuner | null> {
  if (device === 'cpu') return null;
  if (o.lora) {
    if (device === 'webgpu')
      throw new DeviceRefusedError(
        '--device webgpu refused: LoRA fine-tuning runs on the CPU (the adapter has no WGSL kernels); drop --device or --lora',
      );
    o.log?.('device auto: cpu, because LoRA fine-tuning runs on the CPU');
    return null;
  }
  const dev = await openWebGpu(device, o.log);
  if (!dev) return null;
  let m: GpuModel;
  try {
    if (o.any.arch === 'gpt2') {
      const { WebGpuGPT } = await import('../model/gpt-webgpu.js');
      m = new WebGpuGPT(dev, o.any.config as ModelConfig, o.adamw);
    } else {
      const { WebGpuLlama } = await import('../model/llama-webgpu.js');
      m = new WebGpuLlama(dev, o.any.config as LlamaConfig, o.adamw);
    }
    m.setParams(o.params);
  } catch (err) {
    dev.destroy();
    throw err;
  }
  const label = adapterLabel(dev);
  if (device === 'auto') o.log?.(`device auto: webgpu (${label})`);
  return {
    label,
    step: (b, B, T, schedule, step) => innerStepOn(m, { batches: [b], B, T, schedule, step }),
    loss: (b, B, T) => m.loss(b.inputs, b.targets, B, T),
    readParams: () => dev.read(m.params),
    close: () => dev.destroy(),
  };
}
