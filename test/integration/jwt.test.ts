import { writeFileSync } from 'node:fs';
import https from 'node:https';
import { pathToFileURL } from 'node:url';
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
  unsigned,
} from '../helpers/jwks.js';
import type { EchoReply } from '../helpers/upstream.js';

function echo(text: string): EchoReply {
  return JSON.parse(text) as EchoReply;
}

describe('RequestAuthentication against a real JWKS server', () => {
  let h: Harness;
  let jwks: JwksServer;
  let rs: SigningKey;
  let es: SigningKey;
  let other: SigningKey;
  const bearer = (t: string): Record<string, string> => ({ authorization: `Bearer ${t}` });

  beforeAll(async () => {
    rs = await makeKey('rs-1', 'RS256');
    es = await makeKey('es-1', 'ES256');
    other = await makeKey('rs-1', 'RS256'); // same kid, different key: a forged signature
    jwks = new JwksServer([rs, es]);
    const uri = await jwks.listen();
    h = await startHarness({
      policies: requestAuthentication([
        {
          issuer: ISSUER,
          jwksUri: uri,
          audiences: ['api', 'api2'],
          outputClaimToHeaders: [
            { header: 'x-jwt-sub', claim: 'sub' },
            { header: 'x-jwt-tier', claim: 'org.tier' },
          ],
          outputPayloadToHeader: 'x-jwt-payload',
        },
        {
          issuer: 'https://partner.example',
          jwksUri: uri,
          fromHeaders: [{ name: 'x-partner-token', prefix: 'Token ' }],
          fromParams: ['partner_token'],
          fromCookies: ['partner_session'],
          forwardOriginalToken: true,
        },
      ]),
      config: { jwt: { jwksMinRefetchInterval: '300ms' } },
    });
  });
  afterAll(async () => {
    await h.close();
    await jwks.close();
  });

  it('accepts a valid RS256 token: claims reach the upstream as headers and the token does not', async () => {
    const token = await sign(rs, { org: { tier: 'gold' } });
    const res = await request(`${h.url}/me`, { ...h.client, headers: bearer(token) });
    expect(res.status).toBe(200);
    const e = echo(res.text);
    expect(e.headers['x-jwt-sub']).toBe('alice');
    expect(e.headers['x-jwt-tier']).toBe('gold');
    expect(JSON.parse(Buffer.from(String(e.headers['x-jwt-payload']), 'base64url').toString())).toMatchObject(
      { iss: ISSUER, sub: 'alice' },
    );
    expect(e.headers.authorization).toBeUndefined();
  });

  it('accepts a valid ES256 token', async () => {
    const res = await request(`${h.url}/es`, { ...h.client, headers: bearer(await sign(es)) });
    expect(res.status).toBe(200);
  });

  it('lets a request without a token through, with no principal headers (authorization decides)', async () => {
    const res = await request(`${h.url}/anon`, {
      ...h.client,
      headers: { 'x-jwt-sub': 'admin', authorization: 'Basic dXNlcjpwdw==' },
    });
    expect(res.status).toBe(200);
    const e = echo(res.text);
    // A spoofed claim header never reaches the upstream; a non-Bearer Authorization is not a JWT.
    expect(e.headers['x-jwt-sub']).toBeUndefined();
    expect(e.headers.authorization).toBe('Basic dXNlcjpwdw==');
  });

  it('overwrites a client-sent claim header with the verified claim', async () => {
    const res = await request(`${h.url}/spoof`, {
      ...h.client,
      headers: { ...bearer(await sign(rs)), 'X-Jwt-Sub': 'root' },
    });
    const e = echo(res.text);
    expect(e.headers['x-jwt-sub']).toBe('alice');
    expect(e.rawHeaders.filter((n) => n.toLowerCase() === 'x-jwt-sub')).toHaveLength(1);
  });

  const now = (): number => Math.floor(Date.now() / 1000);
  const INVALID: [string, () => Promise<string>][] = [
    ['expired', () => sign(rs, { exp: now() - 3600 })],
    ['not yet valid', () => sign(rs, { nbf: now() + 3600 })],
    ['from an unknown issuer', () => sign(rs, { iss: 'https://evil.example' })],
    ['with a bad signature', () => sign(other)],
    ['with alg none', async () => unsigned()],
    ['with an unknown kid', () => sign(rs, {}, { kid: 'nope' })],
    ['malformed', async () => 'not.a.jwt'],
    ['truncated', async () => (await sign(rs)).slice(0, -10)],
    [
      'with alg HS256 keyed by the public key (algorithm confusion)',
      async () => {
        const { SignJWT } = await import('jose');
        const pub = new TextEncoder().encode(JSON.stringify(rs.jwk));
        return new SignJWT({ iss: ISSUER, sub: 'alice', aud: 'api' })
          .setProtectedHeader({ alg: 'HS256', kid: 'rs-1' })
          .sign(pub);
      },
    ],
    ['with an ES256 header on an RSA key', () => sign(es, {}, { kid: 'rs-1' })],
  ];
  it.each(INVALID)('refuses a token %s with 401 and a Bearer challenge', async (_name, make) => {
    const before = h.upstream.requests;
    const res = await request(`${h.url}/secure?x=1`, { ...h.client, headers: bearer(await make()) });
    expect(res.status).toBe(401);
    expect(res.text).toMatch(/^Jwt verification fails\nrequest id: [0-9a-f-]{36}\n$/);
    expect(res.headers['www-authenticate']).toBe(`Bearer realm="https://localhost:${h.port}/secure"`);
    expect(h.upstream.requests).toBe(before);
  });

  it('refuses a valid token for another audience with 403', async () => {
    const res = await request(`${h.url}/aud`, {
      ...h.client,
      headers: bearer(await sign(rs, { aud: ['web', 'mobile'] })),
    });
    expect(res.status).toBe(403);
    expect(res.text).toMatch(/^Audiences in Jwt are not allowed\nrequest id: [0-9a-f-]{36}\n$/);
    const ok = await request(`${h.url}/aud`, {
      ...h.client,
      headers: bearer(await sign(rs, { aud: ['web', 'api2'] })),
    });
    expect(ok.status).toBe(200);
  });

  it('reads a token from a custom header with its prefix, and refuses one without the prefix', async () => {
    const token = await sign(rs, { iss: 'https://partner.example', aud: 'x' });
    const ok = await request(`${h.url}/p`, { ...h.client, headers: { 'x-partner-token': `Token ${token}` } });
    expect(ok.status).toBe(200);
    // forwardOriginalToken: true keeps it for the upstream.
    expect(echo(ok.text).headers['x-partner-token']).toBe(`Token ${token}`);
    const bad = await request(`${h.url}/p`, { ...h.client, headers: { 'x-partner-token': token } });
    expect(bad.status).toBe(401);
  });

  it('reads a token from a query parameter and, unless forwarded, strips only that parameter', async () => {
    const token = await sign(rs);
    const res = await request(`${h.url}/q?a=1&access_token=${token}&b=2`, h.client);
    expect(res.status).toBe(200);
    expect(echo(res.text).url).toBe('/q?a=1&b=2');
    const partner = await sign(rs, { iss: 'https://partner.example' });
    const kept = await request(`${h.url}/q?partner_token=${partner}`, h.client);
    expect(kept.status).toBe(200);
    expect(echo(kept.text).url).toBe(`/q?partner_token=${partner}`);
  });

  it('reads a token from a cookie', async () => {
    const partner = await sign(rs, { iss: 'https://partner.example' });
    const res = await request(`${h.url}/c`, {
      ...h.client,
      headers: { cookie: `theme=dark; partner_session=${partner}` },
    });
    expect(res.status).toBe(200);
    const expired = await sign(rs, { iss: 'https://partner.example', exp: now() - 3600 });
    expect(
      (await request(`${h.url}/c`, { ...h.client, headers: { cookie: `partner_session=${expired}` } }))
        .status,
    ).toBe(401);
  });

  it('requires every token to be valid when a request carries several', async () => {
    const good = await sign(rs);
    const expired = await sign(rs, { iss: 'https://partner.example', exp: now() - 3600 });
    const res = await request(`${h.url}/two?partner_token=${expired}`, {
      ...h.client,
      headers: bearer(good),
    });
    expect(res.status).toBe(401);
    const partner = await sign(rs, { iss: 'https://partner.example' });
    expect(
      (await request(`${h.url}/two?partner_token=${partner}`, { ...h.client, headers: bearer(good) })).status,
    ).toBe(200);
  });

  it('lets CORS preflight requests through without checking tokens', async () => {
    const res = await request(`${h.url}/cors`, {
      ...h.client,
      method: 'OPTIONS',
      headers: {
        origin: 'https://app.example',
        'access-control-request-method': 'POST',
        ...bearer('garbage'),
      },
    });
    expect(res.status).toBe(200);
  });

  it('verifies a repeated token once: a thousand requests, one signature check', async () => {
    const token = await sign(rs, { jti: 'thousand' });
    const stats = h.proxy.jwks.stats;
    const agent = new https.Agent({ keepAlive: true, maxSockets: 8 });
    expect((await request(`${h.url}/n`, { ...h.client, agent, headers: bearer(token) })).status).toBe(200);
    const before = stats.verifications;
    const hits = stats.cacheHits;
    let ok = 0;
    for (let batch = 0; batch < 999; batch += 37) {
      const n = Math.min(37, 999 - batch);
      const results = await Promise.all(
        Array.from({ length: n }, () =>
          request(`${h.url}/n`, { ...h.client, agent, headers: bearer(token) }),
        ),
      );
      ok += results.filter((r) => r.status === 200).length;
    }
    agent.destroy();
    expect(ok).toBe(999);
    expect(stats.verifications - before).toBe(0);
    expect(stats.cacheHits - hits).toBe(999);
  });
});

