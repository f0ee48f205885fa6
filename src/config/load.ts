import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, isAbsolute, resolve } from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import type { z } from 'zod';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { formatHostPort, type HostPort } from './address.js';
import { configSchema, type LimitsInput, type ParsedConfig } from './schema.js';
import type { AuditConfig, ExtAuthzProvider, PathNormalization, RegoConfig } from './types.js';

export interface Limits {
  readonly maxHeaderSize: number;
  readonly headersTimeout: number;
  readonly requestTimeout: number;
  readonly keepAliveTimeout: number;
  readonly handshakeTimeout: number;
  readonly maxConnections: number;
  readonly maxPendingHandshakes: number;
  readonly maxPendingPerSource: number;
  readonly upstreamConnectTimeout: number;
  readonly upstreamHeadersTimeout: number;
  readonly upstreamBodyTimeout: number;
  readonly upstreamConnections: number;
  readonly tunnelIdleTimeout: number;
}

/** Safe defaults: short enough to shed slow-loris clients, long enough for ordinary APIs. */
export const DEFAULT_LIMITS: Limits = {
  maxHeaderSize: 16 * 1024,
  headersTimeout: 10_000,
  requestTimeout: 300_000,
  keepAliveTimeout: 30_000,
  handshakeTimeout: 10_000,
  maxConnections: 10_000,
  maxPendingHandshakes: 256,
  maxPendingPerSource: 64,
  upstreamConnectTimeout: 3_000,
  upstreamHeadersTimeout: 60_000,
  upstreamBodyTimeout: 60_000,
  upstreamConnections: 128,
  tunnelIdleTimeout: 3_600_000,
};

/** A listener's own server certificate (browser-facing TLS) and its client-certificate policy. */
export interface ListenerTls {
  readonly cert: string;
  readonly key: string;
  /** require: an X.509-SVID (mTLS); optional: an SVID if the client has one, else anonymous TLS; none: never asked. */
  readonly clientCertificates: 'none' | 'optional' | 'require';
}

export interface LoginProviderConfig {
  readonly name: string;
  readonly issuer: string;
  readonly clientId: string;
  readonly clientSecretFile: string;
  readonly scopes: readonly string[];
  readonly userinfo: boolean;
}

/** OpenID Connect login on a listener. */
export interface LoginConfig {
  readonly providers: readonly LoginProviderConfig[];
  readonly loginPath: string;
  readonly callbackPath: string;
  readonly logoutPath: string;
  readonly externalUrl: string | null;
  readonly cookie: { readonly name: string; readonly secretFile: string; readonly ttl: number };
  /** [upstream header (lowercase), claim] pairs. */
  readonly headers: readonly (readonly [string, string])[];
  readonly skip: readonly string[];
  readonly checkOrigin: boolean;
  readonly refreshInterval: number;
  /** A signed identity assertion for the upstream, or null. */
  readonly assertion: {
    readonly header: string;
    readonly ttl: number;
    readonly audience: string;
    readonly keyFile: string | null;
    readonly jwksPath: string;
  } | null;
}

export interface ListenerConfig {
  readonly name: string;
  /** People logging in through OpenID Connect, or null. */
  readonly login: LoginConfig | null;
  /** Browser-facing TLS, or null: the SVID and the PeerAuthentication mode, as before. */
  readonly tls: ListenerTls | null;
  readonly rego: RegoConfig | null;
  readonly address: HostPort;
  readonly upstream: string;
  readonly workloadPort: number;
  /** Whether ALPN offers h2 to clients (TLS listeners only). */
  readonly http2: boolean;
  readonly upstreamProtocol: 'http1' | 'http2';
  readonly limits: Limits;
}

export interface WorkloadApiConfig {
  /** unix:///path or tcp://host:port. */
  readonly socket: string;
  readonly hint: string;
  readonly startTimeout: number;
}

