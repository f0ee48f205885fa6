import { describe, expect, it } from 'vitest';
import type { ResourceMeta } from '../../../src/istio/load.js';
import { parseRequestAuthentication } from '../../../src/istio/request-authentication.js';
import { appliesTo } from '../../../src/istio/selector.js';

const META: ResourceMeta = {
  name: 'jwt',
  namespace: 'default',
  annotations: {},
  origin: { file: 'f.yaml', index: 0 },
};
const JWK = {
  kty: 'EC',
  crv: 'P-256',
  x: 'f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU',
  y: 'x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0',
};

function parse(spec: unknown): { result: ReturnType<typeof parseRequestAuthentication>; problems: string[] } {
  const problems: string[] = [];
  const result = parseRequestAuthentication(META, spec, (f, m) => problems.push(`${f}: ${m}`));
  return { result, problems };
}

describe('RequestAuthentication parsing', () => {
  it('reads every jwtRules field with Istio defaults', () => {
    const { result, problems } = parse({
      selector: { matchLabels: { app: 'api' } },
      jwtRules: [
        { issuer: 'https://a.example', jwksUri: 'https://a.example/jwks' },
        {
          issuer: 'https://b.example',
          jwks: JSON.stringify({ keys: [JWK] }),
          audiences: ['api'],
          fromHeaders: [{ name: 'X-Token', prefix: 'Token ' }, { name: 'x-raw' }],
          fromParams: ['t'],
          fromCookies: ['session'],
          outputPayloadToHeader: 'X-Payload',
          forwardOriginalToken: true,
          outputClaimToHeaders: [{ header: 'X-Group', claim: 'groups.primary' }],
          timeout: '2s',
        },
      ],
    });
    expect(problems).toEqual([]);
    const [a, b] = result?.rules ?? [];
    expect(a).toMatchObject({
      defaultLocations: true,
      forwardOriginalToken: false,
      timeoutMs: 5000,
      audiences: [],
    });
    expect(b).toMatchObject({
      defaultLocations: false,
      fromHeaders: [
        { name: 'x-token', prefix: 'Token ' },
        { name: 'x-raw', prefix: '' },
      ],
      outputPayloadToHeader: 'x-payload',
      outputClaimToHeaders: [{ header: 'x-group', claim: ['groups', 'primary'] }],
      timeoutMs: 2000,
      source: 'RequestAuthentication default/jwt jwtRules[1]',
    });
  });

  it.each([
    [{ jwtRules: [{ jwksUri: 'https://a/jwks' }] }, 'spec.jwtRules[0].issuer: is required'],
    [
      { jwtRules: [{ issuer: 'i', jwksUri: 'https://a/j', jwks: '{"keys":[]}' }] },
      'spec.jwtRules[0]: set jwksUri or jwks, not both',
    ],
    [
      { jwtRules: [{ issuer: 'i', jwksUri: 'ftp://a/j' }] },
      'spec.jwtRules[0].jwksUri: must be an https://, http:// or file:// URL',
    ],
    [{ jwtRules: [{ issuer: 'i', jwks: 'not json' }] }, 'spec.jwtRules[0].jwks: is not valid JSON'],
    [
      { jwtRules: [{ issuer: 'i', jwks: '{"keys":[{"kty":"oct","k":"AA"}]}' }] },
      'holds no RSA, EC or OKP public key',
    ],
    [
      { jwtRules: [{ issuer: 'i', fromHeaders: [{ name: 'bad header' }] }] },
      'spec.jwtRules[0].fromHeaders[0].name: must be an HTTP header name',
    ],
    [
      { jwtRules: [{ issuer: 'i', outputClaimToHeaders: [{ header: 'x', claim: 'a..b' }] }] },
      'outputClaimToHeaders[0].claim: must be a claim name',
    ],
    [{ jwtRules: [{ issuer: 'i', timeout: 'soon' }] }, 'spec.jwtRules[0].timeout: must be a duration'],
    [
      { jwtRules: [{ issuer: 'i', forwardOriginalToken: 'yes' }] },
      'forwardOriginalToken: must be true or false',
    ],
    [{ jwtRules: [{ issuer: 'i', audience: ['x'] }] }, 'spec.jwtRules[0].audience: unknown field'],
    [
      { targetRef: { kind: 'Gateway', name: 'g' } },
      'spec.targetRef: targetRef (Gateway API) is not supported',
    ],
  ])('refuses %j', (spec, expected) => {
    const { result, problems } = parse(spec);
    expect(result).toBeNull();
    expect(
      problems.some((p) => p.includes(expected)),
      problems.join(' | '),
    ).toBe(true);
  });

  it('scopes like Istio: own namespace, or every namespace from the root; selectors match labels', () => {
    const wl = { namespace: 'default', labels: { app: 'api' } };
    expect(appliesTo('default', null, wl, 'istio-system')).toBe(true);
    expect(appliesTo('istio-system', null, wl, 'istio-system')).toBe(true);
    expect(appliesTo('istio-system', { app: 'api' }, wl, 'istio-system')).toBe(true);
    expect(appliesTo('istio-system', { app: 'web' }, wl, 'istio-system')).toBe(false);
    expect(appliesTo('payments', null, wl, 'istio-system')).toBe(false);
    expect(appliesTo('default', { app: 'api', version: 'v2' }, wl, 'istio-system')).toBe(false);
  });
});
