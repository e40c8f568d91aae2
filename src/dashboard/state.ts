/**
 * The dashboard's model of a run as one peer sees it: a pure aggregator that folds the node's
 * round reports and periodic views into what the page shows (peers table, own contribution,
 * per-round series). Pure so that every rule (who counts as stale, how tokens/s is computed,
 * what the ring buffer drops) is unit-tested without a network, a node or a browser; the
 * server only feeds it and serialises it.
 *
 * Every change returns a new state with a larger `seq`; series points carry the `seq` at which
 * they were written, so the server can stream "what changed since seq N" to each client.
 */
import type { NodeView, RoundReport } from '../peer/report.js';
import type { LedgerView } from '../ledger/view.js';

/** One round as this peer lived it (losses, bytes, time); NaN losses become null (JSON-safe). */
export interface RoundPoint {
  seq: number;
  round: number;
  event: 'round' | 'synced';
  /** Date.now() when reported. */
  at: number;
  trainLoss: number | null;
  valLoss: number | null;
  bytesSent: number;
  bytesReceived: number;
  seconds: number;
  /** Updates applied this round, and the tokens they trained. */
  included: number;
  tokens: number;
  /** Tokens applied per second of this round's wall time (null when the time is 0). */
  tokensPerSec: number | null;
  peers: number;
  roster: number;
  computeFraction: number;
  weightsHash: string;
}

export type PeerStatus = 'active' | 'stale' | 'gone';

/** What is accumulated per peer; PeerRow adds what is derived at read time. */
export interface PeerAcc {
  id: string;
  roundsContributed: number;
  tokens: number;
  /** Last round whose applied set held this peer's update (null: none yet). */
  lastRound: number | null;
  /** Tokens/s of its last applied update: its tokens over that round's wall time. */
  tokensPerSec: number | null;
  /** Date.now() when last seen: connected to the run's topic, or its update applied. */
  lastSeenAt: number | null;
  /** Set by verification (issue 6); null until then. */
  score: number | null;
}

export interface PeerRow extends PeerAcc {
  self: boolean;
  /** 'trainer': in the roster or has contributed; 'observer': only on the topic. */
  role: 'trainer' | 'observer';
  inRoster: boolean;
  connected: boolean;
  status: PeerStatus;
}

/** A data-parallel swarm run (issue 3). */
export interface RunSummary {
  kind: 'swarm';
  runId: string;
  name: string | null;
  params: number;
  model: { vocabSize: number; ctx: number; dim: number; layers: number; heads: number };
  dataset: { name: string; numShards: number; ref: string };
  hyper: { innerSteps: number; batch: number; codec: string; overlap: string; outerLr: number; outerMomentum: number };
  timing: {
    trainMs: number;
    submitMs: number;
    commitMs: number;
    quorum: number;
    minPeers: number;
    maxMissedRounds: number;
  };
  seed: number;
}

/** A protocol-learning run (issue 8): the model cut into stages, each held by its own peers. */
export interface PipeSummary {
  kind: 'pipeline';
  runId: string;
  name: string | null;
  params: number;
  model: RunSummary['model'];
  stages: number;
  codec: string;
  batch: number;
  micro: number;
  lr: number;
  checkpointEvery: number;
  seed: number;
}

/** A peer serving (or restoring) a pipeline stage, as the stage map shows it. */
export interface StageHolder {
  peer: string;
  /** Holds its stage's weights (false: a fresh peer waiting for a restore or a sync). */
  ready: boolean;
  /** Its announced capacity, tokens/s (null: not announced). */
  throughput: number | null;
  /** In the driver's set of live replicas for the stage (calls go to it). */
  serving: boolean;
  self: boolean;
}

/** One stage of a pipeline: its layers, its size and who holds it. */
export interface StageRow {
  index: number;
  /** Transformer layers [l0, l1); the first stage also holds the embeddings, the last the head. */
  layers: [number, number];
  params: number;
  holders: StageHolder[];
  /** Sum of the holders' announced throughput (the Petals placement rule reads it). */
  throughput: number;
}

/**
 * What the dashboard needs from the peer it runs on: a swarm node's view (with its manifest), or
 * a pipeline participant's (with a ready-made summary and the stage map).
 */
export interface DashView extends Omit<NodeView, 'manifest' | 'params'> {
  manifest?: NodeView['manifest'];
  params?: number;
  summary?: PipeSummary;
  stages?: StageRow[];
}

export interface OwnContribution {
  roundsContributed: number;
  tokens: number;
  /** This peer's fraction of all tokens applied in the rounds seen (null before any). */
  share: number | null;
  tokensPerSec: number | null;
  lastRound: number | null;
  /** Totals over the rounds seen. */
  bytesSent: number;
  bytesReceived: number;
  /** Of the latest round. */
  computeFraction: number | null;
}

