/**
 * The ledger role (src/ledger/link.ts does the chain work): this peer's payout address and every
 * peer's announced one, and, for a validator linked to the run's contract, turning a round's
 * scores into the score report the contract mints from and signing it. Every input of a report
 * is agreed state or a deterministic function of it (result hash, the CID of the round's state,
 * the included update hashes, each included update's points: its tokens if the validator's
 * verdict on it is clean, from agreed inputs only, peer/validator.ts; announced payout
 * addresses), so honest validators sign byte-identical reports. Updates that earn nothing are
 * left out of the report (they would be minted 0 anyway), so a peer whose address one validator
 * has and another has not cannot split them over a zero.
 *
 * Payout addresses (issue 15 item 6: flipping one must not make validators sign different
 * reports). The rule, per peer, for the whole run:
 * - an announcement is taken from roster members and validators only (and from a peer whose
 *   address is in the contract's validator set), at most MAX_PAYOUTS peers;
 * - the first round this peer heard the peer's address is `first`; distinct addresses heard in
 *   rounds first and first + 1 are its candidates (at most 4), anything announced later is
 *   ignored (first write wins, for the run: the book is kept in DATA_DIR/payouts.json);
 * - a report pays a peer at the lowest of its candidates once they are settled: the validator's
 *   round is at least first + 2. A report in which a peer earns points while its address is not
 *   yet settled waits (up to PAYOUT_WAIT_ROUNDS rounds after its own round) and is signed once it
 *   is; after that the peer is left out. (Before, the report of round r left out every peer with
 *   r < first + 2, so the first three rounds of every run paid nobody and were never minted.)
 * So a late flip changes nothing; two addresses sent at once are resolved the same way by
 * every validator that heard both (the lowest), and a peer is paid at the same address by
 * validators whose `first` agrees. What remains: validators whose `first` for a peer differ by
 * one round (its first announcement landed on a round boundary) may hold different candidates
 * if a second address arrived in between, once per peer id; the reports that pay it then miss
 * quorum (as any round's did before, when an address was heard by some validators and not others).
 */
import type { Logger } from 'pino';
import { privateKeyToAccount } from 'viem/accounts';
import type { Address, Hex } from 'viem';
import { LedgerLink, type SigBody } from '../ledger/link.js';
import { loadOrCreateEvmKey } from '../ledger/keys.js';
import { buildScoreReport } from '../ledger/report.js';
import type { LedgerView } from '../ledger/view.js';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { SigBodySchema } from '../ledger/link.js';
import { RateCap, SeenSet } from './admission.js';
import type { PayEntry } from './validator.js';

/** Peers whose payout address is kept, candidates per peer, signatures remembered, signatures per sender per round. */
export const MAX_PAYOUTS = 2048;
const MAX_CANDIDATES = 4;
const SEEN_SIGS = 4096;
/**
 * Signatures per sender and report round (an honest validator signs one report per round; a
 * re-signed one is the same signature, deduplicated), and per sender in all per round of ours (a
 * validator that trails, or comes back after the chain was away, signs several rounds at once).
 */
const SIGS_PER_REPORT = 2;
const SIGS_PER_SENDER = 64;
/** Non-member peers that may claim one validator address as their payout address (until one proves it). */
const CLAIMANTS_PER_VALIDATOR = 3;
/** Rounds a report waits for the payout address of a peer it pays to settle (see the rule above). */
export const PAYOUT_WAIT_ROUNDS = 6;
/** Reports waiting to be signed (a validator far behind its payouts drops the oldest). */
const MAX_WAITING = 64;
/** How long a report waits for the CID of its round's state (computed when the snapshot is taken). */
const STATE_CID_WAIT_MS = 30_000;

/** A scored round whose report is not signed yet. */
interface WaitingReport {
  round: number;
  resultHash: string;
  cid: string | null;
  pay: PayEntry[];
  updateHashes: string[];
}

interface PayoutRecord {
  /** Sorted by lower-cased address. */
  candidates: Address[];
  first: number;
}

