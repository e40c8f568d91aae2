/**
 * Getting and giving the round state: after every round this peer writes its round-start
 * snapshot (θ, momentum, the reducer's snapshot header) to DATA_DIR, serves it as a bulk bundle,
 * publishes it on IPFS (storage.ts) and advertises both on the topic (`node.snap`). A peer that
 * is behind resyncs from those advertisements (by CID first, then by a direct download), and a
 * restarted peer resumes from its own file. Every installed state is checked against its hash.
 */
import { existsSync, readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { ModelConfig } from '../model/config.js';
import type { TensorSpec } from '../model/params.js';
import { weightsHash } from '../model/checkpoint.js';
import { fetchBulk, type Host } from '../net/index.js';
import { parseCid, type Store } from '../store/index.js';
import { loadState } from '../store/checkpoint.js';
import { SnapshotSchema, type Effect, type RoundSnapshot } from '../swarm/round.js';
import { InvalidInputError } from '../util/errors.js';
import { decodeBundle, maxBundleBytes, readBundleState, writeBundleFile, type Bundle } from './bundle.js';
import { stateBytes, transferDeadlineMs } from './deadlines.js';
import type { PayloadStore } from './payloads.js';
import { fetchOrder } from './updates.js';
import { RECENT_STATES, type Storage } from './storage.js';
import type { Weights } from './weights.js';
import type { SnapAd } from './wire.js';

/** Advertisers whose latest snapshot advertisement is kept. */
export const MAX_ADS = 64;
/** Advertisements tried per resync. */
const RESYNC_CANDIDATES = 4;
/** Directly connected peers asked for an advertised bundle besides its advertiser (a NotFound is cheap). */
const DIRECT_HOLDERS = 4;

export interface SyncDeps {
  runId: string;
  model: ModelConfig;
  /** θ's tensor table when θ is not the GPT-2 layout (a LoRA run's adapter). */
  specs?: readonly TensorSpec[];
  host: Host;
  store: Store;
  storage: Storage;
  weights: Weights;
  payloads: PayloadStore;
  /** The local snapshot file. */
  snapPath: string;
  publishAd: (ad: SnapAd) => void;
  /**
   * A verified state was installed: hand its snapshot to the reducer (`local`: this peer's own
   * file at start-up, which needs no certificate); true if the reducer is now at it.
   */
  installed: (snap: RoundSnapshot, local: boolean) => boolean;
  /** Why the reducer would refuse this (peer-served) snapshot now, or null: checked before its weights are installed. */
  refusal: (snap: RoundSnapshot) => string | null;
  /** Whether the reducer takes a state of this round and θ hash (certified now): what is worth downloading. */
  wanted: (round: number, weightsHash: string) => boolean;
  /** Report the installed state (the 'synced' round line). */
  reportSynced: (snap: RoundSnapshot, via: 'ipfs' | 'bulk' | 'local') => void;
  /** Whether the reducer still wants a state (phase syncing or unsynced). */
  wantsState: () => boolean;
  stopTraining: () => void;
  stopped: () => boolean;
  log: (line: string) => void;
  logger: Logger;
}

export class Sync {
  /** peer → its latest snapshot advertisement. */
  private readonly ads = new Map<string, SnapAd>();
  private resyncing = false;

  constructor(private readonly d: SyncDeps) {}

  /**
   * A snapshot advertisement from `from`. `allowed`: from a member or validator, or heard while
   * this peer is not synced (then it knows no roster, and anyone's state may help; the state is
   * checked against its hash before it is installed). At most MAX_ADS advertisers are kept, the
   * least recently updated dropped first.
   */
  onAd(from: string, ad: SnapAd, allowed = true): void {
    if (!allowed) return;
    const old = this.ads.get(from);
    if (!old || old.round <= ad.round) {
      this.ads.delete(from);
      this.ads.set(from, ad);
      if (this.ads.size > MAX_ADS) this.ads.delete(this.ads.keys().next().value!);
    }
  }

  /** Advertisers held (for tests). */
  get adCount(): number {
    return this.ads.size;
  }

  /**
   * The state at the start of round snap.round: written to the local file, held as a bulk
   * bundle, published on IPFS and advertised. Its files are encoded now, synchronously (θ may
   * change right after); adding them to the store and pinning happen in the background.
   */
  advertise(snap: RoundSnapshot): void {
    const { weights: w } = this.d;
    // Written piece by piece to the round's file (also the resume file), served from there: no
    // copy of the state stays in memory (at GPT-2 small a bundle is 1 GB, kept RECENT_STATES rounds).
    const { hash: bundle, file } = writeBundleFile(this.d.snapPath, snap, w.theta, w.outer.momentum);
    // Snapshots outlive updates: a joiner slowed down by its own start-up (or a loaded machine)
    // may ask for one a few rounds after it was advertised.
    this.d.payloads.putFile(bundle, file, snap.round, RECENT_STATES);
    const P = w.length;
    const files = {
      round: snap.round,
      snapshot: snap,
      load: () => {
        const s = readBundleState(file, P);
        return { params: s.theta, momentum: s.momentum };
      },
    };
    // The state's CID at once (hash only): score reports name it without waiting for the store.
    this.d.storage.noteCid(files);
    void this.d.storage.publish(files).then((cid) => {
      if (this.d.stopped() || cid === null) return; // null: superseded before its turn
      this.d.publishAd({ round: snap.round, weightsHash: snap.weightsHash, bundle, ...(cid ? { cid } : {}) });
    });
  }

  /**
   * Resume from this node's own last snapshot (after Ctrl-C, or when every peer of a run was
   * stopped): install it as if a peer had served it. If the others moved on meanwhile, their
   * traffic shows this node is behind and it resyncs from them as usual.
   */
  restoreLocal(): void {
    const path = this.d.snapPath;
    if (!existsSync(path)) return;
    try {
      const b = decodeBundle(readFileSync(path), this.d.weights.length);
      if (weightsHash(b.theta) !== b.snap.weightsHash)
        throw new InvalidInputError('weights do not match the snapshot hash');
      this.d.weights.install(b.theta, b.momentum, b.snap.weightsHash);
      if (this.d.installed(b.snap, true)) {
        this.d.log(`resumed at round ${b.snap.round} from ${path}`);
        this.d.reportSynced(b.snap, 'local');
      }
    } catch (err) {
      this.d.logger.warn(
        { file: path, err: (err as Error).message },
        'ignoring unreadable local snapshot; syncing from peers',
      );
    }
  }

  /**
   * Loads one advertised state: by CID first (any holder can serve its blocks), else the
   * advertiser's bundle. Behind a NAT (a relay reservation, or only private addresses) the bundle
   * comes first from directly connected peers: a bundle is named by its sha256 and every peer at
   * the same state encodes the same bytes, so the public peers this one dialled serve it at the
   * speed of a direct connection, and the advertiser (often another home peer, only reachable
   * through a relay) is asked last. In the NAT lab (test/nat.test.ts) the CID fetch of a home peer
   * timed out at its 15 s deadline and a relayed bundle took rounds; the advertisers meanwhile
   * dropped the state ("peer has no object") and the peer resynced forever.
   */
  private async load(peer: string, ad: SnapAd): Promise<{ b: Bundle; via: 'ipfs' | 'bulk' }> {
    const P = this.d.weights.length;
    const bulkFrom = async (from: string): Promise<{ b: Bundle; via: 'bulk' }> => {
      const bytes = await fetchBulk(this.d.host, from, ad.bundle, {
        maxBytes: maxBundleBytes(P),
        signal: AbortSignal.timeout(transferDeadlineMs(maxBundleBytes(P), 10_000)),
      });
      return { b: decodeBundle(bytes, P), via: 'bulk' };
    };
    const conns = this.d.host.connections();
    const direct = fetchOrder([peer], conns, this.d.host.peerId, new Set(), DIRECT_HOLDERS).filter((p) =>
      conns.some((c) => c.peer === p && !c.relayed),
    );
    const natted = this.d.host.reachability().behindNat;
    if (natted || !ad.cid)
      for (const from of direct) {
        try {
          return await bulkFrom(from);
        } catch (err) {
          this.d.log(`resync bundle from ${from.slice(-8)} (direct) failed: ${(err as Error).message}`);
        }
      }
    if (ad.cid) {
      try {
        const got = await loadState(this.d.store, parseCid(ad.cid), this.d.model, {
          signal: AbortSignal.timeout(transferDeadlineMs(stateBytes(P), 15_000)),
          ...(this.d.specs ? { specs: this.d.specs } : {}),
        });
        if (got.meta.runId !== this.d.runId)
          throw new InvalidInputError(`checkpoint ${ad.cid} belongs to run ${got.meta.runId.slice(0, 12)}`);
        const b = { snap: SnapshotSchema.parse(got.meta.snapshot), theta: got.params, momentum: got.momentum };
        if (b.snap.weightsHash !== got.weightsHash)
          throw new InvalidInputError('checkpoint snapshot does not match its weights');
        return { b, via: 'ipfs' };
      } catch (err) {
        this.d.log(`resync by CID ${ad.cid.slice(0, 16)}… failed (${(err as Error).message}); trying the bundle`);
      }
    }
    return await bulkFrom(peer);
  }

  /** The reducer's `resync` effect: install the newest acceptable advertised state. */
  async resync(e: Extract<Effect, { type: 'resync' }>): Promise<void> {
    if (this.resyncing) return;
    this.resyncing = true;
    try {
      this.d.stopTraining();
      // Candidates: advertisements of a state the reducer takes (the target, or a newer one
      // certified since: a slow download must not leave us behind again), from anyone (the
      // hashes make a copy right), newest first, directly connected then listed peers first. refusal() asks the reducer
      // again, with the snapshot hash, before anything is installed.
      const direct = new Set(
        this.d.host
          .connections()
          .filter((c) => !c.relayed)
          .map((c) => c.peer),
      );
      const ads = [...this.ads.entries()]
        .filter(
          ([, a]) => (a.round === e.round && a.weightsHash === e.weightsHash) || this.d.wanted(a.round, a.weightsHash),
        )
        .sort(
          ([p, x], [q, y]) =>
            y.round - x.round ||
            Number(direct.has(q)) - Number(direct.has(p)) ||
            Number(e.from.includes(q)) - Number(e.from.includes(p)),
        );
      for (const [peer, ad] of ads.slice(0, RESYNC_CANDIDATES)) {
        try {
          const { b, via } = await this.load(peer, ad);
          if (weightsHash(b.theta) !== b.snap.weightsHash)
            throw new InvalidInputError('snapshot weights do not match its hash');
          if (b.snap.round !== ad.round || b.snap.weightsHash !== ad.weightsHash)
            throw new InvalidInputError(`served round ${b.snap.round}, not the advertised state`);
          const refused = this.d.refusal(b.snap);
          if (refused) throw new InvalidInputError(`round ${b.snap.round} not installed (${refused})`);
          if (this.d.stopped() || !this.d.wantsState()) return;
          // Decoded payloads stay: a resync into the same round keeps the reducer's held updates, whose Δ apply needs.
          this.d.weights.install(b.theta, b.momentum, b.snap.weightsHash);
          if (this.d.installed(b.snap, false)) this.d.reportSynced(b.snap, via);
          return;
        } catch (err) {
          this.d.log(`resync from ${peer.slice(-8)} failed: ${(err as Error).message}`);
        }
      }
    } finally {
      this.resyncing = false;
    }
  }
}
