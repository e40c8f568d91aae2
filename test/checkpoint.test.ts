import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import {
  checkTokenizerMatches,
  loadCheckpoint,
  saveCheckpoint,
  weightsHash,
  writeDirAtomic,
  type LoadedCheckpoint,
} from '../src/model/checkpoint.js';
import type { ModelConfig } from '../src/model/config.js';
import { paramCount } from '../src/model/params.js';
import { decodeSafetensors, encodeSafetensors, readSafetensors } from '../src/model/safetensors.js';
import { CorruptFileError, InvalidInputError, MismatchError, TesseraError } from '../src/util/errors.js';

const CFG: ModelConfig = { vocabSize: 97, ctx: 16, dim: 32, layers: 2, heads: 4 };

function randomArray(n: number, seed: number): Float32Array {
  // xorshift32 -> uniform(-1, 1); includes some special values to test bitwise exactness.
  let s = seed >>> 0 || 1;
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    a[i] = (s / 0x100000000) * 2 - 1;
  }
  a[0] = -0;
  a[1] = 1e-45;
  a[2] = 3.4028234663852886e38;
  return a;
}

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'tessera-ckpt-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  return d;
}

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  return (
    Buffer.compare(
      Buffer.from(a.buffer, a.byteOffset, a.byteLength),
      Buffer.from(b.buffer, b.byteOffset, b.byteLength),
    ) === 0
  );
}

async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).sort())
    out[f] = createHash('sha256')
      .update(await readFile(join(dir, f)))
      .digest('hex');
  return out;
}

/** Save a checkpoint with optimizer state; returns its dir and contents. */
async function makeCheckpoint(root: string, name = 'ckpt') {
  const P = paramCount(CFG);
  const params = randomArray(P, 1),
    m = randomArray(P, 2),
    v = randomArray(P, 3).map(Math.abs);
  const dir = join(root, name);
  const res = await saveCheckpoint(dir, {
    config: CFG,
    params,
    optimizer: { m, v, step: 1234 },
    meta: { run: 'x', tokens: 42 },
  });
  return { dir, params, m, v, res };
}

/** Rewrite a safetensors file's header (padded with spaces), keeping the data bytes. */
async function rewriteHeader(path: string, mutate: (h: Record<string, any>) => void): Promise<void> {
  const raw = await readFile(path);
  const n = Number(raw.readBigUInt64LE(0));
  const h = JSON.parse(raw.subarray(8, 8 + n).toString('utf8'));
  mutate(h);
  const json = Buffer.from(JSON.stringify(h));
  const padded = Buffer.alloc(Math.ceil(json.length / 8) * 8, 0x20);
  json.copy(padded);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(padded.length));
  await writeFile(path, Buffer.concat([len, padded, raw.subarray(8 + n)]));
}

/** Asserts `p` rejects with `cls`, whose message matches every regex; returns the error. */
async function rejectsWith<E extends Error>(
  p: Promise<unknown>,
  cls: new (...a: any[]) => E,
  ...res: RegExp[]
): Promise<E> {
  let result: unknown;
  try {
    result = await p;
  } catch (e) {
    assert.ok(
      e instanceof cls,
      `expected ${cls.name}, got ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`,
    );
    for (const re of res) assert.match((e as Error).message, re);
    return e as E;
  }
  assert.fail(`expected ${cls.name} but the call succeeded and returned ${typeof result}`);
}

