/**
 * Home peers behind NAT routers (issue 16), on the namespace lab of test/support/netlab.ts.
 * Both tests run in CI (`npm test`) and in `npm run net:lab`.
 *
 * 1. The lab's NATs behave as home routers do: a home host reaches the internet from its
 *    router's WAN address (the cone routers keep the source port, the symmetric one does not),
 *    nothing from outside reaches a home host's private address or its router's WAN address,
 *    and one home cannot reach another's LAN.
 * 2. One scenario of real `tessera node` processes, 2 public peers (relays; pub1 is the founder)
 *    and 3 home peers (cone h1, cone h2, symmetric h3), at least 30 rounds in all:
 *    - behind NAT: identical weights hashes on every peer for every round; each home peer's
 *      update in ≥ 90% of the rounds after it first landed (left out: the 2 rounds after the
 *      kill, the 3 after the link went down, and h2's own outage; raw figures printed); per
 *      pair of peers, direct, hole-punched or relayed, and the bytes the relays carried per
 *      round, printed;
 *    - losing the founder: pub1 gets SIGKILL after round KILL_AT; every home peer's update is in
 *      a round decided by the survivors within 2 rounds of the kill;
 *    - staying connected: h2 and h3 were given only pub1 as bootstrap address (h1 both): after
 *      the kill they keep going through pub2, which they know from the roster, identify and the
 *      DHT (peer/boot.ts keepDialing);
 *    - link outage: at round OUTAGE_AT h2's home link goes down for 60 s (`ip link set lan
 *      down` on its router), then up; h2 rejoins by itself, without a restart, and is asserted
 *      to be included again and to report rounds with the swarm's hashes.
 *    Every wait is on round reports; the 60 s outage is the only fixed sleep.
 *
 * Two home peers hole-punch (the cone pair, hole-punch.ts); the symmetric home stays relayed to
 * the other homes. A home peer that falls a round behind replays the decided set rather than
 * resyncing, and a resync downloads the bundle from a directly connected public peer first
 * (docs/ROUNDS.md "Catching up").
 *
 * Needs root and a kernel with network namespaces, veth, bridges and nftables (CI runs as
 * root). Without them the test fails: it never skips. NAT_TEST_LOGS=DIR keeps every peer's
 * stderr (with TESSERA_LOG=debug, each failed fetch and rejected input); NAT_TEST_JSON=FILE
 * writes the measured summary and each peer's compact round trace. Measured runs: the closing
 * note of issue 16.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { buildManifest } from '../src/swarm/manifest-builder.js';
import { defaultCacheDir } from '../src/cli/train.js';
import type { NetLine } from '../src/cli/node.js';
import { createLab, probeConnect, probeServer, type Lab } from './support/netlab.js';
import { dataDirFor, preparePeer, spawnPeer, stopAll, waitFor, type PeerProc } from './support/swarm.js';
import type { RoundReport } from '../src/peer/node.js';

const root = mkdtempSync(join(tmpdir(), 'tessera-nat-'));
let lab: Lab | undefined;
const peers: PeerProc[] = [];
const probes: ChildProcess[] = [];
after(async () => {
  for (const p of probes) p.kill('SIGKILL');
  await stopAll(peers, 3000);
  lab?.destroy();
  rmSync(root, { recursive: true, force: true });
});

test('the lab: masquerade, port-restricted cone vs symmetric mapping, unsolicited inbound dropped', async () => {
  lab = createLab();
  const [pub1, h1, h2, h3] = ['pub1', 'h1', 'h2', 'h3'].map((n) => lab!.host(n));
  probes.push(await probeServer(lab, pub1.ns, pub1.ip, 7000));
  probes.push(await probeServer(lab, h1.ns, h1.ip, 7001));

  // Out through a cone router: seen from the router's WAN address, source port kept.
  const cone = await probeConnect(lab, h1.ns, pub1.ip, 7000, { localPort: 40001 });
  assert.equal(cone, `${h1.router!.wanIp}:40001`, 'cone NAT: masqueraded, port preserved');
  // Out through the symmetric router: WAN address, random port.
  const sym = await probeConnect(lab, h3.ns, pub1.ip, 7000, { localPort: 40001 });
  assert.equal(sym.split(':')[0], h3.router!.wanIp, 'symmetric NAT: masqueraded');
  assert.notEqual(sym.split(':')[1], '40001', 'symmetric NAT: source port randomised');

  // In: the router's WAN address has no forwarded port and drops unsolicited packets (no RST).
  assert.equal(await probeConnect(lab, pub1.ns, h1.router!.wanIp, 7001), 'timeout', 'inbound to the WAN is dropped');
  // In: even a public host that routes the home's private subnet through the router is dropped.
  lab.exec(pub1.ns, ['ip', 'route', 'add', '10.1.0.0/24', 'via', h1.router!.wanIp]);
  try {
    assert.equal(await probeConnect(lab, pub1.ns, h1.ip, 7001), 'timeout', 'inbound to the private address is dropped');
  } finally {
    lab.exec(pub1.ns, ['ip', 'route', 'del', '10.1.0.0/24']);
  }
  // Without that route the private address is simply unreachable from the internet.
  const connected = /^\d+\.\d+\.\d+\.\d+:\d+$/;
  assert.doesNotMatch(await probeConnect(lab, pub1.ns, h1.ip, 7001), connected, 'no route to a home LAN');
  // One home cannot reach another's LAN.
  assert.doesNotMatch(await probeConnect(lab, h2.ns, h1.ip, 7001), connected, 'homes are isolated');
  for (const p of probes.splice(0)) p.kill('SIGKILL');
});

/** The founder is killed once this round is reported; h2's link goes down at OUTAGE_AT (or later, once the survivors are back to full rounds). */
const KILL_AT = 8;
const OUTAGE_AT = 20;
/** Rounds the swarm runs after h2 is included again, so its inclusion is measured over more than a handful. */
const AFTER_REJOIN = 6;
/** Rounds after the link goes down that every peer's inclusion leaves out (see below). */
const OUTAGE_ROUNDS = 3;
const ROUNDS_WANTED = 30;
const OUTAGE_MS = 60_000;

