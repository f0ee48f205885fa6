import { existsSync, readFileSync } from 'node:fs';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { Agent } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { createCa, issueCertificate, KeyUsage, type PemPair } from '../../src/identity/dev-ca.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import { BrowserWalk, CookieJar, startLoginGateway, TestProvider } from '../helpers/oidc.js';
import { makePki } from '../helpers/pki.js';
import type { EchoReply } from '../helpers/upstream.js';
import { until } from '../helpers/wait.js';

/**
 * People logging in at an OpenID provider through Portcullis (authorization code + PKCE): a real
 * provider (oidc-provider), an HTTP client that keeps cookies and fills the provider's login and
 * consent forms as a person would, and an upstream that sees who logged in.
 */

const EXTERNAL = 'https://app.example';
const POLICIES = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: admins-only, namespace: default }
spec:
  selector: { matchLabels: { app: api } }
  action: DENY
  rules:
    - to: [{ operation: { paths: ["/admin/*"] } }]
      when: [{ key: "request.auth.claims[groups]", notValues: ["admins"] }]
`;

describe('OpenID Connect login at the edge', () => {
  let op: TestProvider;
  let h: Harness;
  let webCa: PemPair;
  let dispatcher: Agent;
  let origin: string;
  let upstreamOrigin: string;

  let step: BrowserWalk['step'];
  let browse: BrowserWalk['browse'];

  beforeAll(async () => {
    const pki = await makePki();
    webCa = await createCa('web.example');
    const web = await issueCertificate(webCa, {
      commonName: 'localhost',
      dnsNames: ['localhost'],
      keyUsage: KeyUsage.digitalSignature,
      extendedKeyUsage: ['1.3.6.1.5.5.7.3.1'],
    });
    op = new TestProvider();
    const issuer = await op.start('portcullis', 'client-secret', `${EXTERNAL}/.portcullis/callback`);
    h = await startHarness({
      pki,
      policies: POLICIES,
      config: { audit: { sinks: [{ type: 'file', path: 'audit.ndjson' }] } },
      files: {
        'web.pem': web.certPem,
        'web.key': web.keyPem,
        'client-secret': 'client-secret\n',
        'cookie.key': `${Buffer.alloc(32, 7).toString('base64')}\n`,
      },
      listener: {
        tls: { cert: 'web.pem', key: 'web.key', clientCertificates: 'optional' },
        login: {
          providers: [
            {
              name: 'test',
              issuer,
              clientId: 'portcullis',
              clientSecretFile: 'client-secret',
              scopes: ['openid', 'email', 'profile', 'groups'],
            },
          ],
          externalUrl: EXTERNAL,
          cookie: { secretFile: 'cookie.key' },
          headers: { 'x-forwarded-user': 'sub', 'x-forwarded-email': 'email' },
          skip: ['/healthz'],
          assertion: {},
        },
      },
    });
    origin = `https://localhost:${h.port}`;
    upstreamOrigin = new URL(h.proxy.config.listeners[0]?.upstream as string).origin;
    dispatcher = new Agent({ connect: { ca: webCa.certPem, servername: 'localhost' } });
    const walk = new BrowserWalk(dispatcher, op.issuer, origin, EXTERNAL);
    step = walk.step.bind(walk);
    browse = walk.browse.bind(walk);
  });
  afterAll(async () => {
    await h.close();
    await op.close();
    await dispatcher.close();
  });

  it('an API call without a session gets 401, never a redirect; a skipped path is served', async () => {
    const api = await step(new CookieJar(), `${origin}/api/items`, {
      headers: { accept: 'application/json', 'sec-fetch-mode': 'cors' },
    });
    expect(api.status).toBe(401);
    expect(api.location).toBeNull();
    expect((await step(new CookieJar(), `${origin}/healthz`)).status).toBe(200);
  });

  it('a browser is sent to the provider with PKCE, state and nonce, in a transaction cookie', async () => {
    const s = await step(new CookieJar(), `${origin}/app/page?x=1`);
    expect(s.status).toBe(302);
    const to = new URL(s.location as string);
    expect(to.origin).toBe(op.issuer);
    expect(to.searchParams.get('code_challenge_method')).toBe('S256');
    expect(to.searchParams.get('redirect_uri')).toBe(`${EXTERNAL}/.portcullis/callback`);
    for (const p of ['state', 'nonce', 'code_challenge'])
      expect(to.searchParams.get(p)).toMatch(/^[\w-]{20,}$/);
    const tx = s.setCookies.find((c) => c.startsWith('__Host-portcullis-tx='));
    expect(tx).toMatch(/; Path=\/; Secure; HttpOnly; SameSite=Lax; Max-Age=600$/);
  });

  it('logs a person in and back to the page asked for; the upstream sees who, never the session cookie', async () => {
    const jar = new CookieJar();
    jar.set(origin, 'theme', 'dark');
    const end = await browse(jar, `${origin}/app/page?x=1`, 'alice');
    expect(end.status).toBe(200);
    expect(end.url).toBe(`${origin}/app/page?x=1`);
    const e = JSON.parse(end.body) as EchoReply;
    expect(e.headers['x-forwarded-user']).toBe('alice');
    expect(e.headers['x-forwarded-email']).toBe('alice@example.com');
    expect(e.headers.cookie).toBe('theme=dark');
    const session = end.trail.flatMap((s) => s.setCookies).find((c) => c.startsWith('__Host-portcullis='));
    expect(session).toMatch(/; Path=\/; Secure; HttpOnly; SameSite=Lax; Max-Age=28800$/);
    // Client copies of identity headers never pass.
    const forged = await step(jar, `${origin}/app/who`, { headers: { 'x-forwarded-user': 'admin' } });
    expect((JSON.parse(forged.body) as EchoReply).headers['x-forwarded-user']).toBe('alice');
  });

  it('signs an identity assertion the upstream can verify with the JWKS Portcullis serves', async () => {
    const jar = new CookieJar();
    const page = await browse(jar, `${origin}/app/page`, 'admin');
    const jwt = String((JSON.parse(page.body) as EchoReply).headers['x-portcullis-assertion']);
    const jwks = await step(new CookieJar(), `${origin}/.portcullis/jwks.json`, {
      headers: { accept: 'application/json', 'sec-fetch-mode': 'cors' },
    });
    expect(jwks.status).toBe(200);
    const { payload, protectedHeader } = await jwtVerify(jwt, createLocalJWKSet(JSON.parse(jwks.body)), {
      issuer: EXTERNAL,
      audience: upstreamOrigin,
      algorithms: ['ES256'],
    });
    expect(protectedHeader.kid).toBeDefined();
    expect(payload).toMatchObject({
      sub: 'admin',
      idp: op.issuer,
      groups: ['admins'],
      email: 'admin@example.com',
    });
    expect((payload.exp as number) - (payload.iat as number)).toBe(60);
    // A forged one from the client never reaches the upstream.
    const forged = await step(jar, `${origin}/app/page`, { headers: { 'x-portcullis-assertion': 'forged' } });
    expect((JSON.parse(forged.body) as EchoReply).headers['x-portcullis-assertion']).not.toBe('forged');
  });

  it('AuthorizationPolicy decides on the claims: only admins reach /admin/*', async () => {
    const alice = new CookieJar();
    expect((await browse(alice, `${origin}/admin/panel`, 'alice')).status).toBe(403);
    const admin = new CookieJar();
    const r = await browse(admin, `${origin}/admin/panel`, 'admin');
    expect(r.status).toBe(200);
    expect((JSON.parse(r.body) as EchoReply).headers['x-forwarded-user']).toBe('admin');
  });

  it('audits the person and the provider, never the cookie or a token', async () => {
    const jar = new CookieJar();
    await browse(jar, `${origin}/app/audited?id=42`, 'carol');
    await step(jar, `${origin}/app/audited-again`);
    const file = h.dir.file('audit.ndjson');
    await until(
      'the event',
      () => existsSync(file) && readFileSync(file, 'utf8').includes('/app/audited-again'),
    );
    const text = readFileSync(file, 'utf8');
    const event = text
      .split('\n')
      .filter((l) => l.includes('/app/audited-again'))
      .map((l) => JSON.parse(l) as { request: Record<string, unknown> })[0];
    expect(event?.request).toMatchObject({ principal: `${op.issuer}/carol`, provider: 'test' });
    const session = jar.get(origin, '__Host-portcullis') as string;
    expect(text).not.toContain(session);
    expect(text).not.toContain(session.slice(20, 60));
  });

  it('a session too large for one cookie is split over several, joined again, and never forwarded', async () => {
    op.groups.set('gina', [
      'admins',
      ...Array.from({ length: 150 }, (_, i) => `a-rather-long-group-name-${i}`),
    ]);
    const jar = new CookieJar();
    jar.set(origin, 'theme', 'dark');
    const page = await browse(jar, `${origin}/admin/big`, 'gina');
    expect(page.status).toBe(200);
    expect(jar.get(origin, '__Host-portcullis')?.startsWith('~2~')).toBe(true);
    expect(jar.get(origin, '__Host-portcullis-1')).toBeDefined();
    const e = JSON.parse(page.body) as EchoReply;
    expect(e.headers['x-forwarded-user']).toBe('gina');
    expect(e.headers.cookie).toBe('theme=dark');
    // A missing part is no session at all.
    const partial = new CookieJar();
    partial.set(origin, '__Host-portcullis', jar.get(origin, '__Host-portcullis') as string);
    expect((await step(partial, `${origin}/admin/big`)).status).toBe(302);
  });

  it('a session cookie given twice counts as none (a tossed cookie is never chosen between)', async () => {
    const jar = new CookieJar();
    await browse(jar, `${origin}/app/page`, 'alice');
    const value = jar.get(origin, '__Host-portcullis') as string;
    const twice = await step(new CookieJar(), `${origin}/app/page`, {
      headers: { cookie: `__Host-portcullis=${value}; theme=dark; __Host-portcullis=${value}` },
    });
    expect(twice.status).toBe(302);
    expect(twice.location?.startsWith(op.issuer)).toBe(true);
    const api = await step(new CookieJar(), `${origin}/app/page`, {
      headers: {
        cookie: `__Host-portcullis=${value}; __Host-portcullis=${value}`,
        accept: 'application/json',
        'sec-fetch-mode': 'cors',
      },
    });
    expect(api.status).toBe(401);
  });

  it('a tampered session cookie means logging in again', async () => {
    const jar = new CookieJar();
    await browse(jar, `${origin}/app/page`, 'alice');
    const value = jar.get(origin, '__Host-portcullis') as string;
    jar.set(origin, '__Host-portcullis', `${value.slice(0, -6)}AAAAAA`);
    const s = await step(jar, `${origin}/app/page`);
    expect(s.status).toBe(302);
    expect(s.location?.startsWith(op.issuer)).toBe(true);
  });

  it('refuses a callback whose state does not match, and a replayed code', async () => {
    const jar = new CookieJar();
    const atCallback = await browse(jar, `${origin}/app/page`, 'alice', true);
    const callback = new URL(atCallback.location as string);
    const tx = jar.get(origin, '__Host-portcullis-tx') as string;
    const forged = new URL(callback);
    forged.searchParams.set('state', 'not-the-state');
    expect((await step(jar, forged.href)).status).toBe(403);
    // The real one still works once...
    jar.set(origin, '__Host-portcullis-tx', tx);
    const ok = await step(jar, callback.href);
    expect(ok.status).toBe(302);
    expect(ok.location).toBe(`${origin}/app/page`);
    // ...and not twice: the provider refuses the used code, even with the transaction cookie back.
    jar.set(origin, '__Host-portcullis-tx', tx);
    expect((await step(jar, callback.href)).status).toBe(403);
    // Without a transaction at all: start again.
    expect((await step(new CookieJar(), callback.href)).status).toBe(400);
  });

  it('comes back to this origin only, whatever path the login started from', async () => {
    const jar = new CookieJar();
    const atCallback = await browse(jar, `${origin}//evil.example/steal`, 'alice', true);
    const done = await step(jar, atCallback.location as string);
    expect(done.status).toBe(302);
    expect(done.location).toBe(`${origin}/`);
  });

  it('refuses a state-changing request with the session from another site (CSRF)', async () => {
    const jar = new CookieJar();
    await browse(jar, `${origin}/app/page`, 'alice');
    const foreign = await step(jar, `${origin}/app/transfer`, {
      method: 'POST',
      body: 'amount=100',
      headers: { origin: 'https://evil.example' },
    });
    expect(foreign.status).toBe(403);
    const same = await step(jar, `${origin}/app/transfer`, {
      method: 'POST',
      body: 'amount=1',
      headers: { origin: EXTERNAL },
    });
    expect(same.status).toBe(200);
  });

  it('logout clears the session and ends the provider session', async () => {
    const jar = new CookieJar();
    await browse(jar, `${origin}/app/page`, 'alice');
    const out = await step(jar, `${origin}/.portcullis/logout`);
    expect(out.status).toBe(302);
    expect(out.location?.startsWith(`${op.issuer}/session/end`)).toBe(true);
    expect(out.setCookies.some((c) => /^__Host-portcullis=; .*Max-Age=0/.test(c))).toBe(true);
    expect(jar.get(origin, '__Host-portcullis')).toBeUndefined();
    expect((await step(jar, `${origin}/app/page`)).status).toBe(302);
  });
});

