/**
 * The data layer's public API in one import: tokenizer (train, encode, HF tokenizer.json),
 * corpora (embedded Brown, user text) and datasets / batches.
 */
export { EOT_TOKEN } from './bytelevel.js';
export { trainBpe, type TrainBpeOptions } from './bpe-train.js';
export { MAX_VOCAB, TOKENIZER_VERSION, Tokenizer } from './tokenizer.js';
export type { HfTokenizerJson } from './tokenizer-json.js';
export { brownDocuments } from './brown.js';
export {
  BROWN_TRAIN_SHA256,
  BROWN_VAL_SHA256,
  VAL_EVERY,
  checkPinnedHashes,
  docsHash,
  loadBrownCorpus,
  makeCorpus,
  splitDocuments,
  type Corpus,
} from './corpus.js';
export { loadCorpus, loadTextSource, readDocuments, type TextSourceOptions } from './text-source.js';
export {
  DEFAULT_VOCAB_SIZE,
  datasetCacheKey,
  encodeDocuments,
  prepareDataset,
  type Dataset,
  type DatasetStage,
  type PrepareOptions,
  type SplitStats,
} from './dataset.js';
export {
  BatchSampler,
  evalBatchCount,
  evalBatches,
  unigramCrossEntropy,
  unigramEntropy,
  type Batch,
  type TokenArray,
} from './batches.js';
export { TokenBuffer } from './token-buffer.js';
export {
  MAX_FINETUNE_BYTES,
  MAX_FINETUNE_TOKENS,
  MaskedBatchSampler,
  maskedEvalBatches,
  packExamples,
  parseFinetuneJsonl,
  readFinetuneJsonl,
  type FinetuneExample,
  type MaskedStream,
} from './finetune.js';
