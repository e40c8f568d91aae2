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
 *   logits {micro, B, T}                last stage, inference: body = encoded activations (or tokens
 *                                       when S = 1) → the last position's logits (f32), per sequence
 *   reset {}                            drop held micro-batches and accumulated gradients (a step is redone)
 *   save  {}                            checkpoint: stage state X as two XOR shares R, X⊕R in this
 *                                       peer's IPFS store → {shares: [cid, cid], step, bytes}
 *   hold  {stage, shares: [cid]}        pin another stage's share (random-looking bytes: one share
 *                                       says nothing about the weights), replacing the previous one
 *   delta {codec, chunk?, k?}           replicas that train apart (diloco.ts): this replica's pseudo-
 *                                       gradient Δ = θ_snapshot − θ, encoded with a swarm codec
 *                                       (error feedback kept here) → body
 *   outer {lr, momentum}                body: the replicas' mean Δ̄ (any swarm codec): θ ← θ_snapshot,
 *                                       one outer Nesterov step (src/swarm/outer.ts), snapshot ← θ
 *   embed {set}                         get the tied embedding's values (wte, or the head copy); the
 *                                       last stage sets its head copy (re-ties it after an outer step)
 *   fold  {keep: [tag]}                 balanced routing (driver.ts): add the gradients banked under
 *                                       these micro-batch tags to the step's gradients, discard the
 *                                       rest (attempts that failed further along), free held slots
 *   grads {set}                         get or set the step's accumulated gradients (f32): the
 *                                       driver sums them across the replicas of a stage
 *   restore {shares: [cid, cid]}        a fresh peer: fetch both shares from the holders, XOR,
 *                                       load the stage state; until then compute calls are
 *                                       answered "unavailable" (the driver routes elsewhere)
 *   expect {id, from: [peer, peer]}     a fresh peer of a middle stage, rebuilt without a checkpoint
 *                                       (rebuild.ts): accept one masked part from each of these two
 *   lend  {to, id, seed, sign, weight}  a neighbour: send `to` this stage's layers as a masked part
 *                                       (`absorb`); the driver that asks never sees the part
 *   absorb {id, layout}                 (from a lender) one part; with both in, the pads cancel, the
 *                                       mean becomes this stage's layers (fresh moments), it serves
 *
 * A replica joins a live stage the same way: the driver has a serving replica `save`, and the
 * new peer `restore` those shares (bit-identical to the replicas it joins). A peer that moves to
 * another stage (`moveTo`, placement.ts) drops its stage, weights and moments first, and waits for
 * such a sync; calls meant for its old stage are answered "unavailable".
 *
 * Why shares: recovery needs the checkpoint of a stage whose last peer died to live elsewhere, but
 * no peer may hold weights beyond its own stage. Each of two other stages' peers pins one share;
 * either alone is a one-time pad, and only the restoring peer ever holds both.
 */
import { z } from 'zod';
import type { Host } from '../net/host.js';
import { Stage, splitStages, stageSpecs } from '../model/stage.js';
import { AdamW, type AdamWSettings } from '../train/adamw.js';
import type { Kernels } from '../kernels/api.js';
import type { ModelConfig } from '../model/config.js';
import type { StageSpec } from '../model/stage.js';
import { InvalidInputError } from '../util/errors.js';
import { getActCodec, subspaceBasis, type ActCodec, type ActCodecSpec } from './act-codec.js';
import { callStage, serveStageRpc, StageUnavailableError } from './rpc.js';
import { gatherLayers, layerViews, maskedPart, scatterLayers, unmaskSum } from './rebuild.js';
import { createHash } from 'node:crypto';
import { decodeAny, ErrorFeedback, getCodec } from '../swarm/compress/index.js';
import { fp32Size } from '../swarm/compress/dense.js';
import { OuterNesterov } from '../swarm/outer.js';
import { bytesToF32, f32ToBytes, packF32, unpackF32 } from '../util/packed.js';
import { randomBytes } from 'node:crypto';
import { parseCid, type Store } from '../store/index.js';