describe('login configuration', () => {
  const login = (issuer: string): Record<string, unknown> => ({
    providers: [{ name: 'corp', issuer, clientId: 'c', clientSecretFile: 'secret' }],
    cookie: { secretFile: 'cookie.key' },
  });

  it('takes an https issuer, or http on loopback only', () => {
    const raw = (issuer: string): unknown => ({
      trustDomain: 'example.org',
      identity: { cert: 'a.pem', key: 'a.key', bundles: { 'example.org': 'b.pem' } },
      listeners: [
        { name: 'web', address: '127.0.0.1:0', upstream: 'http://127.0.0.1:1', login: login(issuer) },
      ],
    });
    expect(() => configFromObject(raw('https://idp.example.com'), '/tmp')).not.toThrow();
    expect(() => configFromObject(raw('http://127.0.0.1:9000'), '/tmp')).not.toThrow();
    expect(() => configFromObject(raw('http://idp.example.com'), '/tmp')).toThrow(
      /listeners\[0\]\.login\.providers\[0\]\.issuer: http:\/\/idp\.example\.com: an issuer is https:\/\//,
    );
  });

  it('refuses a session key shorter than 32 bytes, naming the field, and nothing listens', async () => {
    await expect(
      startHarness({
        files: { secret: 's', 'cookie.key': `${Buffer.alloc(16, 1).toString('base64')}\n` },
        listener: { login: login('https://idp.example.com') },
      }),
    ).rejects.toThrow(
      /listeners\[0\]\.login\.cookie\.secretFile: .*cookie\.key: 16 bytes; a session key is at least 32 random bytes/,
    );
  });
});

