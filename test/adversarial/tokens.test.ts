import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { Portcullis } from '../../src/proxy/portcullis.js';
import { request } from '../helpers/client.js';
import { type Harness, startHarness, testLogger } from '../helpers/harness.js';
import {
  ISSUER,
  JwksServer,
  makeKey,
  requestAuthentication,
  type SigningKey,
  sign,
} from '../helpers/jwks.js';
import { rawExchange } from '../helpers/raw.js';
import type { EchoReply } from '../helpers/upstream.js';
import { until } from '../helpers/wait.js';

/**
 * Tokens in every place a RequestAuthentication reads them: a token there is verified or the
 * request is refused, it never reaches the upstream unverified, and it never reaches the audit log.
 */

const PARTNER = 'https://partner.example';

describe('token placement and token secrecy', () => {
  let h: Harness;
  let jwks: JwksServer;
  let key: SigningKey;
  let forger: SigningKey;
  let auditFile: string;
  let good: string;

  const head = (lines: string[]): string => `${lines.join('\r\n')}\r\n\r\n`;
  const send = (lines: string[]) =>
    rawExchange(h.port, head([...lines, 'Host: a.example', 'Connection: close']), { tls: h.client });
  const echo = (body: string): EchoReply => JSON.parse(body) as EchoReply;
  const audit = (): {
    reason: string;
    request: { path: string; query?: string; headers?: Record<string, string> };
  }[] =>
    existsSync(auditFile)
      ? readFileSync(auditFile, 'utf8')
          .split('\n')
          .filter((l) => l !== '')
          .map((l) => JSON.parse(l))
      : [];

  beforeAll(async () => {
    key = await makeKey('k1');
    forger = await makeKey('k1'); // same kid, another key: a forged signature
    jwks = new JwksServer([key]);
    const uri = await jwks.listen();
    h = await startHarness({
      policies: requestAuthentication([
        {
          issuer: ISSUER,
          jwksUri: uri,
          audiences: ['api'],
          outputClaimToHeaders: [
            { header: 'x-jwt-name', claim: 'name' },
            { header: 'x-jwt-sub', claim: 'sub' },
          ],
        },
        {
          issuer: PARTNER,
          jwksUri: uri,
          fromHeaders: [{ name: 'x-rt-token' }],
          fromParams: ['rt'],
          fromCookies: ['rt_session'],
          forwardOriginalToken: true,
        },
      ]),
      config: {
        audit: { includeQuery: true, headers: ['x-trace'], sinks: [{ type: 'file', path: 'audit.ndjson' }] },
      },
    });
    auditFile = h.dir.file('audit.ndjson');
    good = await sign(key);
  });
  afterAll(async () => {
    await h.close();
    await jwks.close();
  });

  describe('duplicated or oddly spaced credentials (defect 2)', () => {
    it('`Authorization: Basic` then a second `Authorization: Bearer <forged>` is refused with 400', async () => {
      const forged = await sign(forger);
      const before = h.upstream.requests;
      const r = await send([
        'GET /dup HTTP/1.1',
        'Authorization: Basic dXNlcjpwdw==',
        `Authorization: Bearer ${forged}`,
      ]);
      expect(r.status).toBe(400);
      expect(h.upstream.requests).toBe(before);
    });

    it('a valid Bearer token followed by a forged one is refused with 400', async () => {
      const forged = await sign(forger);
      const r = await send([
        'GET /dup2 HTTP/1.1',
        `Authorization: Bearer ${good}`,
        `Authorization: Bearer ${forged}`,
      ]);
      expect(r.status).toBe(400);
    });

    it('`Bearer<TAB><forged>` is treated as a Bearer token and refused (401), not passed along', async () => {
      const forged = await sign(forger);
      const before = h.upstream.requests;
      const r = await send(['GET /tab HTTP/1.1', `Authorization: Bearer\t${forged}`]);
      expect(r.status).toBe(401);
      expect(h.upstream.requests).toBe(before);
    });

    it.each([['Bearer'], ['Bearer,x'], ['bearer=x']])(
      'a malformed Bearer credential %j is refused',
      async (v) => {
        const r = await send(['GET /m HTTP/1.1', `Authorization: ${v}`]);
        expect(r.status).toBe(401);
      },
    );

    it('several spaces after the scheme, and any case of it, are what RFC 7235 allows: verified', async () => {
      const r = await send(['GET /sp HTTP/1.1', `Authorization: BEARER   ${good}`]);
      expect(r.status).toBe(200);
      expect(echo(r.body).headers['x-jwt-sub']).toBe('alice');
    });

    it('another scheme is not a token location: Basic alone passes to the upstream', async () => {
      const r = await send(['GET /basic HTTP/1.1', 'Authorization: Basic dXNlcjpwdw==']);
      expect(r.status).toBe(200);
      expect(echo(r.body).headers.authorization).toBe('Basic dXNlcjpwdw==');
    });

    it('a custom token header sent twice is refused with 400', async () => {
      const t = await sign(key, { iss: PARTNER });
      const r = await send([
        'GET /x HTTP/1.1',
        `X-Rt-Token: ${t}`,
        `x-rt-token: ${await sign(forger, { iss: PARTNER })}`,
      ]);
      expect(r.status).toBe(400);
    });

    it('a token parameter given twice is refused with 400', async () => {
      const t = await sign(key, { iss: PARTNER });
      const forged = await sign(forger, { iss: PARTNER });
      for (const q of [
        `rt=${t}&rt=${forged}`,
        `access_token=${good}&access_token=${forged}`,
        `rt=${t}&r%74=${forged}`,
      ]) {
        const r = await send([`GET /q?${q} HTTP/1.1`]);
        expect(r.status).toBe(400);
      }
    });

    it('a token cookie given twice (in one header or two) is refused with 400', async () => {
      const t = await sign(key, { iss: PARTNER });
      const forged = await sign(forger, { iss: PARTNER });
      const one = await send(['GET /c HTTP/1.1', `Cookie: rt_session=${t}; a=b; rt_session=${forged}`]);
      expect(one.status).toBe(400);
      const two = await send(['GET /c HTTP/1.1', `Cookie: rt_session=${t}`, `Cookie: rt_session=${forged}`]);
      expect(two.status).toBe(400);
    });

    it('one token in each of two different locations: both are verified', async () => {
      const t = await sign(key, { iss: PARTNER });
      const ok = await send(['GET /both HTTP/1.1', `Authorization: Bearer ${good}`, `X-Rt-Token: ${t}`]);
      expect(ok.status).toBe(200);
      const bad = await send([
        'GET /both HTTP/1.1',
        `Authorization: Bearer ${good}`,
        `X-Rt-Token: ${await sign(forger, { iss: PARTNER })}`,
      ]);
      expect(bad.status).toBe(401);
    });
  });

  it('a token whose iat is a year in the future is refused (defect 8)', async () => {
    const future = Math.floor(Date.now() / 1000) + 365 * 24 * 3600;
    const r = await send(['GET /iat HTTP/1.1', `Authorization: Bearer ${await sign(key, { iat: future })}`]);
    expect(r.status).toBe(401);
    const near = Math.floor(Date.now() / 1000) + 30; // within the 60 s clock skew
    const ok = await send(['GET /iat HTTP/1.1', `Authorization: Bearer ${await sign(key, { iat: near })}`]);
    expect(ok.status).toBe(200);
  });

  describe('claims to headers (defect 11)', () => {
    it('a claim with non-Latin-1 text reaches the upstream percent-encoded, and the request succeeds', async () => {
      const t = await sign(key, { name: 'Zoë 日本' });
      const r = await send(['GET /name HTTP/1.1', `Authorization: Bearer ${t}`]);
      expect(r.status).toBe(200);
      expect(decodeURIComponent(String(echo(r.body).headers['x-jwt-name']))).toBe('Zoë 日本');
    });

    it('a claim carrying CR LF cannot inject a header', async () => {
      const t = await sign(key, { name: 'x\r\nx-injected: yes' });
      const r = await send(['GET /crlf HTTP/1.1', `Authorization: Bearer ${t}`]);
      expect(r.status).toBe(200);
      const e = echo(r.body);
      expect(e.headers['x-injected']).toBeUndefined();
      expect(decodeURIComponent(String(e.headers['x-jwt-name']))).toBe('x\r\nx-injected: yes');
    });
  });

  it('the realm of WWW-Authenticate is a well-formed quoted string', async () => {
    const r = await send(['GET /a%22b"c HTTP/1.1', 'Authorization: Bearer not.a.jwt']);
    if (r.status === 401) {
      expect(r.headers['www-authenticate']).toMatch(/^Bearer realm="(?:[^"\\]|\\.)*"$/);
    } else {
      expect(r.status).toBe(400);
    }
  });

  describe('tokens never reach the audit log (defect 5)', () => {
    it('a refused access_token or token parameter is redacted from the recorded query', async () => {
      const otherAud = await sign(key, { aud: 'someone-else' });
      const expired = await sign(key, { exp: Math.floor(Date.now() / 1000) - 3600 });
      const partner = await sign(forger, { iss: PARTNER });
      expect((await send([`GET /audit1?access_token=${otherAud}&x=1 HTTP/1.1`])).status).toBe(403);
      expect((await send([`GET /audit2?x=2&access_token=${expired} HTTP/1.1`])).status).toBe(401);
      expect((await send([`GET /audit3?rt=${partner} HTTP/1.1`])).status).toBe(401);
      expect((await send([`GET /audit4?rt=${await sign(key, { iss: PARTNER })} HTTP/1.1`])).status).toBe(200);
      await until(
        'four audit events',
        () => audit().filter((e) => e.request?.path?.startsWith('/audit')).length >= 4,
      );
      const text = readFileSync(auditFile, 'utf8');
      for (const t of [otherAud, expired, partner]) expect(text).not.toContain(t.split('.')[2] as string);
      const byPath = new Map(audit().map((e) => [e.request?.path, e.request?.query]));
      expect(byPath.get('/audit1')).toBe('access_token=REDACTED&x=1');
      expect(byPath.get('/audit2')).toBe('x=2&access_token=REDACTED');
      expect(byPath.get('/audit3')).toBe('rt=REDACTED');
      expect(byPath.get('/audit4')).toBe('rt=REDACTED');
    });

    it('audit.headers naming a header a RequestAuthentication reads tokens from is a config error naming the field', async () => {
      const raw = {
        trustDomain: 'example.org',
        workload: { namespace: 'default', labels: { app: 'api' } },
        identity: { cert: 'api.pem', key: 'api.key', bundles: { 'example.org': 'bundle.pem' } },
        listeners: [{ name: 'inbound', address: '127.0.0.1:0', upstream: 'http://127.0.0.1:1' }],
        policies: ['policies.yaml'],
        audit: { headers: ['x-trace', 'X-Rt-Token'], sinks: [{ type: 'stdout' }] },
      };
      const err = await Portcullis.start(configFromObject(raw, h.dir.path, h.dir.file('portcullis.yaml')), {
        logger: testLogger,
      }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ConfigError);
      const issue = (err as ConfigError).issues.find((i) => i.field === 'audit.headers[1]');
      expect(issue?.message).toMatch(/x-rt-token.*RequestAuthentication default\/jwt/);
    });

    it('a reload that makes an audited header a token location is refused and the last good state kept', async () => {
      const policies = readFileSync(h.dir.file('policies.yaml'), 'utf8');
      writeFileSync(
        h.dir.file('policies.yaml'),
        `${policies}---\n${requestAuthentication([{ issuer: 'https://other.example', jwksUri: 'http://127.0.0.1:1/jwks', fromHeaders: [{ name: 'x-trace' }] }], 'other')}`,
      );
      expect(h.proxy.reload('test')).toBe(false);
      writeFileSync(h.dir.file('policies.yaml'), policies);
      const r = await send(['GET /still HTTP/1.1', 'X-Trace: t1', `Authorization: Bearer ${good}`]);
      expect(r.status).toBe(200);
    });
  });

  it('Node’s own client with a valid token still works', async () => {
    const res = await request(`${h.url}/node`, { ...h.client, headers: { authorization: `Bearer ${good}` } });
    expect(res.status).toBe(200);
  });
});