const Hex = (n: number) => z.string().regex(new RegExp(`^[0-9a-f]{${n}}$`), `${n} hex digits`);
const PeerIdStr = z.string().min(8).max(128);
const Shape = { micro: z.number().int().min(0).max(1 << 30), B: z.number().int().min(1).max(4096), T: z.number().int().min(1).max(1 << 16) };
/** Asynchronous pipelining (driver.trainAsync): the batch a gradient belongs to; absent = the synchronous path. */
const Tag = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional();
/** Banks held at once: a step's micro-batch attempts (balanced routing) or batches in flight (async). */
const MAX_TAGS = 64;
const Head = z.discriminatedUnion('op', [
  z.object({ op: z.literal('fwd'), ...Shape, train: z.boolean() }).strict(),
  z.object({ op: z.literal('last'), ...Shape, train: z.boolean(), scale: z.number().positive().max(1), tag: Tag }).strict(),
  z.object({ op: z.literal('bwd'), micro: Shape.micro, tag: Tag }).strict(),
  z.object({ op: z.literal('norm'), tag: Tag }).strict(),
  z.object({ op: z.literal('tied'), set: z.boolean(), tag: Tag }).strict(),
  z.object({ op: z.literal('step'), lr: z.number().min(0).max(10), globalNorm: z.number().min(0), tag: Tag, lookahead: z.number().min(0).max(8).optional() }).strict(),
  z.object({ op: z.literal('info') }).strict(),
  z.object({ op: z.literal('reset') }).strict(),
  z.object({ op: z.literal('logits'), ...Shape }).strict(),
  z.object({ op: z.literal('save') }).strict(),
  z.object({ op: z.literal('hold'), stage: z.number().int().min(0).max(1023), shares: z.array(z.string().min(8).max(128)).min(1).max(2) }).strict(),
  z.object({ op: z.literal('delta'), codec: z.enum(['fp32', 'fp16', 'int8', 'sparse']), chunk: z.number().int().min(1).max(1 << 20).optional(), k: z.number().int().min(1).max(1 << 20).optional() }).strict(),
  z.object({ op: z.literal('outer'), lr: z.number().positive().max(10), momentum: z.number().min(0).max(0.999) }).strict(),
  z.object({ op: z.literal('embed'), set: z.boolean() }).strict(),
  z.object({ op: z.literal('fold'), keep: z.array(z.number().int().min(0).max(Number.MAX_SAFE_INTEGER)).max(4096) }).strict(),
  z.object({ op: z.literal('grads'), set: z.boolean() }).strict(),
  z.object({ op: z.literal('restore'), shares: z.array(z.string().min(8).max(128)).length(2), dial: z.array(z.string().min(1).max(256)).max(16).optional() }).strict(),
  z.object({ op: z.literal('expect'), id: Hex(16), from: z.array(PeerIdStr).length(2) }).strict(),
  z.object({ op: z.literal('lend'), id: Hex(16), to: PeerIdStr, seed: Hex(64), sign: z.union([z.literal(1), z.literal(-1)]), weight: z.number().min(0).max(1), dial: z.array(z.string().min(1).max(256)).max(16).optional() }).strict(),
  z.object({ op: z.literal('absorb'), id: Hex(16), layout: Hex(64), step: z.number().int().min(0) }).strict(),
]);

/** What this peer did for the run: the basis of per-stage credit (and usage metering for inference). */
export interface StageServerStats {
  calls: number; actBytesIn: number; actBytesOut: number; steps: number; tokens: number;
  /** Milliseconds spent computing, per kind of call, and how many (the schedule model reads them). */
  ms: { fwd: number; bwd: number; last: number; step: number };
  count: { fwd: number; bwd: number; last: number; step: number };
}

