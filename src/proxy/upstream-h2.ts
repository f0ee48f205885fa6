import http2 from 'node:http2';
import type { Logger } from 'pino';
import type { Limits } from '../config/load.js';
import { declaresBody, sendLocalReply } from './local-reply.js';
import type { RequestStream } from './stream.js';
import { replyForUpstreamError } from './upstream.js';

/**
 * An HTTP/2 upstream (`upstreamProtocol: http2`): one HTTP/2 session to the service, reconnected
 * when it closes, with a stream per forwarded request. An `http://` origin is h2c with prior
 * knowledge, as gRPC servers listen behind a sidecar; `https://` negotiates h2 by ALPN. Bodies
 * stream both ways with backpressure, and response trailers (gRPC's grpc-status) pass through to
 * HTTP/2 clients.
 */

/** Request fields HTTP/2 does not carry (RFC 9113 §8.2.2), besides the hop-by-hop ones already dropped. */
const NOT_IN_H2: ReadonlySet<string> = new Set([
  'host',
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
]);

const kExchange = Symbol('portcullis.h2exchange');

interface Tagged {
  [kExchange]?: H2Exchange;
}

export class H2Upstream {
  readonly origin: string;
  private session: http2.ClientHttp2Session | null = null;
  private readonly limits: Limits;
  private readonly log: Logger;
  private closed = false;

  constructor(origin: string, limits: Limits, log: Logger) {
    this.origin = origin;
    this.limits = limits;
    this.log = log;
  }

  /** The session, opened (again) when there is none usable. */
  private current(): http2.ClientHttp2Session {
    const s = this.session;
    if (s !== null && !s.closed && !s.destroyed) return s;
    const session = http2.connect(this.origin, { maxSessionMemory: 16 });
    session.on('error', (err: Error) => {
      this.log.warn({ upstream: this.origin, message: err.message }, 'HTTP/2 upstream session failed');
    });
    session.on('close', () => {
      if (this.session === session) this.session = null;
    });
    session.setTimeout(this.limits.upstreamBodyTimeout, () => session.close());
    this.session = session;
    return session;
  }

  forward(rs: RequestStream, headers: readonly string[]): void {
    if (this.closed) {
      sendLocalReply(
        rs.res,
        replyForUpstreamError(Object.assign(new Error('closed'), { code: 'UND_ERR_CLOSED' })),
        '',
        rs.attrs.requestId,
      );
      return;
    }
    const out: http2.OutgoingHttpHeaders = {
      ':method': rs.attrs.method,
      ':path': rs.ctx.forwardTarget,
      ':authority': rs.attrs.host,
      ':scheme': this.origin.startsWith('https:') ? 'https' : 'http',
    };
    for (let i = 0; i + 1 < headers.length; i += 2) {
      const name = (headers[i] as string).toLowerCase();
      if (NOT_IN_H2.has(name)) continue;
      const value = headers[i + 1] as string;
      // TE is allowed in HTTP/2 only as "trailers" (which gRPC sends); the rest are dropped.
      if (name === 'te' && value !== 'trailers') continue;
      const prev = out[name];
      out[name] = prev === undefined ? value : Array.isArray(prev) ? [...prev, value] : [String(prev), value];
    }
    const te = rs.attrs.headers.te;
    if (te === 'trailers') out.te = 'trailers';
    const hasBody = declaresBody(rs.req);
    let stream: http2.ClientHttp2Stream;
    try {
      stream = this.current().request(out, { endStream: !hasBody });
    } catch (err) {
      rs.reply = replyForUpstreamError(err as Error);
      sendLocalReply(rs.res, rs.reply, '', rs.attrs.requestId);
      return;
    }
    const exchange = new H2Exchange(rs, stream);
    (stream as http2.ClientHttp2Stream & Tagged)[kExchange] = exchange;
    (rs.res as unknown as Tagged)[kExchange] = exchange;
    stream.setTimeout(this.limits.upstreamHeadersTimeout, onStreamTimeout);
    stream.on('response', onStreamResponse);
    stream.on('trailers', onStreamTrailers);
    stream.on('error', onStreamError);
    stream.on('end', onStreamEnd);
    stream.pipe(rs.res as unknown as NodeJS.WritableStream, { end: false });
    if (hasBody) rs.req.pipe(stream);
  }

