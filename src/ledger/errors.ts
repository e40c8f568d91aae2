import { TesseraError } from '../util/errors.js';

/** The Solidity compiler (solc-js) rejected the ledger contracts. */
export class LedgerCompileError extends TesseraError {
  constructor(message: string) {
    super('LEDGER_COMPILE', message);
  }
}

/** The chain (devnet or --rpc) could not be reached; nothing was applied. */
export class ChainUnreachableError extends TesseraError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('CHAIN_UNREACHABLE', message, options);
  }
}

/** A contract call reverted; `reason` is the custom error name when it could be decoded. */
export class ContractRevertError extends TesseraError {
  readonly reason: string;
  constructor(action: string, reason: string, options?: { cause?: unknown }) {
    super('CONTRACT_REVERT', `${action} reverted: ${reason}`, options);
    this.reason = reason;
  }
}
