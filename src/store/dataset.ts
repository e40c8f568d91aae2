/**
 * Datasets on IPFS. `addDataset` tokenizes a corpus, packs each split into fixed-size token
 * shards, stores every shard as one raw block (CID = sha256 of its bytes, so any peer can serve
 * it and any reader can verify it), stores the tokenizer.json as a UnixFS file, and writes a
 * dag-json manifest that links them all: the manifest's CID names the dataset.
 *
 * Shard bytes: little-endian uint16 tokens when the vocabulary fits 16 bits, else uint32.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync, createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { z } from 'zod';
import { CID } from 'multiformats/cid';
import * as raw from 'multiformats/codecs/raw';
import { sha256 } from 'multiformats/hashes/sha2';
import * as dagJson from '@ipld/dag-json';
import * as dagPb from '@ipld/dag-pb';
import { CarWriter } from '@ipld/car/writer';
import type { Tokenizer } from '../data/index.js';
import type { TokenArray } from '../data/batches.js';
import { InvalidInputError, TesseraError } from '../util/errors.js';
import { MissingBlockError, type Store } from './index.js';

export const DATASET_VERSION = 1;
/** Largest manifest block accepted (a manifest lists shard CIDs, about 70 bytes each). */
export const MAX_MANIFEST_BYTES = 4 << 20;
/** Default shard size: 256 Ki tokens (512 KiB at 16-bit), well under bitswap's 2 MiB block limit. */
export const DEFAULT_SHARD_TOKENS = 1 << 18;
/** Largest shard accepted: 1 MiB of block, whatever the token width. */
export const MAX_SHARD_BYTES = 1 << 20;

export class DatasetError extends TesseraError {
  constructor(message: string) {
    super('BAD_DATASET', message);
  }
}

const CidSchema = z.custom<CID>((v) => CID.asCID(v) !== null, { message: 'must be a CID link' });
const ShardSchema = z.object({ cid: CidSchema, tokens: z.number().int().min(1).max(MAX_SHARD_BYTES) }).strict();

export const DatasetManifestSchema = z
  .object({
    version: z.literal(DATASET_VERSION),
    name: z.string().min(1).max(256),
    tokenizer: z
      .object({
        cid: CidSchema,
        sha256: z.string().regex(/^[0-9a-f]{64}$/),
        vocabSize: z
          .number()
          .int()
          .min(2)
          .max(1 << 24),
      })
      .strict(),
    /** Bytes per token in the shards (2: uint16 LE, 4: uint32 LE). */
    tokenBytes: z.union([z.literal(2), z.literal(4)]),
    shardTokens: z
      .number()
      .int()
      .min(1)
      .max(MAX_SHARD_BYTES / 2),
    train: z
      .object({
        tokens: z.number().int().min(0),
        sha256: z.string().regex(/^[0-9a-f]{64}$/),
        shards: z.array(ShardSchema).max(1 << 20),
      })
      .strict(),
    val: z
      .object({
        tokens: z.number().int().min(0),
        sha256: z.string().regex(/^[0-9a-f]{64}$/),
        shards: z.array(ShardSchema).max(1 << 20),
      })
      .strict(),
    /** What the tokens were made from: a name and the sha256 of every source document set. */
    sources: z
      .array(z.object({ name: z.string().max(4096), sha256: z.string().regex(/^[0-9a-f]{64}$/) }).strict())
      .max(100_000),
  })
  .strict();
export type DatasetManifest = z.infer<typeof DatasetManifestSchema>;

export interface AddDatasetInput {
  name: string;
  tokenizer: Tokenizer;
  train: TokenArray;
  val: TokenArray;
  sources: { name: string; sha256: string }[];
  shardTokens?: number;
}

function tokenHash(tokens: TokenArray): string {
  const h = createHash('sha256');
  const u32 = Uint32Array.from(tokens);
  h.update(new Uint8Array(u32.buffer));
  return h.digest('hex');
}

async function putRaw(store: Store, bytes: Uint8Array): Promise<CID> {
  const cid = CID.createV1(raw.code, await sha256.digest(bytes));
  await store.putBlock(cid, bytes);
  return cid;
}

function shardBytes(tokens: TokenArray, tokenBytes: 2 | 4): Uint8Array {
  const out = new Uint8Array(tokens.length * tokenBytes);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < tokens.length; i++) {
    if (tokenBytes === 2) dv.setUint16(2 * i, tokens[i], true);
    else dv.setUint32(4 * i, tokens[i], true);
  }
  return out;
}

