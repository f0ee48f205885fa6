import type { IncomingMessage, ServerResponse } from 'node:http';
import { constants as h2constants, type ServerHttp2Stream } from 'node:http2';
import { DPOP_ALGORITHMS } from '../authn/dpop.js';

const NGHTTP2_INTERNAL_ERROR = h2constants.NGHTTP2_INTERNAL_ERROR;

/**
 * gRPC status for an HTTP status, as Envoy maps a local reply for a gRPC client (gRPC's
 * "HTTP to gRPC Status Code Mapping"): 401 → UNAUTHENTICATED, 403 → PERMISSION_DENIED,
 * 429/502/503/504 → UNAVAILABLE, 400 → INTERNAL, anything else UNKNOWN.
 */
export function grpcStatusFor(status: number): number {
  switch (status) {
    case 400:
      return 13;
    case 401:
      return 16;
    case 403:
      return 7;
    case 404:
      return 12;
    case 429:
    case 502:
    case 503:
    case 504:
      return 14;
    default:
      return status >= 200 && status < 300 ? 0 : 2;
  }
}

/**
 * A response the proxy makes itself (Envoy's "local reply"): one entry of the reply table. What
 * it means is decided here and nowhere else: the status and body sent, the reason recorded in
 * audit events and metrics, whether it is a refusal (deny) or a reply after an allow (an upstream
 * failure), and the gRPC status a gRPC client gets. Bodies and headers are built once; sending one
 * allocates nothing but the write.
 */
export class LocalReply {
  readonly status: number;
  readonly body: Buffer;
  /** Short reason for logs and audit (e.g. `upstream-unavailable`). */
  readonly reason: string;
  /** A refusal by the proxy (decision `deny`), as opposed to a reply after the request was allowed. */
  readonly deny: boolean;
  readonly grpcStatus: number;
  readonly headers: Readonly<Record<string, string | string[]>>;
  /** The same for an HTTP/2 stream, which may carry no connection-specific field (RFC 9113 §8.2.2). */
  readonly h2Headers: Readonly<Record<string, string | string[]>>;
  /** Add `WWW-Authenticate: Bearer realm="<request URL>"` (RFC 6750 §3), as Envoy does on a JWT failure. */
  readonly bearerChallenge: boolean;
  /** Auth-params after the realm (`, error="invalid_token", …`), or ''. */
  readonly challengeParams: string;
  /**
   * The proxy's own plain-text message, which gets the request id on a line of its own; not a
   * relayed body (an external authorizer's, a policy's) nor a page or document (JSON, HTML).
   */
  readonly text: boolean;

  /** A string body gets a final newline; a Buffer is sent exactly (a relayed body). */
  constructor(
    status: number,
    reason: string,
    body: string | Buffer,
    opts: {
      deny: boolean;
      headers?: Record<string, string | string[]>;
      bearerChallenge?: boolean;
      challengeParams?: string;
    },
  ) {
    this.status = status;
    this.reason = reason;
    this.deny = opts.deny;
    this.grpcStatus = grpcStatusFor(status);
    this.bearerChallenge = opts.bearerChallenge ?? false;
    this.challengeParams = opts.challengeParams ?? '';
    this.body =
      typeof body === 'string' ? Buffer.from(body === '' || body.endsWith('\n') ? body : `${body}\n`) : body;
    this.headers = {
      'content-type': 'text/plain; charset=utf-8',
      ...opts.headers,
      // Always the length of the body actually sent, whatever a relayed header said.
      'content-length': String(this.body.length),
    };
    this.text =
      typeof body === 'string' &&
      this.body.length > 0 &&
      String(this.headers['content-type']).startsWith('text/plain');
    const { connection: _c, 'keep-alive': _k, 'transfer-encoding': _t, ...h2 } = this.headers;
    this.h2Headers = h2;
  }

  /** A refusal whose status, body and headers come from elsewhere (an external authorizer, a Rego policy). */
  static refusal(
    status: number,
    reason: string,
    body: string | Buffer,
    headers: Record<string, string | string[]>,
  ): LocalReply {
    return new LocalReply(status, reason, body, { deny: true, headers });
  }
}

/**
 * The reply table. Bodies follow Envoy's wording where a mesh user would recognise it. Dynamic
 * refusals (CUSTOM authorizers, Rego objects) are made with LocalReply.refusal and are denies too.
 */
