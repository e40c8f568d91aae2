/**
 * Signed, schema-checked, size-capped protocol messages ("envelopes").
 *
 * Every control message a peer sends is sealed with its ed25519 identity key. A receiver
 * needs nothing but the bytes: the sender's public key is recovered from the `from` peer id
 * (ed25519 peer ids embed the key as an identity multihash), so no key exchange and no
 * lookup are involved. Untrusted input is rejected with an EnvelopeError carrying a reason;
 * openMessage never throws anything else, whatever the bytes (see the fuzz test).
 *
 * Frame (all integers big-endian):
 *
 *   'T' 'S' 'R' | v:u8=1 | kindLen:u8 | kind (ascii) | fromLen:u8 | from (base58 peer id)
 *   | seq:u64 | bodyLen:u32 | body (canonical JSON, utf-8) | sigLen:u8 (0 or 64) | sig
 *
 * The signature covers DOMAIN 0x00 ctxLen:u16 ctx, then every frame byte before sigLen.
 * `ctx` is an optional context string (pubsub uses the topic, which names the run) that is
 * signed but not sent: a message sealed for one run does not open in another.
 *
 * The body is canonical JSON (object keys sorted, no whitespace), so sealing the same body
 * twice gives the same bytes. JSON keeps control messages readable in logs; bulk tensors
 * never travel in envelopes (see bulk.ts).
 */
import { createPrivateKey, createPublicKey, sign as edSign, verify as edVerify, type KeyObject } from 'node:crypto';
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id';
import type { Ed25519PrivateKey } from '@libp2p/interface';
import type { z } from 'zod';
import { InvalidInputError } from '../util/errors.js';
import { EnvelopeError } from './errors.js';

export const ENVELOPE_VERSION = 1;
/** Default cap on a whole envelope: control messages are small. */
export const DEFAULT_MAX_ENVELOPE_BYTES = 64 * 1024;
/** Hard limits of the frame format. */
export const MAX_KIND_LENGTH = 64;
export const MAX_FROM_LENGTH = 128;
export const SIGNATURE_LENGTH = 64;

const MAGIC = [0x54, 0x53, 0x52]; // "TSR"
const DOMAIN = new TextEncoder().encode('tessera/envelope/v1');
const KIND_RE = /^[a-z][a-z0-9._:/-]*$/;
const HEADER_MIN = 3 + 1 + 1 + 1 + 1 + 1 + 8 + 4 + 1;

/** A zod schema per message kind. Unknown kinds are rejected. */
export type Schemas = Record<string, z.ZodType>;

/** What openMessage returns: a union discriminated by `kind`, with the body's parsed type. */
export type OpenedMessage<S extends Schemas> = {
  [K in keyof S & string]: {
    v: typeof ENVELOPE_VERSION;
    kind: K;
    /** Peer id (string) of the signer, verified. */
    from: string;
    seq: number;
    body: z.output<S[K]>;
    /** Size of the envelope in bytes, for accounting. */
    bytes: number;
  };
}[keyof S & string];

export interface SealOptions {
  /** Sequence number / nonce; defaults to a per-process monotonic microsecond clock. */
  seq?: number;
  /** Context string signed along (e.g. the run's topic); the receiver must pass the same. */
  context?: string;
}

export interface OpenOptions<S extends Schemas> {
  schemas: S;
  /** Reject anything larger, before parsing. Default DEFAULT_MAX_ENVELOPE_BYTES. */
  maxBytes?: number;
  /** Only accept messages signed by this peer id. */
  expectFrom?: string;
  /** Must equal the context the sender sealed with (default: none). */
  context?: string;
  /** When given, a replayed (from, seq) is rejected with reason 'replay'; fresh ones are recorded. */
  replay?: ReplayGuard;
}

// ---------------------------------------------------------------------------------------
// sequence numbers

let lastSeq = 0;
/**
 * A fresh sequence number: microseconds since the epoch, strictly increasing within this
 * process. Time-based so that a restarted peer does not reuse numbers it used before.
 */
