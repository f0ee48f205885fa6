import { type Attributes, requestAttributes } from '../authz/attributes.js';
import { Authorizer, Decision } from '../authz/compile.js';
import { referenceDecide } from '../authz/reference.js';
import { RegoEngine } from '../authz/rego/engine.js';
import type { Config, ListenerConfig } from '../config/load.js';
import { errorMessage, PortcullisError } from '../errors.js';
import { SpiffeId } from '../identity/spiffe-id.js';
import { loadPolicies } from '../istio/load.js';
import { appliesTo } from '../istio/selector.js';
import { envoyInput } from '../proxy/stages/rego.js';

export interface CheckInput {
  listener?: string;
  principal?: string;
  requestPrincipal?: string;
  claims?: string;
  method: string;
  path: string;
  host?: string;
  headers: string[];
  sourceIp?: string;
  remoteIp?: string;
  sni?: string;
  explain: boolean;
}

/** Exit code when the request would be denied (0 when allowed). */
export const EXIT_DENIED = 3;

function usage(message: string): never {
  throw new PortcullisError('ERR_USAGE', message);
}

/**
 * The attributes a request with these properties would have on the given listener: a described
 * connection and head, through the same function the proxy uses (path normalization, request id,
 * remote.ip), then the claims a verified token would have set.
 */
export function checkAttributes(config: Config, input: CheckInput): Attributes {
  const listener = findListener(config, input);
  if (!input.path.startsWith('/')) usage('--path must start with "/"');
  let principal = input.principal ?? '';
  if (principal !== '' && !principal.startsWith('spiffe://')) principal = `spiffe://${principal}`;
  let peer: SpiffeId | null = null;
  if (principal !== '') {
    try {
      peer = SpiffeId.parse(principal);
    } catch (err) {
      usage(`--principal: ${errorMessage(err)}`);
    }
  }
  let claims: Record<string, unknown> | null = null;
  if (input.claims !== undefined) {
    try {
      const parsed = JSON.parse(input.claims) as unknown;
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
        usage('--jwt-claims must be a JSON object');
      claims = parsed as Record<string, unknown>;
    } catch (err) {
      if (err instanceof PortcullisError) throw err;
      usage('--jwt-claims is not valid JSON');
    }
  }
  const headers: Record<string, string> = {};
  for (const h of input.headers) {
    const eq = h.indexOf('=');
    if (eq <= 0) usage(`--header "${h}" is not name=value`);
    headers[h.slice(0, eq).toLowerCase()] = h.slice(eq + 1);
  }
  headers.host = input.host ?? headers.host ?? 'localhost';
  let trustedProxies = config.trustedProxies;
  if (input.remoteIp !== undefined) {
    // remote.ip other than the peer's address can only come from X-Forwarded-For through a trusted hop.
    const xff = headers['x-forwarded-for'];
    headers['x-forwarded-for'] = xff === undefined ? input.remoteIp : `${xff}, ${input.remoteIp}`;
    trustedProxies = Math.max(1, trustedProxies);
  }
  headers['x-request-id'] ??= 'portcullis-check';
  const source = input.sourceIp ?? '127.0.0.1';
  const a = requestAttributes(
    {
      sourceAddress: source,
      sourcePort: 0,
      destinationAddress: listener.address.host,
      tls: peer !== null || input.sni !== undefined,
      sni: input.sni ?? '',
      peerId: peer?.id ?? '',
      peerPrincipal: peer?.principal ?? '',
      peerNamespace: peer?.namespace ?? '',
    },
    { method: input.method.toUpperCase(), target: input.path, headers, httpVersion: '1.1' },
    { workloadPort: listener.workloadPort, normalization: config.pathNormalization, trustedProxies },
    Date.now(),
  );
  if (claims !== null) {
    const aud = claims.aud;
    a.claims = claims;
    a.audiences =
      typeof aud === 'string'
        ? [aud]
        : Array.isArray(aud)
          ? aud.filter((x): x is string => typeof x === 'string')
          : [];
    a.presenter = typeof claims.azp === 'string' ? claims.azp : '';
    if (typeof claims.iss === 'string' && typeof claims.sub === 'string')
      a.requestPrincipal = `${claims.iss}/${claims.sub}`;
  }
  if (input.requestPrincipal !== undefined) a.requestPrincipal = input.requestPrincipal;
  return a;
}