export const REPLIES = {
  badRequest: new LocalReply(400, 'bad-request', 'Bad Request', {
    deny: true,
    headers: { connection: 'close' },
  }),
  jwtInvalid: new LocalReply(401, 'jwt-invalid', 'Jwt verification fails', {
    deny: true,
    bearerChallenge: true,
  }),
  /**
   * RFC 8705 §3: a certificate-bound token on a connection without that certificate (or an
   * unbound token where binding is required) is an invalid token.
   */
  jwtUnbound: new LocalReply(401, 'jwt-unbound', 'Jwt verification fails', {
    deny: true,
    bearerChallenge: true,
    challengeParams:
      ', error="invalid_token", error_description="the token is not bound to the client certificate of this connection"',
  }),
  /** The same under a rule that accepts DPoP: the challenge names the DPoP scheme (RFC 9449 §7.1). */
  jwtUnboundDpop: new LocalReply(401, 'jwt-unbound', 'Jwt verification fails', {
    deny: true,
    headers: {
      'www-authenticate': `DPoP algs="${DPOP_ALGORITHMS.join(' ')}", error="invalid_token", error_description="the token is not bound to this client"`,
    },
  }),
  /** RFC 9449 §7.1: a missing, malformed, stale, replayed or mismatched DPoP proof. */
  dpopInvalid: new LocalReply(401, 'dpop-invalid', 'Jwt verification fails', {
    deny: true,
    headers: {
      'www-authenticate': `DPoP algs="${DPOP_ALGORITHMS.join(' ')}", error="invalid_dpop_proof", error_description="the DPoP proof is missing or not valid for this request"`,
    },
  }),
  jwtAudience: new LocalReply(403, 'jwt-audience', 'Audiences in Jwt are not allowed', { deny: true }),
  rbacDenied: new LocalReply(403, 'rbac-denied', 'RBAC: access denied', { deny: true }),
  regoDenied: new LocalReply(403, 'rego-denied', 'RBAC: access denied', { deny: true }),
  regoError: new LocalReply(403, 'rego-error', 'RBAC: access denied', { deny: true }),
  internal: new LocalReply(500, 'internal-error', 'internal error', { deny: true }),
  upstreamUnavailable: new LocalReply(
    503,
    'upstream-unavailable',
    'upstream connect error or disconnect/reset before headers. reset reason: connection failure',
    { deny: false },
  ),
  upstreamTimeout: new LocalReply(504, 'upstream-timeout', 'upstream request timeout', { deny: false }),
  upstreamError: new LocalReply(502, 'upstream-error', 'upstream protocol error', { deny: false }),
  /** An `Upgrade` other than WebSocket (h2c, …): the proxy opens no other kind of tunnel. */
  upgradeRefused: new LocalReply(400, 'upgrade-refused', 'Bad Request: only WebSocket upgrades are proxied', {
    deny: true,
  }),
  /** `OPTIONS *` asks about the server, not a resource: after authorization the proxy answers it. */
  optionsAsterisk: new LocalReply(200, 'options-asterisk', '', { deny: false }),
  // Requests Node's HTTP parser refuses before they become requests (answered with raw bytes by
  // the listener, from these entries).
  parserBadRequest: new LocalReply(400, 'bad-request', '', { deny: true }),
  requestTimeout: new LocalReply(408, 'request-timeout', '', { deny: true }),
  headerTooLarge: new LocalReply(431, 'header-too-large', '', { deny: true }),
  methodNotAllowed: new LocalReply(405, 'method-not-allowed', '', { deny: true }),
  // Login (OpenID Connect) on a listener.
  /** No session, and not a browser navigation (an API call, XHR): 401, never a redirect. */
  loginRequired: new LocalReply(401, 'login-required', 'Login required', { deny: true }),
  /** The callback came without a valid login transaction (expired, replayed, or never started here). */
  loginExpired: new LocalReply(
    400,
    'login-expired',
    'Bad Request: the login expired or was already used; start again',
    {
      deny: true,
    },
  ),
  /** The provider's answer did not check out (state, nonce, code, ID token). */
  loginFailed: new LocalReply(403, 'login-failed', 'Login failed', { deny: true }),
  /** The provider cannot be reached (discovery failed). */
  loginUnavailable: new LocalReply(503, 'login-unavailable', 'The login provider cannot be reached', {
    deny: true,
  }),
  /** A state-changing request with a session cookie from another site (CSRF). */
  csrfOrigin: new LocalReply(403, 'csrf-origin', 'Forbidden: cross-site request', { deny: true }),
  // The outbound listener (the app's calls out).
  /** REGISTRY_ONLY and a host no destination names (Istio answers such calls 502 from its BlackHole). */
  outboundUnregistered: new LocalReply(
    502,
    'destination-not-registered',
    'outbound: the destination is not registered (outbound.destinations) and the policy is REGISTRY_ONLY',
    { deny: true },
  ),
  /** Secure naming: the server proved an identity, but not one the destination may have. */
  serverIdentityMismatch: new LocalReply(
    503,
    'server-identity-mismatch',
    'upstream connect error or disconnect/reset before headers. reset reason: server identity mismatch',
    { deny: true },
  ),
  /** The server's certificate is not an X.509-SVID of a trusted domain (or TLS failed on it). */
  serverUntrusted: new LocalReply(
    503,
    'server-untrusted',
    'upstream connect error or disconnect/reset before headers. reset reason: server certificate not trusted',
    { deny: true },
  ),
  /** An https:// request target: the app is to send plain HTTP and leave TLS to the sidecar. */
  outboundTlsTarget: new LocalReply(
    400,
    'outbound-https-target',
    'Bad Request: send http:// to the outbound proxy; Portcullis calls the destination with mTLS',
    { deny: true, headers: { connection: 'close' } },
  ),
  /** An upgrade (WebSocket) at the outbound listener: not proxied outbound yet. */
  outboundUpgrade: new LocalReply(
    400,
    'upgrade-refused',
    'Bad Request: upgrades (WebSocket) are not proxied outbound',
    {
      deny: true,
    },
  ),
  /** CONNECT at the outbound listener: it forwards HTTP, it opens no tunnels. */
  outboundConnect: new LocalReply(
    405,
    'method-not-allowed',
    'CONNECT is not supported by the outbound proxy: send plain HTTP (http:// URLs, as HTTP_PROXY does); Portcullis adds mTLS',
    { deny: true, headers: { connection: 'close' } },
  ),
} as const;

