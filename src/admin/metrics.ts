import type { SinkCounters } from '../audit/sinks.js';
import { Counter, Gauge, Histogram, Registry } from './prom.js';

/** What the metrics read at scrape time (counters kept elsewhere are copied in then). */
export interface MetricsSources {
  listeners(): readonly {
    name: string;
    stats: {
      connections: number;
      tlsFailures: ReadonlyMap<string, number>;
      peersRejected: ReadonlyMap<string, number>;
      peersVerified: number;
      refused: ReadonlyMap<string, number>;
      pending: number;
      active: number;
    };
  }[];
  jwt(): {
    verifications: number;
    cacheHits: number;
    cacheMisses: number;
    jwksFetches: number;
    jwksFetchFailures: number;
  };
  sinks(): readonly { name: string; written: number; dropped: number; buffered: number; failures: number }[];
  /** Each key set (by its URL or file; inline sets as `inline`) and the keys it holds now. */
  keySets(): readonly { id: string; keys: number }[];
  certificateNotAfter(): number;
  /** When the SVID in use was received or read (epoch ms): a Workload API update or a file reload. */
  identityUpdated(): number;
  reloads(): { success: number; failure: number };
}

type Child = ReturnType<Counter<string>['labels']>;
type HistChild = ReturnType<Histogram<string>['labels']>;

