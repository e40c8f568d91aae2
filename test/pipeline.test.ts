/**
 * Pipeline training over libp2p (issue 8): 3 stage peers and a driver on loopback train the
 * same model as one process, step for step; each peer holds only its stage; a replicated stage
 * loses a peer mid-run and no step is lost.
 */
import { test } from 'node:test';
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { GPT } from '../src/model/gpt.js';
import { AdamW, DEFAULT_ADAMW } from '../src/train/adamw.js';
import { loadKernels } from '../src/kernels/index.js';
import type { Kernels } from '../src/kernels/api.js';
import { paramSpecs } from '../src/model/params.js';
import { splitStages, stageSpecs } from '../src/model/stage.js';
import { Rng } from '../src/util/rng.js';
import { startLocalPipeline, type LocalPipeline } from '../src/pipeline/local.js';
import { exactBytes } from '../src/pipeline/act-codec.js';
import { gatherLayers } from '../src/pipeline/rebuild.js';
import { sealed } from '../src/pipeline/stage/shares.js';
import { StageClient, libp2pTransport } from '../src/pipeline/stage-client.js';
import type { StageServer } from '../src/pipeline/stage-server.js';
import type { Batch } from '../src/data/batches.js';

const cfg = { vocabSize: 64, ctx: 16, dim: 32, layers: 3, heads: 4 };
const B = 4,
  T = 16,
  MICRO = 2;

function batches(n: number, seed: number): Batch[] {
  const rng = new Rng(seed);
  // A learnable stream: each token follows the previous one by a fixed rule, with some noise.
  return Array.from({ length: n }, () => {
    const inputs = new Int32Array(B * T),
      targets = new Int32Array(B * T);
    for (let i = 0; i < B * T; i++) {
      inputs[i] = rng.nextInt(cfg.vocabSize);
      targets[i] = rng.nextFloat() < 0.9 ? (inputs[i] * 7 + 3) % cfg.vocabSize : rng.nextInt(cfg.vocabSize);
    }
    return { inputs, targets };
  });
}

/** A GPT initialized from `seed` (the single-process reference) and the kernels it runs on. */
function reference(seed: number): { k: Kernels; ref: GPT } {
  const k = loadKernels({ threads: 1 });
  const ref = new GPT(cfg, k);
  ref.init(seed);
  return { k, ref };
}

/** 3 stage peers and a driver on loopback, started from `genesis` (fp32 activations unless `o` says otherwise). */
function pipe(
  k: Kernels,
  genesis: Float32Array,
  o: Partial<Parameters<typeof startLocalPipeline>[0]> = {},
): Promise<LocalPipeline> {
  return startLocalPipeline({
    config: cfg,
    stages: 3,
    kernels: k,
    adamw: DEFAULT_ADAMW,
    codec: { id: 'fp32' },
    genesis: genesis.slice(),
    ...o,
  });
}

/** Every file under a directory. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? filesUnder(join(dir, e.name)) : e.isFile() ? [join(dir, e.name)] : [],
  );
}

/** 32-byte windows of a stage's weights, spread over its buffer, each of 8 distinct floats (not an init constant). */
function fingerprint(params: Float32Array, n = 64): Buffer[] {
  const out: Buffer[] = [];
  const bytes = Buffer.from(params.buffer, params.byteOffset, params.byteLength);
  for (let k = 0; k < params.length - 8 && out.length < n; k += Math.max(8, Math.floor(params.length / (2 * n)))) {
    if (new Set(params.subarray(k, k + 8)).size < 8) continue;
    out.push(Buffer.from(bytes.subarray(4 * k, 4 * k + 32)));
  }
  return out;
}

/** The pipeline's weights (reassembled from a live peer of each stage: a test-only view) against one process's. */
function weightDiff(lp: LocalPipeline, ref: GPT): { max: number; mean: number } {
  const full = new Float32Array(ref.params.length);
  for (const row of lp.servers) row.find((s) => lp.alive(s))!.stage.writeToFull(full);
  let max = 0,
    sum = 0;
  for (let i = 0; i < full.length; i++) {
    const d = Math.abs(full[i] - ref.params[i]);
    max = Math.max(max, d);
    sum += d;
  }
  return { max, mean: sum / full.length };
}

