/**
 * bench/gpu's app closure (bench/gpu/closure.ts, what pack.sh ships to a lent GPU machine with
 * no network): copied out of the repository, the compiled entry must load with nothing else
 * beside it, and stay small. The cheap half of bench/gpu/dry-run.sh (which also compresses Node,
 * ~minutes, and runs the whole flow on SwiftShader): it catches the regression that matters
 * most, a new import in the bench's code path (libp2p, say) that the bundle would lack.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../src/kernels/native.js';

const root = packageRoot();

test('the bench/gpu closure is complete on its own and small', () => {
  const to = mkdtempSync(join(tmpdir(), 'tessera-closure-'));
  try {
    const r = spawnSync(
      process.execPath,
      [join(root, 'dist/bench/gpu/closure.js'), join(root, 'dist/bench/gpu/webgpu.js'), '--root', root, '--to', to],
      { encoding: 'utf8' },
    );
    assert.equal(r.status, 0, r.stderr);
    const sum = JSON.parse(r.stdout) as { files: number; bytes: number; packages: string[] };
    assert.ok(sum.packages.includes('webgpu') && sum.packages.includes('zod'), sum.packages.join());
    // Whatever else the entry needs must stay small: a stray import of the swarm stack would add
    // hundreds of MB (webgpu's dawn.node for this platform alone is ~21 MB).
    for (const p of ['libp2p', 'helia', 'viem', '@nomicfoundation/edr', 'commander'])
      assert.ok(!sum.packages.includes(p), `the GPU bench pulls in ${p}`);
    assert.ok(sum.bytes < 40 * 2 ** 20, `closure is ${(sum.bytes / 2 ** 20).toFixed(1)} MiB`);
    assert.ok(existsSync(join(to, 'node_modules/webgpu/dist', `${process.platform}-${process.arch}`, 'dawn.node')));
    writeFileSync(join(to, 'package.json'), '{ "type": "module" }\n');
    // Without arguments the entry loads its whole static import graph, prints its usage and exits 2.
    const u = spawnSync(process.execPath, ['dist/bench/gpu/webgpu.js'], { cwd: to, encoding: 'utf8' });
    assert.equal(u.status, 2, u.stderr);
    assert.match(u.stderr, /usage: webgpu\.js measure\|report/);
    // The lazily imported Dawn package loads from the copy (its native addon included).
    const w = spawnSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        "const m = await import('webgpu'); if (typeof m.create !== 'function') process.exit(3);",
      ],
      { cwd: to, encoding: 'utf8' },
    );
    assert.equal(w.status, 0, w.stderr);
  } finally {
    rmSync(to, { recursive: true, force: true });
  }
});
