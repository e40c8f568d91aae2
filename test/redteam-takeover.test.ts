/**
 * Issue 15, item 1 ("one member can take over the swarm"), against live SwarmNodes in process:
 * two honest peers and M, a roster member (listed in genesisPeers; a raw libp2p host that never
 * trains). Once the honest peers agree, M claims round r+1000 in every way it can (an announce
 * attesting a forged state, an update, a join, a snapshot advertisement) and serves that forged
 * state as a bulk bundle: its own weights, a roster of only itself, round r+1000.
 *
 * Before the fix (commit 7edebe4) one such message made every honest peer resync from M alone
 * with no target and install the forged state. Now a state needs a certificate from a quorum of
 * the roster (docs/ROUNDS.md, "State only from agreement"): the honest peers must never
 * install it, keep identical weights hashes and go on agreeing. The outcome is printed as one
 * `redteam-outcome` JSON line, so the same file, compiled, can be run against the old code.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { buildManifest } from '../src/swarm/manifest-builder.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { controlTopic, createHost, sealMessage, serveBulk, type Host } from '../src/net/index.js';
import { sha256HexNode as sha256Hex } from '../src/util/hash-node.js';
import { weightsHash } from '../src/model/checkpoint.js';
import { encodeBundle } from '../src/peer/bundle.js';
import * as round from '../src/swarm/round.js';
import { dataDirFor, preparePeer } from './support/swarm.js';
import { SwarmNode, type RoundReport } from '../src/peer/node.js';

const root = mkdtempSync(join(tmpdir(), 'tessera-redteam-'));
const nodes: SwarmNode[] = [];
const hosts: Host[] = [];

after(async () => {
  await Promise.allSettled(nodes.map((n) => n.stop()));
  await Promise.allSettled(hosts.map((h) => h.stop()));
  rmSync(root, { recursive: true, force: true });
});

async function waitFor(what: string, cond: () => boolean, ms: number): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

test(
  'a hostile member claiming round r+1000 and serving a forged state takes over nothing',
  { timeout: 120_000 },
  async (t) => {
    const cacheDir = defaultCacheDir();
    const { decoded, params: P } = buildManifest({
      vocab: 512,
      ctx: 32,
      dim: 32,
      layers: 1,
      heads: 2,
      batch: 2,
      inner: 4,
      lr: 3e-3,
      codec: 'sparse',
      shards: 8,
      seed: 15,
      trainMs: 600,
      submitMs: 1500,
      commitMs: 1000,
      quorum: 0.6,
      minPeers: 1,
      maxMissed: 1000,
      cacheDir,
    });
    const topic = controlTopic(decoded.runId);
    const M = await createHost({ dataDir: join(root, 'member'), logger: pino({ level: 'silent' }) });
    hosts.push(M);
    const served = new Map<string, Uint8Array>();
    await serveBulk(M, (hash) => served.get(hash));

    const specs = await Promise.all([0, 1].map((i) => preparePeer(i, dataDirFor(root, i))));
    const reports: RoundReport[][] = specs.map(() => []);
    for (const [i, spec] of specs.entries()) {
      nodes.push(
        new SwarmNode({
          manifest: decoded,
          dataDir: spec.dataDir,
          listen: [`/ip4/127.0.0.1/tcp/${spec.port}`],
          bootstrap: [...specs.filter((s) => s !== spec).map((s) => s.addr), M.multiaddrs()[0]],
          genesisPeers: [...specs.map((s) => s.peerId), M.peerId],
          cacheDir,
          threads: 1,
          evalBatches: 1,
          logger: pino({ level: 'silent' }),
          onRound: (r) => reports[i].push(r),
        }),
      );
    }
    // M subscribes only once the honest peers see each other (as in swarm-badinput.test.ts).
    const started = Promise.all(nodes.map((n) => n.start()));
    let startError: unknown = null;
    started.catch((err: unknown) => {
      startError = err;
    });
    await waitFor(
      'the honest peers to see each other',
      () =>
        startError !== null ||
        nodes.every((n, i) => {
          const ch = (n as { channel?: SwarmNode['channel'] }).channel;
          return ch !== undefined && ch.subscribers().includes(specs[1 - i].peerId);
        }),
      30_000,
    );
    M.node.services.pubsub.subscribe(topic);
    await started;
    await waitFor(
      'M to see both honest peers on the topic',
      () => {
        const subs = new Set(M.node.services.pubsub.getSubscribers(topic).map(String));
        return specs.every((s) => subs.has(s.peerId));
      },
      20_000,
    );
    const completed = (i: number) => reports[i].filter((r) => r.event === 'round');
    const agreed = (from: number): number[] =>
      completed(0)
        .filter(
          (r) => r.round >= from && completed(1).some((x) => x.round === r.round && x.weightsHash === r.weightsHash),
        )
        .map((r) => r.round);
    await waitFor('2 agreed rounds before the attack', () => agreed(0).length >= 2, 40_000);

    // ── the forged state: M's weights, a roster of M alone, round r+1000 ──
    const r0 = Math.max(...nodes.map((n) => n.state.round));
    const R = r0 + 1000;
    const theta = Float32Array.from({ length: P }, () => Math.random() - 0.5);
    const forgedHash = weightsHash(theta);
    const forged = { round: R, weightsHash: forgedHash, roster: [M.peerId], missed: [0] };
    const bytes = encodeBundle(forged, theta, new Float32Array(P));
    const bundle = sha256Hex(bytes);
    served.set(bundle, bytes);
    const snapHash = 'snapshotHash' in round ? round.snapshotHash(forged) : sha256Hex(randomBytes(8));
    const seal = (kind: string, body: unknown) => sealMessage(M.privateKey, kind, body, { context: topic });
    const publish = (b: Uint8Array) => M.node.services.pubsub.publish(topic, b).catch(() => undefined);
    const valueHash = sha256Hex(randomBytes(8));
    const attackAt = Date.now();
    for (let k = 0; k < 8; k++) {
      await publish(seal('node.snap', { round: R, weightsHash: forgedHash, bundle }));
      // The announce in both wire forms (with snapHash now, without it before the fix).
      await publish(seal('round.announce', { round: R - 1, weightsHash: forgedHash, valueHash, snapHash }));
      await publish(seal('round.announce', { round: R - 1, weightsHash: forgedHash, valueHash }));
      await publish(
        seal('round.update', { round: R, baseHash: forgedHash, updateHash: sha256Hex(randomBytes(8)), steps: 4 }),
      );
      await publish(seal('round.join', { round: R }));
      await new Promise((r) => setTimeout(r, 700));
    }
    // Observe for a fixed window, then report what the honest peers did.
    await new Promise((r) => setTimeout(r, 10_000));
    const outcome = nodes.map((n, i) => ({
      peer: i,
      round: n.state.round,
      phase: n.state.phase,
      weightsIsForged: n.state.weightsHash === forgedHash,
      rosterIsAttackers: n.state.roster.length === 1 && n.state.roster[0] === M.peerId,
      syncedTo: reports[i].filter((x) => x.event === 'synced').map((x) => `${x.round}:${x.weightsHash.slice(0, 8)}`),
      forgedInReports: reports[i].some((x) => x.weightsHash === forgedHash),
      roundsAfterAttack: completed(i).filter((x) => x.round > r0).length,
    }));
    const after = agreed(r0 + 1);
    console.log(
      `redteam-outcome ${JSON.stringify({ r0, claimed: R, seconds: (Date.now() - attackAt) / 1000, agreedAfter: after, outcome })}`,
    );
    t.diagnostic(JSON.stringify({ r0, agreedAfter: after, outcome }));
    for (const o of outcome) {
      assert.equal(o.weightsIsForged, false, `honest ${o.peer} installed the forged weights`);
      assert.equal(o.rosterIsAttackers, false, `honest ${o.peer} took the attacker's roster`);
      assert.deepEqual(o.syncedTo, [], `honest ${o.peer} resynced`);
      assert.equal(o.forgedInReports, false);
      assert.ok(o.round < r0 + 100, `honest ${o.peer} jumped to round ${o.round}`);
    }
    assert.ok(after.length >= 2, `only ${after.length} agreed rounds after the attack`);
  },
);