test(
  '2 public + 3 NATed peers (cone, cone, symmetric): 30+ rounds, founder killed, a home link down 60 s',
  { timeout: 420_000 },
  async (t) => {
    assert.ok(lab, 'the lab test ran first');
    const t0 = Date.now();
    const cacheDir = defaultCacheDir();
    const { decoded } = buildManifest({
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
      seed: 7,
      // A little more slack than swarm-node's 800/1500/1000: five processes share the machine.
      trainMs: 1000,
      submitMs: 2000,
      commitMs: 1500,
      quorum: 1,
      minPeers: 1,
      maxMissed: 2,
      relay: { maxBytes: 32 * 1024 * 1024, maxSeconds: 600 },
      cacheDir,
    });
    const run = join(root, 'run.json');
    writeFileSync(run, JSON.stringify(decoded.manifest));
    const names = ['pub1', 'pub2', 'h1', 'h2', 'h3'];
    const hosts = names.map((n) => lab!.host(n));
    const specs = await Promise.all(hosts.map((_, i) => preparePeer(i, dataDirFor(root, i))));
    const PORT = 4001; // every namespace has its own ports
    const addr = (i: number) => `/ip4/${hosts[i].ip}/tcp/${PORT}/p2p/${specs[i].peerId}`;
    // Only the public peers can be dialled. h1 gets both (several bootstrap addresses); h2 and h3
    // only the founder, so after its death they must find pub2 again by themselves.
    const bootOf = (i: number) => (i === 3 || i === 4 ? [addr(0)] : [addr(0), addr(1)]);
    for (const [i, s] of specs.entries())
      peers.push(
        spawnPeer(
          { ...s, addr: addr(i) },
          {
            run,
            bootstrap: bootOf(i),
            genesisPeers: specs.map((x) => x.peerId),
            cacheDir,
            prefix: lab!.execPrefix(hosts[i].ns),
            listen: `/ip4/${hosts[i].ip}/tcp/${PORT}`,
          },
        ),
      );
    const logDir = process.env.NAT_TEST_LOGS;
    if (logDir)
      for (const [i, p] of peers.entries()) {
        const file = join(logDir, `${names[i]}.log`);
        writeFileSync(file, '');
        p.child.stderr!.on('data', (d: string) => appendFileSync(file, d));
      }
    const [pub1, pub2] = peers;
    const home = peers.slice(2);
    const h2 = peers[3];
    const name = new Map(peers.map((p, i) => [p.peerId, names[i]]));
    const rounds = (p: PeerProc) => p.reports.filter((r) => r.event === 'round');
    const last = (p: PeerProc) => rounds(p).at(-1)?.round ?? -1;
    const reach = (p: PeerProc) =>
      p.events.filter((e) => e.event === 'reachability').at(-1) as { status: string; relayed: boolean } | undefined;
    const includes = (r: number, p: PeerProc) =>
      rounds(pub2)
        .find((x) => x.round === r)
        ?.contributors.some((c) => c.peer === p.peerId) === true;
    const fmt = (r: RoundReport) =>
      `${r.event[0]}${r.round}:${r.weightsHash.slice(0, 6)}${r.event === 'round' ? `/${r.contributors.length}` : ''}`;
    const wait = (what: string, cond: () => boolean, ms: number) => waitFor(peers, what, cond, ms, fmt);

    // Every home peer sees itself as private and reserves a slot on a public relay.
    await wait('every home peer to hold a relay reservation', () => home.every((p) => reach(p)?.relayed), 90_000);
    for (const p of home) assert.equal(reach(p)!.status, 'private');

    // ── Behind NAT: the five peers train until round KILL_AT.
    await wait(`round ${KILL_AT} decided`, () => last(pub2) >= KILL_AT, 120_000);
    // Connection kinds per pair, from each peer's latest round line.
    const pairsOf = (group: PeerProc[]): string[] => {
      const nets = group.map((p) => (p.reports.at(-1) as unknown as { net?: NetLine }).net);
      const out: string[] = [];
      for (let i = 0; i < group.length; i++)
        for (let j = i + 1; j < group.length; j++) {
          const kinds = [nets[i]?.connections[group[j].peerId], nets[j]?.connections[group[i].peerId]];
          const bothHome = home.includes(group[i]) && home.includes(group[j]);
          const kind = kinds.includes('direct')
            ? bothHome
              ? 'hole-punched'
              : 'direct'
            : kinds.includes('relayed')
              ? 'relayed'
              : 'none (through the mesh and public holders)';
          out.push(`${name.get(group[i].peerId)}-${name.get(group[j].peerId)}: ${kind}`);
        }
      return out;
    };
    // While all five are up.
    const pairs = pairsOf(peers);
    const survivorsPairs = () => pairsOf(peers.slice(1));

    // ── Losing the founder (also a relay): kill -9 pub1.
    // Counted from the reference survivor's last round: the one under way may go either way.
    const killedAt = last(pub2);
    const tKill = Date.now();
    pub1.child.kill('SIGKILL');
    const allHomeIn = (r: number) => home.every((h) => includes(r, h));
    const fullAfterKill = () => rounds(pub2).find((r) => r.round > killedAt && allHomeIn(r.round))?.round;
    await wait('a round after the kill with every home peer included', () => fullAfterKill() !== undefined, 90_000);
    const recovered = fullAfterKill()!;
    const secondsToRecover = (Date.now() - tKill) / 1000;
    // More rounds with pub2 the only relay, so the outage starts from a settled swarm and the
    // home peers' inclusion behind NAT is measured over OUTAGE_AT rounds or more.
    await wait(`round ${OUTAGE_AT}`, () => last(pub2) >= Math.max(OUTAGE_AT, recovered + 2), 90_000);
    const homeRelays = Object.fromEntries(
      home.map((h) => {
        const r = h.events.filter((e) => e.event === 'reachability').at(-1) as { relayAddrs?: string[] } | undefined;
        const a = r?.relayAddrs?.[0] ?? '';
        return [name.get(h.peerId), names[specs.findIndex((x) => a.includes(`/p2p/${x.peerId}/p2p-circuit`))]];
      }),
    );

    // ── Link outage: h2's home link down for 60 s, then up.
    const router = hosts[3].router!;
    const downAt = last(pub2);
    lab!.exec(router.ns, ['ip', 'link', 'set', router.lanIf, 'down']);
    try {
      await new Promise((r) => setTimeout(r, OUTAGE_MS));
    } finally {
      lab!.exec(router.ns, ['ip', 'link', 'set', router.lanIf, 'up']);
    }
    const upAt = last(pub2);
    const tUp = Date.now();
    const h2Back = () => rounds(pub2).find((r) => r.round > upAt && includes(r.round, h2))?.round;
    await wait('h2 included again after its link came back', () => h2Back() !== undefined, 120_000);
    const rejoinRound = h2Back()!;
    const secondsToRejoin = (Date.now() - tUp) / 1000;
    await wait(
      `h2 reporting round ${rejoinRound}, ${AFTER_REJOIN} rounds more, and ${ROUNDS_WANTED}+ rounds in all`,
      () =>
        rounds(h2).some((r) => r.round >= rejoinRound) &&
        last(pub2) >= Math.max(ROUNDS_WANTED, rejoinRound + AFTER_REJOIN),
      90_000,
    );

    // ── Checks and measurements.
    // Every round any two peers both completed has one hash (no divergence at all).
    const allRounds = new Set(peers.flatMap((p) => rounds(p).map((r) => r.round)));
    for (const r of allRounds) {
      const hs = new Set(peers.map((p) => rounds(p).find((x) => x.round === r)?.weightsHash).filter(Boolean));
      assert.equal(hs.size, 1, `round ${r}: one weights hash on every peer that completed it`);
    }
    // Inclusion, over the rounds pub2 applied from the first one that included the peer; left
    // out: the 2 rounds after the kill (the allowance asserted above), the rounds in which the
    // cut-off h2 was still a member (maxMissed 2, plus the round that drops it: the other three
    // then form every quorum alone, and any late one among them misses a round), and, for h2,
    // its outage until the round it was included again. The raw figure is printed too.
    const lastRound = last(pub2);
    const applied = rounds(pub2);
    const excused = (p: PeerProc, r: number) =>
      (r > killedAt && r <= killedAt + 2) ||
      (r > downAt && r <= downAt + OUTAGE_ROUNDS) ||
      (p === h2 && r > downAt && r < rejoinRound);
    const inclusion: Record<string, string> = {};
    const failures: string[] = [];
    for (const p of peers) {
      const inR = applied.filter((r) => r.contributors.some((c) => c.peer === p.peerId)).map((r) => r.round);
      const first = inR[0];
      // The founder counts until its death.
      const end = p === pub1 ? killedAt : Infinity;
      const span = first === undefined ? [] : applied.filter((r) => r.round >= first && r.round <= end);
      const counted = span.filter((r) => !excused(p, r.round));
      const hit = counted.filter((r) => inR.includes(r.round)).length;
      const rate = counted.length ? hit / counted.length : 0;
      const missed = span.filter((r) => !inR.includes(r.round)).map((r) => r.round);
      inclusion[name.get(p.peerId)!] =
        `${hit}/${counted.length} (${(100 * rate).toFixed(0)}%) counted, ${inR.length}/${span.length} raw, from round ${first}; missed [${missed.join(',')}]`;
      if (home.includes(p) && rate < 0.9)
        failures.push(`${name.get(p.peerId)} included in ${inclusion[name.get(p.peerId)!]}`);
    }
    // Bytes the relays carried in each round: deltas of their cumulative counters (pub1 until its death).
    const carried = (p: PeerProc, r: number) =>
      (rounds(p).find((x) => x.round === r) as unknown as { net?: NetLine } | undefined)?.net?.relayCarriedBytes;
    const relayPerRound: string[] = [];
    for (let r = 1; r <= lastRound; r++) {
      const d = [pub1, pub2].map((p) => (carried(p, r) ?? NaN) - (carried(p, r - 1) ?? NaN)).filter(Number.isFinite);
      relayPerRound.push(d.length ? String(d.reduce((a, b) => a + b, 0)) : '?');
    }
    const summary = {
      rounds: lastRound + 1,
      includedPerRound: applied.map((r) => `${r.round}:${r.contributors.length}`).join(' '),
      inclusion,
      pairs,
      relayBytesEachRound: relayPerRound.join(' '),
      founderKill: {
        killedAtRound: killedAt,
        firstRoundAllHomeIncluded: recovered,
        roundsToRecover: recovered - killedAt,
        secondsToRecover,
        homeRelaysAfter: homeRelays,
      },
      outage: {
        h2DownAtRound: downAt,
        upAtRound: upAt,
        rejoinRound,
        roundsAfterUp: rejoinRound - upAt,
        secondsToRejoin,
      },
      h2RoundsReportedAfterUp: rounds(h2)
        .filter((r) => r.round > upAt)
        .map((r) => r.round)
        .join(' '),
      // Rounds each home peer installed a downloaded state at (a resync), besides replaying.
      resyncs: Object.fromEntries(
        home.map((h) => [name.get(h.peerId), h.reports.filter((r) => r.event === 'synced').map((r) => r.round)]),
      ),
      pairsAtEnd: survivorsPairs(),
      seconds: (Date.now() - t0) / 1000,
    };
    t.diagnostic(JSON.stringify(summary));
    process.stderr.write(`nat: ${JSON.stringify(summary, null, 1)}\n`);
    if (process.env.NAT_TEST_JSON) {
      // Each peer's reports, compactly: s=synced, r=round; round:roster/voters:included:inner steps@seconds.
      const trace = Object.fromEntries(
        peers.map((p) => [
          name.get(p.peerId),
          p.reports
            .map(
              (r) =>
                `${r.event[0]}${r.round}:${r.roster}/${r.voters ?? '-'}:${r.contributors.length}:${r.innerSteps}@${Math.round(r.seconds)}`,
            )
            .join(' '),
        ]),
      );
      writeFileSync(process.env.NAT_TEST_JSON, JSON.stringify({ ...summary, trace }, null, 1));
    }
    assert.ok(lastRound + 1 >= ROUNDS_WANTED, `${lastRound + 1} rounds`);
    assert.ok(
      recovered - killedAt <= 2,
      `every home peer included within 2 rounds of the founder's death: round ${recovered}, killed after ${killedAt}`,
    );
    assert.ok(
      rounds(h2).some((r) => r.round >= rejoinRound),
      'h2 reports rounds again after the outage',
    );
    assert.deepEqual(failures, []);
  },
);
