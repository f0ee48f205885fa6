import { type Attributes, requestAttributes } from '../authz/attributes.js';
import { Authorizer } from '../authz/compile.js';
import {
  type AuthorizationExplanation,
  type ExplainSource,
  explainRequest,
  explanationLines,
} from '../authz/explain.js';
import { RegoEngine } from '../authz/rego/engine.js';
import type { Config, ListenerConfig } from '../config/load.js';
import { errorMessage, PortcullisError } from '../errors.js';
import { SpiffeId } from '../identity/spiffe-id.js';
import { loadPolicies } from '../istio/load.js';
import { appliesTo } from '../istio/selector.js';

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
 * config and the policy files (no certificates). The same explanation as the admin server's
 * `/decisions/<id>` gives for a request the proxy answered.
 */
export function runCheck(config: Config, input: CheckInput, out: (line: string) => void): number {
  const policies = loadPolicies(config.policies, config.workload.namespace).authorizationPolicies.filter(
    (p) => appliesTo(p.meta.namespace, p.selector, config.workload, config.rootNamespace),
  );
  const a = checkAttributes(config, input);
  const listener = findListener(config, input);
  const source: ExplainSource = {
    policies,
    authorizer: new Authorizer(policies),
    rego: listener.rego === null ? null : RegoEngine.load(listener.rego),
    ourId: '',
    tokenParams: new Set(),
    redactedHeaders: new Set(),
  };
  const e = explainRequest(source, a, input.path.split('?')[0] as string, null);
  for (const line of explanationLines(e, input.explain)) out(line);
  const z = e.authorization as AuthorizationExplanation;
  return z.allowed && (e.rego === null || e.rego.allowed) ? 0 : EXIT_DENIED;
}