/** Stores the shards, tokenizer and manifest; returns the dataset CID and its manifest. */
export async function addDataset(
  store: Store,
  input: AddDatasetInput,
  onShard?: (done: number, total: number) => void,
): Promise<{ cid: CID; manifest: DatasetManifest }> {
  const shardTokens = input.shardTokens ?? DEFAULT_SHARD_TOKENS;
  const vocab = input.tokenizer.vocabSize;
  const tokenBytes: 2 | 4 = vocab <= 65536 ? 2 : 4;
  if (!Number.isInteger(shardTokens) || shardTokens < 1 || shardTokens * tokenBytes > MAX_SHARD_BYTES) {
    throw new InvalidInputError(`shard size must be 1..${MAX_SHARD_BYTES / tokenBytes} tokens, got ${shardTokens}`);
  }
  const total = Math.ceil(input.train.length / shardTokens) + Math.ceil(input.val.length / shardTokens);
  let done = 0;
  const split = async (tokens: TokenArray) => {
    const shards: { cid: CID; tokens: number }[] = [];
    for (let o = 0; o < tokens.length; o += shardTokens) {
      const part = tokens.subarray(o, Math.min(tokens.length, o + shardTokens)) as TokenArray;
      shards.push({ cid: await putRaw(store, shardBytes(part, tokenBytes)), tokens: part.length });
      onShard?.(++done, total);
    }
    return { tokens: tokens.length, sha256: tokenHash(tokens), shards };
  };
  const tokJson = new TextEncoder().encode(input.tokenizer.serialize());
  const tokCid = await store.fs.addBytes(tokJson);
  const manifest: DatasetManifest = {
    version: DATASET_VERSION,
    name: input.name,
    tokenizer: { cid: tokCid, sha256: input.tokenizer.hash(), vocabSize: vocab },
    tokenBytes,
    shardTokens,
    train: await split(input.train),
    val: await split(input.val),
    sources: input.sources,
  };
  DatasetManifestSchema.parse(manifest);
  const bytes = dagJson.encode(manifest);
  const cid = CID.createV1(dagJson.code, await sha256.digest(bytes));
  await store.putBlock(cid, bytes);
  // The adder keeps what it added: pinned, so garbage collection never drops the only copy.
  await store.pin(cid);
  recordDataset(store, cid, manifest);
  return { cid, manifest };
}

