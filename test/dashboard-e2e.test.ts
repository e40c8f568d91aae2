/**
 * The dashboard end to end, in a real browser: two real `tessera node` processes train a tiny
 * GPT, one serves the dashboard, and Debian's Chromium (driven by playwright-core) opens it.
 * Checks: the loss chart reaches 3 rounds, the peers table lists both peers, "generate"
 * returns text, the layout fits 1280 px and 400 px without horizontal scrolling, no console
 * errors, the ownership panel says the node is not linked to a chain, and after `kill -9` of the
 * other peer the page keeps updating and marks it stale or gone. A second test serves a fixture
 * node view with a ledger (no processes) and reads the ownership panel: shares table, percentages,
 * totals, queue, minted rounds, proposals, the offline badge, and the hint once the link is gone.
 * Screenshots go to test-artifacts/ (git-ignored); TESSERA_UPDATE_SCREENSHOT=1 also copies the
 * 1280 px one to docs/dashboard.png for the README. A third serves a real local pipeline (3 stages ×
 * 2 replicas over loopback) and reads the stage map: who holds which stage, a killed replica gone
 * from it, and Generate through the stage holders.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { buildManifest } from '../src/swarm/manifest-builder.js';
import { defaultCacheDir } from '../src/cli/train.js';
import { dataDirFor, freePort, preparePeer, spawnPeer, stopAll, type PeerProc } from './support/swarm.js';
import { startDashboard, type DashboardSource } from '../src/dashboard/server.js';
import type { NodeView, RoundReport } from '../src/peer/node.js';
import { ledgerView, report, view } from './dashboard-fixtures.js';
import { GPT } from '../src/model/gpt.js';
import { loadKernels } from '../src/kernels/index.js';
import { loadCorpus, prepareDataset } from '../src/data/index.js';
import { BatchSampler } from '../src/data/batches.js';
import { startLocalPipeline } from '../src/pipeline/local.js';
import { defaultPipeManifest, pipeManifest } from '../src/pipeline/run.js';
import { localDashSource, sampleThrough } from '../src/dashboard/pipeline.js';

// Functions passed to page.evaluate run in the page (the page's CSP forbids string evaluation);
// tsconfig has no DOM lib, so declare the little they touch.
declare const document: {
  documentElement: { scrollWidth: number };
  getElementById(id: string): { dataset: Record<string, string | undefined> } | null;
  querySelector(sel: string): { getBoundingClientRect(): { width: number } } | null;
};

const CHROMIUM = process.env.TESSERA_CHROMIUM ?? '/usr/bin/chromium';
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const artifacts = join(root, 'test-artifacts');
const work = mkdtempSync(join(tmpdir(), 'tessera-dash-'));
const peers: PeerProc[] = [];
let browser: Browser | null = null;
const launch = async (): Promise<Browser> =>
  (browser ??= await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  }));
after(async () => {
  await browser?.close().catch(() => undefined);
  await stopAll(peers, 2000);
  rmSync(work, { recursive: true, force: true });
});

async function until<T>(
  what: string,
  f: () => Promise<T | undefined | false> | T | undefined | false,
  ms: number,
): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() - t0 > ms) {
      const tails = peers
        .map(
          (p) =>
            `peer ${p.index} (${p.alive ? 'alive' : 'dead'}) rounds [${p.reports.map((r) => r.round).join(' ')}]\n${p.stderr.join('').slice(-600)}`,
        )
        .join('\n');
      throw new Error(`timed out after ${ms} ms waiting for ${what}\n${tails}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Rows of the peers table: [peer id, status]. */
async function tableRows(page: Page): Promise<[string, string][]> {
  const rows = page.locator('#peers tbody tr');
  const out: [string, string][] = [];
  for (let i = 0; i < (await rows.count()); i++)
    out.push([(await rows.nth(i).getAttribute('data-peer'))!, (await rows.nth(i).getAttribute('data-status'))!]);
  return out;
}

