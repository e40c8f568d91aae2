/**
 * A Sybil swarm against the round reducer, in the discrete-event network of round-sim.ts: one
 * attacker holds `count` identities (free keys, no verified work) and uses every message the
 * protocol has. Each round every identity asks to join; once admitted it submits a garbage
 * update, accepts and promises for every commit it sees, claims a forged post-round state,
 * proposes as if it led, and sends a "decided" certificate signed by all its identities.
 * Validators flag a garbage update one round after it first lands (as in swarm-select), so the
 * honest peers leave that identity's later updates out; with the probation gate, a probationer's
 * update is proposed only after a validator scored one unflagged (an honest newcomer's first
 * update is scored, not applied). Honest reducers run the real protocol.
 *
 * Used by test/redteam-sybil.test.ts and bench/sybil.ts, which report the fraction of votes and
 * leader slots the identities hold, and how long an honest newcomer needs to gain a vote.
 */
import { compareIds } from '../../src/swarm/assign.js';
import { commitHash, type Commit, type Message, type RoundParams } from '../../src/swarm/round.js';
import { sha256Hex } from '../../src/util/hash.js';
import { Sim, type SimPeer } from './round-sim.js';

export interface SybilRunOptions {
  params: RoundParams;
  honest: string[];
  /** Attacker identities (0: a clean run). */
  count: number;
  /** Rounds the first honest peer must finish. */
  rounds: number;
  /** An honest newcomer starts (unsynced, bootstrapping from the honest peers) after this round; null: none. */
  newcomerAt: number | null;
  seed?: number;
  /** Simulated-time limit (ms). */
  limit?: number;
  /**
   * The validators' probation gate (src/peer/validator.ts Exclusions): leaders propose a
   * probationer's update only after a validator scored one unflagged. Without it, validators
   * only flag a garbage update after it first lands.
   */
  gate?: boolean;
}

export interface RoundSample {
  round: number;
  roster: number;
  voters: number;
  sybilMembers: number;
  sybilVoters: number;
  /** Entries of the round's leader order held by Sybil identities, and the order's length. */
  sybilLeaderSlots: number;
  leaderSlots: number;
  /** Leader of the decided commit, and whether it is a Sybil. */
  decidedBySybil: boolean;
  sybilIncluded: number;
}

export interface SybilRunResult {
  samples: RoundSample[];
  /** Rounds finished by the first honest peer. */
  rounds: number;
  /** Round at which the newcomer became a member, and a voter (as the first honest peer sees it). */
  newcomerMemberAt: number | null;
  newcomerVoterAt: number | null;
  /** Messages the attacker sent. */
  attackerMessages: number;
  /** Agreement violations and honest hash disagreements found. */
  violations: string[];
  /** Distinct post-apply hashes per round among honest peers that finished it (all 1 when agreed). */
  maxHashesPerRound: number;
  sim: Sim;
}

const NEWCOMER = 'n-honest-newcomer';

