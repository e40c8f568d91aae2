import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { encodeAbiParameters, keccak256, toHex, type Address, type Hex } from 'viem';
import {
  startDevnet,
  ledgerClient,
  deployRun,
  signScoreReport,
  mintRound,
  pay,
  claim,
  propose,
  vote,
  execute,
  getSetting,
  getShares,
  HolderIndex,
  getProposals,
  proposeValidators,
  read,
  loadArtifacts,
  clientsFor,
  CommitmentQueue,
  serveRpc,
  rpcChain,
  buildScoreReport,
  ContractRevertError,
  type Devnet,
  type LedgerClient,
  type ScoreReport,
} from '../src/ledger/index.js';

const execFileAsync = promisify(execFile);
let net: Devnet;
const MANIFEST = keccak256(toHex('manifest'));
const h = (s: string): Hex => keccak256(toHex(s));

// keys: 0 deployer/submitter, 1..4 validators (3-of-4), 5..9 holders, 10 outsider
const client = (i: number, address: Address): LedgerClient =>
  ledgerClient(net.request, net.chain, net.keys[i], address);
const addrOf = (i: number): Address => clientsFor(net.request, net.chain, net.keys[i]).account.address;
const validators = (): Address[] => [1, 2, 3, 4].map(addrOf);

async function deploy(
  opts: { quorumBps?: number; sharesPerRound?: bigint } = {},
): Promise<{ address: Address; gasUsed: bigint }> {
  const c = clientsFor(net.request, net.chain, net.keys[0]);
  return deployRun(c as never, {
    manifestHash: MANIFEST,
    validators: validators(),
    threshold: 3,
    minVotingPeriodSeconds: 60,
    ...opts,
  });
}

function report(round: bigint, recipients: Address[], scores: bigint[]): ScoreReport {
  return {
    manifestHash: MANIFEST,
    round,
    weightsHash: h(`w${round}`),
    checkpointCid: toHex(`bafy-round-${round}`),
    updatesRoot: h(`u${round}`),
    scoresRoot: h(`s${round}`),
    recipients,
    scores,
  };
}
async function sign(address: Address, r: ScoreReport, signers: number[]) {
  return Promise.all(
    signers.map((i) =>
      signScoreReport({
        account: clientsFor(net.request, net.chain, net.keys[i]).account,
        chainId: net.chain.id,
        contract: address,
        report: r,
      }),
    ),
  );
}
const reverts = (reason: string) => (e: unknown) => {
  assert.ok(e instanceof ContractRevertError, `expected ContractRevertError, got ${String(e)}`);
  assert.equal(e.reason, reason);
  return true;
};
const balance = (a: Address) => clientsFor(net.request, net.chain, net.keys[0]).publicClient.getBalance({ address: a });

before(async () => {
  loadArtifacts();
  net = await startDevnet({ accounts: 12 });
});
after(() => net.stop());