test(
  '3 stage peers over libp2p train exactly like one process (fp32), and each holds only its stage',
  { timeout: 60_000 },
  async () => {
    const { k, ref } = reference(5);
    const genesis = ref.params.slice();
    const opt = new AdamW(cfg, DEFAULT_ADAMW, k);
    const data = batches(12, 1);
    const lp = await pipe(k, genesis, { inflight: 1 });
    try {
      for (const [i, b] of data.entries()) {
        const got = await lp.driver.step(b, B, T, MICRO, 1e-2);
        // The single-process reference: the same micro-batches, summed in the same order.
        ref.zeroGrad();
        let want = 0;
        for (let m = 0; m < MICRO; m++) {
          const n = (B / MICRO) * T;
          want +=
            ref.forwardBackward(
              b.inputs.subarray(m * n, (m + 1) * n),
              b.targets.subarray(m * n, (m + 1) * n),
              B / MICRO,
              T,
              1 / MICRO,
            ) / MICRO;
        }
        const norm = opt.update(ref.params, ref.grads, 1e-2);
        assert.ok(Math.abs(got.loss - want) < 1e-4 * Math.max(1, want), `step ${i}: loss ${got.loss} vs ${want}`);
        assert.ok(
          Math.abs(got.gradNorm - norm) < 1e-3 * Math.max(1, norm),
          `step ${i}: grad norm ${got.gradNorm} vs ${norm}`,
        );
        // Exact activation traffic: per micro-batch, S−1 boundaries × (out + in) each way through the driver.
        assert.equal(got.actBytes, MICRO * 2 * 2 * 2 * exactBytes({ id: 'fp32' }, (B / MICRO) * T, cfg.dim));
      }
      // The weights, reassembled from the stages (a test-only view), match the reference.
      // Only summation order differs (the tied embedding's two gradient halves are summed after, not
      // during, accumulation), and Adam turns ~1e-7 gradient differences on near-zero gradients
      // into up to ~lr: the weights agree to well under one step's size, and on average to ~1e-6.
      const diff = weightDiff(lp, ref);
      assert.ok(
        diff.max < 2e-3 && diff.mean < 1e-5,
        `weights after 12 steps differ by ${diff.max} (max), ${diff.mean} (mean)`,
      );
      const loss0 = await lp.driver.evaluate(data.slice(0, 2), B, T);
      assert.ok(Number.isFinite(loss0));
      // Containment: each stage peer allocated exactly its own tensors, nothing else.
      const specs = splitStages(cfg, 3);
      for (const [i, row] of lp.servers.entries()) {
        const st = row[0].stage;
        assert.deepEqual(
          st.tensorNames(),
          stageSpecs(cfg, specs[i]).map((t) => t.name),
        );
        assert.equal(
          st.params.length,
          stageSpecs(cfg, specs[i]).reduce((t, x) => t + x.size, 0),
        );
        assert.ok(
          st.params.length < ref.params.length * 0.75,
          `stage ${i} holds ${st.params.length} of ${ref.params.length} floats`,
        );
      }
      const owned = lp.servers.flatMap((row) => row[0].stage.tensorNames()).filter((n) => n !== 'head');
      assert.deepEqual(
        owned.sort(),
        paramSpecs(cfg)
          .map((t) => t.name)
          .sort(),
        'together the stages hold the model once (plus the tied head copy)',
      );
    } finally {
      await lp.close();
    }
  },
);

test(
  'a replicated stage loses a peer mid-run: no step is lost, the loss keeps falling; int8 activations still learn',
  { timeout: 60_000 },
  async () => {
    const { k, ref } = reference(6);
    const data = batches(30, 2);
    const lp = await pipe(k, ref.params, { replicas: 2, codec: { id: 'int8' } });
    try {
      const losses: number[] = [];
      for (const [i, b] of data.entries()) {
        if (i === 10) await lp.kill(1, 0); // stage 1's first replica dies between steps...
        const p = lp.driver.step(b, B, T, MICRO, 1e-2);
        if (i === 20) await lp.kill(2, 1); // ...and stage 2's second one in the middle of a step
        losses.push((await p).loss);
      }
      assert.equal(losses.length, 30, 'every step completed');
      assert.deepEqual(
        lp.driver.replicas().map((r) => r.length),
        [2, 1, 1],
      );
      assert.equal(lp.driver.dropped.length, 2);
      const first = losses.slice(0, 5).reduce((t, x) => t + x, 0) / 5,
        last = losses.slice(-5).reduce((t, x) => t + x, 0) / 5;
      assert.ok(last < first - 0.3, `loss falls through both failures (${first.toFixed(3)} → ${last.toFixed(3)})`);
      // The surviving replicas of stage 0 are still bit-identical (active replication).
      const [a, b] = lp.servers[0].map((s) => s.stage.params);
      assert.deepEqual(a, b);
    } finally {
      await lp.close();
    }
  },
);