export function nextSeq(): number {
  const now = Date.now() * 1000;
  lastSeq = now > lastSeq ? now : lastSeq + 1;
  return lastSeq;
}

// ---------------------------------------------------------------------------------------
// canonical JSON

/** JSON with sorted object keys and no whitespace. Throws InvalidInputError on non-JSON values. */
export function canonicalJson(value: unknown): string {
  return encodeValue(value, 0);
}

function encodeValue(v: unknown, depth: number): string {
  if (depth > 64) throw new InvalidInputError('envelope body nests deeper than 64 levels');
  if (v === null) return 'null';
  switch (typeof v) {
    case 'boolean':
      return v ? 'true' : 'false';
    case 'string':
      return JSON.stringify(v);
    case 'number':
      if (!Number.isFinite(v)) throw new InvalidInputError(`envelope body holds a non-finite number ${v}`);
      return JSON.stringify(v);
    case 'object': {
      if (Array.isArray(v)) return `[${v.map((x) => encodeValue(x, depth + 1)).join(',')}]`;
      const proto = Object.getPrototypeOf(v) as unknown;
      if (proto !== Object.prototype && proto !== null) {
        throw new InvalidInputError('envelope body holds a non-plain object (encode bytes as hex or base64)');
      }
      const obj = v as Record<string, unknown>;
      const parts: string[] = [];
      for (const k of Object.keys(obj).sort()) {
        if (obj[k] === undefined) continue; // like JSON.stringify
        parts.push(`${JSON.stringify(k)}:${encodeValue(obj[k], depth + 1)}`);
      }
      return `{${parts.join(',')}}`;
    }
    default:
      throw new InvalidInputError(`envelope body holds a ${typeof v}, which JSON cannot carry`);
  }
}

// ---------------------------------------------------------------------------------------
// keys

const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');
const privateKeyCache = new WeakMap<Ed25519PrivateKey, KeyObject>();
const PUBLIC_KEY_CACHE_MAX = 4096;
const publicKeyCache = new Map<string, KeyObject>();

function signingKey(privateKey: Ed25519PrivateKey): KeyObject {
  let key = privateKeyCache.get(privateKey);
  if (key == null) {
    if (privateKey?.type !== 'Ed25519' || !(privateKey.raw instanceof Uint8Array) || privateKey.raw.length < 32) {
      throw new InvalidInputError('sealMessage needs an Ed25519 private key');
    }
    // libp2p keeps seed || public key; PKCS#8 wants the 32-byte seed.
    const der = Buffer.concat([PKCS8_ED25519_PREFIX, privateKey.raw.subarray(0, 32)]);
    key = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
    privateKeyCache.set(privateKey, key);
  }
  return key;
}

/** The ed25519 public key embedded in a peer id string, or an EnvelopeError('bad-sender'). */
function verifyingKey(from: string): KeyObject {
  const cached = publicKeyCache.get(from);
  if (cached != null) return cached;
  let raw: Uint8Array;
  try {
    const peerId = peerIdFromString(from);
    if (peerId.type !== 'Ed25519' || peerId.publicKey == null) throw new Error(`peer id type ${peerId.type}`);
    raw = peerId.publicKey.raw;
    if (raw.length !== 32) throw new Error('embedded key is not 32 bytes');
    // Must be the canonical spelling, or one key could appear under several ids.
    if (peerId.toString() !== from) throw new Error('non-canonical peer id encoding');
  } catch (err) {
    throw new EnvelopeError('bad-sender', `'from' is not an ed25519 peer id (${errMessage(err)})`, { cause: err });
  }
  let key: KeyObject;
  try {
    key = createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, raw]), format: 'der', type: 'spki' });
  } catch (err) {
    throw new EnvelopeError('bad-sender', `'from' embeds an invalid ed25519 key (${errMessage(err)})`, { cause: err });
  }
  if (publicKeyCache.size >= PUBLIC_KEY_CACHE_MAX) {
    const oldest = publicKeyCache.keys().next().value;
    if (oldest !== undefined) publicKeyCache.delete(oldest);
  }
  publicKeyCache.set(from, key);
  return key;
}

