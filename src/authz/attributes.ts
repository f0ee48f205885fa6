import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { normalizePath, type PathNormalization } from './normalize.js';
import { headerText } from './query.js';

/**
 * The attributes an authorization decision reads. authz/ declares them; `requestAttributes` below
 * builds them, once per request, from the connection and the request head, and the same plain
 * object feeds the stages, `portcullis check`, the reference evaluator, Rego's input and the
 * benchmarks. Strings are '' (not undefined) when absent so that every object has one hidden class.
 */
export interface RequestAttributes {
  /** Uppercase method, as received. */
  readonly method: string;
  /** The authority (Host header, or HTTP/2's :authority), lowercased, with any port. */
  readonly host: string;
  /** The path that is authorized and forwarded, without the query string. */
  readonly path: string;
  /** The query string without '?', or ''. */
  readonly query: string;
  readonly headers: IncomingHttpHeaders;
  /** The direct peer's address and port (the TCP connection's remote end). */
  readonly sourceAddress: string;
  readonly sourcePort: number;
  /**
   * The client's address as X-Forwarded-For tells it, trusting the configured number of proxy hops
   * (`remote.ip`, `remoteIpBlocks`); the direct peer's address when no hop is trusted.
   */
  readonly remoteAddress: string;
  /** The local address the connection arrived on (`destination.ip`). */
  readonly destinationAddress: string;
  /**
   * The workload port (`destination.port`, operation `ports`): the listener's workloadPort, which
   * defaults to the upstream's port — Istio's ports are the workload's, not the proxy's.
   */
  readonly destinationPort: number;
  /** TLS SNI, or '' for plaintext or no SNI. */
  readonly sni: string;
  /** The peer's SPIFFE ID without `spiffe://` (Istio's `source.principal`), or '' without mTLS. */
  readonly peerPrincipal: string;
  /** The namespace in the peer's SPIFFE ID path (`/ns/<ns>/…`), or ''. */
  readonly peerNamespace: string;
  /**
   * From a verified JWT (RequestAuthentication): `iss/sub` (Istio's `request.auth.principal` and
   * `requestPrincipals`), or '' when the request carried no token.
   */
  readonly requestPrincipal: string;
  /** The verified token's claims (`request.auth.claims[...]`), or null. */
  readonly claims: Readonly<Record<string, unknown>> | null;
  /** The token's `aud` as a list (`request.auth.audiences`); empty without a token. */
  readonly audiences: readonly string[];
  /** The token's `azp` (`request.auth.presenter`), or ''. */
  readonly presenter: string;
}

/**
 * What a request knows of the connection it came on: decided once per connection (the transport
 * builds it when the peer is verified) and shared by every request on it. `portcullis check` and
 * tests describe one without a socket.
 */
export interface ConnectionFacts {
  readonly sourceAddress: string;
  readonly sourcePort: number;
  readonly destinationAddress: string;
  readonly tls: boolean;
  readonly sni: string;
  /** The verified peer's SPIFFE ID (`spiffe://…`), or '' without one. */
  readonly peerId: string;
  readonly peerPrincipal: string;
  readonly peerNamespace: string;
}

/** A request head as any HTTP version delivers it. */
export interface RequestHead {
  readonly method: string;
  /** The request target as sent: origin form (`/path?query`) or `*`; other forms are refused later. */
  readonly target: string;
  /** Lowercase names; HTTP/2 pseudo-headers (`:authority`) included as Node gives them. */
  readonly headers: IncomingHttpHeaders;
  /** `1.1`, `1.0` or `2.0`. */
  readonly httpVersion: string;
}

/** How a listener turns heads into attributes; fixed per snapshot. */
export interface AttributeSettings {
  readonly workloadPort: number;
  readonly normalization: PathNormalization;
  /** Proxy hops in front whose X-Forwarded-For entries are believed (0: none). */
  readonly trustedProxies: number;
}

const NO_AUDIENCES: readonly string[] = Object.freeze([]);

/**
 * One request's attributes: plain data, every field set in the constructor. What the connection
 * and head tell is fixed here; the JWT stage adds the request principal and claims, and a stage
 * that removes a token parameter shortens `query`.
 */