test(
  "the only peer of a stage dies: a fresh peer restores it from XOR checkpoint shares held by two other stages, and training resumes; no peer's disk holds another stage's weights",
  { timeout: 90_000 },
  async () => {
    const { k, ref } = reference(8);
    const data = batches(24, 3);
    const lp = await pipe(k, ref.params, { checkpoints: true });
    try {
      const losses: number[] = [];
      const atCheckpoint: Float32Array[] = [];
      for (const [i, b] of data.entries()) {
        if (i === 6) {
          await lp.driver.checkpoint();
          for (const row of lp.servers) atCheckpoint.push(row[0].stage.params.slice());
        }
        if (i === 9) await lp.kill(1, 0);
        losses.push((await lp.driver.step(b, B, T, MICRO, 1e-2)).loss);
      }
      assert.equal(losses.length, 24, 'every step completed');
      assert.equal(lp.driver.recoveries.length, 1);
      const rec = lp.driver.recoveries[0];
      assert.equal(rec.stage, 1);
      assert.equal(rec.fromStep, 6, 'restored to the checkpoint taken after 6 steps');
      // The restored stage is stage 1 exactly (its tensors), and it has trained on since.
      const restored = lp.servers[1].at(-1)!.stage;
      assert.deepEqual(restored.tensorNames(), lp.servers[1][0].stage.tensorNames());
      const first = losses.slice(0, 4).reduce((t, x) => t + x, 0) / 4,
        last = losses.slice(-4).reduce((t, x) => t + x, 0) / 4;
      assert.ok(
        last < first - 0.3,
        `the loss keeps falling after the recovery (${first.toFixed(3)} → ${last.toFixed(3)})`,
      );
      // Containment: the share holders (stages 2 and 0) still hold only their own stage's tensors.
      assert.ok(
        lp.servers[2][0].stage
          .tensorNames()
          .every((n) => n.startsWith('h.2.') || ['lnf.w', 'lnf.b', 'head'].includes(n)),
      );
      assert.ok(lp.servers[0][0].stage.tensorNames().every((n) => n.startsWith('h.0.') || ['wte', 'wpe'].includes(n)));
      process.stderr.write(
        `pipeline: stage ${rec.stage} restored by a fresh peer in ${rec.ms.toFixed(0)} ms (checkpoint of step ${rec.fromStep}, ${lp.driver.checkpoints.get(1)!.bytes} bytes as two shares)\n`,
      );

      // Containment on disk: no peer's data directory (libp2p key, IPFS blocks and datastore) holds
      // another stage's weights, as of the checkpoint or now, in any byte alignment. Dead peers' too.
      const all = lp.servers.flatMap((row, stage) => row.map((srv) => ({ srv, stage })));
      const found = (dir: string, ws: Buffer[]) => {
        let n = 0;
        for (const f of filesUnder(dir)) {
          const buf = readFileSync(f);
          for (const w of ws) if (buf.indexOf(w) >= 0) n++;
        }
        return n;
      };
      const windows = [0, 1, 2].map((j) => [
        ...fingerprint(atCheckpoint[j]),
        ...fingerprint(lp.servers[j].at(-1)!.stage.params),
      ]);
      let scanned = 0;
      for (const { srv, stage } of all) {
        for (const j of [0, 1, 2]) {
          if (j === stage) continue;
          assert.equal(
            found(lp.dataDirOf(srv), windows[j]),
            0,
            `peer of stage ${stage} (${lp.alive(srv) ? 'live' : 'dead'}) has stage ${j}'s weights on disk`,
          );
          scanned++;
        }
      }
      // The scan does find weights where they are: the plaintext in a file, and the two shares XORed.
      const probe = join(lp.dataDirOf(lp.servers[2][0]), 'probe.bin');
      writeFileSync(probe, new Uint8Array(atCheckpoint[0].buffer));
      assert.equal(
        found(lp.dataDirOf(lp.servers[2][0]), windows[0].slice(0, 8)),
        8,
        'the scan finds plaintext weights',
      );
      rmSync(probe);
      const size = lp.driver.checkpoints.get(1)!.bytes;
      const sized = all
        .flatMap(({ srv }) => filesUnder(lp.dataDirOf(srv)))
        .filter((f) => statSync(f).size === size)
        .map((f) => readFileSync(f));
      // The shares are sealed (stage/shares.ts): only with the driver's seal do two of them XOR to it.
      const seal = lp.driver.checkpoints.get(1)!.seal;
      let joint = 0,
        raw = 0;
      const xor = (a: Uint8Array, b: Uint8Array) => {
        const x = Buffer.alloc(size);
        for (let i = 0; i < size; i++) x[i] = a[i] ^ b[i];
        return fingerprint(atCheckpoint[1]).every((w) => x.indexOf(w) >= 0);
      };
      for (let a = 0; a < sized.length; a++) {
        for (let b = a + 1; b < sized.length; b++) {
          if (xor(sized[a], sized[b])) raw++;
          const [p, q] = [sized[a], sized[b]];
          if (xor(sealed(p, seal, 0), sealed(q, seal, 1)) || xor(sealed(q, seal, 0), sealed(p, seal, 1))) joint++;
        }
      }
      assert.ok(
        joint >= 1,
        `two shares on two holders' disks, unsealed, XOR to stage 1's checkpoint (${sized.length} files of ${size} bytes)`,
      );
      assert.equal(raw, 0, 'two sealed shares XOR to nothing without the seal');
      process.stderr.write(
        `pipeline: containment on disk: ${scanned} (peer, foreign stage) pairs scanned, none found; the two shares of stage 1, unsealed, XOR to it (not without the seal)\n`,
      );
    } finally {
      await lp.close();
    }
  },
);

