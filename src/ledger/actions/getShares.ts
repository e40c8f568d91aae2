/** Shares table: holders (from Transfer logs), balances, claimable revenue, and round commitments. */
import { parseAbiItem, type Address, type Hex } from 'viem';
import { read, toLedgerError, type LedgerClient } from '../client.js';
import type { ChainUnreachableError, ContractRevertError } from '../errors.js';

/** `rounds`: how many of the latest round commitments to read (default all). */
export type GetSharesParameters = { rounds?: number };
export type Holder = { address: Address; balance: bigint; claimable: bigint };
export type RoundCommitment = { round: bigint; weightsHash: Hex; updatesRoot: Hex; scoresRoot: Hex; minted: bigint; checkpointCid: Hex };
export type GetSharesReturnType = { totalSupply: bigint; totalPaid: bigint; totalClaimed: bigint; holders: Holder[]; rounds: RoundCommitment[] };
export type GetSharesErrorType = ChainUnreachableError | ContractRevertError;

export async function getShares(c: LedgerClient, p: GetSharesParameters = {}): Promise<GetSharesReturnType> {
  let logs;
  try {
    logs = await c.publicClient.getLogs({
      address: c.address,
      event: parseAbiItem('event Transfer(address indexed from, address indexed to, uint256 value)'),
      fromBlock: 0n,
    });
  } catch (e) {
    throw toLedgerError('getShares', e);
  }
  const seen = new Set<Address>();
  for (const l of logs) if (l.args.to) seen.add(l.args.to);
  const holders: Holder[] = [];
  for (const a of seen) {
    const balance = await read<bigint>(c, 'balanceOf', [a]);
    if (balance === 0n) continue;
    holders.push({ address: a, balance, claimable: await read<bigint>(c, 'claimable', [a]) });
  }
  holders.sort((x, y) => (y.balance > x.balance ? 1 : y.balance < x.balance ? -1 : 0));
  const n = await read<bigint>(c, 'roundCount');
  const rounds: RoundCommitment[] = [];
  const first = p.rounds === undefined ? 0n : n - BigInt(Math.min(Number(n), Math.max(0, p.rounds)));
  for (let i = first; i < n; i++) {
    const round = await read<bigint>(c, 'roundAt', [i]);
    const r = await read<Omit<RoundCommitment, 'round'>>(c, 'getRound', [round]);
    rounds.push({ round, ...r });
  }
  return {
    totalSupply: await read<bigint>(c, 'totalSupply'),
    totalPaid: await read<bigint>(c, 'totalPaid'),
    totalClaimed: await read<bigint>(c, 'totalClaimed'),
    holders,
    rounds,
  };
}
