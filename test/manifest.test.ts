/**
 * Run manifest: canonical encoding, runId stability, and rejection of anything malformed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { canonicalJson } from '../src/swarm/canonical.js';
import { sha256Hex } from '../src/util/hash.js';
import {
  MAX_MANIFEST_BYTES,
  ManifestError,
  createManifest,
  decodeManifest,
  encodeManifest,
  type ManifestInput,
} from '../src/swarm/manifest.js';
import { roundParams } from '../src/swarm/round.js';
import { DEFAULT_ADAMW } from '../src/train/adamw.js';
import { TesseraError } from '../src/util/errors.js';

function base(): ManifestInput {
  return {
    version: 1,
    name: 'brown-tiny',
    model: { vocabSize: 512, ctx: 64, dim: 64, layers: 2, heads: 2 },
    tokenizerSha256: 'a'.repeat(64),
    dataset: { name: 'brown', trainTokensSha256: 'b'.repeat(64), numShards: 32 },
    hyper: {
      innerSteps: 50,
      batch: 8,
      adamw: { ...DEFAULT_ADAMW },
      schedule: { kind: 'cosine', maxLr: 1e-3, minLrFrac: 0.1, warmupSteps: 20, totalSteps: 5000 },
      outer: { lr: 0.7, momentum: 0.9 },
      codec: { id: 'sparse', chunk: 4096, k: 64 },
      errorFeedback: 1,
    },
    genesisWeightsHash: 'c'.repeat(64),
    seed: 42,
    timing: { trainMs: 60_000, submitMs: 75_000, commitMs: 10_000, quorum: 0.75, minPeers: 2, maxMissedRounds: 2 },
  };
}

/** Deep copy with every object's keys in reverse order. */
function reverseKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(reverseKeys);
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v).reverse()) out[k] = reverseKeys((v as Record<string, unknown>)[k]);
    return out;
  }
  return v;
}

function rejects(input: unknown, pattern: RegExp, opts?: { requireCanonical?: boolean }): ManifestError {
  let caught: unknown;
  try {
    if (typeof input === 'string' || input instanceof Uint8Array) decodeManifest(input, opts);
    else createManifest(input as ManifestInput);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof ManifestError, `expected ManifestError, got ${String(caught)}`);
  assert.ok(caught instanceof TesseraError);
  assert.equal(caught.code, 'BAD_MANIFEST');
  assert.match(caught.message, pattern);
  return caught;
}

function mutate(f: (m: any) => void): ManifestInput {
  const m = base() as any;
  f(m);
  return m;
}

test('canonicalJson: sorted keys, no whitespace, JSON escaping, rejects non-JSON values', () => {
  assert.equal(
    canonicalJson({ b: 1, a: [true, null, 'x"y'], c: { z: 0.5, y: -0 } }),
    '{"a":[true,null,"x\\"y"],"b":1,"c":{"y":0,"z":0.5}}',
  );
  assert.equal(canonicalJson({ a: undefined, b: 2 }), '{"b":2}');
  assert.equal(canonicalJson({ é: 1, Z: 2, a: 3 }), '{"Z":2,"a":3,"é":1}');
  assert.equal(canonicalJson(1e21), '1e+21');
  assert.throws(() => canonicalJson({ x: NaN }), TesseraError);
  assert.throws(() => canonicalJson({ x: Infinity }), TesseraError);
  assert.throws(() => canonicalJson(new Date(0)), TesseraError);
  assert.throws(() => canonicalJson([undefined]), TesseraError);
  assert.throws(() => canonicalJson({ f: () => 1 }), TesseraError);
  assert.throws(() => canonicalJson(10n), TesseraError);
});

