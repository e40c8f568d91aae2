/**
 * A node's link to its run's chain: the thin driver between the swarm and the TesseraRun contract.
 *
 *  - A validator signs each round's score report (EIP-712, offline once the chain id is known) and
 *    gossips the signature on the run's control topic.
 *  - Every linked node collects those signatures, checks each against the contract's validator set,
 *    and once a report has a quorum, queues it (CommitmentQueue, persisted) for submission.
 *    Submitters are staggered by rank (validators in address order, then other peers), so the
 *    first one usually mints and the rest find the round already on chain.
 *  - Every tick (one per round) flushes the queue, re-reads the shares table, proposals and the
 *    governed `dataset` setting, and keeps the last good state while the chain is unreachable:
 *    training never waits for the chain.
 */
import { z } from 'zod';
import { hexToString, recoverTypedDataAddress, type Address, type Hex } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import type { Logger } from 'pino';
import { ledgerClient, read, type LedgerClient } from './client.js';
import { rpcChain } from './devnet.js';
import { CommitmentQueue } from './queue.js';
import { ChainUnreachableError } from './errors.js';
import {
  scoreReportTypes,
  signScoreReport,
  type ScoreReport,
  type SignScoreReportReturnType,
} from './actions/signScoreReport.js';
import { getShares, HolderIndex } from './actions/getShares.js';
import { getProposals } from './actions/getProposals.js';
import { getSetting } from './actions/execute.js';
import type { LedgerView } from './view.js';

const hex32 = z.string().regex(/^0x[0-9a-fA-F]{64}$/);
const addr = z.string().regex(/^0x[0-9a-fA-F]{40}$/);
const MAX_RECIPIENTS = 1024;

/** A validator's signature over a round's score report, as gossiped (amounts as decimal strings). */
export const SigBodySchema = z
  .object({
    report: z
      .object({
        manifestHash: hex32,
        round: z.string().regex(/^\d{1,19}$/),
        weightsHash: hex32,
        checkpointCid: z.string().regex(/^0x([0-9a-fA-F]{2}){0,128}$/),
        updatesRoot: hex32,
        scoresRoot: hex32,
        recipients: z.array(addr).max(MAX_RECIPIENTS),
        scores: z.array(z.string().regex(/^\d{1,40}$/)).max(MAX_RECIPIENTS),
      })
      .strict(),
    signer: addr,
    signature: z.string().regex(/^0x[0-9a-fA-F]{130}$/),
  })
  .strict();
export type SigBody = z.infer<typeof SigBodySchema>;

/** A peer's payout address (where its shares are minted), announced on the control topic. */
export const PayoutSchema = z.object({ address: addr }).strict();

export function reportToWire(r: ScoreReport): SigBody['report'] {
  return { ...r, round: r.round.toString(), scores: r.scores.map(String) };
}
export function reportFromWire(w: SigBody['report']): ScoreReport {
  return { ...w, round: BigInt(w.round), scores: w.scores.map(BigInt) } as ScoreReport;
}

/** A governed dataset switch: train on `cid` from round `fromRound` on. Setting text: `<cid>@<round>`. */
export interface DatasetSwitch {
  cid: string;
  fromRound: number;
}
export function parseDatasetSetting(v: string): DatasetSwitch | null {
  const m = /^([a-z0-9]{8,128})@(\d{1,9})$/i.exec(v.trim());
  return m ? { cid: m[1], fromRound: Number(m[2]) } : null;
}

export interface LedgerLinkOptions {
  rpc: string;
  contract: Address;
  /** This node's EVM key: its payout address, and its signing key if it is a validator. */
  key: Hex;
  /** 0x + the run id: what the contract was deployed for. */
  manifestHash: Hex;
  /** The persistent commitment queue. */
  queueFile: string;
  logger: Logger;
  /** Gossip a signature to the run. */
  publish: (body: SigBody) => void;
  /** Submit reports that reached quorum: default true (rank decides who goes first). */
  submit?: boolean;
  /** Delay per submitter rank (default 3 s). */
  staggerMs?: number;
  /** Called whenever the governed settings were (re-)read. */
  onSettings?: () => void;
  /** Peer id that announced an address (labels in the view). */
  peerOf?: (address: string) => string | null;
}

interface Collected {
  report: ScoreReport;
  sigs: Map<string, SignScoreReportReturnType>;
}

