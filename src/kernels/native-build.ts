/**
 * Builds a second copy of the native addon WITHOUT OpenBLAS (TESSERA_NO_BLAS=1, so
 * native/binding.gyp takes its no-BLAS branch and every matmul runs Tessera's own blocked GEMM)
 * into its own folder, native/build-noblas/ by default, leaving the package's addon alone.
 *
 * For the tests and bench/native-noblas.ts, which load both builds in one process and compare
 * them: what a user without libopenblas-dev gets from `npm install`, measured on a machine that
 * has it. node-gyp does the build (the same tool `npm install` runs); this only stages the
 * sources, skips the build when they are unchanged, and reports failures as typed errors.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { NativeUnavailableError } from '../util/errors.js';
import { packageRoot } from './native.js';

/** Where the no-BLAS copy is built, relative to the package root. */
export const NOBLAS_DIR = join('native', 'build-noblas');

function sameFile(a: string, b: string): boolean {
  return existsSync(b) && readFileSync(a).equals(readFileSync(b));
}

/**
 * Builds (unless up to date) the no-BLAS addon and returns the absolute path of its .node file.
 * Throws NativeUnavailableError with node-gyp's output when the build fails.
 */
export function buildNoBlasAddon(dir: string = join(packageRoot(), NOBLAS_DIR)): string {
  const src = join(packageRoot(), 'native');
  const files = ['binding.gyp', 'detect-blas.sh', ...readdirSync(join(src, 'src')).map((f) => join('src', f))];
  const out = join(dir, 'build', 'Release', 'tessera_kernels.node');
  let fresh = existsSync(out);
  mkdirSync(join(dir, 'src'), { recursive: true });
  for (const f of files) {
    if (sameFile(join(src, f), join(dir, f))) continue;
    copyFileSync(join(src, f), join(dir, f));
    fresh = false;
  }
  if (fresh) return out;
  const gyp = createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
  const r = spawnSync(process.execPath, [gyp, 'rebuild', `--directory=${dir}`, '--nodedir=/usr', '--loglevel=warn'], {
    env: { ...process.env, TESSERA_NO_BLAS: '1' },
    encoding: 'utf8',
    timeout: 600_000,
  });
  if (r.status !== 0 || !existsSync(out)) {
    throw new NativeUnavailableError(
      `building the no-BLAS addon in ${dir} failed (exit ${r.status}): ${(r.stderr || '') + (r.stdout || '')}`.slice(
        0,
        4000,
      ),
    );
  }
  return out;
}