test('createManifest → decodeManifest round-trips; runId is sha256 of the canonical bytes', () => {
  const made = createManifest(base());
  assert.match(made.runId, /^[0-9a-f]{64}$/);
  assert.equal(made.runId, sha256Hex(made.bytes));
  const text = new TextDecoder().decode(made.bytes);
  assert.ok(!/\s/.test(text.replace(/"[^"]*"/g, '')), 'no whitespace outside strings');
  const back = decodeManifest(made.bytes, { requireCanonical: true });
  assert.deepEqual(back.manifest, made.manifest);
  assert.equal(back.runId, made.runId);
  assert.deepEqual(encodeManifest(back.manifest), made.bytes);
  // A JSON string (pretty-printed) decodes to the same run.
  const pretty = JSON.stringify(base(), null, 2);
  assert.equal(decodeManifest(pretty).runId, made.runId);
  // Defaults are filled in, so leaving them out or spelling them out is the same run.
  assert.equal(made.manifest.hyper.schedule.decayFrac, 0.2);
  const explicit = mutate((m) => {
    m.hyper.schedule.decayFrac = 0.2;
  });
  assert.equal(createManifest(explicit).runId, made.runId);
  // CID instead of a token hash is accepted.
  assert.doesNotThrow(() =>
    createManifest(
      mutate((m) => {
        delete m.dataset.trainTokensSha256;
        m.dataset.cid = 'bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi';
      }),
    ),
  );
  // Each codec id is accepted.
  for (const codec of [{ id: 'fp32' }, { id: 'fp16' }, { id: 'int8' }, { id: 'sparse', chunk: 256, k: 4 }]) {
    assert.doesNotThrow(() =>
      createManifest(
        mutate((m) => {
          m.hyper.codec = codec;
        }),
      ),
    );
  }
});

test('runId is stable under key reordering and whitespace, and changes with any field', () => {
  const id = createManifest(base()).runId;
  const reordered = reverseKeys(base()) as ManifestInput;
  assert.notEqual(JSON.stringify(reordered), JSON.stringify(base()));
  assert.equal(createManifest(reordered).runId, id);
  assert.equal(decodeManifest(JSON.stringify(reordered, null, 4)).runId, id);
  assert.equal(decodeManifest(new TextEncoder().encode(' \n' + JSON.stringify(reordered) + '\t')).runId, id);
  const changes: ((m: any) => void)[] = [
    (m) => {
      m.seed = 43;
    },
    (m) => {
      m.hyper.outer.lr = 0.69;
    },
    (m) => {
      m.hyper.codec = { id: 'int8' };
    },
    (m) => {
      m.timing.quorum = 1;
    },
    (m) => {
      m.dataset.numShards = 31;
    },
    (m) => {
      m.model.layers = 3;
    },
    (m) => {
      m.name = 'other';
    },
    (m) => {
      delete m.name;
    },
  ];
  const ids = new Set([id]);
  for (const f of changes) ids.add(createManifest(mutate(f)).runId);
  assert.equal(ids.size, changes.length + 1);
});

test('roundParams: the reducer settings come from the manifest and runId', () => {
  const d = createManifest(base());
  assert.deepEqual(roundParams(d), {
    runId: d.runId,
    innerSteps: 50,
    batch: 8,
    numShards: 32,
    trainMs: 60_000,
    submitMs: 75_000,
    commitMs: 10_000,
    quorum: 0.75,
    minPeers: 2,
    maxMissedRounds: 2,
    genesisWeightsHash: 'c'.repeat(64),
    retryMs: 10_000,
    overlap: 'none',
  });
  assert.equal(roundParams(d, 500).retryMs, 500);
});

test('decodeManifest requireCanonical rejects non-canonical bytes', () => {
  const made = createManifest(base());
  rejects(JSON.stringify(base(), null, 1), /not in canonical form/, { requireCanonical: true });
  const reordered = JSON.stringify(reverseKeys(made.manifest));
  rejects(reordered, /not in canonical form/, { requireCanonical: true });
  // Duplicate keys parse (last wins) but are never canonical.
  const text = new TextDecoder().decode(made.bytes);
  rejects('{"seed":1,' + text.slice(1), /not in canonical form/, { requireCanonical: true });
});

test('malformed manifests are rejected with a typed error naming the problem', () => {
  rejects('{', /not JSON/);
  rejects('', /not JSON/);
  rejects('[1,2]', /invalid manifest/);
  rejects('null', /invalid manifest/);
  rejects('42', /invalid manifest/);
  rejects(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), /not valid UTF-8/);
  rejects(
    mutate((m) => {
      m.version = 2;
    }),
    /version/,
  );
  rejects(
    mutate((m) => {
      delete m.tokenizerSha256;
    }),
    /tokenizerSha256/,
  );
  rejects(
    mutate((m) => {
      m.extra = 1;
    }),
    /extra|Unrecognized/i,
  );
  rejects(
    mutate((m) => {
      m.hyper.outer.nesterov = true;
    }),
    /hyper\.outer/,
  );
  rejects(
    mutate((m) => {
      m.genesisWeightsHash = 'C'.repeat(64);
    }),
    /genesisWeightsHash/,
  );
  rejects(
    mutate((m) => {
      m.genesisWeightsHash = 'c'.repeat(63);
    }),
    /genesisWeightsHash/,
  );
  rejects(
    mutate((m) => {
      m.dataset.cid = 'bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi';
    }),
    /exactly one of/,
  );
  rejects(
    mutate((m) => {
      delete m.dataset.trainTokensSha256;
    }),
    /exactly one of/,
  );
  rejects(
    mutate((m) => {
      m.dataset.numShards = 0;
    }),
    /numShards/,
  );
  rejects(
    mutate((m) => {
      m.timing.submitMs = 1000;
    }),
    /submitMs must be >= trainMs/,
  );
  rejects(
    mutate((m) => {
      m.timing.quorum = 0;
    }),
    /quorum/,
  );
  rejects(
    mutate((m) => {
      m.timing.quorum = 1.5;
    }),
    /quorum/,
  );
  rejects(
    mutate((m) => {
      m.timing.minPeers = 0;
    }),
    /minPeers/,
  );
  rejects(
    mutate((m) => {
      m.timing.trainMs = 1.5;
    }),
    /trainMs/,
  );
  rejects(
    mutate((m) => {
      m.hyper.codec = { id: 'sparse', chunk: 100, k: 4 };
    }),
    /power of two/,
  );
  rejects(
    mutate((m) => {
      m.hyper.codec = { id: 'sparse', chunk: 64, k: 65 };
    }),
    /k must be/,
  );
  rejects(
    mutate((m) => {
      m.hyper.codec = { id: 'zstd' };
    }),
    /hyper\.codec/,
  );
  rejects(
    mutate((m) => {
      m.hyper.codec = { id: 'fp16', chunk: 4 };
    }),
    /hyper\.codec/,
  );
  rejects(
    mutate((m) => {
      m.hyper.outer.lr = 0;
    }),
    /hyper\.outer\.lr/,
  );
  rejects(
    mutate((m) => {
      m.hyper.innerSteps = 0;
    }),
    /innerSteps/,
  );
  rejects(
    mutate((m) => {
      m.hyper.adamw.beta1 = 2;
    }),
    /beta1/,
  );
  rejects(
    mutate((m) => {
      m.hyper.schedule.kind = 'linear';
    }),
    /schedule\.kind/,
  );
  rejects(
    mutate((m) => {
      m.model.dim = 65;
    }),
    /divisible by heads/,
  );
  rejects(
    mutate((m) => {
      m.seed = -1;
    }),
    /seed/,
  );
  rejects(
    mutate((m) => {
      m.seed = 2 ** 60;
    }),
    /seed/,
  );
  rejects(JSON.stringify(base()).replace('"seed":42', '"seed":1e400'), /seed/);
  const e = rejects(
    mutate((m) => {
      m.seed = 'x';
      m.timing.quorum = 0;
    }),
    /invalid manifest/,
  );
  assert.ok(e.issues.length >= 2, 'every problem is listed');
});

test('oversized manifests are rejected before parsing', () => {
  const big = JSON.stringify(base()) + ' '.repeat(MAX_MANIFEST_BYTES);
  rejects(big, /over the 65536-byte limit/);
  rejects(new TextEncoder().encode(big), /over the 65536-byte limit/);
  // Multi-byte characters count as bytes, not UTF-16 units.
  const wide = JSON.stringify({ ...base(), name: 'x' }).replace(
    '"x"',
    JSON.stringify('é'.repeat(MAX_MANIFEST_BYTES / 2)),
  );
  assert.ok(wide.length < MAX_MANIFEST_BYTES * 1.01);
  rejects(wide, /over the 65536-byte limit/);
  rejects(
    mutate((m) => {
      m.name = 'n'.repeat(257);
    }),
    /name/,
  );
  rejects('['.repeat(60_000), /not JSON|invalid manifest/);
});
