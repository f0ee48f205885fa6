import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolvePeerAuthn } from '../../../src/authn/peer-authn.js';
import type { ConfigError } from '../../../src/errors.js';
import { loadPolicies } from '../../../src/istio/load.js';
import { TempDir } from '../../helpers/pki.js';

const WORKLOAD = { namespace: 'default', labels: { app: 'api', version: 'v1' } };

function pa(name: string, namespace: string, spec: string): string {
  return `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: ${name}, namespace: ${namespace} }
spec:
${spec
  .split('\n')
  .map((l) => `  ${l}`)
  .join('\n')}
---
`;
}

describe('PeerAuthentication', () => {
  let dir: TempDir;
  beforeAll(() => {
    dir = new TempDir();
  });
  afterAll(() => dir.cleanup());

  function resolve(yaml: string, port = 8080): { mode: string; source: string } {
    const f = dir.write(`p-${Math.random().toString(36).slice(2)}.yaml`, yaml);
    const set = loadPolicies([f], 'default');
    return resolvePeerAuthn(set.peerAuthentications, WORKLOAD, 'istio-system', port);
  }

  function problems(yaml: string): string[] {
    const f = dir.write(`bad-${Math.random().toString(36).slice(2)}.yaml`, yaml);
    try {
      loadPolicies([f], 'default');
    } catch (err) {
      return (err as ConfigError).issues.map((i) => `${i.field}: ${i.message}`);
    }
    return [];
  }

  it('defaults to STRICT when no policy sets a mode (unlike Istio, which defaults to PERMISSIVE)', () => {
    expect(resolve('')).toEqual({ mode: 'STRICT', source: 'default (no PeerAuthentication sets a mode)' });
    expect(resolve(pa('d', 'istio-system', 'mtls: {}'))).toMatchObject({ mode: 'STRICT' });
  });

  // [policies, port, expected mode, deciding policy]
  const PRECEDENCE: [string, string, number, string, string][] = [
    [
      'mesh-wide applies',
      pa('mesh', 'istio-system', 'mtls: { mode: PERMISSIVE }'),
      8080,
      'PERMISSIVE',
      'istio-system/mesh',
    ],
    [
      'namespace beats mesh',
      pa('mesh', 'istio-system', 'mtls: { mode: PERMISSIVE }') +
        pa('ns', 'default', 'mtls: { mode: DISABLE }'),
      8080,
      'DISABLE',
      'default/ns',
    ],
    [
      'workload beats namespace',
      pa('ns', 'default', 'mtls: { mode: DISABLE }') +
        pa('wl', 'default', 'selector: { matchLabels: { app: api } }\nmtls: { mode: STRICT }'),
      8080,
      'STRICT',
      'default/wl',
    ],
    [
      'UNSET at workload level inherits from the namespace',
      pa('ns', 'default', 'mtls: { mode: PERMISSIVE }') +
        pa('wl', 'default', 'selector: { matchLabels: { app: api } }\nmtls: { mode: UNSET }'),
      8080,
      'PERMISSIVE',
      'default/ns',
    ],
    [
      'a selector that does not match is ignored',
      pa('mesh', 'istio-system', 'mtls: { mode: PERMISSIVE }') +
        pa('wl', 'default', 'selector: { matchLabels: { app: other } }\nmtls: { mode: DISABLE }'),
      8080,
      'PERMISSIVE',
      'istio-system/mesh',
    ],
    [
      'another namespace is ignored',
      pa('mesh', 'istio-system', 'mtls: { mode: STRICT }') + pa('ns', 'payments', 'mtls: { mode: DISABLE }'),
      8080,
      'STRICT',
      'istio-system/mesh',
    ],
    [
      'port-level beats the workload mode on that port',
      pa(
        'wl',
        'default',
        'selector: { matchLabels: { app: api } }\nmtls: { mode: STRICT }\nportLevelMtls: { 8080: { mode: PERMISSIVE } }',
      ),
      8080,
      'PERMISSIVE',
      'default/wl (port 8080)',
    ],
    [
      'port-level does not touch other ports',
      pa(
        'wl',
        'default',
        'selector: { matchLabels: { app: api } }\nmtls: { mode: STRICT }\nportLevelMtls: { 9090: { mode: DISABLE } }',
      ),
      8080,
      'STRICT',
      'default/wl',
    ],
    [
      'port-level UNSET inherits the workload mode',
      pa('ns', 'default', 'mtls: { mode: DISABLE }') +
        pa(
          'wl',
          'default',
          'selector: { matchLabels: { app: api } }\nportLevelMtls: { 8080: { mode: UNSET } }',
        ),
      8080,
      'DISABLE',
      'default/ns',
    ],
    [
      'a root-namespace policy with a selector is not mesh-wide',
      pa('sel', 'istio-system', 'selector: { matchLabels: { app: api } }\nmtls: { mode: DISABLE }'),
      8080,
      'STRICT',
      'default',
    ],
    [
      'the first loaded wins a tie at one level',
      pa('a', 'default', 'mtls: { mode: PERMISSIVE }') + pa('b', 'default', 'mtls: { mode: DISABLE }'),
      8080,
      'PERMISSIVE',
      'default/a',
    ],
  ];
  it.each(PRECEDENCE)('%s', (_name, yaml, port, mode, source) => {
    const r = resolve(yaml, port);
    expect(r.mode).toBe(mode);
    expect(r.source).toContain(source);
  });

  it('takes v1beta1 and a namespace-less resource as the workload namespace', () => {
    const yaml =
      'apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: { name: x }\nspec: { mtls: { mode: DISABLE } }\n';
    expect(resolve(yaml)).toMatchObject({ mode: 'DISABLE', source: 'PeerAuthentication default/x' });
  });

  it('skips other Kubernetes resources in the same files', () => {
    const yaml =
      'apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: api }\n---\n' +
      pa('x', 'default', 'mtls: { mode: PERMISSIVE }');
    expect(resolve(yaml).mode).toBe('PERMISSIVE');
  });

  it.each([
    [
      pa('x', 'default', 'mtls: { mode: strict }'),
      'PeerAuthentication default/x: spec.mtls.mode: must be one of',
    ],
    [
      pa('x', 'default', 'mtls: { mode: STRICT }\nportLevelMtls: { 8080: { mode: DISABLE } }'),
      'spec.portLevelMtls: needs spec.selector',
    ],
    [
      pa(
        'x',
        'default',
        'selector: { matchLabels: { app: api } }\nportLevelMtls: { http: { mode: DISABLE } }',
      ),
      'spec.portLevelMtls.http: the key must be a port number',
    ],
    [pa('x', 'default', 'mtls: { mode: STRICT, strict: true }'), 'spec.mtls.strict: unknown field'],
    [pa('x', 'default', 'mtlsMode: STRICT'), 'spec.mtlsMode: unknown field'],
    [
      pa('x', 'default', 'selector: { matchLabels: { version: 1 } }'),
      'spec.selector.matchLabels.version: label values are strings',
    ],
    [
      'apiVersion: security.istio.io/v2\nkind: PeerAuthentication\nmetadata: { name: x }\n',
      'document 1.apiVersion: unsupported apiVersion',
    ],
    [
      'apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {}\n',
      'document 1.metadata.name: is required',
    ],
    [
      'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: deny-all }\nspec: { action: DENY }\n',
      'AuthorizationPolicy default/deny-all: spec.rules: a DENY policy needs at least one rule',
    ],
    [
      'apiVersion: security.istio.io/v1\nkind: Sidecar\nmetadata: { name: s }\n',
      'unknown security.istio.io kind "Sidecar"',
    ],
    ['apiVersion: security.istio.io/v1\nkind: [\n', 'YAML syntax error at line'],
  ])('refuses an invalid resource, naming it and the field (%#)', (yaml, expected) => {
    const found = problems(yaml);
    expect(
      found.some((p) => p.includes(expected)),
      `got: ${found.join(' | ')}`,
    ).toBe(true);
  });

  it('names the file of a policy problem and of a missing path', () => {
    const f = dir.write('named.yaml', pa('x', 'default', 'mtls: { mode: NOPE }'));
    try {
      loadPolicies([f, dir.file('absent')], 'default');
      expect.unreachable();
    } catch (err) {
      const e = err as ConfigError;
      expect(e.code).toBe('ERR_POLICY_INVALID');
      expect(e.issues.map((i) => i.file)).toEqual([dir.file('absent'), f]);
    }
  });
});
