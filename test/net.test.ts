/**
 * The libp2p network driver over real sockets on 127.0.0.1: persistent identity, connect
 * and ping, signed gossip (and every way an untrusted peer can get a message rejected),
 * bulk transfer on direct streams, byte accounting, and a fuzz of openMessage (anything
 * but an EnvelopeError is a bug).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { z } from 'zod';
import { generateKeyPair } from '@libp2p/crypto/keys';
import type { Ed25519PrivateKey } from '@libp2p/interface';
import { CorruptFileError, InvalidInputError } from '../src/util/errors.js';
import {
  AbortedError,
  BULK_PROTOCOL,
  EnvelopeError,
  HashMismatchError,
  IDENTITY_FILE,
  NetMetrics,
  NotFoundError,
  ProtocolError,
  ReplayGuard,
  TooLargeError,
  WIRE,
  canonicalJson,
  controlTopic,
  createHost,
  fetchBulk,
  fetchBulkWithStats,
  joinControlChannel,
  loadOrCreateIdentity,
  openMessage,
  sealMessage,
  serveBulk,
  type ControlChannel,
  type EnvelopeRejectReason,
  type Host,
  type OpenedMessage,
} from '../src/net/index.js';
import { sha256HexNode as sha256Hex } from '../src/util/hash-node.js';

const tmpDirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'tessera-net-'));
  tmpDirs.push(d);
  return d;
}
after(async () => {
  for (const d of tmpDirs) await rm(d, { recursive: true, force: true });
});

/** A pino logger that keeps its records in memory. */
function memoryLogger(): { logger: Logger; records: Array<Record<string, unknown>> } {
  const records: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void records.push(JSON.parse(s)) });
  return { logger, records };
}

async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const schemas = {
  hello: z.object({ n: z.number().int(), note: z.string().max(100) }),
  vote: z.object({ round: z.number().int().nonnegative(), accept: z.boolean() }),
};

// ---------------------------------------------------------------------------------------

