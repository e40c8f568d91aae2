/**
 * A discrete-event network for the round reducer (src/swarm/round.ts), shared by the reducer's
 * tests and the Sybil simulation: peers are reducers, the "weights" are a hash chain
 * θ' = sha256(θ ‖ valueHash), messages travel with random delay, loss and replay, and every
 * decision is checked for agreement as it happens. Deterministic for a seed.
 */
import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import { sha256Hex } from '../../src/util/hash.js';
import {
  init,
  snapshotOf,
  step,
  type AcceptorRecord,
  type Commit,
  type Decision,
  type Effect,
  type Message,
  type RejectReason,
  type Rejection,
  type RoundEvent,
  type RoundParams,
  type RoundSnapshot,
  type RoundState,
  type StepResult,
  type UpdateMsg,
} from '../../src/swarm/round.js';
import { Rng } from '../../src/util/rng.js';

export const RUN = sha256Hex('test-run');
export const GENESIS = sha256Hex('genesis-weights');

export function params(over: Partial<RoundParams> = {}): RoundParams {
  return {
    runId: RUN,
    innerSteps: 10,
    batch: 4,
    numShards: 8,
    trainMs: 1000,
    submitMs: 1500,
    commitMs: 300,
    quorum: 1,
    minPeers: 2,
    maxMissedRounds: 2,
    genesisWeightsHash: GENESIS,
    retryMs: 300,
    ...over,
  };
}

// ───────────────────────── simulated network ─────────────────────────

export interface SimPeer {
  id: string;
  state: RoundState;
  alive: boolean;
  /** Time for H inner steps as a multiple of 0.6·trainMs; Infinity never finishes. */
  speed: number;
  trainToken: number;
  rejected: Rejection[];
  effects: Effect[];
  /** round → valueHash of every decision this peer reached. */
  decisions: Map<number, string>;
  /** round → the decided commit, as this peer learned it. */
  commits: Map<number, Commit>;
  /** round → post-apply weights hash. */
  results: Map<number, string>;
  /** Every update payload this peer ever held (peers keep recent payloads to serve fetches). */
  held: Set<string>;
  faultyApply: Set<number>;
  /** round → the snapshot this peer started that round from (what it can serve, like the driver's recent states). */
  snaps: Map<number, RoundSnapshot>;
  /**
   * A peer that gets others' updates only by fetching them, each fetch answered this many ms
   * late (a home peer whose payloads come through a slow path); undefined: updates by gossip.
   */
  fetchMs?: number;
}

interface Pending {
  at: number;
  seq: number;
  to: string;
  ev: RoundEvent;
  token?: number;
}

export interface NetOpts {
  minDelay: number;
  maxDelay: number;
  drop: number;
  dup: number;
  dt: number;
  applyMs: number;
}

export class Sim {
  now = 0;
  private seq = 0;
  readonly peers = new Map<string, SimPeer>();
  queue: Pending[] = [];
  /** Every published update message by hash (the payload store fetches are served from). */
  readonly store = new Map<string, UpdateMsg>();
  /** round → first valueHash decided by anyone; violations of agreement are collected. */
  readonly decided = new Map<number, string>();
  readonly violations: string[] = [];
  readonly rng: Rng;
  readonly net: NetOpts;
  /** Sees every broadcast (an adversary outside the reducers listens to the gossip). */
  onBroadcast?: (from: SimPeer, msg: Message) => void;

  constructor(
    readonly p: RoundParams,
    seed = 1,
    net: Partial<NetOpts> = {},
  ) {
    this.rng = new Rng(seed);
    this.net = { minDelay: 20, maxDelay: 20, drop: 0, dup: 0, dt: 10, applyMs: 5, ...net };
  }

  add(
    id: string,
    opts: {
      genesis?: string[];
      bootstrap?: string[];
      speed?: number;
      acceptor?: AcceptorRecord;
      fetchMs?: number;
    } = {},
  ): SimPeer {
    const res = init({
      self: id,
      params: this.p,
      now: this.now,
      genesis: opts.genesis ? { roster: opts.genesis } : undefined,
      bootstrap: opts.bootstrap,
      acceptor: opts.acceptor,
    });
    const peer: SimPeer = {
      id,
      state: res.state,
      alive: true,
      speed: opts.speed ?? 1,
      trainToken: 0,
      rejected: [],
      effects: [],
      decisions: new Map(),
      commits: new Map(),
      results: new Map(),
      held: new Set(),
      faultyApply: new Set(),
      snaps: new Map(),
      ...(opts.fetchMs !== undefined ? { fetchMs: opts.fetchMs } : {}),
    };
    this.peers.set(id, peer);
    this.absorb(peer, res);
    return peer;
  }

  peer(id: string): SimPeer {
    const p = this.peers.get(id);
    if (!p) throw new Error(`no peer ${id}`);
    return p;
  }

  kill(id: string): void {
    this.peer(id).alive = false;
  }

  private fed = 0;
  /** Feeds one event to a peer and processes what comes out; every 37th step checks that step() left its input alone. */
  feed(id: string, ev: RoundEvent): StepResult {
    const p = this.peer(id);
    const check = ++this.fed % 37 === 0 && ev.type !== 'tick';
    const before = check ? structuredClone(p.state) : null;
    const res = step(p.state, ev);
    if (before && !isDeepStrictEqual(before, p.state))
      this.violations.push(`step(${ev.type}) mutated ${p.id}'s input state`);
    this.absorb(p, res);
    return res;
  }

