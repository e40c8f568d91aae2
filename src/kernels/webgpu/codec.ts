/**
 * The pseudo-gradient codecs on the GPU: Δ = base − θ, error feedback, and the fp32, fp16, int8
 * and SparseLoCo encoders run as WGSL kernels (wgsl/codec.ts) on the device that trained θ, and
 * only the encoded bytes (plus a few counters) come back to the host.
 *
 * The bytes equal `codec.encode(base − θ, ef)` on the CPU bit for bit (src/swarm/compress is the
 * definition; test/webgpu-codec.test.ts checks every codec on random and adversarial inputs), and
 * the device-held residual equals the CPU's `ef.residual` after every call. A non-finite x is
 * refused with the CPU's InvalidInputError before the residual changes.
 *
 * What crosses per encode: fp32, fp16, SparseLoCo: one read of [first bad index, max |x|,
 * payload]; int8: three reads (max |x|; the three 64-bit sums of squares; the bytes and the
 * 256 bins' digit sums) and two small writes (the 255 bin thresholds, the 256 bin means), since
 * its scale and means are float64 functions of exact integer sums that the host evaluates with
 * the CPU codec's own code (int8.ts), so the two cannot differ.
 */
import { InvalidInputError } from '../../util/errors.js';
import type { Codec } from '../../swarm/compress/codec.js';
import type { SparseCodec } from '../../swarm/compress/sparse.js';
import { SPARSE_HEADER_BYTES, sparseKept } from '../../swarm/compress/sparse.js';
import {
  INT8_BINS,
  int8Lut,
  int8Scale,
  int8SsGrid,
  int8SumGrid,
  int8Thresholds,
  int8Size,
} from '../../swarm/compress/int8.js';
import { HEADER_BYTES, MAX_N, writeHeader } from '../../swarm/compress/wire.js';
import type { GpuTensor, WebGpuDevice } from './device.js';
import {
  CODEC_CHUNK,
  CODEC_FP16,
  CODEC_INT8_Q,
  CODEC_INT8_RES,
  CODEC_INT8_SS,
  CODEC_LEVELS,
  CODEC_MINMAX,
  CODEC_SPARSE_PACK,
  CODEC_SPARSE_RES,
  CODEC_TOPK,
  CODEC_U64SUM,
  codecFold,
  INT8_BIN_COUNTERS,
  INT8_BLOCK,
  INT8_COUNTERS,
  SPARSE_MAX_K,
} from './wgsl/codec.js';
import { WG } from './wgsl/common.js';

/** Smallest non-zero error-feedback β the exact fold takes (β·r stays a normal float64). */
export const MIN_GPU_BETA = 2 ** -60;

/**
 * Why `codec` with error-feedback decay `beta` (null: none) cannot encode n elements on the GPU,
 * or null if it can. The caller then forms Δ on the host.
 */
export function gpuCodecRefusal(codec: Codec, n: number, beta: number | null): string | null {
  if (!Number.isInteger(n) || n < 1 || n > MAX_N) return `element count ${n} outside [1, ${MAX_N}]`;
  if (beta !== null && beta !== 0 && !(beta >= MIN_GPU_BETA && beta <= 1))
    return `error-feedback beta ${beta} is neither 0 nor in [2^-60, 1]`;
  if (codec.id === 'sparse') {
    const p = (codec as SparseCodec).params;
    if (p.k > SPARSE_MAX_K)
      return `sparse k ${p.k} > ${SPARSE_MAX_K} (the GPU sorts a chunk's kept values in workgroup memory)`;
    if (sparseKept(n, p) * Math.log2(p.chunk) >= 2 ** 32) return 'the sparse index stream would pass 512 MiB';
  }
  return null;
}

const f64 = new DataView(new ArrayBuffer(8));