  close(): Promise<void> {
    this.closed = true;
    const s = this.session;
    if (s === null || s.closed) return Promise.resolve();
    return new Promise((resolve) => s.close(() => resolve()));
  }
}

/** One forwarded request on the HTTP/2 session. */
class H2Exchange {
  readonly rs: RequestStream;
  readonly stream: http2.ClientHttp2Stream;
  done = false;

  constructor(rs: RequestStream, stream: http2.ClientHttp2Stream) {
    this.rs = rs;
    this.stream = stream;
    rs.upstreamStart = performance.now();
  }
}

function onStreamResponse(this: http2.ClientHttp2Stream & Tagged, headers: http2.IncomingHttpHeaders): void {
  const ex = this[kExchange] as H2Exchange;
  const rs = ex.rs;
  this.setTimeout(rs.plan.upstream.limits.upstreamBodyTimeout, onStreamTimeout);
  const status = Number(headers[':status'] ?? 502);
  rs.upstreamStatus = status;
  if ((this.endAfterHeaders || headers['grpc-status'] !== undefined) && rs.req.httpVersionMajor === 2) {
    // A trailers-only response (gRPC errors come so: grpc-status in the one HEADERS frame, which
    // ends the stream) must reach the client in the same form, or a gRPC client waits for trailers
    // that never come. 'response' fires before the stream's end is known, hence grpc-status.
    const out: http2.OutgoingHttpHeaders = { ':status': status };
    for (const [name, value] of Object.entries(headers))
      if (name.charCodeAt(0) !== 58 /* : */ && value !== undefined) out[name] = value;
    const down = (rs.res as unknown as { stream: http2.ServerHttp2Stream }).stream;
    if (!down.headersSent && !down.destroyed) down.respond(out, { endStream: true });
    return;
  }
  const flat: string[] = [];
  for (const [name, value] of Object.entries(headers)) {
    if (name.charCodeAt(0) === 58 /* : */ || value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) flat.push(name, v);
    else flat.push(name, String(value));
  }
  rs.res.writeHead(status, flat);
}

/** Trailers (gRPC's grpc-status and grpc-message) go on to clients that can take them. */
function onStreamTrailers(this: http2.ClientHttp2Stream & Tagged, trailers: http2.IncomingHttpHeaders): void {
  const rs = (this[kExchange] as H2Exchange).rs;
  if (rs.req.httpVersionMajor !== 2) return;
  const t: Record<string, string> = {};
  for (const [name, value] of Object.entries(trailers)) if (value !== undefined) t[name] = String(value);
  rs.res.addTrailers(t);
}

function onStreamEnd(this: http2.ClientHttp2Stream & Tagged): void {
  const ex = this[kExchange] as H2Exchange;
  ex.done = true;
  ex.rs.upstreamEnd = performance.now();
  // Trailers arrive before 'end'; the response ends after them.
  setImmediate(endResponse, ex);
}

function endResponse(ex: H2Exchange): void {
  const res = ex.rs.res;
  // A trailers-only response was sent on the stream itself; otherwise end the compat response.
  const down = (res as unknown as { stream?: http2.ServerHttp2Stream }).stream;
  if (down?.headersSent === true && !res.headersSent) return;
  if (!res.writableEnded) res.end();
}

function onStreamTimeout(this: http2.ClientHttp2Stream): void {
  this.destroy(Object.assign(new Error('upstream timeout'), { code: 'UND_ERR_HEADERS_TIMEOUT' }));
}

function onStreamError(this: http2.ClientHttp2Stream & Tagged, err: Error & { code?: string }): void {
  const ex = this[kExchange] as H2Exchange;
  ex.done = true;
  const rs = ex.rs;
  rs.upstreamEnd = performance.now();
  if (rs.closed) return;
  // A stream cancelled because its session failed carries the session's error (ECONNREFUSED, …) as cause.
  const cause = (err as Error & { cause?: Error & { code?: string } }).cause;
  rs.reply = replyForUpstreamError(cause?.code !== undefined ? cause : err);
  sendLocalReply(rs.res, rs.reply, '', rs.attrs.requestId);
}

/** The client's response closed: cancel the upstream stream if it is still going. */
export function abortH2Upstream(res: unknown): void {
  const ex = (res as Tagged)[kExchange];
  if (ex !== undefined && !ex.done) ex.stream.close(http2.constants.NGHTTP2_CANCEL);
}
