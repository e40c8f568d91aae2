/**
 * A persistent ed25519 peer identity kept in a data directory.
 *
 * First start: a fresh key is generated and written to `<dataDir>/identity.json` with mode
 * 0600 (atomically: temp file + link, so two processes racing on one directory end up with
 * the same key). Later starts reload it. A file that exists but cannot be read back into
 * the key it claims to hold is a CorruptFileError: it is never silently replaced, because
 * replacing it would change the peer id and orphan everything the swarm knows about us.
 */
import { randomBytes } from 'node:crypto';
import { chmod, link, mkdir, open, readFile, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import type { AbortOptions, Ed25519PeerId, Ed25519PrivateKey } from '@libp2p/interface';
import { CorruptFileError } from '../util/errors.js';

export const IDENTITY_FILE = 'identity.json';
const FORMAT = 'tessera-identity';
const VERSION = 1;

export interface Identity {
  privateKey: Ed25519PrivateKey;
  peerId: Ed25519PeerId;
  /** Where the key lives. */
  path: string;
  /** True when this call generated the key (first start). */
  created: boolean;
}

interface IdentityFile {
  format: typeof FORMAT;
  v: typeof VERSION;
  type: 'Ed25519';
  /** The peer id the key must derive to: a cheap integrity check on reload. */
  peerId: string;
  /** libp2p protobuf encoding of the private key, base64. */
  privateKey: string;
}

/** Loads the identity in `dataDir`, creating the directory and the key on first start. */
export async function loadOrCreateIdentity(dataDir: string, options: AbortOptions = {}): Promise<Identity> {
  options.signal?.throwIfAborted();
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const path = join(dataDir, IDENTITY_FILE);
  const existing = await loadIdentity(path, options);
  if (existing != null) return existing;

  const privateKey = await generateKeyPair('Ed25519');
  options.signal?.throwIfAborted();
  const peerId = peerIdFromPrivateKey(privateKey);
  const file: IdentityFile = {
    format: FORMAT,
    v: VERSION,
    type: 'Ed25519',
    peerId: peerId.toString(),
    privateKey: Buffer.from(privateKeyToProtobuf(privateKey)).toString('base64'),
  };
  const tmp = join(dataDir, `.${IDENTITY_FILE}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(JSON.stringify(file, null, 2) + '\n');
    await fh.chmod(0o600); // in case the umask or the filesystem ignored the mode above
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    // link() fails with EEXIST when another process created the identity meanwhile:
    // the file appears atomically, complete, and is never overwritten.
    await link(tmp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const winner = await loadIdentity(path, options);
    if (winner == null) throw new CorruptFileError(path, 'identity file vanished while being created');
    return winner;
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
  return { privateKey, peerId, path, created: true };
}

/** Reads an identity file; undefined when it does not exist, CorruptFileError when unusable. */
export async function loadIdentity(path: string, options: AbortOptions = {}): Promise<Identity | undefined> {
  let text: string;
  try {
    text = await readFile(path, { encoding: 'utf8', signal: options.signal });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new CorruptFileError(path, 'identity file is not valid JSON', { cause: err });
  }
  const f = parsed as Partial<IdentityFile> | null;
  if (f == null || typeof f !== 'object' || f.format !== FORMAT) {
    throw new CorruptFileError(path, `not a ${FORMAT} file`);
  }
  if (f.v !== VERSION) throw new CorruptFileError(path, `unsupported identity file version ${String(f.v)}`);
  if (f.type !== 'Ed25519') throw new CorruptFileError(path, `unsupported key type ${String(f.type)}`);
  if (typeof f.privateKey !== 'string' || typeof f.peerId !== 'string') {
    throw new CorruptFileError(path, 'identity file lacks privateKey or peerId');
  }
  let privateKey: Ed25519PrivateKey;
  try {
    const key = privateKeyFromProtobuf(Buffer.from(f.privateKey, 'base64'));
    if (key.type !== 'Ed25519') throw new Error(`key is ${key.type}, not Ed25519`);
    privateKey = key;
  } catch (err) {
    throw new CorruptFileError(path, 'private key cannot be decoded', { cause: err });
  }
  const peerId = peerIdFromPrivateKey(privateKey);
  if (peerId.toString() !== f.peerId) {
    throw new CorruptFileError(path, `private key derives peer id ${peerId.toString()}, file says ${f.peerId}`);
  }
  // Keep the secret private even if someone loosened the mode by hand.
  const st = await stat(path);
  if ((st.mode & 0o077) !== 0) await chmod(path, 0o600);
  return { privateKey, peerId, path, created: false };
}
