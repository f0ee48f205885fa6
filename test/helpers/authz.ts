import type { RequestAttributes } from '../../src/authz/attributes.js';
import { type AuthorizationPolicy, parseAuthorizationPolicy } from '../../src/istio/authorization-policy.js';

/** Parses a policy spec as the loader would; throws with every problem if it is invalid. */
export function policy(
  spec: unknown,
  name = 'p',
  opts: { namespace?: string; dryRun?: boolean } = {},
): AuthorizationPolicy {
  const problems: string[] = [];
  const p = parseAuthorizationPolicy(
    {
      name,
      namespace: opts.namespace ?? 'default',
      annotations: opts.dryRun === true ? { 'istio.io/dry-run': 'true' } : {},
      origin: { file: 'test.yaml', index: 0 },
    },
    spec,
    (f, m) => problems.push(`${f}: ${m}`),
  );
  if (p === null) throw new Error(problems.join('\n'));
  return p;
}

export type Attrs = { -readonly [K in keyof RequestAttributes]: RequestAttributes[K] };

/** A request's attributes with plain defaults: an mTLS peer `web`, GET /, no token. */
export function attrs(over: Partial<Attrs> = {}): Attrs {
  return {
    method: 'GET',
    host: 'api.example.org',
    path: '/',
    query: '',
    headers: {},
    sourceAddress: '10.0.0.5',
    sourcePort: 40000,
    remoteAddress: '10.0.0.5',
    destinationAddress: '10.0.0.1',
    destinationPort: 8080,
    sni: 'api.example.org',
    peerPrincipal: 'example.org/ns/default/sa/web',
    peerNamespace: 'default',
    requestPrincipal: '',
    claims: null,
    audiences: [],
    presenter: '',
    ...over,
  };
}
