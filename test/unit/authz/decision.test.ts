import { describe, expect, it } from 'vitest';
import { Authorizer, Decision } from '../../../src/authz/compile.js';
import { referenceDecide } from '../../../src/authz/reference.js';
import type { AuthorizationPolicy } from '../../../src/istio/authorization-policy.js';
import { type Attrs, attrs, policy } from '../../helpers/authz.js';

interface Case {
  name: string;
  policies: AuthorizationPolicy[];
  request: Partial<Attrs>;
  allowed: boolean;
  /** Deciding policy name and rule index, when one decides. */
  by?: [string, number];
}

const allow = (rules: unknown[], name = 'allow'): AuthorizationPolicy =>
  policy({ action: 'ALLOW', rules }, name);
const deny = (rules: unknown[], name = 'deny'): AuthorizationPolicy =>
  policy({ action: 'DENY', rules }, name);
const src = (source: Record<string, unknown>): unknown => ({ from: [{ source }] });
const op = (operation: Record<string, unknown>): unknown => ({ to: [{ operation }] });
const when = (key: string, values?: string[], notValues?: string[]): unknown => ({
  when: [{ key, ...(values ? { values } : {}), ...(notValues ? { notValues } : {}) }],
});
const claims = {
  iss: 'https://idp',
  sub: 'alice',
  groups: ['dev', 'ops'],
  scope: 'read write:orders',
  org: { tier: 'gold' },
  n: 7,
};

