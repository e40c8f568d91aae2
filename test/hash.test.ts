/** util/hash.ts (pure, @noble/hashes) and util/hash-node.ts (node:crypto) give the same sha256. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { sha256Bytes, sha256Hex } from '../src/util/hash.js';
import { sha256HexNode } from '../src/util/hash-node.js';
import { Rng } from '../src/util/rng.js';

const ref = (d: string | Uint8Array): string => createHash('sha256').update(d).digest('hex');

test('sha256Hex matches published vectors', () => {
  assert.equal(sha256Hex(''), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  assert.equal(sha256Hex('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  assert.equal(sha256Hex(new Uint8Array(0)), sha256Hex(''));
});

test('sha256Hex equals node:crypto on strings (UTF-8, every padding boundary)', () => {
  const strings = ['', 'a', 'héllo ☃ 𝄞', '\0', 'tessera/round-seed/v1\nabc\n7', 'x'.repeat(1000)];
  for (let n = 50; n <= 130; n++) strings.push('y'.repeat(n));
  for (const s of strings) {
    assert.equal(sha256Hex(s), ref(s), JSON.stringify(s.slice(0, 20)));
    assert.equal(sha256HexNode(s), ref(s));
  }
});

test('sha256Hex equals node:crypto on bytes, views and Buffers', () => {
  const rng = new Rng(7n);
  for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 4096, 1 << 20, (3 << 20) + 17]) {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = rng.nextInt(256);
    assert.equal(sha256Hex(b), ref(b), `length ${n}`);
    assert.equal(sha256HexNode(b), ref(b));
    if (n > 2) assert.equal(sha256Hex(b.subarray(1, n - 1)), ref(b.subarray(1, n - 1)), `view of ${n}`);
  }
  const buf = randomBytes(1000);
  assert.equal(sha256Hex(buf), ref(buf));
  assert.equal(Buffer.from(sha256Bytes(buf)).toString('hex'), ref(buf));
});
