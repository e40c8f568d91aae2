/**
 * A peer serving one pipeline stage over libp2p (issue 8). It holds only its Stage (its slice of
 * the model) and that slice's AdamW moments; micro-batch activations arrive and leave encoded
 * with the run's activation codec, and every byte is counted.
 *
 * Calls (head.op):
 *   fwd   {micro, B, T, train}          body: tokens (stage 0, int32 LE) | encoded activations
 *                                       → encoded output (not the last stage)
 *   last  {micro, B, T, train, scale}   last stage: body = encoded activations | int32 targets
 *                                       → {loss}, body: encoded d(input) when training
 *   bwd   {micro}                       body: encoded d(output) → encoded d(input) (empty on stage 0)
 *   norm  {}                            → {sumSquares, tiedSquares}
 *   tied  {set}                         get (no body) or set (f32 body) the tied-embedding gradient
 *   step  {lr, globalNorm}              one AdamW step on the accumulated gradients, then zero them
 *   info  {}                            → stage index, count, tensor names, parameter count
 */
import { z } from 'zod';
import type { Host } from '../net/host.js';
import { Stage } from '../model/stage.js';
import { AdamW, type AdamWSettings } from '../train/adamw.js';
import type { Kernels } from '../kernels/api.js';
import type { ModelConfig } from '../model/config.js';
import type { StageSpec } from '../model/stage.js';
import { InvalidInputError } from '../util/errors.js';
import { getActCodec, type ActCodec, type ActCodecSpec } from './act-codec.js';
import { serveStageRpc } from './rpc.js';

const Shape = { micro: z.number().int().min(0).max(1 << 30), B: z.number().int().min(1).max(4096), T: z.number().int().min(1).max(1 << 16) };
const Head = z.discriminatedUnion('op', [
  z.object({ op: z.literal('fwd'), ...Shape, train: z.boolean() }).strict(),
  z.object({ op: z.literal('last'), ...Shape, train: z.boolean(), scale: z.number().positive().max(1) }).strict(),
  z.object({ op: z.literal('bwd'), micro: Shape.micro }).strict(),
  z.object({ op: z.literal('norm') }).strict(),
  z.object({ op: z.literal('tied'), set: z.boolean() }).strict(),
  z.object({ op: z.literal('step'), lr: z.number().min(0).max(10), globalNorm: z.number().min(0) }).strict(),
  z.object({ op: z.literal('info') }).strict(),
]);

export interface StageServerStats { calls: number; actBytesIn: number; actBytesOut: number; steps: number }

export interface StageServer {
  stage: Stage;
  stats: StageServerStats;
  close(): Promise<void>;
}

export async function serveStage(host: Host, o: {
  config: ModelConfig; spec: StageSpec; kernels: Kernels; adamw: AdamWSettings; codec: ActCodecSpec; init: (stage: Stage) => void;
}): Promise<StageServer> {
  const stage = new Stage(o.config, o.spec, o.kernels);
  o.init(stage);
  const opt = new AdamW(o.config, o.adamw, o.kernels, stage.specs);
  const C = o.config.dim, V = o.config.vocabSize;
  const codec: ActCodec = getActCodec(o.codec, C);
  const stats: StageServerStats = { calls: 0, actBytesIn: 0, actBytesOut: 0, steps: 0 };
  const maxN = 4096 * o.config.ctx;
  const enc = (x: Float32Array, rows: number): Uint8Array => { const b = codec.encode(x, rows, C); stats.actBytesOut += b.length; return b; };
  const dec = (b: Uint8Array, rows: number): Float32Array => { stats.actBytesIn += b.length; return codec.decode(b, rows, C); };
  const rows = new Map<number, number>();
  const srv = await serveStageRpc(host, async (raw, body) => {
    stats.calls++;
    const p = Head.safeParse(raw);
    if (!p.success) throw new InvalidInputError(`bad stage call: ${p.error.issues[0]?.message}`);
    const h = p.data;
    switch (h.op) {
      case 'fwd': {
        if (stage.last) throw new InvalidInputError('the last stage takes "last" calls');
        const N = h.B * h.T;
        const input = stage.first ? int32(body, N, 'tokens') : dec(body, N);
        const out = stage.forward(h.micro, input, h.B, h.T);
        const b = enc(out, N);
        if (!h.train) stage.release(h.micro); else rows.set(h.micro, N);
        return { head: {}, body: b };
      }
      case 'last': {
        if (!stage.last) throw new InvalidInputError('not the last stage');
        const N = h.B * h.T;
        const actBytes = stage.first ? 4 * N : codec.encodedSize(N);
        if (body.length !== actBytes + 4 * N) throw new InvalidInputError(`"last" body must be ${actBytes + 4 * N} bytes`);
        const input = stage.first ? int32(body.subarray(0, actBytes), N, 'tokens') : dec(body.subarray(0, actBytes), N);
        const targets = int32(body.subarray(actBytes), N, 'targets');
        for (let i = 0; i < N; i++) if (targets[i] < -1 || targets[i] >= V) throw new InvalidInputError(`target ${targets[i]} outside the vocabulary`);
        stage.forward(h.micro, input, h.B, h.T);
        const loss = stage.loss(h.micro, targets, h.train, h.scale);
        if (!h.train) { stage.release(h.micro); return { head: { loss } }; }
        const d = stage.backward(h.micro, null);
        return { head: { loss }, body: d ? enc(d, N) : new Uint8Array(0) };
      }
      case 'bwd': {
        const N = rows.get(h.micro);
        if (N === undefined) throw new InvalidInputError(`no forward pass held for micro-batch ${h.micro}`);
        rows.delete(h.micro);
        const d = stage.backward(h.micro, dec(body, N));
        return { head: {}, body: d ? enc(d, N) : new Uint8Array(0) };
      }
      case 'norm': {
        const t = stage.tiedGrad();
        return { head: { sumSquares: stage.sumSquares(), tiedSquares: t ? o.kernels.sumSquares(t) : 0 } };
      }
      case 'tied': {
        const t = stage.tiedGrad();
        if (!t) throw new InvalidInputError('this stage holds no tied embedding');
        if (!h.set) return { head: {}, body: new Uint8Array(t.buffer.slice(t.byteOffset, t.byteOffset + t.byteLength)) };
        if (body.length !== t.byteLength) throw new InvalidInputError(`tied gradient must be ${t.byteLength} bytes`);
        t.set(new Float32Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength)));
        return { head: {} };
      }
      case 'step': {
        opt.update(stage.params, stage.grads, h.lr, h.globalNorm);
        stage.zeroGrad();
        stats.steps++;
        return { head: { step: opt.step } };
      }
      case 'info':
        return { head: { index: o.spec.index, count: o.spec.count, tensors: stage.tensorNames(), params: stage.numParams } };
    }
  }, { maxBody: Math.max(8 * maxN, 4 * V * C) + 64 });
  return { stage, stats, close: () => srv.close() };
}

function int32(b: Uint8Array, n: number, what: string): Int32Array {
  if (b.length !== 4 * n) throw new InvalidInputError(`${what}: expected ${4 * n} bytes, got ${b.length}`);
  const out = new Int32Array(n);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < n; i++) out[i] = dv.getInt32(4 * i, true);
  return out;
}

export function int32Bytes(x: Int32Array): Uint8Array {
  const b = new Uint8Array(4 * x.length);
  const dv = new DataView(b.buffer);
  for (let i = 0; i < x.length; i++) dv.setInt32(4 * i, x[i], true);
  return b;
}
