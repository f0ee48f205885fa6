import type { Metrics } from '../admin/metrics.js';
import type { AuditLog } from '../audit/log.js';
import type { RequestContext } from './context.js';

/**
 * What happens when a response is done: the metrics count it and the audit log gets its event.
 * Both only update memory (counters, a bounded buffer); no request waits on them.
 */
export class RequestObserver {
  readonly metrics: Metrics;
  readonly audit: AuditLog | null;

  constructor(metrics: Metrics, audit: AuditLog | null) {
    this.metrics = metrics;
    this.audit = audit;
  }

  finished(ctx: RequestContext, listener: string, authorized: boolean): void {
    const reply = ctx.reply;
    const deny = reply?.deny === true;
    const reason = reasonOf(ctx, authorized);
    const upstream =
      ctx.upstreamStart === 0 ? -1 : ((ctx.upstreamEnd || performance.now()) - ctx.upstreamStart) / 1000;
    this.metrics.request(
      listener,
      deny ? 'deny' : 'allow',
      reason,
      ctx.res.statusCode,
      authorized ? ctx.authzMs * 1000 : 0,
      upstream,
    );
    this.audit?.recordRequest(ctx, listener, authorized, deny, reason, ctx.plan.tokenParams);
  }

  /** A request the HTTP parser refused (see listener.ts onClientError): always a deny. */
  clientError(
    listener: string,
    status: number,
    reason: string,
    principal: string,
    address: string,
    port: number,
    tls: boolean,
  ): void {
    this.metrics.request(listener, 'deny', reason, status, 0, -1);
    this.audit?.recordClientError(listener, status, reason, principal, address, port, tls);
  }

  /** A WebSocket tunnel closed: how long it lasted and what it carried. */
  tunnelClosed(
    listener: string,
    requestId: string,
    durationMs: number,
    bytesIn: number,
    bytesOut: number,
  ): void {
    this.audit?.recordTunnelClosed(listener, requestId, durationMs, bytesIn, bytesOut);
  }

  peerRefused(listener: string, reason: string, detail: string, address: string, port: number): void {
    this.audit?.recordConnection(listener, reason, detail, address, port);
  }
}

/** The reason recorded: why it was refused (the reply table's reason), or on what grounds it was let through. */
function reasonOf(ctx: RequestContext, authorized: boolean): string {
  const reply = ctx.reply;
  if (reply !== null && reply.reason === 'rbac-denied')
    return ctx.reason === 'denied-by-policy' ? 'policy' : 'no-matching-allow';
  if (reply !== null) return reply.reason;
  if (!authorized) return 'no-policies';
  return ctx.reason === 'allowed-by-policy' ? 'policy' : ctx.reason;
}
