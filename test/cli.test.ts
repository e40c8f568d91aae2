/**
 * The `tessera` command end to end, as a user runs it: real processes, real files.
 * A tiny model keeps it to a few seconds.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, existsSync, readdirSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = join(root, 'bin', 'tessera.js');
const tmp = mkdtempSync(join(tmpdir(), 'tessera-cli-'));
const cache = join(tmp, 'cache');
const tinyModel = ['--vocab', '300', '--ctx', '16', '--dim', '16', '--layers', '1', '--heads', '2', '--batch', '4'];

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [bin, ...args], {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, TESSERA_CACHE: cache },
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const runDir = join(tmp, 'run');
let trained: {
  steps: number;
  finalValLoss: number;
  weightsHash: string;
  files: { checkpoint: string; plot: string; metrics: string };
};

test('train --json on the embedded corpus writes a checkpoint, metrics and a plot', () => {
  const r = run(
    'train',
    ...tinyModel,
    '--steps',
    '12',
    '--eval-every',
    '5',
    '--eval-batches',
    '2',
    '--warmup',
    '2',
    '--lr',
    '0.01',
    '--out',
    runDir,
    '--json',
  );
  assert.equal(r.code, 0, r.err);
  trained = JSON.parse(r.out);
  assert.equal(trained.steps, 12);
  assert.ok(trained.finalValLoss < Math.log(300), `val loss ${trained.finalValLoss}`);
  for (const f of ['model.safetensors', 'config.json', 'optimizer.safetensors', 'tokenizer.json'])
    assert.ok(existsSync(join(trained.files.checkpoint, f)), f);
  assert.match(readFileSync(trained.files.plot, 'utf8'), /<svg[\s\S]*polyline/);
  assert.ok(readFileSync(trained.files.metrics, 'utf8').split('\n').filter(Boolean).length >= 3);
});

test('--resume continues from the checkpoint to a larger step count', () => {
  const r = run(
    'train',
    ...tinyModel,
    '--steps',
    '15',
    '--eval-every',
    '5',
    '--eval-batches',
    '2',
    '--warmup',
    '2',
    '--lr',
    '0.01',
    '--out',
    runDir,
    '--resume',
    '--json',
  );
  assert.equal(r.code, 0, r.err);
  const s = JSON.parse(r.out);
  assert.equal(s.steps, 15);
  assert.equal(s.tokens, 3 * 4 * 16, 'only the 3 new steps are trained');
});

test('eval --json prints {"loss","tokens"}; generate and export --hf work', () => {
  const text = join(tmp, 'sample.txt');
  writeFileSync(text, 'The jury said it did not find any evidence.\nIt was a quiet day in the county.\n');
  const e = run('eval', '--checkpoint', runDir, '--text', text, '--json');
  assert.equal(e.code, 0, e.err);
  const j = JSON.parse(e.out);
  assert.deepEqual(Object.keys(j).sort(), ['loss', 'tokens']);
  assert.ok(j.loss > 0 && j.tokens > 10);
  const g = run('generate', '--checkpoint', runDir, '--prompt', 'The', '--max-tokens', '8', '--json');
  assert.equal(g.code, 0, g.err);
  assert.equal(typeof JSON.parse(g.out).completion, 'string');
  const hf = join(tmp, 'hf');
  const x = run('export', '--checkpoint', runDir, '--hf', hf, '--json');
  assert.equal(x.code, 0, x.err);
  assert.deepEqual(readdirSync(hf).sort(), [
    'config.json',
    'generation_config.json',
    'model.safetensors',
    'tokenizer.json',
    'tokenizer_config.json',
  ]);
});

test('bad flags print usage help and exit 2', () => {
  for (const args of [
    ['train', '--batch', 'abc'],
    ['train', '--lr', '-1'],
    ['bench', 'compute', '--heads', '0'],
    ['train', '--no-such-flag'],
    ['eval'],
  ]) {
    const r = run(...args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
    assert.match(r.err, /usage: tessera/, args.join(' '));
  }
});

test('a truncated checkpoint gives a clear error and exit 1, and the file is left as it was', () => {
  const bad = join(tmp, 'bad');
  const copy = spawnSync('cp', ['-r', join(runDir, 'checkpoint'), bad]);
  assert.equal(copy.status, 0);
  const f = join(bad, 'model.safetensors');
  truncateSync(f, statSync(f).size - 100);
  const size = statSync(f).size;
  const r = run('generate', '--checkpoint', bad, '--prompt', 'x', '--json');
  assert.equal(r.code, 1);
  assert.match(r.err, /model\.safetensors/);
  assert.equal(JSON.parse(r.out).error.code, 'CORRUPT_FILE');
  assert.equal(statSync(f).size, size);
});

test('a tokenizer with the wrong vocabulary is refused', () => {
  const tok = JSON.parse(readFileSync(join(runDir, 'checkpoint', 'tokenizer.json'), 'utf8'));
  const merges = tok.model.merges as unknown[];
  const lastMerge = merges[merges.length - 1];
  const lastTok = typeof lastMerge === 'string' ? lastMerge.replace(' ', '') : (lastMerge as string[]).join('');
  tok.model.merges = merges.slice(0, -1);
  delete tok.model.vocab[lastTok];
  // keep ids dense: <|endoftext|> moves down one
  const eot = tok.added_tokens[0];
  eot.id -= 1;
  tok.model.vocab['<|endoftext|>'] = eot.id;
  const p = join(tmp, 'small-tokenizer.json');
  writeFileSync(p, JSON.stringify(tok));
  const r = run('eval', '--checkpoint', runDir, '--text', join(tmp, 'sample.txt'), '--tokenizer', p);
  assert.equal(r.code, 1, r.err);
  assert.match(r.err, /299.*300|300.*299/);
});
