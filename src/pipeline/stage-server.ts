/**
 * A peer serving one pipeline stage over libp2p (issue 8): the thin binding of the stage service
 * (stage/service.ts) to a host. The peer holds only its Stage (its slice of the model) and that
 * slice's AdamW moments; micro-batch activations arrive and leave encoded with the run's
 * activation codec, and every byte is counted. Request and reply heads: stage-protocol.ts.
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
 *   save  {seal}                        checkpoint: stage state X as two XOR shares R, X⊕R in this
 *                                       peer's IPFS store, each sealed under a key derived from the
 *                                       driver's fresh `seal` → {shares: [cid, cid], step, bytes}
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
 *   restore {shares: [cid, cid], seal}  a fresh peer: fetch both shares from the holders, unseal, XOR,
 *                                       load the stage state; until then compute calls are
 *                                       answered "unavailable" (the driver routes elsewhere)
 *   expect {id, from: [peer, peer]}     a fresh peer of a middle stage, rebuilt without a checkpoint
 *                                       (rebuild.ts): accept one masked part from each of these two
 *   lend  {to, id, seed, sign, weight}  a neighbour: send `to` this stage's layers as a masked part
 *                                       (`absorb`); the driver that asks never sees the part
 *   absorb {id, layout}                 (from a lender) one part; with both in, the pads cancel, the
 *                                       mean becomes this stage's layers (fresh moments), it serves
 *   forget {shares: [cid]}              the saver, once the holders have pinned them: drop its own
 *                                       copies of its last save's shares (unpin, garbage-collect)
 *
 * Who may call (stage/service.ts, `drivers`): `info` anyone; `absorb` only a lender that the
 * driver named in `expect`; everything else only the run's admitted driver(s), the peer ids
 * the manifest names (hashed into the run id). Anyone else is refused, before its body is read.
 *
 * A replica joins a live stage the same way: the driver has a serving replica `save`, and the
 * new peer `restore` those shares (bit-identical to the replicas it joins). A peer that moves to
 * another stage (`moveTo`, placement.ts) drops its stage, weights and moments first, and waits for
 * such a sync; calls meant for its old stage are answered "unavailable".
 *
 * Handlers by concern: stage/compute.ts, stage/shares.ts (why shares), stage/rebuild.ts,
 * stage/diloco.ts, stage/control.ts; their state: stage/state.ts.
 */
import type { Host } from '../net/host.js';
import type { PipelineStage as Stage, StageSpec } from '../model/pipeline-stage.js';
import { serveStageRpc } from './rpc.js';
import { callTimeoutFor } from './driver.js';
import type { StageStats } from './stage-protocol.js';
import { StageClient, libp2pTransport } from './stage-client.js';
import { StageService } from './stage/service.js';
import type { StageServiceOptions } from './stage/state.js';

export type { StageServiceOptions } from './stage/state.js';

/** What this peer did for the run: the basis of per-stage credit (and usage metering for inference). */
export type StageServerStats = StageStats;

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

/** Serves one stage on `host` until closed. */
export async function serveStage(host: Host, o: StageServiceOptions): Promise<StageServer> {
  const links = {
    peerId: host.peerId,
    dial: (ma: string, d: { signal: AbortSignal }) => host.dial(ma, d),
    client: new StageClient(libp2pTransport(host)),
  };
  const service = new StageService(o, links);
  const s = service.state;
  const handler = (head: unknown, body: Uint8Array, from: string) => service.handle(head, body, from);
  const srv = await serveStageRpc(host, handler, {
    maxBody: service.maxBody,
    // Twice the driver's deadline for a call to a stage this size (120 s at toy sizes, as before).
    timeoutMs: 2 * callTimeoutFor(s.stage.numParams),
    bodyCap: (head, from) => service.bodyCap(head, from),
  });
  return {
    get stage() {
      return s.stage;
    },
    stats: s.stats,
    ready: () => s.ready,
    step: () => s.opt.step,
    moveTo: (spec) => s.moveTo(spec),
    close: () => srv.close(),
  };
}
