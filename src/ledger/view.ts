/**
 * What a running node knows about its run's ledger, as plain JSON (amounts are decimal strings of
 * base units: shares and wei both have 18 decimals), for the dashboard and `--json` reports.
 * Filled by the node's ledger link (src/ledger/link.ts) from the chain every round; `online` is
 * false, and the rest is the last state read, while the chain cannot be reached.
 */
export interface LedgerView {
  contract: string;
  chainId: number;
  online: boolean;
  /** Unix ms of the last successful read (null: never). */
  checkedAt: number | null;
  /** This node's payout address (where its shares are minted). */
  me: string;
  /** Validator quorum: signatures needed out of validators.length. */
  threshold: number;
  validators: string[];
  totalSupply: string;
  totalPaid: string;
  totalClaimed: string;
  /** Holders by balance, largest first; `peer` is the libp2p peer id that announced the address, when known. */
  holders: { address: string; peer: string | null; balance: string; claimable: string }[];
  /** The latest minted rounds (newest first, at most 20). */
  rounds: { round: number; weightsHash: string; checkpointCid: string; minted: string }[];
  /** Governance proposals (newest first, at most 20); value is the proposed setting as text. */
  proposals: {
    id: number;
    key: string;
    value: string;
    deadline: number;
    yes: string;
    no: string;
    executed: boolean;
    passed: boolean;
  }[];
  /** Score reports waiting for the chain, and what this node has submitted. */
  queue: { pending: number; submitted: number; lastError: string | null };
}
