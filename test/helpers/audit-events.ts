/**
 * Audit events in the proxy's schema (version 1), made in bulk for replay tests and benchmarks.
 * The replay tests check that a real event from the proxy has exactly these fields, so the
 * generator cannot drift from what AuditLog writes.
 */

export interface RequestEventInit {
  readonly i: number;
  readonly decision: 'allow' | 'deny';
  readonly status: number;
  readonly reason: string;
  readonly policy?: string | null;
  readonly rule?: number | null;
  readonly peer?: string;
  readonly method?: string;
  readonly path: string;
  readonly principal?: string;
  /** `audit.headers` as recorded: every configured header, null when absent. */
  readonly headers?: Record<string, string | null>;
  /** The claims the policies of the time read (absent: not recorded). */
  readonly claims?: Record<string, unknown>;
}

const T0 = Date.parse('2026-12-06T00:00:00.000Z');

/** One request event, as AuditLog.recordRequest writes it for an inbound mTLS request. */
export function requestEvent(e: RequestEventInit): Record<string, unknown> {
  return {
    version: 1,
    time: new Date(T0 + e.i * 10).toISOString(),
    requestId: `req-${e.i}`,
    listener: 'inbound',
    direction: 'inbound',
    decision: e.decision,
    status: e.status,
    reason: e.reason,
    policy: e.policy ?? null,
    rule: e.rule ?? null,
    audit: null,
    dryRun: { deny: null, allowPoliciesAllow: true, allowPolicy: null },
    source: { principal: e.peer ?? '', address: '10.0.0.5', port: 40000 + (e.i % 20000) },
    remoteAddress: '10.0.0.5',
    destinationAddress: '10.0.0.9',
    destinationPort: 8080,
    tls: true,
    sni: 'api.example.org',
    request: {
      method: e.method ?? 'GET',
      host: 'api.example.org',
      path: e.path,
      principal: e.principal ?? '',
      headers: e.headers,
      claims: e.claims,
    },
    upstream: e.decision === 'allow' ? { status: e.status, durationMs: 1.2 } : null,
    authzMicros: 3.1,
    durationMs: 2.5,
    completed: true,
  };
}

const WEB = 'example.org/ns/default/sa/web';
const DB = 'example.org/ns/default/sa/db';
const OPS = 'example.org/ns/ops/sa/prometheus';
const USER = 'https://idp.example/alice';

/**
 * The replay scenario's traffic: event `i` is of kind `i % 12`, each kind with a known fate under
 * the scenario's new policies (test/integration/replay.test.ts):
 *  0 web GET /api/items/i        allowed → allowed            (unchanged)
 *  1 web POST /api/items         allowed → denied             (allow_to_deny: the api rule is GET-only now)
 *  2 ops GET /metrics            denied  → allowed            (deny_to_allow: a new metrics policy)
 *  3 web GET /api/internal/x     allowed → undecidable        (a new DENY reads x-debug, not recorded)
 *  4 db POST /api/internal/x     denied  → denied             (unchanged whatever x-debug says)
 *  5 GET /tenant/a  x-tenant acme  allowed → allowed          (unchanged; x-tenant is recorded)
 *  6 GET /tenant/a  no x-tenant    denied  → denied           (unchanged; recorded as absent)
 *  7 user GET /admin/x, claims recorded (groups admins)  allowed → allowed (unchanged)
 *  8 user GET /admin/x, claims not recorded (an older event) allowed → undecidable
 *  9 a 401 jwt-invalid           not replayed
 * 10 a Rego refusal after the policies allowed              (unchanged: stays refused)
 * 11 alternately a tunnel-closed event and a connection refused at TLS (not replayed)
 */