describe('JWKS outages and key rotation', () => {
  let h: Harness;
  let jwks: JwksServer;
  let k1: SigningKey;
  beforeAll(async () => {
    k1 = await makeKey('k1');
    jwks = new JwksServer([k1]);
    const uri = await jwks.listen();
    h = await startHarness({
      policies: requestAuthentication([{ issuer: ISSUER, jwksUri: uri }]),
      config: { jwt: { jwksMinRefetchInterval: '200ms', clockSkew: '0s' } },
    });
  });
  afterAll(async () => {
    await h.close();
    await jwks.close();
  });

  it('keeps using known keys while the JWKS server is down, and refuses tokens for keys never fetched', async () => {
    expect(
      (await request(`${h.url}/a`, { ...h.client, headers: { authorization: `Bearer ${await sign(k1)}` } }))
        .status,
    ).toBe(200);
    jwks.down = true;
    try {
      await new Promise((r) => setTimeout(r, 250));
      // A fresh token (not cached) signed by the known key still verifies.
      const fresh = await sign(k1, { jti: 'fresh' });
      expect(
        (await request(`${h.url}/b`, { ...h.client, headers: { authorization: `Bearer ${fresh}` } })).status,
      ).toBe(200);
      const k2 = await makeKey('k2');
      jwks.keys = [k1, k2];
      const unknown = await sign(k2);
      expect(
        (await request(`${h.url}/c`, { ...h.client, headers: { authorization: `Bearer ${unknown}` } }))
          .status,
      ).toBe(401);
      expect(h.proxy.jwks.stats.jwksFetchFailures).toBeGreaterThan(0);
    } finally {
      jwks.down = false;
    }
  });

  it('does not turn a flood of unknown kids into a flood of fetches', async () => {
    await new Promise((r) => setTimeout(r, 250));
    const bogus = await makeKey('bogus');
    const tokens = await Promise.all(
      Array.from({ length: 40 }, (_, i) => sign(bogus, { jti: String(i) }, { kid: `made-up-${i}` })),
    );
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    const before = jwks.fetches;
    const t0 = performance.now();
    // One after another: without a cool-down, every one of these would fetch the key set.
    for (const t of tokens) {
      expect(
        (await request(`${h.url}/flood`, { ...h.client, agent, headers: { authorization: `Bearer ${t}` } }))
          .status,
      ).toBe(401);
    }
    const elapsed = performance.now() - t0;
    agent.destroy();
    // At most one fetch per 200 ms cool-down window that the flood spanned.
    expect(jwks.fetches - before).toBeLessThanOrEqual(1 + Math.ceil(elapsed / 200));
    expect(jwks.fetches - before).toBeLessThan(tokens.length / 2);
  });

  it('follows key rotation at the issuer without a restart, and drops cached tokens of a removed key', async () => {
    await new Promise((r) => setTimeout(r, 250));
    const oldToken = await sign(k1, { jti: 'old' });
    expect(
      (await request(`${h.url}/r`, { ...h.client, headers: { authorization: `Bearer ${oldToken}` } })).status,
    ).toBe(200);
    const k3 = await makeKey('k3');
    jwks.keys = [k3];
    const newToken = await sign(k3);
    // The unknown kid triggers a fetch, which also removes k1.
    expect(
      (await request(`${h.url}/r`, { ...h.client, headers: { authorization: `Bearer ${newToken}` } })).status,
    ).toBe(200);
    expect(
      (await request(`${h.url}/r`, { ...h.client, headers: { authorization: `Bearer ${oldToken}` } })).status,
    ).toBe(401);
  });

  it('rejects a cached token once it expires', async () => {
    const k = await makeKey('short');
    jwks.keys = [k];
    await new Promise((r) => setTimeout(r, 250));
    // Two whole seconds of validity at least, so the first two calls never race the expiry.
    const exp = Math.floor(Date.now() / 1000) + 3;
    const token = await sign(k, { exp });
    expect(
      (await request(`${h.url}/e`, { ...h.client, headers: { authorization: `Bearer ${token}` } })).status,
    ).toBe(200);
    const hits = h.proxy.jwks.stats.cacheHits;
    expect(
      (await request(`${h.url}/e`, { ...h.client, headers: { authorization: `Bearer ${token}` } })).status,
    ).toBe(200);
    expect(h.proxy.jwks.stats.cacheHits).toBe(hits + 1);
    await new Promise((r) => setTimeout(r, exp * 1000 - Date.now() + 200));
    expect(
      (await request(`${h.url}/e`, { ...h.client, headers: { authorization: `Bearer ${token}` } })).status,
    ).toBe(401);
  });
});