const CASES: Case[] = [
  // Which policies and in what order
  { name: 'no policy at all: allow', policies: [], request: {}, allowed: true },
  {
    name: 'spec {} (ALLOW without rules): allow nothing',
    policies: [policy({}, 'empty')],
    request: {},
    allowed: false,
  },
  {
    name: 'rules: [{}] matches everything',
    policies: [allow([{}])],
    request: {},
    allowed: true,
    by: ['allow', 0],
  },
  { name: 'rules: [] allows nothing', policies: [allow([])], request: {}, allowed: false },
  {
    name: 'DENY wins over ALLOW',
    policies: [allow([{}]), deny([{}])],
    request: {},
    allowed: false,
    by: ['deny', 0],
  },
  {
    name: 'a DENY that does not match leaves ALLOW to decide',
    policies: [deny([op({ methods: ['DELETE'] })]), allow([{}])],
    request: {},
    allowed: true,
    by: ['allow', 0],
  },
  {
    name: 'only DENY policies: unmatched requests are allowed',
    policies: [deny([op({ methods: ['DELETE'] })])],
    request: {},
    allowed: true,
  },
  {
    name: 'an ALLOW exists but none matches: deny',
    policies: [allow([op({ paths: ['/admin'] })])],
    request: { path: '/x' },
    allowed: false,
  },
  {
    name: 'AUDIT never changes the decision',
    policies: [policy({ action: 'AUDIT', rules: [{}] }, 'audit')],
    request: {},
    allowed: true,
  },
  {
    name: 'dry-run DENY does not deny',
    policies: [policy({ action: 'DENY', rules: [{}] }, 'dry', { dryRun: true })],
    request: {},
    allowed: true,
  },
  {
    name: 'dry-run ALLOW does not count as an ALLOW policy',
    policies: [policy({ action: 'ALLOW', rules: [op({ paths: ['/x'] })] }, 'dry', { dryRun: true })],
    request: { path: '/y' },
    allowed: true,
  },
  {
    name: 'the matching rule index is reported',
    policies: [allow([op({ paths: ['/a'] }), op({ paths: ['/b'] })])],
    request: { path: '/b' },
    allowed: true,
    by: ['allow', 1],
  },

  // Source fields
  {
    name: 'principals exact',
    policies: [allow([src({ principals: ['example.org/ns/default/sa/web'] })])],
    request: {},
    allowed: true,
  },
  {
    name: 'principals exact, other peer',
    policies: [allow([src({ principals: ['example.org/ns/default/sa/web'] })])],
    request: { peerPrincipal: 'example.org/ns/default/sa/db' },
    allowed: false,
  },
  {
    name: 'principals prefix',
    policies: [allow([src({ principals: ['example.org/ns/default/*'] })])],
    request: {},
    allowed: true,
  },
  {
    name: 'principals suffix',
    policies: [allow([src({ principals: ['*/sa/web'] })])],
    request: {},
    allowed: true,
  },
  {
    name: 'principals presence needs mTLS',
    policies: [allow([src({ principals: ['*'] })])],
    request: { peerPrincipal: '' },
    allowed: false,
  },
  {
    name: 'notPrincipals excludes',
    policies: [allow([src({ notPrincipals: ['*/sa/web'] })])],
    request: {},
    allowed: false,
  },
  {
    name: 'notPrincipals ["*"] matches plaintext',
    policies: [allow([src({ notPrincipals: ['*'] })])],
    request: { peerPrincipal: '' },
    allowed: true,
  },
  {
    name: 'principals and notPrincipals both must hold',
    policies: [allow([src({ principals: ['example.org/*'], notPrincipals: ['*/sa/web'] })])],
    request: {},
    allowed: false,
  },
  {
    name: 'requestPrincipals iss/sub',
    policies: [allow([src({ requestPrincipals: ['https://idp/alice'] })])],
    request: { requestPrincipal: 'https://idp/alice' },
    allowed: true,
  },
  {
    name: 'requestPrincipals */sub',
    policies: [allow([src({ requestPrincipals: ['*/alice'] })])],
    request: { requestPrincipal: 'https://idp/alice' },
    allowed: true,
  },
  {
    name: 'requestPrincipals iss/*',
    policies: [allow([src({ requestPrincipals: ['https://idp/*'] })])],
    request: { requestPrincipal: 'https://other/alice' },
    allowed: false,
  },
  {
    name: 'requestPrincipals * needs a token',
    policies: [allow([src({ requestPrincipals: ['*'] })])],
    request: { requestPrincipal: '' },
    allowed: false,
  },
  {
    name: 'notRequestPrincipals',
    policies: [deny([src({ notRequestPrincipals: ['*'] })])],
    request: { requestPrincipal: '' },
    allowed: false,
    by: ['deny', 0],
  },
  { name: 'namespaces', policies: [allow([src({ namespaces: ['default'] })])], request: {}, allowed: true },
  {
    name: 'notNamespaces',
    policies: [allow([src({ notNamespaces: ['default'] })])],
    request: {},
    allowed: false,
  },
  {
    name: 'ipBlocks CIDR v4',
    policies: [allow([src({ ipBlocks: ['10.0.0.0/24'] })])],
    request: {},
    allowed: true,
  },
  {
    name: 'ipBlocks single v4',
    policies: [allow([src({ ipBlocks: ['10.0.0.6'] })])],
    request: {},
    allowed: false,
  },
  {
    name: 'ipBlocks v4 matches a v4-mapped v6 peer',
    policies: [allow([src({ ipBlocks: ['10.0.0.0/8'] })])],
    request: { sourceAddress: '::ffff:10.1.2.3' },
    allowed: true,
  },
  {
    name: 'ipBlocks v6 CIDR',
    policies: [allow([src({ ipBlocks: ['2001:db8::/32'] })])],
    request: { sourceAddress: '2001:db8:0:1::7' },
    allowed: true,
  },
  {
    name: 'ipBlocks v6 outside',
    policies: [allow([src({ ipBlocks: ['2001:db8::/32'] })])],
    request: { sourceAddress: '2001:db9::1' },
    allowed: false,
  },
  {
    name: 'notIpBlocks',
    policies: [deny([src({ notIpBlocks: ['10.0.0.0/8'] })])],
    request: { sourceAddress: '192.168.1.1' },
    allowed: false,
  },
  {
    name: 'remoteIpBlocks reads remote.ip',
    policies: [allow([src({ remoteIpBlocks: ['203.0.113.0/24'] })])],
    request: { remoteAddress: '203.0.113.9' },
    allowed: true,
  },
  {
    name: 'notRemoteIpBlocks',
    policies: [allow([src({ notRemoteIpBlocks: ['203.0.113.0/24'] })])],
    request: { remoteAddress: '203.0.113.9' },
    allowed: false,
  },
  {
    name: 'fields of one source are ANDed',
    policies: [allow([src({ principals: ['*/sa/web'], namespaces: ['prod'] })])],
    request: {},
    allowed: false,
  },
  {
    name: 'sources are ORed',
    policies: [
      allow([{ from: [{ source: { namespaces: ['prod'] } }, { source: { principals: ['*/sa/web'] } }] }]),
    ],
    request: {},
    allowed: true,
  },

  // Operation fields
  {
    name: 'hosts case-insensitive',
    policies: [allow([op({ hosts: ['API.example.org'] })])],
    request: {},
    allowed: true,
  },
  {
    name: 'hosts compare the authority with its port',
    policies: [allow([op({ hosts: ['api.example.org'] })])],
    request: { host: 'api.example.org:8443' },
    allowed: false,
  },
  {
    name: 'hosts with port',
    policies: [allow([op({ hosts: ['api.example.org:8443'] })])],
    request: { host: 'api.example.org:8443' },
    allowed: true,
  },
  { name: 'hosts suffix', policies: [allow([op({ hosts: ['*.example.org'] })])], request: {}, allowed: true },
  {
    name: 'notHosts',
    policies: [allow([op({ notHosts: ['api.example.org'] })])],
    request: {},
    allowed: false,
  },
  { name: 'ports', policies: [allow([op({ ports: ['8080'] })])], request: {}, allowed: true },
  { name: 'ports other', policies: [allow([op({ ports: [9090] })])], request: {}, allowed: false },
  { name: 'notPorts', policies: [allow([op({ notPorts: ['8080'] })])], request: {}, allowed: false },
  { name: 'methods', policies: [allow([op({ methods: ['GET', 'HEAD'] })])], request: {}, allowed: true },
  {
    name: 'methods are case-sensitive',
    policies: [allow([op({ methods: ['get'] })])],
    request: {},
    allowed: false,
  },
  {
    name: 'notMethods',
    policies: [deny([op({ notMethods: ['GET'] })])],
    request: { method: 'POST' },
    allowed: false,
  },
  {
    name: 'paths exact',
    policies: [allow([op({ paths: ['/info'] })])],
    request: { path: '/info' },
    allowed: true,
  },
  {
    name: 'paths prefix',
    policies: [allow([op({ paths: ['/api/*'] })])],
    request: { path: '/api/v1/users' },
    allowed: true,
  },
  {
    name: 'paths prefix does not match the bare directory',
    policies: [allow([op({ paths: ['/api/*'] })])],
    request: { path: '/api' },
    allowed: false,
  },
  {
    name: 'paths suffix',
    policies: [allow([op({ paths: ['*.png'] })])],
    request: { path: '/img/a.png' },
    allowed: true,
  },
  {
    name: 'paths presence',
    policies: [allow([op({ paths: ['*'] })])],
    request: { path: '/anything' },
    allowed: true,
  },
  {
    name: 'notPaths',
    policies: [allow([op({ paths: ['/api/*'], notPaths: ['/api/admin*'] })])],
    request: { path: '/api/admin/x' },
    allowed: false,
  },
  {
    name: 'template {*} one segment',
    policies: [allow([op({ paths: ['/users/{*}/orders'] })])],
    request: { path: '/users/42/orders' },
    allowed: true,
  },
  {
    name: 'template {*} not two segments',
    policies: [allow([op({ paths: ['/users/{*}/orders'] })])],
    request: { path: '/users/4/2/orders' },
    allowed: false,
  },
  {
    name: 'template {*} not empty',
    policies: [allow([op({ paths: ['/users/{*}/orders'] })])],
    request: { path: '/users//orders' },
    allowed: false,
  },
  {
    name: 'template {**} many segments',
    policies: [allow([op({ paths: ['/files/{**}'] })])],
    request: { path: '/files/a/b/c.txt' },
    allowed: true,
  },
  {
    name: 'template {**} zero segments',
    policies: [allow([op({ paths: ['/files/{**}'] })])],
    request: { path: '/files/' },
    allowed: true,
  },
  {
    name: 'template {**} needs the slash',
    policies: [allow([op({ paths: ['/files/{**}'] })])],
    request: { path: '/files' },
    allowed: false,
  },
  {
    name: 'template {**} followed by literals',
    policies: [allow([op({ paths: ['/repo/{**}/blob.json'] })])],
    request: { path: '/repo/a/b/blob.json' },
    allowed: true,
  },
  {
    name: 'template {**} followed by literals, other file',
    policies: [allow([op({ paths: ['/repo/{**}/blob.json'] })])],
    request: { path: '/repo/a/b/x.json' },
    allowed: false,
  },
  {
    name: 'template {*} then {**}',
    policies: [allow([op({ paths: ['/{*}/v1/{**}'] })])],
    request: { path: '/tenant/v1/items/9' },
    allowed: true,
  },
  {
    name: 'operations are ORed',
    policies: [allow([{ to: [{ operation: { methods: ['POST'] } }, { operation: { paths: ['/'] } }] }])],
    request: {},
    allowed: true,
  },
  {
    name: 'from AND to',
    policies: [
      allow([
        { from: [{ source: { namespaces: ['default'] } }], to: [{ operation: { methods: ['POST'] } }] },
      ]),
    ],
    request: {},
    allowed: false,
  },

  // when
  {
    name: 'when header exact',
    policies: [allow([when('request.headers[X-Env]', ['prod'])])],
    request: { headers: { 'x-env': 'prod' } },
    allowed: true,
  },
  {
    name: 'when header missing',
    policies: [allow([when('request.headers[x-env]', ['prod'])])],
    request: {},
    allowed: false,
  },
  {
    name: 'when header prefix',
    policies: [allow([when('request.headers[user-agent]', ['curl/*'])])],
    request: { headers: { 'user-agent': 'curl/8.1' } },
    allowed: true,
  },
  {
    name: 'when header notValues',
    policies: [allow([when('request.headers[x-env]', undefined, ['dev'])])],
    request: { headers: { 'x-env': 'dev' } },
    allowed: false,
  },
  {
    name: 'when header notValues, header missing',
    policies: [allow([when('request.headers[x-env]', undefined, ['dev'])])],
    request: {},
    allowed: true,
  },
  {
    name: 'when header list (set-cookie)',
    policies: [allow([when('request.headers[set-cookie]', ['b=*'])])],
    request: { headers: { 'set-cookie': ['a=1', 'b=2'] } },
    allowed: true,
  },
  {
    name: 'when source.ip',
    policies: [allow([when('source.ip', ['10.0.0.0/16'])])],
    request: {},
    allowed: true,
  },
  {
    name: 'when remote.ip',
    policies: [allow([when('remote.ip', ['203.0.113.9'])])],
    request: { remoteAddress: '203.0.113.9' },
    allowed: true,
  },
  {
    name: 'when source.namespace',
    policies: [allow([when('source.namespace', ['default'])])],
    request: {},
    allowed: true,
  },
  {
    name: 'when source.principal',
    policies: [allow([when('source.principal', ['*/sa/web'])])],
    request: {},
    allowed: true,
  },
  {
    name: 'when request.auth.principal',
    policies: [allow([when('request.auth.principal', ['https://idp/alice'])])],
    request: { requestPrincipal: 'https://idp/alice' },
    allowed: true,
  },
  {
    name: 'when request.auth.audiences any',
    policies: [allow([when('request.auth.audiences', ['api'])])],
    request: { audiences: ['web', 'api'] },
    allowed: true,
  },
  {
    name: 'when request.auth.audiences none',
    policies: [allow([when('request.auth.audiences', ['api'])])],
    request: { audiences: [] },
    allowed: false,
  },
  {
    name: 'when request.auth.presenter',
    policies: [allow([when('request.auth.presenter', ['cli'])])],
    request: { presenter: 'cli' },
    allowed: true,
  },
  {
    name: 'when claim string',
    policies: [allow([when('request.auth.claims[sub]', ['alice'])])],
    request: { claims },
    allowed: true,
  },
  {
    name: 'when claim list element',
    policies: [allow([when('request.auth.claims[groups]', ['ops'])])],
    request: { claims },
    allowed: true,
  },
  {
    name: 'when claim list, notValues',
    policies: [allow([when('request.auth.claims[groups]', undefined, ['ops'])])],
    request: { claims },
    allowed: false,
  },
  {
    name: 'when claim nested',
    policies: [allow([when('request.auth.claims[org][tier]', ['gold'])])],
    request: { claims },
    allowed: true,
  },
  {
    name: 'when claim scope is split on spaces',
    policies: [allow([when('request.auth.claims[scope]', ['write:orders'])])],
    request: { claims },
    allowed: true,
  },
  {
    name: 'when claim scope word prefix',
    policies: [allow([when('request.auth.claims[scope]', ['write:*'])])],
    request: { claims },
    allowed: true,
  },
  {
    name: 'when claim scope does not match across words',
    policies: [allow([when('request.auth.claims[scope]', ['read write:orders'])])],
    request: { claims },
    allowed: false,
  },
  {
    name: 'when claim number is not a string',
    policies: [allow([when('request.auth.claims[n]', ['7'])])],
    request: { claims },
    allowed: false,
  },
  {
    name: 'when claim without a token',
    policies: [allow([when('request.auth.claims[sub]', ['alice'])])],
    request: {},
    allowed: false,
  },
  {
    name: 'when destination.ip',
    policies: [allow([when('destination.ip', ['10.0.0.1'])])],
    request: {},
    allowed: true,
  },
  {
    name: 'when destination.port',
    policies: [allow([when('destination.port', ['8080'])])],
    request: {},
    allowed: true,
  },
  {
    name: 'when destination.port notValues',
    policies: [allow([when('destination.port', undefined, ['8080'])])],
    request: {},
    allowed: false,
  },
  {
    name: 'when connection.sni',
    policies: [allow([when('connection.sni', ['*.example.org'])])],
    request: {},
    allowed: true,
  },
  {
    name: 'every when must hold',
    policies: [
      allow([
        {
          when: [
            { key: 'source.namespace', values: ['default'] },
            { key: 'request.headers[x]', values: ['1'] },
          ],
        },
      ]),
    ],
    request: {},
    allowed: false,
  },
];

