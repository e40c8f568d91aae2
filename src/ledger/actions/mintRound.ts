/** Any peer submits a round's score report with its quorum signatures; the contract mints shares. */
import type { Hex } from 'viem';
import { write, type LedgerClient } from '../client.js';
import type { ContractRevertError, ChainUnreachableError } from '../errors.js';
import { InvalidInputError } from '../../util/errors.js';
import { scoreReportSchema, type ScoreReport, type SignScoreReportReturnType } from './signScoreReport.js';

export type MintRoundParameters = {
  report: ScoreReport;
  signatures: SignScoreReportReturnType[];
  /** Keep the order given (tests use this to send forged orderings); default sorts by signer. */
  keepOrder?: boolean;
};
export type MintRoundReturnType = { hash: Hex; gasUsed: bigint; minted: bigint };
export type MintRoundErrorType = InvalidInputError | ContractRevertError | ChainUnreachableError;

export async function mintRound(c: LedgerClient, p: MintRoundParameters): Promise<MintRoundReturnType> {
  const r = scoreReportSchema.safeParse(p.report);
  if (!r.success) throw new InvalidInputError(`mintRound: ${r.error.message}`);
  const sigs = p.keepOrder
    ? p.signatures
    : [...p.signatures].sort((a, b) =>
        BigInt(a.signer) < BigInt(b.signer) ? -1 : BigInt(a.signer) > BigInt(b.signer) ? 1 : 0,
      );
  const d = r.data;
  const out = await write(c, 'mintRound', 'mintRound', [
    d.round,
    d.weightsHash,
    d.checkpointCid,
    d.updatesRoot,
    d.scoresRoot,
    d.recipients,
    d.scores,
    sigs.map((s) => s.signature),
  ]);
  return { hash: out.hash, gasUsed: out.gasUsed, minted: out.result as bigint };
}
