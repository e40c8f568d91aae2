/**
 * Size and accuracy of the stage-boundary activation codecs (src/pipeline/act-codec.ts) on a
 * B*T = 4*64 = 256-row activation matrix, C in {64, 256}. Usage: node dist/bench/act-codec.js
 * Prints a table, then one JSON line.
 *
 * "rel err" is ||X - decode(encode(X))||_F / ||X||_F on three synthetic inputs:
 *   gauss    i.i.d. N(0, 1): no structure, the worst case for a low-rank codec
 *   rank8    A.B with inner dimension 8 (A [rows, 8], B [8, C] Gaussian, unit-variance
 *            entries) plus N(0, 0.05^2) noise: low effective rank, but in a subspace the
 *            codec's fixed random basis knows nothing about
 *   inspan   coefficients . U^T for the codec's own basis, no noise: what the lowrank codec
 *            sees once the model keeps its residual stream inside span(U) (Pluralis-style;
 *            needs the model-side projection), so the error left is int8 on the k
 *            coefficients. Only for lowrank rows.
 * "B/token" is the whole message (header included) divided by rows. Times are the median of
 * 3 runs on the gauss input after one warm-up: indicative only, pure TypeScript.
 */
import { pathToFileURL } from 'node:url';
import {
  DEFAULT_SUBSPACE_SEED,
  exactBytes,
  getActCodec,
  subspaceBasis,
  type ActCodecSpec,
} from '../src/pipeline/act-codec.js';
import { uniform } from '../src/util/rng.js';

export interface ActCodecBenchRow {
  cols: number;
  codec: string;
  bytes: number;
  bytesPerToken: number;
  ratioVsFp32: number;
  relErrGauss: number;
  relErrRank8: number;
  /** lowrank only (null otherwise): input inside the codec's own subspace. */
  relErrInSpan: number | null;
  encodeMs: number;
  decodeMs: number;
}

export interface ActCodecBenchResult {
  rows: number;
  results: ActCodecBenchRow[];
}

function gaussian(n: number, seed: number, sigma = 1): Float32Array {
  const r = uniform(seed),
    out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = sigma * Math.sqrt(-2 * Math.log(r() || 1e-12)) * Math.cos(2 * Math.PI * r());
  return out;
}

/** [rows, cols] = A [rows, inner] . B [inner, cols] / sqrt(inner) + noise. */
function lowRank(rows: number, cols: number, inner: number, seed: number, noise: number): Float32Array {
  const A = gaussian(rows * inner, seed),
    B = gaussian(inner * cols, seed + 1),
    E = gaussian(rows * cols, seed + 2, noise);
  const out = new Float32Array(rows * cols),
    norm = 1 / Math.sqrt(inner);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < cols; i++) {
      let s = 0;
      for (let j = 0; j < inner; j++) s += A[r * inner + j] * B[j * cols + i];
      out[r * cols + i] = s * norm + E[r * cols + i];
    }
  return out;
}

/** Coefficients c [rows, k] (scaled to unit-variance outputs) times U^T. */
function inSpan(rows: number, cols: number, U: Float32Array, k: number, seed: number): Float32Array {
  const c = gaussian(rows * k, seed, Math.sqrt(cols / k));
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < cols; i++) {
      let s = 0;
      for (let j = 0; j < k; j++) s += c[r * k + j] * U[i * k + j];
      out[r * cols + i] = s;
    }
  return out;
}

function median(xs: number[]): number {
  return xs.slice().sort((a, b) => a - b)[xs.length >> 1];
}

function relErr(x: Float32Array, y: Float32Array): number {
  let e = 0,
    s = 0;
  for (let i = 0; i < x.length; i++) {
    e += (x[i] - y[i]) ** 2;
    s += x[i] ** 2;
  }
  return Math.sqrt(e / s);
}

function label(spec: ActCodecSpec): string {
  return spec.id === 'lowrank' ? `lowrank k=${spec.k}` : spec.id;
}

export function benchActCodecs(
  rows = 4 * 64,
  colsList: readonly number[] = [64, 256],
  noise = 0.05,
): ActCodecBenchResult {
  const results: ActCodecBenchRow[] = [];
  for (const cols of colsList) {
    const gauss = gaussian(rows * cols, 1);
    const rank8 = lowRank(rows, cols, 8, 10, noise);
    const specs: ActCodecSpec[] = [
      { id: 'fp32' },
      { id: 'fp16' },
      { id: 'int8' },
      { id: 'lowrank', k: cols / 8 },
      { id: 'lowrank', k: cols / 4 },
    ];
    const fp32Bytes = exactBytes({ id: 'fp32' }, rows, cols);
    for (const spec of specs) {
      const codec = getActCodec(spec, cols);
      const round = (x: Float32Array) => codec.decode(codec.encode(x, rows, cols), rows, cols);
      round(gauss); // warm-up
      const encT: number[] = [],
        decT: number[] = [];
      let enc: Uint8Array = new Uint8Array(0),
        dec: Float32Array = new Float32Array(0);
      for (let rep = 0; rep < 3; rep++) {
        const t0 = performance.now();
        enc = codec.encode(gauss, rows, cols);
        const t1 = performance.now();
        dec = codec.decode(enc, rows, cols);
        encT.push(t1 - t0);
        decT.push(performance.now() - t1);
      }
      const bytes = exactBytes(spec, rows, cols);
      if (enc.length !== bytes) throw new Error(`${label(spec)}: exactBytes ${bytes} != encoded ${enc.length}`);
      let relErrInSpan: number | null = null;
      if (spec.id === 'lowrank') {
        const k = spec.k as number;
        const x = inSpan(rows, cols, subspaceBasis(cols, k, spec.seed ?? DEFAULT_SUBSPACE_SEED), k, 20);
        relErrInSpan = relErr(x, round(x));
      }
      results.push({
        cols,
        codec: label(spec),
        bytes,
        bytesPerToken: bytes / rows,
        ratioVsFp32: fp32Bytes / bytes,
        relErrGauss: relErr(gauss, dec),
        relErrRank8: relErr(rank8, round(rank8)),
        relErrInSpan,
        encodeMs: median(encT),
        decodeMs: median(decT),
      });
    }
  }
  return { rows, results };
}

export function formatActCodecBench(r: ActCodecBenchResult): string {
  const head = [
    'C',
    'codec',
    'bytes',
    'B/token',
    'x vs fp32',
    'err gauss',
    'err rank8',
    'err inspan',
    'enc ms',
    'dec ms',
  ];
  const body = r.results.map((x) => [
    String(x.cols),
    x.codec,
    String(x.bytes),
    x.bytesPerToken.toFixed(1),
    x.ratioVsFp32.toFixed(2),
    x.relErrGauss.toExponential(2),
    x.relErrRank8.toExponential(2),
    x.relErrInSpan === null ? '-' : x.relErrInSpan.toExponential(2),
    x.encodeMs.toFixed(2),
    x.decodeMs.toFixed(2),
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  return [`activation codecs, rows = B*T = ${r.rows}`, line(head), ...body.map(line)].join('\n');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const result = benchActCodecs();
  console.log(formatActCodecBench(result));
  console.log(JSON.stringify(result));
}
