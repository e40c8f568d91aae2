/**
 * `tessera data`: datasets as content-addressed blocks in the node's IPFS store.
 *   add <source>          tokenize, pack into token shards, store; prints the dataset CID
 *   ls                    datasets added to this store
 *   get <cid>             a dataset manifest (summary), or a file's bytes (--out)
 *   export --car <cid> F  the whole DAG under a CID as a CAR file (for Filecoin / ipfs-car)
 */
import type { Command } from 'commander';
import { createWriteStream, rmSync } from 'node:fs';
import { once } from 'node:events';
import { resolve } from 'node:path';
import * as dagJson from '@ipld/dag-json';
import { int } from './args.js';
import { say, result } from './output.js';
import { defaultCacheDir } from './train.js';
import { DEFAULT_VOCAB_SIZE, loadCorpus, prepareDataset } from '../data/index.js';
import { MissingBlockError, openStore, parseCid, type Store } from '../store/index.js';
import { DEFAULT_SHARD_TOKENS, addDataset, exportCar, listDatasets, readManifest } from '../store/dataset.js';
import { InvalidInputError } from '../util/errors.js';

const DEFAULT_DATA_DIR = resolve('runs/data-node');

async function withStore<T>(dataDir: string, f: (s: Store) => Promise<T>): Promise<T> {
  const store = await openStore(dataDir);
  try {
    return await f(store);
  } finally {
    await store.stop();
  }
}

export interface AddCorpusOptions {
  dataDir: string;
  vocab: number;
  shardTokens: number;
  name?: string;
  cacheDir: string;
}

/**
 * Tokenizes `source` ("brown", a file or a directory), stores it as a dataset in DATA_DIR's
 * IPFS store and returns a summary with the dataset CID (`tessera data add`, `tessera demo --ipfs`).
 */
export async function addCorpus(source: string, o: AddCorpusOptions, onShard?: (done: number, total: number) => void) {
  const corpus = loadCorpus(source);
  const ds = prepareDataset({ corpus, vocabSize: o.vocab, cacheDir: o.cacheDir });
  const t0 = Date.now();
  return await withStore(o.dataDir, async (store) => {
    const { cid, manifest } = await addDataset(
      store,
      {
        name: o.name ?? corpus.name,
        tokenizer: ds.tokenizer,
        train: ds.train,
        val: ds.val,
        shardTokens: o.shardTokens,
        sources: [
          { name: `${corpus.name} (train)`, sha256: corpus.trainHash },
          { name: `${corpus.name} (val)`, sha256: corpus.valHash },
        ],
      },
      onShard,
    );
    return {
      cid: cid.toString(),
      name: manifest.name,
      trainTokens: manifest.train.tokens,
      valTokens: manifest.val.tokens,
      shards: manifest.train.shards.length + manifest.val.shards.length,
      tokenizer: manifest.tokenizer.cid.toString(),
      store: store.dir,
      seconds: (Date.now() - t0) / 1000,
    };
  });
}