test(
  'no checkpoint: a lost middle stage is rebuilt on a fresh peer from its neighbours (CheckFree), as their gradient-weighted mean sent in masked parts; training resumes',
  { timeout: 90_000 },
  async () => {
    const { k, ref } = reference(8);
    const data = batches(24, 4);
    const lp = await pipe(k, ref.params, { rebuild: 'fallback' });
    try {
      // Refusals first: a serving peer is not rebuilt, and only named lenders may send parts.
      const client = new StageClient(libp2pTransport(lp.driverHost));
      const o = () => ({ signal: AbortSignal.timeout(5000) });
      const peer = (srv: StageServer) => lp.peerOf(srv);
      const id = '0'.repeat(16);
      const [s0, s1, s2] = lp.servers.map((row) => row[0]);
      const expect = { id, from: [peer(s0), peer(s2)] };
      await assert.rejects(client.control(peer(s1), 'expect', expect, o()), /already serving stage 1/);
      const absorb = { id, layout: '0'.repeat(64), step: 0 };
      await assert.rejects(client.control(peer(s1), 'absorb', absorb, o()), /no rebuild 0+ expected/);
      const lend = { id, to: peer(s0), seed: '0'.repeat(64), sign: 1 as const, weight: 0.5 };
      await assert.rejects(client.control(peer(s0), 'lend', lend, o()), /does not lend to itself/);
      const losses: number[] = [];
      let worst = -1;
      for (const [i, b] of data.entries()) {
        if (i !== 9) {
          losses.push((await lp.driver.step(b, B, T, MICRO, 1e-2)).loss);
          continue;
        }
        // The neighbours' layers as they stand (a test-only view); then the only peer of stage 1 dies.
        const L = gatherLayers(lp.servers[0][0].stage),
          R = gatherLayers(lp.servers[2][0].stage);
        await lp.kill(1, 0);
        // lr 0 (no step, no decay): after it the rebuilt weights are exactly as rebuilt.
        losses.push((await lp.driver.step(b, B, T, MICRO, 0)).loss);
        const [a, c] = lp.driver.recoveries[0].mix!;
        const got = gatherLayers(lp.servers[1].at(-1)!.stage);
        worst = 0;
        for (let j = 0; j < got.length; j++) worst = Math.max(worst, Math.abs(got[j] - (a * L[j] + c * R[j])));
      }
      assert.ok(
        worst >= 0 && worst <= 2 ** -23,
        `the rebuilt layers are a·θ₀ + b·θ₂ to the fixed-point step (off by ${worst})`,
      );
      assert.equal(losses.length, 24, 'every step completed');
      assert.equal(lp.driver.recoveries.length, 1);
      const rec = lp.driver.recoveries[0];
      assert.equal(rec.how, 'neighbours');
      assert.equal(rec.stage, 1);
      assert.equal(rec.fromStep, 9, 'rebuilt from neighbours that had taken 9 steps');
      assert.ok(
        Math.abs(rec.mix![0] + rec.mix![1] - 1) < 1e-12 && rec.mix!.every((x) => x > 0 && x < 1),
        `weights ${rec.mix}`,
      );
      const rebuilt = lp.servers[1].at(-1)!;
      assert.deepEqual(
        rebuilt.stage.tensorNames(),
        lp.servers[1][0].stage.tensorNames(),
        "the fresh peer holds stage 1's tensors only",
      );
      assert.ok(lp.alive(rebuilt) && rebuilt.ready());
      const first = losses.slice(0, 4).reduce((t, x) => t + x, 0) / 4,
        last = losses.slice(-4).reduce((t, x) => t + x, 0) / 4;
      assert.ok(
        last < first - 0.3,
        `the loss keeps falling after the rebuild (${first.toFixed(3)} → ${last.toFixed(3)})`,
      );
      process.stderr.write(
        `pipeline: stage 1 rebuilt from its neighbours (weights ${rec.mix!.map((x) => x.toFixed(3)).join(' : ')}) in ${rec.ms.toFixed(0)} ms; loss ${losses[8].toFixed(3)} before, ${losses[9].toFixed(3)} on the rebuilt stage, ${last.toFixed(3)} at the end\n`,
      );
    } finally {
      await lp.close();
    }
  },
);

