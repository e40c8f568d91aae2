/**
 * The live dashboard a node serves about itself: a hono app on @hono/node-server with a static
 * front end (public/, no build step), uPlot served from node_modules (no CDN), a read-only JSON
 * API and one server-sent-events stream.
 *
 * Access policy (README "Dashboard"):
 *  - GET routes (page, /api/status, /api/peers, /api/metrics, /api/events) are open to whoever
 *    can reach the address. It binds to 127.0.0.1 unless told otherwise.
 *  - POST /api/generate (it samples on the node's event loop) needs `Authorization: Bearer
 *    <token>` when a token is configured; with no token it is allowed only on a loopback
 *    address, and beyond loopback the dashboard is read-only (403 READ_ONLY).
 *  - On loopback, requests whose Host is not a loopback name are refused (DNS rebinding), and a
 *    POST must be JSON from no origin or this origin (cross-site pages cannot trigger it).
 *
 * Every handler is bounded: request timeouts, a body cap, a capped number of SSE clients that
 * each hold only a cursor (a slow client gets the latest state, never a queue), a write
 * timeout and a maximum stream lifetime (EventSource reconnects by itself).
 */
import { readFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { timingSafeEqual, createHash } from 'node:crypto';
import { Hono } from 'hono';
import { HTTPException } from 'hono/http-exception';
import { bodyLimit } from 'hono/body-limit';
import { timeout } from 'hono/timeout';
import { streamSSE } from 'hono/streaming';
import { serve } from '@hono/node-server';
import { z } from 'zod';
import type { RoundReport } from '../peer/report.js';
import {
  initialState,
  observe,
  ownContribution,
  ownership,
  peerRows,
  pointsSince,
  record,
  type DashState,
  type DashView,
  type Limits,
  type RoundPoint,
} from './state.js';
import {
  BadRequestError,
  BodyTooLargeError,
  BusyError,
  DashboardError,
  DashboardListenError,
  ForbiddenOriginError,
  NotFoundError,
  NotReadyError,
  ReadOnlyError,
  UnauthorizedError,
  UnsupportedMediaError,
} from './errors.js';

/** What the dashboard needs from a node (SwarmNode satisfies it; so does a pipeline's PipeDashSource). */
export interface DashboardSource {
  view(): DashView;
  events: {
    on(event: 'round', fn: (r: RoundReport) => void): unknown;
    off(event: 'round', fn: (r: RoundReport) => void): unknown;
  };
  generate(
    prompt: string,
    o: { maxTokens?: number; temperature?: number; topK?: number; seed?: number },
  ): { text: string; tokens: number } | Promise<{ text: string; tokens: number }>;
}

export interface DashboardOptions {
  /** 0 = any free port. */
  port: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Enables POST /api/generate from anywhere that presents it (and is required for it when set). */
  token?: string;
  /** How often the node's view is polled (roster, connected peers, phase). Default 1000 ms. */
  pollMs?: number;
  limits?: Partial<Limits>;
  maxClients?: number;
  /** Longest life of one SSE stream before the server closes it (the browser reconnects). */
  streamMs?: number;
  /** Least time between two generate calls. */
  generateGapMs?: number;
  now?: () => number;
}

export type GenerateMode = 'open' | 'token' | 'off';

export const LIMITS = {
  bodyBytes: 4096,
  promptChars: 1000,
  maxTokens: 64,
  requestMs: 10_000,
  writeMs: 10_000,
  heartbeatMs: 15_000,
} as const;

export const GenerateSchema = z
  .object({
    prompt: z.string().max(LIMITS.promptChars),
    maxTokens: z.number().int().min(1).max(LIMITS.maxTokens).default(32),
    temperature: z.number().min(0.05).max(2).default(0.8),
    topK: z
      .number()
      .int()
      .min(1)
      .max(1 << 20)
      .default(40),
    seed: z
      .number()
      .int()
      .min(0)
      .max(2 ** 32 - 1)
      .optional(),
  })
  .strict();

export const MetricsQuerySchema = z
  .object({
    /** Only points written after this sequence number (from a previous answer's `seq`). */
    since: z.coerce.number().int().min(-1).default(-1),
    /** At most this many of the latest points. */
    limit: z.coerce.number().int().min(1).max(100_000).optional(),
  })
  .strict();

export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127(\.\d{1,3}){3}$/.test(h);
}

/** Host header → host name (without port). */
function hostName(header: string): string {
  const m = /^(\[[^\]]*\]|[^:]*)(?::\d+)?$/.exec(header.trim());
  return m ? m[1] : '';
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/** The static files, read once at start-up: the front end from the source tree, uPlot from node_modules. */
interface Asset {
  body: string;
  type: string;
}

