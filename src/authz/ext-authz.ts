import type { IncomingHttpHeaders } from 'node:http';
import type { ExtAuthzProvider } from '../config/types.js';
import { Pool } from '../http-client.js';

export type { ExtAuthzProvider };

/**
 * CUSTOM authorization: an external authorizer reached over Envoy ext_authz's HTTP protocol, the
 * way Istio's `envoyExtAuthzHttp` extension providers are. The authorizer receives a request with
 * the original method, `pathPrefix` + the original path and query, the original Host, the
 * `authorization` header and the headers the provider lists, and no body. A 2xx answer allows;
 * any other status denies, and the client gets that status and body. A failure to get an answer
 * (refused, timeout, reset) denies with `statusOnError` — unless the provider is `failOpen`.
 */

export interface ExtAuthzRequest {
  readonly method: string;
  readonly host: string;
  /** Path (normalized) and query, as forwarded. */
  readonly target: string;
  readonly headers: IncomingHttpHeaders;
  /** The proxy's XFCC element for an mTLS peer, or '' (so the authorizer knows the caller). */
  readonly xfcc: string;
}

export interface ExtAuthzResult {
  readonly allowed: boolean;
  /** The authorizer's status on a deny (or statusOnError after a failure). */
  readonly status: number;
  readonly body: string;
  readonly upstreamHeaders: readonly (readonly [string, string])[];
  readonly downstreamHeaders: readonly (readonly [string, string])[];
  /** Why no answer was had, or null. */
  readonly error: string | null;
}

/** Largest deny body relayed to the client; an authorizer is trusted, but not without bounds. */
const MAX_BODY = 64 * 1024;

function pick(headers: IncomingHttpHeaders, names: readonly string[]): [string, string][] {
  const out: [string, string][] = [];
  for (const n of names) {
    const v = headers[n];
    if (v === undefined) continue;
    if (Array.isArray(v)) for (const x of v) out.push([n, x]);
    else out.push([n, v]);
  }
  return out;
}

export class ExtAuthzClient {
  readonly provider: ExtAuthzProvider;
  private readonly pool: Pool;
  calls = 0;
  failures = 0;

  constructor(provider: ExtAuthzProvider) {
    this.provider = provider;
    this.pool = new Pool(provider.origin, {
      connections: 64,
      connect: { timeout: provider.timeoutMs },
      headersTimeout: provider.timeoutMs,
      bodyTimeout: provider.timeoutMs,
      keepAliveTimeout: 4_000,
    });
  }

  async check(req: ExtAuthzRequest): Promise<ExtAuthzResult> {
    const p = this.provider;
    this.calls++;
    const headers: string[] = ['host', req.host];
    const auth = req.headers.authorization;
    if (auth !== undefined) headers.push('authorization', auth);
    for (const [n, v] of pick(req.headers, p.includeRequestHeaders)) {
      if (n !== 'authorization' && n !== 'host') headers.push(n, v);
    }
    for (const [n, v] of p.additionalHeaders) headers.push(n, v);
    if (req.xfcc !== '') headers.push('x-forwarded-client-cert', req.xfcc);
    try {
      const res = await this.pool.request({
        method: req.method as 'GET',
        path: p.pathPrefix + req.target,
        headers,
        signal: AbortSignal.timeout(p.timeoutMs),
      });
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of res.body) {
        size += (chunk as Buffer).length;
        if (size <= MAX_BODY) chunks.push(chunk as Buffer);
      }
      const allowed = res.statusCode >= 200 && res.statusCode < 300;
      const h = res.headers as IncomingHttpHeaders;
      return {
        allowed,
        status: res.statusCode,
        body: allowed ? '' : Buffer.concat(chunks).toString('utf8'),
        upstreamHeaders: allowed ? pick(h, p.headersToUpstreamOnAllow) : [],
        downstreamHeaders: pick(h, allowed ? p.headersToDownstreamOnAllow : p.headersToDownstreamOnDeny),
        error: null,
      };
    } catch (err) {
      this.failures++;
      const e = err as Error & { code?: string };
      return {
        allowed: p.failOpen,
        status: p.statusOnError,
        body: '',
        upstreamHeaders: [],
        downstreamHeaders: [],
        error: e.code ?? e.name ?? 'error',
      };
    }
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