async function fitsWidth(page: Page, width: number): Promise<void> {
  const sw = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(sw <= width, `page is ${sw} px wide in a ${width} px viewport (no horizontal scrolling)`);
  for (const id of ['loss-chart', 'bytes-chart']) {
    const box = await page.locator(`#${id} canvas`).first().boundingBox();
    assert.ok(
      box && box.width > 150 && box.x >= 0 && box.x + box.width <= width + 0.5,
      `#${id} fits: ${JSON.stringify(box)}`,
    );
  }
}

test(
  'dashboard in Chromium: live loss chart, peers, generate, 1280/400 px, a peer killed',
  {
    skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} not found (apt-get install chromium; CI installs it)`,
    timeout: 120_000,
  },
  async () => {
    const t0 = Date.now();
    const cacheDir = defaultCacheDir();
    const { decoded } = buildManifest({
      vocab: 512,
      ctx: 32,
      dim: 32,
      layers: 1,
      heads: 2,
      batch: 2,
      inner: 4,
      lr: 3e-3,
      codec: 'sparse',
      shards: 8,
      seed: 11,
      trainMs: 800,
      submitMs: 1500,
      commitMs: 1000,
      quorum: 1,
      minPeers: 1,
      maxMissed: 2,
      cacheDir,
      name: 'dashboard-e2e',
    });
    const run = join(work, 'run.json');
    writeFileSync(run, JSON.stringify(decoded.manifest));
    const specs = await Promise.all([0, 1].map((i) => preparePeer(i, dataDirFor(work, i))));
    const ids = specs.map((s) => s.peerId);
    // The dashboard runs on the tie-breaker (lowest id): alone, it is still a quorum after the kill.
    const host = [...ids].sort()[0];
    const port = await freePort();
    const url = `http://127.0.0.1:${port}/`;
    for (const s of specs) {
      peers.push(
        spawnPeer(s, {
          run,
          bootstrap: specs.map((x) => x.addr),
          genesisPeers: ids,
          cacheDir,
          ...(s.peerId === host ? { dashboard: { port } } : {}),
        }),
      );
    }
    const dashPeer = peers.find((p) => p.peerId === host)!;
    const victim = peers.find((p) => p.peerId !== host)!;
    await until('the dashboard to answer', async () => (await fetch(url + 'api/status').catch(() => null))?.ok, 30_000);
    const up = Date.now() - t0;

    const ctx = await (await launch()).newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
    const page = await ctx.newPage();
    const problems: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('requestfailed', (r) => {
      if (!r.url().endsWith('/api/events')) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
    });
    page.on('response', (r) => {
      if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`);
    });

    const tNav = performance.now();
    await page.goto(url, { waitUntil: 'load' });
    const loadMs = performance.now() - tNav;
    await page.locator('#live', { hasText: 'live' }).waitFor({ timeout: 10_000 });
    const liveMs = performance.now() - tNav;

    // The loss chart fills in as rounds complete.
    await page.waitForFunction(() => Number(document.getElementById('loss-chart')?.dataset.rounds) >= 3, null, {
      timeout: 60_000,
      polling: 200,
    });
    assert.ok((await page.locator('#loss-chart canvas').count()) >= 1, 'uPlot drew a canvas');
    assert.match((await page.locator('#round').textContent())!, /^\d+$/);
    assert.match((await page.locator('#run').textContent())!, /dashboard-e2e/);
    assert.match(
      (await page.locator('#weights-hash').getAttribute('title'))!,
      /^[0-9a-f]{64}$/,
      'the current weights hash is shown',
    );

    // Both peers in the table, active, both with rounds contributed.
    const rows = await until(
      'both peers in the table',
      async () => {
        const r = await tableRows(page);
        return r.length === 2 && r;
      },
      10_000,
    );
    assert.deepEqual(rows.map((r) => r[0]).sort(), [...ids].sort());
    assert.deepEqual(
      rows.map((r) => r[1]),
      ['active', 'active'],
    );
    assert.equal(rows[0][0], host, 'this peer first');
    const api = (await (await fetch(url + 'api/peers')).json()) as {
      peers: { id: string; roundsContributed: number }[];
    };
    assert.ok(
      api.peers.every((p) => p.roundsContributed >= 1),
      'the JSON API agrees: both contributed',
    );
    // No --rpc/--contract: the ownership panel says the node is not linked, and how to link it.
    assert.match(
      (await page.locator('#ledger-none').textContent())!,
      /not linked to a chain.*tessera node --rpc <url> --contract <address>/,
    );
    assert.equal(await page.locator('#ledger').getAttribute('data-linked'), 'no');

    // Generate from the current weights.
    await page.locator('#gen-prompt').fill('The jury said');
    const tGen = performance.now();
    await page.locator('#gen-go').click();
    await page.locator('#gen-out[data-tokens]').waitFor({ timeout: 10_000 });
    const genMs = performance.now() - tGen;
    const gen = (await page.locator('#gen-out').textContent())!;
    assert.ok(
      gen.startsWith('The jury said') && gen.length > 'The jury said'.length,
      `generated text: ${JSON.stringify(gen)}`,
    );
    assert.ok(Number(await page.locator('#gen-out').getAttribute('data-tokens')) > 0);

    mkdirSync(artifacts, { recursive: true });
    await fitsWidth(page, 1280);
    const shot = join(artifacts, 'dashboard-1280.png');
    await page.screenshot({ path: shot, fullPage: true });
    if (process.env.TESSERA_UPDATE_SCREENSHOT === '1') copyFileSync(shot, join(root, 'docs', 'dashboard.png'));

    // 400 px: one column, nothing wider than the screen (the table scrolls inside its card).
    await page.setViewportSize({ width: 400, height: 900 });
    await page.waitForFunction(
      () => (document.querySelector('#loss-chart canvas')?.getBoundingClientRect().width ?? 1e9) <= 400,
      null,
      { timeout: 5000 },
    );
    await fitsWidth(page, 400);
    await page.screenshot({ path: join(artifacts, 'dashboard-400.png'), fullPage: true });
    // A fresh load at 400 px lays out the same way.
    const small = await ctx.newPage();
    await small.setViewportSize({ width: 400, height: 900 });
    small.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console (400 px page): ${m.text()}`);
    });
    await small.goto(url, { waitUntil: 'load' });
    await small.locator('#live', { hasText: 'live' }).waitFor({ timeout: 10_000 });
    await fitsWidth(small, 400);
    await small.close();
    await page.setViewportSize({ width: 1280, height: 900 });

    // Kill the other peer: the page keeps updating, and shows it stale (off the topic) or gone (off the roster).
    const roundAtKill = Number(await page.locator('#round').textContent());
    const tKill = performance.now();
    victim.child.kill('SIGKILL');
    await until(
      'the killed peer marked stale or gone',
      async () => {
        const r = await tableRows(page);
        const v = r.find((x) => x[0] === victim.peerId);
        return v !== undefined && v[1] !== 'active';
      },
      15_000,
    );
    const staleMs = performance.now() - tKill;
    await until(
      'the page to show later rounds after the kill',
      async () => Number(await page.locator('#round').textContent()) >= roundAtKill + 2,
      30_000,
    );
    assert.ok(dashPeer.alive, 'the dashboard peer is still running');
    assert.equal(await page.locator('#live').textContent(), 'live');
    const rounds = Number(await page.locator('#loss-chart').getAttribute('data-rounds'));
    await page.screenshot({ path: join(artifacts, 'dashboard-after-kill.png'), fullPage: true });

    assert.deepEqual(problems, [], 'no console errors, failed requests or HTTP errors');
    const summary = {
      dashboardUpMs: up,
      pageLoadMs: Math.round(loadMs),
      firstSnapshotMs: Math.round(liveMs),
      generateMs: Math.round(genMs),
      staleAfterKillMs: Math.round(staleMs),
      roundsCharted: rounds,
      seconds: (Date.now() - t0) / 1000,
    };
    process.stderr.write(`dashboard-e2e: ${JSON.stringify(summary)}\n`);
  },
);