describe('several providers on one listener', () => {
  const ops = [new TestProvider(), new TestProvider()];
  let h: Harness;
  let walk: BrowserWalk;
  let dispatcher: Agent;
  let origin: string;

  beforeAll(async () => {
    const pki = await makePki();
    const issuers = await Promise.all(ops.map((o) => o.listen()));
    h = await startHarness({
      pki,
      files: {
        'client-secret': 'client-secret\n',
        'cookie.key': `${Buffer.alloc(32, 3).toString('base64')}\n`,
      },
      listener: {
        tls: { cert: 'api.pem', key: 'api.key', clientCertificates: 'none' },
        login: {
          providers: [
            { name: 'corp', issuer: issuers[0], clientId: 'portcullis', clientSecretFile: 'client-secret' },
            {
              name: 'partners',
              issuer: issuers[1],
              clientId: 'portcullis',
              clientSecretFile: 'client-secret',
            },
          ],
          cookie: { secretFile: 'cookie.key' },
          headers: { 'x-forwarded-user': 'sub' },
        },
      },
    });
    origin = `https://localhost:${h.port}`;
    for (const o of ops) o.configure('portcullis', 'client-secret', `${origin}/.portcullis/callback`);
    dispatcher = new Agent({ connect: { ca: h.pki.ca.certPem } });
    walk = new BrowserWalk(dispatcher, issuers[1] as string, origin);
  });
  afterAll(async () => {
    await h.close();
    for (const o of ops) await o.close();
    await dispatcher.close();
  });

  it('a person picks a provider on a small page, and comes back signed in by that one', async () => {
    const jar = new CookieJar();
    const first = await walk.step(jar, `${origin}/app/x?y=1`);
    expect(first.status).toBe(302);
    expect(first.location).toBe(`${origin}/.portcullis/login?rd=${encodeURIComponent('/app/x?y=1')}`);
    const page = await walk.step(jar, first.location as string);
    expect(page.status).toBe(200);
    expect(page.body).toContain('>corp</a>');
    const link = /href="([^"]*provider=partners[^"]*)"/.exec(page.body)?.[1]?.replaceAll('&amp;', '&');
    expect(link).toBeDefined();
    const end = await walk.browse(jar, `${origin}${link}`, 'bob');
    expect(end.status).toBe(200);
    expect(end.url).toBe(`${origin}/app/x?y=1`);
    expect((JSON.parse(end.body) as EchoReply).headers['x-forwarded-user']).toBe('bob');
  });

  it('never returns anywhere but this origin, whatever rd says', async () => {
    for (const rd of [
      'https://evil.example/',
      '//evil.example/',
      '/\t/evil.example',
      '/\\evil.example',
      'javascript:alert(1)',
    ]) {
      const jar = new CookieJar();
      const atCallback = await walk.browse(
        jar,
        `${origin}/.portcullis/login?provider=partners&rd=${encodeURIComponent(rd)}`,
        'bob',
        true,
      );
      const done = await walk.step(jar, atCallback.location as string);
      expect({ rd, location: done.location }).toEqual({ rd, location: `${origin}/` });
    }
  });
});

