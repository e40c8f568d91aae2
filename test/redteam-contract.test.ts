/**
 * Red team, issue 17 (contract half): can the run's governance be captured? Each test runs one
 * attack against TesseraRun on the in-process EDR devnet and asserts the defence. What each attack did
 * against the contract before the fix (measured with the same test, commit "Red team, issue 17: eight
 * governance attacks...") is in the test's comment.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { encodeFunctionData, keccak256, toHex, type Address, type Hex } from 'viem';
import {
  startDevnet,
  ledgerClient,
  deployRun,
  signScoreReport,
  mintRound,
  propose,
  proposeValidators,
  vote,
  execute,
  getSetting,
  read,
  loadArtifacts,
  clientsFor,
  CommitmentQueue,
  ContractRevertError,
  type Devnet,
  type LedgerClient,
  type ScoreReport,
} from '../src/ledger/index.js';

let net: Devnet;
const MANIFEST = keccak256(toHex('manifest'));
const h = (s: string): Hex => keccak256(toHex(s));
const E18 = 10n ** 18n;

// keys: 0 deployer/submitter, 1..4 validators (3-of-4), 5..9 holders, 10 outsider, 11 payer
const client = (i: number, address: Address): LedgerClient =>
  ledgerClient(net.request, net.chain, net.keys[i], address);
const addrOf = (i: number): Address => clientsFor(net.request, net.chain, net.keys[i]).account.address;
const validators = (): Address[] => [1, 2, 3, 4].map(addrOf);

const MIN = 60;
const MAX = 86_400;
const WINDOW = 86_400;
async function deploy(opts: { quorumBps?: number } = {}): Promise<{ address: Address; gasUsed: bigint }> {
  const c = clientsFor(net.request, net.chain, net.keys[0]);
  return deployRun(c as never, {
    manifestHash: MANIFEST,
    validators: validators(),
    threshold: 3,
    minVotingPeriodSeconds: MIN,
    maxVotingPeriodSeconds: MAX,
    executionWindowSeconds: WINDOW,
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
/** Mint one round to holders `who` (key indices) with `scores`, signed by validators 1..3. */
async function mint(address: Address, round: bigint, who: number[], scores: bigint[]) {
  const r = report(round, who.map(addrOf), scores);
  return mintRound(client(0, address), { report: r, signatures: await sign(address, r, [1, 2, 3]) });
}
const reverts = (reason: string) => (e: unknown) => {
  assert.ok(e instanceof ContractRevertError, `expected ContractRevertError, got ${String(e)}`);
  assert.equal(e.reason, reason);
  return true;
};
const balanceOf = (c: LedgerClient, i: number) => read<bigint>(c, 'balanceOf', [addrOf(i)]);
async function transfer(address: Address, from: number, to: number, amount: bigint) {
  const c = client(from, address);
  const { request } = await c.publicClient.simulateContract({
    address,
    abi: c.abi,
    functionName: 'transfer',
    args: [addrOf(to), amount],
    account: c.account,
  } as never);
  const hash = await c.walletClient.writeContract(request as never);
  return c.publicClient.waitForTransactionReceipt({ hash });
}
/** Send the given calls (key index, function, args) in one block, unsimulated; returns receipt statuses. */
async function oneBlock(address: Address, calls: [number, string, unknown[]][]): Promise<string[]> {
  const nonces = new Map<number, number>();
  await net.request({ method: 'evm_setAutomine', params: [false] } as never);
  const hashes: Hex[] = [];
  try {
    for (const [i, fn, args] of calls) {
      const c = client(i, address);
      const n = nonces.get(i) ?? (await c.publicClient.getTransactionCount({ address: addrOf(i) }));
      nonces.set(i, n + 1);
      const data = encodeFunctionData({ abi: c.abi, functionName: fn, args } as never);
      hashes.push(await c.walletClient.sendTransaction({ to: address, data, gas: 1_000_000n, nonce: n } as never));
    }
    await net.request({ method: 'evm_mine', params: [] } as never);
  } finally {
    await net.request({ method: 'evm_setAutomine', params: [true] } as never);
  }
  const pc = client(0, address).publicClient;
  return Promise.all(hashes.map(async (hash) => (await pc.getTransactionReceipt({ hash })).status));
}
type Prop = {
  yes: bigint;
  no: bigint;
  supplyAtStart: bigint;
  deadline: bigint;
  executed: boolean;
  passed: boolean;
  expired: boolean;
};
const proposal = (address: Address, id: bigint) => read<Prop>(client(0, address), 'getProposal', [id]);

