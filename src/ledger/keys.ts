/**
 * EVM keys: a node's payout/signing key lives in its data directory (`evm.key`, hex, mode 0600),
 * created on first use, like the libp2p identity next to it. `--key <file>` points at another one.
 */
import { existsSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import type { Hex } from 'viem';
import { generatePrivateKey } from 'viem/accounts';
import { InvalidInputError } from '../util/errors.js';

export const EVM_KEY_FILE = 'evm.key';

/** Reads a hex private key file (with or without 0x); a clear error for anything else. */
export function readKey(file: string): Hex {
  let k: string;
  try {
    k = readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new InvalidInputError(`cannot read key file ${file}: ${(e as Error).message}`);
  }
  const hex = (k.startsWith('0x') ? k : `0x${k}`) as Hex;
  if (!/^0x[0-9a-fA-F]{64}$/.test(hex)) throw new InvalidInputError(`${file}: expected a 32-byte hex private key`);
  return hex;
}

/** The node's EVM key from `dataDir/evm.key`, generated (and saved 0600) if there is none. */
export function loadOrCreateEvmKey(dataDir: string): Hex {
  const file = join(dataDir, EVM_KEY_FILE);
  if (existsSync(file)) return readKey(file);
  const k = generatePrivateKey();
  writeFileSync(file, k + '\n', { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600);
  return k;
}
