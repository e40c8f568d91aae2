/**
 * Native kernels: the C++/N-API addon in native/ (OpenBLAS for fast-mode matmuls, hand-written
 * fused and deterministic kernels for everything else, GPT-2's and the Llama family's), wrapped
 * as a `Kernels` object.
 *
 * The addon itself is stateless per call: this wrapper owns the thread count and the mode and
 * passes them with every call (the `cfg` word), so two Kernels objects never interfere. The addon
 * validates every argument (types, lengths, overlaps, token ranges) before touching memory and
 * throws TypeError / RangeError.
 *
 * An addon built without OpenBLAS (native/binding.gyp finds no cblas.h or libopenblas, or the build
 * ran with TESSERA_NO_BLAS=1) runs every matmul on Tessera's own blocked GEMM; `info.blas` is then
 * 'none' and loading it says so once on stderr. `addonPath` loads another build (the no-BLAS copy
 * the tests and bench/native-noblas.ts build), so both can run in one process; the environment
 * variable TESSERA_NATIVE_ADDON (an absolute path) does the same for a whole process, e.g. to run
 * test/kernels.test.js on the no-BLAS build.
 */
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Kernels } from './api.js';
import { NativeUnavailableError } from '../util/errors.js';

/** Where node-gyp puts the addon, relative to the package root. */
export const NATIVE_ADDON_PATH = join('native', 'build', 'Release', 'tessera_kernels.node');

