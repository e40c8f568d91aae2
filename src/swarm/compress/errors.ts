/**
 * The one error a pseudo-gradient decoder throws. Peers are untrusted, so any malformed,
 * truncated, oversized or non-finite message must surface as this typed error (never as a
 * RangeError from a typed-array constructor, never as NaN in the model).
 */
import { TesseraError } from '../../util/errors.js';

/** A compressed pseudo-gradient failed validation. Nothing was allocated beyond n. */
export class DecodeError extends TesseraError {
  constructor(message: string) {
    super('DECODE', message);
  }
}
