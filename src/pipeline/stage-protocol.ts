/**
 * The stage protocol (`/tessera/stage/1.0.0`): the one place that says what every stage call
 * carries. A zod schema per request head and per reply head, the size caps of heads and bodies,
 * and the TypeScript types inferred from them. The stage service (stage/service.ts) parses
 * requests with these schemas, the StageClient (stage-client.ts) builds requests of these types
 * and decodes replies with these schemas; the framing is rpc.ts's.
 *
 * Bodies (what each call's body is) are described in stage-server.ts's header.
 */
import { z } from 'zod';
import { anyStageSpecs, splitStages, type StageModelConfig, type StageSpec } from '../model/pipeline-stage.js';
import { fp32Size } from '../swarm/compress/dense.js';
import { InvalidInputError } from '../util/errors.js';

/** Largest JSON head either way, in bytes. */
export const MAX_HEAD = 64 * 1024;
/** Banks held at once: a step's micro-batch attempts (balanced routing) or batches in flight (async). */
export const MAX_TAGS = 64;

const Hex = (n: number) => z.string().regex(new RegExp(`^[0-9a-f]{${n}}$`), `${n} hex digits`);
const PeerIdStr = z.string().min(8).max(128);
const Cid = z.string().min(8).max(128);
const Addrs = z.array(z.string().min(1).max(256)).max(16);
const Micro = z
  .number()
  .int()
  .min(0)
  .max(1 << 30);
const Shape = {
  micro: Micro,
  B: z.number().int().min(1).max(4096),
  T: z
    .number()
    .int()
    .min(1)
    .max(1 << 16),
};
const Count = z.number().int().min(0);
/** Asynchronous pipelining (driver.trainAsync): the batch a gradient belongs to; absent = the synchronous path. */
const Tag = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional();

/** Every request head, by operation (strict: an unknown field is refused). */
export const RequestSchemas = {
  fwd: z.object({ op: z.literal('fwd'), ...Shape, train: z.boolean() }).strict(),
  last: z
    .object({
      op: z.literal('last'),
      ...Shape,
      train: z.boolean(),
      scale: z.number().positive().max(1),
      tag: Tag,
    })
    .strict(),
  bwd: z.object({ op: z.literal('bwd'), micro: Micro, tag: Tag }).strict(),
  norm: z.object({ op: z.literal('norm'), tag: Tag }).strict(),
  tied: z.object({ op: z.literal('tied'), set: z.boolean(), tag: Tag }).strict(),
  step: z
    .object({
      op: z.literal('step'),
      lr: z.number().min(0).max(10),
      globalNorm: z.number().min(0),
      tag: Tag,
      lookahead: z.number().min(0).max(8).optional(),
    })
    .strict(),
  info: z.object({ op: z.literal('info') }).strict(),
  reset: z.object({ op: z.literal('reset') }).strict(),
  logits: z.object({ op: z.literal('logits'), ...Shape }).strict(),
  /** `seal`: a fresh key from the driver; each share is stored encrypted under a key derived from it. */
  save: z.object({ op: z.literal('save'), seal: Hex(64).optional() }).strict(),
  hold: z
    .object({
      op: z.literal('hold'),
      stage: z.number().int().min(0).max(1023),
      shares: z.array(Cid).min(1).max(2),
    })
    .strict(),
  delta: z
    .object({
      op: z.literal('delta'),
      codec: z.enum(['fp32', 'fp16', 'int8', 'sparse']),
      chunk: z
        .number()
        .int()
        .min(1)
        .max(1 << 20)
        .optional(),
      k: z
        .number()
        .int()
        .min(1)
        .max(1 << 20)
        .optional(),
    })
    .strict(),
  outer: z
    .object({ op: z.literal('outer'), lr: z.number().positive().max(10), momentum: z.number().min(0).max(0.999) })
    .strict(),
  embed: z.object({ op: z.literal('embed'), set: z.boolean() }).strict(),
  fold: z.object({ op: z.literal('fold'), keep: z.array(Count.max(Number.MAX_SAFE_INTEGER)).max(4096) }).strict(),
  grads: z.object({ op: z.literal('grads'), set: z.boolean() }).strict(),
  restore: z
    .object({
      op: z.literal('restore'),
      shares: z.array(Cid).length(2),
      seal: Hex(64).optional(),
      dial: Addrs.optional(),
    })
    .strict(),
  expect: z.object({ op: z.literal('expect'), id: Hex(16), from: z.array(PeerIdStr).length(2) }).strict(),
  lend: z
    .object({
      op: z.literal('lend'),
      id: Hex(16),
      to: PeerIdStr,
      seed: Hex(64),
      sign: z.union([z.literal(1), z.literal(-1)]),
      weight: z.number().min(0).max(1),
      dial: Addrs.optional(),
    })
    .strict(),
  absorb: z.object({ op: z.literal('absorb'), id: Hex(16), layout: Hex(64), step: Count }).strict(),
  forget: z.object({ op: z.literal('forget'), shares: z.array(Cid).min(1).max(2) }).strict(),
} as const;

export type StageOp = keyof typeof RequestSchemas;
export const STAGE_OPS = Object.keys(RequestSchemas) as StageOp[];