describe('an expired session', () => {
  it('means logging in again', async () => {
    const g = await startLoginGateway({ login: { cookie: { secretFile: 'cookie.key', ttl: '1s' } } });
    try {
      const jar = new CookieJar();
      expect((await g.walk.browse(jar, `${g.origin}/app`, 'dave')).status).toBe(200);
      // The browser would drop the cookie at Max-Age; a client that keeps it is refused all the same.
      const value = jar.get(g.origin, '__Host-portcullis') as string;
      await new Promise((r) => setTimeout(r, 2100));
      jar.set(g.origin, '__Host-portcullis', value);
      const again = await g.walk.step(jar, `${g.origin}/app`);
      expect(again.status).toBe(302);
      expect(again.location?.startsWith(g.issuer)).toBe(true);
    } finally {
      await g.close();
    }
  });
});

describe('sessions with a refresh token', () => {
  it('follow the provider: new groups are seen at the next refresh, a disabled person is logged out', async () => {
    const g = await startLoginGateway({
      policies: POLICIES,
      providers: (issuer) => [
        {
          name: 'test',
          issuer,
          clientId: 'portcullis',
          clientSecretFile: 'client-secret',
          scopes: ['openid', 'groups', 'offline_access'],
        },
      ],
      login: { refreshInterval: '1s' },
    });
    try {
      const jar = new CookieJar();
      const first = await g.walk.browse(jar, `${g.origin}/admin/panel`, 'erin');
      expect(first.status).toBe(403); // erin is in users
      g.op.groups.set('erin', ['admins']);
      await new Promise((r) => setTimeout(r, 1100));
      const promoted = await g.walk.step(jar, `${g.origin}/admin/panel`);
      expect(promoted.status).toBe(200);
      expect(promoted.setCookies.some((c) => /^__Host-portcullis=[^;]/.test(c))).toBe(true);
      g.op.disabled.add('erin');
      await new Promise((r) => setTimeout(r, 1100));
      const gone = await g.walk.step(jar, `${g.origin}/admin/panel`);
      expect(gone.status).toBe(302);
      expect(gone.location?.startsWith(g.issuer)).toBe(true);
    } finally {
      await g.close();
    }
  });
});

