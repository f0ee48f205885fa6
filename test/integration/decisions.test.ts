import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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

const POLICIES = [
  'apiVersion: security.istio.io/v1',
  'kind: AuthorizationPolicy',
  'metadata: { name: no-admin, namespace: default }',
  'spec: { action: DENY, rules: [{ to: [{ operation: { paths: ["/admin/*"] } }] }] }',
  '---',
  'apiVersion: security.istio.io/v1',
  'kind: AuthorizationPolicy',
  'metadata: { name: api, namespace: default }',
  'spec:',
  '  rules:',
  '    - from: [{ source: { principals: ["example.org/ns/default/sa/web"] } }]',
  '      to: [{ operation: { methods: ["GET"], paths: ["/api/*"] } }]',
  '    - to: [{ operation: { paths: ["/reports/*"] } }]',
  '      when:',
  '        - { key: "request.headers[authorization]", values: ["Bearer not-this-one"] }',
  '        - { key: "request.auth.claims[groups]", values: ["auditors"] }',
].join('\n');

/**
 * `GET /decisions/<request-id>` on the admin server: a client quotes the id of its deny, the
 * operator gets the explanation — the same as `portcullis check --explain` — and the client never
 * sees a policy name.
 */
describe('explaining a recent decision by its request id', () => {
  let h: Harness;
  let jwks: JwksServer;
  let key: SigningKey;
  let admin: string;

  beforeAll(async () => {
    key = await makeKey('k1');
    jwks = new JwksServer([key]);
    const uri = await jwks.listen();
    h = await startHarness({
      policies: `${POLICIES}\n---\n${requestAuthentication([{ issuer: ISSUER, jwksUri: uri, fromParams: ['token'] }])}`,
      config: { admin: { address: '127.0.0.1:0', decisions: { size: 4, record: 'deny' } } },
    });
    admin = `http://127.0.0.1:${h.proxy.adminAddress()?.port}`;
  });
  afterAll(async () => {
    await h.close();
    await jwks.close();
  });

  it('explains a live deny with the deciding rule, the nearest miss and the policy trace; the client got only the id', async () => {
    const res = await request(`${h.url}/api/x`, {
      ...h.client,
      method: 'POST',
      headers: { 'x-request-id': 'quote-me-1' },
    });
    expect(res.status).toBe(403);
    expect(res.text).toBe('RBAC: access denied\nrequest id: quote-me-1\n');
    expect(res.text).not.toContain('default/api');

    const e = await request(`${admin}/decisions/quote-me-1`);
    expect(e.status).toBe(200);
    expect(e.headers['content-type']).toContain('text/plain');
    const lines = e.text.split('\n');
    expect(lines[0]).toMatch(/^request id: quote-me-1 {3}time: \d{4}-\d\d-\d\dT.* {3}listener: inbound$/);
    expect(e.text).toContain('request: POST localhost:');
    expect(e.text).toContain('peer: example.org/ns/default/sa/web');
    expect(e.text).toContain('answered: 403 DENY by the authz stage (no-matching-allow)');
    expect(e.text).toContain('decision: DENY (403 RBAC: access denied)');
    // rule[0] fails on the method only; rule[1] on its path and both conditions.
    expect(e.text).toContain(
      'nearest miss: ALLOW default/api rule[0], 1 condition failed:\n    to[0] methods: "POST" is not in ["GET"]',
    );
    expect(e.text).toContain('DENY default/no-admin: does not match');
    expect(e.text).toContain('ALLOW default/api: does not match');
  });

  it('is the same explanation `portcullis check` prints for that request', async () => {
    const { runCheck } = await import('../../src/cli/check.js');
    const lines: string[] = [];
    runCheck(
      h.proxy.config,
      {
        principal: 'example.org/ns/default/sa/web',
        method: 'POST',
        path: '/api/x',
        host: `localhost:${h.port}`,
        headers: [],
        explain: true,
      },
      (l) => lines.push(l),
    );
    const live = (await request(`${admin}/decisions/quote-me-1`)).text;
    // From the request line on, line for line (the live one adds its id, time and answer).
    const fromDecision = (text: string): string => text.slice(text.indexOf('decision:')).replace(/\n$/, '');
    expect(fromDecision(live)).toBe(fromDecision(lines.join('\n')));
  });

  it('names the deciding DENY rule, as JSON too', async () => {
    await request(`${h.url}/admin/../admin/x`, { ...h.client, headers: { 'x-request-id': 'quote-me-2' } });
    const e = await request(`${admin}/decisions/quote-me-2?format=json`);
    expect(e.status).toBe(200);
    const body = JSON.parse(e.text) as {
      requestId: string;
      decisions: {
        request: { path: string; normalizedFrom: string | null };
        answered: { status: number; reason: string; by: string };
        authorization: {
          allowed: boolean;
          policy: string;
          action: string;
          rule: number;
          nearestMiss: unknown;
        };
      }[];
    };
    expect(body.requestId).toBe('quote-me-2');
    const d = body.decisions[0];
    expect(d?.request).toMatchObject({ path: '/admin/x', normalizedFrom: '/admin/../admin/x' });
    expect(d?.answered).toEqual({ decision: 'deny', status: 403, reason: 'policy', detail: '', by: 'authz' });
    expect(d?.authorization).toMatchObject({
      allowed: false,
      policy: 'default/no-admin',
      action: 'DENY',
      rule: 0,
      nearestMiss: null,
    });
    const viaAccept = await request(`${admin}/decisions/quote-me-2`, {
      headers: { accept: 'application/json' },
    });
    expect(JSON.parse(viaAccept.text)).toEqual(body);
  });

  it('a request refused before authorization says which stage refused it and why, and never shows the token', async () => {
    const expired = await sign(key, { exp: Math.floor(Date.now() / 1000) - 3600 });
    const res = await request(`${h.url}/reports/q?token=${expired}&x=1`, {
      ...h.client,
      headers: { 'x-request-id': 'quote-me-3' },
    });
    expect(res.status).toBe(401);
    const e = await request(`${admin}/decisions/quote-me-3`);
    expect(e.status).toBe(200);
    expect(e.text).toContain('answered: 401 DENY by the jwt stage (jwt-invalid) — the token has expired');
    expect(e.text).toContain('decision: answered before authorization; no policy was evaluated');
    expect(e.text).toContain('?token=REDACTED&x=1');
    expect(e.text).not.toContain(expired);
  });

  it('shows a credential header a condition reads as REDACTED', async () => {
    const res = await request(`${h.url}/reports/q`, {
      ...h.client,
      headers: { 'x-request-id': 'quote-me-4', authorization: 'Bearer secret-not-a-jwt' },
    });
    expect(res.status).toBe(403);
    const e = await request(`${admin}/decisions/quote-me-4`);
    expect(e.text).toContain('when request.headers[authorization]: ["REDACTED"] matches none of');
    expect(e.text).not.toContain('secret-not-a-jwt');
  });

  it('keeps only the latest decisions, and only denies by default', async () => {
    const ok = await request(`${h.url}/api/ok`, { ...h.client, headers: { 'x-request-id': 'allowed-1' } });
    expect(ok.status).toBe(200);
    expect((await request(`${admin}/decisions/allowed-1`)).status).toBe(404);
    // Four more denies push quote-me-1 out of a ring of 4.
    for (let i = 0; i < 4; i++)
      await request(`${h.url}/admin/${i}`, { ...h.client, headers: { 'x-request-id': `push-${i}` } });
    const gone = await request(`${admin}/decisions/quote-me-1`);
    expect(gone.status).toBe(404);
    expect(gone.text).toContain('no recent decision has request id quote-me-1');
    expect((await request(`${admin}/decisions/push-3`)).status).toBe(200);
  });

  it('refuses what is not a request id, and other methods', async () => {
    expect((await request(`${admin}/decisions/a%0Ab`)).status).toBe(400);
    expect((await request(`${admin}/decisions/${'x'.repeat(129)}`)).status).toBe(400);
    expect((await request(`${admin}/decisions/%E0%A4%A`)).status).toBe(400);
    expect((await request(`${admin}/decisions/push-3`, { method: 'POST' })).status).toBe(405);
  });

  it('lists every kept decision that carries a reused id, newest first', async () => {
    for (const p of ['/admin/a', '/nope'])
      await request(`${h.url}${p}`, { ...h.client, headers: { 'x-request-id': 'reused' } });
    const e = await request(`${admin}/decisions/reused?format=json`);
    const body = JSON.parse(e.text) as { decisions: { request: { path: string } }[] };
    expect(body.decisions.map((d) => d.request.path)).toEqual(['/nope', '/admin/a']);
  });
});