test('roundtrip is bitwise exact, with optimizer state and meta', async (t) => {
  const root = await tempDir(t);
  const { dir, params, m, v, res } = await makeCheckpoint(root);
  assert.equal(res.weightsHash, weightsHash(params));
  assert.match(res.weightsHash, /^[0-9a-f]{64}$/);
  assert.deepEqual((await readdir(dir)).sort(), ['config.json', 'model.safetensors', 'optimizer.safetensors']);
  assert.deepEqual(res.files.map((f) => f.slice(f.lastIndexOf('/') + 1)).sort(), [
    'config.json',
    'model.safetensors',
    'optimizer.safetensors',
  ]);
  // No temp/backup dirs left behind.
  assert.deepEqual(await readdir(root), ['ckpt']);

  const ck = await loadCheckpoint(dir, { expectConfig: CFG });
  assert.deepEqual(ck.config, CFG);
  assert.ok(bitsEqual(ck.params, params));
  assert.ok(ck.params.buffer !== params.buffer);
  assert.ok(ck.optimizer);
  assert.ok(bitsEqual(ck.optimizer.m, m));
  assert.ok(bitsEqual(ck.optimizer.v, v));
  assert.equal(ck.optimizer.step, 1234);
  assert.deepEqual(ck.meta, { run: 'x', tokens: 42 });
  assert.equal(ck.weightsHash, res.weightsHash);

  // model.safetensors uses the paramSpecs names and shapes, in a standard-conforming file.
  const st = await readSafetensors(join(dir, 'model.safetensors'));
  assert.equal(st.metadata.format, 'tessera-gpt2');
  assert.equal(st.metadata.weightsHash, res.weightsHash);
  assert.deepEqual(st.tensors.get('h.1.attn.qkv.w')!.shape, [96, 32]);
  assert.deepEqual(st.tensors.get('wte')!.shape, [97, 32]);
  const raw = await readFile(join(dir, 'model.safetensors'));
  assert.equal(Number(raw.readBigUInt64LE(0)) % 8, 0, 'header padded to 8 bytes');

  // Without optimizer state.
  const ck2 = await loadCheckpoint(dir, { loadOptimizer: false });
  assert.equal(ck2.optimizer, undefined);
});

test('extraFiles are written in the same atomic step; tokenizer.json may be replaced', async (t) => {
  const root = await tempDir(t);
  const dir = join(root, 'ckpt');
  const params = randomArray(paramCount(CFG), 7);
  const { files } = await saveCheckpoint(dir, {
    config: CFG,
    params,
    extraFiles: { 'tokenizer.json': '{"v":1}', 'notes.bin': new Uint8Array([1, 2]) },
  });
  assert.equal(files.length, 4);
  assert.equal(await readFile(join(dir, 'tokenizer.json'), 'utf8'), '{"v":1}');
  assert.deepEqual([...(await readFile(join(dir, 'notes.bin')))], [1, 2]);
  await loadCheckpoint(dir);
  // A plain save replaces a checkpoint holding the extra files it recorded, or tokenizer.json...
  await saveCheckpoint(dir, { config: CFG, params });
  assert.deepEqual((await readdir(dir)).sort(), ['config.json', 'model.safetensors']);
  await writeFile(join(dir, 'tokenizer.json'), '{}');
  await saveCheckpoint(dir, { config: CFG, params });
  assert.deepEqual((await readdir(dir)).sort(), ['config.json', 'model.safetensors']);
  // ...but not one with a file it does not know.
  await writeFile(join(dir, 'notes.bin'), 'x');
  await rejectsWith(saveCheckpoint(dir, { config: CFG, params }), InvalidInputError, /refusing/, /notes\.bin/);
  await rm(join(dir, 'notes.bin'));
  // ...and file names are checked.
  for (const bad of ['../x', 'a/b', '.hidden', 'model.safetensors', '']) {
    await rejectsWith(
      saveCheckpoint(dir, { config: CFG, params, extraFiles: { [bad]: 'x' } }),
      InvalidInputError,
      /extraFiles/,
    );
  }
});

test('saving over an existing checkpoint replaces it atomically', async (t) => {
  const root = await tempDir(t);
  const { dir } = await makeCheckpoint(root);
  const params = randomArray(paramCount(CFG), 99);
  await saveCheckpoint(dir, { config: CFG, params });
  assert.deepEqual((await readdir(dir)).sort(), ['config.json', 'model.safetensors'], 'old optimizer file is gone');
  const ck = await loadCheckpoint(dir);
  assert.ok(bitsEqual(ck.params, params));
  assert.equal(ck.optimizer, undefined);
  assert.deepEqual(ck.meta, {});
  assert.deepEqual(await readdir(root), ['ckpt']);
});

