/** `tessera node`: run one swarm peer for a run manifest. */
import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { say } from './output.js';
import { defaultCacheDir } from './train.js';
import { decodeManifest, networkParams } from '../swarm/manifest.js';
import type { Host, Reachability } from '../net/host.js';
import { SwarmNode, type RoundReport } from '../peer/node.js';
import { int, collect, oneOf } from './args.js';
import { DeviceRefusedError, InvalidInputError } from '../util/errors.js';
import { gpuAuditRefusal } from '../train/device-model.js';
import { BEHAVIOURS, parseBehaviour, type Behaviour } from '../verify/adversaries.js';
import { startDashboard, type Dashboard } from '../dashboard/server.js';
import { readKey } from '../ledger/keys.js';
import { onStrayRejection } from '../util/stray-rejection.js';
import type { Address } from 'viem';

export function formatReport(r: RoundReport, net?: NetLine): string {
  const kb = (n: number) => `${(n / 1024).toFixed(1)}K`;
  const reach = net ? `  reach ${reachWord(net.reachability)}` : '';
  return `${r.event === 'synced' ? 'synced to' : 'round'} ${r.round}  val ${r.valLoss.toFixed(4)}  peers ${r.peers} (roster ${r.roster}${r.voters !== undefined && r.voters !== r.roster ? `, voters ${r.voters}` : ''}, applied ${r.included})  sent ${kb(r.bytesSent)} recv ${kb(r.bytesReceived)}  compute ${(100 * r.computeFraction).toFixed(0)}%${r.stretch && (r.stretch[0] !== 1000 || r.stretch[1] !== 1000) ? `  deadlines ×${(r.stretch[0] / 1000).toFixed(2)}/×${(r.stretch[1] / 1000).toFixed(2)}` : ''}  ${r.seconds.toFixed(1)}s  weights ${r.weightsHash.slice(0, 12)}${reach}`;
}

/** public | private | unknown, "+relay" while a relay reservation is held. */
export function reachWord(r: Pick<Reachability, 'status' | 'relayed'>): string {
  return `${r.status}${r.relayed ? '+relay' : ''}`;
}

/** The network part of a round line (the JSON line's `net`): reachability, connections, relay bytes. */
export interface NetLine {
  reachability: Pick<Reachability, 'status' | 'relayed' | 'relayServer'>;
  /** Open connections: peer id → 'direct' or 'relayed' (direct wins when both exist). */
  connections: Record<string, 'direct' | 'relayed'>;
  /** Bytes this peer's relay server carried so far (0 when it is not a relay). */
  relayCarriedBytes: number;
  relayReservations: number;
  /** Bulk bytes this peer fetched and served over relayed connections so far. */
  bulkRelayedBytes: { fetched: number; served: number };
}

export function netLine(host: Host): NetLine {
  const r = host.reachability();
  const connections: Record<string, 'direct' | 'relayed'> = {};
  for (const c of host.connections())
    if (connections[c.peer] !== 'direct') connections[c.peer] = c.relayed ? 'relayed' : 'direct';
  const relay = host.relayStats();
  return {
    reachability: { status: r.status, relayed: r.relayed, relayServer: r.relayServer },
    connections,
    relayCarriedBytes: relay.carriedBytes,
    relayReservations: relay.reservations,
    bulkRelayedBytes: {
      fetched: host.metrics.counter('bulk.fetchedRelayedBytes'),
      served: host.metrics.counter('bulk.servedRelayedBytes'),
    },
  };
}