test('minting needs the M-of-N quorum; forged, duplicated, malleated or replayed signature sets are rejected', async (t) => {
  const { address, gasUsed } = await deploy();
  t.diagnostic(`deploy gas: ${gasUsed}`);
  const c = client(0, address);
  const r = report(1n, [addrOf(5), addrOf(6)], [3n, 1n]);
  await assert.rejects(
    mintRound(c, { report: r, signatures: await sign(address, r, [1, 2]) }),
    reverts('NotEnoughSignatures'),
  );
  // an outsider's signature does not count toward the quorum
  await assert.rejects(
    mintRound(c, { report: r, signatures: await sign(address, r, [1, 2, 10]) }),
    reverts('NotValidator'),
  );
  // signatures over a different report (tampered scores) recover to strangers
  const forged = { ...r, scores: [1n, 3n] };
  await assert.rejects(
    mintRound(c, { report: forged, signatures: await sign(address, r, [1, 2, 3]) }),
    reverts('NotValidator'),
  );
  // duplicated signer
  const s = await sign(address, r, [1, 2]);
  const sorted = [...s].sort((a, b) => (BigInt(a.signer) < BigInt(b.signer) ? -1 : 1));
  await assert.rejects(
    mintRound(c, { report: r, signatures: [sorted[0], sorted[0], sorted[1]], keepOrder: true }),
    reverts('SignersNotAscending'),
  );
  // malleated (high-s) copy of a valid signature
  const good = await sign(address, r, [1, 2, 3]);
  const N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
  const sig = good[0].signature;
  const sHigh = N - BigInt('0x' + sig.slice(66, 130));
  const v = parseInt(sig.slice(130, 132), 16) === 27 ? '1c' : '1b';
  const mal = {
    signer: good[0].signer,
    signature: (sig.slice(0, 66) + sHigh.toString(16).padStart(64, '0') + v) as Hex,
  };
  await assert.rejects(mintRound(c, { report: r, signatures: [mal, good[1], good[2]] }), reverts('BadSignature'));
  // a set signed for another deployment (domain = chainId + contract) is useless here
  const other = await deploy();
  await assert.rejects(mintRound(client(0, other.address), { report: r, signatures: good }), reverts('NotValidator'));
  // the valid quorum mints, in proportion to scores
  const m = await mintRound(c, { report: r, signatures: good });
  t.diagnostic(`mintRound gas, 2 recipients, 3 sigs: ${m.gasUsed}`);
  const sh = await getShares(c);
  assert.equal(sh.totalSupply, 1000n * 10n ** 18n);
  assert.deepEqual(
    sh.holders.map((x) => x.balance),
    [750n * 10n ** 18n, 250n * 10n ** 18n],
  );
  assert.equal(sh.rounds.length, 1);
  assert.equal(sh.rounds[0].checkpointCid, toHex('bafy-round-1'));
  // replaying the same round (same valid signatures) is rejected
  await assert.rejects(mintRound(c, { report: r, signatures: good }), reverts('RoundAlreadyMinted'));
  // gas with more recipients
  for (const n of [10, 50]) {
    const rr = report(
      BigInt(n),
      Array.from({ length: n }, (_, i) => `0x${(i + 1).toString(16).padStart(40, '0')}` as Address),
      Array.from({ length: n }, (_, i) => BigInt(i + 1)),
    );
    const mm = await mintRound(c, { report: rr, signatures: await sign(address, rr, [2, 3, 4]) });
    t.diagnostic(`mintRound gas, ${n} recipients, 3 sigs: ${mm.gasUsed}`);
  }
});

test('the holders scan starts at the deployment block, in bounded ranges, and a kept index reads only new blocks', async () => {
  const before = await clientsFor(net.request, net.chain, net.keys[0]).publicClient.getBlockNumber({ cacheTime: 0 });
  const { address } = await deploy();
  const c = client(0, address);
  const deployed = await read<bigint>(c, 'deployBlock');
  assert.ok(deployed > before, `deployBlock ${deployed} is the deployment's block, after ${before}`);
  // Count the log queries and their ranges.
  const ranges: [bigint, bigint][] = [];
  const counting: LedgerClient = {
    ...c,
    publicClient: {
      ...c.publicClient,
      getLogs: (async (a: { fromBlock: bigint; toBlock: bigint }) => {
        ranges.push([a.fromBlock, a.toBlock]);
        return c.publicClient.getLogs(a as never);
      }) as never,
    },
  } as LedgerClient;
  for (const [round, who] of [
    [1n, [5, 6]],
    [2n, [7]],
    [3n, [8, 9]],
  ] as const) {
    const r = report(
      round,
      who.map(addrOf),
      who.map(() => 1n),
    );
    await mintRound(c, { report: r, signatures: await sign(address, r, [1, 2, 3]) });
  }
  const whole = await getShares(c);
  const narrow = await getShares(counting, { maxRange: 2n });
  assert.deepEqual(narrow.holders, whole.holders, 'ranges of 2 blocks find the same holders');
  assert.equal(whole.holders.length, 5);
  assert.ok(
    ranges.length >= 2 && ranges.every(([a, b]) => b - a + 1n <= 2n),
    `bounded ranges: ${ranges.map(([a, b]) => `${a}-${b}`).join(' ')}`,
  );
  assert.equal(ranges[0][0], deployed, 'the first range starts at the deployment block');
  // A kept index: the second call reads only the blocks after the first.
  const index = new HolderIndex();
  ranges.length = 0;
  await getShares(counting, { holders: index });
  const seenTo = index.next!;
  assert.equal(index.seen.size, 5);
  const r4 = report(4n, [addrOf(10)], [1n]);
  await mintRound(c, { report: r4, signatures: await sign(address, r4, [1, 2, 3]) });
  ranges.length = 0;
  const after4 = await getShares(counting, { holders: index });
  assert.ok(
    ranges.length >= 1 && ranges.every(([a]) => a >= seenTo),
    `only new blocks read (from ${seenTo}: ${ranges.map(([a, b]) => `${a}-${b}`).join(' ')})`,
  );
  assert.equal(after4.holders.length, 6, 'the new holder is found');
  await assert.rejects(getShares(c, { maxRange: 0n }), /maxRange must be at least 1/);
});