describe('identity', () => {
  test('generated on first start with mode 0600, reloaded unchanged after', async () => {
    const dir = await tempDir();
    const a = await loadOrCreateIdentity(dir);
    assert.equal(a.created, true);
    assert.equal(a.privateKey.type, 'Ed25519');
    assert.equal((await stat(a.path)).mode & 0o777, 0o600);
    const b = await loadOrCreateIdentity(dir);
    assert.equal(b.created, false);
    assert.equal(b.peerId.toString(), a.peerId.toString());
    assert.ok(b.privateKey.equals(a.privateKey));
    // A loosened mode is tightened again on load.
    await chmod(a.path, 0o644);
    await loadOrCreateIdentity(dir);
    assert.equal((await stat(a.path)).mode & 0o777, 0o600);
  });

  test('two concurrent first starts agree on one key', async () => {
    const dir = await tempDir();
    const [a, b] = await Promise.all([loadOrCreateIdentity(dir), loadOrCreateIdentity(dir)]);
    assert.equal(a.peerId.toString(), b.peerId.toString());
  });

  test('a corrupt identity file is a CorruptFileError and is never replaced', async () => {
    const otherId = (await generateKeyPair('Ed25519')).publicKey.toString();
    const cases: Array<[string, (text: string) => string]> = [
      ['truncated', (t) => t.slice(0, t.length / 2)],
      ['garbage', () => 'not json at all'],
      ['wrong peer id', (t) => JSON.stringify({ ...JSON.parse(t), peerId: otherId })],
      ['wrong key type', (t) => JSON.stringify({ ...JSON.parse(t), type: 'RSA' })],
      ['bad key bytes', (t) => t.replace(/"privateKey": "[^"]+"/, '"privateKey": "AAAA"')],
      ['empty', () => ''],
    ];
    for (const [name, mutate] of cases) {
      const dir = await tempDir();
      const { path } = await loadOrCreateIdentity(dir);
      const broken = mutate(await readFile(path, 'utf8'));
      await writeFile(path, broken);
      await assert.rejects(loadOrCreateIdentity(dir), CorruptFileError, name);
      assert.equal(await readFile(path, 'utf8'), broken, `${name}: file left as it was`);
    }
  });
});

// ---------------------------------------------------------------------------------------

describe('envelope', () => {
  let key: Ed25519PrivateKey;
  let other: Ed25519PrivateKey;
  before(async () => {
    key = await generateKeyPair('Ed25519');
    other = await generateKeyPair('Ed25519');
  });
  const from = (): string => key.publicKey.toString();

  function rejects(
    bytes: Uint8Array,
    reason: EnvelopeRejectReason,
    opts: Partial<Parameters<typeof openMessage>[1]> = {},
  ): void {
    assert.throws(
      () => openMessage(bytes, { schemas, ...opts }),
      (err: unknown) => {
        assert.ok(err instanceof EnvelopeError, `expected EnvelopeError, got ${String(err)}`);
        assert.equal(err.reason, reason, err.message);
        return true;
      },
    );
  }

  test('seal → open round trip, typed by kind', () => {
    const bytes = sealMessage(key, 'hello', { note: 'hi', n: 3 }, { seq: 42 });
    const m = openMessage(bytes, { schemas, expectFrom: from() });
    assert.equal(m.kind, 'hello');
    assert.equal(m.from, from());
    assert.equal(m.seq, 42);
    assert.equal(m.bytes, bytes.byteLength);
    if (m.kind === 'hello') assert.deepEqual(m.body, { n: 3, note: 'hi' });
    // Canonical: same body, keys in another order, same bytes.
    assert.deepEqual(sealMessage(key, 'hello', { n: 3, note: 'hi' }, { seq: 42 }), bytes);
    assert.equal(canonicalJson({ b: [1, { d: 1, c: 2 }], a: null }), '{"a":null,"b":[1,{"c":2,"d":1}]}');
    assert.throws(() => sealMessage(key, 'hello', { x: 1n }), InvalidInputError);
    assert.throws(() => sealMessage(key, 'Bad Kind', {}), InvalidInputError);
  });

  test('each kind of bad message is rejected with its reason', () => {
    const good = sealMessage(key, 'hello', { n: 1, note: 'x' });
    rejects(new Uint8Array(70_000), 'oversized');
    rejects(good, 'oversized', { maxBytes: good.byteLength - 1 });
    rejects(new TextEncoder().encode('{"kind":"hello"}'), 'malformed');
    rejects(good.subarray(0, good.byteLength - 1), 'malformed');
    rejects(new Uint8Array([...good, 0]), 'malformed');
    const unsigned = new Uint8Array([...good.subarray(0, good.byteLength - 65), 0]);
    rejects(unsigned, 'unsigned');
    const badSig = good.slice();
    badSig[badSig.length - 5] ^= 1;
    rejects(badSig, 'bad-signature');
    const tampered = good.slice();
    tampered[tampered.length - 70] ^= 1; // inside the body
    rejects(tampered, 'bad-signature');
    rejects(good, 'bad-signature', { context: 'tessera/other-run/control' });
    rejects(good, 'bad-sender', { expectFrom: other.publicKey.toString() });
    rejects(sealMessage(key, 'nope', {}), 'unknown-kind');
    rejects(sealMessage(key, 'hello', { n: 'one', note: 'x' }), 'schema');
    rejects(sealMessage(key, 'vote', { round: -1, accept: true }), 'schema');
    // A frame whose `from` is some other valid peer id: the signature cannot match.
    const forged = Buffer.from(sealMessage(other, 'hello', { n: 1, note: 'x' }));
    const mine = Buffer.from(from(), 'ascii');
    const theirs = Buffer.from(other.publicKey.toString(), 'ascii');
    forged.set(mine, forged.indexOf(theirs));
    rejects(forged, 'bad-signature');
  });

  test('replay guard: duplicates and stale sequence numbers are refused', () => {
    const guard = new ReplayGuard({ window: 100, maxPerSender: 8 });
    const a = sealMessage(key, 'vote', { round: 1, accept: true }, { seq: 1000 });
    openMessage(a, { schemas, replay: guard });
    assert.throws(
      () => openMessage(a, { schemas, replay: guard }),
      (e: unknown) => e instanceof EnvelopeError && e.reason === 'replay',
    );
    assert.equal(guard.check(from(), 999), 'fresh'); // within the window, unseen
    guard.accept(from(), 1200);
    assert.equal(guard.check(from(), 1050), 'stale'); // below high - window
    assert.equal(guard.check(from(), 1200), 'duplicate');
    for (let s = 1201; s < 1220; s++) guard.accept(from(), s); // overflow maxPerSender
    assert.notEqual(guard.check(from(), 1201), 'fresh');
    assert.equal(guard.check(other.publicKey.toString(), 1), 'fresh');
  });

  test('fuzz: thousands of random and mutated frames only ever raise EnvelopeError', () => {
    let seed = 0x9e3779b9;
    const rnd = (n: number): number => {
      seed = (seed * 1664525 + 1013904223) >>> 0;
      return seed % n;
    };
    const bodies: unknown[] = [
      { n: 1, note: 'x' },
      { n: 1.5, note: 'x' },
      { round: 3, accept: false },
      [],
      null,
      'str',
      7,
      { n: 1, note: 'y'.repeat(200) },
      { nested: { deep: [1, 2, { x: null }] } },
      JSON.parse('{"__proto__":{"n":1},"n":2,"note":"p"}'),
    ];
    const kinds = ['hello', 'vote', 'other'];
    const seeds = kinds.flatMap((k) => bodies.map((b) => sealMessage(key, k, b)));
    const reasons = new Map<string, number>();
    let accepted = 0;
    const N = 6000;
    for (let i = 0; i < N; i++) {
      let f: Uint8Array;
      const base = seeds[rnd(seeds.length)];
      switch (rnd(7)) {
        case 0:
          f = randomBytes(rnd(300));
          break;
        case 1: {
          f = base.slice();
          const flips = 1 + rnd(4);
          for (let j = 0; j < flips; j++) f[rnd(f.length)] ^= 1 << rnd(8);
          break;
        }
        case 2:
          f = base.subarray(0, rnd(base.length));
          break;
        case 3: {
          f = base.slice();
          f[rnd(f.length)] = rnd(256);
          break;
        }
        case 4: {
          const at = rnd(base.length);
          f = new Uint8Array([...base.subarray(0, at), ...randomBytes(1 + rnd(8)), ...base.subarray(at)]);
          break;
        }
        case 5: {
          f = base.slice();
          f.set(randomBytes(Math.min(8, f.length - 4)), 4 + rnd(Math.max(1, f.length - 12)));
          break;
        } // length fields
        default:
          f = new Uint8Array([0x54, 0x53, 0x52, 1, ...randomBytes(rnd(200))]);
          break;
      }
      try {
        openMessage(f, { schemas, maxBytes: 4096 });
        accepted++;
        assert.ok(
          seeds.some((s) => Buffer.from(s).equals(Buffer.from(f))),
          'only an unmodified frame may open',
        );
      } catch (err) {
        assert.ok(err instanceof EnvelopeError, `non-typed error ${String(err)}`);
        reasons.set(err.reason, (reasons.get(err.reason) ?? 0) + 1);
      }
    }
    assert.ok(
      (reasons.get('malformed') ?? 0) > 100 && (reasons.get('bad-signature') ?? 0) > 100,
      JSON.stringify([...reasons]),
    );
    assert.ok(accepted < N / 10);
  });
});

// ---------------------------------------------------------------------------------------

describe('two hosts on 127.0.0.1', () => {
  let a: Host;
  let b: Host;
  let dirA: string;
  const logB = memoryLogger();
  const metricsA = new NetMetrics();

  before(async () => {
    dirA = await tempDir();
    a = await createHost({ dataDir: dirA, metrics: metricsA, logger: memoryLogger().logger });
    b = await createHost({ dataDir: await tempDir(), logger: logB.logger });
  });
  after(async () => {
    await Promise.allSettled([a?.stop(), b?.stop()]);
  });

  test('dial by multiaddr and ping', async () => {
    assert.match(a.multiaddrs()[0], /^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\/12D3KooW/);
    const remote = await b.dial(a.multiaddrs()[0], { signal: AbortSignal.timeout(5000) });
    assert.equal(remote, a.peerId);
    const rtt = await b.ping(a.peerId, { signal: AbortSignal.timeout(5000) });
    assert.ok(rtt >= 0 && rtt < 2000, `rtt ${rtt}`);
    await waitFor('A to see B', () => a.connectedPeers().includes(b.peerId));
    // Every connection byte was counted, and ping's own bytes under its protocol id.
    assert.ok(metricsA.snapshot().wire.received > 0);
    // libp2p's connection monitor may ping on its own too, so wait for whole echoes: every ping
    // A received (32 bytes each) it sent back, counted under the ping protocol.
    const ping = () => metricsA.protocol('/ipfs/ping/1.0.0');
    await waitFor('ping bytes on A', () => ping().received >= 32 && ping().sent === ping().received);
    assert.equal(ping().received % 32, 0);
  });

  test('ping fails against a stopped host', async () => {
    // Its own pair of hosts: later tests need A and B to talk only to each other.
    const x = await createHost({ dataDir: await tempDir(), logger: memoryLogger().logger });
    const y = await createHost({ dataDir: await tempDir(), logger: memoryLogger().logger });
    try {
      const addr = y.multiaddrs()[0];
      assert.ok((await x.ping(addr, { signal: AbortSignal.timeout(5000) })) < 2000, 'it answers while running');
      await y.stop();
      await assert.rejects(x.ping(addr, { signal: AbortSignal.timeout(5000) }));
    } finally {
      await Promise.allSettled([x.stop(), y.stop()]);
    }
  });

  test('the identity survives a host restart', async () => {
    const dir = await tempDir();
    const h1 = await createHost({ dataDir: dir, logger: memoryLogger().logger });
    const id = h1.peerId;
    await h1.stop();
    const h2 = await createHost({ dataDir: dir, logger: memoryLogger().logger });
    try {
      assert.equal(h2.peerId, id);
      assert.equal((await stat(join(dir, IDENTITY_FILE))).mode & 0o777, 0o600);
    } finally {
      await h2.stop();
    }
  });

  describe('gossip control channel', () => {
    const runId = 'run-test-1';
    const topic = controlTopic(runId);
    const gotB: Array<OpenedMessage<typeof schemas>> = [];
    let chA: ControlChannel<typeof schemas>;
    let chB: ControlChannel<typeof schemas>;

    before(async () => {
      chA = joinControlChannel({ host: a, runId, schemas, onMessage: () => undefined });
      chB = joinControlChannel({ host: b, runId, schemas, onMessage: (m) => void gotB.push(m) });
      if (!a.connectedPeers().includes(b.peerId)) await b.dial(a.multiaddrs()[0]);
      const signal = AbortSignal.timeout(5000);
      await Promise.all([chA.waitForSubscribers(1, { signal }), chB.waitForSubscribers(1, { signal })]);
    });
    after(() => {
      chA?.close();
      chB?.close();
    });

    test('a signed message is delivered, with its verified author', async () => {
      const r = await chA.publish('hello', { n: 1, note: 'first' });
      assert.equal(r.recipients, 1);
      await waitFor('delivery', () => gotB.length === 1);
      assert.equal(gotB[0].from, a.peerId);
      assert.deepEqual(gotB[0].body, { n: 1, note: 'first' });
    });

    test('bad messages are each rejected with a logged reason; the node keeps working', async () => {
      const pubsub = a.node.services.pubsub;
      const valid = sealMessage(a.privateKey, 'hello', { n: 2, note: 'x' }, { context: topic });
      const badSig = valid.slice();
      badSig[badSig.length - 1] ^= 0x80;
      const someoneElse = await generateKeyPair('Ed25519');
      const cases: Array<[EnvelopeRejectReason, Uint8Array]> = [
        ['malformed', new TextEncoder().encode('definitely not an envelope')],
        ['oversized', sealMessage(a.privateKey, 'hello', { n: 3, note: 'x'.repeat(80_000) }, { context: topic })],
        ['unsigned', new Uint8Array([...valid.subarray(0, valid.length - 65), 0])],
        ['bad-signature', badSig],
        [
          'bad-signature',
          sealMessage(a.privateKey, 'hello', { n: 4, note: 'x' }, { context: 'tessera/other-run/control' }),
        ],
        ['bad-sender', sealMessage(someoneElse, 'hello', { n: 5, note: 'x' }, { context: topic })],
        ['schema', sealMessage(a.privateKey, 'hello', { n: 'six', note: 'x' }, { context: topic })],
        ['unknown-kind', sealMessage(a.privateKey, 'launch-missiles', { now: true }, { context: topic })],
      ];
      const before = gotB.length;
      for (const [, bytes] of cases) await pubsub.publish(topic, bytes);
      const rejected = (): Array<Record<string, unknown>> =>
        logB.records.filter((r) => r.msg === 'rejected control message');
      await waitFor('all rejections logged', () => rejected().length >= cases.length);
      assert.deepEqual(
        rejected()
          .map((r) => r.reason)
          .sort(),
        cases.map(([reason]) => reason).sort(),
      );
      for (const r of rejected()) {
        assert.equal(r.level, 40); // warn
        assert.equal(typeof r.err, 'string');
        assert.equal(r.propagationSource, a.peerId);
      }
      assert.equal(gotB.length, before, 'nothing rejected was delivered');
      assert.equal(b.metrics.counter('control.rejected.bad-signature'), 2);

      // Same node, same peer, afterwards: a valid message still gets through...
      await chA.publish('vote', { round: 7, accept: true });
      await waitFor('delivery after rejections', () => gotB.length === before + 1);
      assert.equal(gotB.at(-1)!.kind, 'vote');
      // ...and a replay of an accepted envelope does not.
      await pubsub.publish(topic, valid);
      await waitFor('first copy', () => gotB.length === before + 2);
      await pubsub.publish(topic, valid);
      await waitFor('replay logged', () => rejected().some((r) => r.reason === 'replay'));
      assert.equal(gotB.length, before + 2);
    });
  });

  describe('bulk transfer', () => {
    const store = new Map<string, Uint8Array>();
    const big = randomBytes(20 * 1024 * 1024);
    const bigHash = sha256Hex(big);
    const liar = sha256Hex(new TextEncoder().encode('what the requester wants'));

    before(async () => {
      store.set(bigHash, big);
      store.set(liar, new TextEncoder().encode('something else entirely'));
      await serveBulk(a, (hash) => store.get(hash));
    });

    test('~20 MB between two hosts: hash verified, MB/s reported, bytes counted', async (t) => {
      const beforeA = a.metrics.snapshot();
      const beforeB = b.metrics.snapshot();
      const { data, stats } = await fetchBulkWithStats(b, a.peerId, bigHash, {
        maxBytes: 32 * 1024 * 1024,
        signal: AbortSignal.timeout(20_000),
      });
      assert.equal(data.byteLength, big.byteLength);
      assert.ok(Buffer.from(data.buffer, data.byteOffset, data.byteLength).equals(big));
      t.diagnostic(
        `bulk: ${(stats.bytes / 1048576).toFixed(1)} MiB in ${stats.ms.toFixed(0)} ms = ${stats.mbPerSec.toFixed(1)} MB/s`,
      );
      // Exact accounting: request 42 bytes up, 9-byte header + payload down, on the bulk
      // protocol, identical on both ends.
      await waitFor(
        'server side counted',
        () => NetMetrics.diff(a.metrics.snapshot(), beforeA).protocols[BULK_PROTOCOL]?.sent === big.byteLength + 9,
      );
      const dA = NetMetrics.diff(a.metrics.snapshot(), beforeA);
      const dB = NetMetrics.diff(b.metrics.snapshot(), beforeB);
      assert.deepEqual(dA.protocols[BULK_PROTOCOL], { sent: big.byteLength + 9, received: 42 });
      assert.deepEqual(dB.protocols[BULK_PROTOCOL], { sent: 42, received: big.byteLength + 9 });
      assert.ok(dB.wire.received > big.byteLength, 'wire bytes include encryption and framing');
      assert.ok(dB.wire.received < big.byteLength * 1.01, `wire overhead ${dB.wire.received / big.byteLength}`);
      assert.equal(dA.counters['bulk.served'], 1);
      assert.equal(dB.counters['bulk.fetchedBytes'], big.byteLength);
      t.diagnostic(
        `wire bytes received by the requester: ${dB.wire.received} (${((dB.wire.received / big.byteLength - 1) * 100).toFixed(2)}% overhead)`,
      );
    });

    test('byte counts agree exactly on both ends of the connection', async () => {
      // A and B only talk to each other here: what one sent, the other received, per
      // protocol and on the wire (gossipsub heartbeats keep flowing, so wait for a quiet moment).
      const agree = (): boolean => {
        const sa = a.metrics.snapshot();
        const sb = b.metrics.snapshot();
        if (sa.wire.sent !== sb.wire.received || sa.wire.received !== sb.wire.sent) return false;
        const protos = new Set([...Object.keys(sa.protocols), ...Object.keys(sb.protocols)]);
        for (const p of protos) {
          if (p.startsWith('control:')) continue;
          const pa = sa.protocols[p] ?? { sent: 0, received: 0 };
          const pb = sb.protocols[p] ?? { sent: 0, received: 0 };
          if (pa.sent !== pb.received || pa.received !== pb.sent) return false;
        }
        return true;
      };
      await waitFor('both ends to agree', agree, 5000);
      const sa = a.metrics.snapshot();
      assert.ok(
        Object.keys(sa.protocols).some((p) => p.startsWith('/meshsub/')),
        JSON.stringify(Object.keys(sa.protocols)),
      );
      assert.ok(sa.protocols['/ipfs/id/1.0.0'].received > 0);
    });

    test('a missing hash fails with NotFound, promptly', async () => {
      const t0 = Date.now();
      await assert.rejects(
        fetchBulk(b, a.peerId, sha256Hex(randomBytes(8)), { maxBytes: 1024, signal: AbortSignal.timeout(3000) }),
        NotFoundError,
      );
      assert.ok(Date.now() - t0 < 3000);
    });

    test('wrong bytes for a hash, too-large objects and timeouts are typed errors', async () => {
      await assert.rejects(fetchBulk(b, a.peerId, liar, { maxBytes: 1024 }), HashMismatchError);
      await assert.rejects(fetchBulk(b, a.peerId, bigHash, { maxBytes: 1024 * 1024 }), TooLargeError);
      await assert.rejects(fetchBulk(b, a.peerId, 'ABC', { maxBytes: 1 }), InvalidInputError);
      // A server that never answers: the requester's signal ends it, no hang.
      const slowLog = memoryLogger();
      const slow = await createHost({ dataDir: await tempDir(), logger: slowLog.logger });
      try {
        await serveBulk(slow, () => new Promise<undefined>(() => undefined));
        const t0 = Date.now();
        await assert.rejects(
          fetchBulk(b, slow.multiaddrs()[0], bigHash, { maxBytes: 1024, signal: AbortSignal.timeout(500) }),
          AbortedError,
        );
        assert.ok(Date.now() - t0 < 2500, `took ${Date.now() - t0} ms`);
        // The server side gives up too once the requester is gone (no pinned handler).
        await waitFor('server to drop the request', () => slowLog.records.some((r) => r.msg === 'bulk request failed'));
      } finally {
        await slow.stop();
      }
      // And the server is still fine afterwards.
      const again = await fetchBulk(b, a.peerId, bigHash, { maxBytes: 32 << 20 });
      assert.equal(sha256Hex(again), bigHash);
      assert.ok(b.metrics.snapshot().protocols[BULK_PROTOCOL].received > 0);
      assert.ok(b.metrics.snapshot().wire.sent > 0 && WIRE === 'wire');
    });
  });

  test('a lying bulk server: oversized announcement, truncated or overlong bodies are typed errors', async () => {
    const evil = await createHost({ dataDir: await tempDir(), logger: memoryLogger().logger });
    try {
      const hash = sha256Hex(new Uint8Array(10));
      let mode = 0;
      await evil.node.handle(BULK_PROTOCOL, async (stream) => {
        const header = (size: number): Uint8Array => {
          const h = new Uint8Array(9);
          new DataView(h.buffer).setBigUint64(1, BigInt(size));
          return h;
        };
        const m = mode++;
        if (m === 0) stream.send(header(2 ** 40)); // ignores the requester's cap
        if (m === 1) stream.send(new Uint8Array([...header(1000), ...new Uint8Array(10)])); // then stops
        if (m === 2) stream.send(new Uint8Array([...header(10), ...new Uint8Array(20)])); // too much
        if (m === 3) stream.send(new Uint8Array([9, 0, 0, 0, 0, 0, 0, 0, 0])); // unknown status
        if (m === 4) stream.send(new Uint8Array([0, 0, 0])); // header cut short
        await stream.close();
      });
      const opts = { maxBytes: 4096, signal: AbortSignal.timeout(5000) };
      const target = evil.multiaddrs()[0];
      await assert.rejects(fetchBulk(b, target, hash, opts), TooLargeError);
      await assert.rejects(
        fetchBulk(b, target, hash, opts),
        (e: unknown) => e instanceof ProtocolError && /ended after 10 of 1000/.test(e.message),
      );
      await assert.rejects(
        fetchBulk(b, target, hash, opts),
        (e: unknown) => e instanceof ProtocolError && /more than the announced/.test(e.message),
      );
      await assert.rejects(
        fetchBulk(b, target, hash, opts),
        (e: unknown) => e instanceof ProtocolError && /unknown bulk status 9/.test(e.message),
      );
      await assert.rejects(
        fetchBulk(b, target, hash, opts),
        (e: unknown) => e instanceof ProtocolError && /inside the response header/.test(e.message),
      );
    } finally {
      await evil.stop();
    }
  });

  test('a bootstrap list connects a new host, and the DHT finds a third peer', async () => {
    if (!a.connectedPeers().includes(b.peerId)) await b.dial(a.multiaddrs()[0]);
    const c = await createHost({
      dataDir: await tempDir(),
      bootstrap: [a.multiaddrs()[0]],
      logger: memoryLogger().logger,
    });
    try {
      await waitFor('C to reach A through its bootstrap list', () => c.connectedPeers().includes(a.peerId), 8000);
      assert.ok(!c.connectedPeers().includes(b.peerId));
      const info = await c.node.peerRouting.findPeer(b.node.peerId, { signal: AbortSignal.timeout(8000) });
      assert.equal(info.id.toString(), b.peerId);
      assert.ok(info.multiaddrs.some((ma) => ma.toString().startsWith('/ip4/127.0.0.1/tcp/')));
      // C reached B only through the address the DHT returned: the ping dials it.
      const rtt = await c.ping(b.peerId, { signal: AbortSignal.timeout(5000) });
      assert.ok(Number.isFinite(rtt) && rtt >= 0 && rtt < 5000, `rtt ${rtt}`);
      assert.ok(c.connectedPeers().includes(b.peerId), 'the ping connected C to B');
    } finally {
      await c.stop();
    }
  });
});
