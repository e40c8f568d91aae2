/**
 * The IPFS store: datasets as verified token shards, CAR export, and interoperability with the
 * independent `ipfs-car` CLI (npm): same CIDs for the same bytes and settings (1 MiB fixed
 * chunks, raw leaves, CIDv1, balanced width 1024), and our CAR files unpack with it byte for byte.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CID } from 'multiformats/cid';
import * as raw from 'multiformats/codecs/raw';
import { sha256 } from 'multiformats/hashes/sha2';
import { CorruptBlockError, MissingBlockError, openStore } from '../src/store/index.js';
import { exportCar, readManifest, readShard } from '../src/store/dataset.js';
import { Rng } from '../src/util/rng.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = join(root, 'bin', 'tessera.js');
const ipfsCar = join(root, 'node_modules', 'ipfs-car', 'bin.js');
const tmp = mkdtempSync(join(tmpdir(), 'tessera-store-'));
test.after(() => rmSync(tmp, { recursive: true, force: true }));

function run(cmd: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [cmd, ...args], {
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, TESSERA_CACHE: join(tmp, 'cache') },
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('data add / ls / get: shards are raw blocks whose tokens reassemble the corpus; bad and missing CIDs fail clearly', async () => {
  const corpus = join(tmp, 'corpus.txt');
  const rng = new Rng(5);
  const word = () =>
    Array.from({ length: 2 + rng.nextInt(6) }, () => 'abcdefghijklmnopqrstuvwxyz'[rng.nextInt(26)]).join('');
  const words = Array.from({ length: 400 }, word);
  writeFileSync(
    corpus,
    Array.from({ length: 30 }, () =>
      Array.from({ length: 400 }, () => words[rng.nextInt(words.length)]).join(' '),
    ).join('\n<|endoftext|>\n'),
  );
  const dataDir = join(tmp, 'node-a');
  const add = run(
    bin,
    'data',
    'add',
    corpus,
    '--data-dir',
    dataDir,
    '--vocab',
    '300',
    '--shard-tokens',
    '2000',
    '--cache-dir',
    join(tmp, 'cache'),
    '--json',
  );
  assert.equal(add.code, 0, add.err);
  const added = JSON.parse(add.out) as { cid: string; shards: number; trainTokens: number; valTokens: number };
  assert.ok(added.shards >= 3, `several shards (${added.shards})`);
  const ls = run(bin, 'data', 'ls', '--data-dir', dataDir, '--json');
  assert.deepEqual(
    (JSON.parse(ls.out) as { cid: string }[]).map((x) => x.cid),
    [added.cid],
  );
  const get = run(bin, 'data', 'get', added.cid, '--data-dir', dataDir, '--json');
  assert.equal(get.code, 0, get.err);
  assert.equal((JSON.parse(get.out) as { train: { tokens: number } }).train.tokens, added.trainTokens);

  const store = await openStore(dataDir);
  try {
    const m = await readManifest(store, CID.parse(added.cid));
    let n = 0;
    for (const sh of [...m.train.shards, ...m.val.shards]) {
      assert.equal(sh.cid.code, raw.code, 'each shard is one raw block');
      const toks = await readShard(store, m, sh);
      assert.equal(toks.length, sh.tokens);
      assert.ok(toks.every((t) => t < m.tokenizer.vocabSize));
      n += toks.length;
    }
    assert.equal(n, added.trainTokens + added.valTokens);
    // Integrity: a block whose bytes do not match its CID is detected on read, never returned.
    const victim = m.train.shards[1].cid;
    // Corrupt it on disk, underneath the store (as a bad disk or a tampering process would).
    const fsPut = await import('blockstore-fs');
    const raw2 = new fsPut.FsBlockstore(join(dataDir, 'ipfs', 'blocks'));
    await raw2.open();
    await raw2.put(victim, new Uint8Array(16).fill(7));
    await raw2.close();
    await assert.rejects(store.getBlock(victim), CorruptBlockError);
    await assert.rejects(readShard(store, m, m.train.shards[1]), CorruptBlockError);
    // A missing block fails at once with a typed error, it does not wait.
    const missing = CID.createV1(raw.code, await sha256.digest(new TextEncoder().encode('not stored anywhere')));
    const t0 = Date.now();
    await assert.rejects(store.getBlock(missing, { signal: AbortSignal.timeout(5000) }), MissingBlockError);
    assert.ok(Date.now() - t0 < 2000);
  } finally {
    await store.stop();
  }
  const bad = run(bin, 'data', 'get', 'not-a-cid', '--data-dir', dataDir);
  assert.notEqual(bad.code, 0);
  assert.match(bad.err, /not a CID/);
  const gone = run(
    bin,
    'data',
    'export',
    '--car',
    'bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy',
    join(tmp, 'gone.car'),
    '--data-dir',
    dataDir,
  );
  assert.notEqual(gone.code, 0);
  assert.match(gone.err, /not available/);
});

test('interop with ipfs-car: same CIDs for the same bytes; our CAR unpacks byte for byte; a dataset CAR lists every block', async () => {
  const dataDir = join(tmp, 'node-b');
  const rng = new Rng(11);
  const files = {
    small: new TextEncoder().encode('a tessera is one tile of a mosaic\n'),
    multi: Uint8Array.from({ length: 3 * 1024 * 1024 + 12345 }, () => rng.nextInt(256)), // 4 chunks + a root
  };
  const store = await openStore(dataDir);
  const ours: Record<string, string> = {};
  try {
    for (const [name, bytes] of Object.entries(files)) {
      const path = join(tmp, `${name}.bin`);
      writeFileSync(path, bytes);
      ours[name] = (await store.fs.addBytes(bytes)).toString();
      const packed = run(ipfsCar, 'pack', path, '--no-wrap', '--output', join(tmp, `${name}.ipfs-car.car`));
      assert.equal(packed.code, 0, packed.err);
      assert.equal(ours[name], packed.out.trim(), `${name}: our CID equals ipfs-car's`);
      const car = join(tmp, `${name}.ours.car`);
      await exportCar(store, CID.parse(ours[name]), car);
      const outDir = join(tmp, `unpacked-${name}`);
      mkdirSync(outDir, { recursive: true });
      const un = run(ipfsCar, 'unpack', car, '--output', join(outDir, 'file'));
      assert.equal(un.code, 0, un.err);
      assert.deepEqual(new Uint8Array(readFileSync(join(outDir, 'file'))), bytes, `${name}: unpacked byte for byte`);
    }
  } finally {
    await store.stop();
  }
  // A whole dataset (dag-json manifest + raw shards + tokenizer file) as one CAR.
  const add = run(
    bin,
    'data',
    'add',
    'brown',
    '--data-dir',
    dataDir,
    '--vocab',
    '512',
    '--cache-dir',
    join(tmp, 'cache'),
    '--json',
  );
  assert.equal(add.code, 0, add.err);
  const ds = JSON.parse(add.out) as { cid: string; shards: number };
  const car = join(tmp, 'dataset.car');
  const ex = run(bin, 'data', 'export', '--car', ds.cid, car, '--data-dir', dataDir, '--json');
  assert.equal(ex.code, 0, ex.err);
  assert.equal((JSON.parse(ex.out) as { blocks: number }).blocks, ds.shards + 2, 'manifest + shards + tokenizer');
  const roots = run(ipfsCar, 'roots', car);
  assert.equal(roots.out.trim(), ds.cid);
  const blocks = run(ipfsCar, 'blocks', car);
  assert.equal(blocks.out.trim().split('\n').length, ds.shards + 2);
});
