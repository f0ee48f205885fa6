import { z } from 'zod';
import { spiffeIdProblem, trustDomainProblem } from '../identity/spiffe-id.js';
import { type HostPort, parseHostPort } from './address.js';
import { parseDuration } from './duration.js';

/**
 * The portcullis.yaml schema. Objects are strict: an unknown field is an error, because a typo in a
 * security config (`requireCert` for `requireCerts`) must not silently mean "use the default".
 */

/**
 * A duration needs a unit: `headersTimeout: 10` read as 10 ms would shed every client. Only 0
 * (meaning "none" where a field allows it) may be written bare.
 */
const duration = z.union([z.number(), z.string()]).transform((v, ctx) => {
  if (typeof v === 'number' && v !== 0) {
    ctx.addIssue({
      code: 'custom',
      message: `${v} has no unit: write ${v}ms, or ${v}s if seconds were meant (units: ms, s, m, h, d)`,
    });
    return z.NEVER;
  }
  const ms = parseDuration(v);
  if (ms === null) {
    ctx.addIssue({ code: 'custom', message: `"${v}" is not a duration (use e.g. 500ms, 5s, 10m, 1h)` });
    return z.NEVER;
  }
  return ms;
});

const hostPort = z.string().transform((v, ctx): HostPort => {
  const hp = parseHostPort(v);
  if (hp === null) {
    ctx.addIssue({
      code: 'custom',
      message: `"${v}" is not host:port (e.g. 127.0.0.1:15006 or [::1]:15006)`,
    });
    return z.NEVER;
  }
  return hp;
});

const trustDomain = z.string().superRefine((v, ctx) => {
  const problem = trustDomainProblem(v);
  if (problem !== null) ctx.addIssue({ code: 'custom', message: `invalid trust domain "${v}": ${problem}` });
});

const upstream = z.string().transform((v, ctx) => {
  let url: URL;
  try {
    url = new URL(v);
  } catch {
    ctx.addIssue({ code: 'custom', message: `"${v}" is not a URL (e.g. http://127.0.0.1:8080)` });
    return z.NEVER;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    ctx.addIssue({
      code: 'custom',
      message: `the upstream must be an http:// or https:// URL, not ${url.protocol}`,
    });
    return z.NEVER;
  }
  if ((url.pathname !== '/' && url.pathname !== '') || url.search || url.hash || url.username) {
    ctx.addIssue({
      code: 'custom',
      message: 'the upstream is an origin only (scheme, host, port), without path or query',
    });
    return z.NEVER;
  }
  return url.origin;
});

const port = z.number().int().min(1).max(65535);

const spiffeId = z.string().superRefine((v, ctx) => {
  const problem = spiffeIdProblem(v);
  if (problem !== null) ctx.addIssue({ code: 'custom', message: `invalid SPIFFE ID "${v}": ${problem}` });
});