function findListener(config: Config, input: CheckInput): ListenerConfig {
  const listener =
    input.listener === undefined
      ? config.listeners[0]
      : config.listeners.find((l) => l.name === input.listener);
  if (listener === undefined) usage(`no listener named "${input.listener}"`);
  return listener;
}

/**
 * `portcullis check`: the decision the loaded policies make for a described request, which
 * policy and rule made it, and with --explain why each policy matched or not. Needs only the
 * config and the policy files (no certificates).
 */
export function runCheck(config: Config, input: CheckInput, out: (line: string) => void): number {
  const policies = loadPolicies(config.policies, config.workload.namespace).authorizationPolicies.filter(
    (p) => appliesTo(p.meta.namespace, p.selector, config.workload, config.rootNamespace),
  );
  const a = checkAttributes(config, input);
  const authorizer = new Authorizer(policies);
  const d = new Decision();
  authorizer.decide(a, d);
  const custom = authorizer.matchCustom(a);
  const ref = referenceDecide(policies, a);

  out(
    `request: ${a.method} ${a.host}${a.path}${a.query === '' ? '' : `?${a.query}`}${a.path !== input.path.split('?')[0] ? `  (normalized from ${input.path.split('?')[0]})` : ''}`,
  );
  out(
    `  peer: ${a.peerPrincipal === '' ? '(none: plaintext)' : a.peerPrincipal}   request principal: ${a.requestPrincipal === '' ? '(none)' : a.requestPrincipal}`,
  );
  out(`decision: ${d.allowed ? 'ALLOW' : 'DENY (403 RBAC: access denied)'}`);
  const by = d.policy === null ? '' : ` — ${d.policy.spec.action} ${d.policy.id} rule[${d.ruleIndex}]`;
  out(`  reason: ${d.reason}${by}`);
  if (d.auditPolicy !== null) out(`  audit: marked by AUDIT ${d.auditPolicy.id}`);
  if (d.shadowDenyPolicy !== null) out(`  dry-run: DENY ${d.shadowDenyPolicy.id} would deny`);
  if (authorizer.shadowAllow.length > 0) {
    out(`  dry-run: ALLOW policies would ${d.shadowAllowed ? `allow (${d.shadowAllowPolicy?.id})` : 'deny'}`);
  }
  if (custom !== null)
    out(`  CUSTOM ${custom.id} matches: provider "${custom.spec.provider}" would also be asked`);
  if (ref.allowed !== d.allowed || ref.policy !== (d.policy?.id ?? null) || ref.ruleIndex !== d.ruleIndex) {
    out(
      `  WARNING: the reference evaluator disagrees (${ref.allowed ? 'allow' : 'deny'} by ${ref.policy ?? '-'} rule[${ref.ruleIndex}]); please report this`,
    );
  }
  const listener = findListener(config, input);
  let regoDenied = false;
  if (listener.rego !== null) {
    const engine = RegoEngine.load(listener.rego);
    // The OPA-Envoy input the proxy would build for this request (the same function).
    const rego = engine.evaluate(envoyInput(a, engine.headers, ''));
    const extra = rego.allowed
      ? rego.upstreamHeaders.length > 0
        ? ` (headers upstream: ${rego.upstreamHeaders.map(([k, v]) => `${k}: ${v}`).join(', ')})`
        : ''
      : ` (${rego.status}${rego.body === '' ? '' : ` ${JSON.stringify(rego.body)}`})`;
    out(`rego ${engine.entrypoint}: ${rego.allowed ? 'ALLOW' : 'DENY'}${extra}`);
    if (d.allowed && !rego.allowed)
      out('decision with Rego: DENY (Istio policies allow, the Rego policy does not)');
    if (!d.allowed)
      out('decision with Rego: DENY (the Istio policies already deny; Rego would not be asked)');
    if (d.allowed && rego.allowed) out('decision with Rego: ALLOW');
    regoDenied = !rego.allowed;
  }
  if (input.explain) {
    out('');
    if (policies.length === 0)
      out('no AuthorizationPolicy applies to this workload: every request is allowed');
    for (const e of ref.explanations) {
      out(
        `${e.action}${e.dryRun ? ' (dry-run)' : ''} ${e.policy}: ${e.ruleIndex === -1 ? 'does not match' : `matches (rule[${e.ruleIndex}])`}`,
      );
      for (const line of e.rules) out(`  ${line}`);
    }
  }
  return d.allowed && !regoDenied ? 0 : EXIT_DENIED;
}
