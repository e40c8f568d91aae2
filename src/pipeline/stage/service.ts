/**
 * The stage service: one stage peer's calls, independent of any transport. It parses each
 * request head with the protocol's schemas, refuses compute calls until the stage is held
 * (StageUnavailableError), times the compute calls and dispatches to the handlers of each concern.
 * stage-server.ts binds it to a libp2p host; memory-transport.ts calls it in memory.
 */
import { parseRequest, requestBodyCap, type StageOp, type StageRequest } from '../stage-protocol.js';
import { StageUnavailableError } from '../rpc.js';
import { InvalidInputError } from '../../util/errors.js';
import { compute, onDevicePath } from './compute.js';
import { shares } from './shares.js';
import { rebuild } from './rebuild.js';
import { diloco } from './diloco.js';
import { control } from './control.js';
import { StageServiceState, type Handler, type Handlers } from './state.js';
import type { StagePeerLinks, StageServiceOptions } from './state.js';

const handlers: Handlers<StageOp> = { ...compute, ...shares, ...rebuild, ...diloco, ...control };

/**
 * On a GPU peer, host-side calls that only read the stage's state (the device copy is read back
 * first and stays current), and calls that touch no stage state at all (nothing is read back).
 */
const READS_ONLY: ReadonlySet<StageOp> = new Set(['info', 'save', 'lend', 'delta', 'norm', 'tied']);
const NO_STATE: ReadonlySet<StageOp> = new Set(['hold', 'forget', 'expect']);

/** Calls a peer that does not hold its stage yet still answers (the sync and rebuild of a fresh peer). */
const BEFORE_READY: ReadonlySet<StageOp> = new Set(['restore', 'info', 'hold', 'expect', 'absorb', 'forget']);

/**
 * Who may call what. `info` reveals no weights (a digest, tensor names, statistics): anyone.
 * `absorb` (a rebuild's masked part) comes from a neighbour, not the driver: only from a lender
 * the driver named beforehand in `expect` (rebuild.ts checks the id and the sender). Every other
 * call reads or changes weights, gradients or optimizer state, or makes this peer hold memory
 * or disk: only the run's admitted driver(s).
 */
const OPEN: ReadonlySet<StageOp> = new Set(['info']);
const FROM_LENDER: ReadonlySet<StageOp> = new Set(['absorb']);

/**
 * Inference (a forward that keeps nothing, the last stage's logits): changes nothing and holds
 * nothing. A run whose manifest says `inference: 'open'` serves it to anyone (tessera generate
 * --swarm), bounded per caller; otherwise it too is for the driver only.
 */
const isInference = (h: { op: StageOp; train?: unknown }): boolean =>
  h.op === 'logits' || (h.op === 'fwd' && h.train === false);
const INFERENCE_ROWS = 16;
const INFERENCE_INFLIGHT = 4;
const MAX_GUESTS = 64;

/** A call from a peer that is not admitted for it: refused (the caller sees a typed refusal). */
export class StageForbiddenError extends InvalidInputError {}

type Timed = 'fwd' | 'bwd' | 'last' | 'step';
const isTimed = (op: StageOp): op is Timed => op === 'fwd' || op === 'bwd' || op === 'last' || op === 'step';

export class StageService {
  readonly state: StageServiceState;
  /** The largest request body this service accepts (the framing enforces it before allocating). */
  readonly maxBody: number;
  /** Inference calls in flight per caller that is not the driver (open inference). */
  private readonly guests = new Map<string, number>();

  constructor(o: StageServiceOptions, links: StagePeerLinks) {
    this.state = new StageServiceState(o, links);
    this.maxBody = requestBodyCap(o.config, o.spec.count, o.bottleneck);
  }

