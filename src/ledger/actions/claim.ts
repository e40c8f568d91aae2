/** A shareholder claims their accrued revenue. */
import type { Hex } from 'viem';
import { write, type LedgerClient } from '../client.js';
import type { ContractRevertError, ChainUnreachableError } from '../errors.js';

export type ClaimParameters = Record<string, never>;
export type ClaimReturnType = { hash: Hex; gasUsed: bigint; amount: bigint };
export type ClaimErrorType = ContractRevertError | ChainUnreachableError;

export async function claim(c: LedgerClient): Promise<ClaimReturnType> {
  const { hash, gasUsed, result } = await write(c, 'claim', 'claim', []);
  return { hash, gasUsed, amount: result as bigint };
}