before(async () => {
  loadArtifacts();
  net = await startDevnet({ accounts: 12 });
});
after(() => net.stop());

// Before: proposing with a 1 s window and voting in the same block, a 25% holder passed
// 'dataset = bafy-evil' alone; the 75% holder's vote came a block late and was refused.
test('attack 1: a window too short for anyone else to vote is refused; the minimum leaves time to vote', async (t) => {
  const { address } = await deploy({ quorumBps: 2000 });
  await mint(address, 1n, [5, 6], [25n, 75n]); // 5: 25%, 6: 75% (who votes no)
  const a = client(5, address);
  for (const d of [1, MIN - 1, MAX + 1])
    await assert.rejects(
      propose(a, { key: 'dataset', value: 'bafy-evil', durationSeconds: d }),
      reverts('VotingPeriodOutOfBounds'),
    );
  // propose + vote in one block: the vote is refused (voting opens the block after the snapshot)
  const key = toHex('dataset', { size: 32 });
  const st = await oneBlock(address, [
    [5, 'propose', [key, toHex('bafy-evil'), BigInt(MIN)]],
    [5, 'vote', [0n, true]],
  ]);
  assert.deepEqual(st, ['success', 'reverted']);
  await vote(a, { id: 0n, support: true });
  await vote(client(6, address), { id: 0n, support: false }); // the minimum window leaves time
  await net.increaseTime(MIN + 1);
  const passed = (await execute(client(0, address), { id: 0n })).passed;
  t.diagnostic(`window ${MIN} s (the minimum): the 75% holder voted; passed=${passed}`);
  assert.equal(passed, false);
  assert.equal(await getSetting(a, 'dataset'), '');
  // a shorter window after a long one is raised to it: deadlines never decrease with the id
  const long = await propose(a, { key: 'lr', value: '1', durationSeconds: MAX });
  const short = await propose(a, { key: 'lr', value: '2', durationSeconds: MIN });
  assert.equal((await proposal(address, short.id)).deadline, (await proposal(address, long.id)).deadline);
});

// Before: after the proposal, two rounds minted 2000 shares to a fresh address that voted with them:
// yes 2300 + no 700 = 3000 shares voted on a supply of 1000 at the proposal; it passed.
test('attack 2: voting power is the balance at the proposal block; later mints, transfers and same-block loans carry none', async (t) => {
  const { address } = await deploy({ quorumBps: 2000 });
  await mint(address, 1n, [5, 6], [30n, 70n]);
  const p = await propose(client(5, address), { key: 'dataset', value: 'bafy-evil', durationSeconds: MIN });
  await vote(client(5, address), { id: p.id, support: true });
  await vote(client(6, address), { id: p.id, support: false });
  await mint(address, 2n, [7], [1n]);
  await mint(address, 3n, [7], [1n]);
  await assert.rejects(vote(client(7, address), { id: p.id, support: true }), reverts('NoVotingPower'));
  // vote, transfer, vote again from the receiver: the receiver had nothing at the snapshot
  await transfer(address, 5, 8, 100n * E18);
  await assert.rejects(vote(client(8, address), { id: p.id, support: true }), reverts('NoVotingPower'));
  await assert.rejects(vote(client(5, address), { id: p.id, support: true }), reverts('AlreadyVoted'));
  const pr = await proposal(address, p.id);
  await net.increaseTime(MIN + 1);
  const passed = (await execute(client(0, address), { id: p.id })).passed;
  t.diagnostic(
    `yes ${pr.yes / E18} + no ${pr.no / E18} = ${(pr.yes + pr.no) / E18} shares voted, supply at proposal ${pr.supplyAtStart / E18}; passed=${passed}`,
  );
  assert.equal(pr.supplyAtStart, 1000n * E18);
  assert.ok(pr.yes + pr.no <= pr.supplyAtStart);
  assert.equal(passed, false);
  // shares borrowed and returned inside the proposal's own block count for nothing
  const key = toHex('lr', { size: 32 });
  const id = await read<bigint>(client(0, address), 'proposalCount');
  const st = await oneBlock(address, [
    [6, 'transfer', [addrOf(9), 700n * E18]],
    [9, 'propose', [key, toHex('9'), BigInt(MIN)]],
    [9, 'transfer', [addrOf(6), 700n * E18]],
  ]);
  assert.deepEqual(st, ['success', 'success', 'success']);
  assert.equal(await read<bigint>(client(0, address), 'votingPower', [id, addrOf(9)]), 0n);
  assert.equal(await read<bigint>(client(0, address), 'votingPower', [id, addrOf(6)]), 700n * E18);
  await assert.rejects(vote(client(9, address), { id, support: true }), reverts('NoVotingPower'));
});