  /** Whether `from` may make this call (before its body is read: see bodyCap). */
  allowed(h: { op: StageOp; train?: unknown }, from: string): boolean {
    const s = this.state,
      drivers = s.o.drivers,
      op = h.op;
    if (drivers === null || OPEN.has(op) || drivers.includes(from)) return true;
    if (FROM_LENDER.has(op)) return s.pending !== null && s.pending.from.includes(from);
    return s.o.openInference === true && isInference(h);
  }

  /** The largest body `from` may send with this head: none for a call it may not make. */
  bodyCap(head: unknown, from: string): number {
    const h = head as { op?: unknown; train?: unknown } | null;
    if (typeof h?.op !== 'string' || !Object.hasOwn(handlers, h.op)) return 0;
    const op = h.op as StageOp,
      drivers = this.state.o.drivers;
    if (!this.allowed({ op, train: h.train }, from)) return 0;
    if (drivers === null || drivers.includes(from) || !isInference({ op, train: h.train })) return this.maxBody;
    // An inference caller that is not the driver: at most INFERENCE_ROWS sequences a call.
    const st = this.state,
      n = INFERENCE_ROWS * st.o.config.ctx;
    return st.stage.first ? 4 * n : st.codec.encodedSize(n);
  }

  /** Serves one call (an untrusted head); throws InvalidInputError (refused) or StageUnavailableError. */
  async handle(raw: unknown, body: Uint8Array, from: string): Promise<{ head: unknown; body?: Uint8Array }> {
    const s = this.state;
    const h = parseRequest(raw);
    // Refused before anything is counted or done (a stranger's calls are not the run's work).
    if (!this.allowed(h, from)) {
      throw new StageForbiddenError(
        FROM_LENDER.has(h.op)
          ? `"${h.op}" is taken only from a lender the driver announced (expect); ${from} is not one`
          : `"${h.op}" is only for this run's driver; ${from} is not admitted`,
      );
    }
    const guest = s.o.drivers !== null && !s.o.drivers.includes(from) && isInference(h);
    if (guest) {
      // Open inference (the manifest's choice) from a peer that is not the driver: small calls, few at once.
      const rows = 'B' in h ? h.B : 0;
      if (rows > INFERENCE_ROWS)
        throw new StageForbiddenError(`inference calls carry at most ${INFERENCE_ROWS} sequences`);
      const n = this.guests.get(from) ?? 0;
      if (n >= INFERENCE_INFLIGHT)
        throw new StageForbiddenError(`at most ${INFERENCE_INFLIGHT} inference calls in flight per peer`);
      if (this.guests.size >= MAX_GUESTS && n === 0)
        throw new StageForbiddenError('too many inference callers at once');
      this.guests.set(from, n + 1);
    }
    s.stats.calls++;
    const timed = isTimed(h.op) ? h.op : null;
    const t0 = timed ? performance.now() : 0;
    try {
      return await this.dispatch(h, body, from);
    } finally {
      if (guest) {
        const n = (this.guests.get(from) ?? 1) - 1;
        if (n > 0) this.guests.set(from, n);
        else this.guests.delete(from);
      }
      if (timed && !('train' in h && !h.train)) {
        s.stats.ms[timed] += performance.now() - t0;
        s.stats.count[timed]++;
      }
    }
  }

  private async dispatch(
    h: StageRequest,
    body: Uint8Array,
    from: string,
  ): Promise<{ head: unknown; body?: Uint8Array }> {
    const s = this.state;
    if (!s.ready && !BEFORE_READY.has(h.op)) {
      throw new StageUnavailableError(`not serving stage ${s.stage.spec.index} yet (waiting for a restore)`);
    }
    const handler = handlers[h.op] as Handler<StageOp>;
    const dev = s.device;
    if (!dev || NO_STATE.has(h.op) || onDevicePath(h, s)) return await handler(s, h as never, body, from);
    // A GPU peer's host-side call (stage/device.ts): the host copy first, the device refreshed after a change.
    await dev.onHost();
    try {
      return await handler(s, h as never, body, from);
    } finally {
      if (!READS_ONLY.has(h.op)) dev.hostChanged();
    }
  }
}