describe('key set sources', () => {
  it('takes inline jwks, file:// key sets and OpenID discovery', async () => {
    const inlineKey = await makeKey('inline-1', 'ES256');
    const fileKey = await makeKey('file-1');
    const discKey = await makeKey('disc-1');
    const disc = new JwksServer([discKey]);
    await disc.listen();
    const dir = (await import('../helpers/pki.js')).TempDir;
    const tmp = new dir();
    const file = tmp.file('jwks.json');
    writeFileSync(file, JSON.stringify({ keys: [fileKey.jwk] }));
    const h = await startHarness({
      policies: requestAuthentication([
        { issuer: 'https://inline.example', jwks: JSON.stringify({ keys: [inlineKey.jwk] }) },
        { issuer: 'https://file.example', jwksUri: pathToFileURL(file).href },
        { issuer: disc.url },
      ]),
    });
    try {
      for (const [key, iss] of [
        [inlineKey, 'https://inline.example'],
        [fileKey, 'https://file.example'],
        [discKey, disc.url],
      ] as const) {
        const res = await request(`${h.url}/src`, {
          ...h.client,
          headers: { authorization: `Bearer ${await sign(key, { iss })}` },
        });
        expect(res.status, iss).toBe(200);
      }
    } finally {
      await h.close();
      await disc.close();
      tmp.cleanup();
    }
  });
});
