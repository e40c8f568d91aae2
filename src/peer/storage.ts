/**
 * The storage role: every round's state is published as an IPFS checkpoint directory (θ,
 * momentum, snapshot header) and advertised; every checkpointEvery rounds one is retained; this
 * peer pins what the deterministic placement (src/store/replicate.ts) assigns it under the
 * current roster (dataset manifest, tokenizer and validation shards everywhere; each training
 * shard and retained checkpoint on R members), announces it on the DHT, unpins what moved
 * elsewhere after a grace period, and garbage-collects. Publishes, replication passes and GC are
 * serialized so that GC never takes blocks that are not pinned yet.
 */
import type { Logger } from 'pino';
import type { ModelConfig } from '../model/config.js';
import type { TensorSpec } from '../model/params.js';
import { parseCid, type Store } from '../store/index.js';
import { publishState, stateCid } from '../store/checkpoint.js';
import { pinPlan, type PinItem } from '../store/replicate.js';
import type { StorageParams } from '../swarm/manifest.js';
import type { RoundSnapshot } from '../swarm/round.js';
import { stateBytes, transferDeadlineMs } from './deadlines.js';
import type { RunData } from './data.js';

/**
 * A replicated item stays pinned this many rounds after this peer stops being one of its
 * holders, so that the new holders can fetch it first (placement changes with the roster, and
 * views of the roster differ for a round or two while peers join and leave).
 */
const UNPIN_GRACE_ROUNDS = 10;
/** Limit on fetching one item to hold; a miss is retried at the next round. */
const HOLD_FETCH_MS = 10_000;
/** Latest round states kept (pinned on IPFS and as bulk bundles) for joiners that fetch slowly. */
export const RECENT_STATES = 4;
/** Published state CIDs remembered (by snapshot round). */
const STATE_CIDS = 64;

export interface StorageDeps {
  store: Store;
  runId: string;
  model: ModelConfig;
  genesisCid: string | undefined;
  /** A fine-tuning run's base model (manifest base.cid): every member holds it, joiners load it. */
  baseCid?: string;
  /** θ's tensor table when θ is not the GPT-2 layout (a LoRA run's adapter). */
  specs?: readonly TensorSpec[];
  sp: StorageParams;
  self: string;
  data: RunData;
  fetchMs: number;
  /** The reducer's round and roster, or null while this peer is not synced. */
  current: () => { round: number; roster: string[] } | null;
  stopped: () => boolean;
  logger: Logger;
}

/** What one round's state is published from (copied when the snapshot is taken). */
export interface StateFiles {
  params: Float32Array;
  momentum: Float32Array;
  round: number;
  snapshot: RoundSnapshot;
}

/**
 * One round's state, loaded only when its publish (or CID computation) runs: at GPT-2 small a
 * state is 1 GB, and copies held while the queue waits would add up (sync.ts loads it from the
 * round's snapshot file).
 */
export interface StateSource {
  round: number;
  snapshot: RoundSnapshot;
  load: () => { params: Float32Array; momentum: Float32Array };
}

export class Storage {
  /** CID of the latest retained checkpoint (null until one is published). */
  checkpointCid: string | null = null;
  /** Published state CIDs by snapshot round (the state after round r has snapshot round r + 1). */
  private readonly stateCids = new Map<number, string>();
  /** Checkpoints retained (every checkpointEvery rounds), oldest first; and the latest round state. */
  private checkpoints: { round: number; cid: string }[] = [];
  private latestState: { round: number; cid: string } | null = null;
  /** The last RECENT_STATES published states, oldest first (kept pinned). */
  private readonly recentStates: { round: number; cid: string }[] = [];
  /** Items this peer must hold under the current roster, and how many it holds. */
  held = { held: 0, needed: 0 };
  /** Serializes replication passes; publishes never run while garbage collection runs. */
  private storeChain: Promise<unknown> = Promise.resolve();
  private publishChain: Promise<unknown> = Promise.resolve();
  private gcRun: Promise<unknown> = Promise.resolve();
  private replicatePending = false;
  /** The newest snapshot round queued for publishing. */
  private newestQueued = -1;
  /** Replicated item CID → the last round this peer was one of its holders. */
  private readonly lastHolder = new Map<string, number>();

  constructor(private readonly d: StorageDeps) {}