function signedBytes(frameUnsigned: Uint8Array, context: string): Buffer {
  const ctx = Buffer.from(context, 'utf8');
  if (ctx.length > 0xffff) throw new InvalidInputError('envelope context longer than 65535 bytes');
  const head = Buffer.alloc(DOMAIN.length + 3);
  head.set(DOMAIN, 0);
  head[DOMAIN.length] = 0;
  head.writeUInt16BE(ctx.length, DOMAIN.length + 1);
  return Buffer.concat([head, ctx, frameUnsigned]);
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------------------------------
// seal / open

/** The peer id string of an ed25519 private key (as used in `from`). */
export function peerIdOf(privateKey: Ed25519PrivateKey): string {
  let id = fromCache.get(privateKey);
  if (id == null) {
    id = peerIdFromPrivateKey(privateKey).toString();
    fromCache.set(privateKey, id);
  }
  return id;
}
const fromCache = new WeakMap<Ed25519PrivateKey, string>();

/**
 * Seals a message: frames {v, kind, from, seq, body} and signs it with `privateKey`.
 * Throws InvalidInputError for a local mistake (bad kind, non-JSON body).
 */
export function sealMessage(
  privateKey: Ed25519PrivateKey,
  kind: string,
  body: unknown,
  options: SealOptions = {},
): Uint8Array {
  if (typeof kind !== 'string' || kind.length === 0 || kind.length > MAX_KIND_LENGTH || !KIND_RE.test(kind)) {
    throw new InvalidInputError(`invalid message kind ${JSON.stringify(kind)}`);
  }
  const seq = options.seq ?? nextSeq();
  if (!Number.isSafeInteger(seq) || seq < 0) throw new InvalidInputError(`invalid seq ${seq}`);
  const key = signingKey(privateKey);
  const from = Buffer.from(peerIdOf(privateKey), 'ascii');
  const kindBytes = Buffer.from(kind, 'ascii');
  const bodyBytes = Buffer.from(canonicalJson(body), 'utf8');
  if (bodyBytes.length > 0xffffffff) throw new InvalidInputError('envelope body too large');

  const unsignedLen = 3 + 1 + 1 + kindBytes.length + 1 + from.length + 8 + 4 + bodyBytes.length;
  const out = Buffer.alloc(unsignedLen + 1 + SIGNATURE_LENGTH);
  let o = 0;
  for (const m of MAGIC) out[o++] = m;
  out[o++] = ENVELOPE_VERSION;
  out[o++] = kindBytes.length;
  out.set(kindBytes, o);
  o += kindBytes.length;
  out[o++] = from.length;
  out.set(from, o);
  o += from.length;
  out.writeBigUInt64BE(BigInt(seq), o);
  o += 8;
  out.writeUInt32BE(bodyBytes.length, o);
  o += 4;
  out.set(bodyBytes, o);
  o += bodyBytes.length;
  const sig = edSign(null, signedBytes(out.subarray(0, unsignedLen), options.context ?? ''), key);
  out[o++] = SIGNATURE_LENGTH;
  out.set(sig, o);
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/** The parsed but unverified fields of a frame. */
interface RawFrame {
  kind: string;
  from: string;
  seq: number;
  body: Uint8Array;
  unsigned: Uint8Array;
  sig: Uint8Array;
}

function parseFrame(b: Uint8Array): RawFrame {
  const bad = (why: string): never => {
    throw new EnvelopeError('malformed', why);
  };
  if (b.length < HEADER_MIN) bad(`frame of ${b.length} bytes is shorter than the minimal header`);
  if (b[0] !== MAGIC[0] || b[1] !== MAGIC[1] || b[2] !== MAGIC[2]) bad('bad magic');
  if (b[3] !== ENVELOPE_VERSION) bad(`unsupported envelope version ${b[3]}`);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let o = 4;
  const need = (n: number, what: string): void => {
    if (o + n > b.length) bad(`truncated ${what}`);
  };
  need(1, 'kind length');
  const kindLen = b[o++];
  if (kindLen === 0 || kindLen > MAX_KIND_LENGTH) bad(`kind length ${kindLen}`);
  need(kindLen, 'kind');
  const kind = asciiOrNull(b, o, kindLen);
  if (kind == null || !KIND_RE.test(kind)) bad('kind is not a valid identifier');
  o += kindLen;
  need(1, 'from length');
  const fromLen = b[o++];
  if (fromLen === 0 || fromLen > MAX_FROM_LENGTH) bad(`from length ${fromLen}`);
  need(fromLen, 'from');
  const from = asciiOrNull(b, o, fromLen);
  if (from == null) bad('from is not ascii');
  o += fromLen;
  need(8, 'seq');
  const seqBig = dv.getBigUint64(o);
  o += 8;
  if (seqBig > BigInt(Number.MAX_SAFE_INTEGER)) bad('seq exceeds 2^53-1');
  need(4, 'body length');
  const bodyLen = dv.getUint32(o);
  o += 4;
  need(bodyLen, 'body');
  const body = b.subarray(o, o + bodyLen);
  o += bodyLen;
  const unsignedEnd = o;
  need(1, 'signature length');
  const sigLen = b[o++];
  if (sigLen !== 0 && sigLen !== SIGNATURE_LENGTH) bad(`signature length ${sigLen}`);
  need(sigLen, 'signature');
  const sig = b.subarray(o, o + sigLen);
  o += sigLen;
  if (o !== b.length) bad(`${b.length - o} trailing bytes`);
  return { kind: kind!, from: from!, seq: Number(seqBig), body, unsigned: b.subarray(0, unsignedEnd), sig };
}

function asciiOrNull(b: Uint8Array, off: number, len: number): string | null {
  let s = '';
  for (let i = off; i < off + len; i++) {
    const c = b[i];
    if (c < 0x21 || c > 0x7e) return null;
    s += String.fromCharCode(c);
  }
  return s;
}

/**
 * Opens an envelope: size cap (before parsing), frame, signature, sender, kind, schema and,
 * optionally, replay. Throws only EnvelopeError (with `.reason`), whatever `bytes` holds.
 */
export function openMessage<S extends Schemas>(bytes: Uint8Array, options: OpenOptions<S>): OpenedMessage<S> {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_ENVELOPE_BYTES;
  if (!(bytes instanceof Uint8Array)) throw new EnvelopeError('malformed', 'not a byte array');
  if (bytes.byteLength > maxBytes) {
    throw new EnvelopeError('oversized', `${bytes.byteLength} bytes exceeds the cap of ${maxBytes}`);
  }
  const f = parseFrame(bytes);
  if (f.sig.length === 0) throw new EnvelopeError('unsigned', `${f.kind} from ${f.from} carries no signature`);
  const schema = Object.hasOwn(options.schemas, f.kind) ? options.schemas[f.kind] : undefined;
  if (schema == null) throw new EnvelopeError('unknown-kind', `no schema for kind ${JSON.stringify(f.kind)}`);
  if (options.expectFrom != null && f.from !== options.expectFrom) {
    throw new EnvelopeError('bad-sender', `expected a message from ${options.expectFrom}, got one from ${f.from}`);
  }
  const key = verifyingKey(f.from);
  let ok: boolean;
  try {
    ok = edVerify(null, signedBytes(f.unsigned, options.context ?? ''), key, f.sig);
  } catch (err) {
    throw new EnvelopeError('bad-signature', `signature check failed (${errMessage(err)})`, { cause: err });
  }
  if (!ok) throw new EnvelopeError('bad-signature', `${f.kind} #${f.seq} is not signed by ${f.from}`);

  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(f.body));
  } catch (err) {
    throw new EnvelopeError('malformed', `body is not valid JSON (${errMessage(err)})`, { cause: err });
  }
  let parsed: ReturnType<z.ZodType['safeParse']>;
  try {
    parsed = schema.safeParse(json);
  } catch (err) {
    throw new EnvelopeError('schema', `schema check threw (${errMessage(err)})`, { cause: err });
  }
  if (!parsed.success) {
    const issues = parsed.error.issues.slice(0, 3).map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`);
    throw new EnvelopeError('schema', `${f.kind} body: ${issues.join('; ')}`, { cause: parsed.error });
  }
  options.replay?.accept(f.from, f.seq);
  return {
    v: ENVELOPE_VERSION,
    kind: f.kind,
    from: f.from,
    seq: f.seq,
    body: parsed.data,
    bytes: bytes.byteLength,
  } as OpenedMessage<S>;
}

// ---------------------------------------------------------------------------------------
// replay guard

export interface ReplayGuardOptions {
  /**
   * A seq more than `window` below the highest seen from the same sender is stale.
   * Default 120e6: two minutes of the default microsecond-clock sequence numbers.
   */
  window?: number;
  /** Most seqs remembered per sender; beyond it the oldest are forgotten (and become stale). */
  maxPerSender?: number;
  /** Most senders tracked; the least recently seen is forgotten beyond it. */
  maxSenders?: number;
}

export type ReplayVerdict = 'fresh' | 'duplicate' | 'stale';

interface SenderWindow {
  high: number;
  /** Everything at or below floor is stale. */
  floor: number;
  seen: Set<number>;
}

/**
 * Per-sender sliding window of seen sequence numbers. Only feed it messages whose signature
 * has been checked, or a forger could fill a victim's window.
 */
export class ReplayGuard {
  readonly window: number;
  readonly maxPerSender: number;
  readonly maxSenders: number;
  readonly #senders = new Map<string, SenderWindow>();

  constructor(options: ReplayGuardOptions = {}) {
    this.window = options.window ?? 120e6;
    this.maxPerSender = options.maxPerSender ?? 4096;
    this.maxSenders = options.maxSenders ?? 10_000;
  }

  /** What accept() would decide, without recording anything. */
  check(from: string, seq: number): ReplayVerdict {
    const w = this.#senders.get(from);
    if (w == null) return 'fresh';
    if (seq <= w.floor || seq <= w.high - this.window) return 'stale';
    return w.seen.has(seq) ? 'duplicate' : 'fresh';
  }

  /** Records (from, seq), or throws EnvelopeError('replay') when it is not fresh. */
  accept(from: string, seq: number): void {
    const verdict = this.check(from, seq);
    if (verdict !== 'fresh') throw new EnvelopeError('replay', `${verdict} seq ${seq} from ${from}`);
    let w = this.#senders.get(from);
    if (w == null) {
      w = { high: seq, floor: -1, seen: new Set() };
      if (this.#senders.size >= this.maxSenders) {
        const lru = this.#senders.keys().next().value;
        if (lru !== undefined) this.#senders.delete(lru);
      }
    } else {
      this.#senders.delete(from); // re-insert: Map order doubles as LRU order
    }
    this.#senders.set(from, w);
    w.seen.add(seq);
    if (seq > w.high) w.high = seq;
    if (w.seen.size > this.maxPerSender) this.#prune(w);
  }

  /** Number of senders tracked. */
  get size(): number {
    return this.#senders.size;
  }

  #prune(w: SenderWindow): void {
    const cutoff = w.high - this.window;
    for (const s of w.seen) if (s <= cutoff) w.seen.delete(s);
    w.floor = Math.max(w.floor, cutoff);
    if (w.seen.size > this.maxPerSender) {
      const sorted = [...w.seen].sort((a, b) => a - b);
      const drop = sorted.length - Math.floor(this.maxPerSender / 2);
      for (let i = 0; i < drop; i++) w.seen.delete(sorted[i]);
      w.floor = Math.max(w.floor, sorted[drop - 1]);
    }
  }
}