test('revenue rounding is exact over many small payments; a claim cannot be made twice', async (t) => {
  const { address } = await deploy();
  const c0 = client(0, address);
  const holders = [5, 6, 7, 8, 9];
  const r = report(1n, holders.map(addrOf), [1n, 2n, 4n, 5n, 9n]); // 1000e18 * k / 21: not a round split
  await mintRound(c0, { report: r, signatures: await sign(address, r, [1, 2, 3]) });
  const payer = client(11, address);
  let total = 0n;
  const started = Date.now();
  const c0r = c0.publicClient;
  const claimableSum = async () => {
    let sum = 0n;
    for (const i of holders)
      sum += (await c0r.readContract({
        address,
        abi: c0.abi,
        functionName: 'claimable',
        args: [addrOf(i)],
      } as never)) as bigint;
    return sum;
  };
  for (let i = 0; i < 200; i++) {
    if (i % 40 === 39) {
      const sum = await claimableSum(); // invariant at every checkpoint: never more than paid, < 1 wei short per holder
      assert.ok(sum <= total && total - sum < BigInt(holders.length + 1), `after ${i} payments: ${sum} vs ${total}`);
    }
    const v = BigInt(1 + ((i * 7919) % 997)); // small, odd amounts in wei
    await pay(payer, { value: v, memo: 'usage' });
    total += v;
    if (i === 75) {
      // a transfer midway must not change what was already earned
      const c5 = client(5, address);
      await c5.walletClient.writeContract({
        address,
        abi: c5.abi,
        functionName: 'transfer',
        args: [addrOf(6), 10n ** 18n],
      } as never);
    }
  }
  t.diagnostic(`200 payments in ${Date.now() - started} ms`);
  let claimed = 0n;
  for (const i of holders) {
    const ci = client(i, address);
    const first = await claim(ci);
    claimed += first.amount;
    const second = await claim(ci);
    assert.equal(second.amount, 0n, 'second claim pays nothing');
  }
  const dust = total - claimed;
  t.diagnostic(`paid ${total} wei, claimed ${claimed}, dust ${dust}`);
  assert.ok(dust >= 0n && dust < BigInt(holders.length + 1), `dust ${dust}`);
  assert.equal(await balance(address), dust, 'contract holds exactly the unclaimed dust');
});

