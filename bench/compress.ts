/**
 * Size, speed and accuracy of the pseudo-gradient codecs on a reference-model-sized vector:
 * the numbers behind choosing a codec. Usage: node dist/bench/compress.js [--json] [--n N]
 *
 * The delta is synthetic: per-tensor scales (log-uniform over two decades, in the flat
 * layout of the reference model) times a Gaussian scale mixture (heavy tails, kurtosis ~ 8).
 * "rel L2" is ||x - decoded|| / ||x|| for one message without state ("gauss": on plain
 * N(0,1) instead, no per-tensor scales, no tails); "EF cum" is the same
 * for the sums over R rounds with error feedback, where round t sends drift + noise_t
 * (equal energy), i.e. how far what receivers applied lags what the peer computed.
 * Encode time includes building `decoded`, which is one decode.
 */
import { pathToFileURL } from 'node:url';
import { DEFAULT_MODEL } from '../src/model/config.js';
import { paramCount, paramSpecs } from '../src/model/params.js';
import {
  ErrorFeedback,
  fp16Codec,
  fp32Codec,
  int8Codec,
  sparseCodec,
  type Codec,
} from '../src/swarm/compress/index.js';
import { uniform } from '../src/util/rng.js';

export interface CompressBenchRow {
  codec: string;
  params: string;
  bytes: number;
  bytesPerParam: number;
  ratioVsFp32: number;
  encodeMs: number;
  decodeMs: number;
  relL2: number;
  /** Same, on a plain N(0, 1) vector (no per-tensor scales, no heavy tails). */
  relL2Gauss: number;
  efCumRelL2: number;
}

export interface CompressBenchResult {
  n: number;
  reps: number;
  efRounds: number;
  rows: CompressBenchRow[];
}

const rng = uniform;

/** Heavy-tailed synthetic pseudo-gradient; per-tensor scale from `scales` (one per element run). */
export function syntheticDelta(n: number, seed: number, tensorScale: Float32Array): Float32Array {
  const r = rng(seed),
    out = new Float32Array(n);
  const normal = () => Math.sqrt(-2 * Math.log(r() || 1e-12)) * Math.cos(2 * Math.PI * r());
  for (let i = 0; i < n; i++) out[i] = tensorScale[i] * normal() * Math.exp(0.5 * normal());
  return out;
}

function tensorScales(n: number): Float32Array {
  const s = new Float32Array(n);
  const r = rng(12345);
  const specs = paramCount(DEFAULT_MODEL) === n ? paramSpecs(DEFAULT_MODEL) : [{ offset: 0, size: n }];
  for (const t of specs) s.fill(1e-4 * 10 ** (2 * r()), t.offset, t.offset + t.size);
  return s;
}

function relL2(x: ArrayLike<number>, y: ArrayLike<number>): number {
  let e = 0,
    s = 0;
  for (let i = 0; i < x.length; i++) {
    e += (x[i] - y[i]) ** 2;
    s += x[i] ** 2;
  }
  return Math.sqrt(e / s);
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s[s.length >> 1];
}

export function benchCompress(n = paramCount(DEFAULT_MODEL), reps = 5, efRounds = 8): CompressBenchResult {
  const scales = tensorScales(n);
  const delta = syntheticDelta(n, 1, scales);
  const gauss = new Float32Array(n);
  {
    const r = rng(3);
    for (let i = 0; i < n; i++) gauss[i] = Math.sqrt(-2 * Math.log(r() || 1e-12)) * Math.cos(2 * Math.PI * r());
  }
  const drift = syntheticDelta(n, 2, scales);
  const noises = Array.from({ length: efRounds }, (_, t) => syntheticDelta(n, 100 + t, scales));
  const codecs: Array<[Codec, string]> = [
    [fp32Codec, ''],
    [fp16Codec, ''],
    [int8Codec, ''],
    [sparseCodec(), 'chunk=4096 k=64'],
    [sparseCodec({ chunk: 4096, k: 128 }), 'chunk=4096 k=128'],
    [sparseCodec({ chunk: 1024, k: 16 }), 'chunk=1024 k=16'],
  ];
  const fp32Bytes = fp32Codec.encodedSize(n);
  const rows: CompressBenchRow[] = [];
  for (const [c, params] of codecs) {
    const enc: number[] = [],
      dec: number[] = [];
    let bytes: Uint8Array = new Uint8Array(0),
      decoded: Float32Array = new Float32Array(0);
    for (let i = 0; i < reps; i++) {
      let t0 = performance.now();
      ({ bytes, decoded } = c.encode(delta));
      enc.push(performance.now() - t0);
      t0 = performance.now();
      c.decode(bytes, n);
      dec.push(performance.now() - t0);
    }
    const st = new ErrorFeedback(n);
    const sumTrue = new Float64Array(n),
      sumSent = new Float64Array(n);
    const d = new Float32Array(n);
    for (let t = 0; t < efRounds; t++) {
      for (let i = 0; i < n; i++) d[i] = drift[i] + noises[t][i];
      const out = c.encode(d, st).decoded;
      for (let i = 0; i < n; i++) {
        sumTrue[i] += d[i];
        sumSent[i] += out[i];
      }
    }
    rows.push({
      codec: c.id,
      params,
      bytes: bytes.length,
      bytesPerParam: bytes.length / n,
      ratioVsFp32: fp32Bytes / bytes.length,
      encodeMs: median(enc),
      decodeMs: median(dec),
      relL2: relL2(delta, decoded),
      relL2Gauss: relL2(gauss, c.encode(gauss).decoded),
      efCumRelL2: relL2(sumTrue, sumSent),
    });
  }
  return { n, reps, efRounds, rows };
}

export function formatCompressBench(r: CompressBenchResult): string {
  const head = [
    'codec',
    'params',
    'bytes',
    'B/param',
    'ratio',
    'enc ms',
    'dec ms',
    'rel L2',
    'rel L2 gauss',
    `EF cum rel L2 (${r.efRounds} rds)`,
  ];
  const body = r.rows.map((x) => [
    x.codec,
    x.params,
    String(x.bytes),
    x.bytesPerParam.toFixed(4),
    `${x.ratioVsFp32.toFixed(1)}x`,
    x.encodeMs.toFixed(1),
    x.decodeMs.toFixed(1),
    x.relL2.toExponential(2),
    x.relL2Gauss.toExponential(2),
    x.efCumRelL2.toExponential(2),
  ]);
  const w = head.map((h, j) => Math.max(h.length, ...body.map((b) => b[j].length)));
  const line = (cells: string[]) => cells.map((s, j) => (j < 2 ? s.padEnd(w[j]) : s.padStart(w[j]))).join('  ');
  return [`n = ${r.n} params (median of ${r.reps} runs)`, line(head), ...body.map(line)].join('\n');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const ni = args.indexOf('--n');
  const n = ni >= 0 ? Number(args[ni + 1]) : undefined;
  const result = benchCompress(n);
  console.log(args.includes('--json') ? JSON.stringify(result, null, 2) : formatCompressBench(result));
}