export interface Limits {
  /** Ring buffer: round points kept (oldest dropped first). */
  maxPoints: number;
  /** Peer rows kept; beyond it the longest-unseen non-members are dropped. */
  maxPeers: number;
  /** A connected member whose last update is more than this many rounds old is 'stale'. */
  staleRounds: number;
  /** Rows of the ownership panel's shares table (the largest holders; this node's own row is always kept). */
  maxHolders: number;
}

export const DEFAULT_LIMITS: Limits = { maxPoints: 2000, maxPeers: 512, staleRounds: 2, maxHolders: 50 };

export interface DashState {
  seq: number;
  limits: Limits;
  startedAt: number;
  updatedAt: number;
  run: RunSummary | PipeSummary | null;
  peerId: string | null;
  round: number;
  phase: string;
  weightsHash: string | null;
  checkpointCid: string | null;
  roster: string[];
  subscribers: string[];
  peers: Record<string, PeerAcc>;
  series: RoundPoint[];
  /** Rounds seen and their totals (not limited by the ring buffer). */
  totals: { rounds: number; tokens: number; bytesSent: number; bytesReceived: number };
  /** Own totals kept apart from `peers` so that eviction never loses them. */
  own: { bytesSent: number; bytesReceived: number; computeFraction: number | null };
  /** The node's latest ledger view, as it gave it (null: not linked to a chain, or no view yet). */
  ledger: LedgerView | null;
  /** Pipeline runs: which peers hold which stage (null for a swarm run). */
  stages: StageRow[] | null;
}

export function initialState(now: number, limits: Partial<Limits> = {}): DashState {
  const l = { ...DEFAULT_LIMITS, ...limits };
  if (!(l.maxPoints >= 1 && l.maxPeers >= 1 && l.staleRounds >= 0 && l.maxHolders >= 1))
    throw new RangeError(`bad dashboard limits ${JSON.stringify(l)}`);
  return {
    seq: 0,
    limits: l,
    startedAt: now,
    updatedAt: now,
    run: null,
    peerId: null,
    round: -1,
    phase: 'starting',
    weightsHash: null,
    checkpointCid: null,
    roster: [],
    subscribers: [],
    peers: {},
    series: [],
    totals: { rounds: 0, tokens: 0, bytesSent: 0, bytesReceived: 0 },
    own: { bytesSent: 0, bytesReceived: 0, computeFraction: null },
    ledger: null,
    stages: null,
  };
}

const finite = (x: number): number | null => (Number.isFinite(x) ? x : null);

export function summarize(view: NodeView): RunSummary {
  const m = view.manifest;
  const ds = m.dataset as { name: string; numShards: number; cid?: string; trainTokensSha256?: string };
  return {
    kind: 'swarm',
    runId: view.runId,
    name: m.name ?? null,
    params: view.params,
    model: {
      vocabSize: m.model.vocabSize,
      ctx: m.model.ctx,
      dim: m.model.dim,
      layers: m.model.layers,
      heads: m.model.heads,
    },
    dataset: {
      name: ds.name,
      numShards: ds.numShards,
      ref: ds.cid ?? (ds.trainTokensSha256 ? `sha256:${ds.trainTokensSha256}` : ''),
    },
    hyper: {
      innerSteps: m.hyper.innerSteps,
      batch: m.hyper.batch,
      codec: m.hyper.codec.id,
      overlap: m.hyper.overlap,
      outerLr: m.hyper.outer.lr,
      outerMomentum: m.hyper.outer.momentum,
    },
    timing: { ...m.timing },
    seed: m.seed,
  };
}

function blank(id: string): PeerAcc {
  return { id, roundsContributed: 0, tokens: 0, lastRound: null, tokensPerSec: null, lastSeenAt: null, score: null };
}

/** Drops the longest-unseen rows that are neither this peer nor roster members, down to maxPeers. */
function evict(s: DashState, peers: Record<string, PeerAcc>): Record<string, PeerAcc> {
  const ids = Object.keys(peers);
  if (ids.length <= s.limits.maxPeers) return peers;
  const keep = new Set([...(s.peerId ? [s.peerId] : []), ...s.roster]);
  const victims = ids
    .filter((id) => !keep.has(id))
    .sort((a, b) => (peers[a].lastSeenAt ?? -1) - (peers[b].lastSeenAt ?? -1) || (a < b ? -1 : 1));
  const out = { ...peers };
  for (const id of victims.slice(0, ids.length - s.limits.maxPeers)) delete out[id];
  return out;
}

/** The run's summary: kept while the run is the same (a pipeline's comes ready-made). */
function runOf(s: DashState, view: DashView): DashState['run'] {
  if (view.summary) return view.summary;
  if (s.run?.runId === view.runId) return s.run;
  return view.manifest && view.params !== undefined
    ? summarize({ ...view, manifest: view.manifest, params: view.params })
    : null;
}

