/**
 * The dashboard's deliberate failures, each a TesseraError with a stable code and the HTTP status
 * the API answers with, so scripts get `{error: {code, message}}` they can act on.
 */
import { TesseraError } from '../util/errors.js';

export class DashboardError extends TesseraError {
  readonly status: 400 | 401 | 403 | 404 | 413 | 415 | 429 | 503;
  constructor(code: string, status: DashboardError['status'], message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.status = status;
  }
}

/** A request body or query failed validation. */
export class BadRequestError extends DashboardError {
  constructor(message: string) {
    super('BAD_REQUEST', 400, message);
  }
}

/** A token is configured and the request did not carry it. */
export class UnauthorizedError extends DashboardError {
  constructor() {
    super('UNAUTHORIZED', 401, 'this dashboard needs its token: send "Authorization: Bearer <token>"');
  }
}

/** No token is configured and the dashboard is reachable beyond loopback: actions are off. */
export class ReadOnlyError extends DashboardError {
  constructor() {
    super('READ_ONLY', 403, 'this dashboard is read-only: bound beyond loopback without --dashboard-token');
  }
}

/** Host or Origin header not this dashboard's (DNS rebinding, cross-site requests). */
export class ForbiddenOriginError extends DashboardError {
  constructor(what: string) {
    super('FORBIDDEN_ORIGIN', 403, what);
  }
}

export class NotFoundError extends DashboardError {
  constructor(path: string) {
    super('NOT_FOUND', 404, `no such page or API: ${path}`);
  }
}

export class BodyTooLargeError extends DashboardError {
  constructor(max: number) {
    super('BODY_TOO_LARGE', 413, `request body over ${max} bytes`);
  }
}

export class UnsupportedMediaError extends DashboardError {
  constructor() {
    super('UNSUPPORTED_MEDIA', 415, 'send the body as Content-Type: application/json');
  }
}

/** Too many requests of a kind (generate is rate-limited; SSE clients are capped). */
export class BusyError extends DashboardError {
  constructor(message: string) {
    super('BUSY', 429, message);
  }
}

/** The node has not started yet (no weights, no peer id). */
export class NotReadyError extends DashboardError {
  constructor(message = 'the node is still starting') {
    super('NOT_READY', 503, message);
  }
}

/** The dashboard could not listen (port in use, address not available). */
export class DashboardListenError extends TesseraError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('DASHBOARD_LISTEN', message, options);
  }
}