export class WebGpuEncoder {
  /** x = β·residual + Δ, then (in place) the next residual; swapped with `residual` on success. */
  private xs: GpuTensor;
  private residual: GpuTensor | null;
  private readonly dummy: GpuTensor;
  private readonly beta: [number, number];
  private readonly out: GpuTensor;

  constructor(
    private readonly dev: WebGpuDevice,
    readonly codec: Codec,
    readonly n: number,
    ef: { beta: number; residual: Float32Array } | null,
  ) {
    const why = gpuCodecRefusal(codec, n, ef ? ef.beta : null);
    if (why) throw new InvalidInputError(`the ${codec.id} codec cannot run on the GPU: ${why}`);
    if (ef && ef.residual.length !== n)
      throw new InvalidInputError(`error-feedback state has ${ef.residual.length} elements, delta has ${n}`);
    this.xs = dev.alloc(n, 'u32');
    this.residual = ef ? dev.upload(ef.residual) : null;
    this.dummy = dev.alloc(1, 'u32');
    f64.setFloat64(0, ef ? ef.beta : 0, true);
    this.beta = [f64.getUint32(0, true), f64.getUint32(4, true)];
    this.out = dev.alloc(2 + this.payloadWords(), 'u32');
  }

  private payloadWords(): number {
    const n = this.n;
    switch (this.codec.id) {
      case 'fp32':
        return n;
      case 'fp16':
        return Math.ceil(n / 2);
      case 'int8':
        return Math.ceil(n / 4);
      case 'sparse': {
        const s = this.sparseShape();
        return 2 * s.chunks + s.nidx + s.ncode;
      }
    }
  }

  private sparseShape() {
    const p = (this.codec as SparseCodec).params;
    const chunks = Math.ceil(this.n / p.chunk),
      K = sparseKept(this.n, p),
      bits = Math.log2(p.chunk);
    return { C: p.chunk, k: p.k, chunks, K, bits, nidx: Math.ceil((K * bits) / 32), ncode: Math.ceil(K / 16) };
  }

  /** A host copy of the residual (tests, and a host fallback). */
  async readResidual(): Promise<Float32Array> {
    if (!this.residual) throw new InvalidInputError('this encoder has no error feedback');
    return this.dev.read(this.residual);
  }

  /**
   * The bytes of `codec.encode(base − local, ef)` (base null: of `codec.encode(local, ef)`),
   * updating the device residual as the CPU updates `ef.residual`. Throws InvalidInputError,
   * residual untouched, when some x is not finite.
   */
  async encode(local: GpuTensor, base: GpuTensor | null): Promise<Uint8Array> {
    const d = this.dev,
      n = this.n;
    if (local.length !== n || (base && base.length !== n))
      throw new InvalidInputError(
        `encode: tensors of ${local.length} and ${base?.length} elements, codec set for ${n}`,
      );
    const ng = Math.ceil(n / CODEC_CHUNK);
    const part = d.alloc(2 * ng, 'u32');
    const [lo, hi] = this.beta;
    const mode = !this.residual ? 'delta' : lo === 0 && (hi === 0 || hi === 0x3ff00000) ? 'ef32' : 'ef64';
    d.launch(
      codecFold(mode),
      [this.xs, part, base ?? this.dummy, local, ...(this.residual ? [this.residual] : [])],
      { n, ng, has_base: base ? 1 : 0, beta_lo: lo, beta_hi: hi },
      ng,
    );
    const head = d.view(this.out, 0, 2);
    this.minMax(part, ng, head);
    switch (this.codec.id) {
      case 'fp32':
        return this.fp32();
      case 'fp16':
        return this.fp16();
      case 'int8':
        return this.int8(head);
      case 'sparse':
        return this.sparse();
    }
  }

