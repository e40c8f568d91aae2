/**
 * The run manifest: everything peers must agree on before they can train one model together.
 * Its canonical JSON (sorted keys, no whitespace; see canonical.ts) is hashed to the runId,
 * so two peers with the same runId agree on every field, and any change is a different run.
 *
 * The manifest names no peers: who takes part is decided round by round (see round.ts).
 */
import { z } from 'zod';
import { CID } from 'multiformats/cid';
import { ModelConfigSchema } from '../model/config.js';
import { LoraConfigSchema, loraSites } from '../model/lora.js';
import { AdamWSchema } from '../train/adamw.js';
import { ToleranceSchema } from '../verify/tolerance.js';
import { ScheduleSchema } from '../train/schedule.js';
import { TesseraError } from '../util/errors.js';
import { resolveSparseParams } from './compress/sparse.js';
import { sha256Hex } from '../util/hash.js';
import { canonicalBytes } from './canonical.js';
import { OuterSchema } from './outer.js';

export const MANIFEST_VERSION = 1;
/** Largest manifest accepted, in bytes (input and canonical form). */
export const MAX_MANIFEST_BYTES = 64 * 1024;

/** A manifest failed to parse or validate. `issues` lists every problem found. */
export class ManifestError extends TesseraError {
  readonly issues: readonly string[];
  constructor(message: string, issues: readonly string[] = []) {
    super('BAD_MANIFEST', issues.length ? `${message}: ${issues.join('; ')}` : message);
    this.issues = issues;
  }
}

const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'must be a sha256 as 64 lowercase hex digits');
const MAX_MS = 7 * 24 * 3600 * 1000;
const Ms = z.number().int().min(1).max(MAX_MS);

/** A CIDv1 string (what `tessera data add` prints). */
export const CidString = z
  .string()
  .min(8)
  .max(256)
  .refine(
    (v) => {
      try {
        return CID.parse(v).version === 1;
      } catch {
        return false;
      }
    },
    { message: 'must be a CIDv1 string' },
  );

/**
 * Network settings (issue 16); all optional with defaults, see networkParams(). `relay`: the
 * limits every public peer's circuit relay puts on each reservation: bytes and seconds per
 * relayed connection, and how many peers may hold a reservation at once.
 */
