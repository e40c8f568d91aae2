/**
 * The WebGPU backend's WGSL kernels (src/kernels/webgpu/) against the TypeScript reference
 * kernels (src/kernels/ref.ts, the specification), on random inputs, to 1e-4: relative to the
 * output's scale, or for sums that may cancel, to the scale of the summed terms. Plus a 512³
 * matmul, flat parameter/gradient buffers with offset views (weight and bias in one buffer, as
 * the model lays them out), aliasing, bitwise repeatability, and argument checks.
 *
 * No GPU is needed: Debian's chromium ships SwiftShader's Vulkan driver, and VK_ICD_FILENAMES is
 * pointed at it (found through dpkg) before the `webgpu` package (Dawn) is loaded. Sizes are
 * small because SwiftShader is a CPU emulation. Under CI=true a missing adapter FAILS the tests;
 * locally they are skipped, with the reason, only when chromium is not installed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRefKernels } from '../src/kernels/ref.js';
import { WebGpuDevice, type GpuTensor } from '../src/kernels/webgpu/device.js';
import { SWIFTSHADER_ICD_PATHS } from '../src/kernels/webgpu/node-icd.js';
import { InvalidInputError } from '../src/util/errors.js';
import { uniform } from '../src/util/rng.js';

/** SwiftShader's ICD from the installed chromium packages' file lists, else the usual path. */
function swiftShaderIcd(): string | null {
  for (const pkg of ['chromium-common', 'chromium']) {
    try {
      const files = execFileSync('dpkg', ['-L', pkg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      const f = files.split('\n').find((l) => l.endsWith('vk_swiftshader_icd.json'));
      if (f && existsSync(f)) return f;
    } catch {
      /* package not installed */
    }
  }
  return SWIFTSHADER_ICD_PATHS.find((p) => existsSync(p)) ?? null;
}

const CI = process.env.CI === 'true';
const icd = process.env.VK_ICD_FILENAMES ?? swiftShaderIcd();
if (icd) process.env.VK_ICD_FILENAMES = icd; // before Dawn loads (WebGpuDevice.create imports it)
const skip =
  !icd && !CI ? 'chromium is not installed (no SwiftShader Vulkan ICD): apt-get install chromium libvulkan1' : false;

let dev: WebGpuDevice | undefined;
async function gpu(): Promise<WebGpuDevice> {
  if (!icd) throw new Error('CI=true but no SwiftShader Vulkan ICD: install chromium (.ci/run does)');
  dev ??= await WebGpuDevice.create();
  return dev;
}

const ref = createRefKernels();

function rand(n: number, seed: number, scale = 1): Float32Array {
  const r = uniform(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * scale;
  return a;
}
function randInt(n: number, seed: number, lo: number, hi: number): Int32Array {
  const r = uniform(seed);
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = lo + Math.floor(r() * (hi - lo));
  return a;
}
const abs = (a: Float32Array) => a.map(Math.abs);
function maxAbs(a: Float32Array): number {
  let m = 0;
  for (const x of a) m = Math.max(m, Math.abs(x));
  return m;
}
/** max |a - b| / max(1e-6, max |scale|) (scale defaults to b). */
function err(a: Float32Array, b: Float32Array, scale: Float32Array = b): number {
  assert.equal(a.length, b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Number.isNaN(a[i]) ? Infinity : Math.abs(a[i] - b[i]));
  return d / Math.max(1e-6, maxAbs(scale));
}

/** The worst error per kernel over a test, printed as a diagnostic. */
class Errors {
  readonly max = new Map<string, number>();
  check(what: string, a: Float32Array, b: Float32Array, scale?: Float32Array, tol = 1e-4): void {
    const e = err(a, b, scale);
    const k = what.split(' ')[0];
    this.max.set(k, Math.max(this.max.get(k) ?? 0, e));
    assert.ok(e < tol, `${what}: error ${e.toExponential(2)} >= ${tol}`);
  }
  report(t: { diagnostic(s: string): void }): void {
    for (const [k, e] of this.max) t.diagnostic(`${k}: max error ${e.toExponential(2)}`);
  }
}

/**
 * Tensors laid out in one flat buffer at odd offsets (like the model's parameter buffer), so every
 * kernel is exercised on views that share a buffer and are not 256-byte aligned.
 */
function flat(d: WebGpuDevice, parts: Float32Array[]): GpuTensor[] {
  const total = parts.reduce((s, p) => s + p.length + 3, 3);
  const all = new Float32Array(total);
  const views: [number, number][] = [];
  let at = 3;
  for (const p of parts) {
    all.set(p, at);
    views.push([at, p.length]);
    at += p.length + 3;
  }
  const t = d.upload(all);
  return views.map(([o, n]) => d.view(t, o, n));
}

test('matmul forward and backward (flat parameter and gradient buffers, offset views)', { skip }, async (t) => {
  const d = await gpu();
  const E = new Errors();
  for (const [N, C, OC] of [
    [1, 1, 1],
    [5, 1, 3],
    [37, 29, 41],
    [70, 65, 130],
  ] as const) {
    for (const withBias of [true, false]) {
      const what = `N=${N} C=${C} OC=${OC} bias=${withBias}`;
      const inp = rand(N * C, 1),
        w = rand(OC * C, 2, 0.5),
        b = rand(OC, 3);
      const [gw, gb] = flat(d, [w, b]);
      const [gin, gout] = flat(d, [inp, new Float32Array(N * OC)]);
      d.matmulForward(gout, gin, gw, withBias ? gb : null, N, C, OC);
      const o2 = new Float32Array(N * OC),
        o3 = new Float32Array(N * OC);
      ref.matmulForward(o2, inp, w, withBias ? b : null, N, C, OC);
      ref.matmulForward(o3, abs(inp), abs(w), withBias ? abs(b) : null, N, C, OC);
      E.check(`matmulForward ${what}`, await d.read(gout), o2, o3);

      const dout = rand(N * OC, 4),
        di = rand(N * C, 5),
        dw = rand(OC * C, 6),
        db = rand(OC, 7);
      const [gdw, gdb] = flat(d, [dw, db]);
      const [gdi, gdout] = flat(d, [di, dout]);
      d.matmulBackward(gdi, gdw, withBias ? gdb : null, gdout, gin, gw, N, C, OC);
      const di2 = di.slice(),
        dw2 = dw.slice(),
        db2 = db.slice(),
        di3 = abs(di),
        dw3 = abs(dw),
        db3 = abs(db);
      ref.matmulBackward(di2, dw2, withBias ? db2 : null, dout, inp, w, N, C, OC);
      ref.matmulBackward(di3, dw3, withBias ? db3 : null, abs(dout), abs(inp), abs(w), N, C, OC);
      E.check(`matmulBackward.dinp ${what}`, await d.read(gdi), di2, di3);
      E.check(`matmulBackward.dweight ${what}`, await d.read(gdw), dw2, dw3);
      E.check(`matmulBackward.dbias ${what}`, await d.read(gdb), db2, db3);
    }
  }
  E.report(t);
});

test('a 512³ matmul is correct', { skip }, async (t) => {
  const d = await gpu();
  const n = 512;
  const a = rand(n * n, 11),
    w = rand(n * n, 12);
  const ga = d.upload(a),
    gw = d.upload(w),
    go = d.alloc(n * n);
  await d.sync();
  const t0 = performance.now();
  d.matmulForward(go, ga, gw, null, n, n, n);
  const out = await d.read(go);
  const ms = performance.now() - t0;
  const r = new Float32Array(n * n),
    s = new Float32Array(n * n);
  ref.matmulForward(r, a, w, null, n, n, n);
  ref.matmulForward(s, abs(a), abs(w), null, n, n, n);
  const e = err(out, r, s);
  t.diagnostic(
    `512³ matmul: ${ms.toFixed(0)} ms incl. readback (${((2 * n ** 3) / ms / 1e6).toFixed(2)} GFLOP/s), max error ${e.toExponential(2)}`,
  );
  assert.ok(e < 1e-4, `512³ error ${e}`);
});

test('layernorm forward and backward', { skip }, async (t) => {
  const d = await gpu();
  const E = new Errors();
  for (const [N, C] of [
    [1, 1],
    [26, 37],
    [7, 515],
  ] as const) {
    const what = `N=${N} C=${C}`;
    const inp = rand(N * C, 20, 2),
      w = rand(C, 21),
      b = rand(C, 22);
    const out = new Float32Array(N * C),
      mean = new Float32Array(N),
      rstd = new Float32Array(N);
    ref.layernormForward(out, mean, rstd, inp, w, b, N, C);
    const [gw, gb] = flat(d, [w, b]);
    const [gin, gout, gm, gr] = flat(d, [inp, new Float32Array(N * C), new Float32Array(N), new Float32Array(N)]);
    d.layernormForward(gout, gm, gr, gin, gw, gb, N, C);
    E.check(`layernormForward.out ${what}`, await d.read(gout), out);
    E.check(`layernormForward.mean ${what}`, await d.read(gm), mean, abs(inp));
    E.check(`layernormForward.rstd ${what}`, await d.read(gr), rstd);
    const dout = rand(N * C, 23),
      di = rand(N * C, 24),
      dw = rand(C, 25),
      db = rand(C, 26);
    const [gdw, gdb] = flat(d, [dw, db]);
    const [gdi, gdout] = flat(d, [di, dout]);
    d.layernormBackward(gdi, gdw, gdb, gdout, gin, gw, gm, gr, N, C);
    const di2 = di.slice(),
      dw2 = dw.slice(),
      db2 = db.slice();
    ref.layernormBackward(di2, dw2, db2, dout, inp, w, mean, rstd, N, C);
    E.check(`layernormBackward.dinp ${what}`, await d.read(gdi), di2);
    E.check(`layernormBackward.dweight ${what}`, await d.read(gdw), dw2);
    E.check(`layernormBackward.dbias ${what}`, await d.read(gdb), db2);
  }
  E.report(t);
});

test('gelu forward and backward, including large |x|', { skip }, async (t) => {
  const d = await gpu();
  const E = new Errors();
  const n = 1000;
  const x = rand(n, 30, 5);
  x[0] = 40;
  x[1] = -40;
  x[2] = 0;
  const o = new Float32Array(n);
  ref.geluForward(o, x, n);
  const gx = d.upload(x),
    go = d.alloc(n);
  d.geluForward(go, gx, n);
  E.check('geluForward', await d.read(go), o);
  const dout = rand(n, 31),
    di = rand(n, 32);
  const gdi = d.upload(di);
  d.geluBackward(gdi, gx, d.upload(dout), n);
  ref.geluBackward(di, x, dout, n);
  E.check('geluBackward', await d.read(gdi), di);
  // in place, as the model never does but the contract allows
  d.geluForward(gx, gx, n);
  E.check('geluForward(in-place)', await d.read(gx), o);
  E.report(t);
});

test('causal attention forward and backward', { skip }, async (t) => {
  const d = await gpu();
  const E = new Errors();
  for (const [B, T, C, NH] of [
    [1, 1, 4, 1],
    [2, 13, 24, 3],
    [1, 70, 32, 2],
  ] as const) {
    const what = `B=${B} T=${T} C=${C} NH=${NH}`;
    const qkv = rand(B * T * 3 * C, 40);
    const out = new Float32Array(B * T * C),
      att = new Float32Array(B * NH * T * T);
    ref.attentionForward(out, att, qkv, B, T, C, NH);
    const gq = d.upload(qkv),
      go = d.alloc(B * T * C),
      ga = d.alloc(B * NH * T * T);
    d.attentionForward(go, ga, gq, B, T, C, NH);
    E.check(`attentionForward.out ${what}`, await d.read(go), out);
    E.check(`attentionForward.att ${what}`, await d.read(ga), att);
    const dout = rand(B * T * C, 41),
      di = rand(B * T * 3 * C, 42);
    const gdi = d.upload(di);
    d.attentionBackward(gdi, d.alloc(B * NH * T * T), d.upload(dout), gq, ga, B, T, C, NH);
    ref.attentionBackward(di, new Float32Array(B * NH * T * T), dout, qkv, att, B, T, C, NH);
    E.check(`attentionBackward.dinp ${what}`, await d.read(gdi), di);
  }
  E.report(t);
});

test(
  'flash-style attention (lse instead of probabilities) matches the reference forward and backward',
  { skip },
  async (t) => {
    const d = await gpu();
    const E = new Errors();
    for (const [B, T, C, NH] of [
      [1, 1, 4, 1],
      [2, 13, 24, 3],
      [1, 70, 32, 2],
      [1, 5, 160, 1],
    ] as const) {
      const what = `B=${B} T=${T} C=${C} NH=${NH}`;
      const qkv = rand(B * T * 3 * C, 43);
      const out = new Float32Array(B * T * C),
        att = new Float32Array(B * NH * T * T);
      ref.attentionForward(out, att, qkv, B, T, C, NH);
      const gq = d.upload(qkv),
        go = d.alloc(B * T * C),
        glse = d.alloc(B * NH * T);
      d.attentionForwardFlash(go, glse, gq, B, T, C, NH);
      E.check(`attentionForwardFlash.out ${what}`, await d.read(go), out);
      const dout = rand(B * T * C, 44),
        di = rand(B * T * 3 * C, 45);
      const gdi = d.upload(di);
      d.attentionBackwardFlash(gdi, d.alloc(B * NH * T), d.upload(dout), gq, go, glse, B, T, C, NH);
      ref.attentionBackward(di, new Float32Array(B * NH * T * T), dout, qkv, att, B, T, C, NH);
      E.check(`attentionBackwardFlash.dinp ${what}`, await d.read(gdi), di);
    }
    E.report(t);
  },
);

test(
  'flash attention with K/V tiles shared across query rows matches the reference forward and backward, every head-size bucket',
  { skip },
  async (t) => {
    const d = await gpu();
    const E = new Errors();
    for (const [B, T, C, NH] of [
      [1, 1, 4, 1],
      [2, 13, 24, 3], // hs 8: 16-row tiles, one partial
      [1, 37, 32, 2], // three tiles, the last partial
      [1, 21, 192, 2], // hs 96: the 128 bucket (8-row tiles)
      [1, 9, 160, 1], // hs 160: the 256 bucket (4-row tiles)
    ] as const) {
      const what = `B=${B} T=${T} C=${C} NH=${NH}`;
      const qkv = rand(B * T * 3 * C, 46);
      const out = new Float32Array(B * T * C),
        att = new Float32Array(B * NH * T * T);
      ref.attentionForward(out, att, qkv, B, T, C, NH);
      const gq = d.upload(qkv),
        go = d.alloc(B * T * C),
        glse = d.alloc(B * NH * T),
        rowLse = d.alloc(B * NH * T);
      d.attentionForwardTiled(go, glse, gq, B, T, C, NH);
      E.check(`attentionForwardTiled.out ${what}`, await d.read(go), out);
      d.attentionForwardFlash(d.alloc(B * T * C), rowLse, gq, B, T, C, NH);
      E.check(`attentionForwardTiled.lse ${what}`, await d.read(glse), await d.read(rowLse));
      const dout = rand(B * T * C, 47),
        di = rand(B * T * 3 * C, 48);
      const gdi = d.upload(di);
      d.attentionBackwardTiled(gdi, d.alloc(B * NH * T), d.upload(dout), gq, go, glse, B, T, C, NH);
      ref.attentionBackward(di, new Float32Array(B * NH * T * T), dout, qkv, att, B, T, C, NH);
      E.check(`attentionBackwardTiled.dinp ${what}`, await d.read(gdi), di);
    }
    assert.throws(
      () => d.attentionForwardTiled(d.alloc(260), d.alloc(1), d.alloc(780), 1, 1, 260, 1),
      InvalidInputError,
    );
    E.report(t);
  },
);

test('fused softmax + cross-entropy (ignored targets, dlogits aliasing logits) and softmax', { skip }, async (t) => {
  const d = await gpu();
  const E = new Errors();
  for (const [N, V] of [
    [1, 1],
    [5, 37],
    [9, 700],
  ] as const) {
    const what = `N=${N} V=${V}`;
    const logits = rand(N * V, 50, 6),
      targets = randInt(N, 51, 0, V);
    if (N > 1) targets[1] = -1;
    const losses = new Float32Array(N),
      dl = new Float32Array(N * V);
    ref.crossEntropyForwardBackward(losses, dl, logits, targets, N, V, 1 / N);
    const gl = d.upload(logits),
      gt = d.upload(targets),
      gloss = d.alloc(N),
      gdl = d.alloc(N * V);
    d.crossEntropyForwardBackward(gloss, gdl, gl, gt, N, V, 1 / N);
    E.check(`crossEntropy.losses ${what}`, await d.read(gloss), losses);
    E.check(`crossEntropy.dlogits ${what}`, await d.read(gdl), dl);
    d.crossEntropyForwardBackward(gloss, null, gl, gt, N, V, 1 / N);
    E.check(`crossEntropy.losses(no-grad) ${what}`, await d.read(gloss), losses);
    const probs = new Float32Array(N * V);
    ref.softmax(probs, logits, N, V);
    const gp = d.alloc(N * V);
    d.softmax(gp, gl, N, V);
    E.check(`softmax ${what}`, await d.read(gp), probs);
    d.crossEntropyForwardBackward(gloss, gl, gl, gt, N, V, 1 / N);
    E.check(`crossEntropy.dlogits(aliased) ${what}`, await d.read(gl), dl);
  }
  E.report(t);
});

test('embedding forward and backward (repeated tokens accumulate in position order)', { skip }, async (t) => {
  const d = await gpu();
  const E = new Errors();
  const B = 3,
    T = 7,
    C = 10,
    V = 5;
  const tokens = randInt(B * T, 60, 0, V);
  const wte = rand(V * C, 61),
    wpe = rand(T * C, 62);
  const out = new Float32Array(B * T * C);
  ref.embeddingForward(out, tokens, wte, wpe, B, T, C);
  const [gwte, gwpe] = flat(d, [wte, wpe]);
  const go = d.alloc(B * T * C);
  d.embeddingForward(go, d.upload(tokens), gwte, gwpe, B, T, C);
  E.check('embeddingForward', await d.read(go), out);
  const dout = rand(B * T * C, 63),
    dwte = rand(V * C, 64),
    dwpe = rand(T * C, 65);
  const [gdwte, gdwpe] = flat(d, [dwte, dwpe]);
  d.embeddingBackward(gdwte, gdwpe, d.upload(dout), tokens, B, T, C);
  ref.embeddingBackward(dwte, dwpe, dout, tokens, B, T, C);
  E.check('embeddingBackward.dwte', await d.read(gdwte), dwte);
  E.check('embeddingBackward.dwpe', await d.read(gdwpe), dwpe);
  assert.throws(
    () =>
      d.embeddingBackward(
        gdwte,
        gdwpe,
        d.upload(dout),
        tokens.map(() => V),
        B,
        T,
        C,
      ),
    InvalidInputError,
  );
  E.report(t);
});

test('add, scale, sum of squares (global gradient norm) and AdamW', { skip }, async (t) => {
  const d = await gpu();
  const E = new Errors();
  const n = 3001;
  const a = rand(n, 70),
    b = rand(n, 71);
  const o = new Float32Array(n);
  ref.add(o, a, b, n);
  const ga = d.upload(a),
    go = d.alloc(n);
  d.add(go, ga, d.upload(b), n);
  E.check('add', await d.read(go), o);
  ref.scale(o, 0.37);
  d.scale(go, 0.37);
  E.check('scale', await d.read(go), o);
  for (const len of [1, 4097, 300_001]) {
    const x = rand(len, 72);
    const want = ref.sumSquares(x);
    const got = await d.sumSquares(d.upload(x));
    E.check(`sumSquares n=${len}`, new Float32Array([got]), new Float32Array([want]));
  }
  const m = 2000;
  const p = rand(m, 73),
    mm = new Float32Array(m),
    v = new Float32Array(m);
  const [gp, gm, gv] = flat(d, [p, mm, v]);
  for (const step of [1, 2, 3]) {
    const g = rand(m, 74 + step, 0.1);
    ref.adamw(p, g, mm, v, 1e-3, 0.9, 0.95, 1e-8, 0.1, step);
    d.adamw(gp, d.upload(g), gm, gv, 1e-3, 0.9, 0.95, 1e-8, 0.1, step);
  }
  E.check('adamw.params', await d.read(gp), p);
  E.check('adamw.m', await d.read(gm), mm);
  E.check('adamw.v', await d.read(gv), v);
  E.report(t);
});

test('the same work twice gives the same bits (no atomics, fixed reduction order)', { skip }, async () => {
  const d = await gpu();
  const run = async () => {
    const B = 2,
      T = 17,
      C = 24,
      NH = 2,
      N = B * T;
    const x = d.upload(rand(N * C, 80)),
      w = d.upload(rand(3 * C * C, 81)),
      qkv = d.alloc(N * 3 * C);
    d.matmulForward(qkv, x, w, null, N, C, 3 * C);
    const att = d.alloc(B * NH * T * T),
      y = d.alloc(N * C);
    d.attentionForward(y, att, qkv, B, T, C, NH);
    const dq = d.alloc(N * 3 * C);
    d.attentionBackward(dq, d.alloc(B * NH * T * T), y, qkv, att, B, T, C, NH);
    const lse = d.alloc(B * NH * T),
      yf = d.alloc(N * C);
    d.attentionForwardFlash(yf, lse, qkv, B, T, C, NH);
    d.attentionBackwardFlash(dq, d.alloc(B * NH * T), yf, qkv, yf, lse, B, T, C, NH);
    const dx = d.alloc(N * C),
      dw = d.alloc(3 * C * C);
    d.matmulBackward(dx, dw, null, dq, x, w, N, C, 3 * C);
    return [await d.read(dx), await d.read(dw), await d.read(yf), new Float32Array([await d.sumSquares(dw)])];
  };
  const a = await run(),
    b = await run();
  a.forEach((x, i) => assert.deepEqual(new Uint32Array(x.buffer), new Uint32Array(b[i].buffer), `output #${i}`));
});

test('bad arguments throw typed errors before any work is encoded', { skip }, async () => {
  const d = await gpu();
  const small = d.alloc(3);
  assert.throws(() => d.matmulForward(small, small, small, null, 2, 2, 2), InvalidInputError);
  assert.throws(() => d.view(small, 2, 2), InvalidInputError);
  assert.throws(() => d.write(small, new Float32Array(4)), InvalidInputError);
  assert.throws(() => d.attentionForward(small, small, small, 1, 1, 5, 2), InvalidInputError);
  assert.throws(() => d.adamw(small, small, small, small, 1, 0.9, 0.9, 1e-8, 0, 0), InvalidInputError);
  await d.sync();
});

test('closes the device', { skip }, () => {
  dev?.destroy();
});