export interface StageServer {
  /** The stage held now (a new object after a move). */
  readonly stage: Stage;
  stats: StageServerStats;
  /** False for a fresh peer until it has restored its stage. */
  ready(): boolean;
  /** Optimizer steps taken by the stage held (0: genesis weights). */
  step(): number;
  /** Drops the stage held (weights, moments, held micro-batches) and becomes a fresh peer of `spec`. */
  moveTo(spec: StageSpec): void;
  close(): Promise<void>;
}

export async function serveStage(host: Host, o: {
  config: ModelConfig; spec: StageSpec; kernels: Kernels; adamw: AdamWSettings; codec: ActCodecSpec;
  /** Genesis weights for this stage; null: a fresh peer that waits for `restore`. */
  init: ((stage: Stage) => void) | null;
  /** This peer's IPFS store (checkpoint shares); needed for save / hold / restore. */
  store?: Store;
  /** Learned bottleneck width at stage boundaries (Stage); absent: full activations cross. */
  bottleneck?: number;
  fetchTimeoutMs?: number;
}): Promise<StageServer> {
  // A learned bottleneck at the boundaries (the run's `bottleneck`): part of every stage's spec.
  const withB = (sp: StageSpec): StageSpec => (o.bottleneck !== undefined ? { ...sp, bottleneck: o.bottleneck } : sp);
  let stage = new Stage(o.config, withB(o.spec), o.kernels);
  if (o.init) {
    o.init(stage);
    if (o.bottleneck !== undefined) stage.initBottleneck(subspaceBasis(o.config.dim, o.bottleneck));
  }
  let ready = o.init !== null;
  let opt = new AdamW(o.config, o.adamw, o.kernels, stage.specs);
  // Replicas that train apart (diloco.ts): the weights of the last outer step, the outer momentum
  // and the pseudo-gradient's error feedback. Set whenever the weights are (re)loaded.
  let snap = stage.params.slice();
  let outer: OuterNesterov | null = null;
  let ef: ErrorFeedback | null = null;
  const reloaded = () => { snap = stage.params.slice(); outer = null; ef = null; master = null; prev = null; accs.clear(); };
  // Asynchronous pipelining: gradients banked per batch (tag), the true weights when the stage
  // computes with look-ahead weights, and the weights before the last step.
  const accs = new Map<number, Float32Array>();
  let master: Float32Array | null = null;
  let prev: Float32Array | null = null;
  /** After a tagged backward: move what it added to the gradients into its batch's bank. */
  const bank = (tag: number | undefined) => {
    if (tag === undefined) return;
    let acc = accs.get(tag);
    if (!acc) {
      if (accs.size >= MAX_TAGS) throw new InvalidInputError(`more than ${MAX_TAGS} batches in flight`);
      acc = new Float32Array(stage.numParams);
      accs.set(tag, acc);
    }
    const g = stage.grads;
    for (let i = 0; i < g.length; i++) acc[i] += g[i];
    stage.zeroGrad();
  };
  const gradsOf = (tag: number | undefined): Float32Array => {
    if (tag === undefined) return stage.grads;
    const acc = accs.get(tag);
    if (!acc) throw new InvalidInputError(`no gradients banked for batch ${tag}`);
    return acc;
  };
  const tiedAt = () => stage.specs.find((x) => x.name === (stage.first ? 'wte' : 'head'));
  const tiedOf = (g: Float32Array): Float32Array | null => {
    const t = stage.first || stage.last ? tiedAt() : undefined;
    return t ? g.subarray(t.offset, t.offset + t.size) : null;
  };
  const held = new Map<number, string[]>();
  let lastSaved: string[] = [];
  const needStore = (): Store => { if (!o.store) throw new InvalidInputError('this stage peer has no store for checkpoints'); return o.store; };
  const fetchSignal = () => AbortSignal.timeout(o.fetchTimeoutMs ?? 30_000);
  const C = o.config.dim, V = o.config.vocabSize;
  const W = o.bottleneck ?? C; // values per token at a boundary
  const codec: ActCodec = getActCodec(o.codec, W);
  const stats: StageServerStats = { calls: 0, actBytesIn: 0, actBytesOut: 0, steps: 0, tokens: 0, ms: { fwd: 0, bwd: 0, last: 0, step: 0 }, count: { fwd: 0, bwd: 0, last: 0, step: 0 } };
  const maxN = 4096 * o.config.ctx;
  const enc = (x: Float32Array, rows: number): Uint8Array => { const b = codec.encode(x, rows, W); stats.actBytesOut += b.length; return b; };
  const dec = (b: Uint8Array, rows: number): Float32Array => { stats.actBytesIn += b.length; return codec.decode(b, rows, W); };
  const rows = new Map<number, number>();
  // A rebuild in progress (rebuild.ts): who may send parts, and the parts in so far.
  let pending: { id: string; from: string[]; parts: Map<string, Uint8Array>; step: number } | null = null;
  const layoutOf = (keys: string[]) => createHash('sha256').update(keys.join(',')).digest('hex');
  const srv = await serveStageRpc(host, async (raw, body, from) => {
    stats.calls++;
    const p = Head.safeParse(raw);
    if (!p.success) throw new InvalidInputError(`bad stage call: ${p.error.issues[0]?.message}`);
    const h = p.data;
    const timed = h.op === 'fwd' || h.op === 'bwd' || h.op === 'last' || h.op === 'step' ? h.op : null;
    const t0 = timed ? performance.now() : 0;
    try {
      return await handle(h, body, from);
    } finally {
      if (timed && !('train' in h && !h.train)) { stats.ms[timed] += performance.now() - t0; stats.count[timed]++; }
    }
  }, { maxBody: Math.max(8 * maxN, 4 * V * C, fp32Size(largestStage(o.config, o.spec.count, o.bottleneck))) + 64 });
  async function handle(h: z.infer<typeof Head>, body: Uint8Array, from: string): Promise<{ head: unknown; body?: Uint8Array }> {
    if (!ready && !['restore', 'info', 'hold', 'expect', 'absorb'].includes(h.op)) throw new StageUnavailableError(`not serving stage ${stage.spec.index} yet (waiting for a restore)`);
    switch (h.op) {
      case 'fwd': {
        if (stage.last) throw new InvalidInputError('the last stage takes "last" calls');
        const N = h.B * h.T;
        const input = stage.first ? int32(body, N, 'tokens') : dec(body, N);
        const out = stage.forward(h.micro, input, h.B, h.T);
        stats.tokens += N;
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
        stats.tokens += N;
        const loss = stage.loss(h.micro, targets, h.train, h.scale);
        if (!h.train) { stage.release(h.micro); return { head: { loss } }; }
        const d = stage.backward(h.micro, null);
        bank(h.tag);
        return { head: { loss }, body: d ? enc(d, N) : new Uint8Array(0) };
      }
      case 'bwd': {
        const N = rows.get(h.micro);
        if (N === undefined) throw new InvalidInputError(`no forward pass held for micro-batch ${h.micro}`);
        rows.delete(h.micro);
        const d = stage.backward(h.micro, dec(body, N));
        bank(h.tag);
        return { head: {}, body: d ? enc(d, N) : new Uint8Array(0) };
      }
      case 'norm': {
        const g = gradsOf(h.tag), t = tiedOf(g);
        // The layers' part alone too: the weight of this stage in a neighbour's rebuild (rebuild.ts).
        const ls = h.tag === undefined ? layerViews(stage, 'grads').views.reduce((a, v) => a + o.kernels.sumSquares(v), 0) : 0;
        return { head: { sumSquares: o.kernels.sumSquares(g), tiedSquares: t ? o.kernels.sumSquares(t) : 0, layerSquares: ls } };
      }
      case 'tied': {
        const t = tiedOf(gradsOf(h.tag));
        if (!t) throw new InvalidInputError('this stage holds no tied embedding');
        return tensorIO(t, h.set, body, 'tied gradient');
      }
      case 'step': {
        const g = gradsOf(h.tag);
        const look = h.lookahead ?? 0;
        if (look > 0 || master) {
          // Stale-weight correction: the optimizer steps the true weights θ (master); the stage
          // computes with θ̂ = θ + τ·(θ − θ_prev), where the weights will be when a gradient
          // started now is applied (weight prediction, in the spirit of Nesterov's look-ahead).
          master ??= stage.params.slice();
          prev ??= new Float32Array(stage.numParams);
          prev.set(master);
          opt.update(master, g, h.lr, h.globalNorm);
          const p = stage.params;
          for (let i = 0; i < p.length; i++) p[i] = master[i] + look * (master[i] - prev[i]);
        } else {
          opt.update(stage.params, g, h.lr, h.globalNorm);
        }
        if (h.tag === undefined) stage.zeroGrad(); else accs.delete(h.tag);
        stats.steps++;
        return { head: { step: opt.step } };
      }
      case 'info': {
        // The digest lets the driver (and tests) check that replicas hold the same bits.
        const digest = createHash('sha256').update(new Uint8Array(stage.params.buffer, stage.params.byteOffset, stage.params.byteLength)).digest('hex');
        return { head: { index: stage.spec.index, count: stage.spec.count, tensors: stage.tensorNames(), params: stage.numParams, ready, step: opt.step, digest, holds: [...held.keys()], stats } };
      }
      case 'logits': {
        if (!stage.last) throw new InvalidInputError('not the last stage');
        const N = h.B * h.T;
        const input = stage.first ? int32(body, N, 'tokens') : dec(body, N);
        const logits = stage.forward(h.micro, input, h.B, h.T);
        stage.release(h.micro);
        const out = new Float32Array(h.B * V);
        for (let b = 0; b < h.B; b++) out.set(logits.subarray(((b + 1) * h.T - 1) * V, (b + 1) * h.T * V), b * V);
        stats.tokens += N;
        return { head: {}, body: new Uint8Array(out.buffer) };
      }
      case 'reset':
        stage.resetSlots();
        stage.zeroGrad();
        rows.clear();
        accs.clear();
        return { head: {} };
      case 'save': {
        if (master) throw new InvalidInputError('checkpoints of a run with look-ahead weights are not supported (the stage computes with predicted weights)');
        const store = needStore();
        const x = encodeStageState(stage, opt);
        const r = new Uint8Array(randomBytes(x.length));
        const y = new Uint8Array(x.length);
        for (let i = 0; i < x.length; i++) y[i] = x[i] ^ r[i];
        const shares: string[] = [];
        for (const part of [r, y]) {
          const cid = await store.fs.addBytes(part, { rawLeaves: true });
          await store.pin(cid, { signal: fetchSignal() });
          shares.push(cid.toString());
        }
        // The previous save's shares have been fetched by now (holders pinned them, or a new
        // replica restored from them, before the driver asks for another save): unpin ours.
        const holding = new Set([...held.values()].flat());
        for (const c of lastSaved) if (!holding.has(c) && !shares.includes(c)) await store.unpin(parseCid(c)).catch(() => undefined);
        lastSaved = shares;
        return { head: { shares, step: opt.step, bytes: x.length } };
      }
      case 'hold': {
        if (h.stage === stage.spec.index) throw new InvalidInputError('a peer does not hold shares of its own stage');
        const store = needStore();
        for (const c of h.shares) await store.pin(parseCid(c), { signal: fetchSignal() });
        for (const c of held.get(h.stage) ?? []) if (!h.shares.includes(c)) await store.unpin(parseCid(c)).catch(() => undefined);
        held.set(h.stage, h.shares);
        return { head: { stage: h.stage, holds: h.shares.length } };
      }
      case 'delta': {
        const d = new Float32Array(stage.numParams);
        for (let i = 0; i < d.length; i++) d[i] = snap[i] - stage.params[i];
        ef ??= new ErrorFeedback(stage.numParams);
        const codec = getCodec(h.codec, h.codec === 'sparse' ? { ...(h.chunk ? { chunk: h.chunk } : {}), ...(h.k ? { k: h.k } : {}) } : undefined);
        const { bytes } = codec.encode(d, ef);
        return { head: { n: stage.numParams }, body: bytes };
      }
      case 'outer': {
        const mean = decodeAny(body, stage.numParams).values;
        if (!outer || outer.settings.lr !== h.lr || outer.settings.momentum !== h.momentum) outer = new OuterNesterov(stage.numParams, { lr: h.lr, momentum: h.momentum });
        stage.params.set(snap);
        outer.step(stage.params, mean);
        snap.set(stage.params);
        return { head: { step: opt.step } };
      }
      case 'embed': {
        const t = stage.tiedParam();
        if (!t) throw new InvalidInputError('this stage holds no tied embedding');
        if (h.set && (!stage.last || stage.first)) throw new InvalidInputError('only the last stage sets its head copy');
        const r = tensorIO(t, h.set, body, 'embedding');
        // The snapshot follows: the re-tie is part of the outer step, not of the next Δ.
        if (h.set) snap.set(t, tiedAt()!.offset);
        return r;
      }
      case 'fold': {
        let folded = 0;
        for (const tag of h.keep) {
          const acc = accs.get(tag);
          if (!acc) continue;
          const g = stage.grads;
          for (let i = 0; i < g.length; i++) g[i] += acc[i];
          folded++;
        }
        accs.clear();
        stage.resetSlots();
        rows.clear();
        return { head: { folded } };
      }
      case 'grads':
        return tensorIO(stage.grads, h.set, body, 'gradients');
      case 'restore': {
        const store = needStore();
        // The share holders, so that bitswap can ask them directly.
        for (const ma of h.dial ?? []) await host.dial(ma, { signal: AbortSignal.timeout(5000) }).catch(() => undefined);
        const [a, b] = await Promise.all(h.shares.map((c) => store.cat(parseCid(c), { maxBytes: 64 + 4096 + 12 * stage.numParams, signal: fetchSignal() })));
        if (a.length !== b.length) throw new InvalidInputError('the two checkpoint shares differ in length');
        const x = new Uint8Array(a.length);
        for (let i = 0; i < x.length; i++) x[i] = a[i] ^ b[i];
        decodeStageState(x, stage, opt);
        reloaded();
        stage.resetSlots();
        stage.zeroGrad();
        rows.clear();
        ready = true;
        return { head: { step: opt.step } };
      }
      case 'expect': {
        if (ready) throw new InvalidInputError(`already serving stage ${stage.spec.index}; only a fresh peer is rebuilt`);
        if (stage.first || stage.last) throw new InvalidInputError('only a middle stage can be rebuilt from its neighbours (the first and last hold the embeddings and head)');
        if (stage.spec.bottleneck !== undefined) throw new InvalidInputError('a stage with bottleneck projections cannot be rebuilt from its neighbours (they are not layers); restore it from a checkpoint');
        if (h.from[0] === h.from[1]) throw new InvalidInputError('a rebuild takes parts from two different peers');
        pending = { id: h.id, from: h.from, parts: new Map(), step: 0 };
        return { head: { layers: layerViews(stage).size } };
      }
      case 'lend': {
        if (master) throw new InvalidInputError('cannot lend layers while computing with look-ahead weights');
        if (h.to === host.peerId) throw new InvalidInputError('a stage does not lend to itself');
        const part = maskedPart(gatherLayers(stage), h.weight, Buffer.from(h.seed, 'hex'), h.sign);
        for (const ma of h.dial ?? []) await host.dial(ma, { signal: AbortSignal.timeout(5000) }).catch(() => undefined);
        await callStage(host, h.to, { op: 'absorb', id: h.id, layout: layoutOf(layerViews(stage).keys), step: opt.step }, part, { maxBody: 0, signal: fetchSignal() });
        return { head: { bytes: part.length, step: opt.step } };
      }
      case 'absorb': {
        const p = pending;
        if (!p || p.id !== h.id) throw new InvalidInputError(`no rebuild ${h.id} expected here`);
        if (!p.from.includes(from)) throw new InvalidInputError(`${from} is not one of this rebuild's lenders`);
        if (p.parts.has(from)) throw new InvalidInputError(`${from} already sent its part`);
        const { keys, size: n } = layerViews(stage);
        if (h.layout !== layoutOf(keys)) throw new InvalidInputError('the lender\'s layers are laid out unlike this stage\'s (a different number of layers)');
        if (body.length !== 4 * n) throw new InvalidInputError(`a part must be ${4 * n} bytes, got ${body.length}`);
        p.parts.set(from, body.slice());
        p.step = Math.max(p.step, h.step);
        if (p.parts.size < 2) return { head: { complete: false } };
        scatterLayers(stage, unmaskSum([...p.parts.values()], n));
        // Fresh moments: the neighbours' would not fit these weights. The step count restarts so
        // AdamW's bias correction treats them as new.
        opt = new AdamW(o.config, o.adamw, o.kernels, stage.specs);
        reloaded();
        stage.resetSlots();
        stage.zeroGrad();
        rows.clear();
        pending = null;
        ready = true;
        return { head: { complete: true, step: p.step } };
      }
    }
  }
  return {
    get stage() { return stage; },
    stats, ready: () => ready, step: () => opt.step,
    moveTo: (spec) => {
      stage = new Stage(o.config, withB(spec), o.kernels);
      opt = new AdamW(o.config, o.adamw, o.kernels, stage.specs);
      reloaded();
      ready = false;
      pending = null;
      rows.clear();
    },
    close: () => srv.close(),
  };
}

