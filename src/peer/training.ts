/**
 * The peer's training jobs: a round's H inner steps on its assigned shards, from the round's
 * base weights, then Δ = base − local, encoded by the run's codec (with error feedback) and
 * handed to the reducer as `trained`. Also the overlap policy (manifest hyper.overlap): a
 * `pretrain` hint starts round r+1's job before round r is applied — from θ_r ('shift',
 * 'delayed') or from this peer's guess of θ_{r+1} ('eager') — and the round's `train` effect
 * adopts or shifts it onto the real base. With audit on, each job also records the digest of
 * every step's state, whose Merkle root the trainer signs with its update, and the backend class
 * its steps ran on (verify/backend.ts). A GPU trainer (a manifest with an audit tolerance) reads
 * its state back after every step to hash it, and keeps each state as a bulk object listed in its
 * trace: validators of another class judge each step from its own pre-state (docs/WEBGPU.md).
 *
 * Training runs in this thread, one inner step at a time, yielding to the event loop between
 * steps with setImmediate so that gossip, bulk transfers and ticks keep flowing.
 *
 * Where Δ and its codec run: on the model's device when it can (a GPU model, an honest peer,
 * a codec configuration the GPU encoder takes: TrainModel.encodeUpdate, whose bytes equal the
 * host codec's bit for bit), so θ never comes back to the host; else on the host after one
 * read-back of θ per job. Decided once per peer (`codecOnDevice`).
 */