test('a reentrant claimer fails and is never paid twice', async () => {
  const { address } = await deploy();
  const c0 = client(0, address);
  const { abi, bytecode } = loadArtifacts().ReentrantClaimer;
  const hash = await c0.walletClient.deployContract({ abi, bytecode, args: [address] } as never);
  const attacker = (await c0.publicClient.waitForTransactionReceipt({ hash })).contractAddress!;
  const r = report(1n, [attacker, addrOf(5)], [1n, 1n]);
  await mintRound(c0, { report: r, signatures: await sign(address, r, [1, 2, 3]) });
  await pay(client(11, address), { value: 10n ** 18n });
  const before = await balance(address);
  const owed = (await c0.publicClient.readContract({
    address,
    abi: c0.abi,
    functionName: 'claimable',
    args: [attacker],
  } as never)) as bigint;
  assert.ok(5n * 10n ** 17n - owed <= 1n, `owed ${owed}`); // floor: at most 1 wei short
  await assert.rejects(
    c0.publicClient.simulateContract({
      address: attacker,
      abi: [...abi, ...c0.abi.filter((x) => x.type === 'error')],
      functionName: 'attack',
      account: c0.account,
    } as never),
    (e: Error) => /SendFailed/.test(e.message), // the inner claim hit the guard, so the payout send failed
  );
  // force it on chain too: the whole tx reverts
  const tx = await c0.walletClient.writeContract({
    address: attacker,
    abi,
    functionName: 'attack',
    gas: 500_000n,
  } as never);
  const rc = await c0.publicClient.waitForTransactionReceipt({ hash: tx });
  assert.equal(rc.status, 'reverted');
  assert.equal(await balance(attacker), 0n);
  assert.equal(await balance(address), before);
  // the honest holder still claims normally
  assert.ok(5n * 10n ** 17n - (await claim(client(5, address))).amount <= 1n);
});

test('governance: a vote passes exactly at the quorum and fails just below it', async () => {
  const { address } = await deploy({ quorumBps: 2000 });
  const c0 = client(0, address);
  const r = report(1n, [addrOf(5), addrOf(6), addrOf(7)], [200n, 199n, 601n]); // 20.0%, 19.9%, 60.1%
  await mintRound(c0, { report: r, signatures: await sign(address, r, [1, 2, 3]) });
  const a = client(5, address),
    b = client(6, address);
  const p0 = await propose(a, { key: 'dataset', value: 'bafy-next-dataset', durationSeconds: 3600 });
  const p1 = await propose(b, { key: 'lr', value: '3e-4', durationSeconds: 3600 });
  await vote(a, { id: p0.id, support: true }); // exactly 20% of supply
  await vote(b, { id: p1.id, support: true }); // 19.9%
  await assert.rejects(vote(a, { id: p0.id, support: true }), reverts('AlreadyVoted'));
  await assert.rejects(vote(client(10, address), { id: p0.id, support: true }), reverts('NoVotingPower'));
  // nothing is locked, and no vote-transfer-vote: the weight is the balance at the proposal's block
  const hash = await a.walletClient.writeContract({
    address,
    abi: a.abi,
    functionName: 'transfer',
    args: [addrOf(8), 1n],
  } as never);
  assert.equal((await c0.publicClient.waitForTransactionReceipt({ hash })).status, 'success');
  await assert.rejects(vote(client(8, address), { id: p0.id, support: true }), reverts('NoVotingPower'));
  await assert.rejects(execute(c0, { id: p0.id }), reverts('VotingOpen'));
  await net.increaseTime(3601);
  await assert.rejects(vote(client(7, address), { id: p0.id, support: false }), reverts('VotingClosed'));
  assert.equal((await execute(c0, { id: p0.id })).passed, true);
  assert.equal((await execute(c0, { id: p1.id })).passed, false);
  await assert.rejects(execute(c0, { id: p0.id }), reverts('AlreadyExecuted'));
  assert.equal(await getSetting(c0, 'dataset'), 'bafy-next-dataset');
  assert.equal(await getSetting(c0, 'lr'), '');
});