test(
  'a rebuild needs a middle stage: losing the first stage without a checkpoint fails the step with a clear error; with one, an end stage is restored even under prefer',
  { timeout: 60_000 },
  async () => {
    const { k, ref } = reference(8);
    const lp = await pipe(k, ref.params, { rebuild: 'fallback' });
    try {
      const [b] = batches(1, 5);
      await lp.driver.step(b, B, T, MICRO, 1e-2);
      await lp.kill(0, 0);
      await assert.rejects(lp.driver.step(b, B, T, MICRO, 1e-2), /only a middle stage can be rebuilt/);
      assert.equal(lp.driver.recoveries.length, 0);
    } finally {
      await lp.close();
    }
    // 'prefer' rebuilds middle stages only: a lost last stage still comes back from its checkpoint.
    const lp2 = await pipe(k, ref.params, { checkpoints: true, rebuild: 'prefer' });
    try {
      const [b] = batches(1, 6);
      await lp2.driver.step(b, B, T, MICRO, 1e-2);
      await lp2.driver.checkpoint();
      await lp2.kill(2, 0);
      await lp2.driver.step(b, B, T, MICRO, 1e-2);
      assert.deepEqual(
        lp2.driver.recoveries.map((r) => [r.stage, r.how, r.fromStep]),
        [[2, 'checkpoint', 1]],
      );
    } finally {
      await lp2.close();
    }
  },
);

