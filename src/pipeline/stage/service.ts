/**
 * The stage service: one stage peer's calls, independent of any transport. It parses each
 * request head with the protocol's schemas, refuses compute calls until the stage is held
 * (StageUnavailableError), times the compute calls and dispatches to the handlers of each concern.
 * stage-server.ts binds it to a libp2p host; memory-transport.ts calls it in memory.
 */
import { parseRequest, requestBodyCap, type StageOp, type StageRequest } from '../stage-protocol.js';
import { StageUnavailableError } from '../rpc.js';
import { compute } from './compute.js';
import { shares } from './shares.js';
import { rebuild } from './rebuild.js';
import { diloco } from './diloco.js';
import { control } from './control.js';
import { StageServiceState, type Handler, type Handlers } from './state.js';
import type { StagePeerLinks, StageServiceOptions } from './state.js';

const handlers: Handlers<StageOp> = { ...compute, ...shares, ...rebuild, ...diloco, ...control };

/** Calls a peer that does not hold its stage yet still answers (the sync and rebuild of a fresh peer). */
const BEFORE_READY: ReadonlySet<StageOp> = new Set(['restore', 'info', 'hold', 'expect', 'absorb']);

type Timed = 'fwd' | 'bwd' | 'last' | 'step';
const isTimed = (op: StageOp): op is Timed => op === 'fwd' || op === 'bwd' || op === 'last' || op === 'step';

export class StageService {
  readonly state: StageServiceState;
  /** The largest request body this service accepts (the framing enforces it before allocating). */
  readonly maxBody: number;

  constructor(o: StageServiceOptions, links: StagePeerLinks) {
    this.state = new StageServiceState(o, links);
    this.maxBody = requestBodyCap(o.config, o.spec.count, o.bottleneck);
  }

  /** Serves one call (an untrusted head); throws InvalidInputError (refused) or StageUnavailableError. */
  async handle(raw: unknown, body: Uint8Array, from: string): Promise<{ head: unknown; body?: Uint8Array }> {
    const s = this.state;
    s.stats.calls++;
    const h = parseRequest(raw);
    const timed = isTimed(h.op) ? h.op : null;
    const t0 = timed ? performance.now() : 0;
    try {
      return await this.dispatch(h, body, from);
    } finally {
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
    return await handler(s, h as never, body, from);
  }
}