function publicDir(): string {
  // Compiled: dist/src/dashboard/server.js → <root>/src/dashboard/public; from source: ./public.
  for (const rel of ['../../../src/dashboard/public/', './public/']) {
    const p = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(p + 'index.html')) return p;
  }
  throw new DashboardListenError('dashboard front end not found (src/dashboard/public)');
}

function loadAssets(): Map<string, Asset> {
  const dir = publicDir();
  const req = createRequire(import.meta.url);
  const files: [string, string, string][] = [
    ['/', dir + 'index.html', 'text/html; charset=utf-8'],
    ['/app.js', dir + 'app.js', 'text/javascript; charset=utf-8'],
    ['/app.css', dir + 'app.css', 'text/css; charset=utf-8'],
    ['/favicon.svg', dir + 'favicon.svg', 'image/svg+xml'],
    ['/uplot.js', req.resolve('uplot/dist/uPlot.iife.min.js'), 'text/javascript; charset=utf-8'],
    ['/uplot.css', req.resolve('uplot/dist/uPlot.min.css'), 'text/css; charset=utf-8'],
  ];
  return new Map(files.map(([route, path, type]) => [route, { body: readFileSync(path, 'utf8'), type }]));
}

const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; " +
  "frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/**
 * Keeps the dashboard state for one node: folds in every round report and a view per poll,
 * and wakes the SSE streams when something they show has changed.
 */
export class Hub {
  state: DashState;
  private waiters = new Set<() => void>();
  private lastKey = '';
  private timer: NodeJS.Timeout | null = null;
  private readonly onRound = (r: RoundReport) => {
    this.poll(false);
    this.state = record(this.state, r, this.now());
    this.wake();
  };

  constructor(
    readonly source: DashboardSource,
    private readonly now: () => number,
    limits: Partial<Limits> = {},
  ) {
    this.state = initialState(now(), limits);
  }

  start(pollMs: number): void {
    this.source.events.on('round', this.onRound);
    this.poll(true);
    this.timer = setInterval(() => this.poll(true), pollMs);
    this.timer.unref();
  }

  stop(): void {
    this.source.events.off('round', this.onRound);
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.wake();
  }

  /** The node's view, or null while it is starting (no host yet). */
  view(): DashView | null {
    try {
      return this.source.view();
    } catch {
      return null;
    }
  }

  /** Folds in a fresh view; wakes the streams only if something shown changed. */
  poll(notify: boolean): void {
    const v = this.view();
    if (!v) return;
    this.state = observe(this.state, v, this.now());
    const key = JSON.stringify([
      v.round,
      v.phase,
      v.roster,
      [...v.subscribers].sort(),
      v.weightsHash,
      v.checkpointCid,
      v.ledger ?? null,
      v.stages ?? null,
    ]);
    if (key !== this.lastKey) {
      this.lastKey = key;
      if (notify) this.wake();
    }
  }

  private wake(): void {
    const w = [...this.waiters];
    this.waiters.clear();
    for (const f of w) f();
  }

