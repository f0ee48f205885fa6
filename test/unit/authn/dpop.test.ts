import { createHash } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { DpopReplayCache, verifyDpopProof } from '../../../src/authn/dpop.js';

const T = Date.parse('2026-12-07T00:00:00Z');

describe('DPoP proofs against an injected clock', () => {
  it('accepts a proof within five minutes (and the skew), and not after', async () => {
    const { publicKey, privateKey } = await generateKeyPair('ES256');
    const jwk = await exportJWK(publicKey);
    const jkt = await calculateJwkThumbprint(jwk, 'sha256');
    const token = 'a.b.c';
    const make = (jti: string): Promise<string> =>
      new SignJWT({
        htm: 'GET',
        htu: 'https://API.example:443/x',
        jti,
        iat: T / 1000,
        ath: createHash('sha256').update(token).digest('base64url'),
      })
        .setProtectedHeader({ typ: 'dpop+jwt', alg: 'ES256', jwk })
        .sign(privateKey);
    const ctx = (now: number) => ({
      method: 'GET',
      url: 'https://api.example/x',
      accessToken: token,
      jkt,
      now,
      skewSeconds: 0,
    });
    const cache = new DpopReplayCache();
    // The URL is compared normalized: scheme and host case, the default port.
    expect(await verifyDpopProof(await make('1'), ctx(T + 299_000), cache)).toBeNull();
    expect(await verifyDpopProof(await make('2'), ctx(T + 301_000), cache)).toMatch(/does not verify/);
    expect(await verifyDpopProof(await make('3'), ctx(T - 5_000), cache)).toMatch(/does not verify/);
  });
});

describe('the DPoP replay cache', () => {
  it('refuses a second use, forgets what expired, and never holds more than its bound', () => {
    const c = new DpopReplayCache(3);
    expect(c.record('a', 1000, 0)).toBe('fresh');
    expect(c.record('a', 1000, 1)).toBe('replayed');
    for (const k of ['b', 'c', 'd', 'e']) c.record(k, 1000, 2);
    expect(c.size).toBeLessThanOrEqual(3);
    // After expiry, entries go on the next record.
    c.record('f', 5000, 2000);
    expect(c.size).toBe(1);
  });
});