  /**
   * Publishes one round's state as an IPFS checkpoint directory and pins it, in the background
   * (not queued behind replication, whose fetches can take seconds: a late advertisement hands
   * joiners a stale state). Resolves with its CID, undefined if it could not be published, or null
   * if a newer state was queued before its turn came and it is not a retained checkpoint: only the
   * newest state and every checkpointEvery-th are worth the store's time. (Measured at load 20 on
   * 2 cores: a publish took 5-15 s against 4-6 s rounds, and the queue grew by minutes, holding
   * two copies of the state per round.)
   */
  publish(src: StateSource): Promise<string | null | undefined> {
    const { store, logger } = this.d;
    const queued = Date.now();
    this.newestQueued = Math.max(this.newestQueued, src.round);
    return this.publishing(async () => {
      if (src.round < this.newestQueued && src.round % this.d.sp.checkpointEvery !== 0) {
        logger.debug({ round: src.round, newest: this.newestQueued }, 'skipped publishing a superseded state');
        return null;
      }
      const t0 = Date.now();
      try {
        const files: StateFiles = { ...src.load(), round: src.round, snapshot: src.snapshot };
        // Adding and pinning 8 bytes per parameter: 1 GB at GPT-2 small, past a fixed 30 s under load.
        const ms = transferDeadlineMs(stateBytes(files.params.length), this.d.fetchMs);
        const c = await publishState(
          store,
          { config: this.d.model, runId: this.d.runId, specs: this.d.specs, ...files },
          { signal: AbortSignal.timeout(ms) },
        );
        await store.pin(c, { signal: AbortSignal.timeout(ms) });
        const cid = c.toString();
        logger.info(
          { round: files.round, queuedMs: t0 - queued, ms: Date.now() - t0 },
          'published round state on IPFS',
        );
        this.remember(files.round, cid);
        this.latestState = { round: files.round, cid };
        if (!this.recentStates.some((x) => x.cid === cid)) this.recentStates.push({ round: files.round, cid });
        if (files.round % this.d.sp.checkpointEvery === 0 && !this.checkpoints.some((x) => x.cid === cid)) {
          this.checkpoints.push({ round: files.round, cid });
          this.checkpointCid = cid;
        }
        // The last RECENT_STATES states stay pinned (joiners fetch them by CID); an older one only
        // if it is a retained checkpoint we hold (replicate() decides).
        while (this.recentStates.length > RECENT_STATES) {
          const old = this.recentStates.shift()!;
          if (old.cid !== cid && !this.checkpoints.some((x) => x.cid === old.cid)) await store.unpin(parseCid(old.cid));
        }
        return cid;
      } catch (err) {
        logger.warn(
          { round: src.round, err: (err as Error).message },
          'cannot publish state checkpoint; serving it by bulk only',
        );
        return undefined;
      }
    });
  }

  /**
   * Computes the CID the state will be published under (hash only, store untouched) and
   * remembers it for stateCid. Queued with the publishes, so that one state at a time is loaded.
   */
  noteCid(src: StateSource): void {
    void this.publishing(async () => {
      const files: StateFiles = { ...src.load(), round: src.round, snapshot: src.snapshot };
      this.remember(
        src.round,
        (await stateCid({ config: this.d.model, runId: this.d.runId, specs: this.d.specs, ...files })).toString(),
      );
    }).catch((err: unknown) =>
      this.d.logger.warn({ round: src.round, err: (err as Error).message }, 'cannot compute the state CID'),
    );
  }

  private remember(round: number, cid: string): void {
    this.stateCids.delete(round);
    this.stateCids.set(round, cid);
    if (this.stateCids.size > STATE_CIDS) this.stateCids.delete(this.stateCids.keys().next().value!);
  }

  /** The CID of this node's state for snapshot round `snapRound` (computed or published), waiting up to `ms` for it (null if none). */
  async stateCid(snapRound: number, ms: number): Promise<string | null> {
    const t0 = Date.now();
    while (!this.d.stopped() && Date.now() - t0 < ms) {
      const c = this.stateCids.get(snapRound);
      if (c) return c;
      await new Promise((r) => setTimeout(r, 100));
    }
    return this.stateCids.get(snapRound) ?? null;
  }

  /** Runs replication passes one at a time. */
  private serial<T>(f: () => Promise<T>): Promise<T> {
    const next = this.storeChain.then(f, f);
    this.storeChain = next.catch(() => undefined);
    return next;
  }

