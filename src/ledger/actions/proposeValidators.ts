/**
 * A shareholder proposes a new validator set (M of N). If the vote passes, `execute` replaces the
 * allowlist: from then on only the new validators' signatures mint (no party, the deployer
 * included, can change it otherwise). The contract checks the set when it is proposed.
 */
import { z } from 'zod';
import { encodeAbiParameters, getAddress, type Address, type Hex } from 'viem';
import { write, type LedgerClient } from '../client.js';
import type { ContractRevertError, ChainUnreachableError } from '../errors.js';
import { InvalidInputError } from '../../util/errors.js';
import { settingKey } from './propose.js';

const schema = z
  .object({
    validators: z
      .array(z.string().regex(/^0x[0-9a-fA-F]{40}$/))
      .min(1)
      .max(256)
      .refine((v) => new Set(v.map((a) => a.toLowerCase())).size === v.length, 'duplicate validator'),
    threshold: z.number().int().min(1),
    durationSeconds: z.number().int().positive(),
  })
  .refine((p) => p.threshold <= p.validators.length, 'threshold is more than the number of validators');
export type ProposeValidatorsParameters = z.input<typeof schema>;
export type ProposeValidatorsReturnType = { hash: Hex; id: bigint };
export type ProposeValidatorsErrorType = InvalidInputError | ContractRevertError | ChainUnreachableError;

export const VALIDATORS_SETTING = 'validators';

export async function proposeValidators(
  c: LedgerClient,
  params: ProposeValidatorsParameters,
): Promise<ProposeValidatorsReturnType> {
  const p = schema.safeParse(params);
  if (!p.success) throw new InvalidInputError(`proposeValidators: ${p.error.issues.map((i) => i.message).join('; ')}`);
  const vs = p.data.validators.map((a) => getAddress(a) as Address);
  const value = encodeAbiParameters([{ type: 'address[]' }, { type: 'uint256' }], [vs, BigInt(p.data.threshold)]);
  const { hash, result } = await write(c, 'proposeValidators', 'propose', [
    settingKey(VALIDATORS_SETTING),
    value,
    BigInt(p.data.durationSeconds),
  ]);
  return { hash, id: result as bigint };
}
