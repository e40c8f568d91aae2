/**
 * The swarm on GPUs: `tessera demo --device webgpu --peers 2 --rounds 5` runs two peer processes
 * whose inner steps run on WebGPU (SwiftShader here: no GPU). Both peers open the same adapter,
 * but agreement does not rest on that: the pseudo-gradient, its codec, the outer step and the
 * weights hash are computed on the host, so the peers must reach identical hashes after every
 * round. Also: training progressed (inner steps ran, validation loss fell), and a run audited bit
 * for bit (no audit tolerance) refuses --device webgpu with a clear error that names the way in
 * (test/audit-gpu-swarm.test.ts runs GPU trainers in a run with a tolerance). Same rule as test/webgpu-kernels.test.ts: under
 * CI=true a missing adapter fails; locally only a missing chromium skips.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { brownDocuments } from '../src/data/brown.js';
import { SWIFTSHADER_ICD_PATHS } from '../src/kernels/webgpu/node-icd.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = join(root, 'bin', 'tessera.js');
const CI = process.env.CI === 'true';
const icd = process.env.VK_ICD_FILENAMES ?? SWIFTSHADER_ICD_PATHS.find((p) => existsSync(p)) ?? null;
const skip = !icd && !CI ? 'chromium is not installed (no SwiftShader Vulkan ICD)' : false;
if (skip) console.log(`# webgpu-swarm skipped: ${skip}`);

interface Row {
  round?: number;
  agree?: boolean;
  peers?: number;
  applied?: number;
  valLoss?: number;
  innerStepsPerPeer?: number;
  weightsHash?: string;
  seconds?: number;
}

test('two peers training on webgpu agree on the weights hash after every round', { skip, timeout: 300_000 }, () => {
  assert.ok(icd, 'CI=true: no SwiftShader Vulkan ICD for the WebGPU adapter (apt-get install chromium libvulkan1)');
  const dir = mkdtempSync(join(tmpdir(), 'tessera-gpu-swarm-'));
  try {
    const t0 = Date.now();
    const r = spawnSync(
      process.execPath,
      [
        bin,
        'demo',
        '--json',
        '--device',
        'webgpu',
        '--peers',
        '2',
        '--rounds',
        '5',
        '--inner',
        '4',
        '--no-dashboard',
        '--dir',
        join(dir, 'demo'),
      ],
      { encoding: 'utf8', timeout: 280_000, env: { ...process.env, VK_ICD_FILENAMES: icd! } },
    );
    assert.equal(r.status, 0, `demo --device webgpu failed:\n${r.stderr}`);
    assert.match(r.stderr, /peer 0: training on webgpu \(adapter .*swiftshader/i, 'peer 0 trains on the adapter');
    assert.match(r.stderr, /peer 1: training on webgpu/, 'peer 1 trains on the adapter');
    // Δ, error feedback and the sparse codec run on the GPU: θ does not come back to the host.
    for (const p of [0, 1])
      assert.match(
        r.stderr,
        new RegExp(`peer ${p}: .*Δ and the sparse codec on webgpu`),
        `peer ${p} encodes on the GPU`,
      );
    const rows = r.stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Row)
      .filter((x) => x.round !== undefined);
    assert.deepEqual(
      rows.map((x) => x.round),
      [0, 1, 2, 3, 4],
    );
    for (const x of rows) {
      assert.equal(x.peers, 2, `round ${x.round}: both peers reported`);
      assert.equal(x.agree, true, `round ${x.round}: both peers' weights hashes agree`);
    }
    // SwiftShader emulates the GPU on the CPU: a step takes about a second, so the first round
    // (start-up) may end before any update lands. Later rounds must train and apply.
    const trained = rows.filter((x) => x.applied! > 0 && x.innerStepsPerPeer! > 0);
    assert.ok(trained.length >= 3, `rounds that trained and applied updates: ${trained.length} of 5`);
    assert.ok(trained[trained.length - 1].valLoss! < trained[0].valLoss!, 'validation loss fell');
    const steps = rows.reduce((a, x) => a + x.innerStepsPerPeer!, 0);
    console.log(
      `# webgpu swarm: 5 rounds in ${((Date.now() - t0) / 1000).toFixed(0)} s, ${steps} inner steps/peer, ` +
        `val ${trained[0].valLoss!.toFixed(4)} → ${trained[trained.length - 1].valLoss!.toFixed(4)}, hashes ${rows.map((x) => x.weightsHash!.slice(0, 8)).join(' ')}`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a run audited bit for bit refuses --device webgpu and says why', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tessera-gpu-audit-'));
  try {
    const r = spawnSync(
      process.execPath,
      [bin, 'demo', '--device', 'webgpu', '--audit', '1', '--overlap', 'none', '--rounds', '1', '--dir', dir],
      { encoding: 'utf8', timeout: 60_000 },
    );
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /bit for bit on the CPU deterministic kernels/);
    assert.match(r.stderr, /--audit-tolerance/, 'names the way in');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('tessera train --device webgpu trains on the adapter and tracks the CPU', { skip, timeout: 450_000 }, () => {
  assert.ok(icd, 'CI=true: no SwiftShader Vulkan ICD for the WebGPU adapter');
  const dir = mkdtempSync(join(tmpdir(), 'tessera-gpu-train-'));
  try {
    // A small corpus of its own: the run ends by evaluating the whole validation split, and
    // Brown's 410k validation tokens take minutes on SwiftShader's emulated GPU.
    const text = brownDocuments()
      .slice(0, 4)
      .map((d) => d.text)
      .join('\n\n');
    const corpus = join(dir, 'corpus.txt');
    writeFileSync(corpus, text);
    const run = (device: string) => {
      const r = spawnSync(
        process.execPath,
        [
          bin,
          'train',
          '--json',
          '--device',
          device,
          ...['--vocab', '300', '--ctx', '16', '--dim', '16', '--layers', '1', '--heads', '2', '--batch', '2'],
          ...['--steps', '10', '--eval-every', '5', '--eval-batches', '2', '--out', join(dir, device)],
          ...['--data', corpus, '--cache-dir', join(dir, 'cache')],
        ],
        { encoding: 'utf8', timeout: 200_000, env: { ...process.env, VK_ICD_FILENAMES: icd! } },
      );
      assert.equal(r.status, 0, `train --device ${device} failed:\n${r.stderr}`);
      return JSON.parse(r.stdout) as { steps: number; finalValLoss: number; tokensPerSec: number };
    };
    const gpu = run('webgpu'),
      cpu = run('cpu');
    assert.equal(gpu.steps, 10);
    // Same init, data and schedule: the floats differ (~1e-7 relative per op), the loss barely.
    assert.ok(Math.abs(gpu.finalValLoss - cpu.finalValLoss) < 1e-3, `${gpu.finalValLoss} vs ${cpu.finalValLoss}`);
    console.log(
      `# train: val ${gpu.finalValLoss} (webgpu, ${gpu.tokensPerSec.toFixed(0)} tok/s) vs ${cpu.finalValLoss} (cpu)`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
