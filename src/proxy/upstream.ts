import type { IncomingHttpHeaders } from 'node:http';
import type { Writable } from 'node:stream';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { Pool } from 'undici';
import type { Limits } from '../config/load.js';
import type { RequestContext } from './context.js';
import { stripResponseHopByHop, upstreamRequestHeaders } from './headers.js';
import {
  type LocalReply,
  REPLY_UPSTREAM_ERROR,
  REPLY_UPSTREAM_TIMEOUT,
  REPLY_UPSTREAM_UNAVAILABLE,
  sendLocalReply,
} from './local-reply.js';

/** Methods whose requests carry no body unless they say so with Content-Length or Transfer-Encoding. */
function hasBody(ctx: RequestContext): boolean {
  const h = ctx.headers;
  return (
    h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0')
  );
}

/** Maps an undici failure before response headers to the reply a client should get. */
export function replyForUpstreamError(err: Error & { code?: string }): LocalReply {
  switch (err.code) {
    case 'UND_ERR_HEADERS_TIMEOUT':
      return REPLY_UPSTREAM_TIMEOUT;
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
      return REPLY_UPSTREAM_UNAVAILABLE;
    default:
      return REPLY_UPSTREAM_ERROR;
  }
}

/**
 * The service behind the proxy: an undici Pool with keep-alive. Bodies stream both ways — the
 * client's request is the upstream body, the client's response is the sink undici writes into —
 * so a multi-megabyte upload or download never sits in memory whole.
 */
export class Upstream {
  readonly origin: string;
  private readonly pool: Pool;
  private readonly log: Logger;

  constructor(origin: string, limits: Limits, log: Logger) {
    this.origin = origin;
    this.log = log;
    this.pool = new Pool(origin, {
      connections: limits.upstreamConnections,
      connect: { timeout: limits.upstreamConnectTimeout },
      headersTimeout: limits.upstreamHeadersTimeout,
      bodyTimeout: limits.upstreamBodyTimeout,
      keepAliveTimeout: 4_000,
    });
  }

  forward(ctx: RequestContext): void {
    const headers = upstreamRequestHeaders(ctx.req.rawHeaders, ctx.headers.connection, ctx);
    const options: Dispatcher.RequestOptions<RequestContext> = {
      path: ctx.forwardTarget,
      method: ctx.method as Dispatcher.HttpMethod,
      headers,
      body: hasBody(ctx) ? ctx.req : null,
      opaque: ctx,
    };
    ctx.upstreamStart = performance.now();
    this.pool.stream(options, onUpstreamHeaders, onUpstreamDone);
  }

  /** Lets in-flight requests finish, then closes upstream connections. */
  close(): Promise<void> {
    return this.pool.close();
  }

  destroy(): Promise<void> {
    return this.pool.destroy();
  }

  get logger(): Logger {
    return this.log;
  }
}

// Module-level callbacks (undici passes `opaque` back) so that forwarding creates no closures.
function onUpstreamHeaders(data: Dispatcher.StreamFactoryData<RequestContext>): Writable {
  const ctx = data.opaque;
  ctx.upstreamStatus = data.statusCode;
  ctx.res.writeHead(data.statusCode, stripResponseHopByHop(data.headers as IncomingHttpHeaders));
  return ctx.res;
}

function onUpstreamDone(err: Error | null, data: Dispatcher.StreamData<RequestContext>): void {
  const ctx = data.opaque;
  ctx.upstreamEnd = performance.now();
  if (err === null) return;
  if (ctx.res.destroyed || ctx.req.destroyed) return; // the client went away; nothing to tell it
  const reply = replyForUpstreamError(err as Error & { code?: string });
  ctx.plan.upstream.logger.warn(
    {
      err: { code: (err as Error & { code?: string }).code, message: err.message },
      upstream: ctx.plan.upstream.origin,
    },
    'upstream request failed',
  );
  ctx.localReason = reply.reason;
  sendLocalReply(ctx.res, reply);
}
