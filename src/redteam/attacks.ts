/**
 * Attacks a user can run against their own live run (`tessera attack`), one per threat in
 * docs/THREATS.md that a single peer on the network can mount: it joins the run's control topic
 * as an outsider (a fresh key) or as a member (the data directory of one), watches the round the
 * run is in, and sends well-formed, correctly signed messages that try to make honest peers pay
 * (fetch, decode, verify, store) or accept something unagreed. Every message is also what the
 * red-team tests send; the defences are in src/peer/ and src/swarm/round.ts.
 *
 * Hand-written: no library attacks a Tessera swarm. It only ever talks to the peers it is told
 * to bootstrap from (and the peers they gossip with); each attack is bounded in messages and time.
 */
import { randomBytes } from 'node:crypto';
import type { Host } from '../net/index.js';
import { openMessage, sealMessage } from '../net/index.js';
import { NodeSchemas } from '../peer/wire.js';
import { encodeBundle } from '../peer/bundle.js';
import { paramCount } from '../model/params.js';
import { getCodec } from '../swarm/compress/index.js';
import type { DecodedManifest } from '../swarm/manifest.js';
import type { RoundSnapshot } from '../swarm/round.js';
import { sha256HexNode } from '../util/hash-node.js';
import { InvalidInputError } from '../util/errors.js';

/** What the attacker has learnt of the run from its gossip. */
export interface RunView {
  /** The round the run is in (the latest round seen, +1 after an announce). */
  round: number;
  /** θ's hash at the start of `round` (from announces and updates), if seen. */
  baseHash: string | null;
  /** Peers seen sending round messages (members, as far as the attacker can tell). */
  members: Set<string>;
}

export interface AttackContext {
  host: Host;
  topic: string;
  manifest: DecodedManifest;
  view: RunView;
  /** Bulk objects the attacker serves, by sha256. */
  served: Map<string, Uint8Array>;
  /** Signs `body` as `kind` with the attacker's key and publishes it; resolves to the number of recipients. */
  send: (kind: string, body: unknown) => Promise<number>;
}

export interface Attack {
  /** What the attack tries, in one line (shown by --help and in the report). */
  what: string;
  /** Sends attack message `i` (0-based). */
  message: (ctx: AttackContext, i: number) => Promise<number>;
}

const hex = (n: number): string => randomBytes(n).toString('hex');
const hash32 = (): string => hex(32);

/** Serves `bytes` under its sha256 and returns the hash. */
function serve(ctx: AttackContext, bytes: Uint8Array): string {
  const h = sha256HexNode(bytes);
  ctx.served.set(h, bytes);
  return h;
}

