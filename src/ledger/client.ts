/** A ledger client: viem public + wallet clients bound to one TesseraRun deployment. */
import {
  BaseError,
  ContractFunctionRevertedError,
  HttpRequestError,
  TimeoutError,
  WaitForTransactionReceiptTimeoutError,
  type Abi,
  type Address,
  type Chain,
  type EIP1193RequestFn,
  type Hex,
  type PublicClient,
  type WalletClient,
  type Account,
  type Transport,
} from 'viem';
import { loadArtifacts } from './compile.js';
import { clientsFor } from './devnet.js';
import { ChainUnreachableError, ContractRevertError } from './errors.js';

export interface LedgerClient {
  address: Address;
  abi: Abi;
  account: Account;
  publicClient: PublicClient<Transport, Chain>;
  walletClient: WalletClient<Transport, Chain, Account>;
}

export function ledgerClient(request: EIP1193RequestFn, chain: Chain, key: Hex, address: Address): LedgerClient {
  const c = clientsFor(request, chain, key);
  return { address, abi: loadArtifacts().TesseraRun.abi, ...c } as unknown as LedgerClient;
}

/** Maps a viem error to a typed Tessera error (custom Solidity error name when decodable). */
export function toLedgerError(action: string, e: unknown): Error {
  if (e instanceof ChainUnreachableError) return e;
  if (e instanceof BaseError) {
    const unreachable = e.walk((x) => x instanceof ChainUnreachableError);
    if (unreachable) return unreachable as ChainUnreachableError;
    // A receipt that never came is "unknown", not "refused": the queue keeps the round and asks
    // the contract (isMinted) before sending it again.
    if (
      e.walk(
        (x) =>
          x instanceof HttpRequestError ||
          x instanceof TimeoutError ||
          x instanceof WaitForTransactionReceiptTimeoutError,
      )
    ) {
      return new ChainUnreachableError(`${action}: chain unreachable (${e.shortMessage})`, { cause: e });
    }
    const rev = e.walk((x) => x instanceof ContractFunctionRevertedError);
    if (rev instanceof ContractFunctionRevertedError) {
      return new ContractRevertError(action, rev.data?.errorName ?? rev.reason ?? 'unknown', { cause: e });
    }
    return new ContractRevertError(action, e.shortMessage, { cause: e });
  }
  return e instanceof Error ? e : new Error(String(e));
}

/**
 * Simulate (decodes custom errors), send, wait for the receipt. `pending`: simulate on the pending
 * block (the one the transaction will land in at the earliest), for calls whose validity depends on
 * the block number, such as a vote sent right after the proposal's block.
 */
export async function write(
  c: LedgerClient,
  action: string,
  functionName: string,
  args: readonly unknown[],
  value?: bigint,
  opts: { pending?: boolean } = {},
): Promise<{ hash: Hex; gasUsed: bigint; result: unknown }> {
  try {
    const { request, result } = await c.publicClient.simulateContract({
      address: c.address,
      abi: c.abi,
      functionName,
      args,
      account: c.account,
      value,
      ...(opts.pending ? { blockTag: 'pending' } : {}),
    } as never);
    const hash = await c.walletClient.writeContract(request as never);
    const receipt = await c.publicClient.waitForTransactionReceipt({ hash, pollingInterval: 50, timeout: 30_000 });
    if (receipt.status !== 'success') throw new ContractRevertError(action, 'transaction reverted');
    return { hash, gasUsed: receipt.gasUsed, result };
  } catch (e) {
    throw toLedgerError(action, e);
  }
}

export async function read<T>(c: LedgerClient, functionName: string, args: readonly unknown[] = []): Promise<T> {
  try {
    return (await c.publicClient.readContract({ address: c.address, abi: c.abi, functionName, args } as never)) as T;
  } catch (e) {
    throw toLedgerError(functionName, e);
  }
}
