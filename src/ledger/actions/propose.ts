/**
 * A shareholder proposes a setting (e.g. key "dataset", value = next dataset CID). The voting period
 * must lie within the run's bounds (`minVotingPeriod`, `maxVotingPeriod`; else `VotingPeriodOutOfBounds`);
 * the deadline is never earlier than the previous proposal's. Voting opens in the next block.
 */
import { z } from 'zod';
import { stringToHex, type Hex } from 'viem';
import { write, type LedgerClient } from '../client.js';
import type { ContractRevertError, ChainUnreachableError } from '../errors.js';
import { InvalidInputError } from '../../util/errors.js';

const schema = z.object({
  key: z.string().min(1).max(31),
  value: z.string(),
  durationSeconds: z
    .number()
    .int()
    .positive()
    .max(2 ** 53 - 1),
});
export type ProposeParameters = z.input<typeof schema>;
export type ProposeReturnType = { hash: Hex; id: bigint };
export type ProposeErrorType = InvalidInputError | ContractRevertError | ChainUnreachableError;

export const settingKey = (k: string): Hex => stringToHex(k, { size: 32 });

export async function propose(c: LedgerClient, params: ProposeParameters): Promise<ProposeReturnType> {
  const p = schema.safeParse(params);
  if (!p.success) throw new InvalidInputError(`propose: ${p.error.message}`);
  const { hash, result } = await write(c, 'propose', 'propose', [
    settingKey(p.data.key),
    stringToHex(p.data.value),
    BigInt(p.data.durationSeconds),
  ]);
  return { hash, id: result as bigint };
}
