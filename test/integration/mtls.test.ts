import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCa, issueCertificate, issueSvid, KeyUsage, type PemPair } from '../../src/identity/dev-ca.js';
import { request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import type { EchoReply } from '../helpers/upstream.js';

const WEB = 'spiffe://example.org/ns/default/sa/web';

/** Makes one request and reports the status, or the error code of a refused connection. */
async function outcome(url: string, opts: Parameters<typeof request>[1]): Promise<string> {
  try {
    const res = await request(url, opts);
    return `HTTP ${res.status}`;
  } catch (err) {
    return `refused (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`;
  }
}

const STRICT_MESH = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: istio-system }
spec: { mtls: { mode: STRICT } }
`;

describe('STRICT: every peer must present a valid X.509-SVID of a trusted trust domain', () => {
  let h: Harness;
  let rejectedBefore: number;
  beforeAll(async () => {
    h = await startHarness({ policies: STRICT_MESH });
  });
  afterAll(() => h.close());

  it('forwards for a valid SVID, with the proxy-made XFCC', async () => {
    const res = await request(`${h.url}/ok`, h.client);
    expect(res.status).toBe(200);
    const echo = JSON.parse(res.text) as EchoReply;
    expect(echo.headers['x-forwarded-client-cert']).toBe(
      `By=spiffe://example.org/ns/default/sa/api;Hash=${echo.headers['x-forwarded-client-cert']?.toString().split(';')[1]?.slice(5)};URI=${WEB}`,
    );
    expect(echo.headers['x-forwarded-proto']).toBe('https');
    expect(echo.headers['x-forwarded-for']).toBe('127.0.0.1');
  });

  // Each certificate is one the X.509-SVID rules refuse. Where OpenSSL lets it through, the SPIFFE
  // check must catch it: the expected reason says which layer refused.
  const BAD: [string, (ca: PemPair) => Promise<PemPair>, string][] = [
    [
      'two URI SANs',
      (ca) =>
        issueCertificate(ca, {
          commonName: 'w',
          uris: [WEB, 'spiffe://example.org/ns/default/sa/admin'],
          keyUsage: KeyUsage.digitalSignature,
        }),
      'uri-san-count',
    ],
    [
      "the trust domain's own ID, without a path (X.509-SVID §3.1: a leaf's ID has a non-root path)",
      (ca) =>
        issueCertificate(ca, {
          commonName: 'w',
          uris: ['spiffe://example.org'],
          keyUsage: KeyUsage.digitalSignature,
        }),
      'no-path',
    ],
    [
      'cA=true on the leaf',
      (ca) =>
        issueCertificate(ca, {
          commonName: 'w',
          uris: [WEB],
          isCa: true,
          keyUsage: KeyUsage.digitalSignature,
        }),
      'ca-leaf',
    ],
    [
      'no digitalSignature (keyAgreement only)',
      (ca) => issueCertificate(ca, { commonName: 'w', uris: [WEB], keyUsage: KeyUsage.keyAgreement }),
      'digital-signature',
    ],
    [
      'keyCertSign on the leaf',
      (ca) =>
        issueCertificate(ca, {
          commonName: 'w',
          uris: [WEB],
          keyUsage: KeyUsage.digitalSignature | KeyUsage.keyCertSign,
        }),
      'key-cert-sign',
    ],
    [
      'a trust domain that has no bundle',
      (ca) => issueSvid(ca, 'spiffe://attacker.test/ns/default/sa/web'),
      'unknown-trust-domain',
    ],
    [
      'an expired certificate',
      (ca) => {
        const t = new Date(Date.now() - 2 * 86_400_000);
        return issueCertificate(ca, {
          commonName: 'w',
          uris: [WEB],
          keyUsage: KeyUsage.digitalSignature,
          notBefore: t,
          notAfter: new Date(t.getTime() + 3_600_000),
        });
      },
      'openssl',
    ],
    ['a certificate from another CA', async () => issueSvid(await createCa('example.org'), WEB), 'openssl'],
  ];

  it.each(BAD)('refuses %s, before any request reaches the upstream', async (_name, make, layer) => {
    const before = h.upstream.requests;
    const stats = h.proxy.listeners[0]!.stats;
    rejectedBefore = stats.peersRejected.get(layer) ?? 0;
    const tlsBefore = [...stats.tlsFailures.values()].reduce((a, b) => a + b, 0);
    const bad = await make(h.pki.ca);
    // With TLS 1.3 the client's handshake completes before the server judges its certificate; the
    // refusal arrives on the first read, as a reset or an alert.
    const result = await outcome(`${h.url}/should-not-arrive`, {
      cert: bad.certPem,
      key: bad.keyPem,
      ca: h.pki.ca.certPem,
    });
    expect(result).toMatch(/^refused/);
    expect(h.upstream.requests).toBe(before);
    if (layer === 'openssl') {
      expect([...stats.tlsFailures.values()].reduce((a, b) => a + b, 0)).toBe(tlsBefore + 1);
    } else {
      expect(stats.peersRejected.get(layer)).toBe(rejectedBefore + 1);
    }
  });

  it('refuses a client without a certificate, and plaintext HTTP', async () => {
    expect(await outcome(`${h.url}/x`, { ca: h.pki.ca.certPem })).toMatch(
      /^refused \((ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED|ECONNRESET)/,
    );
    expect(await outcome(`http://127.0.0.1:${h.port}/x`, {})).toMatch(/^refused/);
  });

  it('keeps serving valid peers after refusing bad ones', async () => {
    expect((await request(`${h.url}/after`, h.client)).status).toBe(200);
  });
});