export class LedgerLink {
  readonly me: Address;
  private client: LedgerClient | null = null;
  /** Share holders seen so far: each refresh reads only the blocks since the last. */
  private readonly holders = new HolderIndex();
  private chainId: number | null = null;
  private validators: Address[] = [];
  private threshold = 0;
  private readonly queue: CommitmentQueue;
  /** Validator: reports built before the chain id was known. */
  private readonly unsigned: ScoreReport[] = [];
  /** Signatures heard before the validator set was known (checked once it is). */
  private readonly unchecked: SigBody[] = [];
  private readonly collected = new Map<string, Collected>();
  private readonly scheduled = new Set<string>();
  private submitted = 0;
  private lastError: string | null = null;
  private online = false;
  private checkedAt: number | null = null;
  /** When the current stretch of reachability began. */
  private onlineSince = 0;
  private snapshot: Pick<
    LedgerView,
    'totalSupply' | 'totalPaid' | 'totalClaimed' | 'holders' | 'rounds' | 'proposals'
  > = {
    totalSupply: '0',
    totalPaid: '0',
    totalClaimed: '0',
    holders: [],
    rounds: [],
    proposals: [],
  };
  private settings: Record<string, string> = {};
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(private readonly o: LedgerLinkOptions) {
    this.me = privateKeyToAccount(o.key).address;
    this.queue = new CommitmentQueue(o.queueFile);
  }

  /** Whether `a` is in the contract's validator set as last read (false while it is unknown). */
  isValidatorAddress(a: string): boolean {
    return this.validators.some((v) => v.toLowerCase() === a.toLowerCase());
  }

  /** Whether the validator set has been read from the chain. */
  get validatorsKnown(): boolean {
    return this.chainId !== null && this.validators.length > 0;
  }

  get isValidator(): boolean {
    return this.validators.some((v) => v.toLowerCase() === this.me.toLowerCase());
  }

  /** The latest value of a governed setting read from the chain ('' if unset or never read). */
  setting(key: string): string {
    return this.settings[key] ?? '';
  }

  /** Validator: sign a round's report (now if the chain id is known, else at the next tick) and gossip it. */
  async signReport(report: ScoreReport): Promise<void> {
    if (this.chainId === null) {
      this.unsigned.push(report);
      return;
    }
    const s = await signScoreReport({
      account: privateKeyToAccount(this.o.key),
      chainId: this.chainId,
      contract: this.o.contract,
      report,
    });
    const body: SigBody = { report: reportToWire(report), signer: s.signer, signature: s.signature };
    this.o.logger.info(
      {
        round: Number(report.round),
        weightsHash: report.weightsHash,
        checkpointCid: report.checkpointCid,
        updatesRoot: report.updatesRoot,
        scoresRoot: report.scoresRoot,
        recipients: report.recipients.length,
      },
      'signed score report',
    );
    this.o.publish(body);
    await this.onSignature(body); // our own counts toward the quorum
  }

  /**
   * A gossiped signature: kept if it recovers to a registered validator; a quorum queues the
   * report. True if it was kept (its signer proved to hold a validator key).
   */
  async onSignature(raw: unknown): Promise<boolean> {
    const p = SigBodySchema.safeParse(raw);
    if (!p.success) {
      this.o.logger.warn({ err: p.error.message }, 'malformed score-report signature');
      return false;
    }
    const b = p.data;
    if (this.chainId === null || this.validators.length === 0) {
      if (this.unchecked.length < 4096) this.unchecked.push(b);
      return false;
    }
    if (b.report.manifestHash.toLowerCase() !== this.o.manifestHash.toLowerCase()) {
      this.o.logger.warn({ signer: b.signer }, 'signature for another run');
      return false;
    }
    if (b.report.recipients.length !== b.report.scores.length) return false;
    const report = reportFromWire(b.report);
    let signer: Address;
    try {
      signer = await recoverTypedDataAddress({
        domain: { name: 'Tessera', version: '1', chainId: this.chainId, verifyingContract: this.o.contract },
        types: scoreReportTypes,
        primaryType: 'ScoreReport',
        message: report,
        signature: b.signature as Hex,
      });
    } catch {
      this.o.logger.warn({ signer: b.signer }, 'unrecoverable score-report signature');
      return false;
    }
    if (
      signer.toLowerCase() !== b.signer.toLowerCase() ||
      !this.validators.some((v) => v.toLowerCase() === signer.toLowerCase())
    ) {
      this.o.logger.warn(
        { claimed: b.signer, recovered: signer },
        'score-report signature not from a registered validator',
      );
      return false;
    }
    const key = JSON.stringify(b.report);
    let c = this.collected.get(key);
    if (!c) {
      c = { report, sigs: new Map() };
      this.collected.set(key, c);
      // Keep the reports of the latest rounds only.
      if (this.collected.size > 256) this.collected.delete(this.collected.keys().next().value!);
    }
    c.sigs.set(signer.toLowerCase(), { signer, signature: b.signature as Hex });
    this.o.logger.info(
      {
        round: Number(report.round),
        signer,
        sigs: c.sigs.size,
        threshold: this.threshold,
        scoresRoot: report.scoresRoot,
      },
      'score-report signature collected',
    );
    if (c.sigs.size >= this.threshold && !this.scheduled.has(key) && this.o.submit !== false) {
      this.scheduled.add(key);
      const rank = this.rank();
      const t = setTimeout(
        () => {
          this.timers.delete(t);
          if (this.stopped) return;
          this.queue.enqueue({ report: c.report, signatures: [...c.sigs.values()] });
          this.tick();
        },
        rank * (this.o.staggerMs ?? 3000),
      );
      this.timers.add(t);
    }
    return true;
  }