export const ATTACKS: Record<string, Attack> = {
  'future-round': {
    what: 'claims a round 1000 ahead and advertises a forged snapshot of it (takeover by resync)',
    async message(ctx, i) {
      const { manifest: dm, view } = ctx;
      const P = paramCount(dm.manifest.model);
      const round = view.round + 1000 + i;
      const theta = new Float32Array(P).fill(0.5);
      const weightsHash = sha256HexNode(new Uint8Array(theta.buffer));
      const snap: RoundSnapshot = { round, weightsHash, roster: [ctx.host.peerId], missed: [0] };
      const bundle = serve(ctx, encodeBundle(snap, theta, new Float32Array(P)));
      await ctx.send('round.announce', { round: round - 1, weightsHash, valueHash: hash32() });
      return await ctx.send('node.snap', { round, weightsHash, bundle });
    },
  },
  'codec-mismatch': {
    what: "announces next-round updates whose payloads use other codec parameters than the run's",
    async message(ctx, i) {
      const { manifest: dm, view } = ctx;
      const P = paramCount(dm.manifest.model);
      const delta = new Float32Array(P);
      for (let j = i % 7; j < P; j += 97) delta[j] = 1e-3;
      const bytes = getCodec('sparse', { chunk: 1 << 16, k: 1 }).encode(delta).bytes;
      const updateHash = serve(ctx, bytes);
      return await ctx.send('round.update', {
        round: view.round + 1,
        baseHash: view.baseHash ?? hash32(),
        updateHash,
        steps: dm.manifest.hyper.innerSteps,
      });
    },
  },
  'commit-flood': {
    what: 'publishes audit commitments for many rounds, to push honest commitments out of bounded maps',
    async message(ctx, i) {
      return await ctx.send('node.commit', {
        round: ctx.view.round + (i % 64),
        updateHash: hash32(),
        steps: 1,
        root: hash32(),
        trace: hash32(),
      });
    },
  },
  'fraud-spam': {
    what: 'publishes fraud proofs against honest members, each costing a download and a re-executed step',
    async message(ctx, i) {
      const members = [...ctx.view.members].filter((p) => p !== ctx.host.peerId);
      const trainer = members[i % Math.max(1, members.length)] ?? ctx.host.peerId;
      const proof = serve(ctx, randomBytes(4096));
      return await ctx.send('node.fraud', {
        round: Math.max(0, ctx.view.round - 1),
        trainer,
        k: 1,
        root: hash32(),
        proof,
      });
    },
  },
  'sig-spam': {
    what: 'publishes score-report signatures, each costing a signature recovery',
    async message(ctx, i) {
      const addr = `0x${hex(20)}`;
      return await ctx.send('node.sig', {
        report: {
          manifestHash: `0x${ctx.manifest.runId}`,
          round: String(Math.max(0, ctx.view.round - 1 - (i % 4))),
          weightsHash: `0x${hash32()}`,
          checkpointCid: '0x',
          updatesRoot: `0x${hash32()}`,
          scoresRoot: `0x${hash32()}`,
          recipients: [addr],
          scores: ['1000000'],
        },
        signer: addr,
        signature: `0x${hex(65)}`,
      });
    },
  },
  'score-spam': {
    what: 'publishes validator score reports that flag every honest member (selection by score)',
    async message(ctx) {
      const entries = [...ctx.view.members]
        .filter((p) => p !== ctx.host.peerId)
        .map((peer) => ({ peer, score: 0, ema: 0, flagged: true, reason: 'low score' }));
      const round = Math.max(0, ctx.view.round - 1);
      return await ctx.send('node.scores', {
        round,
        baseHash: ctx.view.baseHash ?? hash32(),
        reportHash: hash32(),
        entries,
      });
    },
  },
  'payout-flip': {
    what: 'changes its payout address every message, so validators may sign different reports for a round',
    async message(ctx) {
      return await ctx.send('node.payout', { address: `0x${hex(20)}` });
    },
  },
  'snap-flood': {
    what: 'advertises a new snapshot under a fresh hash every message (per-sender state)',
    async message(ctx, i) {
      return await ctx.send('node.snap', { round: ctx.view.round + (i % 3), weightsHash: hash32(), bundle: hash32() });
    },
  },
};

export const ATTACK_NAMES = Object.keys(ATTACKS);

export function attackByName(name: string): Attack {
  const a = Object.hasOwn(ATTACKS, name) ? ATTACKS[name] : undefined;
  if (!a) throw new InvalidInputError(`unknown attack ${JSON.stringify(name)}; one of: ${ATTACK_NAMES.join(', ')}`);
  return a;
}

/** Follows the run's gossip: the round it is in, its base hash, who sends round messages. */
export function watchRun(host: Host, topic: string, view: RunView): void {
  host.node.services.pubsub.addEventListener('gossipsub:message', (e) => {
    const m = e.detail.msg;
    if (m.topic !== topic || m.type !== 'signed') return;
    let opened;
    try {
      opened = openMessage(m.data, { schemas: NodeSchemas, context: topic });
    } catch {
      return;
    }
    const b = opened.body as { round?: number; weightsHash?: string; baseHash?: string };
    if (!opened.kind.startsWith('round.')) return;
    view.members.add(opened.from);
    if (opened.kind === 'round.announce' && typeof b.round === 'number' && b.round + 1 >= view.round) {
      view.round = b.round + 1;
      if (b.weightsHash) view.baseHash = b.weightsHash;
    } else if (opened.kind === 'round.update' && typeof b.round === 'number' && b.round >= view.round) {
      view.round = b.round;
      if (b.baseHash) view.baseHash = b.baseHash;
    }
  });
}

/** Seals and publishes on `topic` from `host`. */
export function sender(host: Host, topic: string): (kind: string, body: unknown) => Promise<number> {
  return async (kind, body) => {
    const bytes = sealMessage(host.privateKey, kind, body, { context: topic });
    const r = await host.node.services.pubsub.publish(topic, bytes);
    return r.recipients.length;
  };
}
