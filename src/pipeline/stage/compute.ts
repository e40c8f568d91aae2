/**
 * The stage service's training and inference calls: forward, last (loss and backward), backward,
 * gradient norms, the tied-embedding gradient, the optimizer step (with look-ahead weights),
 * logits, reset, fold (balanced routing) and the gradients' get/set.
 *
 * On a GPU peer (s.device, stage/device.ts) forward, loss, backward, the untagged norms, the
 * tied gradient and the plain optimizer step run on the device; the tagged banks and look-ahead
 * weights run on the host copy, which the device brings up to date first.
 */
import { InvalidInputError } from '../../util/errors.js';
import { bytesToF32, f32ToBytes } from '../../util/packed.js';
import { layerViews } from '../rebuild.js';
import { int32 } from '../stage-protocol.js';
import type { Handlers, StageServiceState } from './state.js';

export type ComputeOp = 'fwd' | 'last' | 'bwd' | 'norm' | 'tied' | 'step' | 'logits' | 'reset' | 'fold' | 'grads';

/** A get (the tensor's bytes) or a set (exactly its size in bytes) of one whole f32 tensor. */
export function tensorIO(
  t: Float32Array,
  set: boolean,
  body: Uint8Array,
  what: string,
): { head: Record<string, never>; body?: Uint8Array } {
  if (!set) return { head: {}, body: f32ToBytes(t) };
  t.set(bytesToF32(body, t.length, what));
  return { head: {} };
}

const EMPTY = new Uint8Array(0);

/** The input of a forward: tokens on the first stage, activations elsewhere. */
function input(s: StageServiceState, body: Uint8Array, N: number): Int32Array | Float32Array {
  return s.stage.first ? int32(body, N, 'tokens') : s.dec(body, N);
}

/** Where the layers sit in the stage's flat buffers (the weight of a stage in a neighbour's rebuild). */
function layerRanges(s: StageServiceState): { offset: number; size: number }[] {
  return s.stage.specs.filter((x) => /^h\.\d+\./.test(x.name)).map((x) => ({ offset: x.offset, size: x.size }));
}

/** Ops that run on the device when this call takes the device path (service.ts: the rest run on the host copy). */
export function onDevicePath(
  h: {
    op: string;
    tag?: number;
    set?: boolean;
    lookahead?: number;
  },
  s: StageServiceState,
): boolean {
  switch (h.op) {
    case 'fwd':
    case 'last':
    case 'bwd':
    case 'logits':
    case 'reset':
      return true;
    case 'norm':
      return h.tag === undefined;
    case 'tied':
      return h.tag === undefined;
    case 'grads':
      return h.set === false;
    case 'step':
      return h.tag === undefined && !((h.lookahead ?? 0) > 0) && s.master === null;
    default:
      return false;
  }
}

