/**
 * Compiles src/ledger/contracts/*.sol with solc-js (the `solc` npm package, 0.8.x, via-IR + optimizer).
 * Artifacts are cached in `<repo>/.cache/ledger/<sha256 of sources+solc version>.json` (git-ignored), so
 * only the first run after a contract edit pays the ~6 s compile. Sources are read from the source tree
 * (tsc does not copy .sol files), located relative to this module in both src/ and dist/src/.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Abi, Hex } from 'viem';
import { LedgerCompileError } from './errors.js';

export interface Artifact {
  abi: Abi;
  bytecode: Hex;
}
export type Artifacts = Record<string, Artifact>;

function repoRoot(): string {
  let d = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(d, 'package.json')) && existsSync(join(d, 'src', 'ledger', 'contracts'))) return d;
    d = resolve(d, '..');
  }
  throw new LedgerCompileError('cannot locate src/ledger/contracts from ' + fileURLToPath(import.meta.url));
}

export const contractsDir = (): string => join(repoRoot(), 'src', 'ledger', 'contracts');

let memo: Artifacts | undefined;

/**
 * Loads solc-js. Its emscripten glue (soljson.js) registers a process 'unhandledRejection'
 * handler that rethrows, which turns any stray rejection anywhere in the process into a crash:
 * a `tessera node` linked to a chain died that way under load (an AbortError from a libp2p
 * queue's timeout). Whatever handlers the require adds are removed again.
 */
function requireSolc(): { compile(input: string): string; version(): string } {
  const require = createRequire(import.meta.url);
  const before = new Set(process.listeners('unhandledRejection'));
  const solc = require('solc') as { compile(input: string): string; version(): string };
  for (const l of process.listeners('unhandledRejection'))
    if (!before.has(l)) process.removeListener('unhandledRejection', l);
  return solc;
}

/** The solc-js package version (what the artifact cache is keyed by: no need to load the compiler for a hit). */
function solcVersion(): string {
  const require = createRequire(import.meta.url);
  return (require('solc/package.json') as { version: string }).version;
}

export function loadArtifacts(): Artifacts {
  if (memo) return memo;
  const dir = contractsDir();
  const sources: Record<string, { content: string }> = {};
  const h = createHash('sha256').update(`solc-js ${solcVersion()}`);
  for (const f of readdirSync(dir)
    .filter((f) => f.endsWith('.sol'))
    .sort()) {
    const content = readFileSync(join(dir, f), 'utf8');
    sources[f] = { content };
    h.update(f).update('\0').update(content);
  }
  const cacheDir = join(repoRoot(), '.cache', 'ledger');
  const cacheFile = join(cacheDir, h.digest('hex').slice(0, 16) + '.json');
  if (existsSync(cacheFile)) return (memo = JSON.parse(readFileSync(cacheFile, 'utf8')) as Artifacts);
  const input = {
    language: 'Solidity',
    sources,
    settings: {
      optimizer: { enabled: true, runs: 200 },
      viaIR: true,
      outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
    },
  };
  const out = JSON.parse(requireSolc().compile(JSON.stringify(input))) as {
    errors?: { severity: string; formattedMessage: string }[];
    contracts?: Record<string, Record<string, { abi: Abi; evm: { bytecode: { object: string } } }>>;
  };
  const errs = (out.errors ?? []).filter((e) => e.severity === 'error');
  if (errs.length > 0 || !out.contracts) throw new LedgerCompileError(errs.map((e) => e.formattedMessage).join('\n'));
  const arts: Artifacts = {};
  for (const file of Object.values(out.contracts)) {
    for (const [name, c] of Object.entries(file)) {
      if (c.evm.bytecode.object.length > 0) arts[name] = { abi: c.abi, bytecode: `0x${c.evm.bytecode.object}` };
    }
  }
  mkdirSync(cacheDir, { recursive: true });
  const tmp = `${cacheFile}.${process.pid}.tmp`; // atomic: concurrent test processes may compile at once
  writeFileSync(tmp, JSON.stringify(arts));
  renameSync(tmp, cacheFile);
  return (memo = arts);
}
