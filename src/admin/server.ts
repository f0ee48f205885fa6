import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { isRequestId } from '../authz/attributes.js';
import { type Explanation, explanationLines } from '../authz/explain.js';
import type { HostPort } from '../config/address.js';

/** What the admin endpoints report on; the running proxy implements it. */
export interface AdminStatus {
  /** Listening on every listener. */
  readonly live: boolean;
  /** Certificates and policies loaded, listening, and not shutting down (a cluster primary asks its workers). */
  readonly ready: boolean | Promise<boolean>;
  statusJson(): unknown;
  metricsText(): Promise<{ contentType: string; body: string }>;
  /** Recent decisions with this request id, newest first (a cluster primary asks its workers). */
  explainDecisions(requestId: string): Explanation[] | Promise<Explanation[]>;
}

/**
 * The admin server, on its own address (keep it on loopback or a private interface): liveness,
 * readiness, a JSON status that names what is loaded (never key material), metrics, and the
 * explanation of a recent decision by its request id (to loopback clients only).
 */
export class AdminServer {
  private readonly server: http.Server;
  private readonly address: HostPort;

  constructor(address: HostPort, status: AdminStatus) {
    this.address = address;
    this.server = http.createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' && req.method !== 'HEAD') return reply(res, 405, 'method not allowed\n');
      if (path === '/healthz')
        return status.live ? reply(res, 200, 'ok\n') : reply(res, 503, 'not listening\n');
      if (path === '/readyz') {
        Promise.resolve(status.ready).then(
          (ready) => (ready ? reply(res, 200, 'ready\n') : reply(res, 503, 'not ready\n')),
          () => reply(res, 503, 'not ready\n'),
        );
        return;
      }
      if (path === '/status') {
        Promise.resolve(status.statusJson()).then(
          (json) => reply(res, 200, `${JSON.stringify(json, null, 2)}\n`, 'application/json'),
          () => reply(res, 500, 'status unavailable\n'),
        );
        return;
      }
      if (path === '/metrics') {
        status.metricsText().then(
          (m) => reply(res, 200, m.body, m.contentType),
          () => reply(res, 500, 'metrics unavailable\n'),
        );
        return;
      }
      if (path?.startsWith('/decisions/'))
        return decision(req, res, path.slice('/decisions/'.length), status);
      return reply(res, 404, 'not found\n');
    });
    this.server.keepAliveTimeout = 5_000;
  }

  listen(): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host: this.address.host, port: this.address.port }, () => {
        this.server.off('error', reject);
        resolve(this.server.address() as AddressInfo);
      });
    });
  }

  addressInfo(): AddressInfo {
    return this.server.address() as AddressInfo;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}

/**
 * `GET /decisions/<request-id>`: why recent requests with this id were decided as they were (text,
 * or JSON with `Accept: application/json` or `?format=json`). Policy detail and request attributes
 * are for operators: served only to clients on loopback, even when the admin server listens on a
 * pod address for probes.
 */
function decision(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  id: string,
  status: AdminStatus,
): void {
  if (!isLoopback(req.socket.remoteAddress)) {
    reply(res, 403, 'decisions are explained to loopback clients only\n');
    return;
  }
  let requestId: string;
  try {
    requestId = decodeURIComponent(id);
  } catch {
    requestId = '';
  }
  if (!isRequestId(requestId)) {
    reply(res, 400, 'not a request id\n');
    return;
  }
  const json =
    (req.url ?? '').endsWith('?format=json') || (req.headers.accept ?? '').includes('application/json');
  Promise.resolve(status.explainDecisions(requestId)).then(
    (found) => {
      if (found.length === 0)
        return reply(
          res,
          404,
          `no recent decision has request id ${requestId} (only the latest are kept: admin.decisions)\n`,
        );
      if (json)
        return reply(
          res,
          200,
          `${JSON.stringify({ requestId, decisions: found }, null, 2)}\n`,
          'application/json',
        );
      const text = found.map((e) => explanationLines(e, true).join('\n')).join('\n\n---\n\n');
      reply(res, 200, `${text}\n`);
    },
    () => reply(res, 500, 'explain unavailable\n'),
  );
}

/** A loopback peer address (IPv4 127/8, ::1, or 127/8 mapped into IPv6). */
export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.');
}

function reply(
  res: http.ServerResponse,
  status: number,
  body: string,
  type = 'text/plain; charset=utf-8',
): void {
  res.writeHead(status, {
    'content-type': type,
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  res.end(body);
}
