import { X509Certificate } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseBundle, TrustBundle, TrustBundleSet } from '../../../src/identity/bundle.js';
import {
  createCa,
  issueCertificate,
  issueSvid,
  KeyUsage,
  type PemPair,
} from '../../../src/identity/dev-ca.js';
import { leafSpiffeId, SvidError } from '../../../src/identity/svid.js';
import { PeerError, verifyPeer } from '../../../src/identity/verify-peer.js';

const ID = 'spiffe://example.org/ns/default/sa/web';
const x = (p: PemPair): X509Certificate => new X509Certificate(p.certPem);
const DS = KeyUsage.digitalSignature;

function ruleOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof SvidError) return err.rule;
    if (err instanceof PeerError) return err.reason;
    throw err;
  }
  return 'accepted';
}

describe('X.509-SVID leaf rules', () => {
  let ca: PemPair;
  beforeAll(async () => {
    ca = await createCa('example.org');
  });

  it('accepts an SVID from the dev CA and returns its SPIFFE ID', async () => {
    const svid = await issueSvid(ca, ID);
    expect(leafSpiffeId(x(svid)).id).toBe(ID);
  });

  const cases: [string, () => Promise<PemPair>, string][] = [
    [
      'two URI SANs',
      () => issueCertificate(ca, { commonName: 'w', uris: [ID, 'spiffe://example.org/other'], keyUsage: DS }),
      'uri-san-count',
    ],
    [
      'no URI SAN',
      () => issueCertificate(ca, { commonName: 'w', dnsNames: ['web'], keyUsage: DS }),
      'uri-san-count',
    ],
    [
      'a non-SPIFFE URI SAN',
      () => issueCertificate(ca, { commonName: 'w', uris: ['https://example.org/web'], keyUsage: DS }),
      'spiffe-id',
    ],
    [
      'an invalid SPIFFE ID',
      () => issueCertificate(ca, { commonName: 'w', uris: ['spiffe://example.org/a/../b'], keyUsage: DS }),
      'spiffe-id',
    ],
    [
      "the trust domain's own ID (no path)",
      () => issueCertificate(ca, { commonName: 'w', uris: ['spiffe://example.org'], keyUsage: DS }),
      'no-path',
    ],
    [
      'cA=true',
      () => issueCertificate(ca, { commonName: 'w', uris: [ID], isCa: true, keyUsage: DS }),
      'ca-leaf',
    ],
    [
      'no keyUsage extension',
      () => issueCertificate(ca, { commonName: 'w', uris: [ID], keyUsage: null }),
      'key-usage-missing',
    ],
    [
      'keyAgreement without digitalSignature',
      () => issueCertificate(ca, { commonName: 'w', uris: [ID], keyUsage: KeyUsage.keyAgreement }),
      'digital-signature',
    ],
    [
      'keyEncipherment only',
      () => issueCertificate(ca, { commonName: 'w', uris: [ID], keyUsage: KeyUsage.keyEncipherment }),
      'digital-signature',
    ],
    [
      'keyCertSign',
      () => issueCertificate(ca, { commonName: 'w', uris: [ID], keyUsage: DS | KeyUsage.keyCertSign }),
      'key-cert-sign',
    ],
    [
      'cRLSign',
      () => issueCertificate(ca, { commonName: 'w', uris: [ID], keyUsage: DS | KeyUsage.cRLSign }),
      'crl-sign',
    ],
  ];
  it.each(cases)('refuses a leaf with %s', async (_name, make, rule) => {
    const cert = x(await make());
    expect(ruleOf(() => leafSpiffeId(cert))).toBe(rule);
  });

  it('accepts keyEncipherment and keyAgreement beside digitalSignature', async () => {
    const cert = x(
      await issueCertificate(ca, {
        commonName: 'w',
        uris: [ID],
        keyUsage: DS | KeyUsage.keyEncipherment | KeyUsage.keyAgreement,
      }),
    );
    expect(leafSpiffeId(cert).id).toBe(ID);
  });
});

