import type { Attributes } from '../attributes.js';
import { headerText, parseQuery } from '../query.js';

/** Where the verified token's claims appear, as Envoy's jwt_authn filter metadata does with payload_in_metadata. */
export const JWT_METADATA_KEY = 'envoy.filters.http.jwt_authn';

function socketAddress(
  address: string,
  port: number,
): { socketAddress: { address: string; portValue: number } } {
  return { socketAddress: { address, portValue: port } };
}

function parsedQuery(query: string): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const p of parseQuery(query)) (out[p.name] ??= []).push(p.value);
  return out;
}

/**
 * The input document in the OPA-Envoy plugin's shape (ext_authz v3 CheckRequest as protojson), so
 * that policies written for Envoy + OPA run unchanged: `input.attributes.source.principal` is the
 * peer's SPIFFE ID with its scheme, header names are lowercase (with Envoy's `:authority`, `:method`
 * and `:path` pseudo-headers), `input.parsed_path` and
 * `input.parsed_query` are filled. The verified JWT's claims are under
 * `input.attributes.metadataContext.filterMetadata["envoy.filters.http.jwt_authn"].payload`.
 * Only the headers the config lists are included (all by default). Bodies are not included.
 */
export function envoyInput(a: Attributes, headerNames: readonly string[] | null, ourId: string): unknown {
  const headers: Record<string, string> = {};
  if (headerNames === null) {
    for (const [k, v] of Object.entries(a.headers)) if (v !== undefined) headers[k] = headerText(v) as string;
  } else {
    for (const k of headerNames) {
      const v = a.headers[k];
      if (v !== undefined) headers[k] = headerText(v) as string;
    }
  }
  const path = a.query === '' ? a.path : `${a.path}?${a.query}`;
  // Envoy passes HTTP/2-style pseudo-headers too; policies written for it may read them.
  headers[':authority'] = a.host;
  headers[':method'] = a.method;
  headers[':path'] = path;
  return {
    attributes: {
      source: {
        address: socketAddress(a.sourceAddress, a.sourcePort),
        principal: a.peerId,
      },
      destination: { address: socketAddress(a.destinationAddress, a.destinationPort), principal: ourId },
      request: {
        time: new Date(a.time).toISOString(),
        http: {
          id: a.requestId,
          method: a.method,
          headers,
          path,
          host: a.host,
          scheme: a.tls ? 'https' : 'http',
          protocol: a.protocol,
        },
      },
      metadataContext:
        a.claims === null ? {} : { filterMetadata: { [JWT_METADATA_KEY]: { payload: a.claims } } },
    },
    parsed_path: a.path.split('/').filter((s) => s !== ''),
    parsed_query: parsedQuery(a.query),
    parsed_body: null,
    truncated_body: false,
    version: { encoding: 'protojson', ext_authz: 'v3' },
  };
}
