/**
 * Audits when trainers use GPUs, between real node processes (docs/WEBGPU.md): a run whose
 * manifest sets an audit tolerance admits trainers on WebGPU (SwiftShader here). Peer 0 validates
 * on the CPU: it re-executes each GPU trainer's round step by step from the trainer's own states
 * (fetched over the bulk protocol) and judges each step with the manifest's tolerance. Peer 1
 * trains honestly on the GPU and passes; peer 2 trains on the GPU on other data than assigned
 * (wrong-data): its first step is far beyond the tolerance, so the validator publishes a v2 fraud
 * proof, which peer 1 (another device, checking on its CPU kernels) verifies with one step. Same
 * rule as test/webgpu-kernels.test.ts: under CI=true a missing adapter fails; locally only a
 * missing chromium skips.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildManifest } from '../src/swarm/manifest-builder.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { SWIFTSHADER_ICD_PATHS } from '../src/kernels/webgpu/node-icd.js';
import { dataDirFor, preparePeer, spawnPeer, stopAll, type PeerProc, waitFor } from './support/swarm.js';
import type { AuditRecord, FraudRecord, RoundReport } from '../src/peer/node.js';

const CI = process.env.CI === 'true';
const icd = process.env.VK_ICD_FILENAMES ?? SWIFTSHADER_ICD_PATHS.find((p) => existsSync(p)) ?? null;
const skip = !icd && !CI ? 'chromium is not installed (no SwiftShader Vulkan ICD)' : false;

const root = mkdtempSync(join(tmpdir(), 'tessera-audit-gpu-swarm-'));
const peers: PeerProc[] = [];
after(async () => {
  await stopAll(peers, 2000);
  rmSync(root, { recursive: true, force: true });
});

test(
  'real peers: GPU trainers in a run with an audit tolerance; the honest one passes the CPU validator, a wrong-data one is proven a fraud',
  { skip, timeout: 300_000 },
  async () => {
    assert.ok(icd, 'CI=true: no SwiftShader Vulkan ICD for the WebGPU adapter (apt-get install chromium libvulkan1)');
    const { decoded } = buildManifest({
      vocab: 512,
      ctx: 32,
      dim: 32,
      layers: 1,
      heads: 2,
      batch: 2,
      inner: 3,
      lr: 3e-3,
      codec: 'fp32',
      shards: 8,
      seed: 11,
      // SwiftShader emulates the GPU on the CPU (and reads the state back after every step):
      // a generous budget, so that the GPU peers finish their steps in most rounds.
      trainMs: 6000,
      submitMs: 12000,
      commitMs: 1500,
      quorum: 1,
      minPeers: 1,
      maxMissed: 3,
      cacheDir: defaultCacheDir(),
      overlap: 'none',
      audit: 1,
      auditTolerance: 1e-3,
    });
    assert.deepEqual(decoded.manifest.hyper.audit, { p: 1, tolerance: { rel: 1e-3, outliers: 64, cap: 3 } });
    const run = join(root, 'run.json');
    writeFileSync(run, JSON.stringify(decoded.manifest));
    const specs = await Promise.all([0, 1, 2].map((i) => preparePeer(i, dataDirFor(root, i))));
    const behave = ['honest', 'honest', 'wrong-data'];
    const env = { VK_ICD_FILENAMES: icd!, TESSERA_WEBGPU_ADAPTER: 'swiftshader' };
    for (const s of specs) {
      peers.push(
        spawnPeer(s, {
          run,
          bootstrap: specs.map((x) => x.addr),
          genesisPeers: specs.map((x) => x.peerId),
          cacheDir: defaultCacheDir(),
          behave: behave[s.index],
          env,
          ...(s.index === 0 ? { validator: true } : { device: 'webgpu' as const }),
        }),
      );
    }
    const id = specs.map((s) => s.peerId);
    const audits = (): AuditRecord[] => peers[0].reports.flatMap((r) => r.audits ?? []);
    const frauds = (p: PeerProc): FraudRecord[] => p.reports.flatMap((r) => r.frauds ?? []);
    const fmt = (r: RoundReport) =>
      `${r.round}/${r.included}${r.audits ? `a${r.audits.map((a) => (a.ok ? '+' : '-')).join('')}` : ''}${r.frauds ? `f${r.frauds.length}` : ''}`;
    const of = (i: number) => audits().filter((a) => a.trainer === id[i]);
    await waitFor(
      peers,
      'audits of both GPU trainers and a checked fraud proof',
      () => of(1).some((a) => a.ok) && of(2).length > 0 && frauds(peers[1]).length >= 1,
      240_000,
      fmt,
    );
    for (const a of of(1)) assert.equal(a.ok, true, `round ${a.round}: the honest GPU trainer passes (${a.reason})`);
    for (const a of of(2)) {
      assert.equal(a.ok, false);
      assert.equal(a.reason, 'fraud at step 1', `round ${a.round}: wrong data is beyond the tolerance at step 1`);
    }
    const checked = frauds(peers[1]);
    assert.ok(
      checked.every((f) => f.trainer === id[2] && f.by === id[0] && f.k === 1 && f.verified),
      `peer 1 verified the proofs: ${JSON.stringify(checked)}`,
    );
    const ok = of(1).find((a) => a.ok)!;
    process.stderr.write(
      `audit-gpu-swarm: ${audits().length} audits; the honest GPU trainer's round: ${ok.steps} CPU steps, ${ok.ms.toFixed(0)} ms; ${checked.length} v2 fraud proofs verified by peer 1\n`,
    );
  },
);
