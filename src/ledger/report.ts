/**
 * Builds a round's ScoreReport from what the swarm already has: the manifest hash, the new weights hash
 * and checkpoint CID, the hashes of the included updates, and verified per-peer scores (floats).
 * Roots are keccak Merkle roots over sorted leaves (pairs hashed in sorted order, odd node promoted),
 * so any peer recomputes the same report from the same round. Scores are scaled to integers (1e6) and
 * recipients sorted by address: every validator signs byte-identical input.
 */
import { z } from 'zod';
import { concat, encodeAbiParameters, keccak256, type Address, type Hex } from 'viem';
import { InvalidInputError } from '../util/errors.js';
import type { ScoreReport } from './actions/signScoreReport.js';

export function merkleRoot(leaves: Hex[]): Hex {
  if (leaves.length === 0) return `0x${'00'.repeat(32)}`;
  let level = [...leaves].sort();
  while (level.length > 1) {
    const next: Hex[] = [];
    for (let i = 0; i < level.length; i += 2) {
      if (i + 1 === level.length) next.push(level[i]);
      else {
        const [a, b] = level[i] < level[i + 1] ? [level[i], level[i + 1]] : [level[i + 1], level[i]];
        next.push(keccak256(concat([a, b])));
      }
    }
    level = next;
  }
  return level[0];
}

const hex32 = z.string().regex(/^0x[0-9a-fA-F]{64}$/);
const schema = z.object({
  manifestHash: hex32,
  round: z.number().int().nonnegative(),
  weightsHash: hex32,
  checkpointCid: z.string().min(1),
  updateHashes: z.array(hex32),
  scores: z
    .array(z.object({ address: z.string().regex(/^0x[0-9a-fA-F]{40}$/), score: z.number().finite().nonnegative() }))
    .min(1),
});
export type BuildScoreReportParameters = z.input<typeof schema>;

export const SCORE_SCALE = 1_000_000;

export function buildScoreReport(params: BuildScoreReportParameters): ScoreReport {
  const p = schema.safeParse(params);
  if (!p.success) throw new InvalidInputError(`buildScoreReport: ${p.error.message}`);
  const merged = new Map<string, number>();
  for (const s of p.data.scores)
    merged.set(s.address.toLowerCase(), (merged.get(s.address.toLowerCase()) ?? 0) + s.score);
  const rows = [...merged.entries()].sort(([a], [b]) => (a < b ? -1 : 1));
  const recipients = rows.map(([a]) => a as Address);
  const scores = rows.map(([, s]) => BigInt(Math.round(s * SCORE_SCALE)));
  if (scores.every((s) => s === 0n)) throw new InvalidInputError('buildScoreReport: all scores are zero');
  const scoreLeaves = recipients.map((a, i) =>
    keccak256(encodeAbiParameters([{ type: 'address' }, { type: 'uint256' }], [a, scores[i]])),
  );
  return {
    manifestHash: p.data.manifestHash as Hex,
    round: BigInt(p.data.round),
    weightsHash: p.data.weightsHash as Hex,
    checkpointCid: `0x${Buffer.from(p.data.checkpointCid, 'utf8').toString('hex')}`,
    updatesRoot: merkleRoot(p.data.updateHashes as Hex[]),
    scoresRoot: merkleRoot(scoreLeaves),
    recipients,
    scores,
  };
}
