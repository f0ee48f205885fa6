import type { Logger } from 'pino';
import type { Attributes } from '../../authz/attributes.js';
import { headerText, parseQuery } from '../../authz/query.js';
import type { RegoEngine } from '../../authz/rego/engine.js';
import type { RequestContext } from '../context.js';
import { LocalReply, REPLIES } from '../local-reply.js';
import type { Stage, StageResult } from '../plan.js';

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

/**
 * Rego (OPA compiled to WebAssembly) after the Istio policies: when both are configured, a request
 * must pass the AuthorizationPolicies first, then the Rego decision must allow it too.
 */
export class RegoStage implements Stage {
  readonly name = 'rego';
  private readonly engine: RegoEngine;
  private readonly ourId: string;
  private readonly log: Logger;

  constructor(engine: RegoEngine, ourId: string, log: Logger) {
    this.engine = engine;
    this.ourId = ourId;
    this.log = log;
  }

  run(ctx: RequestContext): StageResult {
    let d: ReturnType<RegoEngine['evaluate']>;
    try {
      d = this.engine.evaluate(envoyInput(ctx.attrs, this.engine.headers, this.ourId));
    } catch (err) {
      // An abort or a trap in the policy: deny, and say why in the log (the audit reason is rego-error).
      this.log.warn(
        { entrypoint: this.engine.entrypoint, err: err instanceof Error ? err.message : String(err) },
        'Rego evaluation failed; denying',
      );
      return REPLIES.regoError;
    }
    if (d.allowed) {
      for (const [n, v] of d.upstreamHeaders) ctx.addHeader(n, v);
      for (const [n, v] of d.responseHeaders) ctx.addResponseHeader(n, v);
      return null;
    }
    if (d.status === 403 && d.body === '' && d.responseHeaders.length === 0) return REPLIES.regoDenied;
    const headers: Record<string, string[]> = {};
    for (const [n, v] of d.responseHeaders) (headers[n] ??= []).push(v);
    // A body the policy chose is sent exactly as given.
    return LocalReply.refusal(
      d.status,
      'rego-denied',
      d.body === '' ? 'RBAC: access denied' : Buffer.from(d.body),
      headers,
    );
  }
}