/** Raw addon functions. The first argument of each kernel is the packed config word. */
interface Addon {
  matmulForward(
    cfg: number,
    out: Float32Array,
    inp: Float32Array,
    weight: Float32Array,
    bias: Float32Array | null,
    N: number,
    C: number,
    OC: number,
  ): void;
  matmulBackward(
    cfg: number,
    dinp: Float32Array,
    dweight: Float32Array | null,
    dbias: Float32Array | null,
    dout: Float32Array,
    inp: Float32Array,
    weight: Float32Array,
    N: number,
    C: number,
    OC: number,
  ): void;
  layernormForward(
    cfg: number,
    out: Float32Array,
    mean: Float32Array,
    rstd: Float32Array,
    inp: Float32Array,
    weight: Float32Array,
    bias: Float32Array,
    N: number,
    C: number,
  ): void;
  layernormBackward(
    cfg: number,
    dinp: Float32Array,
    dweight: Float32Array,
    dbias: Float32Array,
    dout: Float32Array,
    inp: Float32Array,
    weight: Float32Array,
    mean: Float32Array,
    rstd: Float32Array,
    N: number,
    C: number,
  ): void;
  geluForward(cfg: number, out: Float32Array, inp: Float32Array, n: number): void;
  geluBackward(cfg: number, dinp: Float32Array, inp: Float32Array, dout: Float32Array, n: number): void;
  attentionForward(
    cfg: number,
    out: Float32Array,
    att: Float32Array,
    inp: Float32Array,
    B: number,
    T: number,
    C: number,
    NH: number,
  ): void;
  attentionBackward(
    cfg: number,
    dinp: Float32Array,
    datt: Float32Array,
    dout: Float32Array,
    inp: Float32Array,
    att: Float32Array,
    B: number,
    T: number,
    C: number,
    NH: number,
  ): void;
  crossEntropyForwardBackward(
    cfg: number,
    losses: Float32Array,
    dlogits: Float32Array | null,
    logits: Float32Array,
    targets: Int32Array,
    N: number,
    V: number,
    dlossScale: number,
  ): void;
  softmax(cfg: number, probs: Float32Array, logits: Float32Array, N: number, V: number): void;
  embeddingForward(
    cfg: number,
    out: Float32Array,
    tokens: Int32Array,
    wte: Float32Array,
    wpe: Float32Array,
    B: number,
    T: number,
    C: number,
  ): void;
  embeddingBackward(
    cfg: number,
    dwte: Float32Array,
    dwpe: Float32Array,
    dout: Float32Array,
    tokens: Int32Array,
    B: number,
    T: number,
    C: number,
  ): void;
  add(cfg: number, out: Float32Array, a: Float32Array, b: Float32Array, n: number): void;
  sumSquares(cfg: number, x: Float32Array): number;
  scale(cfg: number, x: Float32Array, s: number): void;
  adamw(
    cfg: number,
    params: Float32Array,
    grads: Float32Array,
    m: Float32Array,
    v: Float32Array,
    lr: number,
    beta1: number,
    beta2: number,
    eps: number,
    weightDecay: number,
    invBc1: number,
    invBc2: number,
  ): void;
  rmsnormForward(
    cfg: number,
    out: Float32Array,
    rstd: Float32Array,
    inp: Float32Array,
    weight: Float32Array,
    N: number,
    C: number,
    eps: number,
  ): void;
  rmsnormBackward(
    cfg: number,
    dinp: Float32Array,
    dweight: Float32Array,
    dout: Float32Array,
    inp: Float32Array,
    weight: Float32Array,
    rstd: Float32Array,
    N: number,
    C: number,
  ): void;
  ropeForward(
    cfg: number,
    x: Float32Array,
    cos: Float32Array,
    sin: Float32Array,
    B: number,
    T: number,
    nh: number,
    hd: number,
  ): void;
  ropeBackward(
    cfg: number,
    x: Float32Array,
    cos: Float32Array,
    sin: Float32Array,
    B: number,
    T: number,
    nh: number,
    hd: number,
  ): void;
  swigluForward(cfg: number, out: Float32Array, gate: Float32Array, up: Float32Array, n: number): void;
  swigluBackward(
    cfg: number,
    dgate: Float32Array,
    dup: Float32Array,
    dout: Float32Array,
    gate: Float32Array,
    up: Float32Array,
    n: number,
  ): void;
  gqaForward(
    cfg: number,
    out: Float32Array,
    att: Float32Array,
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    B: number,
    T: number,
    NH: number,
    KV: number,
    hd: number,
  ): void;
  gqaBackward(
    cfg: number,
    dq: Float32Array,
    dk: Float32Array,
    dv: Float32Array,
    datt: Float32Array,
    dout: Float32Array,
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    att: Float32Array,
    B: number,
    T: number,
    NH: number,
    KV: number,
    hd: number,
  ): void;
  sgemmBench(transA: boolean, transB: boolean, M: number, N: number, K: number, iters: number, threads: number): number;
  info(): NativeInfo;
}

export interface NativeInfo {
  /** Which GEMM fast mode uses: 'openblas', or 'none' (Tessera's own blocked GEMM, no BLAS at build time). */
  blas: 'openblas' | 'none';
  /** Instruction set of the kernels chosen for this CPU: 'avx2' or 'x86-64'. */
  isa: string;
  /** openblas_get_config(), e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64". */
  blasConfig: string;
  blasCore: string;
  /** 'pool': OpenBLAS single-threaded inside Tessera's pool (default); 'openblas': its own threads. */
  blasThreading: string;
}

export interface NativeKernelOptions {
  threads?: number;
  deterministic?: boolean;
  /**
   * Force the baseline x86-64 (SSE2) code path instead of the best one for this CPU. For tests:
   * deterministic results must be bitwise identical between the two.
   */
  isa?: 'auto' | 'baseline';
  /** Absolute path of another build of the addon (default: the package's native/build/Release one). */
  addonPath?: string;
}

export interface NativeKernels extends Kernels {
  readonly name: 'native';
  readonly info: NativeInfo;
}

const MAX_THREADS = 256;

/** The directory holding Tessera's package.json, found by walking up from this file. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj)) {
      try {
        if ((JSON.parse(readFileSync(pj, 'utf8')) as { name?: string }).name === 'tessera') return dir;
      } catch {
        /* unreadable package.json: keep walking */
      }
    }
    const up = dirname(dir);
    if (up === dir)
      throw new NativeUnavailableError(
        'cannot find the tessera package root (package.json) above ' + dirname(fileURLToPath(import.meta.url)),
      );
    dir = up;
  }
}