import type { Batch, TokenArray } from '../data/batches.js';
import { weightsHash } from '../model/checkpoint.js';
import type { DecodedManifest } from '../swarm/manifest.js';
import type { Codec, ErrorFeedback } from '../swarm/compress/index.js';
import { innerStep, innerStepOn, type InnerStepResult } from '../train/inner-step.js';
import { CpuTrainModel, gpuAuditRefusal, type TrainModel } from '../train/device-model.js';
import { roundBatches } from '../swarm/round-batches.js';
import { DeviceRefusedError, NonFiniteLossError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { sha256HexNode } from '../util/hash-node.js';
import { behave, type Behaviour } from '../verify/adversaries.js';
import { digestState, optHash, type StateDigest, type StepState } from '../verify/audit.js';
import { encodeState, encodeTrace, traceRoot } from '../verify/trace.js';
import type { PayloadStore } from './payloads.js';
import type { Weights } from './weights.js';
import type { Commitment } from './wire.js';

/** Inner steps at least this long (ms) are reported one by one on the log. */
const SLOW_STEP_MS = 1000;

/** A training job: inner steps for one round from one base, possibly started before its round (pretrain). */
interface TrainJob {
  round: number;
  baseHash: string;
  shards: number[];
  maxSteps: number;
  /** The base weights θ (a private copy: the shared θ may be updated underneath). */
  base: Float32Array;
  /** Local deadline; null while the job is only a pretrain hint. */
  until: number | null;
  startedAt: number;
  stop: boolean;
}

/** What the reducer's `train` / `pretrain` effects ask for. */
export interface TrainRequest {
  round: number;
  baseHash: string;
  shards: number[];
  steps: number;
  until: number | null;
}

export interface TrainingDeps {
  manifest: DecodedManifest;
  self: string;
  /**
   * The model on its device (src/train/device-model.ts): the H inner steps run there; θ comes
   * back to the host once per job for Δ = base − local.
   */
  model: TrainModel;
  codec: Codec;
  ef: ErrorFeedback | null;
  /** Form Δ and run the codec on the host even where the device could (A/B runs, debugging). */
  codecOnHost?: boolean;
  weights: Weights;
  payloads: PayloadStore;
  shardData: (shard: number, round: number) => Promise<TokenArray | null>;
  behave: Behaviour;
  /** The job is done: hand its update to the reducer. */
  trained: (round: number, updateHash: string, steps: number) => void;
  /** Audit on: record and publish this trainer's commitment. */
  commit: (c: Commitment) => void;
  stopped: () => boolean;
  debug: ((line: string) => void) | null;
  log: (line: string) => void;
}

export class Training {
  private job: TrainJob | null = null;
  /** This peer's last submitted update (for the eager guess). */
  private lastOwn: { round: number; hash: string } | null = null;
  /** A misbehaving peer's previous submission (for 'stale'). */
  private lastSubmitted: Float32Array | null = null;
  /** Milliseconds inside inner steps and inner steps run, ever. */
  computeMs = 0;
  innerSteps = 0;
  /** Sum and count of this peer's inner-step losses since the last report. */
  private lossAcc = { sum: 0, n: 0 };
  /** Δ, error feedback and the codec run on the model's device (null), or on the host (why). */
  readonly codecOnHostBecause: string | null;

  constructor(private readonly d: TrainingDeps) {
    // Adversarial behaviours (tests, simulations) rewrite Δ on the host.
    this.codecOnHostBecause =
      d.behave !== 'honest'
        ? `behaviour ${d.behave} rewrites Δ on the host`
        : d.codecOnHost
          ? 'asked to (TESSERA_DEVICE_CODEC=host)'
          : d.model.deviceCodecRefusal(d.codec, d.ef);
  }

  /** For the startup line: where Δ and the codec run. */
  codecPlace(): string {
    const why = this.codecOnHostBecause;
    return why === null
      ? `Δ and the ${this.d.codec.id} codec on ${this.d.model.device} (θ stays there)`
      : `Δ and the ${this.d.codec.id} codec on the host (${why})`;
  }

  /** Mean inner-step loss since the last call (NaN if none), and starts a new mean. */
  takeTrainLoss(): number {
    const l = this.lossAcc.n ? this.lossAcc.sum / this.lossAcc.n : NaN;
    this.lossAcc = { sum: 0, n: 0 };
    return l;
  }

  /** Stops the current job (all of them, or only round `round`'s). */
  stop(round?: number): void {
    if (this.job && (round === undefined || this.job.round === round)) this.job.stop = true;
  }

  /** Starts (or, for a matching pretrained job, confirms) the inner steps of a round. */
  start(e: TrainRequest): void {
    const { weights: w, manifest } = this.d;
    const hyper = manifest.manifest.hyper;
    const debug = this.d.debug;
    const cur = this.job;
    const same = cur !== null && !cur.stop && cur.round === e.round && cur.shards.join() === e.shards.join();
    const shifting = hyper.overlap === 'shift' || hyper.overlap === 'eager';
    if (
      same &&
      shifting &&
      e.until !== null &&
      e.baseHash === w.hash &&
      (cur.baseHash === e.baseHash || cur.baseHash === w.prev?.hash)
    ) {
      // 'shift'/'eager': the job began on θ_{r-1} (or this peer's guess of θ_r) before θ_r was
      // known; move it onto θ_r. Its update is then θ_r − local: only this round's own steps.
      // (After an empty round θ_r = θ_{r-1}: a 'shift' job moves by zero, an 'eager' one off its guess.)
      this.d.model.shiftParams(w.theta, cur.base);
      const now = w.theta;
      cur.base = now.slice();
      cur.baseHash = e.baseHash;
      cur.until = e.until;
      debug?.(`round ${e.round}: job shifted onto θ_r`);
      return;
    }
    if (same && cur.baseHash === e.baseHash) {
      if (e.until !== null) cur.until = e.until; // 'delayed': adopt the early steps
      debug?.(`round ${e.round}: job adopted`);
      return;
    }
    if (e.until !== null) {
      debug?.(
        `round ${e.round}: new job (had ${cur ? `r${cur.round} ${cur.baseHash.slice(0, 8)} stop=${cur.stop}` : 'none'}, ` +
          `want ${e.baseHash.slice(0, 8)}, prev ${w.prev?.hash.slice(0, 8)}, θ ${w.hash.slice(0, 8)})`,
      );
    }
    if (cur) cur.stop = true;
    const held = w.base(e.baseHash);
    if (!held) {
      this.d.log(`round ${e.round}: base ${e.baseHash.slice(0, 12)} not held, not training`);
      return;
    }
    // Without overlap θ stays put while the job runs (the round is applied only after every
    // update is in), so the job reads its base in place instead of holding a copy of θ (at
    // GPT-2 small, 0.5 GB); the job is dropped should θ move anyway (a resync).
    let base: Float32Array = hyper.overlap === 'none' && held === w.theta ? held : held.slice();
    const own = this.lastOwn;
    const ownDelta =
      own && e.until === null && hyper.overlap === 'eager' && e.baseHash === w.hash && own.round === e.round - 1
        ? this.d.payloads.delta(own.hash)
        : undefined;
    if (ownDelta) {
      // Guess θ_{r+1} = the outer step with our own (decoded) update standing in for the aggregate.
      base = w.outer.preview(w.theta, ownDelta, new Float32Array(w.length));
    }
    const job: TrainJob = {
      round: e.round,
      baseHash: e.baseHash,
      shards: [...e.shards],
      maxSteps: e.steps,
      base,
      until: e.until,
      startedAt: Date.now(),
      stop: false,
    };
    this.job = job;
    void this.run(job);
  }

  private async run(job: TrainJob): Promise<void> {
    await new Promise((r) => setImmediate(r));
    const { manifest: dm, model } = this.d;
    // Audit re-executes on the CPU deterministic kernels: only a CPU model can commit a trace.
    const cpu = model instanceof CpuTrainModel ? model : null;
    const m = dm.manifest,
      B = m.hyper.batch,
      T = m.model.ctx,
      P = this.d.weights.length;
    const halted = () => job.stop || this.d.stopped();
    // Exactly the assigned shards (fetched from peers the first time when the dataset is on IPFS).
    let data = await Promise.all(job.shards.map((sh) => this.d.shardData(sh, job.round)));
    if (this.d.behave === 'wrong-data') {
      // The adversary trains on other data than assigned: uniform random tokens.
      const rng = new Rng(job.round + 1);
      data = data.map((d) =>
        d ? (Uint32Array.from({ length: d.length }, () => rng.nextInt(m.model.vocabSize)) as unknown as TokenArray) : d,
      );
    }
    if (halted()) return;
    const refused = cpu ? null : gpuAuditRefusal(m.hyper.audit);
    if (refused) throw new DeviceRefusedError(`round ${job.round}: ${refused}`);
    const onDevice = this.codecOnHostBecause === null;
    // Audit (hyper.audit): the pre-state and the digest of the state after every step, whose
    // Merkle root this trainer signs with its update; on a GPU also each state, kept for validators.
    let start: StepState | null = null;
    if (cpu) {
      cpu.gpt.params.set(job.base);
      const opt = cpu.opt;
      if (m.hyper.audit) start = { theta: job.base.slice(), m: opt.m.slice(), v: opt.v.slice(), step: opt.step };
    } else {
      start = await model.exclusive(async () => {
        await model.setParams(job.base, onDevice);
        return m.hyper.audit ? { theta: job.base.slice(), ...(await model.optimizerState()) } : null;
      });
      if (halted()) return;
    }
    const digests: StateDigest[] = start ? [digestState(start)] : [];
    const stateObjects: string[] = [];
    const rb = roundBatches(
      dm.runId,
      job.round,
      job.shards.map((shard, j) => ({ shard, tokens: data[j] })),
      B,
      T,
    );
    const batch: Batch = { inputs: new Int32Array(B * T), targets: new Int32Array(B * T) };
    let steps = 0;
    let lastYield = performance.now();
    const jobT0 = lastYield;
    for (let i = 0; i < job.maxSteps && rb.sources.length > 0; i++) {
      if (halted() || (job.until !== null && Date.now() >= job.until)) break;
      rb.next(batch);
      const t0 = performance.now();
      let loss: number;
      try {
        const s = { batches: [batch], B, T, schedule: m.hyper.schedule, step: job.round * m.hyper.innerSteps + i };
        // The CPU steps synchronously, exactly as before devices; a GPU awaits its read-backs
        // (and, audited, reads its state back within the same turn on the device).
        const audited = start !== null;
        const { r, after } = cpu
          ? { r: innerStep(cpu.gpt, cpu.opt, s), after: null }
          : await model.exclusive(async (): Promise<{ r: InnerStepResult; after: StepState | null }> => {
              const res = await innerStepOn(model, s);
              if (!audited) return { r: res, after: null };
              return { r: res, after: { theta: await model.getParams(), ...(await model.optimizerState()) } };
            });
        ({ loss } = r);
        if (after) {
          digests.push(digestState(after));
          const bytes = encodeState(after);
          const h = sha256HexNode(bytes);
          this.d.payloads.putBlob(h, bytes, job.round);
          stateObjects.push(h);
        }
      } catch (err) {
        // The one rule (train/inner-step.ts): a non-finite loss ends the job; its earlier steps stand.
        if (err instanceof NonFiniteLossError) break;
        throw err;
      }
      this.lossAcc.sum += loss;
      this.lossAcc.n++;
      if (start && cpu)
        digests.push({ weights: weightsHash(cpu.gpt.params), opt: optHash(cpu.opt.m, cpu.opt.v, cpu.opt.step) });
      const t1 = performance.now();
      this.computeMs += t1 - t0;
      this.innerSteps++;
      steps++;
      // A slow step (a real-sized model) shows that the job is working: step, loss, rate, ETA.
      if (t1 - t0 >= SLOW_STEP_MS) {
        const perStep = (t1 - jobT0) / steps / 1000;
        const left = job.maxSteps - i - 1;
        this.d.log(
          `round ${job.round}: inner step ${i + 1}/${job.maxSteps}, loss ${loss.toFixed(3)}, ${perStep.toFixed(1)} s/step` +
            (left > 0 ? `, ETA ${Math.round(left * perStep)} s` : ''),
        );
      }
      // Let gossip, bulk transfers and ticks run, at most every 10 ms: an event-loop turn per
      // step of a small model costs a few percent of compute.
      if (t1 - lastYield >= 10) {
        await new Promise((r) => setImmediate(r));
        lastYield = performance.now();
      }
    }
    // Rounds are paced by the training budget (a tiny model finishes its H steps in
    // milliseconds; unpaced rounds would outrun joiners' snapshot downloads). Without overlap:
    // submit at `until` at the earliest. With overlap the job started at the last submission, so
    // it lasts at least trainMs and at most until `until`: when H steps take longer than trainMs
    // the peer never waits, and the next job starts the moment this one is submitted.
    const minEnd = (): number =>
      m.hyper.overlap === 'none' ? job.until! : Math.min(job.until!, job.startedAt + m.timing.trainMs);
    while (!halted() && (job.until === null || Date.now() < minEnd())) {
      await new Promise((r) =>
        setTimeout(r, job.until === null ? 20 : Math.max(1, Math.min(20, minEnd() - Date.now()))),
      );
    }
    if (this.job === job) this.job = null;
    if (halted()) return;
    if (job.base === this.d.weights.theta && this.d.weights.hash !== job.baseHash) {
      this.d.log(`round ${job.round}: θ moved under the job (a resync); its update is dropped`);
      return;
    }
    if (onDevice) {
      // Δ = base − θ, error feedback and the codec on the device; only the bytes come back.
      let hash = '0'.repeat(64);
      if (steps > 0) {
        const bytes = await model.exclusive(() => model.encodeUpdate(this.d.codec, this.d.ef));
        hash = sha256HexNode(bytes);
        this.d.payloads.putUpdate(hash, bytes, job.round, () => this.d.codec.decode(bytes, P));
        this.lastOwn = { round: job.round, hash };
        if (start) this.commitTrace(job.round, hash, steps, { digests, start, states: stateObjects }, model.backend);
      }
      this.d.trained(job.round, hash, steps);
      return;
    }
    // The one crossing of θ from the device: Δ, its codec and hash are computed on the host.
    const local = cpu ? cpu.gpt.params : await model.exclusive(() => model.getParams());
    if (halted()) return;
    // Δ goes into the CPU model's gradient buffer (rewritten by the next step anyway) rather
    // than a fresh P-float array.
    let delta: Float32Array = cpu ? cpu.gpt.grads : new Float32Array(P);
    for (let i = 0; i < P; i++) delta[i] = job.base[i] - local[i];
    const kind = this.d.behave;
    if (kind !== 'honest' && steps > 0) {
      // Earlier this round: the other peers' decoded updates already received.
      const earlier = [...this.d.payloads.heldUpdates(job.round)]
        .filter((u) => u.msg.from !== this.d.self)
        .map((u) => u.delta);
      const rng = new Rng(job.round * 7919 + 17);
      delta = behave(kind, {
        honest: delta,
        earlier,
        earlierKinds: earlier.map(() => 'honest' as const),
        previous: this.lastSubmitted,
        rng: () => rng.nextFloat(),
      });
      this.lastSubmitted = delta.slice();
    }
    let hash = '0'.repeat(64);
    if (steps > 0) {
      // Δ is scratch now (the gradient buffer, or behave()'s copy): error feedback may build on it in place.
      const enc = this.d.codec.encode(delta, this.d.ef ?? undefined, true);
      hash = sha256HexNode(enc.bytes);
      const bytes = enc.bytes; // enc.decoded is this codec's decode of them, made again when needed
      this.d.payloads.putUpdate(hash, bytes, job.round, () => this.d.codec.decode(bytes, P));
      this.lastOwn = { round: job.round, hash };
      if (start)
        this.commitTrace(
          job.round,
          hash,
          steps,
          { digests, start, ...(cpu ? {} : { states: stateObjects }) },
          cpu ? null : model.backend,
        );
    }
    this.d.trained(job.round, hash, steps);
  }

  /** Audit on: the trace as a bulk object and the signed commitment (a GPU trainer names its backend class). */
  private commitTrace(
    round: number,
    updateHash: string,
    steps: number,
    t: Parameters<typeof encodeTrace>[0],
    backend: Commitment['backend'] | null,
  ): void {
    const bytes = encodeTrace(t);
    const trace = sha256HexNode(bytes);
    this.d.payloads.putBlob(trace, bytes, round);
    this.d.commit({ round, updateHash, steps, root: traceRoot(t.digests), trace, ...(backend ? { backend } : {}) });
  }
}
