/**
 * The run's data as this peer sees it: the tokenizer, the validation tokens and each round's
 * training shards, either sliced from the local corpus or fetched by CID from peers (one raw
 * IPFS block per shard, verified by hash, cached), checked against the manifest. Also the
 * governed dataset switch: the chain's `dataset` setting `<cid>@<round>` changes the shards a
 * round trains on from that round on.
 */
import type { Logger } from 'pino';
import { loadCorpus, prepareDataset } from '../data/index.js';
import type { TokenArray } from '../data/batches.js';
import { Tokenizer } from '../data/tokenizer.js';
import { parseDatasetSetting, type DatasetSwitch } from '../ledger/link.js';
import { parseCid, type Store } from '../store/index.js';
import { readManifest, readShard, type DatasetManifest } from '../store/dataset.js';
import type { DecodedManifest } from '../swarm/manifest.js';
import { InvalidInputError } from '../util/errors.js';

/** Decoded training shards kept in memory. */
const SHARD_CACHE = 64;

/** Sequences of the eval set and the shard sampler. */
function shardSlice(tokens: TokenArray, shard: number, numShards: number, T: number): TokenArray {
  const per = Math.floor(tokens.length / numShards);
  const start = shard * per;
  const end = Math.min(tokens.length, start + Math.max(per, T + 2));
  return tokens.subarray(start, end) as TokenArray;
}

export interface RunDataDeps {
  manifest: DecodedManifest['manifest'];
  numShards: number;
  store: Store;
  fetchMs: number;
  cacheDir?: string;
  logger: Logger;
  log: (line: string) => void;
}

export class RunData {
  tokenizer!: Tokenizer;
  /** The dataset manifest, when the run names its dataset by CID. */
  dataset: DatasetManifest | null = null;
  datasetCid: string | null = null;
  tokenizerCid: string | null = null;
  shardsFetched = 0;
  /** The local corpus's training tokens (runs without a dataset CID). */
  private train!: TokenArray;
  /** By `<dataset cid>:<shard>`. */
  private readonly shardCache = new Map<string, TokenArray>();
  private readonly shardFetch = new Map<string, Promise<TokenArray | null>>();
  /** A governed dataset switch, once its manifest is loaded. */
  private nextDataset: (DatasetSwitch & { dsm: DatasetManifest }) | null = null;
  /** The governed setting last acted on (so each value is fetched once). */
  private loadingSwitch: string | null = null;

  constructor(private readonly d: RunDataDeps) {}

  /** Loads the tokenizer and training data, checked against the manifest; returns the validation tokens. */
  async load(): Promise<TokenArray> {
    const m = this.d.manifest;
    if (m.dataset.cid !== undefined) return await this.loadDataset(m.dataset.cid);
    const ds = prepareDataset({
      corpus: loadCorpus('brown'),
      vocabSize: m.model.vocabSize,
      ...(this.d.cacheDir ? { cacheDir: this.d.cacheDir } : {}),
    });
    if (ds.tokenizer.hash() !== m.tokenizerSha256) {
      throw new InvalidInputError(
        `tokenizer hash ${ds.tokenizer.hash().slice(0, 12)} does not match the manifest's ${m.tokenizerSha256.slice(0, 12)}`,
      );
    }
    if (m.dataset.trainTokensSha256 !== undefined && ds.stats.train.sha256 !== m.dataset.trainTokensSha256) {
      throw new InvalidInputError('training tokens do not match the manifest');
    }
    this.train = ds.train;
    this.tokenizer = ds.tokenizer;
    return ds.val;
  }

  /** Fetches the dataset manifest, tokenizer and validation shards by CID (from any peer); returns the validation tokens. */
  private async loadDataset(cidStr: string): Promise<TokenArray> {
    const m = this.d.manifest;
    const opts = () => ({ signal: AbortSignal.timeout(this.d.fetchMs) });
    const cid = parseCid(cidStr);
    const dsm = await readManifest(this.d.store, cid, opts());
    if (dsm.train.shards.length !== m.dataset.numShards) {
      throw new InvalidInputError(
        `dataset ${cidStr} has ${dsm.train.shards.length} training shards, the manifest says numShards ${m.dataset.numShards}`,
      );
    }
    if (dsm.tokenizer.vocabSize !== m.model.vocabSize) {
      throw new InvalidInputError(
        `dataset ${cidStr} has a vocabulary of ${dsm.tokenizer.vocabSize}, the model ${m.model.vocabSize}`,
      );
    }
    const tokCid = m.tokenizerCid !== undefined ? parseCid(m.tokenizerCid) : dsm.tokenizer.cid;
    const text = new TextDecoder().decode(await this.d.store.cat(tokCid, { maxBytes: 64 << 20, ...opts() }));
    let tok: Tokenizer;
    try {
      tok = Tokenizer.fromJSON(JSON.parse(text), { expectVocabSize: m.model.vocabSize, source: tokCid.toString() });
    } catch (err) {
      throw new InvalidInputError(`tokenizer ${tokCid} is not a valid tokenizer.json: ${(err as Error).message}`);
    }
    if (tok.hash() !== m.tokenizerSha256) {
      throw new InvalidInputError(
        `tokenizer ${tokCid} hashes to ${tok.hash().slice(0, 12)}, the manifest says ${m.tokenizerSha256.slice(0, 12)}`,
      );
    }
    const parts: Uint32Array[] = [];
    for (const sh of dsm.val.shards) parts.push(await readShard(this.d.store, dsm, sh, opts()));
    const val = new Uint32Array(parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of parts) {
      val.set(p, o);
      o += p.length;
    }
    this.dataset = dsm;
    this.datasetCid = cid.toString();
    this.tokenizerCid = tokCid.toString();
    this.tokenizer = tok;
    return val as unknown as TokenArray;
  }