export async function readManifest(
  store: Store,
  cid: CID,
  options: { signal?: AbortSignal } = {},
): Promise<DatasetManifest> {
  if (cid.code !== dagJson.code)
    throw new DatasetError(`${cid} is not a dataset manifest (codec 0x${cid.code.toString(16)}, expected dag-json)`);
  const bytes = await store.getBlock(cid, options);
  if (bytes.length > MAX_MANIFEST_BYTES)
    throw new DatasetError(`manifest ${cid} is ${bytes.length} bytes, over ${MAX_MANIFEST_BYTES}`);
  let value: unknown;
  try {
    value = dagJson.decode(bytes);
  } catch (err) {
    throw new DatasetError(`manifest ${cid} is not valid dag-json: ${(err as Error).message}`);
  }
  const r = DatasetManifestSchema.safeParse(value);
  if (!r.success)
    throw new DatasetError(
      `manifest ${cid} is invalid: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
    );
  // dag-json decodes links with its own copy of multiformats; re-make them as ours, which
  // Helia's and UnixFS's CID checks recognise.
  const own = (c: CID) => CID.decode(c.bytes);
  const d = r.data;
  return {
    ...d,
    tokenizer: { ...d.tokenizer, cid: own(d.tokenizer.cid) },
    train: { ...d.train, shards: d.train.shards.map((s) => ({ ...s, cid: own(s.cid) })) },
    val: { ...d.val, shards: d.val.shards.map((s) => ({ ...s, cid: own(s.cid) })) },
  };
}

/** The tokens of one shard, verified by hash and checked against the manifest. */
export async function readShard(
  store: Store,
  m: DatasetManifest,
  shard: { cid: CID; tokens: number },
  options: { signal?: AbortSignal } = {},
): Promise<Uint32Array> {
  const bytes = await store.getBlock(shard.cid, options);
  if (bytes.length !== shard.tokens * m.tokenBytes)
    throw new DatasetError(
      `shard ${shard.cid} has ${bytes.length} bytes, manifest says ${shard.tokens} tokens × ${m.tokenBytes}`,
    );
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Uint32Array(shard.tokens);
  for (let i = 0; i < shard.tokens; i++) {
    const t = m.tokenBytes === 2 ? dv.getUint16(2 * i, true) : dv.getUint32(4 * i, true);
    if (t >= m.tokenizer.vocabSize)
      throw new DatasetError(
        `shard ${shard.cid}: token ${t} at ${i} is outside the vocabulary (${m.tokenizer.vocabSize})`,
      );
    out[i] = t;
  }
  return out;
}

// ───────────── local index of added datasets (for `tessera data ls`) ─────────────

const IndexSchema = z
  .array(
    z
      .object({
        cid: z.string(),
        name: z.string(),
        trainTokens: z.number(),
        valTokens: z.number(),
        shards: z.number(),
        added: z.string(),
      })
      .strict(),
  )
  .max(100_000);
export type DatasetIndex = z.infer<typeof IndexSchema>;

export function listDatasets(store: Store): DatasetIndex {
  const p = join(store.dir, 'datasets.json');
  if (!existsSync(p)) return [];
  const r = IndexSchema.safeParse(JSON.parse(readFileSync(p, 'utf8')));
  return r.success ? r.data : [];
}

function recordDataset(store: Store, cid: CID, m: DatasetManifest): void {
  const list = listDatasets(store).filter((x) => x.cid !== cid.toString());
  list.push({
    cid: cid.toString(),
    name: m.name,
    trainTokens: m.train.tokens,
    valTokens: m.val.tokens,
    shards: m.train.shards.length + m.val.shards.length,
    added: new Date().toISOString(),
  });
  const p = join(store.dir, 'datasets.json');
  writeFileSync(p + '.tmp', JSON.stringify(list, null, 2) + '\n');
  renameSync(p + '.tmp', p);
}

// ───────────── CAR export ─────────────

/** CIDs a block links to (raw: none; dag-pb: its links; dag-json: every CID in the value). */
function linksOf(cid: CID, bytes: Uint8Array): CID[] {
  if (cid.code === raw.code) return [];
  if (cid.code === dagPb.code) return dagPb.decode(bytes).Links.map((l) => l.Hash);
  if (cid.code === dagJson.code) {
    const out: CID[] = [];
    const walk = (v: unknown): void => {
      const c = CID.asCID(v);
      if (c) {
        out.push(c);
        return;
      }
      if (Array.isArray(v)) v.forEach(walk);
      else if (v && typeof v === 'object') Object.values(v).forEach(walk);
    };
    walk(dagJson.decode(bytes));
    return out;
  }
  throw new DatasetError(`cannot walk links of codec 0x${cid.code.toString(16)} (${cid})`);
}

/**
 * Writes the whole DAG under `root` (depth-first, each block once) as a CARv1 file, the format
 * Filecoin deals and `ipfs-car` take. Fails with MissingBlockError if any block is absent.
 */
export async function exportCar(
  store: Store,
  root: CID,
  file: string,
  options: { signal?: AbortSignal } = {},
): Promise<{ blocks: number; bytes: number }> {
  const { writer, out } = CarWriter.create([root]);
  const stream = createWriteStream(file);
  const pump = (async () => {
    for await (const chunk of out) if (!stream.write(chunk)) await once(stream, 'drain');
    stream.end();
    await once(stream, 'finish');
  })();
  let blocks = 0,
    bytes = 0;
  const seen = new Set<string>();
  const stack: CID[] = [root];
  try {
    while (stack.length) {
      const cid = stack.pop()!;
      const key = cid.toString();
      if (seen.has(key)) continue;
      seen.add(key);
      const b = await store.getBlock(cid, options);
      await writer.put({ cid, bytes: b });
      blocks++;
      bytes += b.length;
      const links = linksOf(cid, b);
      for (let i = links.length - 1; i >= 0; i--) stack.push(links[i]);
    }
  } catch (err) {
    await writer.close();
    await pump.catch(() => undefined);
    throw err instanceof MissingBlockError || err instanceof TesseraError
      ? err
      : new DatasetError((err as Error).message);
  }
  await writer.close();
  await pump;
  return { blocks, bytes };
}
