/**
 * The peer's control-message kinds on the run's signed gossip topic: the reducer's `round.*`
 * kinds plus the `node.*` kinds of the peer's roles (snapshots, validator scores, audit
 * commitments and fraud proofs, payout addresses, ledger signatures). Every body is decoded with
 * these schemas and size-capped by the envelope before any handler sees it.
 */
import { z } from 'zod';
import { PayoutSchema, SigBodySchema } from '../ledger/link.js';
import { CidString } from '../swarm/manifest.js';
import { RoundBodySchemas } from '../swarm/round.js';
import { BackendClassSchema } from '../verify/backend.js';

const HEX64 = /^[0-9a-f]{64}$/;

const ScoreEntrySchema = z
  .object({
    peer: z.string().min(1).max(128),
    score: z.number().min(0).max(1e6),
    ema: z.number().min(0).max(1e6),
    flagged: z.boolean(),
    reason: z.string().max(64).nullable(),
  })
  .strict();

const SnapBodySchema = z
  .object({
    round: z.number().int().min(0),
    weightsHash: z.string().regex(HEX64),
    bundle: z.string().regex(HEX64),
    /** The same state as an IPFS checkpoint directory (store/checkpoint.ts), fetchable from any holder. */
    cid: CidString.optional(),
  })
  .strict();

const CommitBodySchema = z
  .object({
    round: z.number().int().min(0),
    updateHash: z.string().regex(HEX64),
    steps: z.number().int().min(1).max(4096),
    root: z.string().regex(HEX64),
    trace: z.string().regex(HEX64),
    /** What the steps ran on (verify/backend.ts); absent: the CPU deterministic kernels. */
    backend: BackendClassSchema.optional(),
  })
  .strict();

const FraudBodySchema = z
  .object({
    round: z.number().int().min(0),
    trainer: z.string().min(1).max(128),
    k: z.number().int().min(1).max(4096),
    root: z.string().regex(HEX64),
    proof: z.string().regex(HEX64),
  })
  .strict();

export const NodeSchemas = {
  ...RoundBodySchemas,
  /** "My snapshot of the start of round `round` (θ hash weightsHash) is bulk object `bundle`." */
  'node.snap': SnapBodySchema,
  /** A validator's scores of round `round`'s applied updates (signed by the envelope, like every control message). */
  'node.scores': z
    .object({
      round: z.number().int().min(0),
      baseHash: z.string().regex(HEX64),
      reportHash: z.string().regex(HEX64),
      entries: z.array(ScoreEntrySchema).max(1024),
    })
    .strict(),
  /**
   * Audit (manifest hyper.audit): "my update `updateHash` of round `round` is the end of `steps`
   * inner steps whose states have Merkle root `root`; the trace (pre-state + digests) is bulk
   * object `trace`". Signed by the envelope: the trainer is bound to its root.
   */
  'node.commit': CommitBodySchema,
  /** A validator found `trainer`'s step `k` of round `round` wrong: the fraud proof is bulk object `proof`. */
  'node.fraud': FraudBodySchema,
  /** "Mint my shares to this EVM address" (the envelope binds it to the announcing peer id). */
  'node.payout': PayoutSchema,
  /** A validator's EIP-712 signature over a round's score report, for the chain (src/ledger/link.ts). */
  'node.sig': SigBodySchema,
} as const;

/** One peer's verdict in a validator's round report. */
export type ScoreEntry = z.infer<typeof ScoreEntrySchema>;
/** A snapshot advertisement. */
export type SnapAd = z.infer<typeof SnapBodySchema>;
/** A trainer's audit commitment. */
export type Commitment = z.infer<typeof CommitBodySchema>;
/** A fraud-proof announcement. */
export type FraudNotice = z.infer<typeof FraudBodySchema>;