test('a failed save leaves the target directory unchanged', async (t) => {
  const root = await tempDir(t);
  const { dir } = await makeCheckpoint(root);
  const before = await snapshot(dir);

  await rejectsWith(
    saveCheckpoint(dir, { config: CFG, params: new Float32Array(10) }),
    InvalidInputError,
    /params has 10 floats/,
  );
  await rejectsWith(
    saveCheckpoint(dir, { config: { ...CFG, heads: 5 }, params: new Float32Array(10) }),
    InvalidInputError,
    /divisible/,
  );
  const P = paramCount(CFG);
  await rejectsWith(
    saveCheckpoint(dir, {
      config: CFG,
      params: new Float32Array(P),
      optimizer: { m: new Float32Array(P), v: new Float32Array(P), step: -1 },
    }),
    InvalidInputError,
    /step/,
  );
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  await rejectsWith(
    saveCheckpoint(dir, { config: CFG, params: new Float32Array(P), meta: cyclic }),
    InvalidInputError,
    /meta/,
  );

  // A failure in the middle of writing files: the temp dir is removed, the target untouched.
  await assert.rejects(
    writeDirAtomic(dir, new Set(['config.json', 'model.safetensors', 'optimizer.safetensors']), async (tmp) => {
      await writeFile(join(tmp, 'model.safetensors'), 'partial');
      throw new Error('disk full (simulated)');
    }),
    /disk full/,
  );

  assert.deepEqual(await snapshot(dir), before);
  assert.deepEqual(await readdir(root), ['ckpt'], 'no temp directories left behind');
  await loadCheckpoint(dir); // still valid
});

test('leftovers of a crashed save are cleaned up or reported', async (t) => {
  const root = await tempDir(t);
  const deadPid = spawnSync(process.execPath, ['-e', '0']).pid; // exited: certainly not alive
  const { dir } = await makeCheckpoint(root);
  // A crash while writing left a temp dir; a crash mid-swap left the previous version aside.
  await mkdir(join(root, `.ckpt.tmp-${deadPid}-0badc0de`));
  await writeFile(join(root, `.ckpt.tmp-${deadPid}-0badc0de`, 'model.safetensors'), 'partial');
  const { rename } = await import('node:fs/promises');
  const aside = join(root, `.ckpt.old-${deadPid}-0badbeef`);
  await rename(dir, aside);
  const err = await rejectsWith(loadCheckpoint(dir), CorruptFileError, /interrupted/, /\.ckpt\.old-/);
  assert.equal(err.path, dir);
  // Recovery as the message says, then a new save removes both leftovers.
  await rename(aside, dir);
  await loadCheckpoint(dir);
  await mkdir(aside);
  await saveCheckpoint(dir, { config: CFG, params: randomArray(paramCount(CFG), 5) });
  assert.deepEqual(await readdir(root), ['ckpt']);
});

test('refuses to replace a directory that is not a checkpoint', async (t) => {
  const root = await tempDir(t);
  const dir = join(root, 'precious');
  await mkdir(dir);
  await writeFile(join(dir, 'notes.txt'), 'keep me');
  await rejectsWith(
    saveCheckpoint(dir, { config: CFG, params: new Float32Array(paramCount(CFG)) }),
    InvalidInputError,
    /refusing/,
    /notes\.txt/,
  );
  assert.equal(await readFile(join(dir, 'notes.txt'), 'utf8'), 'keep me');
  await writeFile(join(root, 'afile'), 'x');
  await rejectsWith(
    saveCheckpoint(join(root, 'afile'), { config: CFG, params: new Float32Array(paramCount(CFG)) }),
    InvalidInputError,
    /not a directory/,
  );
});