/** Folds in a fresh view of the node: run summary, round, phase, roster, connected peers. */
export function observe(s: DashState, view: DashView, now: number): DashState {
  const peers = { ...s.peers };
  const touch = (id: string, seen: boolean) => {
    const p = peers[id] ?? blank(id);
    peers[id] = seen ? { ...p, lastSeenAt: now } : p;
  };
  touch(view.peerId, true);
  const subs = [...new Set(view.subscribers)].sort();
  for (const id of subs) touch(id, true);
  for (const id of view.roster) touch(id, false);
  // Validators' smoothed scores (issue 6), for peers the table already lists.
  for (const [id, score] of Object.entries(view.scores ?? {})) if (peers[id]) peers[id] = { ...peers[id], score };
  const roster = [...new Set(view.roster)].sort();
  const next: DashState = {
    ...s,
    seq: s.seq + 1,
    updatedAt: now,
    run: runOf(s, view),
    peerId: view.peerId,
    round: view.round,
    phase: view.phase,
    weightsHash: view.weightsHash || null,
    checkpointCid: view.checkpointCid,
    roster,
    subscribers: subs,
    ledger: view.ledger ?? null,
    stages: view.stages ?? null,
  };
  return { ...next, peers: evict(next, peers) };
}

/**
 * Folds in one round report. A round reported twice (a 'synced' then a 'round' for the same
 * number, say) replaces its point, and a contributor is credited at most once per round.
 */
export function record(s: DashState, r: RoundReport, now: number): DashState {
  const seq = s.seq + 1;
  const tokens = r.contributors.reduce((a, c) => a + c.tokens, 0);
  const point: RoundPoint = {
    seq,
    round: r.round,
    event: r.event,
    at: now,
    trainLoss: finite(r.trainLoss),
    valLoss: finite(r.valLoss),
    bytesSent: r.bytesSent,
    bytesReceived: r.bytesReceived,
    seconds: r.seconds,
    included: r.included,
    tokens,
    tokensPerSec: r.seconds > 0 ? tokens / r.seconds : null,
    peers: r.peers,
    roster: r.roster,
    computeFraction: r.computeFraction,
    weightsHash: r.weightsHash,
  };
  const old = s.series.findIndex((p) => p.round === r.round);
  let series: RoundPoint[];
  if (old >= 0) series = [...s.series.slice(0, old), point, ...s.series.slice(old + 1)];
  else {
    series = [...s.series, point];
    // Keep rounds in order even if a report arrives late (a resync can jump backwards).
    if (series.length > 1 && series[series.length - 2].round > r.round) series.sort((a, b) => a.round - b.round);
  }
  if (series.length > s.limits.maxPoints) series = series.slice(series.length - s.limits.maxPoints);

  const peers = { ...s.peers };
  let credited = 0;
  for (const c of r.contributors) {
    const p = peers[c.peer] ?? blank(c.peer);
    if (p.lastRound !== null && p.lastRound >= r.round) continue;
    credited += c.tokens;
    peers[c.peer] = {
      ...p,
      roundsContributed: p.roundsContributed + 1,
      tokens: p.tokens + c.tokens,
      lastRound: r.round,
      tokensPerSec: r.seconds > 0 ? c.tokens / r.seconds : p.tokensPerSec,
      lastSeenAt: now,
    };
  }
  const fresh = old < 0;
  const next: DashState = {
    ...s,
    seq,
    updatedAt: now,
    series,
    round: Math.max(s.round, r.round),
    weightsHash: r.weightsHash,
    checkpointCid: r.checkpointCid ?? s.checkpointCid,
    totals: {
      rounds: s.totals.rounds + (fresh ? 1 : 0),
      tokens: s.totals.tokens + credited,
      bytesSent: s.totals.bytesSent + r.bytesSent,
      bytesReceived: s.totals.bytesReceived + r.bytesReceived,
    },
    own: {
      bytesSent: s.own.bytesSent + r.bytesSent,
      bytesReceived: s.own.bytesReceived + r.bytesReceived,
      computeFraction: finite(r.computeFraction),
    },
  };
  return { ...next, peers: evict(next, peers) };
}

export function statusOf(s: DashState, p: PeerAcc): PeerStatus {
  if (p.id === s.peerId) return 'active';
  const inRoster = s.roster.includes(p.id);
  const connected = s.subscribers.includes(p.id);
  if (!inRoster && !connected) return 'gone';
  if (!connected) return 'stale';
  if (inRoster && p.lastRound !== null && s.round - p.lastRound > s.limits.staleRounds) return 'stale';
  return 'active';
}

