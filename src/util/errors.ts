/**
 * Every error Tessera throws on purpose extends TesseraError, so callers (and the CLI)
 * can tell a clear, expected failure (bad input, corrupt file) from a bug.
 */
export class TesseraError extends Error {
  /** Stable machine-readable code, printed by `--json` output. */
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A file, flag or message failed validation. Nothing was applied. */
export class InvalidInputError extends TesseraError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INVALID_INPUT', message, options);
  }
}

/** A checkpoint or tokenizer file is unreadable, truncated or inconsistent. */
export class CorruptFileError extends TesseraError {
  readonly path: string;
  constructor(path: string, message: string, options?: { cause?: unknown }) {
    super('CORRUPT_FILE', `${path}: ${message}`, options);
    this.path = path;
  }
}

/** Two artefacts that must agree do not (e.g. tokenizer vocab vs model vocab). */
export class MismatchError extends TesseraError {
  constructor(message: string) {
    super('MISMATCH', message);
  }
}

/** The native addon is missing or failed to load. */
export class NativeUnavailableError extends TesseraError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('NATIVE_UNAVAILABLE', message, options);
  }
}

/**
 * No WebGPU adapter could be had: the `webgpu` package (Dawn) did not load, or no Vulkan/Metal/D3D
 * driver offered an adapter (on a machine without a GPU: no SwiftShader ICD, see
 * src/kernels/webgpu/device.ts).
 */
export class WebGpuUnavailableError extends TesseraError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WEBGPU_UNAVAILABLE', message, options);
  }
}

/** The WebGPU device refused work (a validation or out-of-memory error) or was lost. */
export class WebGpuError extends TesseraError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WEBGPU_ERROR', message, options);
  }
}

/**
 * A training step's loss is NaN or ±Infinity. Raised by the inner step (src/train/inner-step.ts)
 * BEFORE the optimizer touches the weights or its moments, so the caller still holds the state
 * after the last good step and decides what to do (stop the job, fail the audit, stop the run).
 */
export class NonFiniteLossError extends TesseraError {
  /** The loss as computed (NaN, Infinity or -Infinity). */
  readonly loss: number;
  /** The step's index in the learning-rate schedule. */
  readonly step: number;
  constructor(loss: number, step: number, message?: string, options?: { cause?: unknown }) {
    const text = message ?? `loss is ${loss} at step ${step}; stopping before the weights are damaged`;
    super('NON_FINITE_LOSS', text, options);
    this.loss = loss;
    this.step = step;
  }
}

/**
 * A compute device was asked for where the run forbids it: `--device webgpu` on a run with
 * hyper.audit, whose validators re-execute trainers' steps bit for bit on the CPU's
 * deterministic kernels (a GPU's floats differ from those; see docs/WEBGPU.md).
 */
export class DeviceRefusedError extends TesseraError {
  constructor(message: string) {
    super('DEVICE_REFUSED', message);
  }
}