// Before: a vote on a proposal with a 2^53 s window locked the voter's shares for 285 million years.
test('attack 3: votes lock nothing, and no window exceeds the maximum', async (t) => {
  const { address } = await deploy();
  await mint(address, 1n, [5, 6], [1n, 1n]);
  await assert.rejects(
    propose(client(5, address), { key: 'lr', value: '1', durationSeconds: Number.MAX_SAFE_INTEGER }),
    reverts('VotingPeriodOutOfBounds'),
  );
  const p = await propose(client(5, address), { key: 'lr', value: '1', durationSeconds: MAX });
  await vote(client(6, address), { id: p.id, support: false });
  await transfer(address, 6, 7, 1n); // right after voting
  assert.equal(await balanceOf(client(0, address), 7), 1n);
  const pr = await proposal(address, p.id);
  t.diagnostic(`voter transferred in the next block; its no vote stays ${pr.no / E18} shares`);
  assert.equal(pr.no, 500n * E18);
});

// Before: the newer of two passed 'dataset' proposals was executed first and the older one 10 years
// later: dataset went back to the stale 'bafy-old'.
test('attack 4: proposals settle in id order, and a passed one expires after the execution window', async (t) => {
  const { address } = await deploy();
  await mint(address, 1n, [5, 6], [1n, 1n]);
  const a = client(5, address);
  const old = await propose(a, { key: 'dataset', value: 'bafy-old', durationSeconds: MIN });
  const neu = await propose(a, { key: 'dataset', value: 'bafy-new', durationSeconds: MIN });
  await vote(a, { id: old.id, support: true });
  await vote(a, { id: neu.id, support: true });
  await net.increaseTime(MIN + 1);
  assert.equal((await execute(client(0, address), { id: neu.id })).passed, true); // settles old first
  await assert.rejects(execute(client(0, address), { id: old.id }), reverts('AlreadyExecuted'));
  assert.equal((await proposal(address, old.id)).passed, true);
  assert.equal(await getSetting(a, 'dataset'), 'bafy-new');
  // a passed proposal left unexecuted past the window is expired, not applied
  const late = await propose(a, { key: 'dataset', value: 'bafy-late', durationSeconds: MIN });
  await vote(a, { id: late.id, support: true });
  await net.increaseTime(MIN + WINDOW + 2);
  assert.equal((await execute(client(0, address), { id: late.id })).passed, false);
  const pr = await proposal(address, late.id);
  t.diagnostic(
    `newer executed: the older settled first; dataset = ${await getSetting(a, 'dataset')}; late one expired=${pr.expired}`,
  );
  assert.deepEqual([pr.executed, pr.passed, pr.expired], [true, false, true]);
  assert.equal(await getSetting(a, 'dataset'), 'bafy-new');
});

// Before: 11% yes alone failed a 20% quorum, 11% yes + 10% no passed it.
test('attack 5: the quorum counts yes votes only', async (t) => {
  const { address } = await deploy({ quorumBps: 2000 });
  await mint(address, 1n, [5, 6, 7, 8], [11n, 10n, 10n, 69n]);
  const helped = await propose(client(5, address), { key: 'lr', value: '2', durationSeconds: MIN });
  await vote(client(5, address), { id: helped.id, support: true });
  await vote(client(6, address), { id: helped.id, support: false });
  const enough = await propose(client(5, address), { key: 'lr', value: '3', durationSeconds: MIN });
  for (const i of [5, 7]) await vote(client(i, address), { id: enough.id, support: true });
  await vote(client(6, address), { id: enough.id, support: false });
  await net.increaseTime(MIN + 1);
  const b = (await execute(client(0, address), { id: helped.id })).passed;
  const c = (await execute(client(0, address), { id: enough.id })).passed;
  t.diagnostic(`11% yes + 10% no: passed=${b}; 21% yes + 10% no: passed=${c}`);
  assert.equal(b, false);
  assert.equal(c, true);
});

