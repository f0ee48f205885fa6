import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';

export interface ClientOptions {
  method?: string;
  headers?: Record<string, string | string[]>;
  body?: Buffer | string | Readable;
  cert?: string;
  key?: string;
  ca?: string;
  servername?: string;
  agent?: http.Agent | false;
  /** Keep the response body as bytes (default: utf8 text). */
  raw?: boolean;
}

export interface ClientResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  bytes: Buffer;
  socketReused: boolean;
}

/**
 * One HTTP(S) request with Node's own client, resolving with status, headers and the whole body.
 * The path is sent exactly as written (WHATWG URL parsing would resolve `..` and turn `\` into
 * `/` before the proxy ever saw them).
 */
export function request(url: string, opts: ClientOptions = {}): Promise<ClientResponse> {
  const m = /^(https?):\/\/(\[[^\]]+\]|[^/:]+)(?::(\d+))?(.*)$/.exec(url);
  if (m === null) throw new Error(`not a URL: ${url}`);
  const isTls = m[1] === 'https';
  const mod = isTls ? https : http;
  const hostname = (m[2] as string).replace(/^\[|\]$/g, '');
  return new Promise((resolve, reject) => {
    const req = mod.request(
      {
        hostname,
        port: m[3] === undefined ? undefined : Number(m[3]),
        path: m[4] === '' ? '/' : m[4],
        method: opts.method ?? 'GET',
        headers: opts.headers,
        agent: opts.agent ?? false,
        ...(isTls
          ? { cert: opts.cert, key: opts.key, ca: opts.ca, servername: opts.servername ?? 'localhost' }
          : {}),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const bytes = Buffer.concat(chunks);
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            text: bytes.toString('utf8'),
            bytes,
            socketReused: (req as http.ClientRequest & { reusedSocket: boolean }).reusedSocket,
          });
        });
      },
    );
    req.on('error', reject);
    const body = opts.body;
    if (body === undefined) req.end();
    else if (typeof body === 'string' || Buffer.isBuffer(body)) req.end(body);
    else body.pipe(req);
  });
}
