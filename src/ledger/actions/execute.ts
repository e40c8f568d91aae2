/**
 * After the deadline, anyone executes a proposal: it passes iff yes votes alone reach the quorum and
 * yes > no. Proposals settle in id order: this settles every earlier unsettled one first. A passed
 * proposal executed later than the run's execution window after its deadline is expired instead.
 */
import { z } from 'zod';
import { hexToString, type Hex } from 'viem';
import { read, write, type LedgerClient } from '../client.js';
import type { ContractRevertError, ChainUnreachableError } from '../errors.js';
import { InvalidInputError } from '../../util/errors.js';
import { settingKey } from './propose.js';

const schema = z.object({ id: z.bigint().nonnegative() });
export type ExecuteParameters = z.input<typeof schema>;
export type ExecuteReturnType = { hash: Hex; passed: boolean };
export type ExecuteErrorType = InvalidInputError | ContractRevertError | ChainUnreachableError;

export async function execute(c: LedgerClient, params: ExecuteParameters): Promise<ExecuteReturnType> {
  const p = schema.safeParse(params);
  if (!p.success) throw new InvalidInputError(`execute: ${p.error.message}`);
  const { hash, result } = await write(c, 'execute', 'execute', [p.data.id]);
  return { hash, passed: result as boolean };
}

/** The swarm reads the outcome: the current value of a governed setting ('' if never set). */
export async function getSetting(c: LedgerClient, key: string): Promise<string> {
  const v = await read<Hex>(c, 'get', [settingKey(key)]);
  return v === '0x' ? '' : hexToString(v);
}
