/**
 * Deadlines for transfers whose size grows with the model: an update payload (the codec's exact
 * size), a snapshot bundle or a state checkpoint (8 bytes per parameter). A fixed deadline sized
 * for the toy model cannot fit GPT-2 small (a 1 GB bundle, a 12.6 MB SparseLoCo payload, a
 * 0.5 GB fp32 one), so each deadline is its old floor plus the time the bytes take at
 * MIN_LINK_BYTES_PER_S: at toy sizes the same deadlines as before, at real sizes long enough.
 */

/** The slowest link a transfer is given time for: 1 MiB/s (about 8 Mbit/s). */
export const MIN_LINK_BYTES_PER_S = 1 << 20;

/** `floorMs` plus the time `bytes` take at MIN_LINK_BYTES_PER_S. */
export function transferDeadlineMs(bytes: number, floorMs: number): number {
  return floorMs + Math.ceil((Math.max(0, bytes) / MIN_LINK_BYTES_PER_S) * 1000);
}

/** Bytes of one round's state (θ and the outer momentum, f32) for P parameters. */
export const stateBytes = (P: number): number => 8 * P;
