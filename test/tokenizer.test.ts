import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { trainBpe } from '../src/data/bpe-train.js';
import { Tokenizer } from '../src/data/tokenizer.js';
import { EOT_TOKEN, pretokenRegex, utf8 } from '../src/data/bytelevel.js';
import { loadBrownCorpus } from '../src/data/corpus.js';
import { Rng } from '../src/util/rng.js';
import { CorruptFileError, InvalidInputError, MismatchError } from '../src/util/errors.js';

const brown = loadBrownCorpus();
const small = brown.train.slice(0, 40); // ~0.5 MB
let full: Tokenizer | undefined;
/** The default tokenizer (vocab 4096 on the Brown train split), trained once. */
function fullTokenizer(): Tokenizer {
  full ??= trainBpe(brown.train, { vocabSize: 4096 });
  return full;
}

const TRICKY = [
  '',
  ' ',
  '  ',
  '\n',
  '\n\n\n',
  '\t\t x',
  ' \n \n',
  'a  b   c    d',
  'trailing   ',
  '   leading',
  'Hello, world!',
  "It's, I'm, we'll, they've, you'd, don't, SHE'S, 'quoted'",
  "rock 'n' roll'''",
  '12345 678.90 1,000,000 3.14159 2^32 -7 +8 0x1F 1e-9',
  '２０２４年 ٣٤٥ ⅧⅫ ½ ²³',
  'naïve café résumé Ångström Øre straße ŁÓDŹ',
  'Привет мир, как дела?',
  'Γειά σου Κόσμε',
  'שלום עולם',
  'مرحبا بالعالم',
  '日本語のテキスト、中文文本。한국어 텍스트',
  'emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✨',
  'e\u0301 a\u0308 combining marks',
  'zero\u200bwidth\u200djoiner \ufeffbom',
  'nbsp\u00a0here\u2003em\u3000ideographic',
  'crlf\r\nline\rcr',
  `doc one${EOT_TOKEN}doc two`,
  `${EOT_TOKEN}`,
  `a ${EOT_TOKEN} b`,
  `x${EOT_TOKEN}${EOT_TOKEN}y`,
  `<|endoftext|`,
  `<|endoftext|>>`,
  'code: if (x != y) { return a[i] + b->c; } // comment',
  'url https://example.com/a?b=c&d=e#f',
  'email me@x.org',
  '$$$ ### @@@ !!! ??? ... --- ___ *** ~~~',
  'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
  'the the the the the of of of and and',
  ' '.repeat(300) + 'x' + '\n'.repeat(50),
  'Mr. Smith went to Washington. "Really?" she asked -- (yes)!',
];

function randomUnicode(rng: Rng, len: number): string {
  const ranges: [number, number][] = [
    [0x20, 0x7e],
    [0x20, 0x7e],
    [0x09, 0x0d],
    [0xa0, 0x24f],
    [0x370, 0x3ff],
    [0x400, 0x4ff],
    [0x590, 0x6ff],
    [0x900, 0x97f],
    [0x3040, 0x30ff],
    [0x4e00, 0x9fff],
    [0xac00, 0xd7a3],
    [0x1f300, 0x1faff],
    [0x10000, 0x10ffff],
    [0x300, 0x36f],
    [0x2000, 0x206f],
    [0xe000, 0xf8ff],
  ];
  let s = '';
  for (let i = 0; i < len; i++) {
    const [lo, hi] = ranges[rng.nextInt(ranges.length)];
    s += String.fromCodePoint(lo + rng.nextInt(hi - lo + 1));
  }
  return s;
}

