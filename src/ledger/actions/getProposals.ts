/** Governance proposals, newest first (`limit` of them), with the proposed value as text. */
import { decodeAbiParameters, hexToString, type Hex } from 'viem';
import { read, type LedgerClient } from '../client.js';
import type { ChainUnreachableError, ContractRevertError } from '../errors.js';

export type GetProposalsParameters = { limit?: number };
export type Proposal = {
  id: bigint;
  key: string;
  value: string;
  proposer: Hex;
  /** Block whose closing balances are the voting power. */
  snapshot: bigint;
  deadline: bigint;
  /** Settled: applied (passed), failed, or expired. */
  executed: boolean;
  passed: boolean;
  /** Won its vote but was settled after the execution window, so never applied. */
  expired: boolean;
  yes: bigint;
  no: bigint;
  /** The quorum's base: supply at the snapshot (less the validators' shares on a validator-set vote). */
  supplyAtStart: bigint;
};
export type GetProposalsReturnType = Proposal[];
export type GetProposalsErrorType = ChainUnreachableError | ContractRevertError;

const text = (h: Hex): string => {
  try {
    return hexToString(h).replace(/\0+$/, '');
  } catch {
    return h;
  }
};

export async function getProposals(c: LedgerClient, p: GetProposalsParameters = {}): Promise<GetProposalsReturnType> {
  const n = await read<bigint>(c, 'proposalCount');
  const limit = BigInt(Math.max(0, p.limit ?? 20));
  const out: Proposal[] = [];
  for (let id = n - 1n; id >= 0n && n - id <= limit; id--) {
    const r = await read<{
      key: Hex;
      proposer: Hex;
      snapshot: bigint;
      deadline: bigint;
      executed: boolean;
      passed: boolean;
      expired: boolean;
      yes: bigint;
      no: bigint;
      supplyAtStart: bigint;
      value: Hex;
    }>(c, 'getProposal', [id]);
    const key = text(r.key);
    let value = text(r.value);
    if (key === 'validators') {
      try {
        const [vs, m] = decodeAbiParameters([{ type: 'address[]' }, { type: 'uint256' }], r.value);
        value = `${m} of ${vs.join(',')}`;
      } catch {
        value = r.value;
      }
    }
    out.push({
      id,
      key,
      value,
      proposer: r.proposer,
      snapshot: r.snapshot,
      deadline: r.deadline,
      executed: r.executed,
      passed: r.passed,
      expired: r.expired,
      yes: r.yes,
      no: r.no,
      supplyAtStart: r.supplyAtStart,
    });
  }
  return out;
}