  /** Runs a state publish, one at a time, never while garbage collection runs (it would take the new, not yet pinned, blocks). */
  private publishing<T>(f: () => Promise<T>): Promise<T> {
    const next = Promise.all([this.publishChain, this.gcRun]).then(f, f);
    this.publishChain = next.catch(() => undefined);
    return next;
  }

  /** Garbage collection, once no publish is in flight (new publishes wait for it). */
  private async collectGarbage(): Promise<void> {
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const before = this.publishChain;
    this.gcRun = gate; // publishes queued from now on wait for the gate
    try {
      await before;
      await this.d.store.gc({ signal: AbortSignal.timeout(this.d.fetchMs) });
    } catch (err) {
      this.d.logger.warn({ err: (err as Error).message }, 'store gc failed');
    } finally {
      release();
    }
  }

  /** Queues a replication pass (at most one waiting); it runs under the roster current when it starts. */
  schedule(): void {
    if (this.replicatePending || this.d.stopped()) return;
    this.replicatePending = true;
    void this.serial(async () => {
      this.replicatePending = false;
      if (!this.d.stopped()) await this.replicate();
    });
  }

  /**
   * Makes this peer hold what the placement says it must under the current roster: pins what it must hold
   * (fetching from peers), announces it on the DHT, unpins what moved elsewhere, drops
   * checkpoints beyond the retention, and garbage-collects every checkpointEvery rounds.
   */
  private async replicate(): Promise<void> {
    const cur = this.d.current();
    if (!cur) return;
    const { round, roster } = cur;
    const { store, sp, data, logger } = this.d;
    while (this.checkpoints.length > sp.keepCheckpoints) {
      const old = this.checkpoints.shift()!;
      if (!this.recentStates.some((x) => x.cid === old.cid))
        await store.unpin(parseCid(old.cid)).catch(() => undefined);
    }
    const items: PinItem[] = [];
    const dsm = data.dataset;
    if (dsm && data.datasetCid && data.tokenizerCid) {
      items.push({ cid: data.datasetCid, scope: 'all', label: 'dataset manifest', depth: 0 });
      items.push({ cid: data.tokenizerCid, scope: 'all', label: 'tokenizer' });
      dsm.val.shards.forEach((sh, i) => items.push({ cid: sh.cid.toString(), scope: 'all', label: `val shard ${i}` }));
      dsm.train.shards.forEach((sh, i) =>
        items.push({ cid: sh.cid.toString(), scope: 'replicated', label: `train shard ${i}` }),
      );
    }
    if (this.d.genesisCid) items.push({ cid: this.d.genesisCid, scope: 'replicated', label: 'genesis' });
    if (this.d.baseCid) items.push({ cid: this.d.baseCid, scope: 'all', label: 'base model' });
    for (const c of this.checkpoints)
      if (c.cid !== this.latestState?.cid)
        items.push({ cid: c.cid, scope: 'replicated', label: `checkpoint r${c.round}` });
    const plan = pinPlan(items, roster, this.d.self, sp.replicas);
    let held = 0;
    for (const it of plan.hold) {
      if (this.d.stopped()) return;
      try {
        const cid = parseCid(it.cid);
        // Raw blocks are read through getBlock first: a copy corrupted on disk is found by its hash and refetched.
        if (it.scope === 'replicated') this.lastHolder.set(it.cid, round);
        if (cid.code === 0x55) await store.getBlock(cid, { signal: AbortSignal.timeout(HOLD_FETCH_MS) });
        await store.pin(cid, {
          signal: AbortSignal.timeout(HOLD_FETCH_MS),
          ...(it.depth !== undefined ? { depth: it.depth } : {}),
        });
        held++;
        store.provide(cid, { signal: AbortSignal.timeout(10_000) }).catch(() => undefined);
      } catch (err) {
        logger.warn(
          { item: it.label, cid: it.cid, err: (err as Error).message },
          'cannot fetch an item this peer must hold',
        );
      }
    }
    for (const it of plan.skip) {
      const last = this.lastHolder.get(it.cid);
      if (last === undefined || round - last < UNPIN_GRACE_ROUNDS) continue;
      this.lastHolder.delete(it.cid);
      await store.unpin(parseCid(it.cid)).catch(() => undefined);
    }
    this.held = { held, needed: plan.hold.length };
    if (round > 0 && round % sp.checkpointEvery === 0) await this.collectGarbage();
  }

  /** Waits for queued publishes, replication and GC (at stop). */
  async drain(): Promise<void> {
    await Promise.all([this.storeChain, this.publishChain, this.gcRun]).catch(() => undefined);
  }
}
