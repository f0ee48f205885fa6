import type { IncomingMessage, ServerResponse } from 'node:http';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { JwksRegistry } from '../../../src/authn/jwks.js';
import type { JwtRule } from '../../../src/istio/request-authentication.js';
import { RequestContext } from '../../../src/proxy/context.js';
import type { ListenerPlan } from '../../../src/proxy/plan.js';
import { JwtStage } from '../../../src/proxy/stages/jwt.js';
import { RequestLineStage } from '../../../src/proxy/stages/request-line.js';
import { ISSUER, makeKey, sign } from '../../helpers/jwks.js';

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
    ...extra,
  };
}

/** A request as Node's HTTP server would hand it over (only the fields the context reads). */
function context(url: string, headers: Record<string, string>): RequestContext {
  const all: Record<string, string> = { host: 'api.example', ...headers };
  const req = {
    method: 'GET',
    url,
    headers: all,
    rawHeaders: Object.entries(all).flat(),
    socket: { remoteAddress: '127.0.0.1' },
  };
  const ctx = new RequestContext(
    null as unknown as ListenerPlan,
    req as unknown as IncomingMessage,
    {} as ServerResponse,
  );
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
    expect(ctx.requestPrincipal).toBe(`${ISSUER}/bob`);
    expect(ctx.claims).toMatchObject({ sub: 'bob', scope: 'read write' });
    expect(ctx.audiences).toEqual(['api', 'web']);
    expect(ctx.presenter).toBe('cli');
    expect(ctx.dropHeaders).toContain('authorization');

    // The second time the stage answers synchronously from the cache (no promise).
    const again = context('/x', { authorization: `Bearer ${token}` });
    expect(stage.run(again)).toBeNull();
    expect(again.requestPrincipal).toBe(`${ISSUER}/bob`);

    const anonymous = context('/x', {});
    expect(stage.run(anonymous)).toBeNull();
    expect(anonymous.requestPrincipal).toBe('');
    expect(anonymous.claims).toBeNull();
    expect(anonymous.audiences).toEqual([]);
    registry.close();
  });
});
