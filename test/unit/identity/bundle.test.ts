import { X509Certificate } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseBundle } from '../../../src/identity/bundle.js';
import { createCa, issueSvid, type PemPair } from '../../../src/identity/dev-ca.js';

function spiffeBundle(...certs: PemPair[]): string {
  return JSON.stringify({
    spiffe_sequence: 3,
    keys: [
      ...certs.map((c) => ({
        use: 'x509-svid',
        kty: 'EC',
        crv: 'P-256',
        x5c: [new X509Certificate(c.certPem).raw.toString('base64')],
      })),
      { use: 'jwt-svid', kty: 'EC', crv: 'P-256', kid: 'k1', x: 'AA', y: 'AA' },
    ],
  });
}

describe('trust bundles', () => {
  let ca1: PemPair;
  let ca2: PemPair;
  beforeAll(async () => {
    ca1 = await createCa('example.org');
    ca2 = await createCa('example.org');
  });

  it('reads several roots from PEM', () => {
    const b = parseBundle('example.org', ca1.certPem + ca2.certPem);
    expect(b.roots).toHaveLength(2);
    expect(b.has(new X509Certificate(ca2.certPem))).toBe(true);
  });

  it('reads the x509-svid authorities of a SPIFFE bundle and skips jwt-svid keys', () => {
    const b = parseBundle('example.org', spiffeBundle(ca1, ca2));
    expect(b.roots.map((r) => r.fingerprint256)).toEqual(
      [ca1, ca2].map((c) => new X509Certificate(c.certPem).fingerprint256),
    );
  });

  it.each([
    ['empty text', '', 'holds no certificate'],
    [
      'a truncated PEM block',
      '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n',
      'does not parse',
    ],
    ['bad JSON', '{"keys": [', 'not valid JSON'],
    ['JSON without keys', '{"spiffe_sequence": 1}', 'no "keys" array'],
    ['two certificates in one x5c', 'TWO_X5C', 'exactly one x5c'],
    ['a JWKS with only JWT keys', '{"keys":[{"use":"jwt-svid","kty":"EC"}]}', 'holds no certificate'],
  ])('refuses %s', (_name, text, message) => {
    const input =
      text === 'TWO_X5C' ? JSON.stringify({ keys: [{ use: 'x509-svid', x5c: ['AA', 'BB'] }] }) : text;
    expect(() => parseBundle('example.org', input)).toThrow(message);
  });

  it('refuses a leaf certificate as a trust anchor', async () => {
    const leaf = await issueSvid(ca1, 'spiffe://example.org/x');
    expect(() => parseBundle('example.org', leaf.certPem)).toThrow('is not a CA certificate');
  });
});
