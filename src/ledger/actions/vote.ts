/**
 * Share-weighted vote. The weight is the voter's balance at the end of the proposal's creation block
 * (shares received later carry none); nothing is locked. Validators in office when a validator-set
 * proposal was made cannot vote on it (`ValidatorCannotVote`).
 */
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
  // Voting opens in the block after the proposal's: simulate on the block the vote will land in.
  const { hash } = await write(c, 'vote', 'vote', [p.data.id, p.data.support], undefined, { pending: true });
  return { hash };
}
