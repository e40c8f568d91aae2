/**
 * Shared by the multi-process swarm tests: the peer launcher (src/cli/launch.ts, which
 * `tessera demo` uses too), waiting for a condition on real peers, and the rounds a group
 * agrees on.
 */
import type { PeerProc } from '../../src/cli/launch.js';
import type { RoundReport } from '../../src/peer/node.js';

export {
  TESSERA_BIN,
  dataDirFor,
  freePort,
  portOr,
  preparePeer,
  spawnPeer,
  stopAll,
  type PeerProc,
  type PeerSpec,
  type SpawnOptions,
} from '../../src/cli/launch.js';

const shortReport = (r: RoundReport): string => `${r.event[0]}${r.round}:${r.weightsHash.slice(0, 6)}`;

/** Polls `cond` every 100 ms; on timeout throws with every peer's reports (via `fmt`) and stderr tail. */
export async function waitFor(
  peers: readonly PeerProc[],
  what: string,
  cond: () => boolean,
  ms: number,
  fmt: (r: RoundReport) => string = shortReport,
  onTimeout?: () => void,
): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) {
      onTimeout?.();
      const tails = peers
        .map(
          (p) =>
            `peer ${p.index} (${p.alive ? 'alive' : 'dead'}) rounds [${p.reports.map(fmt).join(' ')}]\n${p.stderr.join('').slice(-800)}`,
        )
        .join('\n');
      throw new Error(`timed out after ${ms} ms waiting for ${what}\n${tails}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Rounds (≥ from) that every peer in `group` completed ('round' reports), all with the same weights hash. */
export function agreedRounds(group: readonly PeerProc[], from = 0): number[] {
  const rounds = new Set(
    group.flatMap((p) => p.reports.filter((r) => r.event === 'round' && r.round >= from).map((r) => r.round)),
  );
  return [...rounds]
    .sort((a, b) => a - b)
    .filter((r) => {
      const hs = group.map((p) => p.reports.find((x) => x.event === 'round' && x.round === r)?.weightsHash);
      return hs.every((h) => h !== undefined && h === hs[0]);
    });
}
