/**
 * A run's chain on this machine, for `tessera demo --ledger` and the end-to-end tests: the in-process
 * EDR devnet served as HTTP JSON-RPC (so node processes reach it with `--rpc`), one TesseraRun
 * deployed for the run with the given validators, and one funded key per peer.
 */
import type { Address, Hex } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { clientsFor, startDevnet, type Devnet } from './devnet.js';
import { deployRun } from './deploy.js';
import { serveRpc } from './rpc-server.js';

export interface LocalChain {
  net: Devnet;
  url: string;
  port: number;
  contract: Address;
  /** Funded key of peer i (devnet key i + 1; key 0 deployed the contract). */
  keys: Hex[];
  validators: Address[];
  threshold: number;
  deployGas: bigint;
  /** Stop serving HTTP (the chain "goes away" for the peers); `serve()` brings it back on the same port. */
  unserve(): Promise<void>;
  serve(): Promise<void>;
  close(): Promise<void>;
}

/** M of N: more than two thirds of the validators (all of them when N ≤ 3). */
export const defaultThreshold = (n: number): number => Math.min(n, Math.floor((2 * n) / 3) + 1);

export async function startLocalChain(o: {
  runId: string;
  peers: number;
  validators: number[];
  threshold?: number;
  port?: number;
}): Promise<LocalChain> {
  const net = await startDevnet({ accounts: o.peers + 1 });
  const keys = net.keys.slice(1, o.peers + 1);
  const validators = o.validators.map((i) => privateKeyToAccount(keys[i]).address);
  const threshold = o.threshold ?? defaultThreshold(validators.length);
  const d = await deployRun(clientsFor(net.request, net.chain, net.keys[0]) as never, {
    manifestHash: `0x${o.runId}`,
    validators,
    threshold,
    // A local chain's votes are minutes long (the chain's clock is moved by tests and demos).
    minVotingPeriodSeconds: 60,
    maxVotingPeriodSeconds: 86_400,
    executionWindowSeconds: 86_400,
  });
  let srv = await serveRpc(net.request, o.port ?? 0);
  const port = Number(new URL(srv.url).port);
  let up = true;
  return {
    net,
    url: srv.url,
    port,
    contract: d.address,
    keys,
    validators,
    threshold,
    deployGas: d.gasUsed,
    unserve: async () => {
      if (up) {
        up = false;
        await srv.close();
      }
    },
    serve: async () => {
      if (!up) {
        srv = await serveRpc(net.request, port);
        up = true;
      }
    },
    close: async () => {
      if (up) {
        up = false;
        await srv.close();
      }
      net.stop();
    },
  };
}
