/**
 * Commitment queue: training never waits for the chain. Each finished round's signed score report is
 * queued (optionally persisted to a JSON file); `flush` submits pending rounds in order. Idempotent:
 * before sending, the contract is asked whether the round is already minted (e.g. a tx that landed but
 * whose receipt was lost when the chain dropped), and the contract itself rejects a replayed round
 * (`RoundAlreadyMinted`: reported as already on chain, which it then is). Rounds mint in any order,
 * so a round whose later neighbour landed first is still sent; a round beyond the contract's window
 * (`RoundOutOfWindow`) is refused for good.
 * If the chain is unreachable, flush stops and keeps everything; nothing is lost or sent twice. A round
 * the contract refuses for good (a revert other than "already minted") is dropped and reported, so
 * that it cannot hold back the rounds after it.
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { read, type LedgerClient } from './client.js';
import { ChainUnreachableError, ContractRevertError } from './errors.js';
import { mintRound } from './actions/mintRound.js';
import type { ScoreReport, SignScoreReportReturnType } from './actions/signScoreReport.js';

export interface QueuedRound {
  report: ScoreReport;
  signatures: SignScoreReportReturnType[];
}
export interface FlushResult {
  submitted: bigint[];
  alreadyOnChain: bigint[];
  pending: number;
  offline: boolean;
  /** Rounds the contract refused for good (bad signatures, no quorum...): dropped, with the reason. */
  rejected: { round: bigint; reason: string }[];
}

const replacer = (_k: string, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v);
const reviver = (_k: string, v: unknown) => (typeof v === 'string' && /^\d+n$/.test(v) ? BigInt(v.slice(0, -1)) : v);

export class CommitmentQueue {
  private items: QueuedRound[] = [];
  constructor(private readonly file?: string) {
    if (file && existsSync(file)) this.items = JSON.parse(readFileSync(file, 'utf8'), reviver) as QueuedRound[];
  }
  get pending(): readonly QueuedRound[] {
    return this.items;
  }
  enqueue(q: QueuedRound): void {
    if (this.items.some((x) => x.report.round === q.report.round)) return; // same round queued once
    this.items.push(q);
    this.items.sort((a, b) => (a.report.round < b.report.round ? -1 : 1));
    this.save();
  }
  private save(): void {
    if (!this.file) return;
    writeFileSync(this.file + '.tmp', JSON.stringify(this.items, replacer));
    renameSync(this.file + '.tmp', this.file);
  }
  private async mintedNow(c: LedgerClient, round: bigint): Promise<boolean> {
    try {
      return await read<boolean>(c, 'isMinted', [round]);
    } catch {
      return false;
    }
  }

  async flush(c: LedgerClient): Promise<FlushResult> {
    const res: FlushResult = { submitted: [], alreadyOnChain: [], pending: 0, offline: false, rejected: [] };
    while (this.items.length > 0) {
      const q = this.items[0];
      try {
        const done = await read<boolean>(c, 'isMinted', [q.report.round]);
        if (done) res.alreadyOnChain.push(q.report.round);
        else {
          await mintRound(c, q);
          res.submitted.push(q.report.round);
        }
      } catch (e) {
        if (e instanceof ChainUnreachableError) {
          res.offline = true;
          break;
        }
        if (e instanceof ContractRevertError && e.reason === 'RoundAlreadyMinted')
          res.alreadyOnChain.push(q.report.round);
        // Another submitter's transaction for the round can land between our isMinted and ours, and
        // a node's estimate then reverts without a decoded reason: ask again before calling it refused.
        else if (e instanceof ContractRevertError && (await this.mintedNow(c, q.report.round)))
          res.alreadyOnChain.push(q.report.round);
        // A refusal that retrying cannot fix would block every later round: drop it, say why.
        else if (e instanceof ContractRevertError) res.rejected.push({ round: q.report.round, reason: e.reason });
        else throw e;
      }
      this.items.shift();
      this.save();
    }
    res.pending = this.items.length;
    return res;
  }
}