const ORDER: Record<PeerStatus, number> = { active: 0, stale: 1, gone: 2 };

/** The peers table: this peer first, then by status, rounds contributed, id. */
export function peerRows(s: DashState): PeerRow[] {
  const rows = Object.values(s.peers).map((p): PeerRow => {
    const inRoster = s.roster.includes(p.id);
    const self = p.id === s.peerId;
    return {
      ...p,
      self,
      inRoster,
      connected: self || s.subscribers.includes(p.id),
      role: inRoster || p.roundsContributed > 0 ? 'trainer' : 'observer',
      status: statusOf(s, p),
    };
  });
  return rows.sort(
    (a, b) =>
      Number(b.self) - Number(a.self) ||
      ORDER[a.status] - ORDER[b.status] ||
      b.roundsContributed - a.roundsContributed ||
      (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
  );
}

export function ownContribution(s: DashState): OwnContribution {
  const me = s.peerId ? s.peers[s.peerId] : undefined;
  return {
    roundsContributed: me?.roundsContributed ?? 0,
    tokens: me?.tokens ?? 0,
    share: s.totals.tokens > 0 ? (me?.tokens ?? 0) / s.totals.tokens : null,
    tokensPerSec: me?.tokensPerSec ?? null,
    lastRound: me?.lastRound ?? null,
    bytesSent: s.own.bytesSent,
    bytesReceived: s.own.bytesReceived,
    computeFraction: s.own.computeFraction,
  };
}

/** Points written after `seq` (all of them for seq < 0). */
export function pointsSince(s: DashState, seq: number): RoundPoint[] {
  return s.series.filter((p) => p.seq > seq);
}

// ─── ownership (the ledger panel) ───

export type ProposalStatus = 'open' | 'closed' | 'passed' | 'failed';

export interface HolderRow {
  address: string;
  /** The libp2p peer id behind the address when known (this node's own id for its own address). */
  peer: string | null;
  /** Shares and claimable wei: decimal strings of 18-decimal base units, as the ledger view gives them. */
  balance: string;
  claimable: string;
  /** This node's payout address. */
  me: boolean;
  /** Share of the total supply in percent with 2 decimals ("62.50"), rounded half up; null when the supply is 0 or unreadable. */
  percent: string | null;
}

export type ProposalRow = LedgerView['proposals'][number] & { status: ProposalStatus };

/** What the ownership panel shows: the ledger view with each holder's percentage and "me", and each proposal's status. */
export interface Ownership extends Omit<LedgerView, 'holders' | 'proposals'> {
  holders: HolderRow[];
  /** Holders left out of `holders` (beyond limits.maxHolders). */
  holdersHidden: number;
  proposals: ProposalRow[];
}

const UINT = /^\d{1,78}$/;

/** balance / supply in percent, 2 decimals, rounded half up, in BigInt (amounts can exceed 2^53). */
export function percentOf(balance: string, supply: string): string | null {
  if (!UINT.test(balance) || !UINT.test(supply)) return null;
  const b = BigInt(balance);
  const t = BigInt(supply);
  if (t === 0n) return null;
  const bp = (b * 20_000n + t) / (2n * t); // hundredths of a percent
  return `${bp / 100n}.${(bp % 100n).toString().padStart(2, '0')}`;
}

/**
 * A proposal's status at `now` (Unix ms): passed or failed once executed; before its deadline
 * (Unix seconds, the chain's block time) open; after it, until someone executes it, closed.
 */
export function proposalStatus(
  p: { deadline: number; executed: boolean; passed: boolean },
  now: number,
): ProposalStatus {
  if (p.executed) return p.passed ? 'passed' : 'failed';
  return now < p.deadline * 1000 ? 'open' : 'closed';
}

/** The ownership panel at `now` (Unix ms), or null when the node is not linked to a chain. */
export function ownership(s: DashState, now: number): Ownership | null {
  const l = s.ledger;
  if (!l) return null;
  const me = l.me.toLowerCase();
  const rows = l.holders.map((h): HolderRow => {
    const mine = h.address.toLowerCase() === me;
    return {
      address: h.address,
      peer: h.peer ?? (mine ? s.peerId : null),
      balance: h.balance,
      claimable: h.claimable,
      me: mine,
      percent: percentOf(h.balance, l.totalSupply),
    };
  });
  let holders = rows.slice(0, s.limits.maxHolders);
  const own = rows.findIndex((h) => h.me);
  if (own >= s.limits.maxHolders) holders = [...holders.slice(0, s.limits.maxHolders - 1), rows[own]];
  const { holders: _h, proposals, ...rest } = l;
  void _h;
  return {
    ...rest,
    holders,
    holdersHidden: rows.length - holders.length,
    proposals: proposals.map((p) => ({ ...p, status: proposalStatus(p, now) })),
  };
}