describe('authorization decisions (compiled and reference evaluator, one table)', () => {
  it.each(CASES.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const a = attrs(c.request);
    const compiled = new Authorizer(c.policies);
    const out = new Decision();
    compiled.decide(a, out);
    const ref = referenceDecide(c.policies, a);
    expect(out.allowed).toBe(c.allowed);
    expect(ref.allowed).toBe(c.allowed);
    expect(out.policy?.id ?? null).toBe(ref.policy);
    expect(out.ruleIndex).toBe(ref.ruleIndex);
    expect(out.reason).toBe(ref.reason);
    if (c.by !== undefined) {
      expect(out.policy?.spec.meta.name).toBe(c.by[0]);
      expect(out.ruleIndex).toBe(c.by[1]);
    }
  });

  it('records AUDIT and dry-run outcomes beside the decision', () => {
    const policies = [
      policy({ action: 'AUDIT', rules: [op({ paths: ['/pay*'] })] }, 'audit-pay'),
      policy({ action: 'DENY', rules: [op({ methods: ['POST'] })] }, 'dry-deny', { dryRun: true }),
      policy({ action: 'ALLOW', rules: [op({ paths: ['/other'] })] }, 'dry-allow', { dryRun: true }),
    ];
    const out = new Decision();
    new Authorizer(policies).decide(attrs({ method: 'POST', path: '/pay' }), out);
    expect(out.allowed).toBe(true);
    expect(out.auditPolicy?.id).toBe('default/audit-pay');
    expect(out.shadowDenyPolicy?.id).toBe('default/dry-deny');
    expect(out.shadowAllowed).toBe(false);
    const ref = referenceDecide(policies, attrs({ method: 'POST', path: '/pay' }));
    expect([ref.audit, ref.shadowDeny, ref.shadowAllowed]).toEqual([
      'default/audit-pay',
      'default/dry-deny',
      false,
    ]);
  });

  it('names the nearest miss of a denied request: the ALLOW rule with the fewest failed conditions', () => {
    const policies = [
      allow([{ to: [{ operation: { methods: ['POST'], paths: ['/admin/*'] } }] }], 'far'),
      allow(
        [
          { from: [{ source: { principals: ['*/sa/web'] } }], to: [{ operation: { paths: ['/api/*'] } }] },
          {
            from: [{ source: { principals: ['*/sa/web'] } }],
            when: [{ key: 'request.headers[x-tenant]', values: ['acme'] }],
          },
        ],
        'near',
      ),
    ];
    // far rule[0] fails on 2 (method, path), near rule[0] on 2 (principal, path), near rule[1] on 1.
    const denied = referenceDecide(
      policies,
      attrs({
        method: 'GET',
        path: '/web/x',
        peerPrincipal: 'example.org/ns/default/sa/db',
        headers: { 'x-tenant': 'acme' },
      }),
    );
    expect(denied.allowed).toBe(false);
    expect(denied.nearestMiss).toEqual({
      policy: 'default/near',
      ruleIndex: 1,
      failed: ['from[0] principals: "example.org/ns/default/sa/db" is not in ["*/sa/web"]'],
    });
    // An allowed request, or one a DENY matched, has no nearest miss.
    expect(referenceDecide(policies, attrs({ method: 'POST', path: '/admin/x' })).nearestMiss).toBeNull();
  });

  it('redacts credential header values in an explanation, but matches on them', () => {
    const p = allow([when('request.headers[authorization]', ['Bearer secret-1'])], 'by-header');
    const a = attrs({ headers: { authorization: 'Bearer secret-2' } });
    const ref = referenceDecide([p], a, { redacted: new Set(['authorization']) });
    expect(ref.explanations[0]?.rules[0]).toBe(
      'rule[0]: when request.headers[authorization]: ["REDACTED"] matches none of ["Bearer secret-1"]',
    );
    expect(JSON.stringify(ref)).not.toContain('secret-2');
    const ok = referenceDecide([p], attrs({ headers: { authorization: 'Bearer secret-1' } }), {
      redacted: new Set(['authorization']),
    });
    expect(ok.allowed).toBe(true);
  });

  it('explains why each rule did or did not match', () => {
    const p = allow([src({ principals: ['*/sa/admin'] }), op({ paths: ['/public/*'] })], 'explained');
    const ref = referenceDecide([p], attrs({ path: '/private' }));
    expect(ref.explanations[0]?.rules).toEqual([
      'rule[0]: from: no source matches (from[0] principals: "example.org/ns/default/sa/web" is not in ["*/sa/admin"])',
      'rule[1]: to: no operation matches (to[0] paths: "/private" is not in ["/public/*"])',
    ]);
  });
});
