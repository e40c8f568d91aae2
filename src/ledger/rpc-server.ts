/**
 * Serves an EIP-1193 request fn (e.g. the in-process EDR devnet) as HTTP JSON-RPC on localhost, so
 * `--rpc <url>` clients and other processes (wallets, peers) can use the devnet. Errors keep their code
 * and data (reverts: code 3 + revert bytes, as geth reports them).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { EIP1193RequestFn } from 'viem';

export async function serveRpc(
  request: EIP1193RequestFn,
  port = 0,
  host = '127.0.0.1',
): Promise<{ url: string; close(): Promise<void>; server: Server }> {
  // Closing drains: requests already handed to the chain finish (their effects happen before
  // close() resolves); requests arriving after close() began are refused without reaching it.
  let closing = false;
  const inflight = new Set<Promise<unknown>>();
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString('utf8')));
    req.on('end', () => {
      const one = async (m: { id?: unknown; method: string; params?: unknown }) => {
        try {
          return {
            jsonrpc: '2.0',
            id: m.id ?? null,
            result: await request({ method: m.method, params: m.params } as never),
          };
        } catch (e) {
          const err = e as { code?: number; message?: string; data?: unknown };
          return {
            jsonrpc: '2.0',
            id: m.id ?? null,
            error: {
              code: typeof err.code === 'number' ? err.code : -32603,
              message: err.message ?? String(e),
              data: err.data,
            },
          };
        }
      };
      // Closing: drop the connection unanswered, as a server that went away does (clients see the
      // chain as unreachable, never as a refusal).
      if (closing) {
        req.socket.destroy();
        return;
      }
      const done = (async () => {
        let out: unknown;
        try {
          const msg = JSON.parse(body) as unknown;
          out = Array.isArray(msg) ? await Promise.all(msg.map(one)) : await one(msg as never);
        } catch {
          out = { jsonrpc: '2.0', id: null, error: { code: -32700, message: 'parse error' } };
        }
        if (res.destroyed) return;
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(out));
      })();
      inflight.add(done);
      void done.finally(() => inflight.delete(done));
    });
  });
  await new Promise<void>((resolve) => server.listen(port, host, resolve));
  const a = server.address() as AddressInfo;
  return {
    url: `http://${host}:${a.port}`,
    server,
    close: async () => {
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await Promise.allSettled([...inflight]);
      await closed;
    },
  };
}
