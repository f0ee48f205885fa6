import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Authorizer, Decision } from '../../../src/authz/compile.js';
import { decidePartial, keysRead } from '../../../src/authz/partial.js';
import { referenceDecide } from '../../../src/authz/reference.js';
import { type Attrs, attrs, policy } from '../../helpers/authz.js';

/**
 * The compiled decision function must agree with the reference evaluator on any policy set and
 * request. Values come from small vocabularies so that random policies and requests meet often.
 */
const principals = ['example.org/ns/default/sa/web', 'example.org/ns/prod/sa/api', 'other.org/ns/x/sa/y', ''];
const principalPatterns = [
  'example.org/ns/default/sa/web',
  'example.org/*',
  '*/sa/api',
  '*',
  'other.org/ns/x/sa/y',
];
const paths = [
  '/',
  '/api',
  '/api/v1/users',
  '/api/v1/users/7/orders',
  '/admin/x',
  '/img/a.png',
  '/files/a/b',
];
const pathPatterns = [
  '/',
  '/api',
  '/api/*',
  '*.png',
  '*',
  '/admin*',
  '/api/v1/users/{*}/orders',
  '/files/{**}',
  '/{*}/v1/{**}',
];
const methods = ['GET', 'POST', 'DELETE'];
const ips = ['10.0.0.5', '10.1.2.3', '192.168.1.9', '::ffff:10.0.0.7', '2001:db8::1', '2001:db9::1'];
const ipPatterns = ['10.0.0.0/24', '10.0.0.0/8', '192.168.1.9', '2001:db8::/32', '0.0.0.0/0'];
const hosts = ['api.example.org', 'API.example.org:8443', 'web.example.org'];
const hostPatterns = ['api.example.org', '*.example.org', 'api.example.org:8443', '*'];
const claimValues = ['alice', 'bob', 'dev', 'ops'];
const claimPatterns = ['alice', 'dev', 'o*', '*'];

