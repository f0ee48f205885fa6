import { renameSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueSvid } from '../../src/identity/dev-ca.js';
import { request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import {
  ISSUER,
  JwksServer,
  makeKey,
  requestAuthentication,
  type SigningKey,
  sign,
} from '../helpers/jwks.js';
import type { EchoReply } from '../helpers/upstream.js';

const POLICIES = (jwksUri: string): string => `${requestAuthentication([{ issuer: ISSUER, jwksUri }])}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-admin, namespace: default }
spec:
  action: DENY
  rules:
    - to: [{ operation: { paths: ["/admin", "/admin/*"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: api, namespace: default }
spec:
  selector: { matchLabels: { app: api } }
  rules:
    - from: [{ source: { principals: ["example.org/ns/default/sa/web"] } }]
      to: [{ operation: { methods: ["GET"], paths: ["/api/*", "/public/*", "/users/{*}/orders"] } }]
    - from: [{ source: { requestPrincipals: ["${ISSUER}/*"] } }]
      to: [{ operation: { methods: ["POST"], paths: ["/api/*"] } }]
      when: [{ key: "request.auth.claims[groups]", values: ["writers"] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: would-deny-everything
  namespace: default
  annotations: { istio.io/dry-run: "true" }
spec:
  action: DENY
  rules: [{}]
`;

async function replace(file: string, text: string): Promise<void> {
  writeFileSync(`${file}.tmp`, text);
  renameSync(`${file}.tmp`, file);
}

describe('AuthorizationPolicy enforced on real requests', () => {
  let h: Harness;
  let jwks: JwksServer;
  let key: SigningKey;
  let db: { cert: string; key: string; ca: string };

  beforeAll(async () => {
    key = await makeKey('k1');
    jwks = new JwksServer([key]);
    h = await startHarness({ policies: POLICIES(await jwks.listen()), config: { serverTiming: true } });
    const svid = await issueSvid(h.pki.ca, 'spiffe://example.org/ns/default/sa/db');
    db = { cert: svid.certPem, key: svid.keyPem, ca: h.pki.ca.certPem };
  });
  afterAll(async () => {
    await h.close();
    await jwks.close();
  });

  it('allows the principal a policy names, and reports authorization time', async () => {
    const res = await request(`${h.url}/api/items`, h.client);
    expect(res.status).toBe(200);
    expect(res.headers['server-timing']).toMatch(/^authz;dur=\d+\.\d{3}$/);
  });

  it('denies another principal with 403 "RBAC: access denied", before the upstream', async () => {
    const before = h.upstream.requests;
    const res = await request(`${h.url}/api/items`, db);
    expect(res.status).toBe(403);
    // Envoy's text first (clients match it), then the id an operator can find the event by.
    const id = res.headers['x-request-id'] as string;
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.text).toBe(`RBAC: access denied\nrequest id: ${id}\n`);
    expect(h.upstream.requests).toBe(before);
  });

  it("echoes a caller's own request id on a deny, and never one that could forge a line", async () => {
    const mine = await request(`${h.url}/api/items`, {
      ...db,
      headers: { 'x-request-id': 'trace-42.a_b:c' },
    });
    expect(mine.status).toBe(403);
    expect(mine.headers['x-request-id']).toBe('trace-42.a_b:c');
    expect(mine.text).toBe('RBAC: access denied\nrequest id: trace-42.a_b:c\n');
    // Not a request id (a space and a forged second line; too long): one of the proxy's instead.
    for (const hostile of ['x request id: forged', 'a\tb', 'z'.repeat(129)]) {
      const res = await request(`${h.url}/api/items`, {
        ...db,
        headers: { 'x-request-id': hostile },
      });
      expect(res.status).toBe(403);
      const id = res.headers['x-request-id'] as string;
      expect(id).toMatch(/^[0-9a-f-]{36}$/);
      expect(res.text).toBe(`RBAC: access denied\nrequest id: ${id}\n`);
    }
  });

  it('denies what no rule allows (a method, a path)', async () => {
    expect((await request(`${h.url}/api/items`, { ...h.client, method: 'DELETE' })).status).toBe(403);
    expect((await request(`${h.url}/other`, h.client)).status).toBe(403);
  });

  it('matches path templates', async () => {
    expect((await request(`${h.url}/users/42/orders`, h.client)).status).toBe(200);
    expect((await request(`${h.url}/users/4/2/orders`, h.client)).status).toBe(403);
  });

  it.each([
    '/admin',
    '/admin/x',
    '/public/../admin/x',
    '/public/%2e%2e/admin',
    '/public/.%2E/admin/x',
    '/public\\..\\admin',
  ])('denies %s: the path is normalized before the DENY policy sees it', async (path) => {
    const before = h.upstream.requests;
    expect((await request(`${h.url}${path}`, h.client)).status).toBe(403);
    expect(h.upstream.requests).toBe(before);
  });

  it('forwards the normalized path, so the upstream serves what was authorized', async () => {
    const res = await request(`${h.url}/api/./v1/../items/%7Eme?q=1`, h.client);
    expect(res.status).toBe(200);
    expect((JSON.parse(res.text) as EchoReply).url).toBe('/api/items/~me?q=1');
  });

  it('authorizes on the verified token: request principal and claims', async () => {
    const writer = await sign(key, { groups: ['readers', 'writers'] });
    const reader = await sign(key, { groups: ['readers'] });
    const post = (t?: string) =>
      request(`${h.url}/api/items`, {
        ...db,
        method: 'POST',
        headers: t === undefined ? {} : { authorization: `Bearer ${t}` },
      });
    expect((await post(writer)).status).toBe(200);
    expect((await post(reader)).status).toBe(403);
    expect((await post()).status).toBe(403);
  });

  it('does not enforce a dry-run policy', async () => {
    expect((await request(`${h.url}/public/x`, h.client)).status).toBe(200);
  });

  it('answers 400 to a method that is not uppercase letters', async () => {
    expect((await request(`${h.url}/api/x`, { ...h.client, method: 'M-SEARCH' })).status).toBe(400);
  });

  it('reloads policies on change and keeps the last good set when the new one is invalid', async () => {
    const file = h.dir.file('policies.yaml');
    const base = POLICIES(`${jwks.url}/jwks.json`);
    let reloads = h.proxy.reloads;
    await replace(file, base.replace('"/api/*", "/public/*"', '"/public/*"'));
    while (h.proxy.reloads === reloads) await new Promise((r) => setTimeout(r, 20));
    expect((await request(`${h.url}/api/items`, h.client)).status).toBe(403);

    const failures = h.proxy.reloadFailures;
    await replace(file, base.replace('action: DENY', 'action: BLOCK'));
    while (h.proxy.reloadFailures === failures) await new Promise((r) => setTimeout(r, 20));
    expect((await request(`${h.url}/api/items`, h.client)).status).toBe(403);
    expect((await request(`${h.url}/public/x`, h.client)).status).toBe(200);

    reloads = h.proxy.reloads;
    await replace(file, base);
    while (h.proxy.reloads === reloads) await new Promise((r) => setTimeout(r, 20));
    expect((await request(`${h.url}/api/items`, h.client)).status).toBe(200);
  });
});

describe('remote.ip through trusted proxies', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({
      policies: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: office-only, namespace: default }
spec:
  rules: [{ from: [{ source: { remoteIpBlocks: ["203.0.113.0/24", "2001:db8::/32"] } }] }]
`,
      config: { trustedProxies: 1 },
    });
  });
  afterAll(() => h.close());

  it('takes the client address from X-Forwarded-For, one trusted hop from the right', async () => {
    const xff = (v?: string) =>
      request(`${h.url}/`, { ...h.client, headers: v === undefined ? {} : { 'x-forwarded-for': v } });
    expect((await xff('203.0.113.7')).status).toBe(200);
    expect((await xff('2001:db8::9')).status).toBe(200);
    // A client cannot choose its address by sending more entries: the trusted hop decides.
    expect((await xff('203.0.113.7, 198.51.100.1')).status).toBe(403);
    expect((await xff()).status).toBe(403);
  });
});
