import { type ConnectionFacts, type RequestHead, requestAttributes } from '../../src/authz/attributes.js';
import type { PathNormalization } from '../../src/authz/normalize.js';
import { RequestContext } from '../../src/proxy/context.js';

/** A plaintext connection from 127.0.0.1 (what a described request arrives on by default). */
export const PLAIN: ConnectionFacts = {
  sourceAddress: '127.0.0.1',
  sourcePort: 40000,
  destinationAddress: '127.0.0.1',
  tls: false,
  sni: '',
  peerId: '',
  peerPrincipal: '',
  peerNamespace: '',
};

/** An mTLS connection from the given SPIFFE ID. */
export function mtlsFrom(spiffeId: string, sourceAddress = '127.0.0.1'): ConnectionFacts {
  const principal = spiffeId.slice('spiffe://'.length);
  const ns = /\/ns\/([^/]+)/.exec(principal)?.[1] ?? '';
  return {
    ...PLAIN,
    sourceAddress,
    tls: true,
    peerId: spiffeId,
    peerPrincipal: principal,
    peerNamespace: ns,
  };
}

export interface Described {
  readonly method?: string;
  readonly target: string;
  /** Header fields in order, names as sent. */
  readonly headers?: readonly (readonly [string, string])[];
  readonly httpVersion?: string;
  readonly conn?: ConnectionFacts;
  readonly workloadPort?: number;
  readonly normalization?: PathNormalization;
  readonly trustedProxies?: number;
  readonly xfcc?: string;
  /** The client certificate's RFC 8705 thumbprint, for certificate-bound tokens. */
  readonly certThumbprint?: string;
}

/**
 * A request context for a described request, made the way the proxy makes one (requestAttributes,
 * then the context the stages run on) but with no socket, request or response.
 */
export function describedRequest(d: Described): RequestContext {
  const raw: string[] = [];
  const headers: Record<string, string> = {};
  for (const [name, value] of d.headers ?? [['Host', 'api.example']]) {
    raw.push(name, value);
    const lower = name.toLowerCase();
    headers[lower] = headers[lower] === undefined ? value : `${headers[lower]}, ${value}`;
  }
  const head: RequestHead = {
    method: d.method ?? 'GET',
    target: d.target,
    headers,
    httpVersion: d.httpVersion ?? '1.1',
  };
  const attrs = requestAttributes(
    d.conn ?? PLAIN,
    head,
    {
      workloadPort: d.workloadPort ?? 8080,
      normalization: d.normalization ?? 'BASE',
      trustedProxies: d.trustedProxies ?? 0,
    },
    Date.now(),
  );
  return new RequestContext(
    attrs,
    d.target,
    raw,
    head.httpVersion === '2.0',
    d.xfcc ?? '',
    d.certThumbprint ?? '',
  );
}
