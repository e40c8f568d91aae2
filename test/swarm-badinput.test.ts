/**
 * Untrusted input against live SwarmNodes, in process: two honest peers train and agree round
 * after round while two raw libp2p hosts attack them on the run's control topic and bulk
 * protocol:
 *   M, a roster member (listed in genesisPeers, never trains), and
 *   X, an outsider (not in the roster).
 * Every malformed, oversized, unsigned, wrongly signed, wrong-shape, wrong-round and replayed
 * message must be rejected with a logged reason (captured from each honest node's pino
 * logger), the honest nodes must keep completing rounds with identical weights hashes, and no
 * attacker update may ever be held, decided or applied.
 *
 * With M in the roster of 3, a strict majority is 2, so the two honest peers decide alone;
 * quorum 0.6 (⌈1.8⌉ = 2 updates) closes collection as soon as both honest updates are held.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { TopicValidatorResult, type TopicValidatorFn } from '@libp2p/gossipsub';
import { buildManifest } from '../src/swarm/manifest-builder.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { controlTopic, createHost, nextSeq, sealMessage, serveBulk, type Host } from '../src/net/index.js';
import { sha256HexNode as sha256Hex } from '../src/util/hash-node.js';
import { getCodec } from '../src/swarm/compress/index.js';
import { dataDirFor, preparePeer, type PeerSpec } from './support/swarm.js';
import { SwarmNode, type RoundReport } from '../src/peer/node.js';

type Rec = Record<string, unknown> & { msg?: string; reason?: string };

interface Honest {
  spec: PeerSpec;
  node: SwarmNode;
  logs: Rec[];
  reports: RoundReport[];
  /** round → the decided set (peer, updateHash) as seen in node.state. */
  decided: Map<number, Array<{ peer: string; updateHash: string }>>;
  /** Every call of the control topic's validator: the bytes and the verdict. */
  validated: Array<{ data: Uint8Array; result: TopicValidatorResult }>;
  /** Invariant breaches seen by the sampler (attacker input held in the round state). */
  breaches: string[];
}

const root = mkdtempSync(join(tmpdir(), 'tessera-badinput-'));
const honest: Honest[] = [];
const attackers: Host[] = [];
let sampler: NodeJS.Timeout | null = null;
/** The run's control topic (for summary()). */
let topicOf = '';

after(async () => {
  if (sampler) clearInterval(sampler);
  await Promise.allSettled(honest.map((h) => h.node.stop()));
  await Promise.allSettled(attackers.map((a) => a.stop()));
  rmSync(root, { recursive: true, force: true });
});

function memoryLogger(): { logger: Logger; records: Rec[] } {
  const records: Rec[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void records.push(JSON.parse(s) as Rec) });
  return { logger, records };
}

