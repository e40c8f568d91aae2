/**
 * Replicas that train on different data and sync with DiLoCo (issue 8), as the swarm does it
 * (src/swarm: pseudo-gradients, swarm codecs with error feedback, outer Nesterov).
 *
 * With active replication (driver.ts) every replica of a stage computes every micro-batch: the
 * replicas buy fault tolerance, not throughput. Here R replicas per stage form R pipelines —
 * pipeline r is replica r of every stage — and each pipeline trains on its own batches with its
 * own driver (tied-embedding sum, global-norm clipping and AdamW within the pipeline, as before).
 * Every H steps the replicas of each stage sync: each sends its pseudo-gradient
 * Δ_r = θ_snapshot − θ_r encoded with a swarm codec (int8 or SparseLoCo top-k, error feedback
 * kept on the replica), the coordinator averages the decoded Δs in pipeline order and sends the
 * mean back encoded once, and every replica applies the same outer Nesterov step from the same
 * snapshot: after a sync the replicas of a stage hold identical bits. Then the last stage's copy
 * of the tied embedding is set to the first stage's wte (their outer steps are quantized apart).
 *
 * A pipeline whose peer dies is dropped at once: the others go on, and its surviving peers take
 * no further part (their weights missed the sync). The sum of bytes is exact (codec sizes).
 */
import type { Batch } from '../data/batches.js';
import { InvalidInputError } from '../util/errors.js';
import { getCodec, type CodecId } from '../swarm/compress/index.js';
import { aggregate } from '../swarm/outer.js';
import { clientOf, PipelineDriver, type DriverOptions } from './driver.js';
import { StageCallError } from './rpc.js';
import type { StageClient } from './stage-client.js';

/** Values one stage's pseudo-gradient may hold (2^28 float32 = 1 GiB, the reply body cap). */
const MAX_STAGE_VALUES = 1 << 28;

export interface DilocoSettings {
  /** Inner steps per pipeline between syncs. */
  every: number;
  /** Codec of the pseudo-gradients (both directions). */
  codec: CodecId;
  sparse?: { chunk: number; k: number };
  outer: { lr: number; momentum: number };
}

export interface SyncResult {
  pipelines: number;
  bytes: number;
  ms: number;
}

export class DilocoPipelines {
  readonly drivers: PipelineDriver[];
  /** Pipelines still training (indices into drivers). */
  alive: number[];
  readonly dropped: { pipeline: number; step: number; reason: string }[] = [];
  /** Bytes of pseudo-gradients and means exchanged, and of the re-tie. */
  syncBytes = 0;
  syncs = 0;
  private steps = 0;
  private readonly client: StageClient;

  constructor(
    private readonly o: Omit<DriverOptions, 'stages' | 'recover'> & { stages: string[][]; diloco: DilocoSettings },
  ) {
    const R = o.stages[0]?.length ?? 0;
    if (R < 1 || o.stages.some((r) => r.length !== R))
      throw new InvalidInputError('every stage needs the same number of replicas (one per pipeline)');
    if (!Number.isInteger(o.diloco.every) || o.diloco.every < 1)
      throw new InvalidInputError('diloco.every must be a positive integer');
    this.drivers = Array.from(
      { length: R },
      (_, r) => new PipelineDriver({ ...o, stages: o.stages.map((row) => [row[r]]) }),
    );
    this.alive = this.drivers.map((_, r) => r);
    this.client = clientOf(o);
  }

  /** Peers of each stage in the pipelines still training, in pipeline order. */
  replicas(): string[][] {
    return this.o.stages.map((row) => this.alive.map((r) => row[r]));
  }

  /**
   * One step of every live pipeline, each on its own batch (`batch(r)`), concurrently; a sync
   * after every `every` steps. Returns the mean loss over the pipelines that completed the step.
   */
  async step(
    batch: (pipeline: number) => Batch,
    B: number,
    T: number,
    micro: number,
    lr: number,
  ): Promise<{ loss: number; losses: (number | null)[]; synced: SyncResult | null }> {
    const losses: (number | null)[] = this.drivers.map(() => null);
    await Promise.all(
      this.alive.map(async (r) => {
        try {
          losses[r] = (await this.drivers[r].step(batch(r), B, T, micro, lr)).loss;
        } catch (err) {
          this.drop(r, (err as Error).message);
        }
      }),
    );
    if (this.alive.length === 0) throw new StageCallError('every pipeline lost a peer');
    this.steps++;
    const synced = this.steps % this.o.diloco.every === 0 ? await this.sync() : null;
    const done = losses.filter((x): x is number => x !== null);
    return { loss: done.reduce((a, b) => a + b, 0) / Math.max(1, done.length), losses, synced };
  }