/** One registered outbound destination. */
export interface OutboundDestination {
  /** Lowercase host as the app names it, with a port only when one was given. */
  readonly host: string;
  /** Where to connect: an https:// origin. */
  readonly upstream: string;
  /** SPIFFE IDs the server may present (secure naming). */
  readonly identities: readonly string[];
  /** Trust domains any of whose workloads may answer. */
  readonly trustDomains: readonly string[];
  /** SNI sent, or null: the destination's host name (none for an IP address). */
  readonly sni: string | null;
}

export interface OutboundConfig {
  readonly address: HostPort;
  readonly policy: 'REGISTRY_ONLY' | 'ALLOW_ANY';
  readonly destinations: readonly OutboundDestination[];
  readonly limits: Limits;
}

/** A loaded config: validated, defaults applied, every path absolute. */
export interface Config {
  /** The file it came from (or a label such as `<inline>`), for messages. */
  readonly file: string;
  readonly trustDomain: string;
  readonly rootNamespace: string;
  readonly workload: {
    readonly namespace: string;
    readonly serviceAccount?: string;
    readonly labels: Record<string, string>;
  };
  /**
   * Files (`cert`, `key`, `bundles`), or the Workload API (`workloadApi` set; then `cert` and
   * `key` are '' and `bundles` is empty: the SVID and bundles come from the agent).
   */
  readonly identity: {
    readonly cert: string;
    readonly key: string;
    readonly bundles: Readonly<Record<string, string>>;
    readonly workloadApi: WorkloadApiConfig | null;
  };
  readonly listeners: readonly ListenerConfig[];
  readonly outbound: OutboundConfig | null;
  readonly policies: readonly string[];
  readonly admin: {
    readonly address: HostPort;
    /** The recent-decisions ring behind `/decisions/<id>`: its size (0: off) and what it keeps. */
    readonly decisions: { readonly size: number; readonly record: 'deny' | 'all' };
  } | null;
  readonly shutdown: { readonly drainTimeout: number };
  readonly jwt: {
    readonly clockSkew: number;
    readonly jwksRefreshInterval: number;
    readonly jwksMinRefetchInterval: number;
    readonly cacheSize: number;
  };
  readonly extensionProviders: readonly ExtAuthzProvider[];
  readonly audit: AuditConfig | null;
  readonly pathNormalization: PathNormalization;
  readonly trustedProxies: number;
  readonly serverTiming: boolean;
  readonly headersWithUnderscores: 'drop' | 'reject' | 'allow';
  readonly rejectOverrideHeaders: boolean;
  readonly watch: boolean;
  /** Worker processes (`auto` already resolved to the CPUs available). 1: no cluster. */
  readonly workers: number;
  readonly log: { readonly level: string; readonly format: 'auto' | 'json' | 'pretty' };
}

function fieldPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out === '' ? String(p) : `.${String(p)}`;
  }
  return out;
}

function zodIssues(file: string, error: z.ZodError): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  for (const issue of error.issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        out.push({ file, field: fieldPath([...issue.path, key]), message: 'unknown field' });
      }
      continue;
    }
    let message = issue.message;
    if (issue.code === 'invalid_type' && /received undefined/.test(message)) message = 'is required';
    out.push({ file, field: fieldPath(issue.path), message });
  }
  return out;
}

function mergeLimits(...layers: (LimitsInput | undefined)[]): Limits {
  const out: Record<string, number> = { ...DEFAULT_LIMITS };
  for (const layer of layers) {
    if (layer === undefined) continue;
    for (const [k, v] of Object.entries(layer)) if (v !== undefined) out[k] = v;
  }
  return out as unknown as Limits;
}

/** 127.0.0.0/8, ::1 and localhost: addresses only this machine can reach. */
function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

function defaultPort(origin: string): number {
  const url = new URL(origin);
  if (url.port !== '') return Number(url.port);
  return url.protocol === 'https:' ? 443 : 80;
}

/**
 * Validates a config object; `baseDir` is where relative paths resolve (the config file's folder,
 * never the current directory: the binary may be started from anywhere, through a symlink).
 */
