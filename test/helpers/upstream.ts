import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface EchoReply {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  bodyBytes: number;
  bodySha256: string;
}

/**
 * A real upstream on loopback: echoes the request as JSON (with a hash of the body, so large
 * bodies can be compared without keeping them), and serves `/bytes/N` as N streamed bytes.
 */
/** What the upstream saw of one request, for checks on what was forwarded. */
export interface Received {
  method: string;
  url: string;
  host: string;
  requestId: string;
}

export class EchoUpstream {
  readonly server: http.Server;
  requests = 0;
  /** Every request seen (method, target, Host, request id), in arrival order. */
  readonly received: Received[] = [];

  constructor() {
    this.server = http.createServer((req, res) => {
      this.requests++;
      this.received.push({
        method: req.method ?? '',
        url: req.url ?? '',
        host: req.headers.host ?? '',
        requestId: String(req.headers['x-request-id'] ?? ''),
      });
      const m = /^\/bytes\/(\d+)$/.exec(req.url ?? '');
      if (m !== null) return streamBytes(res, Number(m[1]));
      const slow = /^\/slow\/(\d+)$/.exec(req.url ?? '');
      if (slow !== null) {
        req.resume();
        setTimeout(() => res.end('slow done'), Number(slow[1]));
        return;
      }
      const hash = createHash('sha256');
      let bytes = 0;
      req.on('data', (c: Buffer) => {
        bytes += c.length;
        hash.update(c);
      });
      req.on('end', () => {
        const body: EchoReply = {
          method: req.method ?? '',
          url: req.url ?? '',
          headers: req.headers,
          rawHeaders: req.rawHeaders,
          bodyBytes: bytes,
          bodySha256: hash.digest('hex'),
        };
        const text = JSON.stringify(body);
        res.writeHead(200, {
          'content-type': 'application/json',
          'x-upstream': 'echo',
          connection: 'keep-alive, x-hop',
          'x-hop': 'secret',
        });
        res.end(text);
      });
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}

/** Deterministic bytes: block i of 64 KiB is filled with (i % 251). */
export function patternBytes(total: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0, sent = 0; sent < total; i++) {
    const n = Math.min(65536, total - sent);
    out.push(Buffer.alloc(n, i % 251));
    sent += n;
  }
  return out;
}

function streamBytes(res: http.ServerResponse, total: number): void {
  res.writeHead(200, { 'content-type': 'application/octet-stream' });
  const chunks = patternBytes(total);
  let i = 0;
  const pump = (): void => {
    while (i < chunks.length) {
      if (!res.write(chunks[i++])) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  pump();
}

export function sha256(chunks: Buffer[]): string {
  const h = createHash('sha256');
  for (const c of chunks) h.update(c);
  return h.digest('hex');
}
