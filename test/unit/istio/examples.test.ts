import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { resolvePeerAuthn } from '../../../src/authn/peer-authn.js';
import { configFromObject, loadConfigFile } from '../../../src/config/load.js';
import { loadPolicies } from '../../../src/istio/load.js';

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

  it('the sidecar manifest embeds a valid config and policy', () => {
    const file = join(ROOT, 'examples/sidecar/portcullis-sidecar.yaml');
    const cm = parseAllDocuments(readFileSync(file, 'utf8'))
      .map((d) => d.toJS() as { kind: string; data?: Record<string, string> })
      .find((d) => d.kind === 'ConfigMap');
    const data = cm?.data ?? {};
    const cfg = parseAllDocuments(data['portcullis.yaml'] ?? '')[0]?.toJS();
    expect(configFromObject(cfg, dirname(file)).listeners[0]?.upstream).toBe('http://127.0.0.1:8080');
    const policy = parseAllDocuments(data['mtls.yaml'] ?? '')[0]?.toJS() as { kind: string };
    expect(policy.kind).toBe('PeerAuthentication');
  });
});