  /** Reduces the fold's (first bad, max |x|) pairs into head. */
  private minMax(part: GpuTensor, count: number, head: GpuTensor): void {
    const d = this.dev;
    let src = part,
      m = count;
    while (m > 1) {
      const g = Math.ceil(m / CODEC_CHUNK);
      const dst = g === 1 ? head : d.alloc(2 * g, 'u32');
      d.launch(CODEC_MINMAX, [dst, src], { n: m, ng: g }, g);
      d.release(src);
      src = dst;
      m = g;
    }
    if (src === part) {
      d.copy(head, d.view(part, 0, 2));
      d.release(part);
    }
  }

  /** Throws the CPU codec's error if the fold met a non-finite x. */
  private check(first: number): void {
    if (first !== 0xffffffff)
      throw new InvalidInputError(
        `${this.codec.id}: ${this.residual ? 'beta*residual + delta' : 'delta'}[${first}] is not finite`,
      );
  }

  /** The residual is now x − decoded (in xs): make it current. */
  private commit(): void {
    if (!this.residual) return;
    [this.xs, this.residual] = [this.residual, this.xs];
  }

  private async fp32(): Promise<Uint8Array> {
    const d = this.dev,
      n = this.n;
    d.copy(d.view(this.out, 2, n), this.xs);
    const w = await d.readU32(this.out);
    this.check(w[0]);
    if (this.residual) d.zero(this.residual); // x − x = +0 for every finite x
    const bytes = new Uint8Array(HEADER_BYTES + 4 * n);
    writeHeader(bytes, 'fp32', n);
    bytes.set(new Uint8Array(w.buffer, w.byteOffset + 8, 4 * n), HEADER_BYTES);
    return bytes;
  }

  private async fp16(): Promise<Uint8Array> {
    const d = this.dev,
      n = this.n,
      words = Math.ceil(n / 2);
    d.launch(
      CODEC_FP16,
      [d.view(this.out, 2, words), this.xs],
      { n, has_ef: this.residual ? 1 : 0 },
      Math.ceil(words / WG),
    );
    const w = await d.readU32(this.out);
    this.check(w[0]);
    this.commit();
    const bytes = new Uint8Array(HEADER_BYTES + 2 * n);
    writeHeader(bytes, 'fp16', n);
    bytes.set(new Uint8Array(w.buffer, w.byteOffset + 8, 2 * n), HEADER_BYTES);
    return bytes;
  }

  private async int8(head: GpuTensor): Promise<Uint8Array> {
    const d = this.dev,
      n = this.n;
    const [first, amax] = await d.readU32(head);
    this.check(first);
    // Σ v² on grid gs: three 64-bit column sums per workgroup, then over workgroups.
    const gs = int8SsGrid(amax);
    const ng = Math.ceil(n / CODEC_CHUNK);
    const sp = d.alloc(6 * ng, 'u32'),
      ss = d.alloc(6, 'u32');
    d.launch(CODEC_INT8_SS, [sp, this.xs], { n, ng, gs }, ng);
    d.launch(CODEC_U64SUM, [ss, sp], { cols: 3, rows: ng, wide: 1 }, 1);
    d.release(sp);
    const s = await d.readU32(ss);
    d.release(ss);
    const u64 = (lo: number, hi: number) => (BigInt(hi) << 32n) | BigInt(lo);
    const ssInt = (u64(s[0], s[1]) << 26n) + (u64(s[2], s[3]) << 13n) + u64(s[4], s[5]);
    const scale = amax === 0 ? 0 : int8Scale(ssInt, gs, n);
    const gb = int8SumGrid(scale);
    // Bins and bin sums.
    const kth = d.upload(int8Thresholds(scale));
    const nq = Math.ceil(n / INT8_BLOCK);
    const bp = d.alloc(INT8_COUNTERS * nq, 'u32'),
      bins = d.alloc(2 * INT8_COUNTERS, 'u32');
    const qw = d.view(this.out, 2, Math.ceil(n / 4));
    d.launch(CODEC_INT8_Q, [qw, bp, this.xs, kth], { n, ng: nq, gb }, nq);
    d.launch(CODEC_U64SUM, [bins, bp], { cols: INT8_COUNTERS, rows: nq, wide: 0 }, Math.ceil(INT8_COUNTERS / WG));
    d.release(bp);
    d.release(kth);
    const c = await d.readU32(bins);
    d.release(bins);
    const sums: bigint[] = [],
      counts = new Float64Array(INT8_BINS);
    for (let b = 0; b < INT8_BINS; b++) {
      const at = b * INT8_BIN_COUNTERS;
      let S = 0n;
      for (let k = 4; k >= 0; k--) {
        const pos = u64(c[2 * (at + k)], c[2 * (at + k) + 1]),
          neg = u64(c[2 * (at + 5 + k)], c[2 * (at + 5 + k) + 1]);
        S = (S << 12n) + pos - neg;
      }
      sums.push(S);
      counts[b] = Number(u64(c[2 * (at + 10)], c[2 * (at + 10) + 1]));
    }
    const lut = int8Lut(sums, counts, gb);
    const q = await d.readU32(qw);
    if (this.residual) {
      const lt = d.upload(lut);
      d.launch(CODEC_INT8_RES, [this.xs, qw, lt], { n }, Math.ceil(n / WG));
      d.release(lt);
      this.commit();
    }
    const bytes = new Uint8Array(int8Size(n));
    const dv = writeHeader(bytes, 'int8', n);
    for (let b = 0; b < INT8_BINS; b++) dv.setFloat32(HEADER_BYTES + 4 * b, lut[b], true);
    bytes.set(new Uint8Array(q.buffer, q.byteOffset, n), HEADER_BYTES + 4 * INT8_BINS);
    return bytes;
  }

