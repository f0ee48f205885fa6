import type { IncomingHttpHeaders } from 'node:http';

/**
 * The attributes an authorization decision reads. authz/ declares them; proxy/ fills one
 * fixed-shape object per request (RequestContext), and `portcullis check`, the reference evaluator
 * and the benchmarks fill the same shape. Strings are '' (not undefined) when absent so that every
 * request object has one hidden class.
 */
export interface RequestAttributes {
  /** Uppercase method, as received. */
  readonly method: string;
  /** The authority (Host header), lowercased, with any port. */
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
