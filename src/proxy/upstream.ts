import type { ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Limits } from '../config/load.js';
import type { Dispatcher } from '../http-client.js';
import { Pool } from '../http-client.js';
import { LogLimiter } from '../transport/log-limit.js';
import { upstreamRequestHeaders, upstreamResponseHeaders } from './headers.js';
import { declaresBody, type LocalReply, REPLIES, sendLocalReply } from './local-reply.js';
import type { Forwarder } from './plan.js';
import type { RequestStream } from './stream.js';
import { abortH2Upstream, H2Upstream } from './upstream-h2.js';

/** Methods whose requests carry no body unless they say so with Content-Length or Transfer-Encoding. */
function hasBody(rs: RequestStream): boolean {
  return declaresBody(rs.req);
}

/** The header list a request is forwarded with, under its plan's pinned-header and underscore rules. */
export function forwardingHeaders(rs: RequestStream): string[] {
  const plan = rs.plan;
  return upstreamRequestHeaders(
    rs.req.rawHeaders,
    rs.attrs.headers.connection,
    rs,
    plan.pinned,
    plan.dropUnderscoreHeaders,
  );
}

/**
 * An HTTP/2 request forwarded as HTTP/1.1 (RFC 9113 §8.2.3, §8.3.1): the authority becomes Host
 * (the one authorized), and cookie fields, which HTTP/2 may split, are joined into one.
 */
export function fromHttp2(headers: string[], rs: RequestStream): void {
  let hasHost = false;
  let w = 0;
  for (let i = 0; i + 1 < headers.length; i += 2) {
    const lower = (headers[i] as string).toLowerCase();
    if (lower === 'cookie') continue;
    if (lower === 'host') hasHost = true;
    headers[w++] = headers[i] as string;
    headers[w++] = headers[i + 1] as string;
  }
  headers.length = w;
  const authority = rs.attrs.headers[':authority'];
  if (!hasHost && typeof authority === 'string') headers.push('host', authority);
  const cookie = rs.attrs.headers.cookie;
  if (cookie !== undefined) headers.push('cookie', cookie);
}

/** Maps an undici failure before response headers to the reply a client should get. */
export function replyForUpstreamError(err: Error & { code?: string }): LocalReply {
  switch (err.code) {
    case 'UND_ERR_HEADERS_TIMEOUT':
      return REPLIES.upstreamTimeout;
    case 'ECONNREFUSED':
    case 'ECONNRESET':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EPIPE':
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'UND_ERR_SOCKET':
    case 'UND_ERR_CLOSED':
    case 'UND_ERR_DESTROYED':
      return REPLIES.upstreamUnavailable;
    default:
      return REPLIES.upstreamError;
  }
}

/**
 * The service behind the proxy: an undici Pool with keep-alive. Bodies stream both ways — the
 * client's request is the upstream body, the client's response is the sink undici writes into —
 * so a multi-megabyte upload or download never sits in memory whole.
 */
export class Upstream implements Forwarder {
  readonly origin: string;
  readonly limits: Limits;
  /** Upstream failures come one per request while it is down: one line per error code per 10 s. */
  readonly logLimit = new LogLimiter();
  private readonly pool: Pool;
  private readonly log: Logger;

  /** The HTTP/2 session's owner when upstreamProtocol is http2, else null (undici's pool is used). */
  private readonly h2: H2Upstream | null;

  constructor(origin: string, limits: Limits, log: Logger, protocol: 'http1' | 'http2' = 'http1') {
    this.origin = origin;
    this.limits = limits;
    this.log = log;
    this.h2 = protocol === 'http2' ? new H2Upstream(origin, limits, log) : null;
    this.pool = new Pool(origin, {
      connections: limits.upstreamConnections,
      connect: { timeout: limits.upstreamConnectTimeout },
      headersTimeout: limits.upstreamHeadersTimeout,
      bodyTimeout: limits.upstreamBodyTimeout,
      keepAliveTimeout: 4_000,
    });
  }

  forward(rs: RequestStream): void {
    // The client went away while the stages ran (an async token check, an external authorizer).
    if (rs.closed) return;
    const headers = forwardingHeaders(rs);
    // The client waits for this before it sends the body: only now, once the request is allowed.
    if (rs.expectContinue) rs.res.writeContinue();
    if (this.h2 !== null) {
      this.h2.forward(rs, headers);
      return;
    }
    if (rs.req.httpVersionMajor === 2) fromHttp2(headers, rs);
    dispatchTo(this.pool, rs, headers, undefined);
  }

