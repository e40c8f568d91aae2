/** Hand-made node views and round reports for the dashboard tests (no network, no node). */
import type { NodeView, RoundReport } from '../src/peer/node.js';

export const ME = 'peer-me';
export const A = 'peer-a';
export const B = 'peer-b';

export const MANIFEST = {
  version: 1,
  name: 'tiny',
  model: { vocabSize: 512, ctx: 32, dim: 32, layers: 1, heads: 2 },
  tokenizerSha256: 'a'.repeat(64),
  dataset: { name: 'brown', trainTokensSha256: 'b'.repeat(64), numShards: 8 },
  hyper: {
    innerSteps: 4,
    batch: 2,
    adamw: {},
    schedule: {},
    outer: { lr: 1, momentum: 0 },
    codec: { id: 'sparse', chunk: 1024, k: 64 },
    errorFeedback: 0.95,
    overlap: 'eager',
  },
  genesisWeightsHash: 'c'.repeat(64),
  seed: 7,
  timing: { trainMs: 800, submitMs: 1500, commitMs: 1000, quorum: 1, minPeers: 1, maxMissedRounds: 2 },
} as unknown as NodeView['manifest'];

export function view(o: Partial<NodeView> = {}): NodeView {
  return {
    runId: 'r'.repeat(64),
    manifest: MANIFEST,
    peerId: ME,
    round: 0,
    phase: 'training',
    roster: [ME, A],
    subscribers: [A],
    weightsHash: 'w0',
    checkpointCid: null,
    params: 1234,
    ...o,
  };
}

export function report(round: number, o: Partial<RoundReport> = {}): RoundReport {
  return {
    round,
    computeFraction: 0.9,
    innerSteps: 4,
    cpuFraction: 1,
    valLoss: 6 - round * 0.1,
    trainLoss: 6.1 - round * 0.1,
    contributors: [
      { peer: ME, tokens: 256 },
      { peer: A, tokens: 128 },
    ],
    checkpointCid: null,
    peers: 2,
    roster: 2,
    included: 2,
    weightsHash: `w${round + 1}`,
    bytesSent: 1000,
    bytesReceived: 2000,
    seconds: 2,
    event: 'round',
    ...o,
  };
}

/** Payout addresses (EIP-55 mixed case in the holders list; the view's `me` is lower case, as a node may give it). */
export const ME_ADDR = '0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed';
export const A_ADDR = '0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359';
export const B_ADDR = '0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB';

/**
 * Balances beyond 2^53 base units whose 4-decimal forms tell BigInt from Number: A holds
 * 1,234,567,890,123.4567… shares (Number would print …123.4568), 62.50% of the supply; this node
 * 617,283,945,061.7283… (31.25%); B 123,456,789,012.3456… (6.25%).
 */
export const SHARES = {
  a: '1234567890123456789012345678901',
  me: '617283945061728394506172839450',
  b: '123456789012345678901234567890',
  supply: '1975308624197530862419753086241',
} as const;

/** Unix seconds: an open proposal's deadline (2100-01-01T00:00:00Z) and a closed one's (2023-11-14T22:13:20Z). */
export const FUTURE = 4102444800;
export const PAST = 1700000000;

type LedgerView = NonNullable<NodeView['ledger']>;

/** A linked node's ledger view: three holders, a minted round, proposals open, passed, failed and closed (one with markup in its value). */
export function ledgerView(o: Partial<LedgerView> = {}): LedgerView {
  return {
    contract: '0x8464135c8F25Da09e49BC8782676a84730C318bC',
    chainId: 31337,
    online: true,
    checkedAt: 1_700_000_000_000,
    me: ME_ADDR.toLowerCase(),
    threshold: 3,
    validators: [A_ADDR, B_ADDR, ME_ADDR, '0x0000000000000000000000000000000000000004'],
    totalSupply: SHARES.supply,
    totalPaid: '9007199254740993000000',
    totalClaimed: '1500000000000000000',
    holders: [
      { address: A_ADDR, peer: A, balance: SHARES.a, claimable: '3000000000000000000' },
      { address: ME_ADDR, peer: null, balance: SHARES.me, claimable: '1500000000000000000' },
      { address: B_ADDR, peer: null, balance: SHARES.b, claimable: '1' },
    ],
    rounds: [
      {
        round: 12,
        weightsHash: 'ab'.repeat(32),
        checkpointCid: 'bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi',
        minted: '1000000000000000000000',
      },
      {
        round: 11,
        weightsHash: 'cd'.repeat(32),
        checkpointCid: 'bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku',
        minted: '999999999999999999999',
      },
    ],
    proposals: [
      {
        id: 4,
        key: 'maxPeers',
        value: '<img src=x onerror=alert(1)>',
        deadline: FUTURE,
        yes: SHARES.me,
        no: '0',
        executed: false,
        passed: false,
      },
      {
        id: 3,
        key: 'sharesPerRound',
        value: '2000',
        deadline: PAST,
        yes: SHARES.a,
        no: SHARES.b,
        executed: true,
        passed: true,
      },
      {
        id: 2,
        key: 'quorumBps',
        value: '9000',
        deadline: PAST,
        yes: SHARES.b,
        no: SHARES.a,
        executed: true,
        passed: false,
      },
      { id: 1, key: 'codec', value: 'int8', deadline: PAST, yes: '0', no: '0', executed: false, passed: false },
    ],
    queue: { pending: 3, submitted: 17, lastError: null },
    ...o,
  };
}
