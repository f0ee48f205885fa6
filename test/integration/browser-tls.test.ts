import { X509Certificate } from 'node:crypto';
import http from 'node:http';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { createCa, issueCertificate, issueSvid, KeyUsage, type PemPair } from '../../src/identity/dev-ca.js';
import { FileSource } from '../../src/identity/source.js';
import { loadSnapshot } from '../../src/proxy/snapshot.js';
import { type ClientOptions, request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import { makePki, type TestPki } from '../helpers/pki.js';
import type { EchoReply } from '../helpers/upstream.js';

/**
 * Browser-facing TLS (`listeners[].tls`): the listener serves a certificate from an ordinary web CA,
 * and `clientCertificates` decides whether clients must (require), may (optional) or cannot (none)
 * present an X.509-SVID. Browsers connect without one; machine callers with SVIDs are still
 * identified on the same listener when it is optional.
 */

const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';

async function webCertificate(ca: PemPair): Promise<PemPair> {
  return issueCertificate(ca, {
    commonName: 'localhost',
    dnsNames: ['localhost'],
    keyUsage: KeyUsage.digitalSignature,
    extendedKeyUsage: [SERVER_AUTH],
  });
}

/** The fingerprint of the certificate a TLS client is served (verifying it with `ca`). */
function served(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({
      host: '127.0.0.1',
      port,
      servername: 'localhost',
      ca,
      ALPNProtocols: ['http/1.1'],
    });
    s.once('secureConnect', () => {
      resolve(s.getPeerX509Certificate()?.fingerprint256 ?? '');
      s.end();
    });
    s.once('error', reject);
  });
}

const POLICIES = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: default }
spec: { mtls: { mode: PERMISSIVE } }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: machines-only, namespace: default }
spec:
  selector: { matchLabels: { app: api } }
  action: DENY
  rules:
    - to: [{ operation: { paths: [/machines/*] } }]
      from: [{ source: { notPrincipals: ["*"] } }]
`;

describe('browser-facing TLS', () => {
  let pki: TestPki;
  let webCa: PemPair;
  let web: PemPair;
  const harnesses: Harness[] = [];
  const start = async (clientCertificates: string): Promise<Harness> => {
    const h = await startHarness({
      pki,
      policies: POLICIES,
      files: { 'web.pem': web.certPem, 'web.key': web.keyPem },
      listener: { tls: { cert: 'web.pem', key: 'web.key', clientCertificates } },
    });
    harnesses.push(h);
    return h;
  };
  let optional: Harness;

  beforeAll(async () => {
    pki = await makePki();
    webCa = await createCa('web.example');
    web = await webCertificate(webCa);
    optional = await start('optional');
  });
  afterAll(async () => {
    for (const h of harnesses) await h.close();
  });

  const browser = (): ClientOptions => ({ ca: webCa.certPem });
  const machine = (): ClientOptions => ({
    ca: webCa.certPem,
    cert: pki.client.certPem,
    key: pki.client.keyPem,
  });

  it('optional: serves its own certificate; a browser without one is anonymous, an SVID is identified', async () => {
    expect(await served(optional.port, webCa.certPem)).toBe(new X509Certificate(web.certPem).fingerprint256);
    const anonymous = await request(`${optional.url}/page`, browser());
    expect(anonymous.status).toBe(200);
    expect((JSON.parse(anonymous.text) as EchoReply).headers['x-forwarded-client-cert']).toBeUndefined();
    expect((await request(`${optional.url}/machines/jobs`, browser())).status).toBe(403);

    const svid = await request(`${optional.url}/machines/jobs`, machine());
    expect(svid.status).toBe(200);
    expect(String((JSON.parse(svid.text) as EchoReply).headers['x-forwarded-client-cert'])).toContain(
      'URI=spiffe://example.org/ns/default/sa/web',
    );
  });

  it('optional: a certificate that does not chain to a bundle is refused, never taken as anonymous', async () => {
    const strangerCa = await createCa('stranger.example');
    const stranger = await issueSvid(strangerCa, 'spiffe://stranger.example/ns/x/sa/y');
    const before = optional.proxy.listeners[0]?.stats.peersRejected.get('untrusted-chain') ?? 0;
    await expect(
      request(`${optional.url}/page`, { ca: webCa.certPem, cert: stranger.certPem, key: stranger.keyPem }),
    ).rejects.toThrow();
    expect(optional.proxy.listeners[0]?.stats.peersRejected.get('untrusted-chain')).toBe(before + 1);
  });

  it('replaces the PeerAuthentication mode: no plaintext even where a policy says PERMISSIVE', async () => {
    const plain = await new Promise<number | Error>((resolve) => {
      const req = http.get(
        { host: '127.0.0.1', port: optional.port, path: '/', headers: { host: 'a' } },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on('error', (err) => resolve(err));
    });
    expect(plain).toBeInstanceOf(Error);
  });

  it('none: never asks for a client certificate, so an SVID identifies nobody', async () => {
    const none = await start('none');
    const r = await request(`${none.url}/machines/jobs`, machine());
    expect(r.status).toBe(403);
    expect((await request(`${none.url}/page`, browser())).status).toBe(200);
  });

  it('require: mTLS with an SVID, against its own server certificate', async () => {
    const required = await start('require');
    await expect(request(`${required.url}/page`, browser())).rejects.toThrow();
    expect((await request(`${required.url}/machines/jobs`, machine())).status).toBe(200);
  });

  it('a rotated server certificate is served on new handshakes after a reload', async () => {
    const next = await webCertificate(webCa);
    optional.dir.write('web.pem', next.certPem);
    optional.dir.write('web.key', next.keyPem);
    expect(optional.proxy.reload('test')).toBe(true);
    expect(await served(optional.port, webCa.certPem)).toBe(new X509Certificate(next.certPem).fingerprint256);
  });

  it('a certificate and key that do not belong together are a config error naming the field', async () => {
    const other = await webCertificate(webCa);
    optional.dir.write('mismatch.key', other.keyPem);
    const raw = {
      trustDomain: 'example.org',
      identity: { cert: 'api.pem', key: 'api.key', bundles: { 'example.org': 'bundle.pem' } },
      listeners: [
        {
          name: 'web',
          address: '127.0.0.1:0',
          upstream: 'http://127.0.0.1:8080',
          tls: { cert: 'web.pem', key: 'mismatch.key', clientCertificates: 'none' },
        },
      ],
    };
    const config = configFromObject(raw, optional.dir.path, optional.dir.file('portcullis.yaml'));
    try {
      loadSnapshot(config, 1, new FileSource(config));
      expect.unreachable('the snapshot loaded');
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).issues.map((i) => `${i.field}: ${i.message}`)).toEqual([
        `listeners[0].tls.cert: ${optional.dir.file('web.pem')}: the private key does not match the certificate`,
      ]);
    }
  });
});
