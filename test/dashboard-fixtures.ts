/** Hand-made node views and round reports for the dashboard tests (no network, no node). */
import type { NodeView, RoundReport } from '../src/swarm/node.js';

export const ME = 'peer-me';
export const A = 'peer-a';
export const B = 'peer-b';

export const MANIFEST = {
  version: 1, name: 'tiny', model: { vocabSize: 512, ctx: 32, dim: 32, layers: 1, heads: 2 }, tokenizerSha256: 'a'.repeat(64),
  dataset: { name: 'brown', trainTokensSha256: 'b'.repeat(64), numShards: 8 },
  hyper: {
    innerSteps: 4, batch: 2, adamw: {}, schedule: {}, outer: { lr: 1, momentum: 0 }, codec: { id: 'sparse', chunk: 1024, k: 64 },
    errorFeedback: 0.95, overlap: 'eager',
  },
  genesisWeightsHash: 'c'.repeat(64), seed: 7,
  timing: { trainMs: 800, submitMs: 1500, commitMs: 1000, quorum: 1, minPeers: 1, maxMissedRounds: 2 },
} as unknown as NodeView['manifest'];

export function view(o: Partial<NodeView> = {}): NodeView {
  return {
    runId: 'r'.repeat(64), manifest: MANIFEST, peerId: ME, round: 0, phase: 'training', roster: [ME, A], subscribers: [A],
    weightsHash: 'w0', checkpointCid: null, params: 1234, ...o,
  };
}

export function report(round: number, o: Partial<RoundReport> = {}): RoundReport {
  return {
    round, computeFraction: 0.9, innerSteps: 4, cpuFraction: 1, valLoss: 6 - round * 0.1, trainLoss: 6.1 - round * 0.1,
    contributors: [{ peer: ME, tokens: 256 }, { peer: A, tokens: 128 }], checkpointCid: null, peers: 2, roster: 2, included: 2,
    weightsHash: `w${round + 1}`, bytesSent: 1000, bytesReceived: 2000, seconds: 2, event: 'round', ...o,
  };
}
