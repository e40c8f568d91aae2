/** A validator signs a round's score report (EIP-712; domain = chainId + run contract). */
import { z } from 'zod';
import type { Account, Address, Hex } from 'viem';
import { InvalidInputError } from '../../util/errors.js';

const hex32 = z.string().regex(/^0x[0-9a-fA-F]{64}$/) as unknown as z.ZodType<Hex>;
const addr = z.string().regex(/^0x[0-9a-fA-F]{40}$/) as unknown as z.ZodType<Address>;
export const scoreReportSchema = z
  .object({
    manifestHash: hex32,
    round: z.bigint().nonnegative(),
    weightsHash: hex32,
    checkpointCid: z.string().regex(/^0x([0-9a-fA-F]{2})*$/) as unknown as z.ZodType<Hex>,
    updatesRoot: hex32,
    scoresRoot: hex32,
    recipients: z.array(addr),
    scores: z.array(z.bigint().nonnegative()),
  })
  .refine((r) => r.recipients.length === r.scores.length, 'recipients and scores differ in length');
export type ScoreReport = z.infer<typeof scoreReportSchema>;

export const scoreReportTypes = {
  ScoreReport: [
    { name: 'manifestHash', type: 'bytes32' },
    { name: 'round', type: 'uint64' },
    { name: 'weightsHash', type: 'bytes32' },
    { name: 'checkpointCid', type: 'bytes' },
    { name: 'updatesRoot', type: 'bytes32' },
    { name: 'scoresRoot', type: 'bytes32' },
    { name: 'recipients', type: 'address[]' },
    { name: 'scores', type: 'uint256[]' },
  ],
} as const;

export type SignScoreReportParameters = { account: Account; chainId: number; contract: Address; report: ScoreReport };
export type SignScoreReportReturnType = { signer: Address; signature: Hex };
export type SignScoreReportErrorType = InvalidInputError;

export async function signScoreReport(p: SignScoreReportParameters): Promise<SignScoreReportReturnType> {
  const parsed = scoreReportSchema.safeParse(p.report);
  if (!parsed.success) throw new InvalidInputError(`signScoreReport: ${parsed.error.message}`);
  if (!p.account.signTypedData) throw new InvalidInputError('signScoreReport: account cannot sign typed data');
  const signature = await p.account.signTypedData({
    domain: { name: 'Tessera', version: '1', chainId: p.chainId, verifyingContract: p.contract },
    types: scoreReportTypes,
    primaryType: 'ScoreReport',
    message: parsed.data,
  });
  return { signer: p.account.address, signature };
}