function summary(): string {
  const short = (id: string): string =>
    id === attackers[0]?.peerId
      ? 'M'
      : id === attackers[1]?.peerId
        ? 'X'
        : `h${honest.findIndex((h) => h.spec.peerId === id)}`;
  const lines = honest.map((h, i) => {
    const s = h.node.state;
    const rounds = h.reports.map((r) => `${r.event[0]}${r.round}:${r.weightsHash.slice(0, 6)}/${r.included}`);
    const state = s
      ? `round ${s.round} ${s.phase} attempt ${s.attempt} promised ${s.promised} order [${s.order.map(short).join(',')}] decided ${s.decision ? 'yes' : 'no'} held [${[...s.byPeer.keys()].map(short).join(',')}]`
      : 'not started';
    const conns = h.node.host
      ? `connected to [${h.node.host.connectedPeers().map(short).join(',')}], topic peers [${h.node.channel.subscribers().map(short).join(',')}]`
      : '';
    const recent = h.logs
      .filter((r) => r.level !== 20 || r.msg === 'rejected round input')
      .slice(-8)
      .map(
        (r) =>
          `    ${r.msg} ${r.reason ?? ''} ${String(r.detail ?? r.err ?? '').slice(0, 100)} from ${short(String(r.from ?? r.propagationSource ?? ''))}`,
      );
    return [
      `honest ${i}: ${state}; ${conns}`,
      `  rounds: ${rounds.length > 12 ? `${rounds.slice(0, 3).join(' ')} ... ${rounds.slice(-8).join(' ')}` : rounds.join(' ')}`,
      ...recent,
    ].join('\n');
  });
  for (const [i, a] of attackers.entries()) {
    lines.push(
      `${i === 0 ? 'M' : 'X'}: connected to [${a.connectedPeers().map(short).join(',')}], topic peers [${a.node.services.pubsub.getSubscribers(topicOf).map(String).map(short).join(',')}]`,
    );
  }
  return lines.join('\n');
}
async function waitFor(what: string, cond: () => boolean, ms: number): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}\n${summary()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Rounds every honest peer completed ('round' reports), each with the same weights hash. */
function agreedRounds(): number[] {
  const rounds = new Set(honest.flatMap((h) => h.reports.filter((r) => r.event === 'round').map((r) => r.round)));
  return [...rounds]
    .sort((a, b) => a - b)
    .filter((r) => {
      const hs = honest.map((h) => h.reports.find((x) => x.event === 'round' && x.round === r)?.weightsHash);
      return hs.every((x) => x !== undefined && x === hs[0]);
    });
}

test(
  'bad input from a member and an outsider is rejected with logged reasons; honest peers go on agreeing',
  { timeout: 240_000 },
  async (t) => {
    const t0 = Date.now();
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
      seed: 11,
      trainMs: 600,
      submitMs: 1500,
      commitMs: 1000,
      quorum: 0.6,
      minPeers: 1,
      maxMissed: 1000,
      cacheDir,
    });
    const runId = decoded.runId;
    const topic = controlTopic(runId);
    topicOf = topic;
    const codec = getCodec('sparse', { chunk: 1024, k: 64 });
    assert.equal(decoded.manifest.hyper.codec.id, 'sparse');

    // ── attackers: raw hosts that serve bulk objects from a map and join the control topic ──
    const silent = pino({ level: 'silent' });
    const M = await createHost({ dataDir: join(root, 'member'), logger: silent });
    attackers.push(M);
    const X = await createHost({ dataDir: join(root, 'outsider'), logger: silent });
    attackers.push(X);
    const served = new Map<string, Uint8Array>();
    await serveBulk(M, (hash) => served.get(hash));
    await serveBulk(X, (hash) => served.get(hash));
    const captured: Array<{ from: string; data: Uint8Array }> = [];
    M.node.services.pubsub.addEventListener('gossipsub:message', (e) => {
      const m = e.detail.msg;
      if (m.type === 'signed') captured.push({ from: m.from.toString(), data: m.data });
    });
    const attackerIds = new Set([M.peerId, X.peerId]);
    /** Every update hash an attacker announced: none may ever be held, decided or applied. */
    const attackerHashes = new Set<string>();

    // ── honest peers ──
    const specs = await Promise.all([0, 1].map((i) => preparePeer(i, dataDirFor(root, i))));
    const genesisPeers = [...specs.map((s) => s.peerId), M.peerId];
    for (const spec of specs) {
      const log = memoryLogger();
      const h: Honest = {
        spec,
        node: undefined as unknown as SwarmNode,
        logs: log.records,
        reports: [],
        decided: new Map(),
        validated: [],
        breaches: [],
      };
      h.node = new SwarmNode({
        manifest: decoded,
        dataDir: spec.dataDir,
        listen: [`/ip4/127.0.0.1/tcp/${spec.port}`],
        bootstrap: [...specs.filter((s) => s !== spec).map((s) => s.addr), M.multiaddrs()[0], X.multiaddrs()[0]],
        genesisPeers,
        cacheDir,
        threads: 1,
        evalBatches: 1,
        logger: log.logger,
        onRound: (r) => {
          h.reports.push(r);
          sample(h);
        },
      });
      honest.push(h);
    }
    const honestIds = new Set(specs.map((s) => s.peerId));

    function sample(h: Honest): void {
      const s = h.node.state;
      if (!s) return;
      if (s.decision)
        h.decided.set(
          s.round,
          s.decision.commit.included.map((u) => ({ peer: u.peer, updateHash: u.updateHash })),
        );
      if (s.prev)
        h.decided.set(
          s.prev.round,
          s.prev.decision.commit.included.map((u) => ({ peer: u.peer, updateHash: u.updateHash })),
        );
      for (const [hash, u] of s.updates) {
        if (attackerHashes.has(hash) || attackerIds.has(u.from))
          h.breaches.push(`round ${s.round}: holds attacker update ${hash.slice(0, 12)} from ${u.from}`);
      }
      for (const p of s.byPeer.keys())
        if (attackerIds.has(p)) h.breaches.push(`round ${s.round}: byPeer lists attacker ${p}`);
    }

    // The attackers join the topic only once the honest peers see each other on it. Workaround:
    // start() proceeds as soon as genesisPeers.length - 1 peers of ANY kind are subscribed, so
    // with the attackers subscribed early, one honest peer can publish its round-0 update before
    // the other listens; SwarmNode.deliverUpdate then cannot rebuild the missed update message
    // from a pending commit (only from a decision), and with M silent round 0 never decides.
    const started = Promise.all(honest.map((h) => h.node.start()));
    let startError: unknown = null;
    started.catch((err: unknown) => {
      startError = err;
    });
    await waitFor(
      'the honest peers to see each other on the control topic',
      () =>
        startError !== null ||
        honest.every((h, i) => {
          const ch = (h.node as { channel?: SwarmNode['channel'] }).channel;
          return ch !== undefined && ch.subscribers().includes(specs[1 - i].peerId);
        }),
      30_000,
    );
    for (const a of attackers) a.node.services.pubsub.subscribe(topic);
    await started;
    sampler = setInterval(() => honest.forEach(sample), 20);
    // Spy on each honest node's topic validator (installed by joinControlChannel): it sees every
    // gossip message that gossipsub itself let through, and returns the verdict.
    for (const h of honest) {
      const ps = h.node.host.node.services.pubsub;
      const orig = ps.topicValidators.get(topic);
      assert.ok(orig, 'the node validates its control topic');
      const spy: TopicValidatorFn = async (src, msg) => {
        const result = await orig(src, msg);
        h.validated.push({ data: msg.data, result });
        return result;
      };
      ps.topicValidators.set(topic, spy);
    }
    for (const a of attackers) {
      await waitFor(
        'the attacker to see both honest peers on the topic',
        () => {
          const subs = new Set(a.node.services.pubsub.getSubscribers(topic).map(String));
          return specs.every((s) => subs.has(s.peerId));
        },
        20_000,
      );
    }

    // Warm-up: two rounds agreed before any attack (so round 0 is in the past).
    await waitFor('2 agreed rounds before the attack', () => agreedRounds().length >= 2, 30_000);
    const setupS = (Date.now() - t0) / 1000;

    // ── helpers ──
    const outcomes: Array<{ case: string; reasons: string[]; logged: string }> = [];
    const marks = (): number[] => honest.map((h) => h.logs.length);

    async function publish(from: Host, bytes: Uint8Array): Promise<void> {
      const r = await from.node.services.pubsub.publish(topic, bytes);
      assert.ok(r.recipients.length >= 2, `published to ${r.recipients.length} peers`);
    }

    /** Waits until every honest node logged (after `mark`) a record matching `pred`; records the outcome. */
    async function expectLogged(
      label: string,
      mark: number[],
      msg: string,
      reason: string,
      pred: (r: Rec) => boolean,
      ms = 25_000,
    ): Promise<void> {
      const match = (r: Rec): boolean => r.msg === msg && r.reason === reason && pred(r);
      await waitFor(
        `${label}: '${msg}' with reason '${reason}' on every honest node`,
        () => honest.every((h, i) => h.logs.slice(mark[i]).some(match)),
        ms,
      );
      const first = honest[0].logs.slice(mark[0]).find(match)!;
      assert.ok((first.level as number) >= 20, `${label}: logged at debug or above`);
      outcomes.push({
        case: label,
        reasons: [reason],
        logged: `${msg} [${String(first.detail ?? first.err ?? '')}]`.slice(0, 160),
      });
    }

    /** An envelope sent by `from` on the control topic must be rejected by the validator with `reason`. */
    async function envelopeCase(label: string, from: Host, bytes: Uint8Array, reason: string): Promise<void> {
      const mark = marks();
      const before = honest.map((h) => h.validated.length);
      await publish(from, bytes);
      // Matched by gossip author, not by relay: the other attacker, a plain gossipsub router,
      // may forward the message to an honest peer before it arrives from its author.
      await expectLogged(label, mark, 'rejected control message', reason, (r) => r.author === from.peerId);
      // The validator's verdict for exactly these bytes: never Accept.
      for (const [i, h] of honest.entries()) {
        const v = h.validated.slice(before[i]).filter((x) => Buffer.from(x.data).equals(Buffer.from(bytes)));
        assert.ok(
          v.length >= 1 && v.every((x) => x.result !== TopicValidatorResult.Accept),
          `${label}: validator verdicts ${v.map((x) => x.result)}`,
        );
      }
    }

    /** Where the honest peers are: current round and the base its updates must be built on. */
    function current(): { round: number; base: string } {
      const s = honest.map((h) => h.node.state).reduce((a, b) => (b.round > a.round ? b : a));
      return { round: s.round, base: (s as { trainBase?: string }).trainBase ?? s.weightsHash };
    }

    /**
     * A case aimed at the honest peers' current round. Rounds can be short (a tiny model; with
     * overlap the inner steps alone may pace them), so the round may end while the payload is fetched:
     * the message is then (correctly) rejected as 'stale-round' instead. Retry with a fresh
     * message until every honest peer rejected one with `reason`.
     */
    async function currentRoundCase(
      label: string,
      from: Host,
      reason: string,
      send: (at: { round: number; base: string }) => Promise<void>,
    ): Promise<void> {
      const mine = (r: Rec): boolean => r.msg === 'rejected round input' && r.from === from.peerId;
      const start = marks();
      for (let attempt = 1; ; attempt++) {
        const mark = marks();
        await send(current());
        await waitFor(
          `${label}: a rejection of attempt ${attempt} on every honest node`,
          () =>
            honest.every((h, i) =>
              h.logs.slice(mark[i]).some((r) => mine(r) && (r.reason === reason || r.reason === 'stale-round')),
            ),
          25_000,
        );
        if (honest.every((h, i) => h.logs.slice(start[i]).some((r) => mine(r) && r.reason === reason))) break;
        if (attempt >= 8) assert.fail(`${label}: still only 'stale-round' after ${attempt} attempts\n${summary()}`);
      }
      await expectLogged(label, start, 'rejected round input', reason, mine);
    }

    /** A payload that decodes to P finite values: would be applied if the message were acceptable. */
    function validPayload(): { hash: string; bytes: Uint8Array } {
      const d = new Float32Array(P);
      for (let i = 0; i < P; i++) d[i] = (Math.random() - 0.5) * 1e-2;
      const bytes = codec.encode(d).bytes;
      assert.equal(codec.decode(bytes, P).length, P);
      return { hash: sha256Hex(bytes), bytes };
    }

    /** Announces an update (signed by `from`, which serves `payload` under `hash`). */
    async function sendUpdate(
      from: Host,
      body: { round: number; baseHash: string; updateHash: string; steps?: number },
    ): Promise<void> {
      attackerHashes.add(body.updateHash);
      await publish(from, sealMessage(from.privateKey, 'round.update', { steps: 4, ...body }, { context: topic }));
    }

    const snapBody = () => ({
      round: 0,
      weightsHash: decoded.manifest.genesisWeightsHash,
      bundle: sha256Hex(randomBytes(16)),
    });
    const sealM = (kind: string, body: unknown, seq?: number): Uint8Array =>
      sealMessage(M.privateKey, kind, body, { context: topic, ...(seq !== undefined ? { seq } : {}) });
    const attackFrom = Math.max(...honest.map((h) => h.node.state.round));

    // ── (1) malformed ──
    await envelopeCase(
      '1a malformed: not an envelope',
      M,
      new TextEncoder().encode('{"kind":"round.update","round":1}'),
      'malformed',
    );
    await envelopeCase(
      '1b malformed: schema-invalid round.update body',
      M,
      sealM('round.update', { round: -1, baseHash: 'zz', updateHash: 'not-a-hash', steps: 0 }),
      'schema',
    );
    await envelopeCase(
      '1c malformed: extra field in a round.commit (strict schema)',
      M,
      sealM('round.commit', {
        commit: { round: 0, attempt: 0, leader: M.peerId, included: [], joins: [], live: [] },
        extra: 1,
      }),
      'schema',
    );
    await envelopeCase('1d malformed: unknown kind', M, sealM('round.launch', { now: true }), 'unknown-kind');

    // ── (2) oversized: a 70 KB envelope (cap 64 KiB) ──
    await envelopeCase(
      '2 oversized envelope',
      M,
      sealM('round.join', { round: 0, pad: 'x'.repeat(70_000) }),
      'oversized',
    );

    // ── (3) unsigned ──
    const valid = sealM('node.snap', snapBody());
    await envelopeCase(
      '3a unsigned envelope (signature length 0)',
      M,
      new Uint8Array([...valid.subarray(0, valid.length - 65), 0]),
      'unsigned',
    );
    {
      // 3b: an unsigned *gossip* message (no from/seqno/signature) carrying an otherwise valid
      // envelope. Gossipsub's StrictSign policy drops it before any Tessera code sees it.
      const ps = M.node.services.pubsub as unknown as {
        publishConfig: unknown;
        msgIdFn: (m: { data: Uint8Array }) => Uint8Array;
      };
      const saved = { publishConfig: ps.publishConfig, msgIdFn: ps.msgIdFn };
      const anon = sealM('node.snap', snapBody());
      const beforeV = honest.map((h) => h.validated.length);
      ps.publishConfig = { type: 1 /* PublishConfigType.Anonymous */ };
      ps.msgIdFn = (m) => createHash('sha256').update(m.data).digest();
      try {
        await publish(M, anon);
      } finally {
        ps.publishConfig = saved.publishConfig;
        ps.msgIdFn = saved.msgIdFn;
      }
      // A signed marker sent after it on the same streams: once it has been validated, the
      // anonymous message has been processed (and must not have reached the validator).
      const marker = sealM('node.snap', snapBody());
      await publish(M, marker);
      await waitFor(
        '3b: the marker after the unsigned gossip message',
        () =>
          honest.every((h, i) =>
            h.validated.slice(beforeV[i]).some((v) => Buffer.from(v.data).equals(Buffer.from(marker))),
          ),
        25_000,
      );
      for (const [i, h] of honest.entries()) {
        assert.ok(
          !h.validated.slice(beforeV[i]).some((v) => Buffer.from(v.data).equals(Buffer.from(anon))),
          '3b: unsigned gossip never reaches the Tessera validator',
        );
      }
      outcomes.push({
        case: '3b unsigned gossip message (no gossipsub signature)',
        reasons: ['(dropped by gossipsub StrictSign)'],
        logged: 'not logged by Tessera: never reaches the validator',
      });
    }

    // ── (4) wrongly signed ──
    {
      const tampered = sealM('node.snap', snapBody());
      const i = Buffer.from(tampered).indexOf(Buffer.from('"bundle":"', 'ascii')) + 10;
      tampered[i] = tampered[i] === 0x61 ? 0x62 : 0x61; // another hex digit: still schema-valid
      await envelopeCase('4a tampered body', M, tampered, 'bad-signature');

      // Signed by X's key, `from` says M (and M publishes it): the signature does not match `from`.
      const byX = Buffer.from(sealMessage(X.privateKey, 'node.snap', snapBody(), { context: topic }));
      const xId = Buffer.from(X.peerId, 'ascii');
      assert.equal(xId.length, Buffer.from(M.peerId, 'ascii').length);
      byX.set(Buffer.from(M.peerId, 'ascii'), byX.indexOf(xId));
      await envelopeCase('4b signed by a different key than `from`', M, new Uint8Array(byX), 'bad-signature');

      await envelopeCase(
        '4c signed for another run (context)',
        M,
        sealMessage(M.privateKey, 'node.snap', snapBody(), { context: controlTopic('some-other-run') }),
        'bad-signature',
      );

      // M's own valid signature, but `from` rewritten to an honest peer: the gossip author differs.
      const forged = Buffer.from(sealM('node.snap', snapBody()));
      forged.set(Buffer.from(specs[0].peerId, 'ascii'), forged.indexOf(Buffer.from(M.peerId, 'ascii')));
      await envelopeCase('4d `from` forged to an honest peer', M, new Uint8Array(forged), 'bad-sender');
    }

    // ── (5) wrong-shape / bad update payloads (M is a member: a good payload would be applied) ──
    // Each case aims at the honest peers' current round. Rounds are short here, so one may end
    // before the payload is fetched (then the update is, correctly, stale and never fetched):
    // retry with fresh bytes at the new round until every honest peer rejected one.
    {
      const bad: Array<[string, () => { bytes: Uint8Array; name?: string }]> = [
        [
          '5a payload decodes to the wrong parameter count',
          () => {
            const wrongN = new Float32Array(P + 1000).fill(1e-3);
            wrongN[0] = Math.random() * 1e-3;
            return { bytes: codec.encode(wrongN).bytes };
          },
        ],
        [
          '5b payload with a non-finite value',
          () => {
            const nan = validPayload().bytes.slice();
            new DataView(nan.buffer, nan.byteOffset).setFloat32(20, Number.NaN, true); // chunk 0's scale
            return { bytes: nan };
          },
        ],
        ['5c payload is garbage', () => ({ bytes: randomBytes(512) })],
        [
          '5d payload larger than the codec allows',
          () => {
            const big = new Uint8Array(codec.encodedSize(P) + 4096);
            big.set(randomBytes(16));
            return { bytes: big };
          },
        ],
        [
          '5e payload does not hash to its name',
          () => ({ bytes: validPayload().bytes, name: sha256Hex(randomBytes(32)) }),
        ],
      ];
      for (const [label, make] of bad) {
        const mark = marks();
        const hashes = new Set<string>();
        for (let attempt = 0; ; attempt++) {
          const { round, base } = current();
          const { bytes, name } = make();
          const hash = name ?? sha256Hex(bytes);
          served.set(hash, bytes);
          hashes.add(hash);
          await sendUpdate(M, { round, baseHash: base, updateHash: hash });
          try {
            await expectLogged(
              label,
              mark,
              'rejected update payload',
              'bad-payload',
              (r) => hashes.has(String(r.update)) && r.from === M.peerId,
              attempt < 3 ? 8_000 : 25_000,
            );
            break;
          } catch (err) {
            if (attempt >= 3) throw err;
          }
        }
      }
    }

    // ── (6) wrong round / wrong base, with payloads that decode fine ──
    {
      const stale = validPayload();
      served.set(stale.hash, stale.bytes);
      let mark = marks();
      await sendUpdate(M, { round: 0, baseHash: decoded.manifest.genesisWeightsHash, updateHash: stale.hash });
      await expectLogged(
        '6a update for a past round (0) from a member',
        mark,
        'rejected round input',
        'stale-round',
        (r) => r.from === M.peerId && String(r.detail).startsWith('update for round 0'),
      );

      const future = validPayload();
      served.set(future.hash, future.bytes);
      mark = marks();
      const far = current().round + 1000;
      await sendUpdate(X, { round: far, baseHash: current().base, updateHash: future.hash });
      await expectLogged(
        '6b update for a far-future round from an outsider',
        mark,
        'rejected round input',
        'future-round',
        (r) => r.from === X.peerId && String(r.detail).includes(`round ${far}`),
      );

      await currentRoundCase('6c current-round update on the wrong base from a member', M, 'wrong-base', async (at) => {
        const p = validPayload();
        served.set(p.hash, p.bytes);
        await sendUpdate(M, { round: at.round, baseHash: sha256Hex(randomBytes(8)), updateHash: p.hash });
      });

      // Everything right (round, base, payload) but the author is not in the roster.
      await currentRoundCase('6d well-formed update from a non-member', X, 'not-member', async (at) => {
        const p = validPayload();
        served.set(p.hash, p.bytes);
        await sendUpdate(X, { round: at.round, baseHash: at.base, updateHash: p.hash });
      });

      // A commit signed by M that names an honest leader: M does not lead that attempt.
      await currentRoundCase('6e commit signed by someone other than its leader', M, 'not-leader', async (at) => {
        await publish(
          M,
          sealM('round.commit', {
            commit: { round: at.round, attempt: 0, leader: specs[0].peerId, included: [], joins: [], live: [] },
          }),
        );
      });
    }

    // ── (7) replays ──
    {
      const seq = nextSeq();
      const once = sealM('node.snap', snapBody(), seq);
      const before = honest.map((h) => h.validated.length);
      await publish(M, once);
      await waitFor(
        '7: the original to be accepted',
        () =>
          honest.every((h, i) =>
            h.validated
              .slice(before[i])
              .some((v) => Buffer.from(v.data).equals(Buffer.from(once)) && v.result === TopicValidatorResult.Accept),
          ),
        25_000,
      );
      await envelopeCase('7a exact replay of an accepted message', M, once, 'replay');
      await envelopeCase(
        '7b fresh signature, sequence number 5 minutes old',
        M,
        sealM('node.snap', snapBody(), seq - 300e6),
        'replay',
      );
      // An honest peer's earlier message, re-published by M: the gossip author is not the signer.
      await waitFor('M to have captured an honest message', () => captured.some((c) => honestIds.has(c.from)), 10_000);
      const theirs = captured.find((c) => honestIds.has(c.from))!;
      await envelopeCase("7c an honest peer's earlier message re-published", M, theirs.data, 'bad-sender');
    }
    const attackS = (Date.now() - t0) / 1000 - setupS;

    // ── the honest peers go on: 2 more agreed rounds after the attack ──
    const lastAttackRound = Math.max(...honest.map((h) => h.node.state.round));
    await waitFor(
      '2 agreed rounds after the attack',
      () => agreedRounds().filter((r) => r > lastAttackRound).length >= 2,
      30_000,
    );
    honest.forEach(sample);

    // Identical weights hashes for every round both completed, and they completed every round.
    const agreed = agreedRounds();
    const completed = new Set(honest.flatMap((h) => h.reports.filter((r) => r.event === 'round').map((r) => r.round)));
    for (const r of completed) {
      if (honest.every((h) => h.reports.some((x) => x.event === 'round' && x.round === r)))
        assert.ok(agreed.includes(r), `round ${r}: weights hashes differ\n${summary()}`);
    }
    assert.ok(
      agreed.some((r) => r > attackFrom),
      'rounds were agreed during/after the attack',
    );

    // Nothing an attacker sent was held, decided or applied.
    for (const [i, h] of honest.entries()) {
      assert.deepEqual(h.breaches, [], `honest ${i} held attacker input`);
      for (const [round, inc] of h.decided) {
        for (const u of inc) {
          assert.ok(honestIds.has(u.peer), `honest ${i} round ${round}: decided set lists ${u.peer}`);
          assert.ok(
            !attackerHashes.has(u.updateHash),
            `honest ${i} round ${round}: decided set lists attacker update ${u.updateHash}`,
          );
        }
      }
      for (const r of h.reports.filter((x) => x.event === 'round')) {
        const inc = h.decided.get(r.round);
        assert.ok(inc, `honest ${i}: decided set of round ${r.round} was observed`);
        assert.equal(r.included, inc.length, `honest ${i} round ${r.round}: applied count = decided set`);
        assert.ok(r.included <= honest.length);
      }
      // Still alive and well: no handler crashed.
      assert.ok(
        !h.logs.some((r) => r.msg === 'control message handler threw' || r.msg === 'control message handler failed'),
        `honest ${i}: a handler threw`,
      );
    }
    // The honest peers still apply each other's updates.
    assert.ok(
      honest.some((h) => h.reports.some((r) => r.event === 'round' && r.included === 2)),
      'both honest updates were applied in some round',
    );

    const seconds = (Date.now() - t0) / 1000;
    for (const o of outcomes) t.diagnostic(`${o.case}: ${o.reasons.join(', ')} — ${o.logged}`);
    t.diagnostic(summary());
    t.diagnostic(
      `setup ${setupS.toFixed(1)} s, attack ${attackS.toFixed(1)} s, total ${seconds.toFixed(1)} s; agreed rounds ${agreed.join(',')}`,
    );
    assert.equal(outcomes.length, 24);
  },
);
