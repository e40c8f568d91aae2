// ESLint flat config. Syntax-only (no type information), so `eslint src test bench` stays fast.
//
// The rule that matters is the pure-core boundary (ARCHITECTURE.md): the modules that every
// peer must run to the same result (the round reducer, codecs, aggregation, scoring, placement,
// schedules and their helpers) may not reach I/O, the network, storage, the ledger, a clock or
// a random source, so they can be replayed, simulated and tested deterministically.
import { builtinModules } from 'node:module';
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

/** The pure core: deterministic, no I/O. Keep in step with ARCHITECTURE.md. */
export const PURE_CORE = [
  'src/swarm/round.ts', // the round reducer
  'src/swarm/compress/**/*.ts', // update codecs
  'src/swarm/robust.ts', // aggregation
  'src/swarm/apply.ts',
  'src/swarm/outer.ts',
  'src/swarm/assign.ts', // shard assignment and round seeds
  'src/swarm/leader.ts', // leader order
  'src/swarm/canonical.ts', // canonical JSON and hashes
  'src/verify/score.ts', // scoring
  'src/verify/tolerance.ts', // the audit tolerance rule (GPU trainers)
  'src/pipeline/placement.ts', // placement
  'src/store/replicate.ts',
  'src/pipeline/schedule.ts', // schedules
  'src/train/schedule.ts',
  'src/util/errors.ts', // helpers the core imports
  'src/util/rng.ts',
  'src/util/hash.ts',
];

const CORE = 'pure core (ARCHITECTURE.md, eslint.config.js)';

/** Packages that do I/O: networking, storage, the chain, logging, HTTP. */
const IO_PACKAGES = [
  'libp2p',
  '@libp2p/*',
  '@chainsafe/*',
  'helia',
  '@helia/*',
  'blockstore-fs',
  'datastore-fs',
  'ipfs-car',
  'viem',
  'viem/*',
  '@nomicfoundation/*',
  'solc',
  'pino',
  'hono',
  'hono/*',
  '@hono/*',
  'commander',
  'cli-progress',
];

const restrictedImports = (extra = []) => [
  'error',
  {
    // Bare builtins (`fs`, `crypto`, ...); `node:*` is caught by the pattern below.
    paths: builtinModules
      .filter((m) => !m.startsWith('_'))
      .map((name) => ({ name, message: `${CORE}: no Node builtins.` })),
    patterns: [
      { group: ['node:*'], message: `${CORE}: no Node builtins (node:*).` },
      { group: ['**/net', '**/net/**'], message: `${CORE}: no networking (src/net).` },
      // A regex, not a glob: gitignore globs cannot re-include a file whose folder they exclude.
      {
        regex: '^(.*/)?store(/(?!replicate\\.js$).*)?$',
        message: `${CORE}: no storage (src/store); store/replicate.ts is pure and allowed.`,
      },
      { group: ['**/ledger', '**/ledger/**'], message: `${CORE}: no ledger (src/ledger).` },
      { group: ['**/util/hash-node.js'], message: `${CORE}: hash-node.ts uses node:crypto; use util/hash.ts.` },
      { group: IO_PACKAGES, message: `${CORE}: this package does I/O.` },
      ...extra,
    ],
  },
];

const CLOCK = `${CORE}: no clocks, timers or randomness (pass time and seeds in).`;
const viaGlobal = [
  'Date',
  'performance',
  'process',
  'crypto',
  'setTimeout',
  'setInterval',
  'setImmediate',
  'Buffer',
  'require',
];

export default defineConfig(
  {
    ignores: [
      'dist/**',
      'node_modules/**',
      'native/**',
      'runs/**',
      'out/**',
      'scratch/**',
      'test-artifacts/**',
      'src/dashboard/public/**',
    ],
  },
  js.configs.recommended,
  tseslint.configs.recommended,
  {
    languageOptions: {
      ecmaVersion: 2023,
      sourceType: 'module',
      globals: {
        // Node and the web platform globals the code uses (no `globals` package needed).
        process: 'readonly',
        Buffer: 'readonly',
        console: 'readonly',
        URL: 'readonly',
        TextEncoder: 'readonly',
        TextDecoder: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        setInterval: 'readonly',
        clearInterval: 'readonly',
        setImmediate: 'readonly',
        queueMicrotask: 'readonly',
        AbortController: 'readonly',
        AbortSignal: 'readonly',
        performance: 'readonly',
        structuredClone: 'readonly',
        fetch: 'readonly',
        crypto: 'readonly',
        globalThis: 'readonly',
        NodeJS: 'readonly',
      },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', ignoreRestSiblings: true },
      ],
      // `map.get(k) ?? map.set(k, [])` is an idiom here.
      '@typescript-eslint/no-unused-expressions': ['error', { allowShortCircuit: true, allowTernary: true }],
    },
  },
  {
    // Tests cast deliberately malformed inputs.
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
  {
    name: 'tessera/pure-core',
    files: PURE_CORE,
    rules: {
      'no-restricted-imports': restrictedImports(),
      'no-restricted-globals': [
        'error',
        { name: 'Date', message: CLOCK }, // Date.now(), new Date(), Date()
        { name: 'performance', message: CLOCK },
        { name: 'setTimeout', message: CLOCK },
        { name: 'setInterval', message: CLOCK },
        { name: 'setImmediate', message: CLOCK },
        { name: 'process', message: `${CORE}: no process (hrtime, env, argv).` },
        { name: 'crypto', message: CLOCK }, // crypto.getRandomValues / randomUUID
        { name: 'Buffer', message: `${CORE}: no Node Buffer; use Uint8Array.` },
        { name: 'require', message: `${CORE}: no require.` },
      ],
      'no-restricted-properties': [
        'error',
        { object: 'Math', property: 'random', message: CLOCK },
        ...viaGlobal.flatMap((property) =>
          ['globalThis', 'window', 'self', 'global'].map((object) => ({ object, property, message: CLOCK })),
        ),
      ],
      'no-restricted-syntax': ['error', { selector: 'ImportExpression', message: `${CORE}: no dynamic import().` }],
    },
  },
  {
    // store/replicate.ts lives among the store's I/O modules: its siblings are off limits too.
    files: ['src/store/replicate.ts'],
    rules: {
      'no-restricted-imports': restrictedImports([
        { group: ['./*', '!./replicate.js'], message: `${CORE}: the rest of src/store does I/O.` },
      ]),
    },
  },
);
