import type { IncomingMessage, ServerResponse } from 'node:http';

/**
 * A response the proxy makes itself (Envoy's "local reply"). Bodies and headers are built once at
 * module load; sending one allocates nothing but the write.
 */
export class LocalReply {
  readonly status: number;
  readonly body: Buffer;
  /** Short reason for logs and audit (e.g. `upstream-unavailable`). */
  readonly reason: string;
  readonly headers: Readonly<Record<string, string | string[]>>;
  /** Add `WWW-Authenticate: Bearer realm="<request URL>"` (RFC 6750 §3), as Envoy does on a JWT failure. */
  readonly bearerChallenge: boolean;

  /** A string body gets a final newline; a Buffer is sent exactly (a relayed body). */
  constructor(
    status: number,
    reason: string,
    body: string | Buffer,
    extraHeaders?: Record<string, string | string[]>,
    bearerChallenge = false,
  ) {
    this.status = status;
    this.reason = reason;
    this.bearerChallenge = bearerChallenge;
    this.body = typeof body === 'string' ? Buffer.from(body.endsWith('\n') ? body : `${body}\n`) : body;
    this.headers = {
      'content-type': 'text/plain; charset=utf-8',
      ...extraHeaders,
      // Always the length of the body actually sent, whatever a relayed header said.
      'content-length': String(this.body.length),
    };
  }
}

// Bodies follow Envoy's wording where a mesh user would recognise it.
export const REPLY_BAD_REQUEST = new LocalReply(400, 'bad-request', 'Bad Request', { connection: 'close' });
export const REPLY_UPSTREAM_UNAVAILABLE = new LocalReply(
  503,
  'upstream-unavailable',
  'upstream connect error or disconnect/reset before headers. reset reason: connection failure',
);
export const REPLY_UPSTREAM_TIMEOUT = new LocalReply(504, 'upstream-timeout', 'upstream request timeout');
export const REPLY_UPSTREAM_ERROR = new LocalReply(502, 'upstream-error', 'upstream protocol error');

/** `challenge` is the WWW-Authenticate value for replies that carry one, else ''. */
export function sendLocalReply(res: ServerResponse, reply: LocalReply, challenge = ''): void {
  if (res.headersSent) {
    // Too late for a clean reply: cut the response so the client cannot take a partial body as whole.
    res.destroy();
    return;
  }
  if (challenge !== '') res.setHeader('www-authenticate', challenge);
  // Answered before the request body ended (a refusal, an upstream failure): do not read the
  // rest of it. `Connection: close` makes Node end the connection once the reply is written,
  // instead of draining the whole body to keep the connection alive — so a refused client cannot
  // stream into the proxy until requestTimeout.
  const req = res.req;
  if (!req.complete && declaresBody(req)) res.setHeader('connection', 'close');
  res.writeHead(reply.status, reply.headers);
  res.end(reply.body);
}

/** Whether the request says a body follows (Content-Length above 0, or Transfer-Encoding). */
export function declaresBody(req: IncomingMessage): boolean {
  const h = req.headers;
  return (
    h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0')
  );
}

/** `OPTIONS *` asks about the server, not a resource: after authorization the proxy answers it. */
export const REPLY_OPTIONS_ASTERISK = new LocalReply(200, 'options-asterisk', Buffer.alloc(0));