export function register(program: Command): void {
  program
    .command('node')
    .description('run a swarm peer: train on the assigned shard, agree on updates with the other peers, apply them')
    .requiredOption('--run <file>', 'run manifest (from `tessera run create`)')
    .requiredOption('--data-dir <dir>', 'identity key and acceptor record')
    .option(
      '--listen <ma...>',
      'listen multiaddrs (repeat or comma-separate; add /ip4/0.0.0.0/tcp/4002/ws for WebSockets)',
      collect,
    )
    .option(
      '--announce <ma...>',
      'advertise these multiaddrs instead of the listen addresses (a public IP, a port forwarded by hand, a DNS name)',
      collect,
    )
    .option(
      '--relay',
      'serve as a circuit relay for peers behind NATs, within the manifest limits (default: when listening on a public address)',
    )
    .option('--no-relay', 'never serve as a relay')
    .option(
      '--reserve',
      'reserve a slot on a relay and advertise /p2p-circuit addresses (default: when every listen address is private)',
    )
    .option('--no-reserve', 'never reserve a relay slot')
    .option('--upnp', 'ask the home router for a port mapping by UPnP', false)
    .option(
      '--punch-port <port>',
      'behind a NAT, every outbound TCP dial leaves from this local port, so peers behind other NATs can hole-punch to it (default: a free port)',
      int(1, 65535),
    )
    .option('--no-hole-punch', 'never hole-punch (DCUtR); stay on relays behind a NAT')
    .option('--bootstrap <ma...>', 'peers to connect to (multiaddr with /p2p/<id>; repeat or comma-separate)', collect)
    .option(
      '--mdns',
      'discover peers on the LAN with mDNS (with --listen /ip4/0.0.0.0/tcp/0, so LAN addresses are announced)',
      false,
    )
    .option('--genesis-peers <ids>', 'start at round 0 with this roster (comma-separated peer ids)', (v: string) =>
      v.split(',').filter(Boolean),
    )
    .option('--rounds <n>', 'exit after completing this many rounds (0 = run until stopped)', int(0), 0)
    .option(
      '--base <dir>',
      "a fine-tuning run's base model as a local checkpoint directory (checked against the manifest's base hash; default: fetched from peers by the manifest's base CID)",
    )
    .option('--cache-dir <dir>', 'tokenizer and token cache', defaultCacheDir())
    .option('--json', 'one JSON object per round on stdout', false)
    .option(
      '--device <kind>',
      'where the inner steps run: cpu | webgpu | auto (webgpu when an adapter is found, else cpu)',
      oneOf('cpu', 'webgpu', 'auto'),
      'cpu',
    )
    .option(
      '--validator',
      'also score every applied update (loss on assigned vs random batches, copies, norms) and publish signed score reports',
      false,
    )
    .option(
      '--audit-on <where>',
      "validator: re-execute a GPU trainer's audited round on: device (this node's --device when it is of the trainer's class, bit for bit; else the CPU) | cpu (always the CPU, within the manifest's tolerance)",
      oneOf('device', 'cpu'),
      'device',
    )
    .option(
      '--trust-validators <ids>',
      'peer ids of validators whose flags this peer acts on: flagged members are left out of the update sets it proposes',
      (v: string) => v.split(',').filter(Boolean),
    )
    .option('--behave <kind>', `misbehave, for verification drills: ${BEHAVIOURS.join(' | ')}`, parseBehaviour)
    .option(
      '--fetch-timeout <ms>',
      'give up fetching the dataset, tokenizer, genesis or a shard from peers after this long',
      int(1, 3_600_000),
      30_000,
    )
    .option(
      '--rpc <url>',
      "link to the run's ledger on any EVM chain (with --contract): validators sign score reports, peers submit them, governance switches the dataset",
    )
    .option(
      '--contract <address>',
      "the run's TesseraRun contract (see `tessera ledger --serve`, or the demo's --ledger)",
    )
    .option(
      '--key <file>',
      'EVM private key file (hex) for payouts and signing; default DATA_DIR/evm.key, created on first use',
    )
    .option('--no-submit', 'with --rpc: do not send quorum score reports to the chain (others will)')
    .option(
      '--dashboard <port>',
      'serve a live dashboard (web page + JSON API) on this port (0 = any free port)',
      int(0, 65535),
    )
    .option(
      '--dashboard-host <addr>',
      'address the dashboard binds to; beyond loopback it is read-only unless a token is set',
      '127.0.0.1',
    )
    .option(
      '--dashboard-token <token>',
      "token that unlocks the dashboard's actions (POST /api/generate); default: env TESSERA_DASHBOARD_TOKEN",
    )
    .action(
      async (o: {
        run: string;
        dataDir: string;
        listen?: string[];
        announce?: string[];
        relay?: boolean;
        reserve?: boolean;
        upnp: boolean;
        punchPort?: number;
        holePunch: boolean;
        bootstrap?: string[];
        mdns: boolean;
        genesisPeers?: string[];
        rounds: number;
        cacheDir: string;
        base?: string;
        json: boolean;
        device: 'cpu' | 'webgpu' | 'auto';
        fetchTimeout: number;
        behave?: Behaviour;
        validator: boolean;
        auditOn: 'device' | 'cpu';
        dashboard?: number;
        dashboardHost: string;
        dashboardToken?: string;
        rpc?: string;
        contract?: string;
        key?: string;
        submit: boolean;
        trustValidators?: string[];
      }) => {
        let text: string;
        try {
          text = readFileSync(o.run, 'utf8');
        } catch (e) {
          throw new InvalidInputError(`cannot read --run ${o.run}: ${(e as Error).message}`);
        }
        const manifest = decodeManifest(text);
        const relayLimits = networkParams(manifest.manifest).relay;
        const refused = o.device === 'webgpu' ? gpuAuditRefusal(manifest.manifest.hyper.audit) : null;
        if (refused) throw new DeviceRefusedError(`--device webgpu refused: ${refused}`);
        if ((o.rpc === undefined) !== (o.contract === undefined))
          throw new InvalidInputError('--rpc and --contract go together');
        if (o.contract !== undefined && !/^0x[0-9a-fA-F]{40}$/.test(o.contract))
          throw new InvalidInputError(`--contract: not an address: ${o.contract}`);
        const ledger =
          o.rpc && o.contract
            ? {
                rpc: o.rpc,
                contract: o.contract as Address,
                submit: o.submit,
                ...(o.key ? { key: readKey(o.key) } : {}),
              }
            : undefined;
        process.on('unhandledRejection', onStrayRejection);
        let done = 0;
        let finish!: () => void;
        const finished = new Promise<void>((r) => {
          finish = r;
        });
        const node = new SwarmNode({
          manifest,
          dataDir: o.dataDir,
          listen: o.listen ?? ['/ip4/127.0.0.1/tcp/0'],
          net: {
            relay: o.relay ?? 'auto',
            reserve: o.reserve ?? 'auto',
            relayLimits: {
              maxBytes: relayLimits.maxBytes,
              maxDurationMs: relayLimits.maxSeconds * 1000,
              maxReservations: relayLimits.maxReservations,
            },
            ...(o.announce ? { announce: o.announce } : {}),
            upnp: o.upnp,
            holePunch: o.holePunch ? 'auto' : false,
            ...(o.punchPort !== undefined ? { punchPort: o.punchPort } : {}),
            // Printed once per change: a peer behind a NAT sees "private" at once and
            // "private+relay" when it holds a relay slot; a public peer "unknown" until another
            // peer dialled its address back (AutoNAT), then "public".
            onReachability: (r) => {
              const relays = r.relayAddrs.map((a) => a.split('/p2p-circuit')[0]).join(' ');
              const punch = r.punchAddrs.length > 0 ? `; hole punching from ${r.punchAddrs.join(' ')}` : '';
              const line = `reachability ${reachWord(r)}${r.relayServer ? ' (serving as relay)' : ''}${relays ? ` via ${relays}` : ''}${punch}`;
              if (o.json) process.stdout.write(JSON.stringify({ event: 'reachability', ...r }) + '\n');
              else process.stderr.write(`tessera node: ${line}\n`);
            },
          },
          bootstrap: o.bootstrap ?? [],
          mdns: o.mdns,
          cacheDir: o.cacheDir,
          fetchTimeoutMs: o.fetchTimeout,
          device: o.device,
          ...(o.base !== undefined ? { base: o.base } : {}),
          ...(o.behave ? { behave: o.behave } : {}),
          validator: o.validator,
          auditOn: o.auditOn,
          ...(ledger ? { ledger } : {}),
          ...(o.trustValidators ? { trustValidators: o.trustValidators } : {}),
          ...(o.genesisPeers ? { genesisPeers: o.genesisPeers } : {}),
          onLog: (line) => process.stderr.write(`tessera node: ${line}\n`),
          onRound: (r) => {
            const net = netLine(node.host);
            if (o.json) process.stdout.write(JSON.stringify({ ...r, peer: node.peerId, net }) + '\n');
            else process.stderr.write(formatReport(r, net) + '\n');
            if (r.event === 'round' && o.rounds > 0 && ++done >= o.rounds) finish();
          },
        });
        const onSignal = () => finish();
        process.once('SIGINT', onSignal);
        process.once('SIGTERM', onSignal);
        // The dashboard comes up first (it shows "starting" until the node has joined).
        let dash: Dashboard | null = null;
        if (o.dashboard !== undefined) {
          const token = o.dashboardToken ?? process.env.TESSERA_DASHBOARD_TOKEN;
          dash = await startDashboard(node, { port: o.dashboard, host: o.dashboardHost, ...(token ? { token } : {}) });
          say(o, `dashboard: ${dash.url}${dash.mode === 'off' ? ' (read-only)' : ''}`);
        }
        try {
          await node.start();
        } catch (e) {
          await dash?.close();
          throw e;
        }
        say(o, `run ${manifest.runId.slice(0, 12)}: peer ${node.peerId}, device ${node.device}`);
        if (o.json)
          process.stdout.write(
            JSON.stringify({
              event: 'started',
              peer: node.peerId,
              runId: manifest.runId,
              device: node.device,
              codec: node.codecPlace,
              addrs: node.host.multiaddrs(),
              dashboard: dash?.url ?? null,
            }) + '\n',
          );
        await finished;
        await dash?.close();
        await node.stop();
        process.removeListener('SIGINT', onSignal);
        process.removeListener('SIGTERM', onSignal);
      },
    );
}
