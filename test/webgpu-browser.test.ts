/**
 * The same WGSL kernels in a browser: headless Chromium (Debian's, driven by playwright-core)
 * loads the compiled WebGPU backend and model (dist/src/kernels/webgpu, dist/src/model/gpt-webgpu.js)
 * as ES modules from a page on http://127.0.0.1 (WebGPU is exposed only to secure contexts, and
 * a loopback origin is one), runs one GPT training step (forward, backward, clip, AdamW) from
 * the same weights and batch as Node, and the results are compared with Node's (Dawn from npm
 * `webgpu`). Both run on SwiftShader, but through different Dawn builds (Chromium's and the npm
 * package's), so the comparison is to a tolerance, with the number of bitwise-equal weights
 * reported. Under CI=true a missing chromium or adapter fails; locally a missing chromium skips.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { SWIFTSHADER_ICD_PATHS } from '../src/kernels/webgpu/node-icd.js';
import { WebGpuDevice } from '../src/kernels/webgpu/device.js';
import { WebGpuGPT } from '../src/model/gpt-webgpu.js';
import { GPT } from '../src/model/gpt.js';
import { createRefKernels } from '../src/kernels/ref.js';
import { uniform } from '../src/util/rng.js';

const CHROMIUM = process.env.TESSERA_CHROMIUM ?? '/usr/bin/chromium';
const CI = process.env.CI === 'true';
const icd = process.env.VK_ICD_FILENAMES ?? SWIFTSHADER_ICD_PATHS.find((p) => existsSync(p)) ?? null;
if (icd) process.env.VK_ICD_FILENAMES = icd; // before Dawn loads
const skip =
  (!existsSync(CHROMIUM) || !icd) && !CI ? `${CHROMIUM} not found (apt-get install chromium; CI installs it)` : false;

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const PAGE = `<!doctype html>
<script type="importmap">{"imports": {"zod": "/node_modules/zod/index.js"}}</script>
<script type="module">
import { WebGpuDevice } from '/dist/src/kernels/webgpu/device.js';
import { WebGpuGPT } from '/dist/src/model/gpt-webgpu.js';
window.tesseraStep = async (cfg, params, inputs, targets, B, T, lr) => {
  const dev = await WebGpuDevice.fromGpu(navigator.gpu);
  const gpt = new WebGpuGPT(dev, cfg);
  gpt.setParams(new Float32Array(params));
  const loss = await gpt.trainStep(new Int32Array(inputs), new Int32Array(targets), B, T, lr);
  const p = await dev.read(gpt.params);
  const adapter = dev.adapterInfo.architecture;
  dev.destroy();
  return { loss, params: Array.from(p), adapter };
};
window.tesseraReady = true;
</script>`;

/** Serves the page, and read-only the compiled modules and zod the page imports (nothing else). */
function serve(): Promise<Server> {
  const srv = createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (url === '/') {
      res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
      return;
    }
    const rel = normalize(decodeURIComponent(url)).replace(/^\/+/, '');
    const allowed = (rel.startsWith('dist/src/') || rel.startsWith('node_modules/zod/')) && rel.endsWith('.js');
    const file = join(root, rel);
    if (!allowed || rel.includes('..') || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'text/javascript' }).end(readFileSync(file));
  });
  return new Promise((ok) => srv.listen(0, '127.0.0.1', () => ok(srv)));
}

test('one GPT training step in Chromium (WebGPU on SwiftShader) matches the same step in Node', { skip }, async (t) => {
  const cfg = { vocabSize: 37, ctx: 8, dim: 16, layers: 2, heads: 2 };
  const B = 2,
    T = 8,
    lr = 1e-3;
  const cpu = new GPT(cfg, createRefKernels());
  cpu.init(3);
  const r = uniform(5);
  const inputs = new Int32Array(B * T).map(() => Math.floor(r() * cfg.vocabSize));
  const targets = new Int32Array(B * T).map(() => Math.floor(r() * cfg.vocabSize));

  const dev = await WebGpuDevice.create();
  const node = new WebGpuGPT(dev, cfg);
  node.setParams(cpu.params);
  const nodeLoss = await node.trainStep(inputs, targets, B, T, lr);
  const nodeParams = await dev.read(node.params);
  dev.destroy();

  const srv = await serve();
  const port = (srv.address() as { port: number }).port;
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      '--disable-dev-shm-usage',
      '--enable-unsafe-webgpu',
      '--enable-features=Vulkan',
      '--use-vulkan=swiftshader',
      '--use-webgpu-adapter=swiftshader',
    ],
  });
  try {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.waitForFunction('window.tesseraReady === true', undefined, { timeout: 30_000 });
    const res = await page.evaluate(
      ([c, p, i, g, b, tt, l]) =>
        (
          globalThis as unknown as {
            tesseraStep(...a: unknown[]): Promise<{ loss: number; params: number[]; adapter: string }>;
          }
        ).tesseraStep(c, p, i, g, b, tt, l),
      [cfg, Array.from(cpu.params), Array.from(inputs), Array.from(targets), B, T, lr] as const,
    );
    assert.deepEqual(errors, []);
    assert.equal(res.adapter, 'swiftshader');
    let maxDiff = 0,
      same = 0;
    for (let i = 0; i < nodeParams.length; i++) {
      const d = Math.abs(res.params[i] - nodeParams[i]);
      maxDiff = Math.max(maxDiff, d);
      if (Math.fround(res.params[i]) === nodeParams[i]) same++;
    }
    t.diagnostic(
      `loss node ${nodeLoss} chromium ${res.loss}; weights: max |diff| ${maxDiff.toExponential(2)}, ` +
        `${same}/${nodeParams.length} bitwise equal`,
    );
    assert.ok(Math.abs(res.loss - nodeLoss) < 1e-5 * Math.abs(nodeLoss), `loss ${res.loss} vs ${nodeLoss}`);
    assert.ok(maxDiff < 1e-5 * lr, `weights differ by ${maxDiff}`);
  } finally {
    await browser.close();
    srv.close();
  }
});
