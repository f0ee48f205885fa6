import { readdirSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';

/**
 * Raw clients for hostile-input tests: bytes go on the wire exactly as written (Node's own HTTP
 * client would refuse or fix most of what these tests send).
 */

export interface RawTlsOptions {
  cert?: string;
  key?: string;
  ca: string;
  servername?: string;
}

export interface RawOptions {
  /** TLS client options; omit for plaintext. */
  tls?: RawTlsOptions;
  /** Give up waiting for the server to close after this long (ms). */
  timeoutMs?: number;
  localAddress?: string;
}

export interface RawResponse {
  /** Everything the server sent before it closed (or the timeout). */
  raw: string;
  /** Status of the first response, 0 when there was none. */
  status: number;
  /** Lowercase header name → value, of the first response (last copy wins). */
  headers: Record<string, string>;
  /** The first response's body (chunked encoding decoded). */
  body: string;
  /** Whether the server closed the connection (false: the timeout ended the wait). */
  closed: boolean;
  /** A socket error seen, if any (e.g. ECONNRESET). */
  error: string;
}

/** Opens a plain or TLS connection and resolves once it is ready for bytes. */
export function connect(port: number, opts: RawOptions = {}): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    if (opts.tls !== undefined) {
      const o: tls.ConnectionOptions = {
        host: '127.0.0.1',
        port,
        ...opts.tls,
        servername: opts.tls.servername ?? 'localhost',
      };
      if (opts.localAddress !== undefined) (o as net.TcpNetConnectOpts).localAddress = opts.localAddress;
      const s = tls.connect(o);
      s.once('secureConnect', () => resolve(s));
      s.once('error', reject);
    } else {
      const s = net.connect({ host: '127.0.0.1', port, localAddress: opts.localAddress });
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    }
  });
}

/**
 * Sends `data` (in pieces, if an array: each piece is its own write) and collects what comes back
 * until the server closes or `timeoutMs` passes.
 */
export async function rawExchange(
  port: number,
  data: string | Buffer | (string | Buffer)[],
  opts: RawOptions = {},
): Promise<RawResponse> {
  const s = await connect(port, opts);
  return collect(s, data, opts.timeoutMs ?? 3_000);
}

export function collect(
  s: net.Socket,
  data: string | Buffer | (string | Buffer)[],
  timeoutMs: number,
): Promise<RawResponse> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let error = '';
    let done = false;
    const finish = (closed: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve(parseResponse(Buffer.concat(chunks).toString('latin1'), closed, error));
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', (e: Error & { code?: string }) => {
      error = e.code ?? e.message;
    });
    s.on('close', () => finish(true));
    s.on('end', () => finish(true));
    for (const piece of Array.isArray(data) ? data : [data]) s.write(piece);
  });
}

export function parseResponse(raw: string, closed: boolean, error: string): RawResponse {
  const out: RawResponse = { raw, status: 0, headers: {}, body: '', closed, error };
  const headEnd = raw.indexOf('\r\n\r\n');
  if (headEnd === -1) return out;
  const lines = raw.slice(0, headEnd).split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
  if (m === null) return out;
  out.status = Number(m[1]);
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    if (i > 0) out.headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  let rest = raw.slice(headEnd + 4);
  if (out.headers['transfer-encoding'] === 'chunked') {
    let body = '';
    for (;;) {
      const nl = rest.indexOf('\r\n');
      if (nl === -1) break;
      const size = Number.parseInt(rest.slice(0, nl), 16);
      if (!Number.isFinite(size) || size === 0) break;
      body += rest.slice(nl + 2, nl + 2 + size);
      rest = rest.slice(nl + 2 + size + 2);
    }
    out.body = body;
  } else {
    const len = out.headers['content-length'];
    out.body = len === undefined ? rest : rest.slice(0, Number(len));
  }
  return out;
}

/** Open file descriptors of this process (the proxy under test runs in it). */
export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Resolves when the socket is closed by the other side (or destroyed), with the time it took. */
export function closedWithin(s: net.Socket): Promise<number> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    if (s.destroyed) resolve(0);
    s.on('error', () => undefined);
    s.once('close', () => resolve(Date.now() - t0));
  });
}
