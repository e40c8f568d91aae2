/**
 * The stage service's rebuild calls (CheckFree, ../rebuild.ts): a fresh middle-stage peer
 * `expect`s one masked part from each of two neighbours; a neighbour asked to `lend` sends its
 * layers, masked, straight to that peer (`absorb`); with both parts in, the pads cancel, the
 * mean becomes the fresh peer's layers (with fresh moments) and it serves.
 */
import { createHash } from 'node:crypto';
import { InvalidInputError } from '../../util/errors.js';
import { gatherLayers, layerViews, maskedPart, scatterLayers, unmaskSum } from '../rebuild.js';
import type { Handlers } from './state.js';

export type RebuildOp = 'expect' | 'lend' | 'absorb';

/** A digest of the layer layout: lender and receiver must lay out their layers alike. */
const layoutOf = (keys: string[]) => createHash('sha256').update(keys.join(',')).digest('hex');

export const rebuild: Handlers<RebuildOp> = {
  expect(s, h) {
    const stage = s.stage;
    if (s.ready) throw new InvalidInputError(`already serving stage ${stage.spec.index}; only a fresh peer is rebuilt`);
    if (stage.first || stage.last) {
      throw new InvalidInputError(
        'only a middle stage can be rebuilt from its neighbours' + ' (the first and last hold the embeddings and head)',
      );
    }
    if (stage.spec.bottleneck !== undefined) {
      throw new InvalidInputError(
        'a stage with bottleneck projections cannot be rebuilt from its neighbours' +
          ' (they are not layers); restore it from a checkpoint',
      );
    }
    if (h.from[0] === h.from[1]) throw new InvalidInputError('a rebuild takes parts from two different peers');
    s.pending = { id: h.id, from: h.from, parts: new Map(), step: 0 };
    return { head: { layers: layerViews(stage).size } };
  },

  async lend(s, h) {
    const stage = s.stage;
    if (s.master) throw new InvalidInputError('cannot lend layers while computing with look-ahead weights');
    if (h.to === s.links.peerId) throw new InvalidInputError('a stage does not lend to itself');
    // The driver picks the pad seed, so the part must go to the fresh peer, never back to a driver.
    if (s.o.drivers?.includes(h.to)) throw new InvalidInputError("a stage does not lend to the run's driver");
    const part = maskedPart(gatherLayers(stage), h.weight, Buffer.from(h.seed, 'hex'), h.sign);
    for (const ma of h.dial ?? []) await s.links.dial(ma, { signal: AbortSignal.timeout(5000) }).catch(() => undefined);
    const layout = layoutOf(layerViews(stage).keys);
    const args = { id: h.id, layout, step: s.opt.step };
    await s.links.client.call(h.to, 'absorb', args, part, { signal: s.fetchSignal() });
    return { head: { bytes: part.length, step: s.opt.step } };
  },

  absorb(s, h, body, from) {
    const p = s.pending,
      stage = s.stage;
    if (!p || p.id !== h.id) throw new InvalidInputError(`no rebuild ${h.id} expected here`);
    if (!p.from.includes(from)) throw new InvalidInputError(`${from} is not one of this rebuild's lenders`);
    if (p.parts.has(from)) throw new InvalidInputError(`${from} already sent its part`);
    const { keys, size: n } = layerViews(stage);
    if (h.layout !== layoutOf(keys)) {
      throw new InvalidInputError(
        "the lender's layers are laid out unlike this stage's" + ' (a different number of layers)',
      );
    }
    if (body.length !== 4 * n) throw new InvalidInputError(`a part must be ${4 * n} bytes, got ${body.length}`);
    p.parts.set(from, body.slice());
    p.step = Math.max(p.step, h.step);
    if (p.parts.size < 2) return { head: { complete: false } };
    scatterLayers(stage, unmaskSum([...p.parts.values()], n));
    // Fresh moments: the neighbours' would not fit these weights. The step count restarts so
    // AdamW's bias correction treats them as new.
    s.freshOptimizer();
    s.reloaded();
    s.clearWork();
    s.pending = null;
    s.ready = true;
    return { head: { complete: true, step: p.step } };
  },
};
