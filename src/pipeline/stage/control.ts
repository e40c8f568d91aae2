/**
 * The stage service's information call: which stage this peer holds, whether it serves it, its
 * step, a digest of its weights (replicas must hold the same bits) and its call statistics.
 */
import { createHash } from 'node:crypto';
import type { Handlers } from './state.js';

export type ControlOp = 'info';

export const control: Handlers<ControlOp> = {
  info(s) {
    const p = s.stage.params;
    // The digest lets the driver (and tests) check that replicas hold the same bits.
    const digest = createHash('sha256')
      .update(new Uint8Array(p.buffer, p.byteOffset, p.byteLength))
      .digest('hex');
    return {
      head: {
        index: s.stage.spec.index,
        count: s.stage.spec.count,
        tensors: s.stage.tensorNames(),
        params: s.stage.numParams,
        ready: s.ready,
        step: s.opt.step,
        digest,
        holds: [...s.held.keys()],
        stats: s.stats,
      },
    };
  },
};