export const compute: Handlers<ComputeOp> = {
  async fwd(s, h, body) {
    const stage = s.stage;
    if (stage.last) throw new InvalidInputError('the last stage takes "last" calls');
    const N = h.B * h.T;
    if (h.train) s.admitHeld(h.micro, N);
    const x = input(s, body, N);
    const out = s.device
      ? (await s.device.onDevice('params').forward(h.micro, x, h.B, h.T))!
      : stage.forward(h.micro, x, h.B, h.T);
    s.stats.tokens += N;
    const b = s.enc(out, N);
    if (!h.train) s.releaseSlot(h.micro);
    else s.hold(h.micro, N);
    return { head: {}, body: b };
  },

  async last(s, h, body) {
    const stage = s.stage,
      V = s.o.config.vocabSize;
    if (!stage.last) throw new InvalidInputError('not the last stage');
    const N = h.B * h.T;
    const actBytes = stage.first ? 4 * N : s.codec.encodedSize(N);
    if (body.length !== actBytes + 4 * N) throw new InvalidInputError(`"last" body must be ${actBytes + 4 * N} bytes`);
    const x = input(s, body.subarray(0, actBytes), N);
    const targets = int32(body.subarray(actBytes), N, 'targets');
    for (let i = 0; i < N; i++) {
      if (targets[i] < -1 || targets[i] >= V) {
        throw new InvalidInputError(`target ${targets[i]} outside the vocabulary`);
      }
    }
    if (s.device) {
      const gpu = s.device.onDevice('params', 'grads');
      await gpu.forward(h.micro, x, h.B, h.T);
      s.stats.tokens += N;
      const loss = await gpu.loss(h.micro, targets, h.train, h.scale);
      if (!h.train) {
        gpu.release(h.micro);
        return { head: { loss } };
      }
      const d = await gpu.backward(h.micro, null);
      s.device.deviceChanged('grads');
      await s.bank(h.tag);
      return { head: { loss }, body: d ? s.enc(d, N) : EMPTY };
    }
    stage.forward(h.micro, x, h.B, h.T);
    s.stats.tokens += N;
    const loss = stage.loss(h.micro, targets, h.train, h.scale);
    if (!h.train) {
      stage.release(h.micro);
      return { head: { loss } };
    }
    const d = stage.backward(h.micro, null);
    await s.bank(h.tag);
    return { head: { loss }, body: d ? s.enc(d, N) : EMPTY };
  },

  async bwd(s, h, body) {
    const N = s.takeHeld(h.micro);
    if (N === undefined) throw new InvalidInputError(`no forward pass held for micro-batch ${h.micro}`);
    const dOut = s.dec(body, N);
    let d: Float32Array | null;
    if (s.device) {
      d = await s.device.onDevice('params', 'grads').backward(h.micro, dOut);
      s.device.deviceChanged('grads');
    } else d = s.stage.backward(h.micro, dOut);
    await s.bank(h.tag);
    return { head: {}, body: d ? s.enc(d, N) : EMPTY };
  },

  async norm(s, h) {
    if (s.device && h.tag === undefined) {
      const gpu = s.device.onDevice('grads');
      const t = s.stage.first || s.stage.last ? s.tiedAt() : undefined;
      return {
        head: {
          sumSquares: await gpu.gradSquares(),
          tiedSquares: t ? await gpu.gradSquares([t]) : 0,
          layerSquares: await gpu.gradSquares(layerRanges(s)),
        },
      };
    }
    const k = s.o.kernels;
    const g = s.gradsOf(h.tag),
      t = s.tiedOf(g);
    // The layers' part alone too: the weight of this stage in a neighbour's rebuild (rebuild.ts).
    const ls = h.tag === undefined ? layerViews(s.stage, 'grads').views.reduce((a, v) => a + k.sumSquares(v), 0) : 0;
    return { head: { sumSquares: k.sumSquares(g), tiedSquares: t ? k.sumSquares(t) : 0, layerSquares: ls } };
  },

  async tied(s, h, body) {
    if (s.device && h.tag === undefined) {
      const at = s.stage.first || s.stage.last ? s.tiedAt() : undefined;
      if (!at) throw new InvalidInputError('this stage holds no tied embedding');
      const gpu = s.device.onDevice('grads');
      if (!h.set) return { head: {}, body: f32ToBytes(await gpu.read('grads', at.offset, at.size)) };
      gpu.write('grads', bytesToF32(body, at.size, 'tied gradient'), at.offset);
      s.device.deviceChanged('grads');
      return { head: {} };
    }
    const t = s.tiedOf(s.gradsOf(h.tag));
    if (!t) throw new InvalidInputError('this stage holds no tied embedding');
    return tensorIO(t, h.set, body, 'tied gradient');
  },

  async step(s, h) {
    const stage = s.stage;
    if (s.device && onDevicePath(h, s)) {
      // Clip to the driver's global norm and one AdamW update, on the device; nothing crosses.
      const gpu = s.device.onDevice('params', 'grads', 'opt');
      s.opt.step += 1;
      gpu.update(s.opt.settings, h.lr, h.globalNorm, s.opt.step);
      gpu.zeroGrad();
      s.device.deviceChanged('params', 'grads', 'opt');
      await s.device.dev.sync(); // a refused dispatch surfaces here, as this call's error
      s.stats.steps++;
      return { head: { step: s.opt.step } };
    }
    const g = s.gradsOf(h.tag);
    const look = h.lookahead ?? 0;
    if (look > 0 || s.master) {
      // Stale-weight correction: the optimizer steps the true weights θ (master); the stage
      // computes with θ̂ = θ + τ·(θ − θ_prev), where the weights will be when a gradient
      // started now is applied (weight prediction, in the spirit of Nesterov's look-ahead).
      const master = (s.master ??= stage.params.slice());
      const prev = (s.prev ??= new Float32Array(stage.numParams));
      prev.set(master);
      s.opt.update(master, g, h.lr, h.globalNorm);
      const p = stage.params;
      for (let i = 0; i < p.length; i++) p[i] = master[i] + look * (master[i] - prev[i]);
    } else {
      s.opt.update(stage.params, g, h.lr, h.globalNorm);
    }
    if (h.tag === undefined) stage.zeroGrad();
    else s.accs.delete(h.tag);
    s.stats.steps++;
    return { head: { step: s.opt.step } };
  },

  async logits(s, h, body) {
    const stage = s.stage,
      V = s.o.config.vocabSize;
    if (!stage.last) throw new InvalidInputError('not the last stage');
    const N = h.B * h.T;
    if (s.device) {
      const gpu = s.device.onDevice('params');
      await gpu.forward(h.micro, input(s, body, N), h.B, h.T);
      const out = await gpu.lastLogits(h.micro);
      gpu.release(h.micro);
      s.stats.tokens += N;
      return { head: {}, body: new Uint8Array(out.buffer) };
    }
    const logits = stage.forward(h.micro, input(s, body, N), h.B, h.T);
    stage.release(h.micro);
    const out = new Float32Array(h.B * V);
    for (let b = 0; b < h.B; b++) out.set(logits.subarray(((b + 1) * h.T - 1) * V, (b + 1) * h.T * V), b * V);
    s.stats.tokens += N;
    return { head: {}, body: new Uint8Array(out.buffer) };
  },

  reset(s) {
    s.clearWork();
    s.accs.clear();
    return { head: {} };
  },

  fold(s, h) {
    let folded = 0;
    for (const tag of h.keep) {
      const acc = s.accs.get(tag);
      if (!acc) continue;
      const g = s.stage.grads;
      for (let i = 0; i < g.length; i++) g[i] += acc[i];
      folded++;
    }
    s.accs.clear();
    s.resetSlots();
    s.clearHeld();
    return { head: { folded } };
  },

  async grads(s, h, body) {
    // A get on a GPU peer reads the gradients back first; a set runs on the host copy (service.ts).
    if (s.device && !h.set) await s.device.onHost('grads');
    return tensorIO(s.stage.grads, h.set, body, 'gradients');
  },
};