/** Corrupt one file of a fresh checkpoint, then expect loadCheckpoint to throw `cls` naming `file`. */
async function expectCorrupt(t: any, file: string, corrupt: (path: string) => Promise<void>, ...res: RegExp[]) {
  return expectCorruptIn(t, file, file, corrupt, ...res);
}

/** Like expectCorrupt, but the corruption of `file` is detected (and reported) in `errFile`. */
async function expectCorruptIn(
  t: any,
  file: string,
  errFile: string,
  corrupt: (path: string) => Promise<void>,
  ...res: RegExp[]
) {
  const root = await tempDir(t);
  const { dir } = await makeCheckpoint(root);
  await corrupt(join(dir, file));
  const path = join(dir, errFile);
  let loaded: LoadedCheckpoint | undefined;
  const err = await rejectsWith(
    (async () => {
      loaded = await loadCheckpoint(dir);
      return loaded;
    })(),
    CorruptFileError,
    ...res,
  );
  assert.equal(loaded, undefined, 'a failed load returns nothing');
  assert.equal(err.path, path, 'error names the file');
  assert.ok(err.message.startsWith(path), err.message);
  assert.equal(err.code, 'CORRUPT_FILE');
}

test('truncated model.safetensors', (t) =>
  expectCorrupt(
    t,
    'model.safetensors',
    async (p) => {
      const raw = await readFile(p);
      await writeFile(p, raw.subarray(0, raw.length - 100));
    },
    /truncated/,
  ));

test('model.safetensors truncated inside the header', (t) =>
  expectCorrupt(
    t,
    'model.safetensors',
    async (p) => {
      const raw = await readFile(p);
      await writeFile(p, raw.subarray(0, 40));
    },
    /header length \d+ exceeds/,
  ));

test('model.safetensors shorter than the length prefix', (t) =>
  expectCorrupt(
    t,
    'model.safetensors',
    async (p) => {
      await writeFile(p, Buffer.from([1, 2, 3]));
    },
    /too short/,
  ));

test('flipped data byte is caught by the weights hash', (t) =>
  expectCorrupt(
    t,
    'model.safetensors',
    async (p) => {
      const raw = await readFile(p);
      raw[raw.length - 7] ^= 0x10;
      await writeFile(p, raw);
    },
    /weights hash mismatch/,
    /corrupted/,
  ));

test('header length lying (larger than the file)', (t) =>
  expectCorrupt(
    t,
    'model.safetensors',
    async (p) => {
      const raw = await readFile(p);
      raw.writeBigUInt64LE(BigInt(raw.length), 0);
      await writeFile(p, raw);
    },
    /header length \d+ exceeds/,
  ));

test('header length lying (huge u64)', (t) =>
  expectCorrupt(
    t,
    'model.safetensors',
    async (p) => {
      const raw = await readFile(p);
      raw.writeBigUInt64LE(0xffffffffffffff00n, 0);
      await writeFile(p, raw);
    },
    /header length 18446744073709551360 exceeds/,
  ));

test('header length lying (too short, cuts the JSON)', (t) =>
  expectCorrupt(
    t,
    'model.safetensors',
    async (p) => {
      const raw = await readFile(p);
      raw.writeBigUInt64LE(raw.readBigUInt64LE(0) - 16n, 0);
      await writeFile(p, raw);
    },
    /not valid JSON/,
  ));

test('bad JSON header', (t) =>
  expectCorrupt(
    t,
    'model.safetensors',
    async (p) => {
      const raw = await readFile(p);
      raw.write('"', 8 + 20, 'latin1'); // same length, broken JSON
      await writeFile(p, raw);
    },
    /not valid JSON/,
  ));

test('header that is not an object / not UTF-8', async (t) => {
  await expectCorrupt(
    t,
    'model.safetensors',
    async (p) => {
      const raw = await readFile(p);
      raw[8] = '['.charCodeAt(0);
      await writeFile(p, raw);
    },
    /does not start with/,
  );
  await expectCorrupt(
    t,
    'model.safetensors',
    async (p) => {
      const raw = await readFile(p);
      raw[10] = 0xff;
      await writeFile(p, raw);
    },
    /UTF-8/,
  );
});

