/**
 * `tessera demo`: a local swarm of `tessera node` processes on 127.0.0.1, with per-round progress.
 *
 * The round timing is calibrated on this machine before the manifest is written: the demo times
 * a few inner steps of its model and sizes the training budget so that H steps just fill it
 * when all peers share the cores. With overlap on (the default), each peer starts the next
 * round's steps the moment it submits, so the exchange and agreement run while it computes.
 * `--resume` restarts the peers from their own last snapshots in the same directory.
 */
import type { Command } from 'commander';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { int, num, oneOf } from './args.js';
import { say, result } from './output.js';
import {
  buildManifest,
  buildManifestFromStore,
  buildManifestWithBase,
  type RunCreateOptions,
} from '../swarm/manifest-builder.js';
import { addCorpus } from './data.js';
import { defaultCacheDir } from './train.js';
import { loadCorpus, prepareDataset } from '../data/index.js';
import { BatchSampler, type Batch } from '../data/batches.js';
import { loadKernels } from '../kernels/index.js';
import { GPT } from '../model/gpt.js';
import { gpuAuditRefusal, openTrainModel } from '../train/device-model.js';
import { DEFAULT_ADAMW } from '../train/adamw.js';
import { decodeManifest } from '../swarm/manifest.js';
import { dataDirFor, portOr, preparePeer, spawnPeer, stopAll, type PeerProc } from './launch.js';
import type { RoundReport } from '../peer/report.js';
import { DeviceRefusedError, InvalidInputError } from '../util/errors.js';
import { BEHAVIOURS, parseBehaviours } from '../verify/adversaries.js';
import { EVM_KEY_FILE, getShares, ledgerClient, read, startLocalChain, type LocalChain } from '../ledger/index.js';
import { drainLedger, ledgerRounds, sharesTable, type RoundLedger } from './demo-ledger.js';
import { privateKeyToAccount } from 'viem/accounts';
import { formatEther } from 'viem';

const MODEL = { vocab: 512, ctx: 64, dim: 64, layers: 2, heads: 4, batch: 4 } as const;
/** With --ledger, how long the demo waits after its last round for that round's report to be minted. */
const LEDGER_DRAIN_MS = 120_000;

/** Median milliseconds of one inner step (forward, backward) of the demo model on 1 thread. */
function stepMs(cacheDir: string): number {
  const ds = prepareDataset({ corpus: loadCorpus('brown'), vocabSize: MODEL.vocab, cacheDir });
  const gpt = new GPT(
    { vocabSize: MODEL.vocab, ctx: MODEL.ctx, dim: MODEL.dim, layers: MODEL.layers, heads: MODEL.heads },
    loadKernels({ threads: 1 }),
  );
  gpt.init(1);
  const s = new BatchSampler(ds.train, MODEL.batch, MODEL.ctx, 1n);
  const b: Batch = {
    inputs: new Int32Array(MODEL.batch * MODEL.ctx),
    targets: new Int32Array(MODEL.batch * MODEL.ctx),
  };
  const times: number[] = [];
  for (let i = 0; i < 12; i++) {
    s.next(b);
    const t0 = performance.now();
    gpt.zeroGrad();
    gpt.forwardBackward(b.inputs, b.targets, MODEL.batch, MODEL.ctx);
    times.push(performance.now() - t0);
  }
  return times.slice(2).sort((x, y) => x - y)[5];
}

/**
 * Median milliseconds of one inner step of the demo model on `device`: the round budget must fit
 * the peers' real steps (SwiftShader's emulated GPU takes about a second for what the CPU does in
 * milliseconds). 'auto' that finds no adapter measures the CPU.
 */
async function deviceStepMs(device: 'cpu' | 'webgpu' | 'auto', cacheDir: string): Promise<number> {
  if (device === 'cpu') return stepMs(cacheDir);
  const config = { vocabSize: MODEL.vocab, ctx: MODEL.ctx, dim: MODEL.dim, layers: MODEL.layers, heads: MODEL.heads };
  const model = await openTrainModel(device, { config, adamw: DEFAULT_ADAMW, kernels: loadKernels({ threads: 1 }) });
  try {
    if (model.device === 'cpu') return stepMs(cacheDir);
    const N = MODEL.batch * MODEL.ctx,
      x = new Int32Array(N).map((_, i) => i % MODEL.vocab);
    await model.warmUp(MODEL.batch, MODEL.ctx);
    const times: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      model.zeroGrad();
      await model.forwardBackward(x, x, MODEL.batch, MODEL.ctx, 1);
      await model.update(0);
      times.push(performance.now() - t0);
    }
    return times.sort((p, q) => p - q)[1];
  } finally {
    model.close();
  }
}