/** Reference trainer: recounts every pair for every merge (slow, obviously correct). */
function naiveMerges(docs: string[], vocabSize: number): string[] {
  const counts = new Map<string, number>();
  for (const d of docs) for (const w of d.match(pretokenRegex()) ?? []) counts.set(w, (counts.get(w) ?? 0) + 1);
  const words = [...counts].map(([w, c]) => ({ s: Array.from(utf8(w)), c }));
  const bytesOf: number[][] = Array.from({ length: 256 }, (_, b) => [b]);
  const idOf = new Map<string, number>(bytesOf.map((b, i) => [b.join(','), i]));
  const merges: string[] = [];
  while (bytesOf.length < vocabSize - 1) {
    const pc = new Map<string, number>();
    for (const { s, c } of words)
      for (let i = 0; i + 1 < s.length; i++) {
        const k = `${s[i]},${s[i + 1]}`;
        pc.set(k, (pc.get(k) ?? 0) + c);
      }
    let best: [number, number] | null = null,
      bestC = 0;
    for (const [k, c] of pc) {
      const [a, b] = k.split(',').map(Number) as [number, number];
      if (c > bestC || (c === bestC && best !== null && (a < best[0] || (a === best[0] && b < best[1])))) {
        best = [a, b];
        bestC = c;
      }
    }
    assert.ok(best !== null);
    const [a, b] = best;
    const bytes = [...bytesOf[a], ...bytesOf[b]];
    let z = idOf.get(bytes.join(','));
    if (z === undefined) {
      z = bytesOf.length;
      bytesOf.push(bytes);
      idOf.set(bytes.join(','), z);
    }
    merges.push(`${a} ${b} ${z}`);
    for (const w of words) {
      const out: number[] = [];
      for (let i = 0; i < w.s.length;) {
        if (i + 1 < w.s.length && w.s[i] === a && w.s[i + 1] === b) {
          out.push(z);
          i += 2;
        } else out.push(w.s[i++]);
      }
      w.s = out;
    }
  }
  return merges;
}

