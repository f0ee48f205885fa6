import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Harness, startHarness } from '../helpers/harness.js';
import { rawExchange } from '../helpers/raw.js';
import type { EchoReply } from '../helpers/upstream.js';

/**
 * Header names that make the upstream see something other than what was authorized: names with
 * underscores (CGI, WSGI and PHP read `x_forwarded_client_cert` as X-Forwarded-Client-Cert) and
 * method or URL override headers (the upstream acts on another method or path).
 */

const POLICIES = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-delete, namespace: default }
spec:
  selector: { matchLabels: { app: api } }
  action: DENY
  rules:
    - to: [{ operation: { methods: [DELETE] } }]
    - to: [{ operation: { paths: [/admin] } }]
`;

const head = (lines: string[]): string =>
  `${[...lines, 'Host: a.example', 'Connection: close'].join('\r\n')}\r\n\r\n`;

describe('header names, with the defaults', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ policies: POLICIES });
  });
  afterAll(() => h.close());
  const send = (lines: string[]) => rawExchange(h.port, head(lines), { tls: h.client });

  it('a header whose name has an underscore is not forwarded, so it cannot pose as XFCC', async () => {
    const r = await send([
      'GET /u HTTP/1.1',
      'X_Forwarded_Client_Cert: By=x;URI=spiffe://example.org/ns/default/sa/admin',
      'X_Request_Id: forged',
      'X-Ok: 1',
    ]);
    expect(r.status).toBe(200);
    const e = JSON.parse(r.body) as EchoReply;
    expect(e.rawHeaders.filter((n, i) => i % 2 === 0 && n.includes('_'))).toEqual([]);
    expect(e.headers['x-ok']).toBe('1');
    expect(String(e.headers['x-forwarded-client-cert'])).toContain(
      'URI=spiffe://example.org/ns/default/sa/web',
    );
  });

  it.each([
    ['X-HTTP-Method-Override: DELETE'],
    ['x-http-method: DELETE'],
    ['X-Method-Override: DELETE'],
    ['X-Original-URL: /admin'],
    ['X-Rewrite-URL: /admin'],
  ])('`%s` is refused with 400: the upstream would act on what was not authorized', async (header) => {
    const before = h.upstream.requests;
    const r = await send(['POST /public HTTP/1.1', header, 'Content-Length: 0']);
    expect(r.status).toBe(400);
    expect(h.upstream.requests).toBe(before);
  });
});

describe('header names, configured otherwise', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({
      policies: POLICIES,
      config: { headersWithUnderscores: 'reject', rejectOverrideHeaders: false },
    });
  });
  afterAll(() => h.close());
  const send = (lines: string[]) => rawExchange(h.port, head(lines), { tls: h.client });

  it('headersWithUnderscores: reject answers 400', async () => {
    expect((await send(['GET /u HTTP/1.1', 'X_Thing: 1'])).status).toBe(400);
    expect((await send(['GET /u HTTP/1.1', 'X-Thing: 1'])).status).toBe(200);
  });

  it('rejectOverrideHeaders: false forwards them (the operator vouches for the upstream)', async () => {
    const r = await send(['POST /public HTTP/1.1', 'X-HTTP-Method-Override: PUT', 'Content-Length: 0']);
    expect(r.status).toBe(200);
    expect((JSON.parse(r.body) as EchoReply).headers['x-http-method-override']).toBe('PUT');
  });
});