  /**
   * The tokens of training shard `sh` in round `round`: a slice of the local corpus, or a block
   * fetched (once) from peers. From a governed switch's round on, shard `sh` is shard
   * `sh mod count` of the new dataset, so assignment (numShards) stays as the manifest says.
   */
  async shardData(sh: number, round: number): Promise<TokenArray | null> {
    const { cid, dsm } = this.datasetAt(round);
    if (!dsm) return shardSlice(this.train, sh, this.d.numShards, this.d.manifest.model.ctx);
    const idx = sh % dsm.train.shards.length;
    const key = `${cid}:${idx}`;
    const hit = this.shardCache.get(key);
    if (hit) return hit;
    let p = this.shardFetch.get(key);
    if (!p) {
      p = readShard(this.d.store, dsm, dsm.train.shards[idx], { signal: AbortSignal.timeout(this.d.fetchMs) })
        .then((t) => {
          const tokens = t as unknown as TokenArray;
          this.shardsFetched++;
          this.shardCache.set(key, tokens);
          if (this.shardCache.size > SHARD_CACHE) this.shardCache.delete(this.shardCache.keys().next().value!);
          return tokens;
        })
        .catch((err: unknown) => {
          this.d.logger.warn(
            { shard: idx, cid: dsm.train.shards[idx].cid.toString(), err: (err as Error).message },
            'cannot fetch training shard',
          );
          return null;
        })
        .finally(() => this.shardFetch.delete(key));
      this.shardFetch.set(key, p);
    }
    return await p;
  }

  /** The dataset in effect in round `round`: a governed switch from its round on, else the manifest's. */
  datasetAt(round: number): { cid: string | null; dsm: DatasetManifest | null } {
    const n = this.nextDataset;
    if (n && round >= n.fromRound) return { cid: n.cid, dsm: n.dsm };
    return { cid: this.datasetCid, dsm: this.dataset };
  }

  /**
   * Governance (issue 7): the chain's `dataset` setting, `<cid>@<round>`, switches the training data
   * from that round on. Read by the link once per round; the new manifest is fetched from peers and
   * must use the run's tokenizer. A switch seen only after its round starts applies from the next
   * round this peer trains (training data is per-peer, so the weights still agree).
   */
  followGovernance(v: string | undefined): void {
    if (!v || v === this.loadingSwitch) return;
    this.loadingSwitch = v;
    const { logger } = this.d;
    const sw = parseDatasetSetting(v);
    if (!sw) {
      logger.warn({ value: v }, 'governed dataset setting is not <cid>@<round>; ignored');
      return;
    }
    if (!this.dataset) {
      logger.warn({ value: v }, 'a governed dataset switch needs a run whose dataset is named by CID; ignored');
      return;
    }
    let cid;
    try {
      cid = parseCid(sw.cid);
    } catch (err) {
      logger.warn({ value: v, err: (err as Error).message }, 'governed dataset CID is invalid; ignored');
      return;
    }
    void readManifest(this.d.store, cid, { signal: AbortSignal.timeout(this.d.fetchMs) })
      .then((dsm) => {
        if (dsm.tokenizer.cid.toString() !== this.tokenizerCid)
          throw new InvalidInputError(`its tokenizer ${dsm.tokenizer.cid} is not the run's ${this.tokenizerCid}`);
        if (dsm.train.shards.length === 0) throw new InvalidInputError('it has no training shards');
        this.nextDataset = { ...sw, dsm };
        this.d.log(`governance: training on dataset ${sw.cid} from round ${sw.fromRound}`);
      })
      .catch((err: unknown) => {
        logger.warn({ value: v, err: (err as Error).message }, 'cannot switch to the governed dataset');
        // A fetch that timed out is retried at the next round; a wrong manifest is not.
        if (!(err instanceof InvalidInputError)) this.loadingSwitch = null;
      });
  }
}
