/**
 * `node dist/bench/gpu/closure.js ENTRY.js... --root DIR --to DIR`
 *
 * Copies what the compiled entry files need at run time, and nothing else, into --to: the dist
 * modules they import (statically or with a literal `import('...')`), transitively, and the npm
 * packages those name, each with its package.json dependencies, pruned to what Node loads
 * (.js/.mjs/.cjs/.json/.node; no types, maps, sources or other platforms' binaries). Prints a
 * JSON summary (files, bytes, packages). pack.sh uses it to ship bench/gpu to a machine with no
 * network: the whole project's node_modules are ~1 GB, this closure a few MB plus dawn.node.
 *
 * Why hand-written and not a bundler: none is a dependency of this project, the compiled
 * output is plain ES modules whose import statements tsc writes one per line, and dawn.node (a
 * native addon loaded with require from a computed path) must stay a file beside its package
 * anyway. An import it cannot resolve is an error, so a missing file fails the pack, not the
 * run on the GPU machine.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';

const args = process.argv.slice(2);
const opt = (n: string): string => {
  const i = args.indexOf(n);
  if (i < 0 || !args[i + 1]) throw new Error(`closure: ${n} is required`);
  return args[i + 1];
};
const root = resolve(opt('--root'));
const to = resolve(opt('--to'));
const entries = args.filter((a, i) => !a.startsWith('--') && !args[i - 1]?.startsWith('--')).map((e) => resolve(e));

/** Import specifiers of one compiled module (static imports, re-exports, literal dynamic imports). */
function specifiers(code: string): string[] {
  const out = new Set<string>();
  const patterns = [
    /^\s*(?:import|export)\s[^'";]*?\sfrom\s*['"]([^'"]+)['"]/gm,
    /^\s*import\s*['"]([^'"]+)['"]/gm,
    /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g,
  ];
  for (const re of patterns) for (const m of code.matchAll(re)) out.add(m[1]);
  return [...out];
}

const files = new Set<string>();
const packages = new Map<string, string>(); // name → directory
let bytes = 0;

function copy(file: string): void {
  if (files.has(file)) return;
  files.add(file);
  const dest = join(to, relative(root, file));
  mkdirSync(dirname(dest), { recursive: true });
  copyFileSync(file, dest);
  bytes += statSync(file).size;
}

function packageName(spec: string): string {
  const parts = spec.split('/');
  return spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

/** Node's lookup: node_modules of `from` and of each folder above it, up to the root. */
function packageDir(name: string, from: string): string {
  for (let d = from; d.startsWith(root); d = dirname(d)) {
    const p = join(d, 'node_modules', name);
    if (existsSync(join(p, 'package.json'))) return p;
    if (d === root) break;
  }
  throw new Error(`closure: package ${name} (needed by ${relative(root, from)}) is not installed`);
}

const KEEP = /\.(js|mjs|cjs|json|node)$/;
const DROP = /\.d\.[cm]?ts$|\.map$/;

/** Platform binaries of other systems are dropped (webgpu ships one dawn.node per platform). */
function wanted(pkg: string, rel: string): boolean {
  if (!KEEP.test(rel) || DROP.test(rel)) return false;
  const plat = /^dist\/(linux|darwin|win32)-[^/]+\//.exec(rel);
  if (plat && !rel.startsWith(`dist/${process.platform}-${process.arch}/`)) return false;
  if (pkg === 'webgpu' && rel.startsWith('build/')) return false; // its install-time scripts
  return true;
}

function walkPackage(name: string, dir: string, at = dir): void {
  for (const e of readdirSync(at, { withFileTypes: true })) {
    const p = join(at, e.name);
    if (e.isDirectory()) {
      if (e.name !== 'node_modules') walkPackage(name, dir, p);
    } else if (e.isFile() && wanted(name, relative(dir, p))) copy(p);
  }
}

function addPackage(name: string, from: string): void {
  const dir = packageDir(name, from);
  if (packages.has(dir)) return;
  packages.set(dir, name);
  walkPackage(name, dir);
  const pj = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
  for (const dep of Object.keys(pj.dependencies ?? {})) addPackage(dep, dir);
}

function addModule(file: string): void {
  if (files.has(file)) return;
  if (!existsSync(file)) throw new Error(`closure: ${relative(root, file)} does not exist`);
  copy(file);
  for (const s of specifiers(readFileSync(file, 'utf8'))) {
    if (isBuiltin(s)) continue;
    if (s.startsWith('.')) addModule(resolve(dirname(file), s));
    else addPackage(packageName(s), dirname(file));
  }
}

if (entries.length === 0) throw new Error('closure: name at least one entry file');
for (const e of entries) addModule(e);
process.stdout.write(
  JSON.stringify({ files: files.size, bytes, packages: [...new Set(packages.values())].sort() }, null, 2) + '\n',
);