/** A node that is only a view (with or without a ledger) and a round now and then. */
class FixtureNode implements DashboardSource {
  readonly events = new EventEmitter<{ round: [RoundReport] }>();
  constructor(public v: NodeView) {}
  view(): NodeView {
    return this.v;
  }
  generate(): { text: string; tokens: number } {
    return { text: '', tokens: 0 };
  }
}

/** The text of each cell of each body row of `table`. */
async function cells(page: Page, table: string): Promise<string[][]> {
  return page
    .locator(`${table} tbody tr`)
    .evaluateAll((trs) =>
      trs.map((tr) => [...(tr as unknown as { cells: { textContent: string }[] }).cells].map((td) => td.textContent)),
    );
}

test(
  'ownership panel in Chromium: shares, percentages, totals, queue, minted rounds, proposals; offline; unlinked',
  {
    skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} not found (apt-get install chromium; CI installs it)`,
    timeout: 60_000,
  },
  async () => {
    const t0 = Date.now();
    const node = new FixtureNode(view({ ledger: ledgerView({ checkedAt: Date.now() }) }));
    const d = await startDashboard(node, { port: 0, pollMs: 50 });
    // A fixed zone and locale, so that a deadline's local time reads the same on every machine.
    const ctx = await (
      await launch()
    ).newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1, timezoneId: 'UTC', locale: 'en-US' });
    const page = await ctx.newPage();
    const problems: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    try {
      await page.goto(d.url, { waitUntil: 'load' });
      node.events.emit('round', report(0));
      await page.locator('#ledger[data-linked="yes"]').waitFor({ timeout: 10_000 });
      assert.equal(await page.locator('#ledger-none').isVisible(), false);
      assert.equal(await page.locator('#ledger-contract').textContent(), '0x8464135c8F25Da09e49BC8782676a84730C318bC');
      assert.equal(await page.locator('#ledger-chain').textContent(), '31337');
      assert.equal(await page.locator('#ledger-badge').textContent(), 'online');

      // Shares: 4 decimals cut from 18-decimal base units in BigInt (Number would print …123.4568),
      // percent of supply, claimable ETH; this node's row (matched case-insensitively) marked "me".
      assert.deepEqual(await cells(page, '#shares'), [
        ['0xfB69…d359', 'peer-a', '1,234,567,890,123.4567', '62.50%', '3'],
        ['0x5aAe…eAedme', 'peer-me', '617,283,945,061.7283', '31.25%', '1.5'],
        ['0xdbF0…C6FB', '–', '123,456,789,012.3456', '6.25%', '<0.000001'],
      ]);
      assert.deepEqual(
        await page
          .locator('#shares tbody tr')
          .evaluateAll((trs) => trs.map((tr) => (tr as unknown as { className: string }).className)),
        ['', 'me', ''],
      );
      assert.equal(
        await page.locator('#shares tbody tr').first().locator('code').first().getAttribute('title'),
        '0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359',
      );

      const totals = (await page.locator('#ledger-totals').textContent())!;
      assert.match(totals, /supply1,975,308,624,197\.5308 shares/);
      assert.match(totals, /revenue paid9,007\.199254 ETH/);
      assert.match(totals, /claimed1\.5 ETH/);
      assert.match(totals, /validators3 of 4 sign a round/);
      assert.equal(await page.locator('#ledger-queue').textContent(), 'pending3submitted17last errornone');

      // Minted rounds: 999.999999999999999999 shares is cut, not rounded up to 1,000.
      assert.deepEqual(await cells(page, '#minted'), [
        ['12', '1,000.0000', 'bafybeigdyrzt5sf…'],
        ['11', '999.9999', 'bafybeihdwdcefgh…'],
      ]);

      // Proposals: votes in shares, the deadline in local (here UTC) time, the status; markup stays text.
      assert.deepEqual(await cells(page, '#proposals'), [
        [
          '4',
          'maxPeers',
          '<img src=x onerror=alert(1)>',
          '617,283,945,061.7283',
          '0.0000',
          'Jan 1, 2100, 12:00 AM',
          'open',
        ],
        [
          '3',
          'sharesPerRound',
          '2000',
          '1,234,567,890,123.4567',
          '123,456,789,012.3456',
          'Nov 14, 2023, 10:13 PM',
          'passed',
        ],
        [
          '2',
          'quorumBps',
          '9000',
          '123,456,789,012.3456',
          '1,234,567,890,123.4567',
          'Nov 14, 2023, 10:13 PM',
          'failed',
        ],
        ['1', 'codec', 'int8', '0.0000', '0.0000', 'Nov 14, 2023, 10:13 PM', 'closed'],
      ]);
      assert.equal(await page.locator('#ledger img').count(), 0, 'no element made from data');

      mkdirSync(artifacts, { recursive: true });
      await page.locator('#ledger').screenshot({ path: join(artifacts, 'dashboard-ledger.png') });
      await page.setViewportSize({ width: 400, height: 900 });
      await page.waitForFunction(
        () => (document.querySelector('#loss-chart canvas')?.getBoundingClientRect().width ?? 1e9) <= 400,
        null,
        { timeout: 5000 },
      );
      await fitsWidth(page, 400);
      await page.locator('#ledger').screenshot({ path: join(artifacts, 'dashboard-ledger-400.png') });
      await page.setViewportSize({ width: 1280, height: 900 });

      // The chain goes away: the badge says so and how many commitments wait; the last error shows.
      node.v = view({
        ledger: ledgerView({
          online: false,
          checkedAt: Date.now() - 120_000,
          queue: { pending: 5, submitted: 17, lastError: 'fetch failed: ECONNREFUSED' },
        }),
      });
      await page
        .locator('#ledger-badge', { hasText: 'chain unreachable — commitments queued: 5' })
        .waitFor({ timeout: 5000 });
      assert.equal(await page.locator('#ledger-badge').getAttribute('class'), 'pill pill-down');
      assert.equal(
        await page.locator('#ledger-checked').textContent(),
        'checked 2 min ago',
        'the last good read is dated',
      );
      assert.equal(
        await page.locator('#ledger-queue').textContent(),
        'pending5submitted17last errorfetch failed: ECONNREFUSED',
      );
      await page.locator('#ledger').screenshot({ path: join(artifacts, 'dashboard-ledger-offline.png') });

      // No chain link at all: the hint, and no stale tables.
      node.v = view();
      await page.locator('#ledger[data-linked="no"]').waitFor({ timeout: 5000 });
      assert.equal(
        await page.locator('#ledger-none').textContent(),
        "This node is not linked to a chain. Start it with tessera node --rpc <url> --contract <address> to show the run's shares, revenue and proposals here.",
      );
      assert.equal(
        await page.locator('#ledger-none code').textContent(),
        'tessera node --rpc <url> --contract <address>',
      );
      assert.equal(await page.locator('#ledger-body').isVisible(), false);
      assert.deepEqual(problems, [], 'no console errors');
    } finally {
      await ctx.close();
      await d.close();
    }
    process.stderr.write(`dashboard-e2e (ownership panel): ${((Date.now() - t0) / 1000).toFixed(2)} s\n`);
  },
);

test(
  'stage map in Chromium: a local pipeline, who holds which stage, a replica killed, generate through the stages',
  {
    skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} not found (apt-get install chromium; CI installs it)`,
    timeout: 90_000,
  },
  async () => {
    const { manifest: m, runId } = pipeManifest(
      defaultPipeManifest({ stages: 3, layers: 3, codec: { id: 'int8' }, checkpointEvery: 0 }),
    );
    const k = loadKernels({ threads: 1 });
    const g = new GPT(m.model, k);
    g.init(1);
    const lp = await startLocalPipeline({
      config: m.model,
      stages: 3,
      replicas: 2,
      kernels: k,
      adamw: m.adamw,
      codec: m.codec,
      genesis: g.params,
    });
    const ds = prepareDataset({
      corpus: loadCorpus('brown'),
      vocabSize: m.model.vocabSize,
      cacheDir: defaultCacheDir(),
    });
    const source = localDashSource(
      lp,
      runId,
      m,
      sampleThrough(() => lp.driver, ds.tokenizer, m.model.ctx),
    );
    source.phase = 'training';
    const d = await startDashboard(source, { port: 0, pollMs: 100 });
    const ctx = await (await launch()).newContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
    const page = await ctx.newPage();
    const problems: string[] = [];
    page.on('console', (msg) => {
      if (msg.type() === 'error' || msg.type() === 'warning') problems.push(`console ${msg.type()}: ${msg.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    const batches = new BatchSampler(ds.train, m.batch, m.model.ctx, 7n);
    const step = async (s: number) => {
      const r = await lp.driver.step(batches.next(), m.batch, m.model.ctx, m.micro, m.lr);
      source.report({
        step: s,
        trainLoss: r.loss,
        bytesSent: r.actBytes / 2,
        bytesReceived: r.actBytes / 2,
        seconds: 0.1,
        tokens: m.batch * m.model.ctx,
      });
    };
    /** Per stage row: the holders' peer ids and their pills. */
    const map = () =>
      page.locator('#stages tbody tr').evaluateAll((trs) =>
        trs.map((tr) =>
          [
            ...(
              tr as unknown as {
                querySelectorAll(
                  s: string,
                ): { getAttribute(a: string): string; querySelector(s: string): { textContent: string } }[];
              }
            ).querySelectorAll('.holder'),
          ]
            .map((h) => `${h.getAttribute('data-peer')} ${h.querySelector('.pill').textContent}`)
            .sort(),
        ),
      );
    try {
      await page.goto(d.url, { waitUntil: 'load' });
      for (let s = 0; s < 3; s++) await step(s);
      await page.locator('#stages-panel:not([hidden]) #stages tbody tr').nth(2).waitFor({ timeout: 10_000 });
      await page.waitForFunction(() => document.getElementById('loss-chart')?.dataset.rounds === '3', null, {
        timeout: 10_000,
      });
      assert.deepEqual(
        await map(),
        lp.servers.map((row) => row.map((srv) => `${lp.peerOf(srv)} serving`).sort()),
        'every stage lists exactly its two replicas',
      );
      const rows = await cells(page, '#stages');
      assert.deepEqual(
        rows.map((r) => r.slice(0, 2)),
        [
          ['0', '0 + embeddings'],
          ['1', '1'],
          ['2', '2 + head'],
        ],
      );
      assert.match((await page.locator('#run').textContent())!, /pipeline · 3 stages/);
      await fitsWidth(page, 1280);
      mkdirSync(artifacts, { recursive: true });
      await page.locator('#stages-panel').screenshot({ path: join(artifacts, 'dashboard-stages.png') });

      // One replica of stage 1 dies mid-run: no step is lost, and the map drops it.
      const victim = lp.peerOf(lp.servers[1][0]);
      await lp.kill(1, 0);
      await step(3);
      await page.waitForFunction((id) => !document.querySelector(`#stages [data-peer="${id}"]`), victim, {
        timeout: 10_000,
      });
      assert.deepEqual((await map())[1], [`${lp.peerOf(lp.servers[1][1])} serving`]);

      // Generate through the stage holders.
      await page.locator('#gen-prompt').fill('The jury said');
      await page.locator('#gen-go').click();
      await page.waitForFunction(() => Number(document.getElementById('gen-out')?.dataset.tokens ?? 0) > 0, null, {
        timeout: 20_000,
      });
      await page.setViewportSize({ width: 400, height: 900 });
      await page.waitForFunction(
        () => (document.querySelector('#loss-chart canvas')?.getBoundingClientRect().width ?? 1e9) <= 400,
        null,
        { timeout: 5000 },
      );
      await fitsWidth(page, 400);
      assert.deepEqual(problems, [], 'no console errors');
    } finally {
      await ctx.close();
      await d.close();
      await lp.close();
    }
  },
);