test('governance replaces the validator set: only a passed vote can, and then only the new set mints', async () => {
  const { address } = await deploy();
  const c0 = client(0, address);
  const r1 = report(1n, [addrOf(5), addrOf(6)], [3n, 1n]);
  await mintRound(c0, { report: r1, signatures: await sign(address, r1, [1, 2, 3]) });
  const a = client(5, address);
  // a malformed set is refused when proposed (threshold above N, duplicates, the zero address)
  await assert.rejects(
    proposeValidators(a, { validators: [addrOf(9)], threshold: 2, durationSeconds: 60 }),
    /threshold is more than/,
  );
  const raw = (vs: Address[], m: bigint) => encodeAbiParameters([{ type: 'address[]' }, { type: 'uint256' }], [vs, m]);
  const key = toHex('validators', { size: 32 });
  for (const [vs, m] of [
    [[addrOf(9)], 2n],
    [[addrOf(9), addrOf(9)], 1n],
    [['0x0000000000000000000000000000000000000000' as Address], 1n],
  ] as const) {
    await assert.rejects(
      c0.publicClient.simulateContract({
        address,
        abi: a.abi,
        functionName: 'propose',
        args: [key, raw([...vs], m), 60n],
        account: a.account,
      } as never),
      /BadConfig/,
    );
  }
  // a set that fails its vote changes nothing
  const lost = await proposeValidators(a, { validators: [addrOf(9), addrOf(10)], threshold: 2, durationSeconds: 60 });
  await vote(client(6, address), { id: lost.id, support: false }); // 25% against
  await net.increaseTime(61);
  assert.equal((await execute(c0, { id: lost.id })).passed, false);
  assert.deepEqual(
    (await read<Address[]>(c0, 'validators')).map((x) => x.toLowerCase()),
    validators().map((x) => x.toLowerCase()),
  );
  // a passed one replaces it: 2-of-2 {9, 10}
  const won = await proposeValidators(a, { validators: [addrOf(9), addrOf(10)], threshold: 2, durationSeconds: 60 });
  assert.equal((await getProposals(c0, { limit: 1 }))[0].value, `2 of ${addrOf(9)},${addrOf(10)}`);
  await vote(a, { id: won.id, support: true }); // 75% for
  await net.increaseTime(61);
  assert.equal((await execute(c0, { id: won.id })).passed, true);
  assert.equal(await read<bigint>(c0, 'threshold'), 2n);
  const r2 = report(2n, [addrOf(5)], [1n]);
  await assert.rejects(
    mintRound(c0, { report: r2, signatures: await sign(address, r2, [1, 2, 3]) }),
    reverts('NotValidator'),
  ); // the old set
  await assert.rejects(
    mintRound(c0, { report: r2, signatures: await sign(address, r2, [9]) }),
    reverts('NotEnoughSignatures'),
  );
  await mintRound(c0, { report: r2, signatures: await sign(address, r2, [9, 10]) });
  assert.equal((await getShares(c0)).rounds.length, 2);
});

test('resilience: commitments queue while the chain is down and are submitted once when it returns', async () => {
  const { address } = await deploy();
  const c0 = client(0, address);
  const q = new CommitmentQueue();
  net.setOnline(false);
  for (const round of [1n, 2n, 3n]) {
    const r = report(round, [addrOf(5)], [1n]);
    net.setOnline(true); // signing is off-chain; only the queue flush touches the chain
    const sigs = await sign(address, r, [1, 2, 3]);
    net.setOnline(false);
    q.enqueue({ report: r, signatures: sigs });
    const f = await q.flush(c0); // training goes on; flush fails softly
    assert.equal(f.offline, true);
  }
  q.enqueue(q.pending[0]); // a duplicate enqueue is ignored
  assert.equal(q.pending.length, 3);
  // the queue survives a restart of the node process
  const file = join(mkdtempSync(join(tmpdir(), 'tessera-queue-')), 'queue.json');
  const persisted = new CommitmentQueue(file);
  for (const item of q.pending) persisted.enqueue(item);
  assert.deepEqual(new CommitmentQueue(file).pending, q.pending);
  net.setOnline(true);
  // round 1 "landed but the receipt was lost": already on chain, must not be sent again
  await mintRound(c0, q.pending[0]);
  const f = await q.flush(c0);
  assert.deepEqual(f, { submitted: [2n, 3n], alreadyOnChain: [1n], pending: 0, offline: false, rejected: [] });
  assert.deepEqual(await q.flush(c0), { submitted: [], alreadyOnChain: [], pending: 0, offline: false, rejected: [] });
  const sh = await getShares(c0);
  assert.deepEqual(
    sh.rounds.map((x) => x.round),
    [1n, 2n, 3n],
  );
  assert.equal(sh.totalSupply, 3000n * 10n ** 18n);
});

