#!/usr/bin/env node
// Thin launcher: the CLI is compiled TypeScript in dist/ (built by `npm install` / `npm run build`).
import { existsSync } from 'node:fs';
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
await import(main.href);
