import { createHash, X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueSvid, type PemPair } from '../../src/identity/dev-ca.js';
import { loadPolicies } from '../../src/istio/load.js';
import { request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import { ISSUER, JwksServer, makeKey, type SigningKey, sign } from '../helpers/jwks.js';
import { TempDir } from '../helpers/pki.js';

/** RFC 8705 §3.1: base64url SHA-256 of the certificate's DER, computed here apart from the proxy's code. */
function thumbprint(pair: PemPair): string {
  return createHash('sha256').update(new X509Certificate(pair.certPem).raw).digest('base64url');
}

function requestAuthn(name: string, issuer: string, jwksUri: string, bound: string | null): string {
  const annotations = bound === null ? '' : `, annotations: { portcullis.dev/certificate-bound: "${bound}" }`;
  return `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: { name: ${name}, namespace: default${annotations} }
spec:
  jwtRules: [{ issuer: "${issuer}", jwksUri: "${jwksUri}" }]
`;
}

const PERMISSIVE = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: api, namespace: default }
spec: { mtls: { mode: PERMISSIVE } }
`;

/**
 * Certificate-bound access tokens (RFC 8705) for SPIFFE peers: a token minted for one workload's
 * SVID is useless on another workload's connection — a stolen token needs the private key too.
 */
describe('certificate-bound tokens (portcullis.dev/certificate-bound)', () => {
  let h: Harness;
  let jwks: JwksServer;
  let key: SigningKey;
  let other: PemPair;
  let admin: string;
  const PARTNER = 'https://partner.example';

  beforeAll(async () => {
    key = await makeKey('k1');
    jwks = new JwksServer([key]);
    const uri = await jwks.listen();
    h = await startHarness({
      policies: [
        requestAuthn('bound', ISSUER, uri, 'true'),
        requestAuthn('unbound', PARTNER, uri, null),
        PERMISSIVE,
      ].join('---\n'),
      config: { admin: { address: '127.0.0.1:0' } },
    });
    admin = `http://127.0.0.1:${h.proxy.adminAddress()?.port}`;
    // A second workload of the same trust domain: a valid SVID, another key pair.
    other = await issueSvid(h.pki.ca, 'spiffe://example.org/ns/default/sa/db');
  });
  afterAll(async () => {
    await h.close();
    await jwks.close();
  });

  const web = (): { cert: string; key: string; ca: string } => h.client;
  const db = (): { cert: string; key: string; ca: string } => ({
    cert: other.certPem,
    key: other.keyPem,
    ca: h.pki.ca.certPem,
  });
  const bearer = (t: string, id: string): Record<string, string> => ({
    authorization: `Bearer ${t}`,
    'x-request-id': id,
  });

  it('accepts a token bound to the certificate the caller presents', async () => {
    const token = await sign(key, { cnf: { 'x5t#S256': thumbprint(h.pki.client) } });
    const res = await request(`${h.url}/me`, { ...web(), headers: bearer(token, 'bound-ok') });
    expect(res.status).toBe(200);
  });

  it('refuses the same token presented by another workload: 401 invalid_token, even after it was verified and cached', async () => {
    const token = await sign(key, { cnf: { 'x5t#S256': thumbprint(h.pki.client) } });
    expect((await request(`${h.url}/me`, { ...web(), headers: bearer(token, 'stolen-0') })).status).toBe(200);
    const stolen = await request(`${h.url}/me`, { ...db(), headers: bearer(token, 'stolen-1') });
    expect(stolen.status).toBe(401);
    expect(stolen.headers['www-authenticate']).toBe(
      `Bearer realm="https://localhost:${h.port}/me", error="invalid_token", error_description="the token is not bound to the client certificate of this connection"`,
    );
    expect(stolen.text).toBe('Jwt verification fails\nrequest id: stolen-1\n');
    // The operator sees why (the client does not).
    const e = await request(`${admin}/decisions/stolen-1`);
    expect(e.text).toContain(
      `answered: 401 DENY by the jwt stage (jwt-unbound) — the token is bound to another certificate (cnf x5t#S256 ${thumbprint(h.pki.client)}; this connection's is ${thumbprint(other)})`,
    );
  });

  it('refuses a token without cnf where binding is required, and one sent without a client certificate', async () => {
    const plain = await sign(key);
    const res = await request(`${h.url}/me`, { ...web(), headers: bearer(plain, 'no-cnf') });
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toContain('error="invalid_token"');
    expect((await request(`${admin}/decisions/no-cnf`)).text).toContain(
      'the token has no cnf x5t#S256 claim, and RequestAuthentication default/bound jwtRules[0] requires certificate-bound tokens',
    );
    // PERMISSIVE lets plaintext in; a bound token cannot be used on it.
    const token = await sign(key, { cnf: { 'x5t#S256': thumbprint(h.pki.client) } });
    const overPlaintext = await request(`http://127.0.0.1:${h.port}/me`, { headers: bearer(token, 'plain') });
    expect(overPlaintext.status).toBe(401);
    // Nor an unbound one: no certificate and no cnf do not make a match.
    const bare = await request(`http://127.0.0.1:${h.port}/me`, { headers: bearer(plain, 'plain-bare') });
    expect(bare.status).toBe(401);
    // A token whose cnf is not an object, or whose thumbprint is not a string, is unbound.
    for (const cnf of ['x', { 'x5t#S256': 7 }, [thumbprint(h.pki.client)]]) {
      const odd = await sign(key, { cnf });
      expect((await request(`${h.url}/me`, { ...web(), headers: bearer(odd, 'odd') })).status).toBe(401);
    }
  });

  it('leaves rules without the annotation as they were', async () => {
    const token = await sign(key, { iss: PARTNER });
    expect((await request(`${h.url}/me`, { ...db(), headers: bearer(token, 'partner') })).status).toBe(200);
  });

  it('counts the refusals under their own reason', async () => {
    const m = await request(`${admin}/metrics`);
    expect(m.text).toMatch(
      /portcullis_requests_total\{listener="inbound",decision="deny",reason="jwt-unbound",status="401"\} [1-9]/,
    );
  });
});

describe('the certificate-bound annotation is checked when policies load', () => {
  const dir = new TempDir();
  afterAll(() => dir.cleanup());

  it('names the file and field of a value other than "true" or "false", and of an unknown portcullis.dev annotation', () => {
    const file = dir.write(
      'p.yaml',
      [
        requestAuthn('a', ISSUER, 'https://idp.example/jwks', 'yes'),
        requestAuthn('b', ISSUER, 'https://idp.example/jwks', null).replace(
          'namespace: default }',
          'namespace: default, annotations: { portcullis.dev/certificate-bond: "true" } }',
        ),
      ].join('---\n'),
    );
    let message = '';
    try {
      loadPolicies([file], 'default');
    } catch (err) {
      message = String(
        (err as { issues?: unknown }).issues !== undefined
          ? JSON.stringify((err as { issues: unknown }).issues)
          : err,
      );
    }
    expect(message).toContain('metadata.annotations.portcullis.dev/certificate-bound');
    expect(message).toContain('must be \\"true\\" or \\"false\\"');
    expect(message).toContain('metadata.annotations.portcullis.dev/certificate-bond');
    expect(message).toContain('p.yaml');
  });
});
