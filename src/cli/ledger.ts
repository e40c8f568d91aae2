/**
 * `tessera ledger | pay | claim | propose | vote | execute`: tokenized ownership of a run on an EVM.
 * Without --rpc, `tessera ledger` starts an in-process EDR devnet, deploys a run contract, has three
 * of four validators sign two rounds' score reports, mints, takes a payment and prints the shares table.
 * With `--rpc <url> --key <file> --contract <address>` the same code talks to any EVM chain.
 */
import type { Command } from 'commander';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatEther, hexToString, keccak256, parseEther, toHex, type Address } from 'viem';
import { say, result } from './output.js';
import { int, num } from './args.js';
import { InvalidInputError } from '../util/errors.js';
import { readKey } from '../ledger/keys.js';
import {
  startDevnet,
  rpcChain,
  ledgerClient,
  clientsFor,
  deployRun,
  signScoreReport,
  mintRound,
  pay,
  claim,
  propose,
  proposeValidators,
  vote,
  execute,
  getShares,
  serveRpc,
  type LedgerClient,
  type GetSharesReturnType,
} from '../ledger/index.js';

interface ChainOpts {
  rpc?: string;
  key?: string;
  contract?: string;
  json?: boolean;
}

async function connect(o: ChainOpts): Promise<LedgerClient> {
  if (!o.rpc || !o.key || !o.contract) {
    throw new InvalidInputError(
      'this command needs --rpc <url> --key <file> --contract <address> (the built-in devnet lives only for one `tessera ledger` run)',
    );
  }
  if (!/^0x[0-9a-fA-F]{40}$/.test(o.contract)) throw new InvalidInputError(`--contract: not an address: ${o.contract}`);
  const { request, chain } = await rpcChain(o.rpc);
  return ledgerClient(request, chain, readKey(o.key), o.contract as Address);
}

const chainOptions = (c: Command): Command =>
  c
    .option('--rpc <url>', 'JSON-RPC endpoint of any EVM chain')
    .option('--key <file>', 'file holding your hex private key')
    .option('--contract <address>', "the run's TesseraRun contract")
    .option('--json', 'machine-readable output on stdout', false);

const shares = (v: bigint): string => Number(formatEther(v)).toFixed(4);

function table(s: GetSharesReturnType, me: Address): string {
  const lines = [
    `total shares ${shares(s.totalSupply)}   revenue paid ${formatEther(s.totalPaid)} ETH, claimed ${formatEther(s.totalClaimed)} ETH`,
    '',
  ];
  lines.push('holder                                        shares        %   claimable ETH');
  for (const h of s.holders) {
    const pct = s.totalSupply === 0n ? 0 : Number((h.balance * 10_000n) / s.totalSupply) / 100;
    lines.push(
      `${h.address}${h.address.toLowerCase() === me.toLowerCase() ? '*' : ' '} ${shares(h.balance).padStart(12)} ${pct.toFixed(2).padStart(7)}   ${formatEther(h.claimable)}`,
    );
  }
  const mine = s.holders.find((h) => h.address.toLowerCase() === me.toLowerCase());
  lines.push(
    '',
    `your balance (${me}): ${shares(mine?.balance ?? 0n)} shares, ${formatEther(mine?.claimable ?? 0n)} ETH claimable`,
    '',
    'round commitments:',
  );
  for (const r of s.rounds) {
    let cid = r.checkpointCid as string;
    try {
      cid = hexToString(r.checkpointCid);
    } catch {
      /* keep hex */
    }
    lines.push(
      `  round ${r.round}: weights ${r.weightsHash.slice(0, 18)}… updates ${r.updatesRoot.slice(0, 18)}… scores ${r.scoresRoot.slice(0, 18)}… cid ${cid} minted ${shares(r.minted)}`,
    );
  }
  return lines.join('\n');
}

const jsonable = (v: unknown): unknown =>
  JSON.parse(JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x)));

async function demoLedger(o: ChainOpts & { serve?: number }): Promise<void> {
  say(o, "starting an in-process EDR devnet (Hardhat's EVM)…");
  const net = await startDevnet({ accounts: 8 });
  try {
    const deployer = clientsFor(net.request, net.chain, net.keys[0]);
    const vals = [1, 2, 3, 4].map((i) => clientsFor(net.request, net.chain, net.keys[i]).account);
    const peers = [5, 6, 7].map((i) => clientsFor(net.request, net.chain, net.keys[i]).account.address);
    const d = await deployRun(deployer as never, {
      manifestHash: keccak256(toHex('tessera-demo-manifest')),
      validators: vals.map((v) => v.address),
      threshold: 3,
    });
    say(o, `deployed TesseraRun at ${d.address} (${d.gasUsed} gas); validators 3-of-4`);
    const c = ledgerClient(net.request, net.chain, net.keys[0], d.address);
    for (const [round, scores] of [
      [1n, [5n, 3n, 2n]],
      [2n, [2n, 6n, 2n]],
    ] as const) {
      const report = {
        manifestHash: keccak256(toHex('tessera-demo-manifest')),
        round,
        weightsHash: keccak256(toHex(`weights-${round}`)),
        checkpointCid: toHex(`bafy-demo-checkpoint-${round}`),
        updatesRoot: keccak256(toHex(`updates-${round}`)),
        scoresRoot: keccak256(toHex(`scores-${round}`)),
        recipients: peers,
        scores: [...scores],
      };
      const sigs = await Promise.all(
        vals
          .slice(0, 3)
          .map((account) => signScoreReport({ account, chainId: net.chain.id, contract: d.address, report })),
      );
      const m = await mintRound(c, { report, signatures: sigs });
      say(o, `round ${round}: 3 validator signatures, minted ${shares(m.minted)} shares (${m.gasUsed} gas)`);
    }
    await pay(ledgerClient(net.request, net.chain, net.keys[0], d.address), {
      value: parseEther('1'),
      memo: 'demo usage',
    });
    say(o, 'a user paid 1 ETH for model usage');
    const me = ledgerClient(net.request, net.chain, net.keys[5], d.address);
    const cl = await claim(me);
    say(o, `peer ${me.account.address} claimed ${formatEther(cl.amount)} ETH`);
    const s = await getShares(c);
    result(o, jsonable({ contract: d.address, chainId: net.chain.id, ...s }), table(s, me.account.address));
    if (o.serve !== undefined) {
      // keep the devnet up so `tessera pay|claim|propose|vote --rpc` can use it (devnet keys are public!)
      const srv = await serveRpc(net.request, o.serve);
      const dir = mkdtempSync(join(tmpdir(), 'tessera-devnet-keys-'));
      for (const i of [0, 5, 6, 7]) writeFileSync(join(dir, `key${i}`), net.keys[i], { mode: 0o600 });
      say(
        {},
        `\ndevnet serving at ${srv.url} — try:\n  tessera claim --rpc ${srv.url} --key ${join(dir, 'key6')} --contract ${d.address}\n(Ctrl-C to stop)`,
      );
      await new Promise<void>((resolve) => process.once('SIGINT', () => resolve()));
      await srv.close();
    }
  } finally {
    net.stop();
  }
}

