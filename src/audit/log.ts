import type { Logger } from 'pino';
import type { RequestAttributes } from '../authz/attributes.js';
import type { DecisionOut, TokenReads } from '../authz/compile.js';
import { headerText, redactQuery } from '../authz/query.js';
import type { AuditConfig, AuditDecisions, SinkConfig } from '../config/types.js';
import { isMap } from '../istio/validate.js';
import { FileSink, HttpSink, PrimarySink, type Sink, StdoutSink } from './sinks.js';

export type { AuditConfig, AuditDecisions, SinkConfig };

/**
 * The audit event schema, version 1: one JSON object per decision, one per line (NDJSON).
 * Field by field in README.md ("Audit events"). Never in an event: tokens, keys, header values
 * other than the ones configured in `audit.headers` (which may not name credentials).
 */
export const AUDIT_SCHEMA_VERSION = 1;

/** The attributes an event records: the decision's, plus what identifies the request. */
export interface AuditedAttributes extends RequestAttributes {
  readonly requestId: string;
  /** The login provider that signed the person in, or ''. */
  readonly loginProvider: string;
  /** Arrival, epoch ms. */
  readonly time: number;
  readonly tls: boolean;
}

/**
 * What an event is built from: the attributes and the decision (plain data), and the outcome. The
 * proxy's request stream provides it (published on `portcullis:request:finished`); audit/ names
 * only the fields it reads, so it does not depend on the proxy.
 */
export interface AuditedRequest {
  readonly attrs: AuditedAttributes;
  readonly decision: DecisionOut;
  /** performance.now() at arrival. */
  readonly startTime: number;
  /** The local reply sent, if any (its gRPC status is recorded for gRPC calls). */
  readonly reply: { readonly grpcStatus: number } | null;
  readonly upstreamStart: number;
  readonly upstreamEnd: number;
  readonly upstreamStatus: number;
  readonly authzMs: number;
  /** The status the client got. */
  readonly status: number;
  /** The whole response was written. */
  readonly completed: boolean;
  /** Outbound: the destination and the SPIFFE ID its server presented; null inbound. */
  readonly route: { readonly host: string; readonly upstream: string; readonly presented: string } | null;
}

function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

export class AuditLog {
  readonly config: AuditConfig;
  readonly sinks: readonly Sink[];

  /** `toPrimary`: a cluster worker, whose events go to the primary process (which writes them). */
  constructor(config: AuditConfig, log: Logger, toPrimary = false) {
    this.config = config;
    if (toPrimary) {
      this.sinks = [new PrimarySink('primary', config.bufferSize, 1000, 5_000, config.flushIntervalMs, log)];
      return;
    }
    this.sinks = config.sinks.map((s, i) => {
      const name = `${s.type}-${i}`;
      const linger = config.flushIntervalMs;
      if (s.type === 'stdout') return new StdoutSink(name, config.bufferSize, 1000, 5_000, linger, log);
      if (s.type === 'file')
        return new FileSink(name, s.path, s.maxBytes, s.keep, config.bufferSize, linger, log);
      return new HttpSink(name, s, config.bufferSize, linger, log);
    });
  }

  /** Each sink's counters, as /status shows them. */
  status(): { sink: string; written: number; dropped: number; buffered: number; failures: number }[] {
    return this.sinks.map((k) => ({
      sink: k.name,
      written: k.written,
      dropped: k.dropped,
      buffered: k.buffered,
      failures: k.failures,
    }));
  }

  /**
   * Called once a response is finished (or the client went away), with the decision (`deny`) and
   * reason the proxy read from its reply table. Appends; never waits.
   */
  recordRequest(
    r: AuditedRequest,
    listener: string,
    direction: 'inbound' | 'outbound',
    authorized: boolean,
    deny: boolean,
    reason: string,
    tokenParams: ReadonlySet<string>,
    reads: TokenReads,
  ): void {
    const c = this.config;
    if (c.decisions === 'deny' && !deny) return;
    const a = r.attrs;
    const d = r.decision;
    if (c.decisions === 'audit' && d.auditPolicy === null) return;
    if (c.decisions === 'all' && !deny && c.sampleAllows < 1 && Math.random() >= c.sampleAllows) return;
    const now = performance.now();
    // Every configured header is written, null when absent, so replay knows it was absent.
    let headers: Record<string, string | null> | undefined;
    if (c.headers.length > 0) {
      headers = {};
      for (const h of c.headers) {
        const v = a.headers[h];
        headers[h] = v === undefined ? null : (headerText(v) as string);
      }
    }
    const token = a.claims !== null;
    const event = {
      version: AUDIT_SCHEMA_VERSION,
      time: new Date(a.time).toISOString(),
      requestId: a.requestId,
      listener,
      direction,
      decision: deny ? 'deny' : 'allow',
      status: r.status,
      grpcStatus: isGrpcCall(a.headers['content-type']) ? (r.reply?.grpcStatus ?? null) : undefined,
      reason,
      policy: d.policy?.id ?? null,
      rule: d.policy === null ? null : d.ruleIndex,
      audit: d.auditPolicy?.id ?? null,
      dryRun: authorized
        ? {
            deny: d.shadowDenyPolicy?.id ?? null,
            allowPoliciesAllow: d.shadowAllowed,
            allowPolicy: d.shadowAllowPolicy?.id ?? null,
          }
        : null,
      source: { principal: a.peerPrincipal, address: a.sourceAddress, port: a.sourcePort },
      remoteAddress: a.remoteAddress,
      destinationAddress: a.destinationAddress,
      destinationPort: a.destinationPort,
      tls: a.tls,
      sni: a.tls ? a.sni : undefined,
      request: {
        method: a.method,
        host: a.host,
        path: a.path,
        query: c.includeQuery && a.query !== '' ? redactQuery(a.query, tokenParams) : undefined,
        principal: a.requestPrincipal,
        provider: a.loginProvider === '' ? undefined : a.loginProvider,
        headers,
        // What the policies read of the token (never the token): for replay.
        claims: token && reads.claimPaths.length > 0 ? recordedClaims(a.claims, reads.claimPaths) : undefined,
        audiences: token && reads.audiences ? a.audiences : undefined,
        presenter: token && reads.presenter ? a.presenter : undefined,
      },
      destination:
        r.route === null
          ? undefined
          : { host: r.route.host, upstream: r.route.upstream, principal: r.route.presented },
      upstream:
        r.upstreamStart === 0
          ? null
          : {
              status: r.upstreamStatus,
              durationMs: round((r.upstreamEnd || now) - r.upstreamStart, 3),
            },
      authzMicros: round(r.authzMs * 1000, 1),
      durationMs: round(now - r.startTime, 3),
      completed: r.completed,
    };
    this.offer(JSON.stringify(event));
  }