describe('PERMISSIVE: mTLS and plaintext on one port, told apart by the first byte', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({
      policies: `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: api, namespace: default }
spec:
  selector: { matchLabels: { app: api } }
  mtls: { mode: PERMISSIVE }
`,
    });
  });
  afterAll(() => h.close());

  it('serves mTLS with XFCC and plaintext without, and strips a spoofed XFCC from plaintext', async () => {
    const tlsRes = JSON.parse((await request(`${h.url}/a`, h.client)).text) as EchoReply;
    expect(tlsRes.headers['x-forwarded-client-cert']).toContain(`URI=${WEB}`);
    const plain = await request(`http://127.0.0.1:${h.port}/b`, {
      headers: { 'x-forwarded-client-cert': 'By=x;Hash=00;URI=spiffe://example.org/ns/default/sa/admin' },
    });
    expect(plain.status).toBe(200);
    const echo = JSON.parse(plain.text) as EchoReply;
    expect(echo.url).toBe('/b');
    expect(echo.headers['x-forwarded-client-cert']).toBeUndefined();
    expect(echo.headers['x-forwarded-proto']).toBe('http');
  });

  it('still requires a valid client certificate on the TLS side', async () => {
    expect(await outcome(`${h.url}/x`, { ca: h.pki.ca.certPem })).toMatch(/^refused/);
  });

  it('serves a plaintext client that sends its request in one byte at a time', async () => {
    const net = await import('node:net');
    const text = await new Promise<string>((resolve, reject) => {
      const sock = net.connect(h.port, '127.0.0.1', async () => {
        const req = 'GET /trickle HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';
        for (const ch of req) {
          sock.write(ch);
          await new Promise((r) => setTimeout(r, 1));
        }
      });
      let out = '';
      sock.on('data', (d) => (out += d));
      sock.on('end', () => resolve(out));
      sock.on('error', reject);
    });
    expect(text).toMatch(/^HTTP\/1\.1 200/);
    expect(text).toContain('"/trickle"');
  });
});

describe('DISABLE: plaintext only', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({
      policies: `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: default }
spec: { mtls: { mode: DISABLE } }
`,
    });
  });
  afterAll(() => h.close());

  it('serves plaintext and does not speak TLS', async () => {
    expect((await request(`http://127.0.0.1:${h.port}/p`, {})).status).toBe(200);
    expect(await outcome(`${h.url}/x`, h.client)).toMatch(/^refused/);
  });
});

describe('XFCC cannot be spoofed over mTLS', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(() => h.close());

  it('replaces every client-sent XFCC header, whatever its case', async () => {
    const res = await request(`${h.url}/spoof`, {
      ...h.client,
      headers: {
        'X-Forwarded-Client-Cert':
          'By=spiffe://example.org/ns/default/sa/api;URI=spiffe://example.org/ns/kube-system/sa/admin',
        'x-forwarded-client-cert': 'URI=spiffe://example.org/ns/x/sa/root',
      },
    });
    const echo = JSON.parse(res.text) as EchoReply;
    const xfcc = echo.rawHeaders.filter(
      (_, i) => i % 2 === 0 && echo.rawHeaders[i]?.toLowerCase() === 'x-forwarded-client-cert',
    );
    expect(xfcc).toHaveLength(1);
    expect(echo.headers['x-forwarded-client-cert']).toMatch(
      new RegExp(`;URI=${WEB.replaceAll('/', '\\/')}$`),
    );
    expect(String(echo.headers['x-forwarded-client-cert'])).not.toContain('admin');
  });
});
