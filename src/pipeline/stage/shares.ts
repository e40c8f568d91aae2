/**
 * The stage service's checkpoint calls: save (this stage's state as two XOR shares in this
 * peer's IPFS store), hold (pin another stage's share) and restore (a fresh peer fetches both
 * shares, XORs them and loads the state); and the stage state's byte format.
 *
 * Why shares: recovery needs the checkpoint of a stage whose last peer died to live elsewhere, but
 * no peer may hold weights beyond its own stage. Each of two other stages' peers pins one share;
 * either alone is a one-time pad, and only the restoring peer ever holds both. The saver keeps its
 * copies only until the holders have pinned them: the driver then has it `forget` them (unpinned
 * and garbage-collected), and a restoring peer collects both from its blockstore once loaded.
 * Only the run's driver may call any of these (service.ts): `save` tells it both CIDs.
 */
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { z } from 'zod';
import type { PipelineStage as Stage } from '../../model/pipeline-stage.js';
import type { AdamW } from '../../train/adamw.js';
import { InvalidInputError } from '../../util/errors.js';
import { packF32, unpackF32 } from '../../util/packed.js';
import { parseCid } from '../../store/index.js';
import type { Handlers } from './state.js';

export type SharesOp = 'save' | 'hold' | 'restore' | 'forget';

/** A stage's state: packF32({v, index, count, l0, l1, step, tensors}, [params, m, v]) (src/util/packed.ts). */
export function encodeStageState(stage: Stage, opt: AdamW): Uint8Array {
  return packF32({ v: 1, ...stage.spec, step: opt.step, tensors: stage.tensorNames() }, [stage.params, opt.m, opt.v]);
}

const Int = z.number().int();
const StateHead = z
  .object({
    v: z.literal(1),
    index: Int,
    count: Int,
    l0: Int,
    l1: Int,
    bottleneck: Int.min(1).optional(),
    step: Int.min(0),
    tensors: z.array(z.string()).max(100_000),
  })
  .strict();

/** Loads a state made by encodeStageState into `stage` and `opt`; it must be this very stage. */
export function decodeStageState(bytes: Uint8Array, stage: Stage, opt: AdamW): void {
  const { head: raw, arrays } = unpackF32(bytes, 3, stage.numParams, 'stage state');
  const h = StateHead.safeParse(raw);
  if (!h.success) throw new InvalidInputError(`stage state header: ${h.error.message.slice(0, 120)}`);
  const head = h.data,
    sp = stage.spec;
  const same =
    head.index === sp.index &&
    head.count === sp.count &&
    head.l0 === sp.l0 &&
    head.l1 === sp.l1 &&
    head.bottleneck === sp.bottleneck &&
    head.tensors.join() === stage.tensorNames().join();
  if (!same) {
    throw new InvalidInputError(`the checkpoint is of stage ${head.index}/${head.count}, not ${sp.index}/${sp.count}`);
  }
  stage.params.set(arrays[0]);
  opt.m.set(arrays[1]);
  opt.v.set(arrays[2]);
  opt.step = head.step;
}

/**
 * Share k sealed (or unsealed: the same XOR) under the driver's `seal`: AES-256-CTR with the key
 * sha256(seal ‖ k), used once (a fresh seal per save). Share CIDs are not secret — bitswap sends
 * a peer's wants to every connected peer, so anyone near a holder or a restoring peer hears them
 * (test/redteam-stage-wantlist) and can fetch both shares — but without the seal, which only the
 * driver and the restoring peer see, two sealed shares say nothing.
 */
export function sealed(part: Uint8Array, seal: string | undefined, k: number): Uint8Array {
  if (seal === undefined) return part;
  const key = createHash('sha256')
    .update(Buffer.from(seal, 'hex'))
    .update(new Uint8Array([k]))
    .digest();
  return new Uint8Array(createCipheriv('aes-256-ctr', key, new Uint8Array(16)).update(part));
}

