/** Share-weighted vote; locks the voter's shares until the proposal's deadline. */
import { z } from 'zod';
import type { Hex } from 'viem';
import { write, type LedgerClient } from '../client.js';
import type { ContractRevertError, ChainUnreachableError } from '../errors.js';
import { InvalidInputError } from '../../util/errors.js';

const schema = z.object({ id: z.bigint().nonnegative(), support: z.boolean() });
export type VoteParameters = z.input<typeof schema>;
export type VoteReturnType = { hash: Hex };
export type VoteErrorType = InvalidInputError | ContractRevertError | ChainUnreachableError;

export async function vote(c: LedgerClient, params: VoteParameters): Promise<VoteReturnType> {
  const p = schema.safeParse(params);
  if (!p.success) throw new InvalidInputError(`vote: ${p.error.message}`);
  const { hash } = await write(c, 'vote', 'vote', [p.data.id, p.data.support]);
  return { hash };
}
