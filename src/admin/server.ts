import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { HostPort } from '../config/address.js';

/** What the admin endpoints report on; the running proxy implements it. */
export interface AdminStatus {
  /** Listening on every listener. */
  readonly live: boolean;
  /** Certificates and policies loaded, listening, and not shutting down (a cluster primary asks its workers). */
  readonly ready: boolean | Promise<boolean>;
  statusJson(): unknown;
  metricsText(): Promise<{ contentType: string; body: string }>;
}

/**
 * The admin server, on its own address (keep it on loopback or a private interface): liveness,
 * readiness, and a JSON status that names what is loaded (never key material).
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