describe('a provider that keeps profile claims for userinfo', () => {
  it('userinfo: true adds them at login; without it the session has the ID token’s only', async () => {
    const provider = (issuer: string, name: string, userinfo: boolean): Record<string, unknown> => ({
      name,
      issuer,
      clientId: 'portcullis',
      clientSecretFile: 'client-secret',
      scopes: ['openid', 'email'],
      userinfo,
    });
    const g = await startLoginGateway({
      providers: (issuer) => [provider(issuer, 'with-userinfo', true), provider(issuer, 'without', false)],
      login: { headers: { 'x-forwarded-email': 'email', 'x-forwarded-user': 'sub' } },
      claimsInUserinfoOnly: true,
    });
    try {
      const seen = async (name: string): Promise<EchoReply['headers']> => {
        const end = await g.walk.browse(
          new CookieJar(),
          `${g.origin}/.portcullis/login?provider=${name}&rd=/me`,
          'frank',
        );
        expect(end.status).toBe(200);
        return (JSON.parse(end.body) as EchoReply).headers;
      };
      expect(await seen('with-userinfo')).toMatchObject({
        'x-forwarded-user': 'frank',
        'x-forwarded-email': 'frank@example.com',
      });
      const without = await seen('without');
      expect(without['x-forwarded-user']).toBe('frank');
      expect(without['x-forwarded-email']).toBeUndefined();
    } finally {
      await g.close();
    }
  });
});