/** Any request head (what the service parses). */
export const StageRequestSchema = z.discriminatedUnion('op', [
  RequestSchemas.fwd,
  RequestSchemas.last,
  RequestSchemas.bwd,
  RequestSchemas.norm,
  RequestSchemas.tied,
  RequestSchemas.step,
  RequestSchemas.info,
  RequestSchemas.reset,
  RequestSchemas.logits,
  RequestSchemas.save,
  RequestSchemas.hold,
  RequestSchemas.delta,
  RequestSchemas.outer,
  RequestSchemas.embed,
  RequestSchemas.fold,
  RequestSchemas.grads,
  RequestSchemas.restore,
  RequestSchemas.expect,
  RequestSchemas.lend,
  RequestSchemas.absorb,
  RequestSchemas.forget,
]);
export type StageRequest = z.infer<typeof StageRequestSchema>;
/** The request head of one operation. */
export type RequestOf<Op extends StageOp> = z.infer<(typeof RequestSchemas)[Op]>;
/** A request head without its `op` (what a StageClient method takes). */
export type ArgsOf<Op extends StageOp> = Omit<RequestOf<Op>, 'op'>;

/** A float computed by the peer: JSON writes NaN and ±Infinity as null, read back as NaN. */
const Float = z
  .number()
  .nullable()
  .transform((x) => x ?? NaN);
const Empty = z.object({});
const Timings = z.object({ fwd: z.number(), bwd: z.number(), last: z.number(), step: z.number() });

/** What a peer did for the run: the basis of per-stage credit (and usage metering for inference). */
export const StageStatsSchema = z.object({
  calls: Count,
  actBytesIn: Count,
  actBytesOut: Count,
  steps: Count,
  tokens: Count,
  /** Milliseconds spent computing, per kind of call, and how many (the schedule model reads them). */
  ms: Timings,
  count: Timings,
});

/** Every reply head, by operation (unknown fields are dropped). */
export const ReplySchemas = {
  fwd: Empty,
  last: z.object({ loss: Float }),
  bwd: Empty,
  norm: z.object({ sumSquares: Float, tiedSquares: Float, layerSquares: Float }),
  tied: Empty,
  step: z.object({ step: Count }),
  info: z.object({
    index: Count,
    count: Count,
    tensors: z.array(z.string()).max(100_000),
    params: Count,
    ready: z.boolean(),
    step: Count,
    digest: Hex(64),
    holds: z.array(Count).max(1024),
    stats: StageStatsSchema,
  }),
  reset: Empty,
  logits: Empty,
  save: z.object({ shares: z.array(Cid).length(2), step: Count, bytes: Count }),
  hold: z.object({ stage: Count, holds: Count }),
  delta: z.object({ n: Count }),
  outer: z.object({ step: Count }),
  embed: Empty,
  fold: z.object({ folded: Count }),
  grads: Empty,
  restore: z.object({ step: Count }),
  expect: z.object({ layers: Count }),
  lend: z.object({ bytes: Count, step: Count }),
  absorb: z.union([z.object({ complete: z.literal(false) }), z.object({ complete: z.literal(true), step: Count })]),
  forget: z.object({ forgot: Count }),
} as const satisfies Record<StageOp, z.ZodType>;

/** The reply head of one operation, as the client reads it. */
export type ReplyOf<Op extends StageOp> = z.output<(typeof ReplySchemas)[Op]>;
/** The reply head of one operation, as the service writes it. */
export type ReplyHeadOf<Op extends StageOp> = z.input<(typeof ReplySchemas)[Op]>;
export type StageStats = z.infer<typeof StageStatsSchema>;

/** The head of a refused or unavailable reply. */
export const ErrorReplySchema = z.object({ error: z.string().max(MAX_HEAD).optional() });

/** Parses a request head; a bad one is refused with the first issue's message. */
export function parseRequest(raw: unknown): StageRequest {
  const p = StageRequestSchema.safeParse(raw);
  if (!p.success) throw new InvalidInputError(`bad stage call: ${p.error.issues[0]?.message}`);
  return p.data;
}

/** Parameters of the largest stage of the cut (a peer may move to any stage). */
function largestStage(config: StageModelConfig, count: number, bottleneck?: number): number {
  const b = bottleneck !== undefined ? { bottleneck } : {};
  const size = (sp: StageSpec) => anyStageSpecs(config, { ...sp, ...b }).reduce((t, x) => t + x.size, 0);
  return Math.max(...splitStages(config, count).map(size));
}

/**
 * The largest request body a stage peer of this run accepts: a micro-batch's tokens and targets,
 * a tied-embedding gradient, or a whole stage's gradients or pseudo-gradient.
 */
export function requestBodyCap(config: StageModelConfig, count: number, bottleneck?: number): number {
  const maxN = 4096 * config.ctx;
  return Math.max(8 * maxN, 4 * config.vocabSize * config.dim, fp32Size(largestStage(config, count, bottleneck))) + 64;
}

/** Token ids (or targets) as a body: int32 little-endian. */
export function int32Bytes(x: Int32Array): Uint8Array {
  const b = new Uint8Array(4 * x.length);
  const dv = new DataView(b.buffer);
  for (let i = 0; i < x.length; i++) dv.setInt32(4 * i, x[i], true);
  return b;
}

/** Reads `n` int32 values from a body of exactly 4n bytes. */
export function int32(b: Uint8Array, n: number, what: string): Int32Array {
  if (b.length !== 4 * n) throw new InvalidInputError(`${what}: expected ${4 * n} bytes, got ${b.length}`);
  const out = new Int32Array(n);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < n; i++) out[i] = dv.getInt32(4 * i, true);
  return out;
}