test('wrong shape', (t) =>
  expectCorrupt(
    t,
    'model.safetensors',
    (p) =>
      rewriteHeader(p, (h) => {
        h['h.0.attn.qkv.w'].shape = [32, 96]; // same byte size, transposed shape
      }),
    /tensor "h\.0\.attn\.qkv\.w" has shape \[32,96\], expected \[96,32\]/,
  ));

test('shape inconsistent with data_offsets', (t) =>
  expectCorrupt(
    t,
    'model.safetensors',
    (p) =>
      rewriteHeader(p, (h) => {
        h['wte'].shape = [97, 31];
      }),
    /tensor "wte": data_offsets .* needs/,
  ));

test('missing tensor', (t) =>
  expectCorrupt(
    t,
    'model.safetensors',
    async (p) => {
      const { tensors, header } = decodeSafetensors(await readFile(p), p);
      const kept = [...tensors]
        .filter(([n]) => n !== 'h.1.mlp.fc.b')
        .map(([name, x]) => ({ name, shape: x.shape, data: x.data }));
      await writeFile(p, encodeSafetensors(kept, header.metadata));
    },
    /missing tensor\(s\): h\.1\.mlp\.fc\.b/,
  ));

test('extra tensor', (t) =>
  expectCorrupt(
    t,
    'model.safetensors',
    async (p) => {
      const { tensors, header } = decodeSafetensors(await readFile(p), p);
      const all = [...tensors].map(([name, x]) => ({ name, shape: x.shape, data: x.data }));
      all.push({ name: 'lm_head.w', shape: [2], data: new Float32Array(2) });
      await writeFile(p, encodeSafetensors(all, header.metadata));
    },
    /unexpected tensor\(s\): lm_head\.w/,
  ));

test('trailing garbage after the data', (t) =>
  expectCorrupt(
    t,
    'model.safetensors',
    async (p) => {
      await writeFile(p, Buffer.concat([await readFile(p), Buffer.from('garbage!')]));
    },
    /8 trailing bytes/,
  ));

test('overlapping tensors / gaps', async (t) => {
  await expectCorrupt(
    t,
    'model.safetensors',
    (p) =>
      rewriteHeader(p, (h) => {
        const [b, e] = h['lnf.b'].data_offsets;
        h['lnf.b'].data_offsets = [b - 4, e - 4];
      }),
    /overlap/,
  );
  await expectCorrupt(
    t,
    'model.safetensors',
    (p) =>
      rewriteHeader(p, (h) => {
        delete h['wpe'];
      }),
    /gap of 2048 bytes/,
  );
});

test('unknown dtype and wrong dtype', async (t) => {
  await expectCorrupt(
    t,
    'model.safetensors',
    (p) =>
      rewriteHeader(p, (h) => {
        h['wte'].dtype = 'F33';
      }),
    /unknown dtype "F33"/,
  );
  await expectCorrupt(
    t,
    'model.safetensors',
    (p) =>
      rewriteHeader(p, (h) => {
        h['lnf.w'].dtype = 'I32';
      }),
    /tensor "lnf\.w" has dtype I32, expected F32/,
  );
});

test('metadata hash tampered (consistent data, wrong record)', (t) =>
  expectCorrupt(
    t,
    'model.safetensors',
    (p) =>
      rewriteHeader(p, (h) => {
        h.__metadata__.weightsHash = '0'.repeat(64);
      }),
    /differs from config\.json/,
  ));

test('missing model.safetensors', (t) => expectCorrupt(t, 'model.safetensors', (p) => rm(p), /file is missing/));

