/** What `tessera node` does with a rejection nobody handled (installed as its process's 'unhandledRejection' handler). */
/**
 * A rejection nobody handled. An aborted operation's (AbortError, TimeoutError) is logged and the
 * peer goes on: @helia/utils 3.0.5's graph walker, which every pin walks the DAG with, rethrows its
 * queue's AbortError into an async generator when the pin's deadline passes, and nothing handles
 * that promise, so Node's default killed the peer (issue 16: two of four demo peers died that way
 * at load 20; the work was already given up, nothing is left half done). Anything else is thrown
 * on, so it still ends the process as Node's default would.
 */
export function onStrayRejection(reason: unknown): void {
  const name = (reason as { name?: unknown } | null)?.name;
  if (name === 'AbortError' || name === 'TimeoutError') {
    process.stderr.write(
      `tessera node: ignored an unhandled ${String(name)} (${String((reason as Error).message).slice(0, 120)})\n`,
    );
    return;
  }
  throw reason;
}
