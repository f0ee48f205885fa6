import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { resolvePeerAuthn } from '../../../src/authn/peer-authn.js';
import { Authorizer, Decision } from '../../../src/authz/compile.js';
import { referenceDecide } from '../../../src/authz/reference.js';
import { loadConfigFile } from '../../../src/config/load.js';
import { loadPolicies } from '../../../src/istio/load.js';
import { appliesTo } from '../../../src/istio/selector.js';
import { attrs } from '../../helpers/authz.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

describe('shipped examples stay valid', () => {
  it('policies/ loads and means what its README says', () => {
    const set = loadPolicies([join(ROOT, 'policies/peer-authentication')], 'default');
    const pas = set.peerAuthentications;
    expect(pas).toHaveLength(3);
    const api = { namespace: 'default', labels: { app: 'api' } };
    expect(resolvePeerAuthn(pas, api, 'istio-system', 8080).mode).toBe('STRICT');
    expect(resolvePeerAuthn(pas, api, 'istio-system', 9090).mode).toBe('DISABLE');
    expect(resolvePeerAuthn(pas, { namespace: 'legacy', labels: {} }, 'istio-system', 8080).mode).toBe(
      'PERMISSIVE',
    );
    expect(resolvePeerAuthn(pas, { namespace: 'other', labels: {} }, 'istio-system', 8080).mode).toBe(
      'STRICT',
    );
  });

  it.each(['examples/demo/policies', 'examples/quickstart/policies', 'examples/edge-gateway/policies'])(
    '%s loads',
    (p) => {
      expect(loadPolicies([join(ROOT, p)], 'default').peerAuthentications.length).toBeGreaterThan(0);
    },
  );

  it.each(['examples/quickstart/portcullis.yaml', 'examples/edge-gateway/portcullis.yaml'])(
    '%s passes the schema',
    (f) => {
      expect(loadConfigFile(join(ROOT, f)).listeners.length).toBe(1);
    },
  );

  it('policies/request-authentication loads', () => {
    const set = loadPolicies([join(ROOT, 'policies/request-authentication')], 'default');
    expect(set.requestAuthentications.map((r) => r.rules[0]?.issuer)).toEqual(['https://auth.example.com']);
  });
});

describe('policies/authorization-policy enforce as Istio would', () => {
  const set = loadPolicies([join(ROOT, 'policies/authorization-policy')], 'default').authorizationPolicies;
  const wl = { namespace: 'default', labels: { app: 'api' } };
  const applicable = set.filter((p) => appliesTo(p.meta.namespace, p.selector, wl, 'istio-system'));
  const authorizer = new Authorizer(applicable);
  const writer = { iss: 'https://auth.example.com', sub: 'w', groups: ['writers'] };

  it.each([
    ['web reads', {}, true],
    ['web reads a template path', { path: '/users/42/orders' }, true],
    ['web cannot write', { method: 'POST' }, false],
    ['db cannot read', { peerPrincipal: 'example.org/ns/default/sa/db' }, false],
    [
      'a writer token may write',
      { method: 'POST', requestPrincipal: 'https://auth.example.com/w', claims: writer },
      true,
    ],
    [
      'a reader token may not write',
      { method: 'POST', requestPrincipal: 'https://auth.example.com/r', claims: { groups: ['readers'] } },
      false,
    ],
    ['anyone reaches /healthz', { peerPrincipal: '', path: '/healthz' }, true],
    ['admin from default is denied', { path: '/admin/users' }, false],
    ['admin from ops is allowed by no ALLOW rule either', { path: '/admin', peerNamespace: 'ops' }, false],
  ] as const)('%s', (_name, over, allowed) => {
    const a = attrs({ path: '/api/items', ...over });
    const d = new Decision();
    authorizer.decide(a, d);
    expect(d.allowed).toBe(allowed);
    expect(referenceDecide(applicable, a).allowed).toBe(allowed);
  });

  it('marks payment calls for audit and records the dry-run without enforcing it', () => {
    const d = new Decision();
    authorizer.decide(attrs({ path: '/api/payments/7', remoteAddress: '198.51.100.1' }), d);
    expect(d.allowed).toBe(true);
    expect(d.auditPolicy?.id).toBe('default/audit-payments');
    expect(d.shadowDenyPolicy?.id).toBe('default/office-network-only');
  });
});
