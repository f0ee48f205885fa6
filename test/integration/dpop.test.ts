import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { type ClientKey, clientKey, proof } from '../helpers/dpop.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import { ISSUER, JwksServer, makeKey, type SigningKey, sign } from '../helpers/jwks.js';
import type { EchoReply } from '../helpers/upstream.js';

/** A client's DPoP key pair (RFC 9449 §4): the public JWK goes in every proof's header. */
const DPOP_POLICIES = (jwksUri: string): string => `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: { name: dpop, namespace: default, annotations: { portcullis.dev/dpop: "true" } }
spec:
  jwtRules: [{ issuer: "${ISSUER}", jwksUri: "${jwksUri}" }]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: api, namespace: default }
spec: { mtls: { mode: PERMISSIVE } }
`;

/**
 * DPoP (RFC 9449) for clients without certificates: a token bound to the client's key is accepted
 * only with a fresh proof signed by that key, for this method and URL, once.
 */
describe('DPoP-bound tokens (portcullis.dev/dpop)', () => {
  let h: Harness;
  let jwks: JwksServer;
  let issuer: SigningKey;
  let alice: ClientKey;
  let mallory: ClientKey;
  let admin: string;
  let token: string;
  let url: string;

  beforeAll(async () => {
    issuer = await makeKey('k1');
    jwks = new JwksServer([issuer]);
    h = await startHarness({
      policies: DPOP_POLICIES(await jwks.listen()),
      config: { admin: { address: '127.0.0.1:0' } },
    });
    admin = `http://127.0.0.1:${h.proxy.adminAddress()?.port}`;
    alice = await clientKey();
    mallory = await clientKey();
    token = await sign(issuer, { cnf: { jkt: alice.jkt } });
    url = `https://localhost:${h.port}/me`;
  });
  afterAll(async () => {
    await h.close();
    await jwks.close();
  });

  const send = (headers: Record<string, string | string[]>, path = '/me', method = 'GET') =>
    request(`${h.url}${path}`, { ...h.client, method, headers });

  it('accepts the token with a valid proof; neither the token nor the proof reaches the upstream', async () => {
    const p = await proof(alice, { url, token });
    const res = await send({ authorization: `DPoP ${token}`, dpop: p });
    expect(res.status).toBe(200);
    const echo = JSON.parse(res.text) as EchoReply;
    expect(echo.headers.authorization).toBeUndefined();
    expect(echo.headers.dpop).toBeUndefined();
    // Any case of the scheme (RFC 9110 §11.1), and a query string (htu has none).
    const p2 = await proof(alice, { url, token });
    expect((await send({ authorization: `dpop ${token}`, dpop: p2 }, '/me?x=1')).status).toBe(200);
  });

  it('refuses a replayed proof: 401 invalid_dpop_proof', async () => {
    const p = await proof(alice, { url, token });
    expect((await send({ authorization: `DPoP ${token}`, dpop: p, 'x-request-id': 'dpop-1' })).status).toBe(
      200,
    );
    const again = await send({ authorization: `DPoP ${token}`, dpop: p, 'x-request-id': 'dpop-2' });
    expect(again.status).toBe(401);
    expect(again.headers['www-authenticate']).toMatch(/^DPoP algs="ES256 [^"]*", error="invalid_dpop_proof"/);
    expect(again.text).toBe('Jwt verification fails\nrequest id: dpop-2\n');
    expect((await request(`${admin}/decisions/dpop-2`)).text).toContain(
      'answered: 401 DENY by the jwt stage (dpop-invalid) — the DPoP proof was used before (jti)',
    );
  });

  it('refuses proofs made for another request, another token, another key, or stale', async () => {
    const other = await sign(issuer, { cnf: { jkt: alice.jkt }, sub: 'bob' });
    const cases: [string, Promise<string>, string][] = [
      ['another method', proof(alice, { url, token, method: 'POST' }), 'another method (htm)'],
      ['another URL', proof(alice, { url: `https://localhost:${h.port}/other`, token }), 'another URL (htu)'],
      ['another host', proof(alice, { url: `https://evil.example/me`, token }), 'another URL (htu)'],
      ['another token', proof(alice, { url, token: other }), 'another access token (ath)'],
      ['no ath', proof(alice, { url, token, ath: null }), 'another access token (ath)'],
      ['signed by another key', proof(mallory, { url, token }), 'not the one the token is bound to'],
      [
        'ten minutes old',
        proof(alice, { url, token, iat: Math.floor(Date.now() / 1000) - 600 }),
        'does not verify',
      ],
      [
        'from the future',
        proof(alice, { url, token, iat: Math.floor(Date.now() / 1000) + 600 }),
        'does not verify',
      ],
      ['typ JWT', proof(alice, { url, token, typ: 'JWT' }), 'does not verify'],
      [
        'a private key in the header',
        proof(alice, { url, token, jwk: { ...alice.jwk, d: 'AAAA' } }),
        'does not verify',
      ],
      ['not a JWT', Promise.resolve('not.a.proof'), 'does not verify'],
      ['an oversized jti', proof(alice, { url, token, jti: 'x'.repeat(300) }), 'no usable jti'],
      ['an empty jti', proof(alice, { url, token, jti: '' }), 'no usable jti'],
    ];
    for (const [name, pending, why] of cases) {
      const id = `dpop-bad-${name.replaceAll(' ', '-')}`;
      const res = await send({ authorization: `DPoP ${token}`, dpop: await pending, 'x-request-id': id });
      expect(res.status, name).toBe(401);
      expect(res.headers['www-authenticate'], name).toContain('error="invalid_dpop_proof"');
      expect((await request(`${admin}/decisions/${id}`)).text, name).toContain(why);
    }
  });

  it('refuses a request with no proof, or two', async () => {
    expect((await send({ authorization: `DPoP ${token}` })).status).toBe(401);
    const p = await proof(alice, { url, token });
    expect((await send({ authorization: `DPoP ${token}`, dpop: [p, p] })).status).toBe(401);
  });

  it('a stolen token is useless: the thief cannot prove the key, nor use it as a bearer token', async () => {
    const stolen = await send({ authorization: `DPoP ${token}`, dpop: await proof(mallory, { url, token }) });
    expect(stolen.status).toBe(401);
    const asBearer = await send({ authorization: `Bearer ${token}`, 'x-request-id': 'dpop-bearer' });
    expect(asBearer.status).toBe(401);
    expect(asBearer.headers['www-authenticate']).toContain('error="invalid_token"');
    expect((await request(`${admin}/decisions/dpop-bearer`)).text).toContain(
      'the token is bound to a DPoP key and was sent as a bearer token',
    );
  });

  it('requires binding: an unbound token is refused as bearer and as DPoP', async () => {
    const unbound = await sign(issuer);
    expect((await send({ authorization: `Bearer ${unbound}` })).status).toBe(401);
    const p = await proof(alice, { url, token: unbound });
    expect((await send({ authorization: `DPoP ${unbound}`, dpop: p })).status).toBe(401);
  });

  it('works for a plaintext client (no certificate) with an http:// htu', async () => {
    const plainUrl = `http://127.0.0.1:${h.port}/me`;
    const p = await proof(alice, { url: plainUrl, token });
    const res = await request(plainUrl, { headers: { authorization: `DPoP ${token}`, dpop: p } });
    expect(res.status).toBe(200);
  });
});
