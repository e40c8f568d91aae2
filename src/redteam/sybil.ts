/**
 * The Sybil flood (`tessera attack sybil`): one process holds `identities` fresh keys, each on
 * its own libp2p host (gossipsub signs with the host's key, so an identity is a host), all
 * bootstrapping from the run. Every identity asks to join each round, announces an update of
 * the round (a hash nobody can fetch: it has done no work), accepts every commit an honest
 * leader proposes and promises the next attempt, so that if membership counted heads it would
 * hold the votes and the leader slots. What stops it: docs/ROUNDS.md "Membership".
 *
 * Hand-written: no library attacks a Tessera swarm. Bounded: `messages` in all, at `rate` a
 * second, and only the bootstrap peers (and whom they gossip with) are reached.
 */
import { join } from 'node:path';
import { pino } from 'pino';
import { controlTopic, createHost, openMessage, type Host } from '../net/index.js';
import { NodeSchemas } from '../peer/wire.js';
import type { DecodedManifest } from '../swarm/manifest.js';
import { sha256HexNode } from '../util/hash-node.js';
import { sender, watchRun, type RunView } from './attacks.js';

export interface SybilFloodOptions {
  manifest: DecodedManifest;
  bootstrap: string[];
  /** Each identity's key lives in <dataDir>/sybil-<i>. */
  dataDir: string;
  identities: number;
  /** Messages in all (joins, updates, accepts, promises). */
  messages: number;
  /** Messages per second. */
  rate: number;
  /** Watch the run this long before flooding. */
  waitMs: number;
  /** Stop after this long of flooding, whatever is left of `messages`. */
  maxMs: number;
  signal?: AbortSignal;
}

export interface SybilFloodResult {
  identities: string[];
  sent: number;
  failed: number;
  recipients: number;
  /** Rounds the flood saw start while it ran. */
  rounds: number[];
  seconds: number;
}

export async function sybilFlood(o: SybilFloodOptions): Promise<SybilFloodResult> {
  const topic = controlTopic(o.manifest.runId);
  const hosts: Host[] = [];
  try {
    for (let i = 0; i < o.identities; i++) {
      const h = await createHost({
        dataDir: join(o.dataDir, `sybil-${i}`),
        bootstrap: o.bootstrap,
        logger: pino({ level: 'silent' }),
        ...(o.signal ? { signal: o.signal } : {}),
      });
      hosts.push(h);
      h.node.services.pubsub.subscribe(topic);
    }
    const sends = hosts.map((h) => sender(h, topic));
    const view: RunView = { round: 0, baseHash: null, members: new Set() };
    watchRun(hosts[0], topic, view);
    // Work queue: what every identity sends next, drained at `rate`.
    const queue: { who: number; kind: string; body: unknown }[] = [];
    const seenCommits = new Set<string>();
    hosts[0].node.services.pubsub.addEventListener('gossipsub:message', (e) => {
      const m = e.detail.msg;
      if (m.topic !== topic || m.type !== 'signed') return;
      let opened;
      try {
        opened = openMessage(m.data, { schemas: NodeSchemas, context: topic });
      } catch {
        return;
      }
      if (opened.kind !== 'round.commit' && opened.kind !== 'round.accept') return;
      const commit = (opened.body as { commit: { round: number; attempt: number } }).commit;
      const key = sha256HexNode(new TextEncoder().encode(JSON.stringify(commit)));
      if (seenCommits.has(key) || seenCommits.size > 4096) return;
      seenCommits.add(key);
      for (let i = 0; i < hosts.length; i++) {
        queue.push({ who: i, kind: 'round.accept', body: { commit } });
        queue.push({
          who: i,
          kind: 'round.promise',
          body: { round: commit.round, attempt: commit.attempt + 1, accepted: null },
        });
      }
    });
    await new Promise((r) => setTimeout(r, o.waitMs));
    const t0 = Date.now();
    const rounds: number[] = [];
    let sent = 0,
      failed = 0,
      recipients = 0,
      lastRound = -1;
    while (sent + failed < o.messages && !o.signal?.aborted && Date.now() - t0 < o.maxMs) {
      if (view.round !== lastRound) {
        lastRound = view.round;
        rounds.push(view.round);
        for (let i = 0; i < hosts.length; i++) {
          queue.unshift({ who: i, kind: 'round.join', body: { round: view.round } });
          if (view.baseHash)
            queue.push({
              who: i,
              kind: 'round.update',
              body: {
                round: view.round,
                baseHash: view.baseHash,
                updateHash: sha256HexNode(new TextEncoder().encode(`no work ${hosts[i].peerId} ${view.round}`)),
                steps: o.manifest.manifest.hyper.innerSteps,
              },
            });
        }
      }
      const next = queue.shift();
      if (next) {
        try {
          recipients += await sends[next.who](next.kind, next.body);
          sent++;
        } catch {
          failed++; // no topic peers yet, or a peer dropped this identity: keep going
        }
      }
      const due = t0 + ((sent + failed) * 1000) / o.rate;
      const wait = next ? due - Date.now() : 100;
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
    return {
      identities: hosts.map((h) => h.peerId),
      sent,
      failed,
      recipients,
      rounds,
      seconds: (Date.now() - t0) / 1000,
    };
  } finally {
    await Promise.all(hosts.map((h) => h.stop().catch(() => undefined)));
  }
}