  private record(p: SimPeer, round: number, d: Decision): void {
    const vh = d.valueHash;
    if (!p.commits.has(round)) p.commits.set(round, d.commit);
    const mine = p.decisions.get(round);
    if (mine !== undefined && mine !== vh) this.violations.push(`${p.id} decided round ${round} twice differently`);
    p.decisions.set(round, vh);
    const first = this.decided.get(round);
    if (first === undefined) this.decided.set(round, vh);
    else if (first !== vh)
      this.violations.push(`round ${round}: ${p.id} decided ${vh.slice(0, 8)}, another peer ${first.slice(0, 8)}`);
  }

  private absorb(p: SimPeer, res: StepResult): void {
    p.state = res.state;
    for (const h of res.state.updates.keys()) p.held.add(h);
    p.rejected.push(...res.rejected);
    p.effects.push(...res.effects);
    const s = res.state;
    const snap = snapshotOf(s);
    if (snap && !p.snaps.has(snap.round)) p.snaps.set(snap.round, snap);
    if (s.decision) this.record(p, s.round, s.decision);
    if (s.prev) {
      this.record(p, s.prev.round, s.prev.decision);
      if (s.prev.resultHash) p.results.set(s.prev.round, s.prev.resultHash);
    }
    for (const e of res.effects) this.effect(p, e);
  }

  private schedule(to: string, ev: RoundEvent, delay: number, token?: number): void {
    this.queue.push({ at: this.now + delay, seq: this.seq++, to, ev, token });
  }

  private delay(): number {
    const { minDelay, maxDelay } = this.net;
    return minDelay + this.rng.nextInt(maxDelay - minDelay + 1);
  }

  send(to: string, msg: Message): void {
    if (this.net.drop > 0 && this.rng.nextFloat() < this.net.drop) return;
    this.schedule(to, { type: 'message', msg }, this.delay());
    // Network-level replay: the same message delivered again later.
    if (this.net.dup > 0 && this.rng.nextFloat() < this.net.dup)
      this.schedule(to, { type: 'message', msg }, this.delay() + 200 + this.rng.nextInt(2000));
  }

  private effect(p: SimPeer, e: Effect): void {
    switch (e.type) {
      case 'broadcast':
        if (e.msg.type === 'update') this.store.set(e.msg.updateHash, e.msg);
        for (const q of this.peers.values())
          if (q.id !== p.id && !(e.msg.type === 'update' && q.fetchMs !== undefined)) this.send(q.id, e.msg);
        this.onBroadcast?.(p, e.msg);
        break;
      case 'send':
        this.send(e.to, e.msg);
        break;
      case 'train': {
        const tok = ++p.trainToken;
        if (!Number.isFinite(p.speed)) break;
        const need = Math.round(0.6 * this.p.trainMs * p.speed);
        const avail = e.until - this.now;
        const steps = need <= avail ? e.steps : Math.floor((e.steps * avail) / need);
        const updateHash = sha256Hex(`update ${p.id} ${e.round} ${e.baseHash}`);
        this.schedule(p.id, { type: 'trained', round: e.round, updateHash, steps }, Math.min(need, avail), tok);
        break;
      }
      case 'stop-training':
        p.trainToken++;
        break;
      case 'fetch':
        for (const u of e.updates) {
          const msg = this.store.get(u.updateHash);
          const holder = [...this.peers.values()].find((q) => q.alive && q.id !== p.id && q.held.has(u.updateHash));
          if (msg && holder && p.fetchMs !== undefined)
            this.schedule(p.id, { type: 'message', msg }, this.delay() + p.fetchMs);
          else if (msg && holder) this.send(p.id, msg);
        }
        break;
      case 'apply': {
        const ok = sha256Hex(`${e.baseHash}|${e.valueHash}`);
        const h = p.faultyApply.has(e.round) ? sha256Hex(`corrupt ${p.id} ${e.round}`) : ok;
        this.schedule(p.id, { type: 'applied', round: e.round, weightsHash: h }, this.net.applyMs);
        break;
      }
      case 'resync': {
        // Like the driver: a state of exactly the asked round and θ hash, from a live holder.
        const held = (q: SimPeer | undefined) => (q && q.alive && e.round !== null ? q.snaps.get(e.round) : undefined);
        const src = e.from.map((id) => this.peers.get(id)).find((q) => held(q)?.weightsHash === e.weightsHash);
        if (src) this.schedule(p.id, { type: 'synced', snapshot: held(src)! }, this.delay());
        break;
      }
    }
  }

  /** Advances simulated time to `until`, delivering events in time order and ticking every dt. */
  run(until: number): void {
    while (this.now < until) {
      this.now = Math.min(until, this.now + this.net.dt);
      const due = this.queue.filter((x) => x.at <= this.now).sort((a, b) => a.at - b.at || a.seq - b.seq);
      this.queue = this.queue.filter((x) => x.at > this.now);
      for (const x of due) {
        const p = this.peers.get(x.to);
        if (!p || !p.alive) continue;
        if (x.token !== undefined && x.token !== p.trainToken) continue;
        this.feed(x.to, { type: 'tick', now: x.at });
        this.feed(x.to, x.ev);
      }
      for (const p of this.peers.values()) if (p.alive) this.feed(p.id, { type: 'tick', now: this.now });
    }
  }

  runUntil(pred: () => boolean, limit: number): void {
    while (!pred() && this.now < limit) this.run(this.now + this.net.dt);
  }

  alive(): SimPeer[] {
    return [...this.peers.values()].filter((p) => p.alive);
  }

  decisionOf(id: string, round: number): Commit {
    const k = this.peer(id).commits.get(round);
    assert.ok(k, `${id} has not decided round ${round}`);
    return k;
  }

  reasons(id: string): RejectReason[] {
    return this.peer(id).rejected.map((r) => r.reason);
  }
}