/** A destination host as the app names it: a DNS name or IP literal, lowercase, with an optional port. */
const destinationHost = z
  .string()
  .transform((v) => v.toLowerCase())
  .superRefine((v, ctx) => {
    if (!/^(?:\[[0-9a-f:.]+\]|[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?)(?::\d{1,5})?$/.test(v)) {
      ctx.addIssue({
        code: 'custom',
        message: `"${v}" is not a host name or IP address with an optional port (e.g. billing.default.svc or billing:8080)`,
      });
    }
  });

/** Headers whose values are secrets: the audit log refuses to record them, explanations show them REDACTED. */
export const CREDENTIAL_HEADERS: ReadonlySet<string> = new Set([
  'authorization',
  'cookie',
  'proxy-authorization',
  'x-api-key',
  // An RFC 9449 proof: bound to one request, but a credential all the same.
  'dpop',
]);

export const limitsSchema = z.strictObject({
  /** Largest request head (request line and headers) accepted, in bytes (Node's --max-http-header-size). */
  maxHeaderSize: z
    .number()
    .int()
    .min(1024)
    .max(1024 * 1024)
    .optional(),
  /** Time a client has to send the whole request head. */
  headersTimeout: duration.optional(),
  /** Time a client has to send the whole request, body included (0 = no limit). */
  requestTimeout: duration.optional(),
  /** How long an idle keep-alive connection from a client stays open. */
  keepAliveTimeout: duration.optional(),
  /** Deadline from accept to a verified peer: first byte (PERMISSIVE), TLS handshake, SPIFFE checks. */
  handshakeTimeout: duration.optional(),
  /** Most verified (handed to HTTP) client connections open at once per listener. */
  maxConnections: z.number().int().min(1).optional(),
  /**
   * Most connections still in the first-byte sniff, the TLS handshake or the SPIFFE checks, per
   * listener: a budget apart from maxConnections, so unauthenticated clients never take verified
   * peers' slots. When it is full the oldest pending connection is closed.
   */
  maxPendingHandshakes: z.number().int().min(1).optional(),
  /** Most pending connections from one source address (an IPv6 /64 counts as one); more are refused. */
  maxPendingPerSource: z.number().int().min(1).optional(),
  /** Time to connect to the upstream before answering 503. */
  upstreamConnectTimeout: duration.optional(),
  /** Time the upstream has to send response headers before answering 504. */
  upstreamHeadersTimeout: duration.optional(),
  /** Longest pause between two chunks of an upstream response body. */
  upstreamBodyTimeout: duration.optional(),
  /** A WebSocket tunnel with no byte in either direction for this long is closed. */
  tunnelIdleTimeout: duration.optional(),
  /** Most connections to the upstream per listener. */
  upstreamConnections: z.number().int().min(1).optional(),
});

export type LimitsInput = z.infer<typeof limitsSchema>;

export const configSchema = z.strictObject({
  trustDomain,
  /** Istio's root namespace: resources there apply to every workload. */
  rootNamespace: z.string().min(1).default('istio-system'),
  workload: z
    .strictObject({
      namespace: z.string().min(1).default('default'),
      serviceAccount: z.string().min(1).optional(),
      labels: z.record(z.string(), z.string()).default({}),
    })
    .default({ namespace: 'default', labels: {} }),
  /**
   * The proxy's own SVID and the trust bundles: from files (cert, key, bundles), or from the
   * SPIFFE Workload API (a SPIRE agent), which also delivers the bundles and rotates the SVID.
   */
  identity: z
    .strictObject({
      cert: z.string().min(1).optional(),
      key: z.string().min(1).optional(),
      bundles: z
        .record(trustDomain, z.string().min(1))
        .refine((b) => Object.keys(b).length > 0, {
          message: 'at least one trust bundle is needed',
        })
        .optional(),
      workloadApi: z
        .strictObject({
          /** unix:///path or tcp://host:port; default: the SPIFFE_ENDPOINT_SOCKET environment variable. */
          socket: z
            .string()
            .regex(/^(unix:\/\/\/.+|tcp:\/\/[^/]+:\d+)$/, 'use unix:///path/to/agent.sock or tcp://host:port')
            .optional(),
          /** Which SVID when several are served (X509SVID.hint); the first by default. */
          hint: z.string().default(''),
          /** How long `run` waits for the first SVID before giving up. */
          startTimeout: duration.default(60_000),
        })
        .optional(),
    })
    .superRefine((i, ctx) => {
      const files = i.cert !== undefined || i.key !== undefined || i.bundles !== undefined;
      if (i.workloadApi !== undefined && files) {
        ctx.addIssue({
          code: 'custom',
          message:
            'set workloadApi, or cert, key and bundles — not both (the Workload API delivers the bundles too)',
        });
      } else if (i.workloadApi === undefined) {
        for (const f of ['cert', 'key', 'bundles'] as const)
          if (i[f] === undefined)
            ctx.addIssue({ code: 'custom', path: [f], message: 'is required (or use workloadApi)' });
      }
    }),
  listeners: z
    .array(
      z.strictObject({
        name: z.string().regex(/^[a-zA-Z0-9_.-]+$/, 'a listener name uses letters, digits, ".", "-" and "_"'),
        address: hostPort,
        upstream,
        /** The workload port Istio policies refer to (portLevelMtls); defaults to the upstream's port. */
        workloadPort: port.optional(),
        /** How to talk to the upstream: HTTP/1.1, or HTTP/2 (h2c with prior knowledge for http://). */
        upstreamProtocol: z.enum(['http1', 'http2']).default('http1'),
        /**
         * Browser-facing TLS: a server certificate from any CA (not the SVID), and whether clients
         * must, may or cannot present an X.509-SVID. Replaces the PeerAuthentication mode here.
         */
        tls: z
          .strictObject({
            cert: z.string().min(1),
            key: z.string().min(1),
            clientCertificates: z.enum(['none', 'optional', 'require']).default('require'),
          })
          .optional(),
        /** People logging in through OpenID Connect (authorization code flow with PKCE). */
        login: z
          .strictObject({
            providers: z
              .array(
                z.strictObject({
                  name: z.string().regex(/^[a-zA-Z0-9_.-]+$/, 'letters, digits, ".", "-" and "_"'),
                  issuer: z.string().url(),
                  clientId: z.string().min(1),
                  clientSecretFile: z.string().min(1),
                  scopes: z.array(z.string().min(1)).default(['openid', 'profile', 'email']),
                  /** Also fetch the userinfo endpoint at login and add its claims (the ID token's win on conflict). */
                  userinfo: z.boolean().default(false),
                }),
              )
              .min(1, 'at least one provider')
              .refine((ps) => new Set(ps.map((x) => x.name)).size === ps.length, {
                message: 'provider names must be unique',
              }),
            /** Where a person picks a provider when there are several (and where a login can be started). */
            loginPath: z.string().startsWith('/').default('/.portcullis/login'),
            callbackPath: z.string().startsWith('/').default('/.portcullis/callback'),
            logoutPath: z.string().startsWith('/').default('/.portcullis/logout'),
            /** Pins the redirect URI's scheme and host when a proxy in front rewrites the Host. */
            externalUrl: z.string().url().optional(),
            cookie: z.strictObject({
              name: z
                .string()
                .regex(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/, 'a cookie name (RFC 6265 token)')
                .default('__Host-portcullis'),
              secretFile: z.string().min(1),
              ttl: duration.default(8 * 3_600_000),
            }),
            /** Upstream header → ID token claim (e.g. x-forwarded-user: sub). */
            headers: z
              .record(z.string().regex(/^[a-zA-Z0-9-]+$/, 'a header name'), z.string().min(1))
              .default({}),
            /** Paths served without login (still authorized): exact, `prefix*`. */
            skip: z.array(z.string().startsWith('/')).default([]),
            /**
             * A short-lived JWT signed by Portcullis for the upstream (a signed identity assertion),
             * verifiable with the JWKS Portcullis serves at jwksPath.
             */
            assertion: z
              .strictObject({
                header: z
                  .string()
                  .regex(/^[a-zA-Z0-9-]+$/, 'a header name')
                  .default('x-portcullis-assertion'),
                ttl: duration.default(60_000),
                /** `aud`; default: the upstream's origin. */
                audience: z.string().min(1).optional(),
                /** An EC P-256 private key (PKCS#8 PEM) shared by replicas; default: one made at start. */
                keyFile: z.string().min(1).optional(),
                jwksPath: z.string().startsWith('/').default('/.portcullis/jwks.json'),
              })
              .optional(),
            /**
             * With a refresh token (scope offline_access), how often the claims are fetched again:
             * a person the provider disabled, or whose groups changed, is noticed this soon.
             */
            refreshInterval: duration.default(300_000),
            /** Refuse state-changing requests with a session cookie and a foreign Origin (CSRF). */
            checkOrigin: z.boolean().default(true),
          })
          .optional(),
        /** Offer HTTP/2 (ALPN h2) to clients beside HTTP/1.1; each stream is checked as a request. */
        http2: z.boolean().default(true),
        /** Rego compiled to WebAssembly, evaluated after the Istio policies. */
        rego: z
          .strictObject({
            bundle: z.string().min(1).optional(),
            wasm: z.string().min(1).optional(),
            data: z.string().min(1).optional(),
            entrypoint: z.string().min(1).default('envoy/authz/allow'),
            headers: z.array(z.string().min(1)).optional(),
          })
          .refine((r) => (r.bundle === undefined) !== (r.wasm === undefined), {
            message: 'set bundle (an OPA bundle .tar.gz) or wasm (a policy.wasm), not both and not neither',
          })
          .refine((r) => r.data === undefined || r.wasm !== undefined, {
            message: 'data goes with wasm (a bundle carries its own data.json)',
          })
          .optional(),
        limits: limitsSchema.optional(),
      }),
    )
    .min(1, 'at least one listener is needed'),
  /**
   * The outbound (egress) listener: the app sends plain HTTP here (as to an HTTP proxy, or with the
   * destination's Host), and Portcullis calls the destination with mTLS and secure naming.
   */
  outbound: z
    .strictObject({
      address: hostPort.default(parseHostPort('127.0.0.1:15001') as HostPort),
      /** Hosts not listed: REGISTRY_ONLY refuses them; ALLOW_ANY passes them through in plain HTTP. */
      policy: z.enum(['REGISTRY_ONLY', 'ALLOW_ANY']).default('REGISTRY_ONLY'),
      destinations: z
        .array(
          z
            .strictObject({
              host: destinationHost,
              upstream,
              /** Secure naming: the SPIFFE IDs the destination's server may present. */
              identities: z.array(spiffeId).default([]),
              /** Or any workload of these trust domains (federation). */
              trustDomains: z.array(trustDomain).default([]),
              sni: z.string().min(1).optional(),
            })
            .refine((d) => d.identities.length > 0 || d.trustDomains.length > 0, {
              message:
                'a destination needs identities (the SPIFFE IDs its server may present) or trustDomains: without them any workload could answer for it',
            }),
        )
        .default([]),
      limits: limitsSchema.optional(),
    })
    .optional(),
  policies: z.array(z.string().min(1)).default([]),
  admin: z
    .strictObject({
      address: hostPort,
      /**
       * Recent decisions kept for `GET /decisions/<request-id>` (served to loopback clients only):
       * how many (0: none) and which (deny: refusals only; all: allowed requests too).
       */
      decisions: z
        .strictObject({
          size: z.number().int().min(0).max(100_000).default(1000),
          record: z.enum(['deny', 'all']).default('deny'),
        })
        .default({ size: 1000, record: 'deny' }),
    })
    .optional(),
  limits: limitsSchema.default({}),
  shutdown: z.strictObject({ drainTimeout: duration.default(15_000) }).default({ drainTimeout: 15_000 }),
  /** How request paths are normalized before they are authorized and forwarded (Istio's options). */
  pathNormalization: z.enum(['NONE', 'BASE', 'MERGE_SLASHES', 'DECODE_AND_MERGE_SLASHES']).default('BASE'),
  /**
   * Proxies in front of Portcullis whose X-Forwarded-For entries are trusted, counted from the
   * right (Envoy's xff_num_trusted_hops). 0: remote.ip is the direct peer.
   */
  trustedProxies: z.number().int().min(0).max(16).default(0),
  /** Add `Server-Timing: authz;dur=<ms>` to responses (authorization time apart from the upstream's). */
  serverTiming: z.boolean().default(false),
  /**
   * Request headers whose names contain `_` (Envoy's headers_with_underscores_action): CGI, WSGI
   * and PHP map `_` and `-` to the same variable, so `x_forwarded_client_cert` could stand in for
   * a header the proxy sets. `drop` (default, as nginx does), `reject` (400) or `allow`.
   */
  headersWithUnderscores: z.enum(['drop', 'reject', 'allow']).default('drop'),
  /**
   * Refuse (400) requests carrying headers that make many frameworks use another method or path
   * than the request line's (X-HTTP-Method-Override, X-Original-URL, …): the upstream would act on
   * something other than what was authorized.
   */
  rejectOverrideHeaders: z.boolean().default(true),
  /** The audit stream: one event per decision, to one or more sinks. Absent: no audit events. */
  audit: z
    .strictObject({
      decisions: z.enum(['all', 'deny', 'audit']).default('all'),
      sampleAllows: z.number().min(0).max(1).default(1),
      includeQuery: z.boolean().default(false),
      headers: z
        .array(z.string().min(1))
        .default([])
        .refine((hs) => !hs.some((h) => CREDENTIAL_HEADERS.has(h.toLowerCase())), {
          message:
            'credential headers (authorization, cookie, proxy-authorization, x-api-key, dpop) are never recorded',
        }),
      bufferSize: z.number().int().min(1).max(1_000_000).default(10_000),
      /**
       * How long an event may wait for others to share its write (0: written as soon as the
       * request is done). Batching keeps a steady request rate from costing a write per request.
       */
      flushInterval: duration
        .refine((ms) => ms <= 1_000, { message: 'at most 1s: events wait at most this long in memory' })
        .default(20),
      sinks: z
        .array(
          z.discriminatedUnion('type', [
            z.strictObject({ type: z.literal('stdout') }),
            z.strictObject({
              type: z.literal('file'),
              path: z.string().min(1),
              maxSize: z
                .number()
                .int()
                .min(1024)
                .default(100 * 1024 * 1024),
              keep: z.number().int().min(1).max(100).default(5),
            }),
            z.strictObject({
              type: z.literal('http'),
              url: z.url({ protocol: /^https?$/ }),
              timeout: duration.default(5_000),
              gzip: z.boolean().default(true),
              batchSize: z.number().int().min(1).max(100_000).default(500),
              maxRetryDelay: duration.default(30_000),
              headers: z.record(z.string(), z.string()).default({}),
            }),
          ]),
        )
        .min(1, 'at least one sink is needed'),
    })
    .optional(),
  /**
   * External authorizers for CUSTOM AuthorizationPolicies, in Istio's meshConfig shape
   * (`extensionProviders[].envoyExtAuthzHttp`).
   */
  extensionProviders: z
    .array(
      z.strictObject({
        name: z.string().min(1),
        envoyExtAuthzHttp: z.strictObject({
          /** URL of the authorizer (http:// or https://), or a host name with `port`. */
          service: z.string().min(1),
          port: port.optional(),
          pathPrefix: z
            .string()
            .regex(/^(\/.*)?$/, 'must start with "/"')
            .default(''),
          timeout: duration.default(1_000),
          failOpen: z.boolean().default(false),
          statusOnError: z
            .union([z.string().regex(/^[1-5]\d\d$/), z.number().int().min(100).max(599)])
            .transform(Number)
            .default(403),
          includeRequestHeadersInCheck: z.array(z.string().min(1)).default([]),
          includeAdditionalHeadersInCheck: z.record(z.string(), z.string()).default({}),
          headersToUpstreamOnAllow: z.array(z.string().min(1)).default([]),
          headersToDownstreamOnAllow: z.array(z.string().min(1)).default([]),
          headersToDownstreamOnDeny: z.array(z.string().min(1)).default([]),
        }),
      }),
    )
    .default([]),
  /** Request authentication (JWT) settings; the rules themselves are RequestAuthentication resources. */
  jwt: z
    .strictObject({
      /** Tolerance for exp / nbf / iat checks. */
      clockSkew: duration.default(60_000),
      /** Background refresh period of remote key sets. */
      jwksRefreshInterval: duration.default(600_000),
      /** Least time between two fetches of one key set caused by tokens with unknown `kid`s. */
      jwksMinRefetchInterval: duration.default(30_000),
      /** Verified tokens kept (0 turns the cache off). */
      cacheSize: z.number().int().min(0).default(10_000),
    })
    .default({
      clockSkew: 60_000,
      jwksRefreshInterval: 600_000,
      jwksMinRefetchInterval: 30_000,
      cacheSize: 10_000,
    }),
  /** Re-read certificates, bundles and policies when their files change. */
  watch: z.boolean().default(true),
  /**
   * Processes that serve the listeners (Node cluster): each enforces on its own from the same
   * files. `auto`: one per CPU the process may use. 1 (default): a single process.
   */
  workers: z.union([z.literal('auto'), z.number().int().min(1).max(64)]).default(1),
  log: z
    .strictObject({
      level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
      /** `auto`: readable lines when stderr is a terminal, JSON lines otherwise. */
      format: z.enum(['auto', 'json', 'pretty']).default('auto'),
    })
    .default({ level: 'info', format: 'auto' }),
});

export type ConfigInput = z.input<typeof configSchema>;
export type ParsedConfig = z.output<typeof configSchema>;