  /** A connection refused before any request (a peer that is not a trusted X.509-SVID). */
  recordConnection(listener: string, reason: string, detail: string, address: string, port: number): void {
    this.recordWithoutRequest(
      listener,
      null,
      'peer-untrusted',
      `${reason}: ${detail}`,
      '',
      address,
      port,
      true,
    );
  }

  /**
   * A request the HTTP parser refused before it became a request (malformed, a head too large, a
   * head too slow, CONNECT): no method, path or id exist, only who sent it and what was answered.
   */
  recordClientError(
    listener: string,
    status: number,
    reason: string,
    principal: string,
    address: string,
    port: number,
    tls: boolean,
  ): void {
    this.recordWithoutRequest(listener, status, reason, undefined, principal, address, port, tls);
  }

  /**
   * The end of a WebSocket tunnel whose decision was recorded when it opened (same requestId):
   * its duration and the bytes it carried each way (as counted on the client connection).
   */
  recordTunnelClosed(
    listener: string,
    requestId: string,
    durationMs: number,
    bytesFromClient: number,
    bytesToClient: number,
  ): void {
    if (this.config.decisions !== 'all') return;
    this.offer(
      JSON.stringify({
        version: AUDIT_SCHEMA_VERSION,
        time: new Date().toISOString(),
        event: 'tunnel-closed',
        requestId,
        listener,
        durationMs: round(durationMs, 3),
        bytesFromClient,
        bytesToClient,
      }),
    );
  }

  /** A deny event with no request behind it (`requestId: null`). */
  private recordWithoutRequest(
    listener: string,
    status: number | null,
    reason: string,
    detail: string | undefined,
    principal: string,
    address: string,
    port: number,
    tls: boolean,
  ): void {
    if (this.config.decisions === 'audit') return;
    this.offer(
      JSON.stringify({
        version: AUDIT_SCHEMA_VERSION,
        time: new Date().toISOString(),
        requestId: null,
        listener,
        decision: 'deny',
        status,
        reason,
        detail,
        source: { principal, address, port },
        tls,
      }),
    );
  }

  private offer(line: string): void {
    for (let i = 0; i < this.sinks.length; i++) (this.sinks[i] as Sink).offer(line);
  }

  flush(timeoutMs: number): Promise<unknown> {
    return Promise.all(this.sinks.map((s) => s.flush(timeoutMs)));
  }

  close(timeoutMs: number): Promise<unknown> {
    return Promise.all(this.sinks.map((s) => s.close(timeoutMs)));
  }
}

function isGrpcCall(contentType: string | undefined): boolean {
  return contentType?.startsWith('application/grpc') === true;
}

/**
 * The claims at the paths policies read, and nothing else: a nested object along each path whose
 * leaves are the claim's value (an object leaf is kept as `{}`: policies match only strings and
 * lists), `null` where the claim is absent. Replay tells "absent" (null) from "not recorded"
 * (no key).
 */
export function recordedClaims(
  claims: Readonly<Record<string, unknown>>,
  paths: readonly (readonly string[])[],
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const path of paths) {
    let src: unknown = claims;
    let dst = out;
    for (let i = 0; i < path.length; i++) {
      const k = path[i] as string;
      const v = isMap(src) ? src[k] : undefined;
      const last = i === path.length - 1;
      if (isMap(v)) {
        if (!isMap(dst[k])) dst[k] = {};
        if (last) break;
        dst = dst[k] as Record<string, unknown>;
        src = v;
        continue;
      }
      // A value (or absence) where the path goes on: deeper keys have no value either.
      if (!(k in dst)) dst[k] = v === undefined ? null : v;
      break;
    }
  }
  return out;
}