describe('the decisions ring with record: all', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({
      policies: POLICIES,
      config: { admin: { address: '127.0.0.1:0', decisions: { record: 'all' } } },
    });
  });
  afterAll(() => h.close());

  it('explains an allowed request too, by the rule that allowed it', async () => {
    const res = await request(`${h.url}/api/fine`, { ...h.client, headers: { 'x-request-id': 'allowed-2' } });
    expect(res.status).toBe(200);
    const e = await request(`http://127.0.0.1:${h.proxy.adminAddress()?.port}/decisions/allowed-2`);
    expect(e.status).toBe(200);
    expect(e.text).toContain('answered: 200 ALLOW when forwarding (policy)');
    expect(e.text).toContain('reason: allowed-by-policy — ALLOW default/api rule[0]');
  });
});

describe('the decisions ring turned off', () => {
  it('answers 404 for every id when admin.decisions.size is 0', async () => {
    const h = await startHarness({
      policies: POLICIES,
      config: { admin: { address: '127.0.0.1:0', decisions: { size: 0 } } },
    });
    try {
      expect(h.proxy.decisions).toBeNull();
      await request(`${h.url}/admin/x`, { ...h.client, headers: { 'x-request-id': 'off-1' } });
      expect((await request(`http://127.0.0.1:${h.proxy.adminAddress()?.port}/decisions/off-1`)).status).toBe(
        404,
      );
    } finally {
      await h.close();
    }
  });
});