const BookSchema = z.record(
  z.string().max(128),
  z.object({
    candidates: z.array(z.string().regex(/^0x[0-9a-fA-F]{40}$/)).max(MAX_CANDIDATES),
    first: z.number().int(),
  }),
);

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
  /** Per peer, its payout candidates and the round they were first heard (see the rule above). */
  private readonly book = new Map<string, PayoutRecord>();
  private readonly bookPath: string;
  private readonly seenSigs = new SeenSet(SEEN_SIGS);
  private readonly sigCap = new RateCap(SIGS_PER_SENDER);
  private readonly reportCap = new RateCap(SIGS_PER_REPORT);
  /** Peers that proved a validator key: a signature of theirs recovered to a registered validator. */
  private readonly proven = new Set<string>();
  private signedSince: { round: number; pay: { peer: string; points: number }[] }[] = [];
  private unpaidSince: number[] = [];
  /** Scored rounds whose report waits for a payout address to settle, oldest first. */
  private waiting: WaitingReport[] = [];
  /** This peer's round as of the last tick (payout addresses settle by it). */
  private now = 0;
  private signing: Promise<void> = Promise.resolve();

  constructor(private readonly d: LedgerDeps) {
    const key = d.options?.key ?? loadOrCreateEvmKey(d.dataDir);
    this.payout = privateKeyToAccount(key).address;
    this.bookPath = join(d.dataDir, 'payouts.json');
    this.loadBook();
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

  /** Reports signed since the last call: their round, and the points each paid peer got. */
  takeSigned(): { round: number; pay: { peer: string; points: number }[] }[] {
    return this.signedSince.splice(0);
  }

  /** Rounds found to pay nobody since the last call (no report signed for them). */
  takeUnpaid(): number[] {
    return this.unpaidSince.splice(0);
  }

  view(): LedgerView | undefined {
    return this.link?.view();
  }

  /** Every peer's payout address as this peer would pay it (the lowest candidate; this peer's own included). */
  get payouts(): ReadonlyMap<string, Address> {
    const m = new Map<string, Address>([[this.d.self, this.payout]]);
    for (const [p, r] of this.book) if (p !== this.d.self) m.set(p, r.candidates[0]);
    return m;
  }

  /** The address round `round`'s report pays `peer` at, or null if it has none settled (the rule above). */
  addressFor(peer: string, round: number): Address | null {
    const r = this.book.get(peer);
    return r && round >= r.first + 2 ? r.candidates[0] : null;
  }

  /**
   * Validators as peers: peers whose payout address is in the contract's validator set and that
   * proved it (one of their signatures recovered to it). Announcing a validator's address proves
   * nothing; empty without a link or before the set is read.
   */
  validatorPeers(): string[] {
    const link = this.link;
    if (!link?.validatorsKnown) return [];
    return [...this.proven].filter((p) => this.book.get(p)?.candidates.some((a) => link.isValidatorAddress(a)));
  }

  private loadBook(): void {
    if (!existsSync(this.bookPath)) return;
    try {
      const b = BookSchema.parse(JSON.parse(readFileSync(this.bookPath, 'utf8')));
      for (const [p, r] of Object.entries(b).slice(0, MAX_PAYOUTS))
        this.book.set(p, { candidates: r.candidates as Address[], first: r.first });
    } catch (err) {
      this.d.logger.warn({ file: this.bookPath, err: (err as Error).message }, 'ignoring unreadable payout book');
    }
  }

  private saveBook(): void {
    const tmp = this.bookPath + '.tmp';
    writeFileSync(tmp, JSON.stringify(Object.fromEntries(this.book)));
    renameSync(tmp, this.bookPath);
  }

  /**
   * A peer announced its payout address (bound to it by the envelope's signature), at this
   * peer's round `round`. `allowed`: the sender is a member or a validator.
   */
  onPayout(from: string, address: Address, round: number, allowed: boolean): void {
    const lower = address.toLowerCase();
    if (!allowed) {
      // A non-member is kept only if it claims a validator's address, and only the first few
      // claimants of each (a validator proves its claim by signing; see validatorPeers).
      if (!(this.link?.isValidatorAddress(address) ?? false)) return;
      const claimants = [...this.book.values()].filter((x) => x.candidates.some((a) => a.toLowerCase() === lower));
      if (!this.book.has(from) && claimants.length >= CLAIMANTS_PER_VALIDATOR) return;
    }
    const r = this.book.get(from);
    if (!r) {
      if (this.book.size >= MAX_PAYOUTS) return;
      this.book.set(from, { candidates: [address], first: round });
      this.saveBook();
      return;
    }
    if (r.candidates.some((a) => a.toLowerCase() === lower)) return;
    if (round > r.first + 1 || r.candidates.length >= MAX_CANDIDATES) {
      this.d.logger.debug({ peer: from, address, first: r.first, round }, 'ignored a changed payout address');
      return;
    }
    r.candidates.push(address);
    r.candidates.sort((a, b) => (a.toLowerCase() < b.toLowerCase() ? -1 : 1));
    this.saveBook();
  }

  /**
   * A signature over a score report from `from`. Only validators' are checked: the signer it
   * claims must be `from`'s payout address and (once the chain is read) in the contract's
   * validator set. Each signature is processed once, and at most SIGS_PER_REPORT per sender and
   * report round (SIGS_PER_SENDER per sender and round of ours) reach the signature recovery.
   */
  onSignature(from: string, body: unknown, round: number): void {
    const link = this.link;
    if (!link) return;
    const p = SigBodySchema.safeParse(body);
    if (!p.success) return;
    const signer = p.data.signer.toLowerCase();
    const mine = this.book.get(from)?.candidates.some((a) => a.toLowerCase() === signer) ?? false;
    if (!mine || (link.validatorsKnown && !link.isValidatorAddress(signer))) {
      this.d.logger.debug({ from, signer }, 'dropped a score-report signature: not from a validator');
      return;
    }
    if (!this.seenSigs.first(p.data.signature.toLowerCase())) return;
    if (!this.reportCap.take(round, `${from}:${p.data.report.round}`) || !this.sigCap.take(round, from)) {
      this.d.logger.warn({ from, round }, 'dropped a score-report signature: too many from this sender');
      return;
    }
    void link.onSignature(p.data).then((kept) => {
      if (kept) this.proven.add(from);
    });
  }

  /** After each round report: re-announce the payout address; sign reports whose payouts settled; let the link submit and re-read the chain. */
  tick(round: number): void {
    this.now = Math.max(this.now, round);
    this.onPayout(this.d.self, this.payout, round, true);
    this.d.publishPayout(this.payout);
    if (this.waiting.length) void this.signWaiting();
    if (this.link) void this.link.tick();
  }

  /**
   * Validator: round `round`'s score report, once the round is scored: each update of the decided
   * set with the points it earns (its tokens if the verdict on it is clean). Signed now if every
   * peer it pays has a settled payout address, else when they have (see the rule above).
   */
  async signRound(round: number, resultHash: string, pay: PayEntry[], updateHashes: string[]): Promise<void> {
    if (!this.link) return;
    const t0 = Date.now();
    const cid = await this.d.stateCid(round + 1, STATE_CID_WAIT_MS);
    this.d.logger.info({ round, cid: cid !== null, waitedMs: Date.now() - t0 }, 'state CID for the score report');
    this.waiting.push({ round, resultHash, cid, pay, updateHashes });
    this.waiting.sort((a, b) => a.round - b.round);
    if (this.waiting.length > MAX_WAITING) this.waiting.shift();
    await this.signWaiting();
  }

  /** Signs every waiting report whose paid peers' addresses settled (or that waited long enough). One pass at a time. */
  private signWaiting(): Promise<void> {
    this.signing = this.signing
      .then(async () => {
        const { logger } = this.d;
        for (const w of [...this.waiting]) {
          const paid = w.pay.filter((x) => x.points > 0);
          const unsettled = paid.filter((x) => !this.addressFor(x.peer, this.now));
          if (unsettled.length && this.now - w.round < PAYOUT_WAIT_ROUNDS) continue;
          this.waiting = this.waiting.filter((x) => x !== w);
          for (const x of unsettled)
            logger.warn(
              { round: w.round, peer: x.peer, waited: this.now - w.round },
              'no settled payout address (announced two rounds before); its points are left out of the report',
            );
          const rows = paid.flatMap((x) => {
            const a = this.addressFor(x.peer, this.now);
            return a ? [{ peer: x.peer, address: a, score: x.points }] : [];
          });
          if (rows.length === 0) {
            logger.warn(
              { round: w.round, refused: w.pay.map((x) => `${x.peer.slice(-6)}:${x.reason ?? 'unsettled'}`) },
              'no update of the decided set earned points this round; nothing to mint',
            );
            this.unpaidSince.push(w.round);
            continue;
          }
          try {
            const report = buildScoreReport({
              manifestHash: `0x${this.d.runId}`,
              round: w.round,
              weightsHash: `0x${w.resultHash}`,
              checkpointCid: w.cid ?? '-',
              updateHashes: w.updateHashes.map((h) => `0x${h}`),
              scores: rows.map(({ address, score }) => ({ address, score })),
            });
            await this.link!.signReport(report);
            this.signedSince.push({ round: w.round, pay: rows.map(({ peer, score }) => ({ peer, points: score })) });
          } catch (err) {
            logger.warn(
              { round: w.round, err: (err as Error).message },
              "validator could not sign the round's score report",
            );
          }
        }
      })
      .catch(() => undefined);
    return this.signing;
  }

  async stop(): Promise<void> {
    await this.link?.stop();
  }
}
