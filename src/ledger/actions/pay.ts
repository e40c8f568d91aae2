/** Anyone pays for model usage; the payment is split pro rata over shareholders. */
import { z } from 'zod';
import { stringToHex, type Hex } from 'viem';
import { write, type LedgerClient } from '../client.js';
import type { ContractRevertError, ChainUnreachableError } from '../errors.js';
import { InvalidInputError } from '../../util/errors.js';

const schema = z.object({ value: z.bigint().positive(), memo: z.string().max(31).default('') });
export type PayParameters = z.input<typeof schema>;
export type PayReturnType = { hash: Hex; gasUsed: bigint };
export type PayErrorType = InvalidInputError | ContractRevertError | ChainUnreachableError;

export async function pay(c: LedgerClient, params: PayParameters): Promise<PayReturnType> {
  const p = schema.safeParse(params);
  if (!p.success) throw new InvalidInputError(`pay: ${p.error.message}`);
  const { hash, gasUsed } = await write(c, 'pay', 'pay', [stringToHex(p.data.memo, { size: 32 })], p.data.value);
  return { hash, gasUsed };
}
