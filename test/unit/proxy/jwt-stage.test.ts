import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { JwksRegistry } from '../../../src/authn/jwks.js';
import type { JwtRule } from '../../../src/istio/request-authentication.js';
import type { RequestContext } from '../../../src/proxy/context.js';
import { JwtStage } from '../../../src/proxy/stages/jwt.js';
import { RequestLineStage } from '../../../src/proxy/stages/request-line.js';
import { ISSUER, makeKey, sign } from '../../helpers/jwks.js';
import { describedRequest } from '../../helpers/request.js';

function rule(jwks: string, extra: Partial<JwtRule> = {}): JwtRule {
  return {
    issuer: ISSUER,
    audiences: [],
    jwksUri: null,
    jwks,
    fromHeaders: [],
    fromParams: [],
    fromCookies: [],
    defaultLocations: true,
    outputPayloadToHeader: null,
    forwardOriginalToken: false,
    outputClaimToHeaders: [],
    timeoutMs: 5000,
    source: 'test',
    certificateBound: false,
    dpop: false,
    ...extra,
  };
}

/** A request as the proxy would describe it to the stages (no socket), after the request-line stage. */
function context(url: string, headers: Record<string, string>): RequestContext {
  const all: Record<string, string> = { host: 'api.example', ...headers };
  const ctx = describedRequest({ target: url, headers: Object.entries(all) });
  expect(new RequestLineStage().run(ctx)).toBeNull();
  return ctx;
}

describe('JWT stage results on the request context', () => {
  it('sets requestPrincipal, claims, audiences and presenter — what authorization reads', async () => {
    const key = await makeKey('k', 'ES256');
    const registry = new JwksRegistry(
      { refreshIntervalMs: 60_000, minRefetchIntervalMs: 1000 },
      pino({ level: 'silent' }),
    );
    const stage = new JwtStage(
      [rule(JSON.stringify({ keys: [key.jwk] }))],
      registry,
      { clockSkewMs: 0, cacheSize: 10 },
      pino({ level: 'silent' }),
    );
    const token = await sign(key, { sub: 'bob', aud: ['api', 'web'], azp: 'cli', scope: 'read write' });

    const ctx = context('/x', { authorization: `Bearer ${token}` });
    expect(await stage.run(ctx)).toBeNull();
    expect(ctx.attrs.requestPrincipal).toBe(`${ISSUER}/bob`);
    expect(ctx.attrs.claims).toMatchObject({ sub: 'bob', scope: 'read write' });
    expect(ctx.attrs.audiences).toEqual(['api', 'web']);
    expect(ctx.attrs.presenter).toBe('cli');
    expect(ctx.dropHeaders).toContain('authorization');

    // The second time the stage answers synchronously from the cache (no promise).
    const again = context('/x', { authorization: `Bearer ${token}` });
    expect(stage.run(again)).toBeNull();
    expect(again.attrs.requestPrincipal).toBe(`${ISSUER}/bob`);

    const anonymous = context('/x', {});
    expect(stage.run(anonymous)).toBeNull();
    expect(anonymous.attrs.requestPrincipal).toBe('');
    expect(anonymous.attrs.claims).toBeNull();
    expect(anonymous.attrs.audiences).toEqual([]);
    registry.close();
  });
});
