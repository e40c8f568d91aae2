/**
 * The ledger half of `tessera demo --ledger`'s ending: wait until the rounds the demo printed are
 * settled on chain (minted, or found to pay nobody), then the shares table, each peer's shares
 * beside its share of the tokens its updates put into the decided sets and beside what the
 * contract's rule gives for the reports that were minted.
 *
 * Why wait: scoring, signing and submitting run beside the rounds (docs/ROUNDS.md "Deadlines that
 * follow the swarm"), so when the demo has printed its last round, the reports of the last few are
 * still being scored, signed or staggered between submitters. Stopping then counted them as never
 * minted (issue 16: one cause of "2 of 12 rounds minted").
 */
import type { PeerProc } from './launch.js';

/** Where a round stands on the ledger, from the validators' reports and the chain. */
export type RoundLedger = 'minted' | 'unpaid' | 'unsigned' | 'waiting';

/** A validator that is this many rounds past a round it never signed nor found unpaid will not sign it (it did not score it). */
const GIVE_UP_ROUNDS = 10;

const pastRound = (p: PeerProc) => Math.max(-1, ...p.reports.map((y) => (y.event === 'round' ? y.round : y.round - 1)));

/** Each round in [first, last]: minted, unpaid (a validator scored it and nothing earned points), unsigned (given up), or waiting. */
export function ledgerRounds(
  first: number,
  last: number,
  minted: ReadonlySet<number>,
  validators: readonly PeerProc[],
): Map<number, RoundLedger> {
  const out = new Map<number, RoundLedger>();
  const unpaid = new Set(validators.flatMap((v) => v.reports.flatMap((r) => r.unpaid ?? [])));
  const signed = validators.map((v) => new Set(v.reports.flatMap((r) => r.signed ?? [])));
  for (let r = first; r <= last; r++) {
    if (minted.has(r)) out.set(r, 'minted');
    else if (unpaid.has(r)) out.set(r, 'unpaid');
    else if (validators.some((v, i) => !signed[i].has(r) && (!v.alive || pastRound(v) >= r + GIVE_UP_ROUNDS)))
      out.set(r, 'unsigned');
    else out.set(r, 'waiting');
  }
  return out;
}

/**
 * Waits (peers still running) until no round in [first, last] is 'waiting', or `ms` passed, or
 * `stopped()`. Says what it waits for every 5 s. Returns the final standing.
 */
export async function drainLedger(o: {
  first: number;
  last: number;
  minted: () => Promise<Set<number>>;
  validators: readonly PeerProc[];
  ms: number;
  say: (line: string) => void;
  stopped: () => boolean;
}): Promise<Map<number, RoundLedger>> {
  const t0 = Date.now();
  let said = t0;
  for (;;) {
    let minted = new Set<number>();
    try {
      minted = await o.minted();
    } catch {
      /* the chain is read again next time */
    }
    const st = ledgerRounds(o.first, o.last, minted, o.validators);
    const waiting = [...st].filter(([, s]) => s === 'waiting').map(([r]) => r);
    if (waiting.length === 0 || o.stopped() || Date.now() - t0 > o.ms) return st;
    if (Date.now() - said >= 5000) {
      said = Date.now();
      o.say(
        `ledger: waiting for round${waiting.length > 1 ? 's' : ''} ${waiting.join(', ')} to be scored, signed and minted (${Math.round((Date.now() - t0) / 1000)} s of at most ${Math.round(o.ms / 1000)} s)`,
      );
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

export interface PeerShares {
  peer: number;
  /** Shares held on chain (every round minted so far, those after the printed ones included). */
  shares: number;
  /** What the minted reports pay it, summed over every minted round whose report a validator printed: equals `shares` when every minted round's report was seen. */
  byReports: number;
  /** Of the shares the printed rounds minted (from their reports). */
  sharesFraction: number;
  /** Tokens of its updates in the decided sets of the printed rounds. */
  tokens: number;
  /** Of all tokens in those decided sets. */
  tokensFraction: number;
}

/**
 * Per peer: shares held, what the minted reports pay it, its fraction of what the printed rounds
 * minted, and its fraction of the tokens those rounds' decided sets included. `pay` holds a
 * validator's signed points per round (peer index → points); `included` the printed rounds'
 * decided sets; `printed` the last printed round. The contract splits sharesPerRound per minted
 * round pro rata to points (tokens of clean updates), so a peer's share of shares equals its share
 * of tokens when every round includes the same tokens in all; a round with fewer updates pays each
 * of them more.
 */
export function sharesTable(o: {
  peers: number;
  balances: Map<number, number>;
  included: Map<number, { peer: number; tokens: number }[]>;
  pay: Map<number, Map<number, number>>;
  minted: ReadonlySet<number>;
  printed: number;
  sharesPerRound: number;
}): PeerShares[] {
  const tok = new Map<number, number>();
  for (const set of o.included.values()) for (const c of set) tok.set(c.peer, (tok.get(c.peer) ?? 0) + c.tokens);
  const tokTotal = [...tok.values()].reduce((a, x) => a + x, 0);
  const all = new Map<number, number>();
  const printedShares = new Map<number, number>();
  for (const r of o.minted) {
    const p = o.pay.get(r);
    if (!p) continue;
    const sum = [...p.values()].reduce((a, x) => a + x, 0);
    for (const [peer, pts] of p) {
      const amt = (o.sharesPerRound * pts) / sum;
      all.set(peer, (all.get(peer) ?? 0) + amt);
      if (r <= o.printed) printedShares.set(peer, (printedShares.get(peer) ?? 0) + amt);
    }
  }
  const printedTotal = [...printedShares.values()].reduce((a, x) => a + x, 0);
  return Array.from({ length: o.peers }, (_, peer) => ({
    peer,
    shares: o.balances.get(peer) ?? 0,
    byReports: all.get(peer) ?? 0,
    sharesFraction: printedTotal ? (printedShares.get(peer) ?? 0) / printedTotal : 0,
    tokens: tok.get(peer) ?? 0,
    tokensFraction: tokTotal ? (tok.get(peer) ?? 0) / tokTotal : 0,
  }));
}