test('--rpc: the same client code and the CLI work over HTTP JSON-RPC', async () => {
  const { address } = await deploy();
  const srv = await serveRpc(net.request);
  try {
    const { request, chain } = await rpcChain(srv.url);
    assert.equal(chain.id, net.chain.id);
    const r = report(1n, [addrOf(5), addrOf(6)], [1n, 1n]);
    const viaHttp = ledgerClient(request, chain, net.keys[0], address);
    await mintRound(viaHttp, { report: r, signatures: await sign(address, r, [1, 2, 4]) });
    await assert.rejects(
      mintRound(viaHttp, { report: r, signatures: await sign(address, r, [1, 2, 4]) }),
      reverts('RoundAlreadyMinted'),
    );
    const dir = mkdtempSync(join(tmpdir(), 'tessera-ledger-'));
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, net.keys[5]);
    const cli = (...args: string[]) =>
      execFileAsync(process.execPath, [
        'bin/tessera.js',
        ...args,
        '--rpc',
        srv.url,
        '--key',
        keyFile,
        '--contract',
        address,
        '--json',
      ]);
    const paid = JSON.parse((await cli('pay', '--eth', '0.5')).stdout) as { hash: string };
    assert.match(paid.hash, /^0x[0-9a-f]{64}$/);
    const shown = JSON.parse((await cli('ledger')).stdout) as {
      holders: { address: string; claimable: string }[];
      rounds: unknown[];
    };
    assert.equal(shown.rounds.length, 1);
    assert.equal(shown.holders.length, 2);
    const claimed = JSON.parse((await cli('claim')).stdout) as { amount: string };
    assert.ok((5n * 10n ** 17n) / 2n - BigInt(claimed.amount) <= 1n);
  } finally {
    await srv.close();
  }
  // an --rpc chain that went away is reported as ChainUnreachableError (the queue then keeps its rounds)
  const { request, chain } = {
    request: (await import('viem')).http(srv.url, { retryCount: 0 })({}).request,
    chain: net.chain,
  };
  const q = new CommitmentQueue();
  const r2 = report(2n, [addrOf(5)], [1n]);
  q.enqueue({ report: r2, signatures: await sign(address, r2, [1, 2, 3]) });
  const f = await q.flush(ledgerClient(request as never, chain, net.keys[0], address));
  assert.equal(f.offline, true);
  assert.equal(f.pending, 1);
});

test('end to end: a round report built from verified scores, signed by 3 of 4 validators, minted by any peer', async () => {
  const { address } = await deploy();
  const rep = buildScoreReport({
    manifestHash: MANIFEST,
    round: 7,
    weightsHash: h('w7'),
    checkpointCid: 'bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi',
    updateHashes: [h('u-a'), h('u-b'), h('u-c')],
    scores: [
      { address: addrOf(6), score: 0.5 },
      { address: addrOf(5), score: 1.5 },
      { address: addrOf(6), score: 0.0 },
    ],
  });
  // every validator rebuilds the same bytes
  assert.deepEqual(
    buildScoreReport({
      manifestHash: MANIFEST,
      round: 7,
      weightsHash: h('w7'),
      checkpointCid: 'bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi',
      updateHashes: [h('u-c'), h('u-a'), h('u-b')],
      scores: [
        { address: addrOf(5), score: 1.5 },
        { address: addrOf(6), score: 0.5 },
      ],
    }),
    rep,
  );
  const anyPeer = client(9, address);
  await mintRound(anyPeer, { report: rep, signatures: await sign(address, rep, [4, 2, 1]) });
  const s = await getShares(anyPeer);
  assert.deepEqual(
    s.holders.map((x) => [x.address, x.balance]),
    [
      [addrOf(5), 750n * 10n ** 18n],
      [addrOf(6), 250n * 10n ** 18n],
    ],
  );
  assert.equal(
    Buffer.from(s.rounds[0].checkpointCid.slice(2), 'hex').toString(),
    'bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi',
  );
  assert.equal(s.rounds[0].updatesRoot, rep.updatesRoot);
});
