/** Deploys one TesseraRun (one deployment = one run). */
import { z } from 'zod';
import type { Address, Hex } from 'viem';
import { loadArtifacts } from './compile.js';
import type { LedgerClient } from './client.js';
import { toLedgerError } from './client.js';
import { InvalidInputError } from '../util/errors.js';

const hex32 = z.string().regex(/^0x[0-9a-fA-F]{64}$/);
const addr = z.string().regex(/^0x[0-9a-fA-F]{40}$/);
const schema = z.object({
  manifestHash: hex32,
  validators: z.array(addr).min(1),
  threshold: z.number().int().min(1),
  sharesPerRound: z
    .bigint()
    .positive()
    .default(1000n * 10n ** 18n),
  quorumBps: z.number().int().min(0).max(10_000).default(2000),
  /** Voting periods a proposer may choose (the contract refuses others): default 1 to 14 days. */
  minVotingPeriodSeconds: z.number().int().min(1).default(86_400),
  maxVotingPeriodSeconds: z
    .number()
    .int()
    .max(365 * 86_400)
    .default(14 * 86_400),
  /** How long after its deadline a passed proposal can still be executed (default 7 days). */
  executionWindowSeconds: z
    .number()
    .int()
    .min(1)
    .max(365 * 86_400)
    .default(7 * 86_400),
});

export type DeployRunParameters = z.input<typeof schema>;
export type DeployRunReturnType = { address: Address; gasUsed: bigint; hash: Hex };
export type DeployRunErrorType = InvalidInputError | Error;

export async function deployRun(
  c: Omit<LedgerClient, 'address' | 'abi'>,
  params: DeployRunParameters,
): Promise<DeployRunReturnType> {
  const p = schema.safeParse(params);
  if (!p.success) throw new InvalidInputError(`deployRun: ${p.error.message}`);
  if (p.data.minVotingPeriodSeconds > p.data.maxVotingPeriodSeconds)
    throw new InvalidInputError('deployRun: minVotingPeriodSeconds is above maxVotingPeriodSeconds');
  const { abi, bytecode } = loadArtifacts().TesseraRun;
  try {
    const hash = await c.walletClient.deployContract({
      abi,
      bytecode,
      args: [
        p.data.manifestHash,
        p.data.validators,
        BigInt(p.data.threshold),
        p.data.sharesPerRound,
        BigInt(p.data.quorumBps),
        BigInt(p.data.minVotingPeriodSeconds),
        BigInt(p.data.maxVotingPeriodSeconds),
        BigInt(p.data.executionWindowSeconds),
      ],
    } as never);
    const r = await c.publicClient.waitForTransactionReceipt({ hash, pollingInterval: 10 });
    if (!r.contractAddress) throw new Error('deploy: no contract address');
    return { address: r.contractAddress, gasUsed: r.gasUsed, hash };
  } catch (e) {
    throw toLedgerError('deployRun', e);
  }
}