  /** Resolves true on the next change, false after `ms` or when `signal` aborts. */
  changed(ms: number, signal: AbortSignal): Promise<boolean> {
    return new Promise((resolve) => {
      if (signal.aborted) {
        resolve(false);
        return;
      }
      const done = (v: boolean) => {
        clearTimeout(t);
        this.waiters.delete(onChange);
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      };
      const onChange = () => done(true);
      const onAbort = () => done(false);
      const t = setTimeout(() => done(false), ms);
      this.waiters.add(onChange);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }
}

/** GET /api/status. */
export function statusBody(s: DashState, mode: GenerateMode, now: number) {
  return {
    run: s.run,
    peerId: s.peerId,
    round: s.round,
    phase: s.phase,
    weightsHash: s.weightsHash,
    checkpointCid: s.checkpointCid,
    roster: s.roster.length,
    connected: s.subscribers.length,
    own: ownContribution(s),
    totals: s.totals,
    startedAt: s.startedAt,
    updatedAt: s.updatedAt,
    now,
    seq: s.seq,
    generate: mode,
    /** The ownership panel (issue 7): shares, revenue, proposals, queued commitments; null when not linked to a chain. */
    ledger: ownership(s, now),
    /** Pipeline runs (issue 8): per stage, its layers, size and the peers holding it; null for a swarm run. */
    stages: s.stages,
  };
}

export function peersBody(s: DashState, now: number) {
  return { round: s.round, now, peers: peerRows(s) };
}

export function metricsBody(s: DashState, since = -1, limit?: number): { seq: number; points: RoundPoint[] } {
  const pts = pointsSince(s, since);
  return { seq: s.seq, points: limit !== undefined ? pts.slice(-limit) : pts };
}

export interface DashboardApp {
  app: Hono;
  hub: Hub;
  mode: GenerateMode;
  /** Ends every open SSE stream. */
  closeStreams(): void;
}

/** The hono app (usable without a socket: `app.request(...)`). Call hub.start() to begin polling. */
export function createDashboardApp(source: DashboardSource, o: Omit<DashboardOptions, 'port'> = {}): DashboardApp {
  const now = o.now ?? Date.now;
  const host = o.host ?? '127.0.0.1';
  const loopback = isLoopback(host);
  const token = o.token ? digest(o.token) : null;
  const mode: GenerateMode = token ? 'token' : loopback ? 'open' : 'off';
  const maxClients = o.maxClients ?? 32;
  const streamMs = o.streamMs ?? 10 * 60_000;
  const gapMs = o.generateGapMs ?? 200;
  const hub = new Hub(source, now, o.limits);
  const assets = loadAssets();
  const streams = new Set<AbortController>();
  let nextGenerateAt = 0;

  const app = new Hono();

  app.onError((err, c) => {
    if (err instanceof DashboardError) return c.json({ error: { code: err.code, message: err.message } }, err.status);
    if (err instanceof HTTPException) {
      const code = err.status === 504 ? 'TIMEOUT' : err.status === 413 ? 'BODY_TOO_LARGE' : 'HTTP';
      return c.json({ error: { code, message: err.message || code } }, err.status);
    }
    process.stderr.write(`tessera dashboard: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return c.json({ error: { code: 'INTERNAL', message: 'internal error' } }, 500);
  });
  app.notFound((c) => {
    throw new NotFoundError(c.req.path);
  });

  // Headers on every answer; Host check against DNS rebinding when on loopback.
  app.use('*', async (c, next) => {
    // node-server builds the URL from the Host header (or an absolute request target): check both.
    const hdr = c.req.header('host');
    const names = [new URL(c.req.url).hostname, ...(hdr !== undefined ? [hostName(hdr)] : [])];
    if (loopback && !names.every(isLoopback))
      throw new ForbiddenOriginError('Host must be a loopback name (127.0.0.1, localhost, [::1])');
    await next();
    c.header('Content-Security-Policy', CSP);
    c.header('X-Content-Type-Options', 'nosniff');
    c.header('Referrer-Policy', 'no-referrer');
    c.header('X-Frame-Options', 'DENY');
    if (!c.res.headers.get('Cache-Control')) c.header('Cache-Control', 'no-store');
  });

  for (const [route, a] of assets) {
    app.get(route, (c) => {
      c.header('Content-Type', a.type);
      c.header('Cache-Control', 'no-cache');
      return c.body(a.body);
    });
  }

  app.use('/api/*', async (c, next) => {
    if (c.req.path === '/api/events') return next();
    return timeout(LIMITS.requestMs)(c, next);
  });

  app.get('/api/status', (c) => c.json(statusBody(hub.state, mode, now())));
  app.get('/api/peers', (c) => c.json(peersBody(hub.state, now())));
  app.get('/api/metrics', (c) => {
    const q = MetricsQuerySchema.safeParse(c.req.query());
    if (!q.success)
      throw new BadRequestError(q.error.issues.map((i) => `${i.path.join('.') || 'query'}: ${i.message}`).join('; '));
    return c.json(metricsBody(hub.state, q.data.since, q.data.limit));
  });

  app.get('/api/events', (c) => {
    if (streams.size >= maxClients) throw new BusyError(`at most ${maxClients} live streams`);
    const ac = new AbortController();
    streams.add(ac);
    return streamSSE(c, async (stream) => {
      stream.onAbort(() => ac.abort());
      const life = setTimeout(() => ac.abort(), streamMs);
      try {
        let cursor = -1;
        let first = true;
        const send = async (event: string, data: unknown) => {
          let t: NodeJS.Timeout | undefined;
          const slow = new Promise<'slow'>((r) => {
            t = setTimeout(() => r('slow'), LIMITS.writeMs);
          });
          const r = await Promise.race([
            stream.writeSSE({ event, data: JSON.stringify(data), ...(first ? { retry: 2000 } : {}) }),
            slow,
          ]);
          clearTimeout(t);
          first = false;
          if (r === 'slow') ac.abort();
        };
        while (!ac.signal.aborted) {
          const s = hub.state;
          const points = metricsBody(s, cursor).points;
          await send(cursor < 0 ? 'snapshot' : 'update', {
            status: statusBody(s, mode, now()),
            peers: peersBody(s, now()).peers,
            points,
          });
          cursor = s.seq;
          // Wait for a change; on a quiet stream send a 'ping' now and then (the page can tell quiet from dead).
          while (!ac.signal.aborted && !(await hub.changed(LIMITS.heartbeatMs, ac.signal))) {
            if (!ac.signal.aborted) await send('ping', { now: now() });
          }
        }
      } finally {
        clearTimeout(life);
        streams.delete(ac);
      }
    });
  });

  app.post(
    '/api/generate',
    bodyLimit({
      maxSize: LIMITS.bodyBytes,
      onError: () => {
        throw new BodyTooLargeError(LIMITS.bodyBytes);
      },
    }),
    async (c) => {
      if (mode === 'off') throw new ReadOnlyError();
      if (token) {
        const m = /^Bearer (.+)$/.exec(c.req.header('authorization') ?? '');
        if (!m || !timingSafeEqual(digest(m[1]), token)) throw new UnauthorizedError();
      }
      const origin = c.req.header('origin');
      if (origin !== undefined && origin !== new URL(c.req.url).origin)
        throw new ForbiddenOriginError(`cross-origin request from ${origin.slice(0, 100)}`);
      if (!/^application\/json\b/i.test(c.req.header('content-type') ?? '')) throw new UnsupportedMediaError();
      let raw: unknown;
      try {
        raw = await c.req.json();
      } catch {
        throw new BadRequestError('body is not JSON');
      }
      const b = GenerateSchema.safeParse(raw);
      if (!b.success)
        throw new BadRequestError(b.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; '));
      const v = hub.view();
      // A swarm node can sample once it has weights; a pipeline once every stage has a serving holder.
      if (
        !v ||
        !(v.weightsHash || (v.stages?.length && v.stages.every((st) => st.holders.some((h) => h.ready && h.serving))))
      )
        throw new NotReadyError();
      const t = now();
      if (t < nextGenerateAt) throw new BusyError('generate is busy; try again in a moment');
      const t0 = performance.now();
      nextGenerateAt = t + gapMs;
      const out = await source.generate(b.data.prompt, {
        maxTokens: b.data.maxTokens,
        temperature: b.data.temperature,
        topK: b.data.topK,
        ...(b.data.seed !== undefined ? { seed: b.data.seed } : {}),
      });
      const ms = performance.now() - t0;
      nextGenerateAt = now() + gapMs;
      return c.json({
        text: out.text,
        tokens: out.tokens,
        ms: Math.round(ms * 10) / 10,
        round: v.round,
        weightsHash: v.weightsHash,
      });
    },
  );

  return {
    app,
    hub,
    mode,
    closeStreams: () => {
      for (const s of streams) s.abort();
    },
  };
}

export interface Dashboard {
  url: string;
  host: string;
  port: number;
  mode: GenerateMode;
  hub: Hub;
  close(): Promise<void>;
}

/** Serves the dashboard for `source`; rejects with DashboardListenError if it cannot listen. */
export async function startDashboard(source: DashboardSource, o: DashboardOptions): Promise<Dashboard> {
  const host = o.host ?? '127.0.0.1';
  const d = createDashboardApp(source, { ...o, host });
  const server = await new Promise<Server>((resolve, reject) => {
    let s: Server;
    const onError = (e: NodeJS.ErrnoException) =>
      reject(
        new DashboardListenError(`dashboard cannot listen on ${host}:${o.port}: ${e.code ?? e.message}`, { cause: e }),
      );
    try {
      s = serve({ fetch: d.app.fetch, port: o.port, hostname: host }, () => {
        s.off('error', onError);
        resolve(s);
      }) as Server;
      s.once('error', onError);
    } catch (e) {
      onError(e as NodeJS.ErrnoException);
    }
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 15_000;
  server.keepAliveTimeout = 5_000;
  server.maxConnections = 256;
  server.on('error', (e) => process.stderr.write(`tessera dashboard: ${e.message}\n`));
  d.hub.start(o.pollMs ?? 1000);
  const port = (server.address() as AddressInfo).port;
  const shown = host.includes(':') ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host;
  return {
    url: `http://${shown}:${port}/`,
    host,
    port,
    mode: d.mode,
    hub: d.hub,
    close: async () => {
      d.hub.stop();
      d.closeStreams();
      await new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      });
    },
  };
}