export function scenarioEvent(i: number): Record<string, unknown> {
  const tenant = (v: string | null): Record<string, string | null> => ({ 'x-tenant': v });
  switch (i % 12) {
    case 0:
      return requestEvent({
        i,
        decision: 'allow',
        status: 200,
        reason: 'policy',
        policy: 'default/api',
        rule: 0,
        peer: WEB,
        path: `/api/items/${i}`,
        headers: tenant(null),
      });
    case 1:
      return requestEvent({
        i,
        decision: 'allow',
        status: 201,
        reason: 'policy',
        policy: 'default/api',
        rule: 0,
        peer: WEB,
        method: 'POST',
        path: '/api/items',
        headers: tenant(null),
      });
    case 2:
      return requestEvent({
        i,
        decision: 'deny',
        status: 403,
        reason: 'no-matching-allow',
        peer: OPS,
        path: '/metrics',
        headers: tenant(null),
      });
    case 3:
      return requestEvent({
        i,
        decision: 'allow',
        status: 200,
        reason: 'policy',
        policy: 'default/api',
        rule: 0,
        peer: WEB,
        path: '/api/internal/x',
        headers: tenant(null),
      });
    case 4:
      return requestEvent({
        i,
        decision: 'deny',
        status: 403,
        reason: 'no-matching-allow',
        peer: DB,
        method: 'POST',
        path: '/api/internal/x',
        headers: tenant(null),
      });
    case 5:
      return requestEvent({
        i,
        decision: 'allow',
        status: 200,
        reason: 'policy',
        policy: 'default/tenant',
        rule: 0,
        path: '/tenant/a',
        headers: tenant('acme'),
      });
    case 6:
      return requestEvent({
        i,
        decision: 'deny',
        status: 403,
        reason: 'no-matching-allow',
        path: '/tenant/a',
        headers: tenant(null),
      });
    case 7:
      return requestEvent({
        i,
        decision: 'allow',
        status: 200,
        reason: 'policy',
        policy: 'default/admins',
        rule: 0,
        principal: USER,
        path: '/admin/x',
        headers: tenant(null),
        claims: { groups: ['admins'] },
      });
    case 8:
      return requestEvent({
        i,
        decision: 'allow',
        status: 200,
        reason: 'policy',
        policy: 'default/admins',
        rule: 0,
        principal: USER,
        path: '/admin/x',
        headers: tenant(null),
      });
    case 9:
      return requestEvent({
        i,
        decision: 'deny',
        status: 401,
        reason: 'jwt-invalid',
        path: '/api/items',
        headers: tenant(null),
      });
    case 10:
      return requestEvent({
        i,
        decision: 'deny',
        status: 403,
        reason: 'rego-denied',
        peer: WEB,
        path: '/api/items/rego',
        headers: tenant(null),
      });
    default:
      return i % 24 === 11
        ? {
            version: 1,
            time: new Date(T0 + i * 10).toISOString(),
            event: 'tunnel-closed',
            requestId: `req-${i - 1}`,
            listener: 'inbound',
            durationMs: 5,
            bytesFromClient: 10,
            bytesToClient: 20,
          }
        : {
            version: 1,
            time: new Date(T0 + i * 10).toISOString(),
            requestId: null,
            listener: 'inbound',
            decision: 'deny',
            status: null,
            reason: 'peer-untrusted',
            detail: 'expired: the leaf certificate expired',
            source: { principal: '', address: '10.0.0.66', port: 5555 },
            tls: true,
          };
  }
}

export const SCENARIO_CONFIG = `trustDomain: example.org
workload: { namespace: default, serviceAccount: api, labels: { app: api } }
listeners:
  - { name: inbound, address: "127.0.0.1:15006", upstream: "http://127.0.0.1:8080" }
policies: [old/]
audit: { headers: [x-tenant], sinks: [{ type: file, path: audit.ndjson }] }
`;

const policyDoc = (name: string, spec: string): string =>
  `apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: ${name}, namespace: default }\nspec:\n${spec}`;

/** The policies the scenario's events were decided by. */
export const SCENARIO_OLD_POLICIES = [
  policyDoc(
    'api',
    `  rules: [{ from: [{ source: { principals: ["${WEB}"] } }], to: [{ operation: { paths: ["/api/*"] } }] }]\n`,
  ),
  policyDoc(
    'tenant',
    '  rules: [{ to: [{ operation: { paths: ["/tenant/*"] } }], when: [{ key: "request.headers[x-tenant]", values: ["acme"] }] }]\n',
  ),
  policyDoc(
    'admins',
    '  rules: [{ to: [{ operation: { paths: ["/admin/*"] } }], when: [{ key: "request.auth.claims[groups]", values: ["admins"] }] }]\n',
  ),
].join('---\n');

/** The change under review. */
export const SCENARIO_NEW_POLICIES = [
  policyDoc(
    'api',
    `  rules: [{ from: [{ source: { principals: ["${WEB}"] } }], to: [{ operation: { methods: ["GET"], paths: ["/api/*"] } }] }]\n`,
  ),
  policyDoc(
    'tenant',
    '  rules: [{ to: [{ operation: { paths: ["/tenant/*"] } }], when: [{ key: "request.headers[x-tenant]", values: ["acme"] }] }]\n',
  ),
  policyDoc(
    'admins',
    '  rules: [{ to: [{ operation: { paths: ["/admin/*"] } }], when: [{ key: "request.auth.claims[groups]", values: ["admins"] }] }]\n',
  ),
  policyDoc(
    'metrics',
    `  rules: [{ from: [{ source: { namespaces: ["ops"] } }], to: [{ operation: { methods: ["GET"], paths: ["/metrics"] } }] }]\n`,
  ),
  policyDoc(
    'no-debug-internal',
    '  action: DENY\n  rules: [{ to: [{ operation: { paths: ["/api/internal/*"] } }], when: [{ key: "request.headers[x-debug]", values: ["on"] }] }]\n',
  ),
].join('---\n');
