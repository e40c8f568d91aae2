/**
 * In-process devnet on Hardhat's EDR (`@nomicfoundation/edr`): the same Rust EVM Hardhat 3 runs, native
 * speed, fully offline, no child process or port. Why EDR over @ethereumjs/vm or tevm: it is a complete
 * JSON-RPC node (eth_*, evm_increaseTime, evm_mine, snapshots) rather than a bare VM, it tracks the latest
 * hardfork, and it installs as a prebuilt native binary (edr-linux-x64-gnu) already present here.
 * The provider is exposed as an EIP-1193 `request` function and wrapped in a viem `custom()` transport.
 */
import { createRequire } from 'node:module';
import {
  createPublicClient,
  createWalletClient,
  custom,
  http,
  type Chain,
  type EIP1193RequestFn,
  type Hex,
} from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { keccak256, toHex } from 'viem';
import { ChainUnreachableError } from './errors.js';

interface EdrProvider {
  handleRequest(req: string): Promise<{ data: string | unknown }>;
}

export interface Devnet {
  chain: Chain;
  request: EIP1193RequestFn;
  /** Deterministic funded private keys (index 0 = deployer). */
  keys: Hex[];
  /** Simulate the chain going away / coming back (for resilience tests). */
  setOnline(online: boolean): void;
  increaseTime(seconds: number): Promise<void>;
  stop(): void;
}

// EDR's N-API module is loaded with createRequire and has no usable types here.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
let ctxPromise: Promise<{ edr: any; ctx: any }> | undefined;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
function edrContext(): Promise<{ edr: any; ctx: any }> {
  ctxPromise ??= (async () => {
    const require = createRequire(import.meta.url);
    const edr = require('@nomicfoundation/edr');
    const ctx = new edr.EdrContext(); // "should only be called once" per process
    await ctx.registerProviderFactory(edr.L1_CHAIN_TYPE, edr.l1ProviderFactory());
    return { edr, ctx };
  })();
  return ctxPromise;
}

export const devnetKey = (i: number): Hex => keccak256(toHex(`tessera-devnet-${i}`));

export async function startDevnet(opts: { accounts?: number; chainId?: number } = {}): Promise<Devnet> {
  const n = opts.accounts ?? 10;
  const chainId = opts.chainId ?? 31337;
  const { edr, ctx } = await edrContext();
  const keys = Array.from({ length: n }, (_, i) => devnetKey(i));
  const hf = edr.l1HardforkLatest();
  const genesis = edr.l1GenesisState(hf) as { address: Uint8Array }[];
  for (const k of keys) {
    const addr = privateKeyToAccount(k).address;
    genesis.push({ address: Buffer.from(addr.slice(2), 'hex'), balance: 10n ** 24n } as never);
  }
  const provider: EdrProvider = await ctx.createProvider(
    edr.L1_CHAIN_TYPE,
    {
      allowBlocksWithSameTimestamp: false,
      allowUnlimitedContractSize: false,
      bailOnCallFailure: true,
      bailOnTransactionFailure: false,
      chainId: BigInt(chainId),
      coinbase: new Uint8Array(20),
      defaultTransactionGasLimit: 16_000_000n,
      genesisState: genesis,
      hardfork: edr.l1HardforkToString(hf),
      minGasPrice: 0n,
      mining: { autoMine: true, memPool: { order: edr.MineOrdering.Priority } },
      network: { genesisBlockGasLimit: 60_000_000n },
      networkId: BigInt(chainId),
      observability: {},
      ownedAccounts: [],
      precompileOverrides: [],
    },
    { enable: false, decodeConsoleLogInputsCallback: () => [], printLineCallback: () => {} },
    { subscriptionCallback: () => {} },
    new edr.ContractDecoder(),
  );
  let online = true;
  let id = 0;
  const request = (async ({ method, params }: { method: string; params?: unknown }) => {
    if (!online) throw new ChainUnreachableError(`devnet offline (${method})`);
    const res = await provider.handleRequest(
      JSON.stringify({ jsonrpc: '2.0', id: ++id, method, params: params ?? [] }),
    );
    const body = (typeof res.data === 'string' ? JSON.parse(res.data) : res.data) as {
      result?: unknown;
      error?: { code: number; message: string; data?: unknown };
    };
    if (body.error) {
      // EDR reports reverts as -32000 with data {reason, data: hex}; present them the way geth does
      // (code 3 "execution reverted", data = revert bytes) so viem decodes custom Solidity errors.
      const d = body.error.data as { data?: unknown } | null | undefined;
      const revertData = d && typeof d === 'object' && typeof d.data === 'string' ? d.data : undefined;
      const e = new Error(body.error.message) as Error & { code: number; data?: unknown };
      e.code = revertData !== undefined ? 3 : body.error.code;
      e.data = revertData ?? body.error.data;
      throw e;
    }
    return body.result;
  }) as EIP1193RequestFn;
  const chain: Chain = {
    id: chainId,
    name: 'tessera-devnet',
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
    rpcUrls: { default: { http: ['http://in-process'] } },
  };
  return {
    chain,
    request,
    keys,
    setOnline: (o) => {
      online = o;
    },
    increaseTime: async (s) => {
      await request({ method: 'evm_increaseTime', params: [s] } as never);
      await request({ method: 'evm_mine', params: [] } as never);
    },
    stop: () => {
      online = false;
    },
  };
}

/** viem clients over the devnet (or any EIP-1193 request fn). */
export function clientsFor(request: EIP1193RequestFn, chain: Chain, key: Hex) {
  const transport = custom({ request }, { retryCount: 0 });
  const account = privateKeyToAccount(key);
  return {
    account,
    publicClient: createPublicClient({ chain, transport }),
    walletClient: createWalletClient({ chain, transport, account }),
  };
}

/** An EIP-1193 request fn + chain for any JSON-RPC endpoint (`--rpc <url>`). */
export async function rpcChain(url: string): Promise<{ request: EIP1193RequestFn; chain: Chain }> {
  const { request } = http(url, { retryCount: 0, timeout: 10_000 })({});
  let id: number;
  try {
    id = Number(await request({ method: 'eth_chainId' }));
  } catch (e) {
    throw new ChainUnreachableError(`cannot reach ${url}`, { cause: e });
  }
  const chain: Chain = {
    id,
    name: `rpc-${id}`,
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
    rpcUrls: { default: { http: [url] } },
  };
  return { request: request as EIP1193RequestFn, chain };
}