/**
 * `challenge` is the WWW-Authenticate value for replies that carry one, else ''. `requestId`: the
 * request's id, sent as `x-request-id` and, for the proxy's own text bodies, on a line after the
 * usual text (the first line stays Envoy's, for clients that match it), so that a user can quote
 * it and an operator find the audit event. Nothing else of the decision reaches the client.
 */
export function sendLocalReply(res: ServerResponse, reply: LocalReply, challenge = '', requestId = ''): void {
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
  if (req.httpVersionMajor === 2 && isGrpc(req)) {
    sendGrpcReply(res, reply, requestId);
    return;
  }
  let body = reply.body;
  let headers = req.httpVersionMajor === 2 ? reply.h2Headers : reply.headers;
  if (requestId !== '') {
    if (reply.text) body = Buffer.concat([body, Buffer.from(`request id: ${requestId}\n`)]);
    headers = { ...headers, 'content-length': String(body.length), 'x-request-id': requestId };
  }
  if (req.httpVersionMajor === 2) {
    // An HTTP/2 stream ends on its own; the connection carries other streams.
    res.writeHead(reply.status, headers);
    res.end(body);
    return;
  }
  if (!req.complete && declaresBody(req)) res.setHeader('connection', 'close');
  res.writeHead(reply.status, headers);
  res.end(body);
}

/** A gRPC call (gRPC over HTTP/2: content-type application/grpc, +proto, +json, …). */
export function isGrpc(req: IncomingMessage): boolean {
  const ct = req.headers['content-type'];
  return typeof ct === 'string' && ct.startsWith('application/grpc');
}

/**
 * A local reply as a gRPC client understands it, as Envoy sends one: HTTP 200 and a trailers-only
 * response (one HEADERS frame that ends the stream) carrying grpc-status and grpc-message.
 */
function sendGrpcReply(res: ServerResponse, reply: LocalReply, requestId: string): void {
  const stream = (res as unknown as { stream: ServerHttp2Stream }).stream;
  if (stream.headersSent || stream.destroyed) {
    stream.close(NGHTTP2_INTERNAL_ERROR);
    return;
  }
  stream.respond(
    {
      ':status': 200,
      'content-type': 'application/grpc',
      'grpc-status': String(reply.grpcStatus),
      'grpc-message': grpcMessage(reply.body.toString('utf8').trim()),
      ...(requestId === '' ? {} : { 'x-request-id': requestId }),
    },
    { endStream: true },
  );
}

/** gRPC's grpc-message encoding: percent-encoded UTF-8 outside printable ASCII, and `%` itself. */
function grpcMessage(text: string): string {
  let out = '';
  for (const b of Buffer.from(text, 'utf8')) {
    out +=
      b >= 0x20 && b <= 0x7e && b !== 0x25
        ? String.fromCharCode(b)
        : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** The compat request of an HTTP/2 stream, as far as it matters here. */
interface H2Request {
  readonly stream?: { readonly endAfterHeaders?: boolean };
}

/** Whether the request says a body follows (Content-Length above 0, or Transfer-Encoding). */
export function declaresBody(req: IncomingMessage): boolean {
  // HTTP/2 frames a body in DATA frames, with or without content-length: there is one unless the
  // HEADERS frame ended the stream.
  if (req.httpVersionMajor === 2) return (req as H2Request).stream?.endAfterHeaders !== true;
  const h = req.headers;
  return (
    h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0')
  );
}
