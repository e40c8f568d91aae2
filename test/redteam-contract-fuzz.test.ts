/**
 * Red team, issue 17: property test of TesseraRun's ledger and governance. Seeded random sequences
 * of mint / transfer / propose / vote / execute / wait from several accounts (validators among them)
 * run against a model of the rules; after every step the contract must agree with the model and:
 *  - total supply equals the sum of balances (and the model's supply);
 *  - a proposal's yes + no never exceed its quorum base (the supply at its snapshot), and every vote
 *    weighs exactly the voter's balance at the snapshot;
 *  - no account votes twice (each accepted vote is a first vote, a second one is refused);
 *  - proposals settle in id order, and a passed one is applied only inside its execution window;
 *  - each round is minted at most once (refused after), and no round beyond the window is minted.
 * Seed 5 is in the set because a validator-set change passes in it (seeds 4 and 6-9 pass too:
 * TESSERA_FUZZ_SEEDS=4,6 TESSERA_FUZZ_STEPS=1000 runs others).
 * Steps whose outcome would depend on a timestamp within 3 s of a boundary are skipped (the EDR
 * clock follows the wall clock between explicit jumps).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { keccak256, toHex, type Address, type Hex } from 'viem';
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
  write,
  loadArtifacts,
  clientsFor,
  ContractRevertError,
  type Devnet,
  type LedgerClient,
  type ScoreReport,
} from '../src/ledger/index.js';
import { Rng } from '../src/util/rng.js';

let net: Devnet;
const MANIFEST = keccak256(toHex('fuzz-manifest'));
const SHARES = 1000n * 10n ** 18n;
const MIN = 60;
const MAX = 600;
const WINDOW = 300;
const QUORUM = 2000n;
const AHEAD = 2n ** 32n;
const ACTORS = [1, 2, 3, 4, 5, 6, 7, 8, 9];
const SETS: { vs: number[]; m: number }[] = [
  { vs: [1, 2, 3, 4], m: 3 },
  { vs: [1, 2, 4], m: 2 },
  { vs: [3, 4], m: 2 },
];
const STEPS = Number(process.env.TESSERA_FUZZ_STEPS ?? 300);
const SEEDS = (process.env.TESSERA_FUZZ_SEEDS ?? '1,2,3,5').split(',').map(Number);

const addrOf = (i: number): Address => clientsFor(net.request, net.chain, net.keys[i]).account.address;
const reasonOf = (e: unknown): string => {
  if (e instanceof ContractRevertError) return e.reason;
  throw e;
};

interface MProp {
  key: string;
  value: string;
  set: number; // index into SETS for a validator-set proposal
  snap: Map<number, bigint>;
  snapSupply: bigint;
  validatorsAtCreation: number[];
  deadline: bigint;
  yes: bigint;
  no: bigint;
  voters: Set<number>;
  executed: boolean;
  passed: boolean;
  expired: boolean;
}

async function fuzz(seed: number, steps: number): Promise<Record<string, number>> {
  const rng = new Rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[rng.nextInt(xs.length)];
  const d = await deployRun(clientsFor(net.request, net.chain, net.keys[0]) as never, {
    manifestHash: MANIFEST,
    validators: SETS[0].vs.map(addrOf),
    threshold: SETS[0].m,
    quorumBps: Number(QUORUM),
    minVotingPeriodSeconds: MIN,
    maxVotingPeriodSeconds: MAX,
    executionWindowSeconds: WINDOW,
  });
  const address = d.address;
  const cl = new Map<number, LedgerClient>();
  const c = (i: number): LedgerClient => {
    let x = cl.get(i);
    if (!x) cl.set(i, (x = ledgerClient(net.request, net.chain, net.keys[i], address)));
    return x;
  };
  const pc = c(0).publicClient;
  const blockTs = async (hash?: Hex): Promise<bigint> => {
    if (!hash) return (await pc.getBlock()).timestamp;
    const r = await pc.getTransactionReceipt({ hash });
    return (await pc.getBlock({ blockNumber: r.blockNumber })).timestamp;
  };

  // the model
  const bal = new Map<number, bigint>(ACTORS.map((i) => [i, 0n]));
  let supply = 0n;
  const minted = new Set<bigint>();
  let highest = 0n;
  const props: MProp[] = [];
  let settled = 0;
  let set = 0;
  const config = new Map<string, string>();
  const counts: Record<string, number> = {};
  const count = (k: string) => (counts[k] = (counts[k] ?? 0) + 1);

  for (let step = 0; step < steps; step++) {
    const r = rng.nextFloat();
    const now = await blockTs();
    if (r < 0.28) {
      // ---- mint
      const u = rng.nextFloat();
      const round =
        u < 0.04
          ? 2n ** 64n - 1n
          : u < 0.07
            ? highest + AHEAD
            : u < 0.1
              ? highest + AHEAD + 1n
              : BigInt(1 + rng.nextInt(40));
      const who = ACTORS.filter(() => rng.nextFloat() < 0.4);
      const scores = who.map(() => BigInt(rng.nextInt(4)));
      const rep: ScoreReport = {
        manifestHash: MANIFEST,
        round,
        weightsHash: keccak256(toHex(`w${round}`)),
        checkpointCid: toHex(`cid-${round}`),
        updatesRoot: keccak256(toHex(`u${round}`)),
        scoresRoot: keccak256(toHex(`s${round}`)),
        recipients: who.map(addrOf),
        scores,
      };
      const signers = SETS[set].vs.slice(0, SETS[set].m);
      const sigs = await Promise.all(
        signers.map((i) =>
          signScoreReport({ account: c(i).account, chainId: net.chain.id, contract: address, report: rep }),
        ),
      );
      const total = scores.reduce((a, b) => a + b, 0n);
      const expect = minted.has(round)
        ? 'RoundAlreadyMinted'
        : round > highest + AHEAD
          ? 'RoundOutOfWindow'
          : total === 0n
            ? 'ZeroScores'
            : 'ok';
      let got = 'ok';
      try {
        await mintRound(c(0), { report: rep, signatures: sigs });
      } catch (e) {
        got = reasonOf(e);
      }
      assert.equal(got, expect, `step ${step}: mint round ${round}`);
      count(`mint:${got}`);
      if (got === 'ok') {
        minted.add(round);
        if (round > highest) highest = round;
        who.forEach((i, k) => {
          const amt = (SHARES * scores[k]) / total;
          bal.set(i, bal.get(i)! + amt);
          supply += amt;
        });
      }
    } else if (r < 0.45) {
      // ---- transfer
      const from = pick(ACTORS);
      const to = pick(ACTORS);
      const have = bal.get(from)!;
      const amt = rng.nextFloat() < 0.1 ? have + 1n : (have * BigInt(rng.nextInt(101))) / 100n;
      let got = 'ok';
      try {
        await write(c(from), 'transfer', 'transfer', [addrOf(to), amt]);
      } catch (e) {
        got = reasonOf(e);
      }
      assert.equal(got, amt > have ? 'InsufficientBalance' : 'ok', `step ${step}: transfer`);
      count(`transfer:${got}`);
      if (got === 'ok') {
        bal.set(from, bal.get(from)! - amt);
        bal.set(to, bal.get(to)! + amt);
      }
    } else if (r < 0.57) {
      // ---- propose
      const who = pick(ACTORS);
      const duration = MIN - 5 + rng.nextInt(MAX - MIN + 11);
      const isSet = rng.nextFloat() < 0.3;
      const s = rng.nextInt(SETS.length);
      const key = isSet ? 'validators' : pick(['dataset', 'lr']);
      const value = `v${step}`;
      const expect =
        bal.get(who)! === 0n ? 'NotShareholder' : duration < MIN || duration > MAX ? 'VotingPeriodOutOfBounds' : 'ok';
      let got = 'ok';
      let hash: Hex | undefined;
      try {
        hash = isSet
          ? (
              await proposeValidators(c(who), {
                validators: SETS[s].vs.map(addrOf),
                threshold: SETS[s].m,
                durationSeconds: duration,
              })
            ).hash
          : (await propose(c(who), { key, value, durationSeconds: duration })).hash;
      } catch (e) {
        got = reasonOf(e);
      }
      assert.equal(got, expect, `step ${step}: propose`);
      count(`propose:${got}`);
      if (got === 'ok') {
        const ts = await blockTs(hash);
        let deadline = ts + BigInt(duration);
        const prev = props.at(-1);
        if (prev && prev.deadline > deadline) deadline = prev.deadline;
        props.push({
          key,
          value,
          set: s,
          snap: new Map(bal),
          snapSupply: supply,
          validatorsAtCreation: [...SETS[set].vs],
          deadline,
          yes: 0n,
          no: 0n,
          voters: new Set(),
          executed: false,
          passed: false,
          expired: false,
        });
        const onChain = await read<{ deadline: bigint }>(c(0), 'getProposal', [BigInt(props.length - 1)]);
        assert.equal(onChain.deadline, deadline, `step ${step}: deadlines never decrease`);
      }
    } else if (r < 0.82) {
      // ---- vote
      if (props.length === 0) continue;
      const open = props.flatMap((q, i) => (q.deadline > now + 3n ? [i] : []));
      const id = open.length > 0 && rng.nextFloat() < 0.85 ? pick(open) : rng.nextInt(props.length);
      const p = props[id];
      const near = p.deadline - now;
      if (near >= -1n && near <= 3n) {
        count('vote:skipped-boundary');
        continue;
      }
      const who = p.voters.size > 0 && rng.nextFloat() < 0.2 ? pick([...p.voters]) : pick(ACTORS);
      const support = rng.nextFloat() < (p.key === 'validators' ? 0.9 : 0.75);
      const w = p.snap.get(who)!;
      const expect =
        now >= p.deadline
          ? 'VotingClosed'
          : p.voters.has(who)
            ? 'AlreadyVoted'
            : p.key === 'validators' && p.validatorsAtCreation.includes(who)
              ? 'ValidatorCannotVote'
              : w === 0n
                ? 'NoVotingPower'
                : 'ok';
      let got = 'ok';
      try {
        await vote(c(who), { id: BigInt(id), support });
      } catch (e) {
        got = reasonOf(e);
      }
      assert.equal(got, expect, `step ${step}: vote ${who} on ${id}`);
      count(`vote:${got}`);
      if (got === 'ok') {
        p.voters.add(who);
        if (support) p.yes += w;
        else p.no += w;
      }
    } else if (r < 0.94) {
      // ---- execute
      if (props.length === 0) continue;
      const id =
        settled < props.length && rng.nextFloat() < 0.8
          ? settled + rng.nextInt(Math.min(3, props.length - settled))
          : rng.nextInt(props.length);
      const p = props[id];
      const range = props.slice(settled, id + 1);
      const boundary = [p.deadline, ...range.map((q) => q.deadline + BigInt(WINDOW))].some(
        (b) => b - now >= -2n && b - now <= 3n,
      );
      if (boundary) {
        count('execute:skipped-boundary');
        continue;
      }
      const expect = id < settled ? 'AlreadyExecuted' : now < p.deadline ? 'VotingOpen' : 'ok';
      let got = 'ok';
      let hash: Hex | undefined;
      try {
        hash = (await execute(c(pick(ACTORS)), { id: BigInt(id) })).hash;
      } catch (e) {
        got = reasonOf(e);
      }
      assert.equal(got, expect, `step ${step}: execute ${id} (settled ${settled})`);
      count(`execute:${got}`);
      if (got === 'ok') {
        const ts = await blockTs(hash);
        for (let n = settled; n <= id; n++) {
          const q = props[n];
          let eligible = q.snapSupply;
          if (q.key === 'validators') for (const v of q.validatorsAtCreation) eligible -= q.snap.get(v)!;
          const quorum = q.key === 'validators' && QUORUM < 5000n ? 5000n : QUORUM;
          const won = q.yes * 10_000n >= eligible * quorum && q.yes > q.no;
          q.executed = true;
          q.expired = won && ts > q.deadline + BigInt(WINDOW);
          q.passed = won && !q.expired;
          assert.ok(ts >= q.deadline, 'settled after its deadline');
          if (q.passed) {
            assert.ok(ts <= q.deadline + BigInt(WINDOW), 'applied inside its window');
            if (q.key === 'validators') {
              set = q.set;
              count('validator-set-changed');
            } else config.set(q.key, q.value);
          }
          count(q.passed ? 'settled:passed' : q.expired ? 'settled:expired' : 'settled:failed');
        }
        settled = id + 1;
      }
    } else {
      // ---- wait
      await net.increaseTime(1 + rng.nextInt(rng.nextFloat() < 0.15 ? 2 * WINDOW : 150));
      count('wait');
    }

    // ---- invariants, after every step
    const cc = c(0);
    const total = await read<bigint>(cc, 'totalSupply');
    let sum = 0n;
    for (const i of ACTORS) {
      const b = await read<bigint>(cc, 'balanceOf', [addrOf(i)]);
      assert.equal(b, bal.get(i), `step ${step}: balance of ${i}`);
      sum += b;
    }
    assert.equal(total, sum, `step ${step}: total supply = sum of balances`);
    assert.equal(total, supply);
    assert.equal(await read<bigint>(cc, 'roundCount'), BigInt(minted.size), `step ${step}: each round once`);
    assert.equal(await read<bigint>(cc, 'settled'), BigInt(settled), `step ${step}: settled in order`);
    for (let id = 0; id < props.length; id++) {
      const p = props[id];
      const o = await read<{
        yes: bigint;
        no: bigint;
        supplyAtStart: bigint;
        executed: boolean;
        passed: boolean;
        expired: boolean;
      }>(cc, 'getProposal', [BigInt(id)]);
      let eligible = p.snapSupply;
      if (p.key === 'validators') for (const v of p.validatorsAtCreation) eligible -= p.snap.get(v)!;
      assert.equal(o.supplyAtStart, eligible, `step ${step}: proposal ${id} quorum base`);
      assert.ok(o.yes + o.no <= o.supplyAtStart, `step ${step}: proposal ${id} yes+no <= supply at snapshot`);
      assert.deepEqual(
        [o.yes, o.no, o.executed, o.passed, o.expired],
        [p.yes, p.no, p.executed, p.passed, p.expired],
        `step ${step}: proposal ${id}`,
      );
    }
  }
  // final: settings and the validator set are the model's; every minted round reads as minted
  for (const [k, v] of config) assert.equal(await getSetting(c(0), k), v);
  assert.deepEqual(await read<Address[]>(c(0), 'validators'), SETS[set].vs.map(addrOf));
  for (const round of minted) assert.equal(await read<boolean>(c(0), 'isMinted', [round]), true);
  counts.proposals = props.length;
  counts.rounds = minted.size;
  return counts;
}

before(async () => {
  loadArtifacts();
  net = await startDevnet({ accounts: 10 });
});
after(() => net.stop());

for (const seed of SEEDS) {
  test(`property: ${STEPS} random steps (seed ${seed}) keep supply, votes, execution order and rounds consistent`, async (t) => {
    const started = Date.now();
    const counts = await fuzz(seed, STEPS);
    t.diagnostic(
      `${STEPS} steps in ${Date.now() - started} ms: ${Object.entries(counts)
        .sort()
        .map(([k, v]) => `${k}=${v}`)
        .join(' ')}`,
    );
    assert.ok((counts['vote:ok'] ?? 0) > 0 && (counts['execute:ok'] ?? 0) > 0 && (counts['mint:ok'] ?? 0) > 0);
  });
}