export function register(program: Command): void {
  const data = program.command('data').description("datasets as content-addressed shards in the node's IPFS store");

  data
    .command('add')
    .description('tokenize a corpus, pack it into token shards (one block each), store it; prints the dataset CID')
    .argument('<source>', '"brown", a .txt/.md/.jsonl file, or a directory of them')
    .option('--data-dir <dir>', 'node data directory (the store is DIR/ipfs)', DEFAULT_DATA_DIR)
    .option('--vocab <n>', 'BPE vocabulary size', int(257, 1 << 20), DEFAULT_VOCAB_SIZE)
    .option('--shard-tokens <n>', 'tokens per shard', int(1), DEFAULT_SHARD_TOKENS)
    .option('--name <s>', 'dataset name (default: the source)')
    .option('--cache-dir <dir>', 'tokenizer and token cache', defaultCacheDir())
    .option('--json', 'print a JSON object on stdout', false)
    .action(
      async (
        source: string,
        o: { dataDir: string; vocab: number; shardTokens: number; name?: string; cacheDir: string; json: boolean },
      ) => {
        const out = await addCorpus(source, o, (done, total) => {
          if (!o.json && process.stderr.isTTY) process.stderr.write(`\rstoring shards ${done}/${total}`);
        });
        if (!o.json && process.stderr.isTTY) process.stderr.write('\n');
        say(
          o,
          `stored ${out.shards} shards (${out.trainTokens.toLocaleString()} train + ${out.valTokens.toLocaleString()} val tokens) and the tokenizer (${out.tokenizer}) in ${out.store}`,
        );
        result(o, out, out.cid);
      },
    );

  data
    .command('ls')
    .description('datasets added to this store')
    .option('--data-dir <dir>', 'node data directory', DEFAULT_DATA_DIR)
    .option('--json', 'print a JSON array on stdout', false)
    .action(async (o: { dataDir: string; json: boolean }) => {
      const list = await withStore(o.dataDir, async (s) => listDatasets(s));
      if (o.json) result(o, list);
      else if (list.length === 0) say(o, 'no datasets in this store (add one with `tessera data add`)');
      else
        for (const d of list)
          process.stdout.write(
            `${d.cid}  ${d.name}  ${d.trainTokens.toLocaleString()} + ${d.valTokens.toLocaleString()} tokens, ${d.shards} shards, added ${d.added}\n`,
          );
    });

  data
    .command('get')
    .description('a dataset manifest (dag-json CID), or the bytes of a file or block (--out)')
    .argument('<cid>')
    .option('--data-dir <dir>', 'node data directory', DEFAULT_DATA_DIR)
    .option('--out <file>', 'write the bytes of a file/raw CID here')
    .option('--timeout <ms>', 'give up after this long', int(1), 30_000)
    .option('--json', 'print JSON on stdout', false)
    .action(async (cidText: string, o: { dataDir: string; out?: string; timeout: number; json: boolean }) => {
      const cid = parseCid(cidText);
      await withStore(o.dataDir, async (store) => {
        const signal = AbortSignal.timeout(o.timeout);
        if (cid.code === dagJson.code) {
          const m = await readManifest(store, cid, { signal });
          const summary = {
            cid: cid.toString(),
            name: m.name,
            tokenizer: m.tokenizer.cid.toString(),
            vocabSize: m.tokenizer.vocabSize,
            tokenBytes: m.tokenBytes,
            shardTokens: m.shardTokens,
            train: { tokens: m.train.tokens, shards: m.train.shards.map((s) => s.cid.toString()) },
            val: { tokens: m.val.tokens, shards: m.val.shards.map((s) => s.cid.toString()) },
            sources: m.sources,
          };
          result(o, summary, JSON.stringify(summary, null, 2));
          return;
        }
        if (!o.out) throw new InvalidInputError(`${cid} is not a dataset manifest; pass --out FILE to write its bytes`);
        if (!(await store.has(cid))) throw new MissingBlockError(cid.toString(), 'not in the local store');
        const ws = createWriteStream(o.out);
        let n = 0;
        try {
          for await (const chunk of store.fs.cat(cid, { signal, offline: true })) {
            n += chunk.length;
            if (!ws.write(chunk)) await once(ws, 'drain');
          }
        } catch (err) {
          ws.destroy();
          rmSync(o.out, { force: true }); // nothing half-written is left behind
          throw new MissingBlockError(
            cid.toString(),
            `a block under it is missing or unreadable: ${(err as Error).message}`,
          );
        }
        ws.end();
        await once(ws, 'finish');
        say(o, `wrote ${n} bytes to ${o.out}`);
        result(o, { cid: cid.toString(), out: o.out, bytes: n });
      });
    });

  data
    .command('export')
    .description('write the DAG under a CID as a CAR file (Filecoin deals, ipfs-car unpack)')
    .requiredOption('--car <cid>', 'root CID')
    .argument('<file>')
    .option('--data-dir <dir>', 'node data directory', DEFAULT_DATA_DIR)
    .option('--timeout <ms>', 'give up after this long', int(1), 60_000)
    .option('--json', 'print a JSON object on stdout', false)
    .action(async (file: string, o: { car: string; dataDir: string; timeout: number; json: boolean }) => {
      const cid = parseCid(o.car);
      const r = await withStore(o.dataDir, async (store) =>
        exportCar(store, cid, file, { signal: AbortSignal.timeout(o.timeout) }),
      );
      say(o, `wrote ${r.blocks} blocks (${r.bytes} bytes of block data) under ${cid} to ${file}`);
      result(o, { cid: cid.toString(), file, ...r });
    });
}