test('config.json garbage', async (t) => {
  await expectCorrupt(t, 'config.json', (p) => writeFile(p, '{"format": "tessera-gpt2", '), /not valid JSON/);
  await expectCorrupt(t, 'config.json', (p) => writeFile(p, Buffer.from([0xc3, 0x28])), /UTF-8/);
  await expectCorrupt(
    t,
    'config.json',
    async (p) => {
      const c = JSON.parse(await readFile(p, 'utf8'));
      c.model.heads = 5;
      await writeFile(p, JSON.stringify(c));
    },
    /divisible/,
  );
  await expectCorrupt(
    t,
    'config.json',
    async (p) => {
      const c = JSON.parse(await readFile(p, 'utf8'));
      c.format = 'other';
      await writeFile(p, JSON.stringify(c));
    },
    /format/,
  );
  // A valid config that no longer matches the tensors: reported against the weights file.
  await expectCorruptIn(
    t,
    'config.json',
    'model.safetensors',
    async (p) => {
      const c = JSON.parse(await readFile(p, 'utf8'));
      c.model.dim = 64;
      await writeFile(p, JSON.stringify(c));
    },
    /tensor "wte" has shape \[97,32\], expected \[97,64\] for the config\.json model/,
  );
  await expectCorrupt(t, 'config.json', (p) => rm(p), /file is missing/);
});

test('optimizer state corrupt or inconsistent', async (t) => {
  await expectCorrupt(
    t,
    'optimizer.safetensors',
    async (p) => {
      const raw = await readFile(p);
      raw[raw.length - 3] ^= 1;
      await writeFile(p, raw);
    },
    /moments hash mismatch/,
  );
  await expectCorrupt(
    t,
    'optimizer.safetensors',
    (p) =>
      rewriteHeader(p, (h) => {
        h.__metadata__.step = '-3';
      }),
    /step/,
  );
  await expectCorrupt(t, 'optimizer.safetensors', (p) => rm(p), /file is missing/);
});

test('expectConfig mismatch', async (t) => {
  const root = await tempDir(t);
  const { dir } = await makeCheckpoint(root);
  await rejectsWith(
    loadCheckpoint(dir, { expectConfig: { ...CFG, layers: 3 } }),
    MismatchError,
    /layers 2 \(checkpoint\) vs 3 \(expected\)/,
  );
});

test('tokenizer vocab mismatch', () => {
  checkTokenizerMatches(CFG, 97, 'tok.json');
  assert.throws(
    () => checkTokenizerMatches(CFG, 50257, 'data/tokenizer.json'),
    (e: unknown) => {
      assert.ok(e instanceof MismatchError && e instanceof TesseraError);
      assert.match(e.message, /50257/);
      assert.match(e.message, /97/);
      assert.match(e.message, /data\/tokenizer\.json/);
      return true;
    },
  );
});

test('safetensors reads F16 and BF16 as float32 and caps the header', async () => {
  // Hand-built file: a F16 [3] tensor and a BF16 [2] tensor.
  const hdr = JSON.stringify({
    a: { dtype: 'F16', shape: [3], data_offsets: [0, 6] },
    b: { dtype: 'BF16', shape: [2], data_offsets: [6, 10] },
  });
  const data = Buffer.alloc(10);
  data.writeUInt16LE(0x3c00, 0); // 1.0
  data.writeUInt16LE(0xc000, 2); // -2.0
  data.writeUInt16LE(0x0001, 4); // smallest subnormal 2^-24
  data.writeUInt16LE(0x3fc0, 6); // bf16 1.5
  data.writeUInt16LE(0xc2f7, 8); // bf16 -123.5
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hdr.length));
  const file = Buffer.concat([len, Buffer.from(hdr), data]);
  const { tensors } = decodeSafetensors(file);
  assert.deepEqual([...tensors.get('a')!.data], [1, -2, 2 ** -24]);
  assert.deepEqual([...tensors.get('b')!.data], [1.5, -123.5]);
  assert.throws(
    () => decodeSafetensors(file, 'x.safetensors', { maxHeaderBytes: 16 }),
    (e: unknown) => e instanceof CorruptFileError && /exceeds the 16-byte cap/.test(e.message),
  );
});