/** Decision latency buckets, in microseconds: a compiled decision is well under 10 µs. */
const DECISION_BUCKETS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000, 50000];
const UPSTREAM_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/**
 * Prometheus metrics (prom-client, in a registry of our own), `portcullis_` prefixed.
 * Per-request updates go to label children bound in advance, so a request does not build label
 * keys; everything counted elsewhere (TLS, JWT, sinks) is copied in at scrape time.
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly requests: Counter<string>;
  private readonly decision: Histogram<string>;
  private readonly upstream: Histogram<string>;
  /** listener → decision → reason → status → bound counter child. */
  private readonly requestChildren = new Map<string, Map<string, Map<string, Map<number, Child>>>>();
  private readonly decisionChildren = new Map<string, HistChild>();
  private readonly upstreamChildren = new Map<string, HistChild>();

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    this.requests = new Counter({
      name: 'portcullis_requests_total',
      help: 'Requests by listener, decision, reason and HTTP status.',
      labelNames: ['listener', 'decision', 'reason', 'status'],
      registers,
    });
    this.decision = new Histogram({
      name: 'portcullis_authorization_duration_microseconds',
      help: 'Time spent deciding authorization per request, in microseconds.',
      labelNames: ['listener'],
      buckets: DECISION_BUCKETS,
      registers,
    });
    this.upstream = new Histogram({
      name: 'portcullis_upstream_duration_seconds',
      help: 'Time from forwarding a request to the end of the upstream response.',
      labelNames: ['listener'],
      buckets: UPSTREAM_BUCKETS,
      registers,
    });
    new Counter({
      name: 'portcullis_connections_total',
      help: 'Client connections accepted.',
      labelNames: ['listener'],
      registers,
      collect() {
        this.reset();
        for (const l of sources.listeners()) this.labels({ listener: l.name }).inc(l.stats.connections);
      },
    });
    new Counter({
      name: 'portcullis_tls_handshake_failures_total',
      help: 'TLS handshakes that failed, by OpenSSL error code.',
      labelNames: ['listener', 'reason'],
      registers,
      collect() {
        this.reset();
        for (const l of sources.listeners()) {
          for (const [reason, n] of l.stats.tlsFailures) this.labels({ listener: l.name, reason }).inc(n);
        }
      },
    });
    new Counter({
      name: 'portcullis_connections_refused_total',
      help: 'Connections closed by a limit before carrying a request, by reason (handshake-timeout, pending-per-source, pending-evicted, connection-limit).',
      labelNames: ['listener', 'reason'],
      registers,
      collect() {
        this.reset();
        for (const l of sources.listeners()) {
          for (const [reason, n] of l.stats.refused) this.labels({ listener: l.name, reason }).inc(n);
        }
      },
    });
    new Gauge({
      name: 'portcullis_pending_connections',
      help: 'Connections now in the first-byte sniff, the TLS handshake or the SPIFFE checks.',
      labelNames: ['listener'],
      registers,
      collect() {
        this.reset();
        for (const l of sources.listeners()) this.labels({ listener: l.name }).set(l.stats.pending);
      },
    });
    new Gauge({
      name: 'portcullis_active_connections',
      help: 'Verified (or plaintext, where allowed) client connections now open.',
      labelNames: ['listener'],
      registers,
      collect() {
        this.reset();
        for (const l of sources.listeners()) this.labels({ listener: l.name }).set(l.stats.active);
      },
    });
    new Counter({
      name: 'portcullis_peers_verified_total',
      help: 'Peers whose X.509-SVID passed the SPIFFE checks (once per connection).',
      labelNames: ['listener'],
      registers,
      collect() {
        this.reset();
        for (const l of sources.listeners()) this.labels({ listener: l.name }).inc(l.stats.peersVerified);
      },
    });
    new Counter({
      name: 'portcullis_peers_rejected_total',
      help: 'Peers that completed TLS but failed the SPIFFE checks, by reason.',
      labelNames: ['listener', 'reason'],
      registers,
      collect() {
        this.reset();
        for (const l of sources.listeners()) {
          for (const [reason, n] of l.stats.peersRejected) this.labels({ listener: l.name, reason }).inc(n);
        }
      },
    });
    const jwtCounter = (
      name: string,
      help: string,
      read: (j: ReturnType<MetricsSources['jwt']>) => number,
    ): void => {
      new Counter({
        name,
        help,
        registers,
        collect() {
          this.reset();
          this.inc(read(sources.jwt()));
        },
      });
    };
    jwtCounter(
      'portcullis_jwt_verifications_total',
      'JWT signature verifications performed.',
      (j) => j.verifications,
    );
    jwtCounter(
      'portcullis_jwt_cache_hits_total',
      'JWTs found in the verified-token cache.',
      (j) => j.cacheHits,
    );
    jwtCounter(
      'portcullis_jwt_cache_misses_total',
      'JWTs not in the verified-token cache.',
      (j) => j.cacheMisses,
    );
    jwtCounter('portcullis_jwks_fetches_total', 'Key set fetches.', (j) => j.jwksFetches);
    jwtCounter(
      'portcullis_jwks_fetch_failures_total',
      'Key set fetches that failed.',
      (j) => j.jwksFetchFailures,
    );
    registerSinkMetrics(this.registry, sources.sinks);
    new Gauge({
      name: 'portcullis_certificate_expiry_timestamp_seconds',
      help: "When the proxy's own X.509-SVID expires (Unix time).",
      registers,
      // Across cluster workers: the earliest (the others are summed).
      aggregator: 'min',
      collect() {
        this.set(Math.floor(sources.certificateNotAfter() / 1000));
      },
    });
    new Gauge({
      name: 'portcullis_identity_last_update_timestamp_seconds',
      help: 'When the X.509-SVID in use arrived from the Workload API or was read from its files (Unix time).',
      registers,
      aggregator: 'min',
      collect() {
        this.set(Math.floor(sources.identityUpdated() / 1000));
      },
    });
    new Gauge({
      name: 'portcullis_jwks_keys',
      help: 'Keys each JWKS key set holds now; 0 means tokens of its issuer are refused until a fetch succeeds.',
      labelNames: ['jwks'],
      registers,
      aggregator: 'min',
      collect() {
        this.reset();
        for (const k of sources.keySets()) this.labels({ jwks: k.id }).set(k.keys);
      },
    });
    new Counter({
      name: 'portcullis_policy_reloads_total',
      help: 'Reloads of certificates, bundles and policies, by result.',
      labelNames: ['result'],
      registers,
      collect() {
        this.reset();
        const r = sources.reloads();
        this.labels({ result: 'success' }).inc(r.success);
        this.labels({ result: 'failure' }).inc(r.failure);
      },
    });
  }

  /** Counts a finished request; label children are made once per (listener, decision, reason, status). */
  request(
    listener: string,
    decision: string,
    reason: string,
    status: number,
    authzMicros: number,
    upstreamSeconds: number,
  ): void {
    let byDecision = this.requestChildren.get(listener);
    if (byDecision === undefined) {
      byDecision = new Map();
      this.requestChildren.set(listener, byDecision);
    }
    let byReason = byDecision.get(decision);
    if (byReason === undefined) {
      byReason = new Map();
      byDecision.set(decision, byReason);
    }
    let byStatus = byReason.get(reason);
    if (byStatus === undefined) {
      byStatus = new Map();
      byReason.set(reason, byStatus);
    }
    let child = byStatus.get(status);
    if (child === undefined) {
      child = this.requests.labels({ listener, decision, reason, status: String(status) });
      byStatus.set(status, child);
    }
    child.inc();
    if (authzMicros > 0) {
      let d = this.decisionChildren.get(listener);
      if (d === undefined) {
        d = this.decision.labels({ listener });
        this.decisionChildren.set(listener, d);
      }
      d.observe(authzMicros);
    }
    if (upstreamSeconds >= 0) {
      let u = this.upstreamChildren.get(listener);
      if (u === undefined) {
        u = this.upstream.labels({ listener });
        this.upstreamChildren.set(listener, u);
      }
      u.observe(upstreamSeconds);
    }
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/**
 * The audit sink metrics, by sink: in a proxy's registry, and in a cluster primary's for the
 * sinks it writes on behalf of its workers.
 */
export function registerSinkMetrics(registry: Registry, sinks: () => readonly SinkCounters[]): void {
  const registers = [registry];
  const sinkMetric = (
    kind: 'counter' | 'gauge',
    name: string,
    help: string,
    read: (s: ReturnType<typeof sinks>[number]) => number,
  ): void => {
    const collect = function (this: Counter<string> | Gauge<string>): void {
      this.reset();
      for (const s of sinks()) {
        if (this instanceof Gauge) this.labels({ sink: s.name }).set(read(s));
        else this.labels({ sink: s.name }).inc(read(s));
      }
    };
    if (kind === 'counter') new Counter({ name, help, labelNames: ['sink'], registers, collect });
    else new Gauge({ name, help, labelNames: ['sink'], registers, collect });
  };
  sinkMetric(
    'counter',
    'portcullis_audit_events_written_total',
    'Audit events delivered, by sink.',
    (s) => s.written,
  );
  sinkMetric(
    'counter',
    'portcullis_audit_events_dropped_total',
    'Audit events dropped because the sink buffer was full.',
    (s) => s.dropped,
  );
  sinkMetric(
    'gauge',
    'portcullis_audit_events_buffered',
    'Audit events waiting in the sink buffer.',
    (s) => s.buffered,
  );
  sinkMetric(
    'counter',
    'portcullis_audit_delivery_failures_total',
    'Failed delivery attempts, by sink.',
    (s) => s.failures,
  );
}