export class Attributes implements RequestAttributes {
  readonly method: string;
  readonly host: string;
  readonly path: string;
  query: string;
  readonly headers: IncomingHttpHeaders;
  readonly sourceAddress: string;
  readonly sourcePort: number;
  readonly remoteAddress: string;
  readonly destinationAddress: string;
  readonly destinationPort: number;
  readonly sni: string;
  readonly tls: boolean;
  readonly peerId: string;
  readonly peerPrincipal: string;
  readonly peerNamespace: string;
  requestPrincipal: string;
  claims: Readonly<Record<string, unknown>> | null;
  audiences: readonly string[];
  presenter: string;
  /** The login provider (`login.providers[].name`) that signed the person in, or ''. */
  loginProvider: string;
  /** The client's valid x-request-id, or one made for this request (then forwarded). */
  readonly requestId: string;
  /** `HTTP/1.1`, `HTTP/2`, … (Envoy's protocol names). */
  readonly protocol: string;
  /** Arrival, epoch ms (the audit event's time, Rego's request.time). */
  readonly time: number;

  constructor(
    conn: ConnectionFacts,
    head: RequestHead,
    settings: AttributeSettings,
    time: number,
    host: string,
    path: string,
    query: string,
  ) {
    const headers = head.headers;
    this.method = head.method;
    this.host = host;
    this.path = path;
    this.query = query;
    this.headers = headers;
    this.sourceAddress = conn.sourceAddress;
    this.sourcePort = conn.sourcePort;
    this.remoteAddress =
      settings.trustedProxies > 0
        ? remoteAddress(headers['x-forwarded-for'], conn.sourceAddress, settings.trustedProxies)
        : conn.sourceAddress;
    this.destinationAddress = conn.destinationAddress;
    this.destinationPort = settings.workloadPort;
    this.sni = conn.sni;
    this.tls = conn.tls;
    this.peerId = conn.peerId;
    this.peerPrincipal = conn.peerPrincipal;
    this.peerNamespace = conn.peerNamespace;
    this.requestPrincipal = '';
    this.claims = null;
    this.audiences = NO_AUDIENCES;
    this.presenter = '';
    this.loginProvider = '';
    const rid = headers['x-request-id'];
    // Envoy's behaviour: a request without a (usable) id gets one, and the upstream sees it.
    this.requestId = typeof rid === 'string' && isRequestId(rid) ? rid : randomUUID();
    this.protocol = head.httpVersion === '2.0' ? 'HTTP/2' : `HTTP/${head.httpVersion}`;
    this.time = time;
  }

  /** Whether the request id was made here (and must be added to the forwarded request). */
  get requestIdMade(): boolean {
    return this.headers['x-request-id'] !== this.requestId;
  }
}

/**
 * The attributes of a request: built once, from the connection and the head, before any stage
 * runs — so the original client address and the request id mean the same whatever the policies.
 * The path is normalized as configured; a target that is not origin form keeps its raw text here
 * (the request-line stage refuses it before anything reads it).
 */
export function requestAttributes(
  conn: ConnectionFacts,
  head: RequestHead,
  settings: AttributeSettings,
  time: number,
): Attributes {
  const headers = head.headers;
  const authority = headers[':authority'];
  const h = typeof authority === 'string' ? authority : headers.host;
  const target = head.target;
  let path = target;
  let query = '';
  if (target.charCodeAt(0) === 47 /* / */) {
    const q = target.indexOf('?');
    path = normalizePath(q === -1 ? target : target.slice(0, q), settings.normalization);
    if (q !== -1) query = target.slice(q + 1);
  }
  return new Attributes(conn, head, settings, time, h === undefined ? '' : h.toLowerCase(), path, query);
}

/** 1–128 characters of [A-Za-z0-9._:-]: enough for UUIDs and trace ids, nothing that could forge a log line. */
export function isRequestId(id: string): boolean {
  if (id.length === 0 || id.length > 128) return false;
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i);
    const ok =
      (c >= 48 && c <= 58) ||
      (c >= 65 && c <= 90) ||
      (c >= 97 && c <= 122) ||
      c === 45 ||
      c === 46 ||
      c === 95;
    if (!ok) return false;
  }
  return true;
}

/**
 * The client address after `trusted` proxy hops: the addresses are X-Forwarded-For's entries
 * followed by the direct peer; counting from the right, the peer and the next `trusted - 1`
 * entries are proxies we trust, and the one before them is the client. Missing entries mean the
 * leftmost one (a client cannot push the choice past what it sent).
 */
export function remoteAddress(xff: string | string[] | undefined, peer: string, trusted: number): string {
  if (xff === undefined || trusted === 0) return peer;
  const joined = headerText(xff) as string;
  const entries = joined.split(',');
  const index = entries.length - trusted;
  const pick = entries[Math.max(index, 0)] ?? '';
  const addr = pick.trim();
  return addr === '' ? peer : addr;
}