test(
  'tessera pipeline --json: trains through the stage peers, survives the kill drill, samples through the stage holders',
  { timeout: 120_000 },
  async () => {
    const { spawnSync } = await import('node:child_process');
    const { fileURLToPath } = await import('node:url');
    const { join, dirname } = await import('node:path');
    const bin = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'tessera.js');
    const run = (...args: string[]) =>
      spawnSync(process.execPath, [bin, 'pipeline', ...args], { encoding: 'utf8', timeout: 110_000 });
    const r = run(
      '--stages',
      '3',
      '--layers',
      '3',
      '--steps',
      '12',
      '--checkpoint-every',
      '4',
      '--kill',
      '2@9',
      '--json',
    );
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as {
      steps: number;
      valLoss: number;
      recoveries: { stage: number; fromStep: number }[];
      sample: string;
      usagePerStage: number[];
      credits: { score: number }[];
    };
    assert.equal(j.steps, 12);
    assert.ok(Number.isFinite(j.valLoss) && j.valLoss < 6.3);
    assert.deepEqual(
      j.recoveries.map((x) => [x.stage, x.fromStep]),
      [[2, 8]],
    );
    assert.ok(j.sample.length > 0 && j.usagePerStage.length === 3 && j.usagePerStage.every((u) => u > 0));
    assert.ok(Math.abs(j.credits.reduce((t, c) => t + c.score, 0) - 1) < 1e-9);
    // No checkpoints: the middle stage is rebuilt from its neighbours instead; the ends cannot be.
    const rb = run(
      '--stages',
      '3',
      '--layers',
      '3',
      '--steps',
      '12',
      '--checkpoint-every',
      '0',
      '--rebuild',
      'fallback',
      '--kill',
      '1@9',
      '--json',
    );
    assert.equal(rb.status, 0, rb.stderr);
    const jr = JSON.parse(rb.stdout) as {
      steps: number;
      recoveries: { stage: number; how: string; fromStep: number }[];
    };
    assert.deepEqual(
      jr.recoveries.map((x) => [x.stage, x.how, x.fromStep]),
      [[1, 'neighbours', 9]],
    );
    const end = run(
      '--stages',
      '3',
      '--layers',
      '3',
      '--checkpoint-every',
      '0',
      '--rebuild',
      'fallback',
      '--kill',
      '2@9',
    );
    assert.notEqual(end.status, 0);
    assert.match(end.stderr, /middle stage only; stage 2 needs --checkpoint-every > 0/);
    const bad = run('--stages', '5', '--layers', '3');
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /--stages 5 is more than --layers 3/);
  },
);

test(
  'asynchronous pipelining: no barrier between steps, gradients banked per batch, updates in order; it learns like the synchronous schedule, with and without look-ahead weights',
  { timeout: 90_000 },
  async () => {
    const { k, ref } = reference(8);
    const data = batches(40, 4);
    const run = async (mode: 'sync' | 'async' | 'lookahead'): Promise<number[]> => {
      const lp = await pipe(k, ref.params);
      try {
        if (mode === 'sync') {
          const out: number[] = [];
          for (const b of data) out.push((await lp.driver.step(b, B, T, MICRO, 1e-2)).loss);
          return out;
        }
        const order: number[] = [];
        const losses = await lp.driver.trainAsync((i) => data[i], data.length, B, T, MICRO, 1e-2, {
          window: 6,
          lookahead: mode === 'lookahead' ? 1 : 0,
          onStep: (b) => order.push(b),
        });
        assert.deepEqual(
          order,
          data.map((_, i) => i),
          'updates applied once per batch, in batch order',
        );
        // Every stage took one optimizer step per batch, and no banked gradients are left.
        for (const row of lp.servers) assert.equal(row[0].stats.steps, data.length);
        return losses;
      } finally {
        await lp.close();
      }
    };
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const sync = await run('sync'),
      asyn = await run('async'),
      look = await run('lookahead');
    for (const [name, ls] of [
      ['sync', sync],
      ['async', asyn],
      ['lookahead', look],
    ] as const) {
      assert.ok(ls.every(Number.isFinite), `${name}: finite losses`);
      // How stale an asynchronous gradient is depends on timing (up to window − 1 updates): on a
      // quiet machine every stage keeps the window full and the async runs learn least (4.11 →
      // 3.68 in one run, against 0.8 or more under load), so they must fall by 0.25, sync by 0.5.
      assert.ok(
        mean(ls.slice(-5)) < mean(ls.slice(0, 5)) - (name === 'sync' ? 0.5 : 0.25),
        `${name} learns: ${mean(ls.slice(0, 5)).toFixed(3)} → ${mean(ls.slice(-5)).toFixed(3)}`,
      );
    }
    process.stderr.write(
      `pipeline async: last-5 train loss sync ${mean(sync.slice(-5)).toFixed(3)}, async ${mean(asyn.slice(-5)).toFixed(3)}, look-ahead ${mean(look.slice(-5)).toFixed(3)}\n`,
    );
  },
);