export function configFromObject(raw: unknown, baseDir: string, file = '<inline>'): Config {
  const parsed = configSchema.safeParse(raw ?? {});
  if (!parsed.success) throw new ConfigError('ERR_CONFIG_INVALID', zodIssues(file, parsed.error));
  const c: ParsedConfig = parsed.data;
  const issues: ConfigIssue[] = [];
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(baseDir, p));

  const wapi = c.identity.workloadApi;
  let wapiSocket = '';
  if (wapi !== undefined) {
    wapiSocket = wapi.socket ?? process.env.SPIFFE_ENDPOINT_SOCKET ?? '';
    if (wapiSocket === '')
      issues.push({
        file,
        field: 'identity.workloadApi.socket',
        message: 'is required (or set SPIFFE_ENDPOINT_SOCKET), e.g. unix:///run/spire/sockets/agent.sock',
      });
  } else if (c.identity.bundles?.[c.trustDomain] === undefined) {
    issues.push({
      file,
      field: 'identity.bundles',
      message: `no bundle for the workload's own trust domain "${c.trustDomain}"`,
    });
  }
  const names = new Set<string>();
  const addresses = new Map<string, number>();
  c.listeners.forEach((l, i) => {
    if (names.has(l.name))
      issues.push({ file, field: `listeners[${i}].name`, message: `duplicate listener name "${l.name}"` });
    names.add(l.name);
    const addr = formatHostPort(l.address);
    if (l.address.port !== 0 && addresses.has(addr)) {
      issues.push({
        file,
        field: `listeners[${i}].address`,
        message: `${addr} is already used by listeners[${addresses.get(addr)}]`,
      });
    }
    addresses.set(addr, i);
  });
  c.listeners.forEach((l, i) => {
    l.login?.providers.forEach((p, j) => {
      const url = new URL(p.issuer);
      const loopback =
        url.hostname === 'localhost' || url.hostname === '[::1]' || url.hostname.startsWith('127.');
      if (url.protocol !== 'https:' && !(url.protocol === 'http:' && loopback)) {
        issues.push({
          file,
          field: `listeners[${i}].login.providers[${j}].issuer`,
          message: `${p.issuer}: an issuer is https:// (http:// only on a loopback address, for local providers)`,
        });
      }
    });
  });
  const timeoutProblem = (l: Limits, field: string): void => {
    // Node refuses a headers timeout longer than the request timeout; say so in config terms.
    if (l.requestTimeout > 0 && l.headersTimeout > l.requestTimeout) {
      issues.push({ file, field, message: 'must not be longer than requestTimeout' });
    }
  };
  timeoutProblem(mergeLimits(c.limits), 'limits.headersTimeout');
  c.listeners.forEach((l, i) => {
    if (l.limits !== undefined)
      timeoutProblem(mergeLimits(c.limits, l.limits), `listeners[${i}].limits.headersTimeout`);
  });
  const providers: ExtAuthzProvider[] = [];
  const providerNames = new Set<string>();
  c.extensionProviders.forEach((p, i) => {
    const at = `extensionProviders[${i}]`;
    if (providerNames.has(p.name))
      issues.push({ file, field: `${at}.name`, message: `duplicate provider name "${p.name}"` });
    providerNames.add(p.name);
    const x = p.envoyExtAuthzHttp;
    let origin: string;
    try {
      const url = new URL(x.service.includes('://') ? x.service : `http://${x.service}`);
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('scheme');
      if (x.port !== undefined) url.port = String(x.port);
      origin = url.origin;
    } catch {
      issues.push({
        file,
        field: `${at}.envoyExtAuthzHttp.service`,
        message: `"${x.service}" is not an http(s) URL or host name`,
      });
      return;
    }
    providers.push({
      name: p.name,
      origin,
      pathPrefix: x.pathPrefix,
      timeoutMs: x.timeout,
      failOpen: x.failOpen,
      statusOnError: x.statusOnError,
      includeRequestHeaders: x.includeRequestHeadersInCheck.map((h) => h.toLowerCase()),
      additionalHeaders: Object.entries(x.includeAdditionalHeadersInCheck).map(
        ([k, v]) => [k.toLowerCase(), v] as const,
      ),
      headersToUpstreamOnAllow: x.headersToUpstreamOnAllow.map((h) => h.toLowerCase()),
      headersToDownstreamOnAllow: x.headersToDownstreamOnAllow.map((h) => h.toLowerCase()),
      headersToDownstreamOnDeny: x.headersToDownstreamOnDeny.map((h) => h.toLowerCase()),
    });
  });
  const o = c.outbound;
  if (o !== undefined) {
    if (!isLoopback(o.address.host)) {
      issues.push({
        file,
        field: 'outbound.address',
        message: `${formatHostPort(o.address)} is not a loopback address: whoever reaches the outbound listener calls other services with this workload's identity, so it listens on 127.0.0.1 or [::1] only`,
      });
    }
    if (o.address.port !== 0 && addresses.has(formatHostPort(o.address)))
      issues.push({
        file,
        field: 'outbound.address',
        message: 'the outbound address is also a listener address',
      });
    const hosts = new Map<string, number>();
    o.destinations.forEach((d, i) => {
      const at = `outbound.destinations[${i}]`;
      const prev = hosts.get(d.host);
      if (prev !== undefined)
        issues.push({
          file,
          field: `${at}.host`,
          message: `"${d.host}" is already outbound.destinations[${prev}]`,
        });
      hosts.set(d.host, i);
      if (!d.upstream.startsWith('https://')) {
        issues.push({
          file,
          field: `${at}.upstream`,
          message: `${d.upstream}: a registered destination is called with mTLS, so its upstream is https://`,
        });
      }
    });
    if (o.limits !== undefined)
      timeoutProblem(mergeLimits(c.limits, o.limits), 'outbound.limits.headersTimeout');
  }
  if (c.admin !== undefined && c.admin.address.port !== 0 && addresses.has(formatHostPort(c.admin.address))) {
    issues.push({ file, field: 'admin.address', message: 'the admin address is also a listener address' });
  }
  if (issues.length > 0) throw new ConfigError('ERR_CONFIG_INVALID', issues);

  const bundles: Record<string, string> = {};
  for (const [td, p] of Object.entries(c.identity.bundles ?? {})) bundles[td] = abs(p);
  return {
    file,
    trustDomain: c.trustDomain,
    rootNamespace: c.rootNamespace,
    workload: c.workload,
    identity:
      wapi === undefined
        ? { cert: abs(c.identity.cert ?? ''), key: abs(c.identity.key ?? ''), bundles, workloadApi: null }
        : {
            cert: '',
            key: '',
            bundles,
            workloadApi: { socket: wapiSocket, hint: wapi.hint, startTimeout: wapi.startTimeout },
          },
    listeners: c.listeners.map((l) => ({
      name: l.name,
      login:
        l.login === undefined
          ? null
          : {
              providers: l.login.providers.map((p) => ({
                name: p.name,
                issuer: p.issuer,
                clientId: p.clientId,
                clientSecretFile: abs(p.clientSecretFile),
                scopes: p.scopes,
                userinfo: p.userinfo,
              })),
              loginPath: l.login.loginPath,
              callbackPath: l.login.callbackPath,
              logoutPath: l.login.logoutPath,
              externalUrl: l.login.externalUrl ?? null,
              cookie: {
                name: l.login.cookie.name,
                secretFile: abs(l.login.cookie.secretFile),
                ttl: l.login.cookie.ttl,
              },
              headers: Object.entries(l.login.headers).map(([h, claim]) => [h.toLowerCase(), claim] as const),
              skip: l.login.skip,
              checkOrigin: l.login.checkOrigin,
              refreshInterval: l.login.refreshInterval,
              assertion:
                l.login.assertion === undefined
                  ? null
                  : {
                      header: l.login.assertion.header.toLowerCase(),
                      ttl: l.login.assertion.ttl,
                      audience: l.login.assertion.audience ?? l.upstream,
                      keyFile:
                        l.login.assertion.keyFile === undefined ? null : abs(l.login.assertion.keyFile),
                      jwksPath: l.login.assertion.jwksPath,
                    },
            },
      tls:
        l.tls === undefined
          ? null
          : { cert: abs(l.tls.cert), key: abs(l.tls.key), clientCertificates: l.tls.clientCertificates },
      rego:
        l.rego === undefined
          ? null
          : {
              bundle: l.rego.bundle === undefined ? null : abs(l.rego.bundle),
              wasm: l.rego.wasm === undefined ? null : abs(l.rego.wasm),
              data: l.rego.data === undefined ? null : abs(l.rego.data),
              entrypoint: l.rego.entrypoint,
              headers: l.rego.headers === undefined ? null : l.rego.headers.map((h) => h.toLowerCase()),
            },
      address: l.address,
      upstream: l.upstream,
      workloadPort: l.workloadPort ?? defaultPort(l.upstream),
      http2: l.http2,
      upstreamProtocol: l.upstreamProtocol,
      limits: mergeLimits(c.limits, l.limits),
    })),
    outbound:
      o === undefined
        ? null
        : {
            address: o.address,
            policy: o.policy,
            destinations: o.destinations.map((d) => ({
              host: d.host,
              upstream: d.upstream,
              identities: d.identities,
              trustDomains: d.trustDomains,
              sni: d.sni ?? null,
            })),
            limits: mergeLimits(c.limits, o.limits),
          },
    policies: c.policies.map(abs),
    admin: c.admin ?? null,
    shutdown: c.shutdown,
    jwt: c.jwt,
    extensionProviders: providers,
    audit:
      c.audit === undefined
        ? null
        : {
            decisions: c.audit.decisions,
            sampleAllows: c.audit.sampleAllows,
            includeQuery: c.audit.includeQuery,
            headers: c.audit.headers.map((h) => h.toLowerCase()),
            bufferSize: c.audit.bufferSize,
            flushIntervalMs: c.audit.flushInterval,
            sinks: c.audit.sinks.map((k) =>
              k.type === 'stdout'
                ? k
                : k.type === 'file'
                  ? { type: 'file' as const, path: abs(k.path), maxBytes: k.maxSize, keep: k.keep }
                  : {
                      type: 'http' as const,
                      url: k.url,
                      timeoutMs: k.timeout,
                      gzip: k.gzip,
                      batchSize: k.batchSize,
                      maxRetryDelayMs: k.maxRetryDelay,
                      headers: k.headers,
                    },
            ),
          },
    pathNormalization: c.pathNormalization,
    trustedProxies: c.trustedProxies,
    serverTiming: c.serverTiming,
    headersWithUnderscores: c.headersWithUnderscores,
    rejectOverrideHeaders: c.rejectOverrideHeaders,
    watch: c.watch,
    workers: c.workers === 'auto' ? availableParallelism() : c.workers,
    log: c.log,
  };
}

