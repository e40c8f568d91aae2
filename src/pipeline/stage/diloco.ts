/**
 * The stage service's DiLoCo calls (../diloco.ts): this replica's pseudo-gradient
 * Δ = θ_snapshot − θ (swarm codec, error feedback kept here), the outer Nesterov step on the
 * replicas' mean Δ̄, and the tied embedding's get/set (the re-tie after an outer step).
 */
import { InvalidInputError } from '../../util/errors.js';
import { decodeAny, ErrorFeedback, getCodec } from '../../swarm/compress/index.js';
import { OuterNesterov } from '../../swarm/outer.js';
import { tensorIO } from './compute.js';
import type { Handlers } from './state.js';

export type DilocoOp = 'delta' | 'outer' | 'embed';

export const diloco: Handlers<DilocoOp> = {
  delta(s, h) {
    const stage = s.stage;
    const d = new Float32Array(stage.numParams);
    for (let i = 0; i < d.length; i++) d[i] = s.snap[i] - stage.params[i];
    const ef = (s.ef ??= new ErrorFeedback(stage.numParams));
    const sparse =
      h.codec === 'sparse' ? { ...(h.chunk ? { chunk: h.chunk } : {}), ...(h.k ? { k: h.k } : {}) } : undefined;
    const { bytes } = getCodec(h.codec, sparse).encode(d, ef);
    return { head: { n: stage.numParams }, body: bytes };
  },

  outer(s, h, body) {
    const stage = s.stage;
    const mean = decodeAny(body, stage.numParams).values;
    if (!s.outer || s.outer.settings.lr !== h.lr || s.outer.settings.momentum !== h.momentum) {
      s.outer = new OuterNesterov(stage.numParams, { lr: h.lr, momentum: h.momentum });
    }
    stage.params.set(s.snap);
    s.outer.step(stage.params, mean);
    s.snap.set(stage.params);
    return { head: { step: s.opt.step } };
  },

  embed(s, h, body) {
    const stage = s.stage;
    const t = stage.tiedParam();
    if (!t) throw new InvalidInputError('this stage holds no tied embedding');
    if (h.set && (!stage.last || stage.first)) throw new InvalidInputError('only the last stage sets its head copy');
    const r = tensorIO(t, h.set, body, 'embedding');
    // The snapshot follows: the re-tie is part of the outer step, not of the next Δ.
    if (h.set) s.snap.set(t, s.tiedAt()!.offset);
    return r;
  },
};