// Before: with round 5 minted, the queue's round 4 was refused (RoundNotIncreasing), reported as
// alreadyOnChain, isMinted(4) = false and its holder got nothing.
test('attack 6: rounds mint in any order, each once; the queue reports what is really on chain', async (t) => {
  const { address } = await deploy();
  const c = client(0, address);
  await mint(address, 5n, [5], [1n]);
  const r4 = report(4n, [addrOf(6)], [1n]);
  const q = new CommitmentQueue();
  const item = { report: r4, signatures: await sign(address, r4, [1, 2, 3]) };
  q.enqueue(item);
  const f = await q.flush(c);
  const minted4 = await read<boolean>(c, 'isMinted', [4n]);
  const bal6 = await balanceOf(c, 6);
  t.diagnostic(
    `queue: submitted=[${f.submitted.join(',')}] alreadyOnChain=[${f.alreadyOnChain.join(',')}]; isMinted(4)=${minted4}; round 4's holder has ${bal6 / E18}`,
  );
  assert.deepEqual(f.submitted, [4n]);
  assert.equal(minted4, true);
  assert.equal(bal6, 1000n * E18);
  await assert.rejects(mintRound(c, item), reverts('RoundAlreadyMinted'));
  await assert.rejects(mint(address, 5n, [7], [1n]), reverts('RoundAlreadyMinted'));
  // a replayed report goes nowhere, and the queue says it is on chain (it is)
  q.enqueue(item);
  assert.deepEqual((await q.flush(c)).alreadyOnChain, [4n]);
  assert.equal(await read<bigint>(c, 'totalSupply'), 2000n * E18);
});

// Before: once round 2^64-1 was minted, every other round (2, 3, ...) was refused: minting ended.
test('attack 7: a round beyond the window is refused, and a high round never blocks lower ones', async (t) => {
  const { address } = await deploy();
  const c = client(0, address);
  await mint(address, 1n, [5], [1n]);
  await assert.rejects(mint(address, 2n ** 64n - 1n, [5], [1n]), reverts('RoundOutOfWindow'));
  const ceiling = await read<bigint>(c, 'roundCeiling');
  assert.equal(ceiling, 1n + 2n ** 32n);
  await assert.rejects(mint(address, ceiling + 1n, [5], [1n]), reverts('RoundOutOfWindow'));
  await mint(address, ceiling, [5], [1n]); // the farthest one report may jump
  await mint(address, 2n, [5], [1n]); // lower rounds still mint
  await mint(address, 3n, [5], [1n]);
  t.diagnostic(
    `round 2^64-1 refused; one report jumps at most 2^32 (to ${ceiling}); rounds 2, 3 minted after it; 2^64 needs 2^32 reports`,
  );
  assert.equal(await read<bigint>(c, 'roundCount'), 4n);
});

// Before: validators holding 70% (their payout address is their signing key) voted no on their
// removal three times of three; 30% of holders for it; 0 passed.
test('attack 8: validators in office cannot vote on the validator set, and their shares are out of its quorum', async (t) => {
  const { address } = await deploy({ quorumBps: 2000 });
  await mint(address, 1n, [1, 2, 3, 5, 6], [25n, 25n, 20n, 15n, 15n]);
  const p = await proposeValidators(client(5, address), {
    validators: [addrOf(8), addrOf(9)],
    threshold: 2,
    durationSeconds: MIN,
  });
  for (const i of [1, 2, 3])
    await assert.rejects(vote(client(i, address), { id: p.id, support: false }), reverts('ValidatorCannotVote'));
  await vote(client(5, address), { id: p.id, support: true });
  await vote(client(6, address), { id: p.id, support: false }); // a holder's no still counts
  const pr = await proposal(address, p.id);
  assert.equal(pr.supplyAtStart, 300n * E18, 'quorum base: the holders other than the validators');
  // a validator moving its shares after the snapshot gains nothing
  await transfer(address, 1, 7, 250n * E18);
  await assert.rejects(vote(client(7, address), { id: p.id, support: false }), reverts('NoVotingPower'));
  await net.increaseTime(MIN + 1);
  assert.equal((await execute(client(0, address), { id: p.id })).passed, false, 'a tie fails');
  // Shares a validator moved before a proposal are a holder's: 7 now has validator 1's 250, and the
  // eligible base is 1000 - (250 + 200) still at validators 2 and 3 = 550. A validator-set change
  // needs yes from half of it: 5's 150 alone (27%) fails, though above the 20% quorum.
  const again = () =>
    proposeValidators(client(5, address), { validators: [addrOf(8), addrOf(9)], threshold: 2, durationSeconds: MIN });
  const p2 = await again();
  assert.equal((await proposal(address, p2.id)).supplyAtStart, 550n * E18);
  await vote(client(5, address), { id: p2.id, support: true });
  await net.increaseTime(MIN + 1);
  assert.equal((await execute(client(0, address), { id: p2.id })).passed, false, 'below half of the eligible supply');
  const p3 = await again();
  for (const i of [5, 6]) await vote(client(i, address), { id: p3.id, support: true });
  await vote(client(7, address), { id: p3.id, support: false }); // the moved shares do vote
  await net.increaseTime(MIN + 1);
  const passed = (await execute(client(0, address), { id: p3.id })).passed;
  t.diagnostic(
    `holders' 300 of the eligible 550 for, 250 moved out of a validator against, the validators' 450 barred: passed=${passed}`,
  );
  assert.equal(passed, true);
  assert.deepEqual(await read<Address[]>(client(0, address), 'validators'), [addrOf(8), addrOf(9)]);
  const r = report(2n, [addrOf(5)], [1n]);
  await assert.rejects(
    mintRound(client(0, address), { report: r, signatures: await sign(address, r, [1, 2, 3]) }),
    reverts('NotValidator'),
  );
  await mintRound(client(0, address), { report: r, signatures: await sign(address, r, [8, 9]) });
});