/** Reads and validates portcullis.yaml. Throws ConfigError naming file, field and problem. */
/**
 * Loads a config file. `policiesOnly` is for commands that read the policies alone (`check`):
 * the identity block may then be left out, since no certificate is loaded.
 */
export function loadConfigFile(path: string, opts: { policiesOnly?: boolean } = {}): Config {
  const file = resolve(path);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'file not found' : `cannot read (${code})`;
    throw new ConfigError('ERR_CONFIG_INVALID', [{ file, field: '', message: why }]);
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: false, lineCounter: lines });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      'ERR_CONFIG_INVALID',
      doc.errors.map((e) => ({
        file,
        field: '',
        message: `YAML syntax error at line ${lines.linePos(e.pos[0]).line}: ${e.message.split('\n')[0]}`,
      })),
    );
  }
  const raw: unknown = doc.toJS();
  if (opts.policiesOnly === true && raw !== null && typeof raw === 'object' && !('identity' in raw)) {
    // Placeholders that satisfy the schema; nothing reads them without the identity.
    const td = (raw as { trustDomain?: unknown }).trustDomain;
    const domain = typeof td === 'string' ? td : 'unset.invalid';
    (raw as Record<string, unknown>).identity = { cert: '-', key: '-', bundles: { [domain]: '-' } };
  }
  return configFromObject(raw, dirname(file), file);
}