const addons = new Map<string, Addon>();
let saidNoBlas = false;

/**
 * Loads (once per path) and returns the raw addon: the package's own build, or the one at `path`.
 * Throws NativeUnavailableError with the reason. The first no-BLAS build loaded says so on stderr.
 */
export function loadNativeAddon(path?: string): Addon {
  const p = path ?? process.env.TESSERA_NATIVE_ADDON ?? join(packageRoot(), NATIVE_ADDON_PATH);
  const cached = addons.get(p);
  if (cached) return cached;
  if (!existsSync(p)) {
    throw new NativeUnavailableError(`native addon not built: ${p} does not exist`);
  }
  let a: Addon;
  try {
    a = createRequire(import.meta.url)(p) as Addon;
  } catch (err) {
    throw new NativeUnavailableError(`cannot load ${p}: ${(err as Error).message}`, { cause: err });
  }
  addons.set(p, a);
  if (a.info().blas === 'none' && !saidNoBlas && process.env.TESSERA_QUIET_NO_BLAS !== '1') {
    saidNoBlas = true;
    process.stderr.write(
      "tessera: native kernels built without OpenBLAS: matmuls use Tessera's own blocked GEMM " +
        '(for OpenBLAS speed: apt-get install libopenblas-dev && npm rebuild)\n',
    );
  }
  return a;
}

/** Information about the loaded addon (ISA, OpenBLAS build or none). */
export function nativeInfo(path?: string): NativeInfo {
  return loadNativeAddon(path).info();
}

/**
 * Raw cblas_sgemm throughput in GFLOP/s: C[M,N] = op(A) op(B) with OpenBLAS's own threading at
 * `threads` (the peak the native matmuls are compared against): the fastest of `iters` timed
 * calls after one warm-up call. A no-BLAS build times its own GEMM on `threads` pool threads.
 */
export function sgemmBench(
  M: number,
  N: number,
  K: number,
  iters: number,
  opts: { threads?: number; transA?: boolean; transB?: boolean; addonPath?: string } = {},
): number {
  const secs = loadNativeAddon(opts.addonPath).sgemmBench(
    opts.transA ?? false,
    opts.transB ?? false,
    M,
    N,
    K,
    iters,
    opts.threads ?? 1,
  );
  return (2 * M * N * K) / secs / 1e9;
}

