#!/usr/bin/env node
// Thin launcher: the CLI is compiled TypeScript in dist/ (built by `npm install` / `npm run build`).
import { existsSync } from 'node:fs';
import { enableCompileCache } from 'node:module';
import { fileURLToPath } from 'node:url';

const main = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  console.error('tessera: dist/ is missing; run `npm install` (or `npm run build`) in the package root first.');
  process.exit(2);
}
const [major] = process.versions.node.split('.').map(Number);
if (major < 22) {
  console.error(
    `tessera: Node ${process.versions.node} is too old (need >= 22). Run through npm (npx tessera ...), which uses the bundled Node 24.`,
  );
  process.exit(2);
}
// V8's compiled code for the CLI's ~2,000 modules is cached on disk (Node's own compile cache, in
// the OS temp directory; TESSERA_NO_COMPILE_CACHE=1 turns it off): a `tessera node` starts with
// about 0.2 s less CPU, which counts when a machine starts many peers. A cache that cannot be
// written is skipped by Node without an error.
if (!process.env.TESSERA_NO_COMPILE_CACHE) enableCompileCache?.();
await import(main.href);