export function runSybil(o: SybilRunOptions): SybilRunResult {
  const sim = new Sim(o.params, o.seed ?? 7, { minDelay: 10, maxDelay: 60, drop: 0.02, dup: 0.02 });
  const honest = [...o.honest].sort(compareIds);
  for (const h of honest) sim.add(h, { genesis: honest });
  const sybils = Array.from({ length: o.count }, (_, i) => `s-${String(i).padStart(4, '0')}`);
  const sybilSet = new Set(sybils);
  const flagged = new Set<string>();
  const seenCommits = new Set<string>();
  const promised = new Set<string>();
  const roundsActed = new Set<number>();
  const samples: RoundSample[] = [];
  let attackerMessages = 0;
  let newcomerMemberAt: number | null = null;
  let newcomerVoterAt: number | null = null;
  const first = honest[0];
  const targets = () => [...sim.peers.values()].filter((p) => p.alive).map((p) => p.id);
  const sendAll = (msg: Message) => {
    for (const t of targets()) sim.send(t, msg);
    attackerMessages++;
  };
  const forged = (tag: string) => sha256Hex(`sybil forged ${tag}`);

  /** The attacker's moves at the start of round r (as the first honest peer starts it). */
  const actRound = (r: number, view: SimPeer) => {
    const st = view.state;
    const members = sybils.filter((x) => st.roster.includes(x));
    for (const x of sybils) {
      if (!st.roster.includes(x)) sendAll({ type: 'join', from: x, round: r });
      // A forged claim of the state after round r-1, by every identity.
      if (r > 0)
        sendAll({
          type: 'announce',
          from: x,
          round: r - 1,
          weightsHash: forged(`w${r}`),
          valueHash: forged(`v${r}`),
          snapHash: forged(`s${r}`),
        });
    }
    for (const x of members) {
      const msg: Message = {
        type: 'update',
        from: x,
        round: r,
        baseHash: st.trainBase,
        updateHash: sha256Hex(`garbage ${x} ${r}`),
        steps: o.params.innerSteps,
      };
      sim.store.set(msg.updateHash, msg);
      sendAll(msg);
    }
    if (sybils.length > 0) {
      // A proposal "led" by an identity, and a certificate signed by all of them.
      const k: Commit = {
        round: r,
        attempt: 0,
        leader: sybils[0],
        included: [],
        joins: sybils.filter((x) => !st.roster.includes(x)).slice(0, 16),
        live: [...st.roster].filter((x) => sybilSet.has(x)),
      };
      sendAll({ type: 'commit', from: sybils[0], commit: k });
      sendAll({ type: 'decided', from: sybils[0], commit: k, signers: [...sybils].sort(compareIds) });
    }
  };

  sim.onBroadcast = (from, msg) => {
    if (sybilSet.has(from.id)) return;
    // Vote for whatever honest leaders propose, and give up on every attempt at once.
    if ((msg.type === 'commit' || msg.type === 'accept') && sybils.length > 0) {
      const h = commitHash(msg.commit);
      if (!seenCommits.has(h)) {
        seenCommits.add(h);
        for (const x of sybils) sendAll({ type: 'accept', from: x, commit: msg.commit });
      }
      const key = `${msg.commit.round}:${msg.commit.attempt}`;
      if (!promised.has(key)) {
        promised.add(key);
        for (const x of sybils)
          sendAll({
            type: 'promise',
            from: x,
            round: msg.commit.round,
            attempt: msg.commit.attempt + 1,
            accepted: null,
          });
      }
    }
  };

  const limit = o.limit ?? 600_000;
  let done = -1;
  while (sim.now < limit) {
    sim.run(sim.now + 50);
    const view = sim.peer(first);
    const st = view.state;
    if (st.round >= 0 && !roundsActed.has(st.round) && st.phase !== 'unsynced' && st.phase !== 'syncing') {
      roundsActed.add(st.round);
      // Validators flagged every identity whose garbage landed in an earlier round.
      for (const [r, k] of view.commits)
        if (r < st.round) for (const u of k.included) if (sybilSet.has(u.peer)) flagged.add(u.peer);
      const out = new Set(flagged);
      if (o.gate) {
        for (const x of st.roster) if (sybilSet.has(x)) out.add(x);
        if (newcomerMemberAt === null && st.roster.includes(NEWCOMER)) out.add(NEWCOMER);
      }
      const peers = [...out].sort(compareIds);
      for (const p of sim.alive()) sim.feed(p.id, { type: 'exclude', peers });
      const prev = view.commits.get(st.round - 1);
      samples.push({
        round: st.round,
        roster: st.roster.length,
        voters: st.voters.length,
        sybilMembers: st.roster.filter((x) => sybilSet.has(x)).length,
        sybilVoters: st.voters.filter((x) => sybilSet.has(x)).length,
        sybilLeaderSlots: st.order.filter((x) => sybilSet.has(x)).length,
        leaderSlots: st.order.length,
        decidedBySybil: prev ? sybilSet.has(prev.leader) : false,
        sybilIncluded: prev ? prev.included.filter((u) => sybilSet.has(u.peer)).length : 0,
      });
      if (newcomerMemberAt === null && st.roster.includes(NEWCOMER)) newcomerMemberAt = st.round;
      if (newcomerVoterAt === null && st.voters.includes(NEWCOMER)) newcomerVoterAt = st.round;
      actRound(st.round, view);
      if (o.newcomerAt !== null && st.round === o.newcomerAt && !sim.peers.has(NEWCOMER))
        sim.add(NEWCOMER, { bootstrap: honest });
      done = st.round;
    }
    if (done >= o.rounds && (o.newcomerAt === null || newcomerVoterAt !== null || done >= o.rounds + 150)) break;
  }
  // Honest peers' post-apply hashes must agree round by round.
  let maxHashes = 1;
  const violations = [...sim.violations];
  for (let r = 0; r < done; r++) {
    const hs = new Set<string>();
    for (const p of sim.peers.values()) {
      const h = p.results.get(r);
      if (h) hs.add(h);
    }
    maxHashes = Math.max(maxHashes, hs.size);
    if (hs.size > 1) violations.push(`round ${r}: honest peers hold ${hs.size} different weights hashes`);
  }
  return {
    samples,
    rounds: done,
    newcomerMemberAt,
    newcomerVoterAt,
    attackerMessages,
    violations,
    maxHashesPerRound: maxHashes,
    sim,
  };
}
