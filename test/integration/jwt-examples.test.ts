import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import { JwksServer, makeKey, type SigningKey, sign } from '../helpers/jwks.js';
import type { EchoReply } from '../helpers/upstream.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** An example policy as shipped, with only its jwksUri pointed at the local JWKS server. */
function example(path: string, jwksUri: string): string {
  const text = readFileSync(`${ROOT}${path}`, 'utf8');
  return text.replace(/jwksUri: \S+/, `jwksUri: ${jwksUri}`);
}

describe('shipped RequestAuthentication examples, against a real JWKS server', () => {
  let jwks: JwksServer;
  let key: SigningKey;
  let uri: string;
  beforeAll(async () => {
    key = await makeKey('k1', 'RS256');
    jwks = new JwksServer([key]);
    uri = await jwks.listen();
  });
  afterAll(() => jwks.close());

  describe('policies/request-authentication/oidc-provider.yaml', () => {
    let h: Harness;
    beforeAll(async () => {
      h = await startHarness({
        policies: example('policies/request-authentication/oidc-provider.yaml', uri),
      });
    });
    afterAll(() => h.close());
    const iss = 'https://auth.example.com';

    it('passes the subject on as x-user and removes the token', async () => {
      const t = await sign(key, { iss, sub: 'carol', aud: 'api.example.com' });
      const res = await request(`${h.url}/orders`, {
        ...h.client,
        headers: { authorization: `Bearer ${t}` },
      });
      expect(res.status).toBe(200);
      const e = JSON.parse(res.text) as EchoReply;
      expect(e.headers['x-user']).toBe('carol');
      expect(e.headers.authorization).toBeUndefined();
    });

    it('refuses another audience (403) and another issuer (401)', async () => {
      const wrongAud = await sign(key, { iss, aud: 'other' });
      expect(
        (await request(`${h.url}/o`, { ...h.client, headers: { authorization: `Bearer ${wrongAud}` } }))
          .status,
      ).toBe(403);
      const wrongIss = await sign(key, { iss: 'https://auth.evil.example', aud: 'api.example.com' });
      expect(
        (await request(`${h.url}/o`, { ...h.client, headers: { authorization: `Bearer ${wrongIss}` } }))
          .status,
      ).toBe(401);
    });
  });

  describe('examples/edge-gateway/policies/jwt.yaml', () => {
    let h: Harness;
    beforeAll(async () => {
      h = await startHarness({
        policies: example('examples/edge-gateway/policies/jwt.yaml', uri),
        config: { workload: { namespace: 'legacy', labels: { app: 'billing' } } },
      });
    });
    afterAll(() => h.close());
    const iss = 'https://login.partner-a.example';

    it('reads X-Partner-Token with its prefix and passes payload and tenant on', async () => {
      const t = await sign(key, { iss, aud: 'billing', tenant: { id: 't-42' } });
      const res = await request(`${h.url}/invoices`, {
        ...h.client,
        headers: { 'x-partner-token': `Token ${t}` },
      });
      expect(res.status).toBe(200);
      const e = JSON.parse(res.text) as EchoReply;
      expect(e.headers['x-partner-tenant']).toBe('t-42');
      expect(
        JSON.parse(Buffer.from(String(e.headers['x-partner-claims']), 'base64url').toString()),
      ).toMatchObject({ tenant: { id: 't-42' } });
      expect(e.headers['x-partner-token']).toBeUndefined();
    });

    it('refuses the token without its prefix', async () => {
      const t = await sign(key, { iss, aud: 'billing' });
      expect((await request(`${h.url}/i`, { ...h.client, headers: { 'x-partner-token': t } })).status).toBe(
        401,
      );
    });
  });
});