const tmpDirs: string[] = [];
function tmpDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'tessera-tok-'));
  tmpDirs.push(d);
  return d;
}
after(() => {
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

test('training matches a recount-every-merge reference trainer', () => {
  const docs = small.slice(0, 3);
  const tok = trainBpe(docs, { vocabSize: 420 });
  const ours = Array.from({ length: tok.mergeCount }, (_, r) => tok.merge(r).join(' '));
  assert.deepEqual(ours, naiveMerges(docs, 420));
});

test('training is deterministic and the vocabulary size is exact', () => {
  const a = trainBpe(small, { vocabSize: 1000 });
  const b = trainBpe(small, { vocabSize: 1000 });
  assert.equal(a.serialize(), b.serialize());
  assert.equal(a.hash(), b.hash());
  for (const v of [257, 258, 300, 1000, 2048]) {
    const t = v === 1000 ? a : trainBpe(small, { vocabSize: v });
    assert.equal(t.vocabSize, v);
    assert.equal(t.eotId, v - 1);
    const json = t.toJSON();
    assert.equal(Object.keys(json.model.vocab).length, v);
    assert.equal(json.model.vocab[EOT_TOKEN], v - 1);
    assert.deepEqual(
      json.added_tokens.map((x) => [x.id, x.content, x.special]),
      [[v - 1, EOT_TOKEN, true]],
    );
    const ids = t.encode(small[0] + EOT_TOKEN);
    assert.ok(Math.max(...ids) === v - 1 && Math.min(...ids) >= 0);
  }
});

test('progress callback and input validation', () => {
  const seen: number[] = [];
  trainBpe(small.slice(0, 5), {
    vocabSize: 400,
    onProgress: (done, total) => {
      assert.equal(total, 143);
      seen.push(done);
    },
  });
  assert.equal(seen.at(-1), 143);
  assert.ok(seen.every((d, i) => i === 0 || d >= seen[i - 1]));
  assert.throws(() => trainBpe('abc', { vocabSize: 256 }), InvalidInputError);
  assert.throws(() => trainBpe('abc', { vocabSize: 1.5 }), InvalidInputError);
  assert.throws(
    () => trainBpe('abcabc', { vocabSize: 1000 }),
    (e: unknown) => e instanceof InvalidInputError && /too small for vocabSize 1000/.test(e.message),
  );
});

test('encode/decode round-trips arbitrary unicode', () => {
  const tok = trainBpe(small, { vocabSize: 1000 });
  const rng = new Rng(1234);
  for (const s of TRICKY) assert.equal(tok.decode(tok.encode(s)), s);
  for (let i = 0; i < 300; i++) {
    const s = randomUnicode(rng, 1 + rng.nextInt(80));
    assert.equal(tok.decode(tok.encode(s)), s);
    assert.equal(tok.decode(tok.encodeOrdinary(s)), s);
  }
  // The special token: recognised by encode, plain text for encodeOrdinary.
  assert.deepEqual(tok.encode(`a${EOT_TOKEN}b`), [...tok.encode('a'), tok.eotId, ...tok.encode('b')]);
  assert.ok(!tok.encodeOrdinary(`a${EOT_TOKEN}b`).includes(tok.eotId));
  assert.equal(tok.decode(tok.encodeOrdinary(EOT_TOKEN)), EOT_TOKEN);
  assert.throws(() => tok.decode([tok.vocabSize]), InvalidInputError);
  assert.throws(() => tok.decode([-1]), InvalidInputError);
});

test('full default tokenizer: fast, compresses Brown, same ids as @huggingface/tokenizers', () => {
  const t0 = performance.now();
  const tok = fullTokenizer();
  const trainMs = performance.now() - t0;
  assert.ok(trainMs < 30_000, `training took ${trainMs} ms`);
  const hf = new HfTokenizer(tok.toJSON(), tok.hfConfig());
  let chars = 0,
    tokens = 0;
  for (const doc of brown.val) {
    const ours = tok.encode(doc);
    assert.deepEqual(hf.encode(doc).ids, ours);
    chars += doc.length;
    tokens += ours.length;
  }
  assert.ok(chars / tokens > 3, `compression ${chars / tokens} chars/token`);
  const rng = new Rng(99);
  const inputs = [
    ...TRICKY,
    TRICKY.join(' '),
    ...Array.from({ length: 200 }, () => randomUnicode(rng, 1 + rng.nextInt(60))),
  ];
  for (const s of inputs) {
    assert.deepEqual(hf.encode(s).ids, tok.encode(s), `mismatch on ${JSON.stringify(s)}`);
    if (s.length > 0) assert.equal(hf.decode(tok.encode(s)), s);
  }
});

test('Python tokenizers reads our tokenizer.json (skipped when not installed)', (t) => {
  // TESSERA_PYTHON may name an interpreter that has `tokenizers` (e.g. a venv).
  const candidates = [process.env.TESSERA_PYTHON, '/usr/bin/python3', 'python3'].filter((p): p is string => !!p);
  const py = candidates.find((p) => spawnSync(p, ['-c', 'import tokenizers'], { stdio: 'ignore' }).status === 0);
  if (py === undefined) {
    t.skip('python tokenizers not installed');
    return;
  }
  const tok = fullTokenizer();
  const dir = tmpDir();
  const file = path.join(dir, 'tokenizer.json');
  tok.save(file);
  const texts = [...TRICKY, brown.val[0]];
  const script =
    'import json,sys\nfrom tokenizers import Tokenizer\nt=Tokenizer.from_file(sys.argv[1])\n' +
    'print(json.dumps([t.encode(s).ids for s in json.load(sys.stdin)]))';
  const r = spawnSync(py, ['-c', script, file], { input: JSON.stringify(texts), encoding: 'utf8', maxBuffer: 1 << 26 });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(
    JSON.parse(r.stdout),
    texts.map((s) => tok.encode(s)),
  );
});

test('save/load round-trip: atomic, hash is sha256 of the file', () => {
  const tok = trainBpe(small, { vocabSize: 600 });
  const dir = tmpDir();
  const file = path.join(dir, 'tokenizer.json');
  tok.save(file);
  assert.deepEqual(fs.readdirSync(dir), ['tokenizer.json']);
  assert.equal(createHash('sha256').update(fs.readFileSync(file)).digest('hex'), tok.hash());
  const back = Tokenizer.load(file, { expectVocabSize: 600 });
  assert.equal(back.hash(), tok.hash());
  assert.equal(back.vocabSize, 600);
  assert.equal(back.eotId, 599);
  assert.deepEqual(back.encode(small[1]), tok.encode(small[1]));
  // fromJSON of the object form too.
  assert.equal(Tokenizer.fromJSON(JSON.parse(JSON.stringify(tok.toJSON()))).hash(), tok.hash());
});

test('fromJSON / load reject wrong, malformed and truncated files with typed errors', () => {
  const tok = trainBpe(small, { vocabSize: 500 });
  const dir = tmpDir();
  const file = path.join(dir, 'tokenizer.json');
  tok.save(file);

  assert.throws(
    () => Tokenizer.load(file, { expectVocabSize: 4096 }),
    (e: unknown) =>
      e instanceof MismatchError && e.message.includes(file) && e.message.includes('500') && e.message.includes('4096'),
  );

  const text = fs.readFileSync(file, 'utf8');
  fs.writeFileSync(file, text.slice(0, Math.floor(text.length / 2)));
  assert.throws(
    () => Tokenizer.load(file),
    (e: unknown) => e instanceof CorruptFileError && e.path === file,
  );
  fs.writeFileSync(file, 'not json at all {');
  assert.throws(() => Tokenizer.load(file), CorruptFileError);
  fs.writeFileSync(file, Buffer.from([0xff, 0xfe, 0x00, 0x7b]));
  assert.throws(() => Tokenizer.load(file), CorruptFileError);
  assert.throws(() => Tokenizer.load(path.join(dir, 'missing.json')), InvalidInputError);

  const good = () => JSON.parse(JSON.stringify(tok.toJSON()));
  const cases: [string, (j: any) => void, RegExp][] = [
    [
      'not an object',
      (j) => {
        j.model = 7;
      },
      /model/,
    ],
    [
      'wrong model type',
      (j) => {
        j.model.type = 'WordPiece';
      },
      /BPE/,
    ],
    [
      'prefix space',
      (j) => {
        j.pre_tokenizer.add_prefix_space = true;
      },
      /add_prefix_space/,
    ],
    [
      'dropped merge',
      (j) => {
        j.model.merges.pop();
      },
      /inconsistent vocabulary: it has 500 tokens.*499/,
    ],
    [
      'extra merge',
      (j) => {
        j.model.merges.push(j.model.merges[0]);
      },
      /appears twice/,
    ],
    [
      'unknown merge token',
      (j) => {
        j.model.merges[3] = 'zzz yyy';
      },
      /missing from the vocab/,
    ],
    [
      'sparse ids',
      (j) => {
        j.model.vocab.a = 10_000;
      },
      /dense/,
    ],
    [
      'duplicate id',
      (j) => {
        j.model.vocab.a = j.model.vocab.b;
      },
      /twice/,
    ],
    [
      'missing byte',
      (j) => {
        j.model.vocab['ĀĀĀĀĀĀĀ'] = j.model.vocab['Ā'];
        delete j.model.vocab['Ā'];
      },
      /all 256 byte tokens, found 255/,
    ],
    [
      'non byte-level token',
      (j) => {
        const id = j.model.vocab.a;
        delete j.model.vocab.a;
        j.model.vocab['a\u4e00'] = id;
      },
      /byte-level|merge/,
    ],
    [
      'no special token',
      (j) => {
        j.added_tokens = [];
      },
      /exactly one special/,
    ],
    [
      'eot id mismatch',
      (j) => {
        j.added_tokens[0].id = 3;
      },
      /<\|endoftext\|>|used twice/,
    ],
    [
      'huge merges list',
      (j) => {
        j.model.merges = new Array((1 << 20) + 1).fill('a b');
      },
      /merges/,
    ],
  ];
  for (const [name, mutate, re] of cases) {
    const j = good();
    mutate(j);
    assert.throws(
      () => Tokenizer.fromJSON(j, { source: 'x/tokenizer.json' }),
      (e: unknown) => e instanceof CorruptFileError && e.path === 'x/tokenizer.json' && re.test(e.message),
      name,
    );
  }
  assert.throws(() => Tokenizer.fromJSON(null), CorruptFileError);
  assert.throws(() => Tokenizer.fromJSON('{}'), CorruptFileError);
});