export function register(program: Command): void {
  chainOptions(
    program
      .command('ledger')
      .description('shares table, your balance and round commitments (no --rpc: a self-contained devnet demo)'),
  )
    .option(
      '--serve <port>',
      'after the demo, keep the devnet up as HTTP JSON-RPC on this port (0 = any)',
      int(0, 65535),
    )
    .action(async (o: ChainOpts & { serve?: number }) => {
      if (!o.rpc) return demoLedger(o);
      const c = await connect(o);
      const s = await getShares(c);
      result(o, jsonable(s), table(s, c.account.address));
    });
  chainOptions(program.command('pay').description('pay the run for model usage (split pro rata over shareholders)'))
    .requiredOption('--eth <amount>', 'amount in ETH')
    .option('--memo <text>', 'short memo (≤31 bytes)', '')
    .action(async (o: ChainOpts & { eth: string; memo: string }) => {
      const c = await connect(o);
      if (!/^\d+(\.\d+)?$/.test(o.eth)) throw new InvalidInputError(`--eth: not an amount: ${o.eth}`);
      const r = await pay(c, { value: parseEther(o.eth), memo: o.memo });
      result(o, jsonable(r), `paid ${o.eth} ETH (tx ${r.hash})`);
    });
  chainOptions(program.command('claim').description('claim your share of the revenue')).action(async (o: ChainOpts) => {
    const r = await claim(await connect(o));
    result(o, jsonable(r), `claimed ${formatEther(r.amount)} ETH (tx ${r.hash})`);
  });
  chainOptions(
    program
      .command('propose')
      .description(
        'propose a setting (--set dataset --value <cid>@<round>) or a new validator set (--validators A,B,C --threshold M)',
      ),
  )
    .option('--set <key>', 'setting name (≤31 bytes), e.g. dataset')
    .option('--value <value>', 'new value; for dataset: <cid>@<round> (train on it from that round)')
    .option(
      '--validators <addresses>',
      'comma-separated validator addresses: replaces the validator set if the vote passes',
    )
    .option('--threshold <m>', 'with --validators: signatures needed to mint', int(1))
    .option(
      '--hours <n>',
      'voting period in hours (within the bounds the contract was deployed with; by default 1 to 14 days)',
      num(0.001),
      24,
    )
    .action(
      async (
        o: ChainOpts & { set?: string; value?: string; validators?: string; threshold?: number; hours: number },
      ) => {
        const durationSeconds = Math.round(o.hours * 3600);
        if (o.validators !== undefined) {
          if (o.set !== undefined || o.value !== undefined)
            throw new InvalidInputError('--validators does not go with --set/--value');
          if (o.threshold === undefined) throw new InvalidInputError('--validators needs --threshold <m>');
          const r = await proposeValidators(await connect(o), {
            validators: o.validators
              .split(',')
              .map((x) => x.trim())
              .filter(Boolean),
            threshold: o.threshold,
            durationSeconds,
          });
          result(
            o,
            jsonable(r),
            `proposal ${r.id}: validators ${o.validators} (${o.threshold} to mint) (tx ${r.hash})`,
          );
          return;
        }
        if (o.set === undefined || o.value === undefined)
          throw new InvalidInputError(
            'propose needs --set <key> --value <value>, or --validators <a,b,...> --threshold <m>',
          );
        const r = await propose(await connect(o), { key: o.set, value: o.value, durationSeconds });
        result(o, jsonable(r), `proposal ${r.id} (tx ${r.hash})`);
      },
    );
  chainOptions(
    program
      .command('vote')
      .description('vote on a proposal with your shares as of the proposal block (nothing is locked)'),
  )
    .requiredOption('--id <n>', 'proposal id', int(0))
    .option('--against', 'vote against (default: for)', false)
    .action(async (o: ChainOpts & { id: number; against: boolean }) => {
      const r = await vote(await connect(o), { id: BigInt(o.id), support: !o.against });
      result(o, jsonable(r), `voted (tx ${r.hash})`);
    });
  chainOptions(program.command('execute').description('after the deadline, settle a proposal'))
    .requiredOption('--id <n>', 'proposal id', int(0))
    .action(async (o: ChainOpts & { id: number }) => {
      const r = await execute(await connect(o), { id: BigInt(o.id) });
      result(o, jsonable(r), `proposal ${o.id} ${r.passed ? 'passed' : 'failed'} (tx ${r.hash})`);
    });
}