  private async sparse(): Promise<Uint8Array> {
    const d = this.dev,
      n = this.n;
    const { C, k, chunks, K, bits, nidx, ncode } = this.sparseShape();
    const sel = d.alloc(chunks * k, 'u32'),
      tt = d.alloc(chunks, 'u32');
    const lv = d.view(this.out, 2, 2 * chunks),
      words = d.view(this.out, 2 + 2 * chunks, nidx + ncode);
    const shape = { n, C, k, chunks };
    d.launch(CODEC_TOPK, [sel, this.xs], shape, chunks);
    d.launch(CODEC_LEVELS, [lv, tt, sel, this.xs], shape, chunks);
    d.launch(
      CODEC_SPARSE_PACK,
      [words, sel, tt, this.xs],
      { C, k, K, bits, nidx, ncode },
      Math.ceil((nidx + ncode) / WG),
    );
    if (this.residual) d.launch(CODEC_SPARSE_RES, [this.xs, sel, tt, lv], { C, k, K }, Math.ceil(K / WG));
    d.release(sel);
    d.release(tt);
    const w = await d.readU32(this.out);
    this.check(w[0]);
    this.commit();
    const idxBytes = Math.ceil((K * bits) / 8),
      codeBytes = Math.ceil(K / 4);
    const bytes = new Uint8Array(SPARSE_HEADER_BYTES + 8 * chunks + idxBytes + codeBytes);
    const dv = writeHeader(bytes, 'sparse', n);
    dv.setUint32(HEADER_BYTES, C, true);
    dv.setUint32(HEADER_BYTES + 4, k, true);
    const raw = new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
    let at = SPARSE_HEADER_BYTES;
    bytes.set(raw.subarray(8, 8 + 8 * chunks), at);
    at += 8 * chunks;
    const wi = 8 + 8 * chunks;
    bytes.set(raw.subarray(wi, wi + idxBytes), at);
    at += idxBytes;
    const wc = wi + 4 * nidx;
    bytes.set(raw.subarray(wc, wc + codeBytes), at);
    return bytes;
  }

  /** Releases the encoder's buffers once the work encoded so far is submitted (int8's residual
   * update may still be pending when encode() returns). */
  destroy(): void {
    for (const t of [this.xs, this.residual, this.dummy, this.out]) if (t) this.dev.release(t);
  }
}
