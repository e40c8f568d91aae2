/**
 * Red team (issue 17 item 1): checkpoint shares travel by bitswap, and bitswap sends a peer's
 * wants to every connected peer that speaks it. A hostile peer that only listens on the bitswap
 * protocols, connected to the stage peers, hears every share CID while the holders pin them; with
 * both CIDs of a stage, a second hostile peer fetches both shares from their holders. At c03a53d
 * that gave it stage 0's weights bit for bit; now the shares are sealed under a key only the
 * driver (and a restoring peer) sees, and it gets nothing it can open.
 */
import { test } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { GPT } from '../src/model/gpt.js';
import { AdamW, DEFAULT_ADAMW } from '../src/train/adamw.js';
import { loadKernels } from '../src/kernels/index.js';
import { Rng } from '../src/util/rng.js';
import { createHost } from '../src/net/host.js';
import { openStore, parseCid } from '../src/store/index.js';
import { Stage, splitStages } from '../src/model/stage.js';
import { decodeStageState } from '../src/pipeline/stage/shares.js';
import { startLocalPipeline } from '../src/pipeline/local.js';

const cfg = { vocabSize: 64, ctx: 16, dim: 32, layers: 3, heads: 4 };

test(
  'a peer listening on bitswap hears the checkpoint share CIDs, but the shares it fetches with them are sealed',
  { timeout: 60_000 },
  async () => {
    const k = loadKernels({ threads: 1 });
    const ref = new GPT(cfg, k);
    ref.init(7);
    const root = mkdtempSync(join(tmpdir(), 'tessera-redteam-wantlist-'));
    const lp = await startLocalPipeline({
      config: cfg,
      stages: 3,
      kernels: k,
      adamw: DEFAULT_ADAMW,
      codec: { id: 'fp32' },
      genesis: ref.params.slice(),
      inflight: 1,
      checkpoints: true,
    });
    const spy = await createHost({ dataDir: join(root, 'spy'), logger: pino({ level: 'silent' }) });
    const heard: Uint8Array[] = [];
    try {
      for (const proto of ['/ipfs/bitswap/1.2.0', '/ipfs/bitswap/1.1.0', '/ipfs/bitswap/1.0.0'])
        await spy.node.handle(proto, async (stream: AsyncIterable<unknown>) => {
          try {
            for await (const chunk of stream)
              heard.push(
                chunk instanceof Uint8Array ? chunk.slice() : (chunk as { subarray(): Uint8Array }).subarray().slice(),
              );
          } catch {
            /* closed */
          }
        });
      for (let i = 0; i < 3; i++) await spy.dial(lp.hosts[i].multiaddrs()[0], { signal: AbortSignal.timeout(5000) });
      await new Promise((r) => setTimeout(r, 500)); // identify: they learn the spy speaks bitswap
      const rng = new Rng(1);
      const b = { inputs: new Int32Array(64), targets: new Int32Array(64) };
      for (let i = 0; i < 64; i++) b.inputs[i] = b.targets[i] = rng.nextInt(cfg.vocabSize);
      await lp.driver.step(b, 4, 16, 2, 1e-2);
      await lp.driver.checkpoint();
      await new Promise((r) => setTimeout(r, 500));
      const all = Buffer.concat(heard.map((h) => Buffer.from(h)));
      let learned = 0,
        total = 0;
      for (const [, cp] of lp.driver.checkpoints)
        for (const c of cp.shares) {
          total++;
          if (all.includes(Buffer.from(parseCid(c).multihash.digest))) learned++;
        }
      // With both CIDs of stage 0, a second hostile peer fetches its shares from their two holders.
      const thief = await createHost({ dataDir: join(root, 'thief'), logger: pino({ level: 'silent' }) });
      const store = await openStore(join(root, 'thief'), { libp2p: thief.node });
      let recovered = 'nothing';
      try {
        for (let i = 1; i < 3; i++)
          await thief.dial(lp.hosts[i].multiaddrs()[0], { signal: AbortSignal.timeout(5000) });
        const cids = lp.driver.checkpoints.get(0)!.shares.map(parseCid);
        const [x, y] = await Promise.all(
          cids.map((c) => store.cat(c, { maxBytes: 1 << 24, signal: AbortSignal.timeout(10_000) })),
        );
        const st = new Stage(cfg, splitStages(cfg, 3)[0], k);
        decodeStageState(
          x.map((v, j) => v ^ y[j]),
          st,
          new AdamW(cfg, DEFAULT_ADAMW, k, st.specs),
        );
        const same = st.params.every((v, j) => v === lp.servers[0][0].stage.params[j]);
        recovered = same ? `stage 0's ${st.numParams} weights, bit for bit` : 'a state unlike stage 0';
      } catch (err) {
        recovered = `nothing (${(err as Error).message.slice(0, 80)})`;
      } finally {
        await store.stop().catch(() => undefined);
        await thief.stop().catch(() => undefined);
      }
      console.log(
        `share CIDs heard on bitswap by a listening peer: ${learned} of ${total} (${all.length} bytes heard); fetched with them from the holders: ${recovered}`,
      );
      assert.ok(learned > 0, 'the attack premise: bitswap wants reach a listening peer');
      assert.match(recovered, /^nothing/, 'the shares fetched by CID opened to a stage state');
    } finally {
      await spy.stop().catch(() => undefined);
      await lp.close();
      rmSync(root, { recursive: true, force: true });
    }
  },
);
