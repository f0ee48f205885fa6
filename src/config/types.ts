/**
 * Shapes of the validated configuration that lower layers read. They live here, with the config,
 * so that config/ depends on nothing above it; the modules that use them re-export them.
 */

/** Istio's meshConfig.pathNormalization options (see authz/normalize.ts). */
export type PathNormalization = 'NONE' | 'BASE' | 'MERGE_SLASHES' | 'DECODE_AND_MERGE_SLASHES';

/** A listener's Rego engine (authz/rego/engine.ts). */
export interface RegoConfig {
  /** An OPA bundle (.tar.gz) holding /policy.wasm and optionally /data.json. */
  readonly bundle: string | null;
  /** Or a bare policy.wasm, with an optional data file. */
  readonly wasm: string | null;
  readonly data: string | null;
  readonly entrypoint: string;
  /** Request headers given to the policy (lowercase); null means every header. */
  readonly headers: readonly string[] | null;
}

/** An external authorizer for CUSTOM policies (authz/ext-authz.ts). */
export interface ExtAuthzProvider {
  readonly name: string;
  /** Origin of the authorizer (http://host:port or https://…). */
  readonly origin: string;
  readonly pathPrefix: string;
  readonly timeoutMs: number;
  readonly failOpen: boolean;
  readonly statusOnError: number;
  /** Lowercase names of client headers sent along (besides `authorization`). */
  readonly includeRequestHeaders: readonly string[];
  /** Fixed headers added to every check request. */
  readonly additionalHeaders: readonly (readonly [string, string])[];
  readonly headersToUpstreamOnAllow: readonly string[];
  readonly headersToDownstreamOnAllow: readonly string[];
  readonly headersToDownstreamOnDeny: readonly string[];
}

export type AuditDecisions = 'all' | 'deny' | 'audit';

export type SinkConfig =
  | { type: 'stdout' }
  | { type: 'file'; path: string; maxBytes: number; keep: number }
  | {
      type: 'http';
      url: string;
      timeoutMs: number;
      gzip: boolean;
      batchSize: number;
      maxRetryDelayMs: number;
      headers: Record<string, string>;
    };

export interface AuditConfig {
  readonly decisions: AuditDecisions;
  /** Fraction of allowed requests recorded when decisions is `all` (1 = every one). */
  readonly sampleAllows: number;
  readonly includeQuery: boolean;
  /** Lowercase names of request headers whose values are recorded. */
  readonly headers: readonly string[];
  /** Events each sink may hold before new ones are dropped. */
  readonly bufferSize: number;
  /** Longest an event waits for others to share its write, ms. */
  readonly flushIntervalMs: number;
  readonly sinks: readonly SinkConfig[];
}