test(
  'balanced routing (SWARM): each micro-batch takes one replica per stage by throughput; replicas sum their gradients and stay identical; a replica dying mid-step costs a retry, not a step',
  { timeout: 90_000 },
  async () => {
    const { k, ref } = reference(9);
    const genesis = ref.params.slice();
    const opt = new AdamW(cfg, DEFAULT_ADAMW, k);
    const data = batches(16, 5);
    // Replica 0 of each stage announces 3× the throughput of replica 1.
    let fast = new Set<string>();
    const lp = await pipe(k, genesis, { replicas: 2, routing: 'balance', throughputOf: (p) => (fast.has(p) ? 3 : 1) });
    fast = new Set(lp.servers.map((row) => lp.peerOf(row[0])));
    const MB = 4; // micro-batches per step, all in flight at once
    try {
      for (const [i, b] of data.entries()) {
        if (i === 8) {
          // Stage 1's fast replica dies in the middle of a step.
          const p = lp.driver.step(b, B, T, MB, 1e-2);
          await new Promise((r) => setTimeout(r, 5));
          await lp.kill(1, 0);
          await p;
        } else {
          await lp.driver.step(b, B, T, MB, 1e-2);
        }
        // The same step in one process: replicas together must compute the whole batch's gradient once.
        ref.zeroGrad();
        const n = (B / MB) * T;
        for (let m = 0; m < MB; m++)
          ref.forwardBackward(
            b.inputs.subarray(m * n, (m + 1) * n),
            b.targets.subarray(m * n, (m + 1) * n),
            B / MB,
            T,
            1 / MB,
          );
        opt.update(ref.params, ref.grads, 1e-2);
      }
      // Replicas of a stage hold identical bits; and the weights match one process (summation order aside).
      for (const [i, row] of lp.servers.entries()) {
        const alive = row.filter((s) => lp.alive(s));
        for (const s of alive.slice(1))
          assert.deepEqual(s.stage.params, alive[0].stage.params, `stage ${i}: replicas identical`);
      }
      const maxDiff = weightDiff(lp, ref).max;
      assert.ok(maxDiff < 5e-3, `weights match one process to ${maxDiff}`);
      // Load went by throughput (the fast replicas took more micro-batches), and no micro-batch ran twice in full.
      for (const [i, row] of lp.servers.entries()) {
        if (i === 1) continue;
        assert.ok(
          row[0].stats.tokens > row[1].stats.tokens && row[1].stats.tokens > 0,
          `stage ${i}: ${row[0].stats.tokens} vs ${row[1].stats.tokens} tokens`,
        );
      }
      assert.deepEqual(
        lp.driver.replicas().map((r) => r.length),
        [2, 1, 2],
      );
      assert.ok(lp.driver.dropped.some((d) => d.stage === 1));
      process.stderr.write(
        `pipeline balanced: max weight diff ${maxDiff.toExponential(2)}; reroutes ${lp.driver.reroutes}; tokens per replica ${lp.servers.map((row) => row.map((s) => s.stats.tokens).join('/')).join(', ')}\n`,
      );
    } finally {
      await lp.close();
    }
  },
);

test(
  'learned bottleneck over libp2p: only k values per token cross each boundary (exact bytes), the bottleneck trains, and the model learns',
  { timeout: 60_000 },
  async () => {
    const { k, ref } = reference(10);
    const data = batches(30, 6);
    const K = 4;
    const lp = await pipe(k, ref.params, { codec: { id: 'int8' }, bottleneck: K });
    try {
      const down0 = lp.servers[0][0].stage.params.slice(); // includes bneck.down
      const losses: number[] = [];
      for (const b of data) {
        const r = await lp.driver.step(b, B, T, MICRO, 1e-2);
        assert.equal(r.actBytes, MICRO * 2 * 2 * 2 * exactBytes({ id: 'int8' }, (B / MICRO) * T, K));
        losses.push(r.loss);
      }
      assert.ok(
        losses.slice(-5).reduce((a, b) => a + b) / 5 < losses.slice(0, 5).reduce((a, b) => a + b) / 5 - 0.3,
        `learns: ${losses[0].toFixed(3)} → ${losses.at(-1)!.toFixed(3)}`,
      );
      const st0 = lp.servers[0][0].stage,
        spec = st0.specs.find((t) => t.name === 'bneck.down')!;
      let moved = 0;
      for (let i = spec.offset; i < spec.offset + spec.size; i++)
        moved = Math.max(moved, Math.abs(st0.params[i] - down0[i]));
      assert.ok(moved > 1e-3, `the bottleneck itself trained (max change ${moved})`);
      assert.ok(
        lp.servers[1][0].stage.tensorNames().includes('bneck.up') &&
          lp.servers[1][0].stage.tensorNames().includes('bneck.down'),
      );
    } finally {
      await lp.close();
    }
  },
);