/** Parameters of the largest stage of the cut (a peer may move to any stage). */
function largestStage(config: ModelConfig, count: number, bottleneck?: number): number {
  return Math.max(...splitStages(config, count).map((sp) => stageSpecs(config, { ...sp, ...(bottleneck !== undefined ? { bottleneck } : {}) }).reduce((t, x) => t + x.size, 0)));
}

/** A get (the tensor's bytes) or a set (exactly its size in bytes) of one whole f32 tensor. */
function tensorIO(t: Float32Array, set: boolean, body: Uint8Array, what: string): { head: object; body?: Uint8Array } {
  if (!set) return { head: {}, body: f32ToBytes(t) };
  t.set(bytesToF32(body, t.length, what));
  return { head: {} };
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

/** A stage's state: packF32({v, index, count, l0, l1, step, tensors}, [params, m, v]) (src/util/packed.ts). */
export function encodeStageState(stage: Stage, opt: AdamW): Uint8Array {
  return packF32({ v: 1, ...stage.spec, step: opt.step, tensors: stage.tensorNames() }, [stage.params, opt.m, opt.v]);
}

const StateHead = z.object({ v: z.literal(1), index: z.number().int(), count: z.number().int(), l0: z.number().int(), l1: z.number().int(), bottleneck: z.number().int().min(1).optional(), step: z.number().int().min(0), tensors: z.array(z.string()).max(100_000) }).strict();

/** Loads a state made by encodeStageState into `stage` and `opt`; it must be this very stage. */
export function decodeStageState(bytes: Uint8Array, stage: Stage, opt: AdamW): void {
  const { head: raw, arrays } = unpackF32(bytes, 3, stage.numParams, 'stage state');
  const h = StateHead.safeParse(raw);
  if (!h.success) throw new InvalidInputError(`stage state header: ${h.error.message.slice(0, 120)}`);
  const head = h.data, sp = stage.spec;
  if (head.index !== sp.index || head.count !== sp.count || head.l0 !== sp.l0 || head.l1 !== sp.l1 || head.bottleneck !== sp.bottleneck || head.tensors.join() !== stage.tensorNames().join()) {
    throw new InvalidInputError(`the checkpoint is of stage ${head.index}/${head.count}, not ${sp.index}/${sp.count}`);
  }
  stage.params.set(arrays[0]);
  opt.m.set(arrays[1]);
  opt.v.set(arrays[2]);
  opt.step = head.step;
}