  private drop(r: number, reason: string): void {
    const k = this.alive.indexOf(r);
    if (k >= 0) {
      this.alive.splice(k, 1);
      this.dropped.push({ pipeline: r, step: this.steps, reason });
    }
  }

  /** Runs one pipeline's part of a sync; if its peer fails (not a refusal: a bug), the pipeline is dropped. */
  private async orDrop(r: number, what: string, f: () => Promise<void>): Promise<void> {
    try {
      await f();
    } catch (err) {
      if (err instanceof StageCallError && err.refused) throw err;
      this.drop(r, `${what}: ${(err as Error).message}`);
    }
  }

  /** The outer step: per stage, average the live replicas' pseudo-gradients and apply the mean on each. */
  async sync(): Promise<SyncResult> {
    const t0 = performance.now(),
      b0 = this.syncBytes;
    const d = this.o.diloco,
      S = this.o.stages.length;
    const signal = () => AbortSignal.timeout(this.o.callTimeoutMs ?? 60_000);
    const none = new Uint8Array(0);
    const codec = getCodec(d.codec, d.sparse);
    for (let i = 0; i < S; i++) {
      // Ask every live replica for its Δ; one that cannot answer drops its pipeline.
      const got: { r: number; delta: Float32Array }[] = [];
      let n = -1;
      await Promise.all(
        this.alive.map((r) =>
          this.orDrop(r, `sync of stage ${i}`, async () => {
            const args = { codec: d.codec, ...(d.sparse ?? {}) };
            const o = { maxBody: 1 << 30, signal: signal() };
            const rep = await this.client.call(this.o.stages[i][r], 'delta', args, none, o);
            // A stage peer's reply is input from another peer: replicas of one stage hold the same
            // tensors, the count is capped before anything is allocated, the body must be exactly
            // the codec's size for it, and the codec's parameters are ours, not the header's.
            const m = rep.head.n;
            if (m > MAX_STAGE_VALUES)
              throw new InvalidInputError(`stage ${i} replica ${r}: ${m} values is over the cap`);
            if (n >= 0 && m !== n) throw new InvalidInputError(`stage ${i} replica ${r}: ${m} values, others ${n}`);
            if (rep.body.length !== codec.encodedSize(m))
              throw new InvalidInputError(
                `stage ${i} replica ${r}: Δ of ${rep.body.length} bytes, want ${codec.encodedSize(m)}`,
              );
            n = m;
            this.syncBytes += rep.body.length;
            got.push({ r, delta: codec.decode(rep.body, m) });
          }),
        ),
      );
      if (got.length === 0) throw new StageCallError(`stage ${i}: no replica left to sync`);
      got.sort((a, b) => a.r - b.r);
      const mean = aggregate(
        got.map((g) => g.delta),
        got.map(() => 1),
      );
      const bytes = codec.encode(mean).bytes;
      await Promise.all(
        got
          .filter(({ r }) => this.alive.includes(r))
          .map(({ r }) =>
            this.orDrop(r, `outer step of stage ${i}`, async () => {
              const args = { lr: d.outer.lr, momentum: d.outer.momentum };
              await this.client.call(this.o.stages[i][r], 'outer', args, bytes, { signal: signal() });
              this.syncBytes += bytes.length;
            }),
          ),
      );
    }
    // Re-tie: the last stage's head copy takes the first stage's wte (per pipeline: identical after the sync).
    if (S > 1) {
      await Promise.all(
        this.alive.map((r) =>
          this.orDrop(r, 're-tie', async () => {
            const o = { maxBody: 1 << 30, signal: signal() };
            const w = await this.client.call(this.o.stages[0][r], 'embed', { set: false }, none, o);
            await this.client.call(this.o.stages[S - 1][r], 'embed', { set: true }, w.body, { signal: signal() });
            this.syncBytes += 2 * w.body.length;
          }),
        ),
      );
    }
    this.syncs++;
    return { pipelines: this.alive.length, bytes: this.syncBytes - b0, ms: performance.now() - t0 };
  }

  /** Mean validation loss through the first live pipeline (after a sync all pipelines hold the same weights). */
  async evaluate(batches: Batch[], B: number, T: number): Promise<number> {
    return await this.drivers[this.alive[0]].evaluate(batches, B, T);
  }
}
