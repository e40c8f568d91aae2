/** Shares table: holders (from Transfer logs), balances, claimable revenue, and round commitments. */
import { parseAbiItem, type Address, type Hex } from 'viem';
import { read, toLedgerError, type LedgerClient } from '../client.js';
import { InvalidInputError } from '../../util/errors.js';
import type { ChainUnreachableError, ContractRevertError } from '../errors.js';

/**
 * The addresses that ever received shares, and the next block to scan for more. Keep one per
 * client and pass it to every call: each call then reads only the blocks since the last one
 * (a new index starts at the contract's deployment block, never at block 0).
 */
export class HolderIndex {
  readonly seen = new Set<Address>();
  next: bigint | null = null;
}

/**
 * `rounds`: how many of the latest round commitments to read (default all). `holders`: an index
 * kept between calls (default: a fresh one). `maxRange`: blocks per log query (public RPCs cap
 * eth_getLogs ranges; default 10,000).
 */
export type GetSharesParameters = { rounds?: number; holders?: HolderIndex; maxRange?: bigint };
export type Holder = { address: Address; balance: bigint; claimable: bigint };
export type RoundCommitment = {
  round: bigint;
  weightsHash: Hex;
  updatesRoot: Hex;
  scoresRoot: Hex;
  minted: bigint;
  checkpointCid: Hex;
};
export type GetSharesReturnType = {
  totalSupply: bigint;
  totalPaid: bigint;
  totalClaimed: bigint;
  holders: Holder[];
  rounds: RoundCommitment[];
};
export type GetSharesErrorType = ChainUnreachableError | ContractRevertError;

const TRANSFER = parseAbiItem('event Transfer(address indexed from, address indexed to, uint256 value)');

export async function getShares(c: LedgerClient, p: GetSharesParameters = {}): Promise<GetSharesReturnType> {
  const index = p.holders ?? new HolderIndex();
  const range = p.maxRange ?? 10_000n;
  if (range < 1n) throw new InvalidInputError('getShares: maxRange must be at least 1 block');
  try {
    const head = await c.publicClient.getBlockNumber({ cacheTime: 0 });
    let from = index.next ?? (await read<bigint>(c, 'deployBlock'));
    while (from <= head) {
      const to = from + range - 1n < head ? from + range - 1n : head;
      const logs = await c.publicClient.getLogs({ address: c.address, event: TRANSFER, fromBlock: from, toBlock: to });
      for (const l of logs) if (l.args.to) index.seen.add(l.args.to);
      from = to + 1n;
      index.next = from;
    }
  } catch (e) {
    throw toLedgerError('getShares', e);
  }
  const holders: Holder[] = [];
  for (const a of index.seen) {
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
