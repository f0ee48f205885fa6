import diagnostics_channel from 'node:diagnostics_channel';
import type { DecisionRing } from '../admin/decisions.js';
import type { Metrics } from '../admin/metrics.js';
import type { AuditLog } from '../audit/log.js';
import type { RequestStream } from './stream.js';

/**
 * What the proxy tells the world, as undici and fastify do: named diagnostics channels, published
 * only when someone subscribes (`hasSubscribers`). Metrics and audit are subscribers like any other
 * (an OpenTelemetry exporter could be one too); the request path never calls them.
 *
 * - `portcullis:request:finished` — a response is done (sent, or the client went away). The message
 *   is the request's stream: its attributes and decision (plain data: `attrs`, `decision`), the
 *   outcome (`deny`, `decisionReason`, `reply`, `status`) and timings.
 * - `portcullis:request:refused` — a request the HTTP parser refused before it became one.
 * - `portcullis:peer:refused` — a connection refused at TLS, by the SPIFFE checks or the handshake deadline.
 * - `portcullis:tunnel:closed` — a WebSocket tunnel closed.
 * Every message carries the publishing proxy (`plan.observer` or `source`), since channels are
 * process-wide and one process may run several proxies.
 */
export const channels = {
  requestFinished: diagnostics_channel.channel('portcullis:request:finished'),
  requestRefused: diagnostics_channel.channel('portcullis:request:refused'),
  peerRefused: diagnostics_channel.channel('portcullis:peer:refused'),
  tunnelClosed: diagnostics_channel.channel('portcullis:tunnel:closed'),
};

export interface RequestRefused {
  readonly source: RequestObserver;
  readonly listener: string;
  readonly status: number;
  readonly reason: string;
  readonly principal: string;
  readonly address: string;
  readonly port: number;
  readonly tls: boolean;
}

export interface PeerRefused {
  readonly source: RequestObserver;
  readonly listener: string;
  readonly reason: string;
  readonly detail: string;
  readonly address: string;
  readonly port: number;
}

export interface TunnelClosed {
  readonly source: RequestObserver;
  readonly listener: string;
  readonly requestId: string;
  readonly durationMs: number;
  readonly bytesFromClient: number;
  readonly bytesToClient: number;
}

/** The publishing side: one per proxy; the stages and listeners call it, it publishes. */
export class RequestObserver {
  finished(rs: RequestStream): void {
    if (rs.published) return;
    rs.published = true;
    const reply = rs.reply;
    rs.deny = reply?.deny === true;
    rs.decisionReason = reasonOf(rs, rs.plan.authorized);
    if (channels.requestFinished.hasSubscribers) channels.requestFinished.publish(rs);
  }

  /** A request the HTTP parser refused (see listener.ts): always a deny. */
  clientError(
    listener: string,
    status: number,
    reason: string,
    principal: string,
    address: string,
    port: number,
    tls: boolean,
  ): void {
    if (!channels.requestRefused.hasSubscribers) return;
    const m: RequestRefused = { source: this, listener, status, reason, principal, address, port, tls };
    channels.requestRefused.publish(m);
  }

  tunnelClosed(
    listener: string,
    requestId: string,
    durationMs: number,
    bytesFromClient: number,
    bytesToClient: number,
  ): void {
    if (!channels.tunnelClosed.hasSubscribers) return;
    const m: TunnelClosed = { source: this, listener, requestId, durationMs, bytesFromClient, bytesToClient };
    channels.tunnelClosed.publish(m);
  }

  peerRefused(listener: string, reason: string, detail: string, address: string, port: number): void {
    if (!channels.peerRefused.hasSubscribers) return;
    const m: PeerRefused = { source: this, listener, reason, detail, address, port };
    channels.peerRefused.publish(m);
  }
}

/** The reason recorded: why it was refused (the reply table's reason), or on what grounds it was let through. */
function reasonOf(rs: RequestStream, authorized: boolean): string {
  const reply = rs.reply;
  const reason = rs.decision.reason;
  if (reply !== null && reply.reason === 'rbac-denied')
    return reason === 'denied-by-policy' ? 'policy' : 'no-matching-allow';
  if (reply !== null) return reply.reason;
  if (!authorized) return 'no-policies';
  return reason === 'allowed-by-policy' ? 'policy' : reason;
}

/**
 * Metrics, audit and the recent-decisions ring as subscribers of one proxy's events: counters,
 * bounded buffers and a fixed ring, so no request waits on them. `close()` unsubscribes.
 */
export class ObservabilitySubscriber {
  private readonly source: RequestObserver;
  private readonly metrics: Metrics;
  private readonly audit: AuditLog | null;
  private readonly decisions: DecisionRing | null;
  private readonly onFinished: (m: unknown) => void;
  private readonly onRefused: (m: unknown) => void;
  private readonly onPeer: (m: unknown) => void;
  private readonly onTunnel: (m: unknown) => void;

  constructor(
    source: RequestObserver,
    metrics: Metrics,
    audit: AuditLog | null,
    decisions: DecisionRing | null = null,
  ) {
    this.source = source;
    this.metrics = metrics;
    this.audit = audit;
    this.decisions = decisions;
    // Bound once per proxy (not per request), so that unsubscribe finds the same functions.
    this.onFinished = (m) => this.finished(m as RequestStream);
    this.onRefused = (m) => this.refused(m as RequestRefused);
    this.onPeer = (m) => this.peer(m as PeerRefused);
    this.onTunnel = (m) => this.tunnel(m as TunnelClosed);
    channels.requestFinished.subscribe(this.onFinished);
    channels.requestRefused.subscribe(this.onRefused);
    channels.peerRefused.subscribe(this.onPeer);
    channels.tunnelClosed.subscribe(this.onTunnel);
  }

  private finished(rs: RequestStream): void {
    const plan = rs.plan;
    if (plan.observer !== this.source) return;
    const listener = plan.listenerName;
    const authorized = plan.authorized;
    const upstream =
      rs.upstreamStart === 0 ? -1 : ((rs.upstreamEnd || performance.now()) - rs.upstreamStart) / 1000;
    this.metrics.request(
      listener,
      rs.deny ? 'deny' : 'allow',
      rs.decisionReason,
      rs.status,
      authorized ? rs.authzMs * 1000 : 0,
      upstream,
    );
    this.audit?.recordRequest(
      rs,
      listener,
      plan.direction,
      authorized,
      rs.deny,
      rs.decisionReason,
      plan.tokenParams,
      plan.explain.authorizer.tokenReads,
    );
    this.decisions?.record(rs);
  }

  private refused(m: RequestRefused): void {
    if (m.source !== this.source) return;
    this.metrics.request(m.listener, 'deny', m.reason, m.status, 0, -1);
    this.audit?.recordClientError(m.listener, m.status, m.reason, m.principal, m.address, m.port, m.tls);
  }

  private peer(m: PeerRefused): void {
    if (m.source !== this.source) return;
    this.audit?.recordConnection(m.listener, m.reason, m.detail, m.address, m.port);
  }

  private tunnel(m: TunnelClosed): void {
    if (m.source !== this.source) return;
    this.audit?.recordTunnelClosed(m.listener, m.requestId, m.durationMs, m.bytesFromClient, m.bytesToClient);
  }

  close(): void {
    channels.requestFinished.unsubscribe(this.onFinished);
    channels.requestRefused.unsubscribe(this.onRefused);
    channels.peerRefused.unsubscribe(this.onPeer);
    channels.tunnelClosed.unsubscribe(this.onTunnel);
  }
}
