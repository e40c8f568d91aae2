/**
 * The ledger role (src/ledger/link.ts does the chain work): this peer's payout address and every
 * peer's announced one, and, for a validator linked to the run's contract, turning a round's
 * scores into the score report the contract mints from and signing it. Every input of a report
 * is agreed state or a deterministic function of it (result hash, the state CID published for
 * it, the included update hashes, per-round scores from deterministic evaluation, announced
 * payout addresses), so honest validators sign byte-identical reports. Flagged updates score 0.
 */
import type { Logger } from 'pino';
import { privateKeyToAccount } from 'viem/accounts';
import type { Address, Hex } from 'viem';
import { LedgerLink, type SigBody } from '../ledger/link.js';
import { loadOrCreateEvmKey } from '../ledger/keys.js';
import { buildScoreReport } from '../ledger/report.js';
import type { LedgerView } from '../ledger/view.js';
import { join } from 'node:path';
import type { ScoreEntry } from './wire.js';

export interface LedgerOptions {
  rpc: string;
  contract: Address;
  key?: Hex;
  submit?: boolean;
}

export interface LedgerDeps {
  runId: string;
  self: string;
  dataDir: string;
  options: LedgerOptions | undefined;
  publishSig: (body: SigBody) => void;
  publishPayout: (address: Address) => void;
  /** The chain's settings changed: the dataset setting (or undefined). */
  onSettings: (dataset: string | undefined) => void;
  /** The state CID this node published for snapshot round `snapRound`, waiting up to `ms` (null if none). */
  stateCid: (snapRound: number, ms: number) => Promise<string | null>;
  logger: Logger;
}

export class LedgerRole {
  /** The chain link (null without ledger options). */
  readonly link: LedgerLink | null;
  private readonly payout: Address;
  /** Every peer's announced payout address (this peer's own included). */
  readonly payouts = new Map<string, Address>();
  private signedSince: number[] = [];

  constructor(private readonly d: LedgerDeps) {
    const key = d.options?.key ?? loadOrCreateEvmKey(d.dataDir);
    this.payout = privateKeyToAccount(key).address;
    this.payouts.set(d.self, this.payout);
    this.link = d.options
      ? new LedgerLink({
          rpc: d.options.rpc,
          contract: d.options.contract,
          key,
          manifestHash: `0x${d.runId}`,
          queueFile: join(d.dataDir, 'ledger-queue.json'),
          logger: d.logger,
          publish: (body: SigBody) => d.publishSig(body),
          ...(d.options.submit !== undefined ? { submit: d.options.submit } : {}),
          onSettings: () => d.onSettings(this.link?.setting('dataset')),
          peerOf: (a) => [...this.payouts].find(([, x]) => x.toLowerCase() === a.toLowerCase())?.[0] ?? null,
        })
      : null;
    if (this.link) void this.link.tick();
  }

  /** Rounds signed since the last call. */
  takeSigned(): number[] {
    return this.signedSince.splice(0);
  }

  view(): LedgerView | undefined {
    return this.link?.view();
  }

  /** A peer announced its payout address (bound to it by the envelope's signature). */
  onPayout(from: string, address: Address): void {
    this.payouts.set(from, address);
  }

  /** A validator's signature over a score report arrived (the link checks it against the contract). */
  onSignature(body: unknown): void {
    void this.link?.onSignature(body);
  }

  /** After each round report: re-announce the payout address; let the link submit and re-read the chain. */
  tick(): void {
    this.d.publishPayout(this.payout);
    if (this.link) void this.link.tick();
  }

  /** Validator: signs round `round`'s score report for the chain (flagged updates score 0). */
  async signRound(round: number, resultHash: string, entries: ScoreEntry[], updateHashes: string[]): Promise<void> {
    const link = this.link;
    if (!link) return;
    const { logger } = this.d;
    try {
      const cid = await this.d.stateCid(round + 1, 30_000);
      const scores: { address: string; score: number }[] = [];
      for (const e of entries) {
        const a = this.payouts.get(e.peer);
        const score = e.flagged ? 0 : e.score;
        if (!a) {
          if (score > 0)
            logger.warn({ round, peer: e.peer }, 'no payout address announced; its score is left out of the report');
          continue;
        }
        scores.push({ address: a, score });
      }
      if (!scores.some((x) => Math.round(x.score * 1e6) > 0)) {
        logger.warn({ round }, 'no positive score this round; nothing to mint');
        return;
      }
      const report = buildScoreReport({
        manifestHash: `0x${this.d.runId}`,
        round,
        weightsHash: `0x${resultHash}`,
        checkpointCid: cid ?? '-',
        updateHashes: updateHashes.map((h) => `0x${h}`),
        scores,
      });
      await link.signReport(report);
      this.signedSince.push(round);
    } catch (err) {
      logger.warn({ round, err: (err as Error).message }, "validator could not sign the round's score report");
    }
  }

  async stop(): Promise<void> {
    await this.link?.stop();
  }
}