  /** Submitter rank: validators in address order first, everyone else after them. */
  private rank(): number {
    const sorted = [...this.validators].map((v) => v.toLowerCase()).sort();
    const i = sorted.indexOf(this.me.toLowerCase());
    return i >= 0 ? i : sorted.length;
  }

  /** One pass (coalesced: a call while one runs schedules one more): connect, sign, flush, re-read. */
  tick(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.pass();
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private async pass(): Promise<void> {
    try {
      if (!this.client) {
        const { request, chain } = await rpcChain(this.o.rpc);
        this.client = ledgerClient(request, chain, this.o.key, this.o.contract);
        this.chainId = chain.id;
      }
      const c = this.client;
      // Re-read every pass: a governance vote can replace the validator set.
      this.validators = await read<Address[]>(c, 'validators');
      this.threshold = Number(await read<bigint>(c, 'threshold'));
      if (this.checkedAt === null) {
        const onChain = await read<Hex>(c, 'manifestHash');
        if (onChain.toLowerCase() !== this.o.manifestHash.toLowerCase()) {
          this.lastError = `contract ${this.o.contract} was deployed for manifest ${onChain.slice(0, 14)}…, this run is ${this.o.manifestHash.slice(0, 14)}…`;
          this.o.logger.error({ contract: this.o.contract }, this.lastError);
          this.stopped = true;
          return;
        }
      }
      for (const r of this.unsigned.splice(0)) await this.signReport(r);
      for (const b of this.unchecked.splice(0)) await this.onSignature(b);
      await this.refresh(c); // throws ChainUnreachableError while the chain is away
      if (!this.online) this.onlineSince = Date.now();
      this.online = true;
      this.checkedAt = Date.now();
      // Back from an outage every submitter holds the same queued rounds: go in rank order here
      // too, so the first one sends them and the others find them on chain.
      const wait = this.onlineSince + this.rank() * (this.o.staggerMs ?? 3000) - Date.now();
      if (wait > 0 && this.queue.pending.length > 0) {
        const t = setTimeout(() => {
          this.timers.delete(t);
          void this.tick();
        }, wait);
        this.timers.add(t);
        return;
      }
      const f = await this.queue.flush(c);
      this.submitted += f.submitted.length;
      if (f.submitted.length || f.alreadyOnChain.length)
        this.o.logger.info(
          { minted: f.submitted.map(Number), alreadyOnChain: f.alreadyOnChain.map(Number) },
          'flushed score reports',
        );
      for (const r of f.rejected) {
        this.lastError = `round ${r.round} refused: ${r.reason}`;
        this.o.logger.warn({ round: Number(r.round), reason: r.reason }, 'the contract refused a score report');
      }
      if (f.offline) throw new ChainUnreachableError('chain unreachable during flush');
      if (f.submitted.length) await this.refresh(c);
    } catch (e) {
      this.online = false;
      if (!(e instanceof ChainUnreachableError)) {
        this.lastError = (e as Error).message.split('\n')[0];
        this.o.logger.warn({ err: this.lastError }, 'ledger pass failed');
      }
    }
  }

  private async refresh(c: LedgerClient): Promise<void> {
    // Governance first: it steers training; the shares table is only shown.
    this.settings.dataset = await getSetting(c, 'dataset');
    this.o.onSettings?.();
    const s = await getShares(c, { rounds: 20, holders: this.holders });
    const props = await getProposals(c, { limit: 20 });
    const peerOf = this.o.peerOf ?? (() => null);
    this.snapshot = {
      totalSupply: s.totalSupply.toString(),
      totalPaid: s.totalPaid.toString(),
      totalClaimed: s.totalClaimed.toString(),
      holders: s.holders.map((h) => ({
        address: h.address,
        peer: peerOf(h.address),
        balance: h.balance.toString(),
        claimable: h.claimable.toString(),
      })),
      rounds: s.rounds.reverse().map((r) => {
        let cid: string = r.checkpointCid;
        try {
          cid = hexToString(r.checkpointCid);
        } catch {
          /* keep hex */
        }
        return { round: Number(r.round), weightsHash: r.weightsHash, checkpointCid: cid, minted: r.minted.toString() };
      }),
      proposals: props.map((p) => ({
        id: Number(p.id),
        key: p.key,
        value: p.value,
        deadline: Number(p.deadline),
        yes: p.yes.toString(),
        no: p.no.toString(),
        executed: p.executed,
        passed: p.passed,
      })),
    };
  }

  view(): LedgerView {
    return {
      contract: this.o.contract,
      chainId: this.chainId ?? 0,
      online: this.online,
      checkedAt: this.checkedAt,
      me: this.me,
      threshold: this.threshold,
      validators: [...this.validators],
      ...this.snapshot,
      queue: { pending: this.queue.pending.length, submitted: this.submitted, lastError: this.lastError },
    };
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    await this.running?.catch(() => undefined);
  }
}