export const shares: Handlers<SharesOp> = {
  async save(s, s0) {
    if (s.master) {
      throw new InvalidInputError(
        'checkpoints of a run with look-ahead weights are not supported' +
          ' (the stage computes with predicted weights)',
      );
    }
    const store = s.needStore();
    const x = encodeStageState(s.stage, s.opt);
    const r = new Uint8Array(randomBytes(x.length));
    const y = new Uint8Array(x.length);
    for (let i = 0; i < x.length; i++) y[i] = x[i] ^ r[i];
    const cids: string[] = [];
    for (const [k, part] of [r, y].entries()) {
      const cid = await store.fs.addBytes(sealed(part, s0.seal, k), { rawLeaves: true });
      await store.pin(cid, { signal: s.fetchSignal() });
      cids.push(cid.toString());
    }
    // The previous save's shares have been fetched by now (holders pinned them, or a new
    // replica restored from them, before the driver asks for another save): unpin ours.
    const holding = new Set([...s.held.values()].flat());
    for (const c of s.lastSaved) {
      if (!holding.has(c) && !cids.includes(c)) await store.unpin(parseCid(c)).catch(() => undefined);
    }
    s.lastSaved = cids;
    return { head: { shares: cids, step: s.opt.step, bytes: x.length } };
  },

  async hold(s, h) {
    if (h.stage === s.stage.spec.index) throw new InvalidInputError('a peer does not hold shares of its own stage');
    // One share set per stage of the run: at most count − 1 held (disk stays bounded).
    if (h.stage >= s.stage.spec.count) throw new InvalidInputError(`the run has no stage ${h.stage}`);
    const store = s.needStore();
    for (const c of h.shares) await store.pin(parseCid(c), { signal: s.fetchSignal() });
    for (const c of s.held.get(h.stage) ?? []) {
      if (!h.shares.includes(c)) await store.unpin(parseCid(c)).catch(() => undefined);
    }
    s.held.set(h.stage, h.shares);
    await store.gc({ signal: s.fetchSignal() }).catch(() => undefined);
    return { head: { stage: h.stage, holds: h.shares.length } };
  },

  async forget(s, h) {
    const store = s.needStore();
    const holding = new Set([...s.held.values()].flat());
    let forgot = 0;
    for (const c of h.shares) {
      if (!s.lastSaved.includes(c)) throw new InvalidInputError(`${c} is not a share of this peer's last save`);
      if (holding.has(c)) continue;
      await store.unpin(parseCid(c)).catch(() => undefined);
      forgot++;
    }
    s.lastSaved = s.lastSaved.filter((c) => !h.shares.includes(c));
    await store.gc({ signal: s.fetchSignal() });
    return { head: { forgot } };
  },

  async restore(s, h) {
    const store = s.needStore();
    const stage = s.stage;
    // The share holders, so that bitswap can ask them directly.
    for (const ma of h.dial ?? []) await s.links.dial(ma, { signal: AbortSignal.timeout(5000) }).catch(() => undefined);
    const maxBytes = 64 + 4096 + 12 * stage.numParams;
    const fetch = (c: string) => store.cat(parseCid(c), { maxBytes, signal: s.fetchSignal() });
    const [a, b] = (await Promise.all(h.shares.map(fetch))).map((x, k) => sealed(x, h.seal, k));
    if (a.length !== b.length) throw new InvalidInputError('the two checkpoint shares differ in length');
    const x = new Uint8Array(a.length);
    for (let i = 0; i < x.length; i++) x[i] = a[i] ^ b[i];
    decodeStageState(x, stage, s.opt);
    // Both shares sat in this blockstore (unpinned) while fetched: collect them.
    await store.gc({ signal: s.fetchSignal() }).catch(() => undefined);
    s.reloaded();
    s.clearWork();
    s.ready = true;
    return { head: { step: s.opt.step } };
  },
};