const pick = <T>(xs: T[]): fc.Arbitrary<T> => fc.constantFrom(...xs);
const some = <T>(xs: T[]): fc.Arbitrary<T[]> => fc.uniqueArray(pick(xs), { minLength: 1, maxLength: 3 });
const opt = <T>(a: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> => fc.option(a, { nil: undefined });

function compact(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
}

const source = fc
  .record({
    principals: opt(some(principalPatterns)),
    notPrincipals: opt(some(principalPatterns)),
    namespaces: opt(some(['default', 'prod', 'x'])),
    notNamespaces: opt(some(['default', 'prod'])),
    ipBlocks: opt(some(ipPatterns)),
    notIpBlocks: opt(some(ipPatterns)),
    requestPrincipals: opt(some(['https://idp/alice', 'https://idp/*', '*/bob', '*'])),
  })
  .map(compact)
  .filter((s) => Object.keys(s).length > 0)
  .map((s) => ({ source: s }));

const operation = fc
  .record({
    hosts: opt(some(hostPatterns)),
    notHosts: opt(some(hostPatterns)),
    methods: opt(some(methods)),
    notMethods: opt(some(methods)),
    paths: opt(some(pathPatterns)),
    notPaths: opt(some(pathPatterns)),
    ports: opt(some(['8080', '9090'])),
  })
  .map(compact)
  .filter((o) => Object.keys(o).length > 0)
  .map((o) => ({ operation: o }));

const condition = fc.oneof(
  fc.record({ key: fc.constant('request.headers[x-env]'), values: some(['prod', 'dev', 'p*']) }),
  fc.record({ key: fc.constant('request.headers[x-env]'), notValues: some(['prod', 'dev']) }),
  fc.record({ key: fc.constant('request.auth.claims[groups]'), values: some(claimPatterns) }),
  fc.record({ key: fc.constant('request.auth.claims[sub]'), notValues: some(claimPatterns) }),
  fc.record({ key: fc.constant('request.auth.claims[scope]'), values: some(['read', 'write:*', 'admin']) }),
  fc.record({ key: fc.constant('source.ip'), values: some(ipPatterns) }),
  fc.record({ key: fc.constant('request.auth.audiences'), values: some(['api', 'web']) }),
  fc.record({ key: fc.constant('destination.port'), notValues: some(['8080', '9090']) }),
);

const rule = fc
  .record({
    from: opt(fc.array(source, { minLength: 1, maxLength: 2 })),
    to: opt(fc.array(operation, { minLength: 1, maxLength: 2 })),
    when: opt(fc.array(condition, { minLength: 1, maxLength: 2 })),
  })
  .map(compact);

const policySpec = fc.record({
  action: pick(['ALLOW', 'DENY', 'AUDIT']),
  rules: opt(fc.array(rule, { minLength: 1, maxLength: 3 })),
  dryRun: fc.boolean(),
});

const policies = fc
  .array(policySpec, { maxLength: 5 })
  .map((specs) =>
    specs
      .filter((s) => s.action === 'ALLOW' || s.rules !== undefined)
      .map((s, i) => policy(compact({ action: s.action, rules: s.rules }), `p${i}`, { dryRun: s.dryRun })),
  );

const request = fc
  .record({
    peerPrincipal: pick(principals),
    peerNamespace: pick(['default', 'prod', '']),
    path: pick(paths),
    method: pick(methods),
    host: pick(hosts.map((h) => h.toLowerCase())),
    sourceAddress: pick(ips),
    destinationPort: pick([8080, 9090]),
    requestPrincipal: pick(['', 'https://idp/alice', 'https://other/bob']),
    env: opt(pick(['prod', 'dev', 'preview'])),
    groups: opt(some(claimValues)),
    sub: opt(pick(claimValues)),
    scope: opt(pick(['read', 'read write:orders', 'admin'])),
    audiences: fc.uniqueArray(pick(['api', 'web']), { maxLength: 2 }),
  })
  .map((r) =>
    attrs({
      peerPrincipal: r.peerPrincipal,
      peerNamespace: r.peerNamespace,
      path: r.path,
      method: r.method,
      host: r.host,
      sourceAddress: r.sourceAddress,
      destinationPort: r.destinationPort,
      requestPrincipal: r.requestPrincipal,
      headers: r.env === undefined ? {} : { 'x-env': r.env },
      claims: r.requestPrincipal === '' ? null : compact({ sub: r.sub, groups: r.groups, scope: r.scope }),
      audiences: r.audiences,
    }),
  );

describe('compiled policy agrees with the reference evaluator (property)', () => {
  it('on random policy sets and requests', () => {
    fc.assert(
      fc.property(policies, fc.array(request, { minLength: 1, maxLength: 8 }), (ps, reqs) => {
        const compiled = new Authorizer(ps);
        const out = new Decision();
        for (const a of reqs) {
          compiled.decide(a, out);
          const ref = referenceDecide(ps, a);
          expect({
            allowed: out.allowed,
            reason: out.reason,
            policy: out.policy?.id ?? null,
            rule: out.ruleIndex,
            audit: out.auditPolicy?.id ?? null,
            shadowDeny: out.shadowDenyPolicy?.id ?? null,
            shadowAllowed: out.shadowAllowed,
          }).toEqual({
            allowed: ref.allowed,
            reason: ref.reason,
            policy: ref.policy,
            rule: ref.ruleIndex,
            audit: ref.audit,
            shadowDeny: ref.shadowDeny,
            shadowAllowed: ref.shadowAllowed,
          });
        }
      }),
      { numRuns: 600 },
    );
  });
});

const KEYS = [
  'source.principal',
  'source.namespace',
  'source.ip',
  'request.auth.principal',
  'request.headers[x-env]',
  'request.auth.claims[groups]',
  'request.auth.claims[sub]',
  'request.auth.claims[scope]',
  'request.auth.audiences',
  'destination.port',
];

/** Other values each key could have had (the unknown's possible values, from the same vocabularies). */
const VARIANTS: Record<string, ((a: Attrs) => Attrs)[]> = {
  'source.principal': principals.map((v) => (a: Attrs) => ({ ...a, peerPrincipal: v })),
  'source.namespace': ['default', 'prod', ''].map((v) => (a: Attrs) => ({ ...a, peerNamespace: v })),
  'source.ip': ips.map((v) => (a: Attrs) => ({ ...a, sourceAddress: v })),
  'request.auth.principal': ['', 'https://idp/alice', 'https://other/bob'].map((v) => (a: Attrs) => ({
    ...a,
    requestPrincipal: v,
  })),
  'request.headers[x-env]': [undefined, 'prod', 'dev', 'preview'].map((v) => (a: Attrs) => ({
    ...a,
    headers: v === undefined ? {} : { 'x-env': v },
  })),
  'request.auth.claims[groups]': [undefined, ['ops'], ['dev', 'alice'], ['bob']].map((v) => (a: Attrs) => ({
    ...a,
    claims: { ...a.claims, groups: v },
  })),
  'request.auth.claims[sub]': [undefined, ...claimValues].map((v) => (a: Attrs) => ({
    ...a,
    claims: { ...a.claims, sub: v },
  })),
  'request.auth.claims[scope]': [undefined, 'read', 'read write:orders', 'admin'].map((v) => (a: Attrs) => ({
    ...a,
    claims: { ...a.claims, scope: v },
  })),
  'request.auth.audiences': [[], ['api'], ['web'], ['api', 'web']].map((v) => (a: Attrs) => ({
    ...a,
    audiences: v,
  })),
  'destination.port': [8080, 9090].map((v) => (a: Attrs) => ({ ...a, destinationPort: v })),
};

describe('deciding with attributes missing (replay) is sound (property)', () => {
  it('with every attribute known, decides as the reference evaluator', () => {
    fc.assert(
      fc.property(policies, fc.array(request, { minLength: 1, maxLength: 8 }), (ps, reqs) => {
        for (const a of reqs) {
          const ref = referenceDecide(ps, a);
          const p = decidePartial(ps, a, () => true);
          expect(p.outcome).toBe(ref.allowed ? 'allow' : 'deny');
          expect(p.reason).toBe(ref.reason);
          expect(p.missing).toEqual([]);
          if (ref.allowed) expect(p.policy).toBe(ref.policy);
        }
      }),
      { numRuns: 400 },
    );
  });

  it('with some unknown, decides only what no value of theirs could change, and names them otherwise', () => {
    let decided = 0;
    let undecided = 0;
    fc.assert(
      fc.property(
        policies,
        fc.array(request, { minLength: 1, maxLength: 8 }),
        fc.uniqueArray(pick(KEYS), { minLength: 1, maxLength: 4 }),
        (ps, reqs, unknown) => {
          const read = keysRead(ps);
          for (const a of reqs) {
            const p = decidePartial(ps, a, (k) => !unknown.includes(k));
            // The real values are one of the possible ones: a decision made without them must hold.
            const ref = referenceDecide(ps, a);
            if (p.outcome === 'unknown') {
              undecided++;
              expect(p.missing.length).toBeGreaterThan(0);
              for (const k of p.missing) {
                expect(unknown).toContain(k);
                expect(read.has(k)).toBe(true);
              }
            } else {
              decided++;
              expect(p.outcome).toBe(ref.allowed ? 'allow' : 'deny');
              // And had the unknown attributes held any other values, the outcome would be the same.
              for (let v = 0; v < 8; v++) {
                let other = a;
                unknown.forEach((k, i) => {
                  const vs = VARIANTS[k] as ((a: Attrs) => Attrs)[];
                  other = (vs[(v + i) % vs.length] as (a: Attrs) => Attrs)(other);
                });
                expect(referenceDecide(ps, other).allowed).toBe(p.outcome === 'allow');
              }
            }
          }
        },
      ),
      { numRuns: 600 },
    );
    // Both branches were exercised (the vocabularies are small enough for that).
    expect(decided).toBeGreaterThan(100);
    expect(undecided).toBeGreaterThan(20);
  });
});
