import { describe, expect, it } from 'vitest';
import { parseAuthorizationPolicy } from '../../../src/istio/authorization-policy.js';

function problems(spec: unknown, annotations: Record<string, string> = {}): string[] {
  const out: string[] = [];
  parseAuthorizationPolicy(
    { name: 'p', namespace: 'default', annotations, origin: { file: 'f', index: 0 } },
    spec,
    (f, m) => out.push(`${f}: ${m}`),
  );
  return out;
}

describe('AuthorizationPolicy validation', () => {
  it('accepts the documented shapes', () => {
    expect(problems({})).toEqual([]);
    expect(problems({ rules: [{}] })).toEqual([]);
    expect(
      problems({
        selector: { matchLabels: { app: 'api' } },
        action: 'ALLOW',
        rules: [
          {
            from: [
              {
                source: {
                  principals: ['cluster.local/ns/default/sa/sleep'],
                  ipBlocks: ['10.0.0.0/8', '2001:db8::/32'],
                },
              },
            ],
            to: [
              {
                operation: {
                  methods: ['GET'],
                  paths: ['/info*', '/users/{*}/orders', '/files/{**}'],
                  ports: ['8080', 9090],
                },
              },
            ],
            when: [
              { key: 'request.auth.claims[iss]', values: ['https://accounts.google.com'] },
              { key: 'request.auth.claims[org][team]', notValues: ['x'] },
              { key: 'request.headers[User-Agent]', values: ['curl/*'] },
              { key: 'destination.port', values: ['8080'] },
            ],
          },
        ],
      }),
    ).toEqual([]);
    expect(problems({ action: 'CUSTOM', provider: { name: 'ext' }, rules: [{}] })).toEqual([]);
  });

  it.each([
    [{ action: 'DENY' }, 'spec.rules: a DENY policy needs at least one rule'],
    [{ action: 'DENY', rules: [] }, 'spec.rules: a DENY policy needs at least one rule'],
    [{ action: 'CUSTOM', provider: { name: 'x' } }, 'spec.rules: a CUSTOM policy needs at least one rule'],
    [{ action: 'CUSTOM', rules: [{}] }, 'spec.provider.name: is required for a CUSTOM policy'],
    [{ action: 'ALLOW', provider: { name: 'x' } }, 'spec.provider: is only for CUSTOM policies'],
    [{ action: 'REJECT' }, 'spec.action: must be ALLOW, DENY, AUDIT or CUSTOM'],
    [
      { rules: [{ when: [{ key: 'request.time', values: ['x'] }] }] },
      'spec.rules[0].when[0].key: unknown key "request.time"',
    ],
    [
      {
        rules: [
          { when: [{ key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['x'] }] },
        ],
      },
      'experimental Istio key',
    ],
    [{ rules: [{ when: [{ key: 'source.ip' }] }] }, 'spec.rules[0].when[0]: needs values or notValues'],
    [{ rules: [{ when: [{ key: 'source.ip', values: ['10.0.0.300'] }] }] }, 'is not an IP address or CIDR'],
    [{ rules: [{ when: [{ key: 'destination.port', values: ['http'] }] }] }, '"http" is not a port number'],
    [
      { rules: [{ from: [{ source: { principals: ['a*b'] } }] }] },
      'a "*" may only stand at the start or the end',
    ],
    [{ rules: [{ from: [{ source: { principals: [] } }] }] }, 'must not be empty'],
    [{ rules: [{ from: [{ source: { principals: [''] } }] }] }, 'must be a list of non-empty strings'],
    [{ rules: [{ from: [{ source: { ipBlocks: ['10.0.0.0/33'] } }] }] }, 'the prefix length must be 0-32'],
    [
      { rules: [{ from: [{ source: { principal: ['x'] } }] }] },
      'spec.rules[0].from[0].source.principal: unknown field',
    ],
    [{ rules: [{ from: [{ source: {} }] }] }, 'spec.rules[0].from[0].source: must set at least one field'],
    [{ rules: [{ to: [{ operation: { ports: ['99999'] } }] }] }, '"99999" is not a port number'],
    [{ rules: [{ to: [{ operation: { paths: ['/a/{**}/b/{*}'] } }] }] }, '{**} must be the last operator'],
    [{ rules: [{ to: [{ operation: { paths: ['/a/{id}'] } }] }] }, 'named variables are not supported'],
    [{ rules: [{ to: [{ operation: { paths: ['/a/x{*}'] } }] }] }, 'must stand for a whole path segment'],
    [{ rules: [{ to: [{ operation: { paths: ['/a/{*}/*'] } }] }] }, 'cannot also use a "*" glob'],
    [{ rules: [{ to: [{ operation: { paths: ['a/{*}'] } }] }] }, 'must start with "/"'],
    [
      { rules: [{ to: [{ operation: { methods: ['GET'] } }], unless: [] }] },
      'spec.rules[0].unless: unknown field',
    ],
    [{ targetRefs: [{ kind: 'Gateway', name: 'g' }] }, 'targetRef (Gateway API) is not supported'],
  ])('refuses %j', (spec, expected) => {
    const found = problems(spec);
    expect(
      found.some((p) => p.includes(expected)),
      found.join(' | '),
    ).toBe(true);
  });

  it('reads the dry-run annotation strictly', () => {
    expect(problems({ rules: [{}] }, { 'istio.io/dry-run': 'yes' })).toEqual([
      'metadata.annotations.istio.io/dry-run: must be "true" or "false"',
    ]);
  });
});