export function createNativeKernels(opts: NativeKernelOptions = {}): NativeKernels {
  const k = loadNativeAddon(opts.addonPath);
  const info = k.info();
  let threads = Math.min(MAX_THREADS, availableParallelism());
  let deterministic = false;
  const isaBits = opts.isa === 'baseline' ? 1 << 17 : 0;
  // threads in bits 0..15, deterministic in bit 16, ISA override in bits 17..18 (see addon.cc).
  let cfg = 0;
  const update = () => {
    cfg = threads | (deterministic ? 1 << 16 : 0) | isaBits;
  };

  const kernels: NativeKernels = {
    name: 'native',
    info,
    setThreads(n) {
      threads = Math.max(1, Math.min(MAX_THREADS, n | 0));
      update();
    },
    getThreads() {
      return threads;
    },
    setDeterministic(on) {
      deterministic = !!on;
      update();
    },
    getDeterministic() {
      return deterministic;
    },

    matmulForward(out, inp, weight, bias, N, C, OC) {
      k.matmulForward(cfg, out, inp, weight, bias, N, C, OC);
    },
    matmulBackward(dinp, dweight, dbias, dout, inp, weight, N, C, OC) {
      k.matmulBackward(cfg, dinp, dweight, dbias, dout, inp, weight, N, C, OC);
    },
    layernormForward(out, mean, rstd, inp, weight, bias, N, C) {
      k.layernormForward(cfg, out, mean, rstd, inp, weight, bias, N, C);
    },
    layernormBackward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C) {
      k.layernormBackward(cfg, dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
    },
    geluForward(out, inp, n) {
      k.geluForward(cfg, out, inp, n);
    },
    geluBackward(dinp, inp, dout, n) {
      k.geluBackward(cfg, dinp, inp, dout, n);
    },
    attentionForward(out, att, inp, B, T, C, NH) {
      k.attentionForward(cfg, out, att, inp, B, T, C, NH);
    },
    attentionBackward(dinp, datt, dout, inp, att, B, T, C, NH) {
      k.attentionBackward(cfg, dinp, datt, dout, inp, att, B, T, C, NH);
    },
    crossEntropyForwardBackward(losses, dlogits, logits, targets, N, V, dlossScale) {
      k.crossEntropyForwardBackward(cfg, losses, dlogits, logits, targets, N, V, dlossScale);
    },
    softmax(probs, logits, N, V) {
      k.softmax(cfg, probs, logits, N, V);
    },
    embeddingForward(out, tokens, wte, wpe, B, T, C) {
      k.embeddingForward(cfg, out, tokens, wte, wpe, B, T, C);
    },
    embeddingBackward(dwte, dwpe, dout, tokens, B, T, C) {
      k.embeddingBackward(cfg, dwte, dwpe, dout, tokens, B, T, C);
    },
    add(out, a, b, n) {
      k.add(cfg, out, a, b, n);
    },
    sumSquares(x) {
      return k.sumSquares(cfg, x);
    },
    scale(x, s) {
      k.scale(cfg, x, s);
    },
    adamw(params, grads, m, v, lr, beta1, beta2, eps, weightDecay, step) {
      if (!Number.isInteger(step) || step < 1) throw new RangeError(`adamw: step must be an integer >= 1, got ${step}`);
      // Bias corrections in JS: V8's Math.pow is its own software routine (fdlibm), not the
      // CPU-dispatched libm pow, so the result does not depend on the machine.
      const invBc1 = 1 / (1 - Math.pow(beta1, step));
      const invBc2 = 1 / (1 - Math.pow(beta2, step));
      k.adamw(cfg, params, grads, m, v, lr, beta1, beta2, eps, weightDecay, invBc1, invBc2);
    },
    rmsnormForward(out, rstd, inp, weight, N, C, eps) {
      k.rmsnormForward(cfg, out, rstd, inp, weight, N, C, eps);
    },
    rmsnormBackward(dinp, dweight, dout, inp, weight, rstd, N, C) {
      k.rmsnormBackward(cfg, dinp, dweight, dout, inp, weight, rstd, N, C);
    },
    ropeForward(x, cos, sin, B, T, nh, hd) {
      k.ropeForward(cfg, x, cos, sin, B, T, nh, hd);
    },
    ropeBackward(dx, cos, sin, B, T, nh, hd) {
      k.ropeBackward(cfg, dx, cos, sin, B, T, nh, hd);
    },
    swigluForward(out, gate, up, n) {
      k.swigluForward(cfg, out, gate, up, n);
    },
    swigluBackward(dgate, dup, dout, gate, up, n) {
      k.swigluBackward(cfg, dgate, dup, dout, gate, up, n);
    },
    gqaForward(out, att, q, kk, v, B, T, NH, KV, hd) {
      k.gqaForward(cfg, out, att, q, kk, v, B, T, NH, KV, hd);
    },
    gqaBackward(dq, dk, dv, datt, dout, q, kk, v, att, B, T, NH, KV, hd) {
      k.gqaBackward(cfg, dq, dk, dv, datt, dout, q, kk, v, att, B, T, NH, KV, hd);
    },
  };
  update();
  if (opts.threads !== undefined) kernels.setThreads(opts.threads);
  if (opts.deterministic !== undefined) kernels.setDeterministic(opts.deterministic);
  return kernels;
}