  replyFor(err: Error & { code?: string }): LocalReply {
    return replyForUpstreamError(err);
  }

  /** Lets in-flight requests finish, then closes upstream connections. */
  close(): Promise<void> {
    return Promise.all([this.pool.close(), this.h2?.close()]).then(() => undefined);
  }

  get logger(): Logger {
    return this.log;
  }
}

/**
 * Sends an allowed request on an undici dispatcher (a Pool, or an Agent with `origin`) with a
 * handler object: the response goes straight from the upstream's parser into the client's
 * response, without the stream wrappers of request()/stream().
 */
export function dispatchTo(
  dispatcher: Dispatcher,
  rs: RequestStream,
  headers: string[],
  origin: string | undefined,
): void {
  rs.upstreamStart = performance.now();
  dispatcher.dispatch(
    {
      origin,
      path: rs.ctx.forwardTarget,
      method: rs.attrs.method as Dispatcher.HttpMethod,
      headers,
      body: hasBody(rs) ? rs.req : null,
    },
    new Exchange(rs),
  );
}

const kExchange = Symbol('portcullis.exchange');

/**
 * One forwarded request, as an undici dispatch handler (the callback API that undici's HTTP/1.1
 * client calls directly). Backpressure: when the client's response is full, onData returns false
 * and the upstream connection pauses until the response drains.
 */
class Exchange {
  private readonly rs: RequestStream;
  private abortFn: ((err?: Error) => void) | null = null;
  private resumeFn: (() => void) | null = null;
  done = false;
  /** The client's response closed (the client went away, or its HTTP/2 stream was reset). */
  gone = false;

  constructor(rs: RequestStream) {
    this.rs = rs;
    (rs.res as ServerResponse & { [kExchange]?: Exchange })[kExchange] = this;
  }

  onConnect(abort: (err?: Error) => void): void {
    this.abortFn = abort;
    // The client may have gone before undici had a connection for this request (an HTTP/2 stream
    // reset at once, as in a rapid-reset flood): then it must not go on, holding an upstream
    // connection while it waits for a body that will never come.
    if (this.gone || this.rs.closed || this.rs.res.destroyed) abort(new Error('the client went away'));
  }

  onHeaders(statusCode: number, raw: Buffer[], resume: () => void): boolean {
    if (statusCode < 200) return true; // 1xx: informational, the final response follows
    const rs = this.rs;
    this.resumeFn = resume;
    rs.upstreamStatus = statusCode;
    rs.res.writeHead(statusCode, upstreamResponseHeaders(raw));
    return true;
  }

  onData(chunk: Buffer): boolean {
    const res = this.rs.res;
    if (res.write(chunk)) return true;
    res.once('drain', onDrain);
    return false;
  }

  onComplete(): void {
    this.done = true;
    this.rs.upstreamEnd = performance.now();
    this.rs.res.end();
  }

  onError(err: Error): void {
    this.done = true;
    const rs = this.rs;
    rs.upstreamEnd = performance.now();
    if (rs.res.destroyed || rs.req.destroyed) return; // the client went away; nothing to tell it
    const e = err as Error & { code?: string };
    const upstream = rs.plan.upstream;
    const reply = upstream.replyFor(e);
    const held = upstream.logLimit.allow(e.code ?? 'error');
    if (held >= 0)
      upstream.logger.warn(
        // Not under `err`: pino's error serializer would turn a plain object into {type:"Object",stack:""}.
        { code: e.code, message: err.message, upstream: rs.route?.upstream ?? upstream.origin, held },
        'upstream request failed (held: like lines not logged in the last 10 s)',
      );
    rs.reply = reply;
    sendLocalReply(rs.res, reply, '', rs.attrs.requestId);
  }

  /** The client's response closed: stop the upstream request if it is still going. */
  clientGone(): void {
    this.gone = true;
    if (!this.done && this.abortFn !== null) this.abortFn(new Error('the client went away'));
  }

  resume(): void {
    this.resumeFn?.();
  }
}

function onDrain(this: ServerResponse & { [kExchange]?: Exchange }): void {
  this[kExchange]?.resume();
}

/** Called when a client response closes (listener.ts), so an unfinished upstream request stops too. */
export function abortUpstream(res: ServerResponse): void {
  (res as ServerResponse & { [kExchange]?: Exchange })[kExchange]?.clientGone();
  abortH2Upstream(res);
}