test('snapshots: a proposal and a transfer in one block, after an older proposal, leave both snapshots right', async () => {
  const { address } = await deploy();
  await mint(address, 1n, [5, 6], [1n, 1n]); // 500 each
  const c0 = client(0, address);
  const p1 = await propose(client(5, address), { key: 'lr', value: '1', durationSeconds: MIN });
  // one block: a second proposal, then 6's first move since p1 (its history must still keep p1's 500)
  const key = toHex('lr', { size: 32 });
  assert.deepEqual(
    await oneBlock(address, [
      [5, 'propose', [key, toHex('2'), BigInt(MIN)]],
      [6, 'transfer', [addrOf(7), 200n * E18]],
    ]),
    ['success', 'success'],
  );
  await mint(address, 2n, [6], [1n]); // after both snapshots
  const power = (id: bigint, i: number) => read<bigint>(c0, 'votingPower', [id, addrOf(i)]);
  assert.equal(await power(p1.id, 6), 500n * E18);
  assert.equal(await power(p1.id, 7), 0n);
  assert.equal(await power(p1.id + 1n, 6), 300n * E18, 'end of the second proposal block');
  assert.equal(await power(p1.id + 1n, 7), 200n * E18);
  assert.equal((await proposal(address, p1.id)).supplyAtStart, 1000n * E18);
  assert.equal((await proposal(address, p1.id + 1n)).supplyAtStart, 1000n * E18);
  assert.equal(await read<bigint>(c0, 'totalSupply'), 2000n * E18);
});

test('deployment bounds: the contract refuses a zero minimum, a minimum above the maximum, periods over a year', async () => {
  const c = clientsFor(net.request, net.chain, net.keys[0]);
  const { abi, bytecode } = loadArtifacts().TesseraRun;
  const year = 365n * 86_400n;
  for (const [min, max, win] of [
    [0n, 60n, 60n],
    [120n, 60n, 60n],
    [60n, year + 1n, 60n],
    [60n, 120n, 0n],
    [60n, 120n, year + 1n],
  ]) {
    const hash = await c.walletClient.deployContract({
      abi,
      bytecode,
      args: [MANIFEST, validators(), 3n, 10n ** 21n, 2000n, min, max, win],
      gas: 6_000_000n,
    } as never);
    const r = await c.publicClient.waitForTransactionReceipt({ hash });
    assert.equal(r.status, 'reverted', `min ${min} max ${max} window ${win}`);
  }
});

test('gas: deploy, mintRound, propose, vote, execute', async (t) => {
  const { address, gasUsed } = await deploy();
  const m = await mint(address, 1n, [5, 6], [3n, 1n]);
  const m2 = await mint(address, 2n, [5, 6], [3n, 1n]);
  const a = client(5, address);
  const p = await propose(a, { key: 'dataset', value: 'bafy-next-dataset', durationSeconds: 3600 });
  const gasOf = async (hash: Hex) => (await a.publicClient.getTransactionReceipt({ hash })).gasUsed;
  const v = await vote(a, { id: p.id, support: true });
  await net.increaseTime(3601);
  const e = await execute(client(0, address), { id: p.id });
  const m3 = await mint(address, 3n, [5, 6], [3n, 1n]);
  const rows = {
    deploy: gasUsed,
    'mintRound (2 new holders, 3 sigs)': m.gasUsed,
    'mintRound (2 existing holders)': m2.gasUsed,
    propose: await gasOf(p.hash),
    vote: await gasOf(v.hash),
    execute: await gasOf(e.hash),
    'mintRound after a vote': m3.gasUsed,
  };
  for (const [k, g] of Object.entries(rows)) t.diagnostic(`gas ${k}: ${g}`);
});