export const NetworkSchema = z
  .object({
    relay: z
      .object({
        maxBytes: z
          .number()
          .int()
          .min(64 * 1024)
          .max(2 ** 40)
          .optional(),
        maxSeconds: z.number().int().min(1).max(86_400).optional(),
        maxReservations: z.number().int().min(1).max(10_000).optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

export interface NetworkParams {
  relay: { maxBytes: number; maxSeconds: number; maxReservations: number };
}
export function networkParams(m: { network?: z.infer<typeof NetworkSchema> }): NetworkParams {
  const r = m.network?.relay;
  return {
    relay: {
      maxBytes: r?.maxBytes ?? 64 * 1024 * 1024,
      maxSeconds: r?.maxSeconds ?? 600,
      maxReservations: r?.maxReservations ?? 64,
    },
  };
}

/** Content-addressed storage settings (issue 4); all have defaults, see storageParams(). */
export const StorageSchema = z
  .object({
    /** Each training shard and retained checkpoint is pinned by this many roster members. */
    replicas: z.number().int().min(1).max(64).optional(),
    /** A state checkpoint is kept (pinned by `replicas` holders) every this many rounds. */
    checkpointEvery: z.number().int().min(1).max(1_000_000).optional(),
    /** How many of those checkpoints are kept; older ones are unpinned and garbage-collected. */
    keepCheckpoints: z.number().int().min(1).max(1000).optional(),
  })
  .strict();

export interface StorageParams {
  replicas: number;
  checkpointEvery: number;
  keepCheckpoints: number;
}
export function storageParams(m: { storage?: z.infer<typeof StorageSchema> }): StorageParams {
  return {
    replicas: m.storage?.replicas ?? 3,
    checkpointEvery: m.storage?.checkpointEvery ?? 5,
    keepCheckpoints: m.storage?.keepCheckpoints ?? 3,
  };
}

export const DatasetSchema = z
  .object({
    name: z.string().min(1).max(256),
    /** sha256 of the training token file (little-endian uint32 tokens)... */
    trainTokensSha256: Sha256Hex.optional(),
    /**
     * ...or the CID of a dataset manifest (`tessera data add`), whose token shards peers fetch
     * from each other. Exactly one of the two.
     */
    cid: CidString.optional(),
    /**
     * The training tokens are split into this many shards; shards are assigned per round. With a
     * dataset CID it must equal the dataset's number of training shards (each is one block).
     */
    numShards: z
      .number()
      .int()
      .min(1)
      .max(1 << 20),
  })
  .strict()
  .refine((d) => (d.trainTokensSha256 === undefined) !== (d.cid === undefined), {
    message: 'dataset needs exactly one of trainTokensSha256 or cid',
  });

const SparseCodecSchema = z
  .object({
    id: z.literal('sparse'),
    chunk: z.number().int(),
    k: z.number().int(),
  })
  .strict()
  .superRefine((c, ctx) => {
    try {
      resolveSparseParams({ chunk: c.chunk, k: c.k });
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
    }
  });

export const CodecSettingsSchema = z.discriminatedUnion('id', [
  z.object({ id: z.literal('fp32') }).strict(),
  z.object({ id: z.literal('fp16') }).strict(),
  z.object({ id: z.literal('int8') }).strict(),
  SparseCodecSchema,
]);
export type CodecSettings = z.infer<typeof CodecSettingsSchema>;

export const HyperSchema = z
  .object({
    /** H: inner AdamW steps per round. */
    innerSteps: z.number().int().min(1).max(1_000_000),
    /** Sequences per inner step (each of model.ctx tokens). */
    batch: z.number().int().min(1).max(65536),
    adamw: AdamWSchema,
    /** Inner learning-rate schedule, indexed by the global inner step round·H + i. */
    schedule: ScheduleSchema,
    outer: OuterSchema,
    codec: CodecSettingsSchema,
    /** Error-feedback decay beta in [0, 1] (0 = no error feedback). */
    errorFeedback: z.number().min(0).max(1),
    /**
     * How each round's exchange overlaps the next round's inner steps: 'none' (train, then
     * exchange), 'delayed' (one-step-delayed outer update), 'shift' (start early, move onto the
     * new weights when they are known) or 'eager' (start early from a guess of the new weights). See RoundParamsSchema.overlap in round.ts.
     */
    overlap: z.enum(['none', 'delayed', 'shift', 'eager']).default('none'),
    /**
     * How the agreed updates are combined: 'mean' (token-weighted mean) or 'clip' (each update's
     * norm clipped to the lower median norm first, so one poisoned update cannot dominate; issue 6),
     * 'trimmed' (clipped, then a coordinate-wise trimmed mean) or 'centered' (clipped, then
     * centered clipping).
     * Absent means 'mean', so manifests written before this field keep their run ids.
     */
    aggregate: z.enum(['mean', 'clip', 'trimmed', 'centered']).optional(),
    /**
     * Audit by re-execution (issue 6): trainers commit a Merkle root over their state after every
     * inner step and run deterministic kernels; each validator re-executes each update with
     * probability p. Needs a fixed training base ('none' or 'delayed' overlap) and H ≤ 4096.
     * Absent: no commitments (and earlier manifests keep their run ids).
     *
     * `tolerance` (docs/WEBGPU.md "Audits when trainers use GPUs"): trainers on GPUs may join;
     * their steps are judged against the CPU re-execution with this rule (verify/tolerance.ts;
     * `{}` takes its defaults: rel 1e-3, outliers 64, cap 3), and fraud is only what breaks it.
     * Absent: every step is audited bit for bit, so only CPU trainers (deterministic kernels) train.
     */
    audit: z
      .object({ p: z.number().min(0).max(1), tolerance: ToleranceSchema.optional() })
      .strict()
      .optional(),
  })
  .strict()
  .refine((h) => !h.audit || h.overlap === 'none' || h.overlap === 'delayed', {
    message: "audit needs overlap 'none' or 'delayed' (eager/shift jobs move their base mid-way)",
    path: ['audit'],
  })
  .refine((h) => !h.audit || h.innerSteps <= 4096, { message: 'audit needs innerSteps <= 4096', path: ['audit'] });

export const TimingSchema = z
  .object({
    /** Training budget per round, from the round's start. */
    trainMs: Ms,
    /** Update-collection deadline, from the round's start (>= trainMs). */
    submitMs: Ms,
    /** Length of each agreement attempt before falling back to the next leader. */
    commitMs: Ms,
    /** Collection closes early once this fraction of the round's roster has submitted. */
    quorum: z.number().gt(0).max(1),
    /** Rounds train only when the roster has at least this many peers; otherwise they only admit joiners. */
    minPeers: z.number().int().min(1).max(1024),
    /** A member not heard from in this many consecutive rounds leaves the roster (it may re-join). */
    maxMissedRounds: z.number().int().min(1).max(1000),
    /**
     * Sybil resistance: decided sets that must include a newcomer's update before it votes and
     * leads (default 2; 0 = no probation). Absent means the default, and keeps the runId of
     * manifests written before this field.
     */
    probation: z.number().int().min(0).max(1000).optional(),
    /** Joins per round, as a fraction of the voters (at least 1; default 0.25). */
    joinFraction: z.number().gt(0).max(1).optional(),
    /**
     * Adaptive deadlines: trainMs and the collection window may stretch up to this factor when
     * decided sets show short or late updates (default 4; 1 = fixed deadlines as written).
     */
    maxStretch: z.number().min(1).max(16).optional(),
  })
  .strict()
  .refine((t) => t.submitMs >= t.trainMs, { message: 'submitMs must be >= trainMs', path: ['submitMs'] });

/**
 * The base model a fine-tuning run starts from (issue 19): GPT-2 weights of the manifest's model
 * shape, named by the sha256 of their flat float32 parameters (`tessera import`/`train` print it;
 * every peer checks it before training) and, optionally, by the CID of a state checkpoint in the
 * swarm's IPFS store (store/checkpoint.ts; `tessera run create --base DIR` adds it) that peers
 * fetch from each other. Without a CID a peer passes the checkpoint itself (`tessera node --base`),
 * or the base is the manifest's init(seed) model when that is what the hash names.
 */
export const BaseModelSchema = z
  .object({
    weightsHash: Sha256Hex,
    cid: CidString.optional(),
  })
  .strict();

export const ManifestSchema = z
  .object({
    version: z.literal(MANIFEST_VERSION),
    /** Free-form human label; part of the identity like everything else. */
    name: z.string().max(256).optional(),
    model: ModelConfigSchema,
    tokenizerSha256: Sha256Hex,
    /** The tokenizer.json as a UnixFS file CID; peers fetch it and check tokenizerSha256. */
    tokenizerCid: CidString.optional(),
    dataset: DatasetSchema,
    hyper: HyperSchema,
    /** weightsHash (sha256 of the flat float32 LE parameters) of θ at round 0. */
    genesisWeightsHash: Sha256Hex,
    /** The genesis state as a checkpoint directory CID (store/checkpoint.ts); else θ0 = init(seed). */
    genesisCid: CidString.optional(),
    storage: StorageSchema.optional(),
    network: NetworkSchema.optional(),
    seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    timing: TimingSchema,
    /**
     * Fine-tuning: the base model. Without `lora` this is full fine-tuning: θ0 is the base, so
     * genesisWeightsHash must be its hash. Absent: θ0 is init(seed) (pre-training).
     */
    base: BaseModelSchema.optional(),
    /**
     * LoRA fine-tuning of `base` (model/lora.ts: rank r, alpha, GPT-2 target modules): θ — what
     * the rounds train, exchange, encode, apply, hash, score and audit — is the adapter buffer
     * alone (PEFT init from `seed`, genesisWeightsHash its hash); the base stays frozen.
     */
    lora: LoraConfigSchema.optional(),
  })
  .strict()
  .superRefine((m, ctx) => {
    if (m.lora && !m.base) ctx.addIssue({ code: 'custom', path: ['lora'], message: 'LoRA needs a base model' });
    if (m.base && !m.lora && m.genesisWeightsHash !== m.base.weightsHash)
      ctx.addIssue({
        code: 'custom',
        path: ['genesisWeightsHash'],
        message: 'full fine-tuning starts from the base: genesisWeightsHash must equal base.weightsHash',
      });
    if (m.lora)
      try {
        loraSites({ arch: 'gpt2', config: m.model }, m.lora);
      } catch (e) {
        ctx.addIssue({ code: 'custom', path: ['lora'], message: (e as Error).message });
      }
  });

export type Manifest = z.infer<typeof ManifestSchema>;
export type ManifestInput = z.input<typeof ManifestSchema>;

export interface DecodedManifest {
  manifest: Manifest;
  /** sha256 hex of `bytes`. */
  runId: string;
  /** The canonical encoding. */
  bytes: Uint8Array;
}

function issuesOf(err: z.ZodError): string[] {
  return err.issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`);
}

function finish(value: unknown): DecodedManifest {
  const r = ManifestSchema.safeParse(value);
  if (!r.success) throw new ManifestError('invalid manifest', issuesOf(r.error));
  const bytes = canonicalBytes(r.data);
  if (bytes.length > MAX_MANIFEST_BYTES)
    throw new ManifestError(`canonical manifest is ${bytes.length} bytes, over the ${MAX_MANIFEST_BYTES}-byte limit`);
  return { manifest: r.data, runId: sha256Hex(bytes), bytes };
}

/** Validates a manifest object (defaults filled in) and computes its canonical bytes and runId. */
export function createManifest(input: ManifestInput): DecodedManifest {
  return finish(input);
}

/** The canonical bytes of an already-valid manifest. */
export function encodeManifest(m: Manifest): Uint8Array {
  return createManifest(m).bytes;
}

export interface DecodeOptions {
  /** Reject input that is not byte-for-byte the canonical encoding (use on the wire). */
  requireCanonical?: boolean;
}

/**
 * Parses a manifest from UTF-8 bytes or a JSON string. Throws ManifestError on anything
 * oversized, not UTF-8, not JSON, or not a valid manifest. The runId is always the hash of the
 * canonical re-encoding, so whitespace and key order in the input do not change it.
 */
export function decodeManifest(input: Uint8Array | string, opts: DecodeOptions = {}): DecodedManifest {
  let text: string;
  if (typeof input === 'string') {
    if (input.length > MAX_MANIFEST_BYTES || Buffer.byteLength(input, 'utf8') > MAX_MANIFEST_BYTES) {
      throw new ManifestError(`manifest is over the ${MAX_MANIFEST_BYTES}-byte limit`);
    }
    text = input;
  } else if (input instanceof Uint8Array) {
    if (input.length > MAX_MANIFEST_BYTES)
      throw new ManifestError(`manifest is ${input.length} bytes, over the ${MAX_MANIFEST_BYTES}-byte limit`);
    try {
      text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(input);
    } catch {
      throw new ManifestError('manifest is not valid UTF-8');
    }
  } else {
    throw new ManifestError('manifest must be bytes or a JSON string');
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ManifestError(`manifest is not JSON: ${(e as Error).message}`);
  }
  const out = finish(value);
  if (opts.requireCanonical) {
    const given = typeof input === 'string' ? new TextEncoder().encode(input) : input;
    if (!bytesEqual(given, out.bytes)) throw new ManifestError('manifest is not in canonical form');
  }
  return out;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
