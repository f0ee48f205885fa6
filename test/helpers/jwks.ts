import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, type JWK, type JWTPayload, SignJWT } from 'jose';

export interface SigningKey {
  kid: string;
  alg: string;
  privateKey: CryptoKey;
  jwk: JWK;
}

type CryptoKey = Awaited<ReturnType<typeof generateKeyPair>>['privateKey'];

export async function makeKey(kid: string, alg = 'RS256'): Promise<SigningKey> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = await exportJWK(publicKey);
  return { kid, alg, privateKey, jwk: { ...jwk, kid, alg, use: 'sig' } };
}

export const ISSUER = 'https://issuer.example';

/** Signs a token; `claims` override the defaults (iss, sub, aud, exp in an hour). */
export function sign(
  key: SigningKey,
  claims: JWTPayload = {},
  header: Record<string, unknown> = {},
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ iss: ISSUER, sub: 'alice', aud: 'api', iat: now, exp: now + 3600, ...claims })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, ...header })
    .sign(key.privateKey);
}

/** A token with `alg: none` and no signature. */
export function unsigned(claims: JWTPayload = {}): string {
  const now = Math.floor(Date.now() / 1000);
  const enc = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${enc({ alg: 'none', typ: 'JWT' })}.${enc({ iss: ISSUER, sub: 'alice', aud: 'api', exp: now + 3600, ...claims })}.`;
}

/**
 * A real JWKS server on loopback: serves the current key set, counts fetches, can be switched
 * off (answers 503) to play an outage, and serves an OpenID discovery document.
 */
export class JwksServer {
  readonly server: http.Server;
  keys: SigningKey[];
  fetches = 0;
  down = false;
  url = '';

  constructor(keys: SigningKey[]) {
    this.keys = keys;
    this.server = http.createServer((req, res) => {
      if (req.url === '/.well-known/openid-configuration') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ issuer: this.url, jwks_uri: `${this.url}/jwks.json` }));
        return;
      }
      this.fetches++;
      if (this.down) {
        res.writeHead(503);
        res.end('down');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys: this.keys.map((k) => k.jwk) }));
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return `${this.url}/jwks.json`;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}

export function requestAuthentication(rules: Record<string, unknown>[], name = 'jwt', extra = ''): string {
  return `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: { name: ${name}, namespace: default }
spec:
  selector: { matchLabels: { app: api } }
  jwtRules: ${JSON.stringify(rules)}
${extra}`;
}
