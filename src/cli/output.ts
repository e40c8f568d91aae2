/**
 * How commands talk to people and scripts: human lines go to stderr (so stdout stays clean
 * for --json), one JSON document goes to stdout with --json, errors become exit codes.
 */
import { TesseraError } from '../util/errors.js';

export interface OutputOptions {
  json?: boolean;
}

export function say(o: OutputOptions, line: string): void {
  if (!o.json) process.stderr.write(line + '\n');
}

export function result(o: OutputOptions, value: unknown, human?: string): void {
  if (o.json) process.stdout.write(JSON.stringify(value) + '\n');
  else if (human !== undefined) process.stdout.write(human + '\n');
}

/** Print an error the way a user can act on it; bugs keep their stack. Returns the exit code. */
export function reportError(err: unknown, o: OutputOptions): number {
  if (err instanceof TesseraError) {
    if (o.json) process.stdout.write(JSON.stringify({ error: { code: err.code, message: err.message } }) + '\n');
    process.stderr.write(`tessera: error: ${err.message}\n`);
    return 1;
  }
  process.stderr.write(
    `tessera: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  return 70;
}