describe('peer verification against the bundle of the peer own trust domain', () => {
  let caA: PemPair;
  let caB: PemPair;
  let bundles: TrustBundleSet;
  beforeAll(async () => {
    caA = await createCa('example.org');
    caB = await createCa('partner.test');
    bundles = new TrustBundleSet([
      parseBundle('example.org', caA.certPem),
      parseBundle('partner.test', caB.certPem),
    ]);
  });

  it('verifies a direct SVID and computes the XFCC hash', async () => {
    const leaf = x(await issueSvid(caA, ID));
    const peer = verifyPeer(leaf, [], bundles);
    expect(peer.spiffeId.id).toBe(ID);
    expect(peer.certHash).toMatch(/^[0-9a-f]{64}$/);
  });

  it('verifies a chain through an intermediate CA the peer presents', async () => {
    const inter = await issueCertificate(caA, {
      commonName: 'intermediate',
      isCa: true,
      uris: ['spiffe://example.org'],
    });
    const leaf = await issueSvid(inter, ID);
    expect(verifyPeer(x(leaf), [x(inter)], bundles).spiffeId.id).toBe(ID);
    // Without the intermediate there is no path to the root.
    expect(ruleOf(() => verifyPeer(x(leaf), [], bundles))).toBe('untrusted-chain');
  });

  it('refuses a peer whose certificate names another trust domain than its issuer (cross-domain minting)', async () => {
    // Trust domain B's CA is trusted, for B. It must not be able to speak for A.
    const forged = await issueSvid(caB, ID);
    expect(ruleOf(() => verifyPeer(x(forged), [], bundles))).toBe('untrusted-chain');
  });

  it('refuses a peer from a trust domain with no bundle', async () => {
    const leaf = await issueSvid(caA, 'spiffe://unknown.test/ns/a/sa/b');
    expect(ruleOf(() => verifyPeer(x(leaf), [], bundles))).toBe('unknown-trust-domain');
  });

  it('refuses a peer from an untrusted CA that claims a trusted trust domain', async () => {
    const rogue = await createCa('example.org');
    const leaf = await issueSvid(rogue, ID);
    expect(ruleOf(() => verifyPeer(x(leaf), [x(rogue)], bundles))).toBe('untrusted-chain');
  });

  it('refuses expired and not-yet-valid leaves', async () => {
    const past = new Date(Date.now() - 3 * 86_400_000);
    const expired = await issueCertificate(caA, {
      commonName: 'w',
      uris: [ID],
      keyUsage: DS,
      notBefore: past,
      notAfter: new Date(past.getTime() + 86_400_000),
    });
    expect(ruleOf(() => verifyPeer(x(expired), [], bundles))).toBe('expired');
    const future = new Date(Date.now() + 86_400_000);
    const early = await issueCertificate(caA, {
      commonName: 'w',
      uris: [ID],
      keyUsage: DS,
      notBefore: future,
    });
    expect(ruleOf(() => verifyPeer(x(early), [], bundles))).toBe('not-yet-valid');
  });

  it('refuses no certificate at all, and a leaf that is itself in the bundle', async () => {
    expect(ruleOf(() => verifyPeer(undefined, [], bundles))).toBe('no-certificate');
    const selfSigned = await issueSvid(caA, ID);
    // parseBundle refuses a non-CA certificate; build the bundle by hand to reach the peer check.
    const withLeaf = new TrustBundleSet([new TrustBundle('example.org', [x(caA), x(selfSigned)])]);
    expect(ruleOf(() => verifyPeer(x(selfSigned), [], withLeaf))).toBe('leaf-is-root');
  });

  it('ignores a self-signed certificate the peer sends as if it were an intermediate', async () => {
    const rogue = await createCa('example.org');
    const leaf = await issueSvid(rogue, ID);
    expect(ruleOf(() => verifyPeer(x(leaf), [x(rogue), x(caA)], bundles))).toBe('untrusted-chain');
  });
});
