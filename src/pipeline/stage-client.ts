/**
 * The typed caller of stage peers: `client.call(peer, op, args, body, o)` builds the request head
 * of `op` (stage-protocol.ts), sends it over a transport (libp2p, or in memory for tests) and
 * decodes the reply head with that operation's reply schema. The driver, DiLoCo and a lending
 * stage peer make every stage call through it.
 */
import type { Host } from '../net/host.js';
import { callStage, StageCallError, type Reply } from './rpc.js';
import { ReplySchemas, type ArgsOf, type ReplyOf, type RequestOf, type StageOp } from './stage-protocol.js';

/** Carries one framed stage call to a peer and its reply back (rpc.ts's bytes). */
export interface StageTransport {
  call(peer: string, head: unknown, body: Uint8Array, o: { maxBody: number; signal: AbortSignal }): Promise<Reply>;
}

/** Stage calls over libp2p streams from `host`. */
export function libp2pTransport(host: Host): StageTransport {
  return { call: (peer, head, body, o) => callStage(host, peer, head, body, o) };
}

/** A decoded reply: its typed head and its body. */
export interface StageReply<Op extends StageOp> {
  head: ReplyOf<Op>;
  body: Uint8Array;
}

export interface CallOptions {
  signal: AbortSignal;
  /** Cap on the reply body in bytes; default 0 (a reply without a body). */
  maxBody?: number;
}

const EMPTY = new Uint8Array(0);

export class StageClient {
  constructor(readonly transport: StageTransport) {}

  /** One call of `op` to `peer`; a reply head that does not fit the op's reply schema throws StageCallError. */
  async call<Op extends StageOp>(
    peer: string,
    op: Op,
    args: ArgsOf<Op>,
    body: Uint8Array,
    o: CallOptions,
  ): Promise<StageReply<Op>> {
    const head = { op, ...args } as RequestOf<Op>;
    const r = await this.transport.call(peer, head, body, { maxBody: o.maxBody ?? 0, signal: o.signal });
    const p = ReplySchemas[op].safeParse(r.head);
    if (!p.success) {
      throw new StageCallError(`stage peer ${peer} sent a bad "${op}" reply: ${p.error.issues[0]?.message}`);
    }
    return { head: p.data as ReplyOf<Op>, body: r.body };
  }

  /** A call with no body either way (control calls: save, restore, expect, lend, info…): its reply head. */
  async control<Op extends StageOp>(
    peer: string,
    op: Op,
    args: ArgsOf<Op>,
    o: { signal: AbortSignal },
  ): Promise<ReplyOf<Op>> {
    return (await this.call(peer, op, args, EMPTY, { signal: o.signal })).head;
  }
}