/** `N@R`: N peers after round R. */
function at(v: string): { n: number; round: number } {
  const m = /^(\d+)@(\d+)$/.exec(v.trim());
  if (!m || Number(m[1]) < 1) throw new InvalidInputError(`expected N@ROUND (e.g. 2@3), got "${v}"`);
  return { n: Number(m[1]), round: Number(m[2]) };
}

interface DemoOptions {
  kill?: { n: number; round: number };
  join?: { n: number; round: number };
  linkDelay: number;
  device: 'cpu' | 'webgpu' | 'auto';
  peers: number;
  rounds: number;
  dir: string;
  codec: string;
  inner: number;
  overlap: 'eager' | 'shift' | 'delayed' | 'none';
  outerLr?: number;
  outerMomentum?: number;
  resume: boolean;
  cacheDir: string;
  json: boolean;
  ipfs: boolean;
  behave?: string;
  aggregate: 'clip' | 'mean' | 'trimmed' | 'centered';
  dashboard: boolean;
  dashboardPort: number;
  ledger: boolean;
  validators?: number;
  audit?: number;
  auditTolerance?: number;
  auditOn: 'device' | 'cpu';
  base?: string;
  loraRank?: number;
  loraAlpha?: number;
}

export function register(program: Command): void {
  program
    .command('demo')
    .description('run a local swarm of peers (separate processes on 127.0.0.1) training a small GPT together')
    .option('--peers <n>', 'number of peers', int(1, 32), 4)
    .option('--rounds <n>', 'stop after this many rounds (0 = until Ctrl-C)', int(0), 10)
    .option('--dir <dir>', 'working directory (manifest, peer data dirs); wiped first unless --resume', 'runs/demo')
    .option('--resume', "continue the run in --dir from the peers' last snapshots", false)
    .option('--codec <id>', 'update codec', oneOf('fp32', 'fp16', 'int8', 'sparse'), 'sparse')
    .option('--inner <n>', 'H: inner steps per round', int(1), 30)
    .option(
      '--overlap <mode>',
      'eager | shift | delayed: train the next round during the exchange (docs/ROUNDS.md) | none',
      oneOf('eager', 'shift', 'delayed', 'none'),
      'eager',
    )
    .option('--outer-lr <x>', 'outer Nesterov learning rate', num(1e-6, 100))
    .option('--outer-momentum <x>', 'outer Nesterov momentum', num(0, 0.999))
    .option(
      '--kill <N@R>',
      'fault drill: kill -9 N peers right after round R (the tie-breaker is spared; see docs/ROUNDS.md)',
      at,
    )
    .option('--join <N@R>', 'fault drill: start N fresh peers (new identities) right after round R', at)
    .option(
      '--link-delay <ms>',
      'emulate a slow link: delay every message and download by this many ms (each way)',
      int(0),
      0,
    )
    .option('--cache-dir <dir>', 'tokenizer and token cache', defaultCacheDir())
    .option(
      '--behave <spec>',
      'verification drill: peers that misbehave, e.g. 3=scaler or 2=sign-flip,3=free-rider-zero (kinds: ' +
        BEHAVIOURS.join(', ') +
        ')',
    )
    .option(
      '--aggregate <rule>',
      'clip (robust: norms clipped to the median) | trimmed | centered | mean',
      oneOf('clip', 'mean', 'trimmed', 'centered'),
      'clip',
    )
    .option(
      '--ipfs',
      'no single host: peer 0 adds the corpus to its IPFS store and the manifest names data, tokenizer and genesis by CID; the others fetch them from the peers that hold them',
      false,
    )
    .option(
      '--validators <n>',
      'the first N peers also validate: score every update and sign score reports (default 2 with --ledger, else 0)',
      int(0, 32),
    )
    .option(
      '--audit <p>',
      'audit by re-execution: trainers commit every inner step, validators re-run each update with probability p (needs --overlap none or delayed, and --validators)',
      num(0, 1),
    )
    .option(
      '--audit-tolerance <rel>',
      "with --audit: let GPU trainers in, their steps judged against the CPU's within this relative tolerance (manifest hyper.audit.tolerance; docs/WEBGPU.md)",
      num(1e-9, 0.1),
    )
    .option(
      '--audit-on <where>',
      "validators re-execute GPU trainers' rounds on: device (their own --device when of the trainer's class, bit for bit) | cpu (within the tolerance)",
      oneOf('device', 'cpu'),
      'device',
    )
    .option(
      '--ledger',
      "tokenized ownership: start a local EVM (Hardhat's EDR), deploy the run's contract; validators sign score reports, peers submit them, shares are minted per round",
      false,
    )
    .option(
      '--device <kind>',
      'where every peer runs its inner steps: cpu | webgpu | auto (webgpu when an adapter is found)',
      oneOf('cpu', 'webgpu', 'auto'),
      'cpu',
    )
    .option(
      '--base <dir>',
      "fine-tune this checkpoint (`tessera train`/`import` output; its shape replaces the demo model's): peer 0 adds it to its IPFS store, the others fetch it by CID and check its hash",
    )
    .option(
      '--lora-rank <r>',
      'train only a LoRA adapter of rank r on every projection of the base (--base, else the demo model at its init): rounds exchange the adapter alone',
      int(1, 4096),
    )
    .option('--lora-alpha <x>', 'LoRA alpha (default 2·rank)', num(1e-6, 1e6))
    .option('--json', 'one JSON object per round on stdout', false)
    .option('--no-dashboard', 'do not serve the live dashboard')
    .option('--dashboard-port <n>', 'dashboard port on 127.0.0.1 (any free port if taken)', int(1, 65535), 8080)
    .action(async (o: DemoOptions) => {
      if (o.kill && o.kill.n * 2 > o.peers)
        say(
          o,
          `warning: killing ${o.kill.n} of ${o.peers} leaves no quorum of the roster; rounds will wait until enough peers return (docs/ROUNDS.md)`,
        );
      const dir = resolve(o.dir);
      if (o.ledger && o.resume)
        throw new InvalidInputError(
          '--ledger starts a fresh in-memory chain; it cannot --resume (point peers at a lasting chain with `tessera node --rpc`)',
        );
      const nValidators = o.validators ?? (o.ledger ? Math.min(2, o.peers) : 0);
      if (nValidators > o.peers)
        throw new InvalidInputError(`--validators ${nValidators} is more than --peers ${o.peers}`);
      if (o.audit !== undefined && o.overlap !== 'none' && o.overlap !== 'delayed')
        throw new InvalidInputError(
          `--audit needs --overlap none or delayed (an ${o.overlap} job moves its base mid-way, so its steps cannot be re-executed)`,
        );
      if (o.auditTolerance !== undefined && o.audit === undefined)
        throw new InvalidInputError('--audit-tolerance goes with --audit');
      const refused =
        o.audit !== undefined && o.device === 'webgpu'
          ? gpuAuditRefusal(o.auditTolerance !== undefined ? { tolerance: { rel: o.auditTolerance } } : {})
          : null;
      if (refused) throw new DeviceRefusedError(`--audit with --device webgpu: ${refused}`);
      if (o.loraAlpha !== undefined && o.loraRank === undefined)
        throw new InvalidInputError('--lora-alpha goes with --lora-rank');
      if (o.loraRank !== undefined && o.device === 'webgpu')
        throw new InvalidInputError(
          `--lora-rank trains on the CPU (the GPU models take no adapter), not --device ${o.device}`,
        );
      if (o.ledger && nValidators === 0)
        throw new InvalidInputError('--ledger needs at least one validator (--validators)');
      const run = join(dir, 'run.json');
      let runId: string;
      if (o.resume) {
        if (!existsSync(run))
          throw new InvalidInputError(`nothing to resume: ${run} does not exist (run \`tessera demo\` first)`);
        runId = decodeManifest(readFileSync(run, 'utf8')).runId;
        say(o, `resuming run ${runId.slice(0, 12)} in ${dir}`);
      } else {
        if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
        mkdirSync(dir, { recursive: true });
        // Calibrate: with P peers on C cores each peer gets about C/P of a core. H steps should
        // slightly overfill trainMs, so that a peer is never idle waiting for its deadline.
        const ms = await deviceStepMs(o.device, o.cacheDir);
        const share = Math.max(1, o.peers / availableParallelism());
        const trainMs = Math.max(400, Math.round(0.85 * o.inner * ms * share));
        const opts: RunCreateOptions = {
          ...MODEL,
          inner: o.inner,
          lr: 3e-3,
          codec: o.codec as 'sparse',
          shards: 16,
          seed: 1,
          trainMs,
          submitMs: trainMs + Math.max(1500, trainMs),
          commitMs: 1500,
          quorum: 1,
          minPeers: 1,
          maxMissed: 2,
          cacheDir: o.cacheDir,
          overlap: o.overlap,
          aggregate: o.aggregate,
          ...(o.audit !== undefined ? { audit: o.audit } : {}),
          ...(o.auditTolerance !== undefined ? { auditTolerance: o.auditTolerance } : {}),
          ...(o.outerLr !== undefined ? { outerLr: o.outerLr } : {}),
          ...(o.outerMomentum !== undefined ? { outerMomentum: o.outerMomentum } : {}),
          ...(o.base !== undefined ? { base: resolve(o.base), dataDir: dataDirFor(dir, 0) } : {}),
          ...(o.loraRank !== undefined
            ? { lora: { r: o.loraRank, alpha: o.loraAlpha ?? 2 * o.loraRank, targets: ['all'] } }
            : {}),
        };
        let built: ReturnType<typeof buildManifest>;
        if (o.ipfs) {
          const { cid } = await addCorpus('brown', {
            dataDir: dataDirFor(dir, 0),
            vocab: MODEL.vocab,
            shardTokens: 1 << 16,
            cacheDir: o.cacheDir,
          });
          say(o, `peer 0 stored the dataset: ${cid}`);
          built = await buildManifestFromStore({ ...opts, dataset: cid, dataDir: dataDirFor(dir, 0) });
        } else {
          built = opts.base !== undefined ? await buildManifestWithBase(opts) : buildManifest(opts);
        }
        const bm = built.decoded.manifest;
        if (bm.base)
          say(
            o,
            `fine-tuning base ${bm.base.weightsHash.slice(0, 12)}${bm.base.cid ? ` (${bm.base.cid}, in peer 0's store)` : ' (the demo model at init)'}: ` +
              (bm.lora ? `LoRA r=${bm.lora.r} alpha=${bm.lora.alpha} on every projection` : 'full fine-tuning'),
          );
        const { decoded, params } = built;
        runId = decoded.runId;
        writeFileSync(run, JSON.stringify(decoded.manifest, null, 2) + '\n');
        say(
          o,
          `run ${runId.slice(0, 12)}: ${params} parameters, ${o.peers} peers, H=${o.inner}, codec ${o.codec}, overlap ${o.overlap}, ` +
            `step ${ms.toFixed(1)} ms${o.device === 'cpu' ? '' : ` (--device ${o.device})`} → train budget ${trainMs} ms/round, manifest ${run}`,
        );
      }
      const specs = await Promise.all(Array.from({ length: o.peers }, (_, i) => preparePeer(i, dataDirFor(dir, i))));
      let chain: LocalChain | null = null;
      if (o.ledger) {
        chain = await startLocalChain({
          runId,
          peers: o.peers,
          validators: Array.from({ length: nValidators }, (_, i) => i),
        });
        // Each peer's payout/signing key is a funded devnet key (so any of them can submit).
        for (const s of specs)
          writeFileSync(join(s.dataDir, EVM_KEY_FILE), chain.keys[s.index] + '\n', { mode: 0o600 });
        say(
          o,
          `ledger: EDR devnet at ${chain.url}, TesseraRun ${chain.contract} (${chain.deployGas} gas), validators ${chain.threshold}-of-${nValidators} (peers ${Array.from({ length: nValidators }, (_, i) => i).join(', ')})`,
        );
        result(o, {
          event: 'ledger',
          rpc: chain.url,
          contract: chain.contract,
          chainId: chain.net.chain.id,
          validators: chain.validators,
          threshold: chain.threshold,
        });
      }
      const addrs = specs.map((s) => s.addr);
      const ids = specs.map((s) => s.peerId);
      // The dashboard runs on the tie-breaker (lowest id), the peer the --kill drill spares.
      const host = [...ids].sort()[0];
      const dashPort = o.dashboard ? await portOr(o.dashboardPort) : null;
      const byRound = new Map<number, Map<number, RoundReport>>();
      /** Each printed round's decided set: peer index and tokens. */
      const included = new Map<number, { peer: number; tokens: number }[]>();
      let printed = -1;
      let rows = 0;
      const fractions: number[] = [];
      let stopping = false;
      /** The demo printed its last row (--rounds): peers may run on (the ledger drains), rows stop. */
      let done = false;
      let finish!: () => void;
      const finished = new Promise<void>((r) => {
        finish = r;
      });
      const peers: PeerProc[] = [];
      const onReport = (p: PeerProc, r: RoundReport) => {
        if (r.event !== 'round') {
          say(
            o,
            `peer ${p.index} ${o.resume ? 'resumed' : 'synced'} at round ${r.round} (${r.weightsHash.slice(0, 12)})`,
          );
          printRows();
          return;
        }
        // Verification events, as they happen: failed audits, and fraud proofs checked by other peers.
        const who = (id: string) => {
          const q = peers.find((x) => x.peerId === id);
          return q ? `peer ${q.index}` : id.slice(-8);
        };
        for (const a of r.audits ?? [])
          if (!a.ok)
            result(
              o,
              {
                event: 'audit',
                round: a.round,
                validator: p.index,
                trainer: who(a.trainer),
                reason: a.reason,
                steps: a.steps,
                ms: Math.round(a.ms),
              },
              `audit: peer ${p.index} re-ran ${who(a.trainer)}'s round ${a.round} (${a.steps} steps, ${Math.round(a.ms)} ms): ${a.reason}`,
            );
        for (const f of r.frauds ?? [])
          result(
            o,
            {
              event: 'fraud-proof',
              round: f.round,
              checker: p.index,
              trainer: who(f.trainer),
              k: f.k,
              by: who(f.by),
              verified: f.verified,
            },
            `fraud proof: peer ${p.index} ${f.verified ? 'verified' : `rejected (${f.reason})`} ${who(f.by)}'s proof that ${who(f.trainer)} computed step ${f.k} of round ${f.round} wrong`,
          );
        let m = byRound.get(r.round);
        if (!m) {
          m = new Map();
          byRound.set(r.round, m);
        }
        m.set(p.index, r);
        printRows();
      };
      /** The last round a peer is past: a round it applied, or the one before a state it synced to. */
      const pastRound = (x: PeerProc) =>
        Math.max(-1, ...x.reports.map((y) => (y.event === 'round' ? y.round : y.round - 1)));
      /**
       * Prints every round row that is ready, in order: all live peers are past it, or half of them
       * are two rounds beyond it (a peer that lags or keeps resyncing on a loaded machine does not
       * hold the display; its report of that round, if it comes, is not in the row).
       */
      const printRows = () => {
        // Peers that take part: the genesis ones, and fresh ones once they have synced.
        const live = peers.filter((x) => x.alive && (x.index < o.peers || x.reports.some((y) => y.event === 'synced')));
        const newest = Math.max(-1, ...byRound.keys());
        for (let round = printed + 1; round <= newest && !done; round++) {
          const past = live.map(pastRound);
          const ready =
            past.every((x) => x >= round) || 2 * past.filter((x) => x >= round + 2).length >= Math.max(1, live.length);
          if (!ready) return;
          const m = byRound.get(round);
          printed = round;
          if (!m || m.size === 0) continue;
          printRow(round, m);
          if (o.rounds > 0 && rows >= o.rounds) {
            done = true;
            finish();
            return;
          }
        }
      };
      const printRow = (round: number, m: Map<number, RoundReport>) => {
        {
          rows++;
          const rs = [...m.values()];
          const hashes = new Set(rs.map((x) => x.weightsHash));
          const mean = (f: (x: RoundReport) => number) => rs.reduce((a, x) => a + f(x), 0) / rs.length;
          // The first row of a session includes start-up (data, model, connections): not counted.
          if (rows > 1) fractions.push(mean((x) => x.computeFraction));
          const indexOf = (id: string) => peers.find((x) => x.peerId === id)?.index ?? -1;
          const row = {
            round,
            valLoss: mean((x) => x.valLoss),
            peers: rs.length,
            applied: rs[0].included,
            contributors: rs[0].contributors.map((c) => ({ peer: indexOf(c.peer), tokens: c.tokens })),
            bytesSentPerPeer: Math.round(mean((x) => x.bytesSent)),
            bytesReceivedPerPeer: Math.round(mean((x) => x.bytesReceived)),
            innerStepsPerPeer: mean((x) => x.innerSteps),
            computeFraction: mean((x) => x.computeFraction),
            seconds: mean((x) => x.seconds),
            weightsHash: rs[0].weightsHash,
            agree: hashes.size === 1,
          };
          included.set(round, row.contributors);
          result(
            o,
            row,
            `round ${row.round}  val ${row.valLoss.toFixed(4)}  peers ${row.peers}  updates ${row.applied}  ` +
              `sent/peer ${(row.bytesSentPerPeer / 1024).toFixed(1)}K  recv/peer ${(row.bytesReceivedPerPeer / 1024).toFixed(1)}K  ` +
              `compute ${(100 * row.computeFraction).toFixed(0)}%  ${row.seconds.toFixed(1)}s  weights ${row.weightsHash.slice(0, 12)}  ` +
              `${row.agree ? 'all hashes agree' : `HASHES DIFFER (${hashes.size})`}`,
          );
          if (o.kill && round === o.kill.round) {
            // Half of an even roster is a quorum only with the tie-breaker (lowest peer id), so
            // the drill spares it; any n below half may be killed (docs/ROUNDS.md, quorums).
            const tie = [...ids].sort()[0];
            const victims = peers.filter((x) => x.alive && x.peerId !== tie).slice(-o.kill.n);
            for (const v of victims) {
              v.child.kill('SIGKILL');
              v.alive = false;
            }
            say(o, `fault drill: kill -9 peer ${victims.map((v) => v.index).join(', ')} after round ${round}`);
          }
          if (o.join && round === o.join.round) void addFresh(o.join.n);
        }
      };
      const addFresh = async (n: number) => {
        for (let k = 0; k < n; k++) {
          const idx = peers.length;
          const spec = await preparePeer(idx, dataDirFor(dir, idx));
          const boot = peers.filter((x) => x.alive).map((x) => x.addr);
          peers.push(
            spawnPeer(spec, {
              run,
              bootstrap: boot,
              cacheDir: o.cacheDir,
              device: o.device,
              onReport,
              env: { TESSERA_LINK_DELAY_MS: String(o.linkDelay) },
              logFile: join(spec.dataDir, 'node.log'),
              onExit: (p, code, sig) => {
                if (!stopping) say(o, `peer ${p.index} exited (${sig ?? code})`);
              },
            }),
          );
          say(o, `fault drill: fresh peer ${idx} (${spec.peerId.slice(-8)}) joins through ${boot.length} live peers`);
        }
      };
      const kinds = o.behave ? parseBehaviours(o.behave, o.peers) : [];
      for (const [i, k] of kinds.entries()) if (k !== 'honest') say(o, `verification drill: peer ${i} behaves as ${k}`);
      for (const s of specs) {
        peers.push(
          spawnPeer(s, {
            run,
            bootstrap: addrs,
            genesisPeers: ids,
            cacheDir: o.cacheDir,
            device: o.device,
            onReport,
            onStarted: (p, device, codec) =>
              process.stderr.write(`peer ${p.index}: training on ${device}${codec ? `; ${codec}` : ''}\n`),
            env: { TESSERA_LINK_DELAY_MS: String(o.linkDelay) },
            logFile: join(s.dataDir, 'node.log'),
            ...(kinds[s.index] && kinds[s.index] !== 'honest' ? { behave: kinds[s.index] } : {}),
            ...(s.index < nValidators ? { validator: true, auditOn: o.auditOn } : {}),
            ...(nValidators > 0 ? { trustValidators: specs.slice(0, nValidators).map((x) => x.peerId) } : {}),
            ...(chain ? { ledger: { rpc: chain.url, contract: chain.contract } } : {}),
            ...(dashPort !== null && s.peerId === host ? { dashboard: { port: dashPort } } : {}),
            onExit: (p, code, sig) => {
              if (!stopping) say(o, `peer ${p.index} exited (${sig ?? code})`);
              if (!stopping && peers.every((x) => !x.alive)) finish();
            },
          }),
        );
      }
      if (dashPort !== null) {
        const url = `http://127.0.0.1:${dashPort}/`;
        say(o, `dashboard: ${url} (peer ${ids.indexOf(host)}; --no-dashboard to turn it off)`);
        result(o, { event: 'dashboard', url, peer: ids.indexOf(host) });
      }
      let interrupted = false;
      const onSignal = () => {
        say(o, 'stopping all peers (resume with --resume)...');
        interrupted = true;
        finish();
      };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      const validatorProcs = () => peers.filter((x) => x.index < nValidators);
      const mintedRounds = async (c: ReturnType<typeof ledgerClient>) =>
        new Set((await getShares(c)).rounds.map((r) => Number(r.round)));
      let standing: Map<number, RoundLedger> | null = null;
      try {
        await finished;
        // The last rounds' reports are still being scored, signed and submitted: let them land.
        if (chain && !interrupted && printed >= 0) {
          const c = ledgerClient(chain.net.request, chain.net.chain, chain.keys[0], chain.contract);
          standing = await drainLedger({
            first: 0,
            last: printed,
            minted: () => mintedRounds(c),
            validators: validatorProcs(),
            ms: LEDGER_DRAIN_MS,
            say: (line) => say(o, line),
            stopped: () => interrupted,
          });
        }
      } finally {
        stopping = true;
        await stopAll(peers);
        if (chain) {
          try {
            const c = ledgerClient(chain.net.request, chain.net.chain, chain.keys[0], chain.contract);
            const s = await getShares(c);
            const keyIndex = (a: string) =>
              chain!.keys.findIndex((k) => privateKeyToAccount(k).address.toLowerCase() === a.toLowerCase());
            const label = (a: string) => {
              const i = keyIndex(a);
              return i >= 0 ? `peer ${i}` : a;
            };
            const minted = new Set(s.rounds.map((r) => Number(r.round)));
            const st = standing ?? ledgerRounds(0, Math.max(-1, printed), minted, validatorProcs());
            const count = (k: RoundLedger) => [...st.values()].filter((x) => x === k).length;
            // What the minted reports paid, per round (any validator's copy: they are identical when minted).
            const idx = (id: string) => peers.find((x) => x.peerId === id)?.index ?? -1;
            const pay = new Map<number, Map<number, number>>();
            for (const v of validatorProcs())
              for (const r of v.reports)
                for (const x of r.paid ?? [])
                  if (!pay.has(x.round)) pay.set(x.round, new Map(x.pay.map((y) => [idx(y.peer), y.points])));
            const perRound = Number(formatEther(await read<bigint>(c, 'sharesPerRound')));
            const table = sharesTable({
              peers: peers.length,
              balances: new Map(s.holders.map((h) => [keyIndex(h.address), Number(formatEther(h.balance))])),
              included,
              pay,
              minted,
              printed,
              sharesPerRound: perRound,
            });
            const lines = table.map(
              (t) =>
                `  peer ${String(t.peer).padEnd(3)} ${t.shares.toFixed(2).padStart(10)} shares (reports say ${t.byReports.toFixed(2)})   rounds 0-${printed}: ${(100 * t.sharesFraction).toFixed(1).padStart(5)}% of their shares, ${(100 * t.tokensFraction).toFixed(1).padStart(5)}% of their included tokens`,
            );
            result(
              o,
              {
                event: 'shares',
                contract: chain.contract,
                rounds: s.rounds.length,
                printedRounds: printed + 1,
                mintedOfPrinted: count('minted'),
                unpaidOfPrinted: count('unpaid'),
                unsignedOfPrinted: count('unsigned'),
                waitingOfPrinted: count('waiting'),
                standing: Object.fromEntries(st),
                totalSupply: s.totalSupply.toString(),
                holders: s.holders.map((h) => ({
                  peer: label(h.address),
                  address: h.address,
                  balance: h.balance.toString(),
                })),
                peers: table,
              },
              `ledger: ${count('minted')} of rounds 0-${printed} minted (${count('unpaid')} paid nobody, ${count('unsigned')} not signed, ${count('waiting')} still pending); ${s.rounds.length} rounds on chain, ${Number(formatEther(s.totalSupply)).toFixed(2)} shares:\n${lines.join('\n')}`,
            );
          } catch (e) {
            say(o, `ledger: could not read the shares table: ${(e as Error).message}`);
          }
          await chain.close();
        }
        process.removeListener('SIGINT', onSignal);
        process.removeListener('SIGTERM', onSignal);
      }
      const mean = fractions.length ? fractions.reduce((a, x) => a + x, 0) / fractions.length : NaN;
      const summary = { event: 'summary', runId, dir, rounds: rows, lastRound: printed, meanComputeFraction: mean };
      result(
        o,
        summary,
        `done: ${rows} rounds (last ${printed}), mean compute fraction ${(100 * mean).toFixed(1)}% after the first round; peers' state is in ${dir} (continue with --resume)`,
      );
    });
}
