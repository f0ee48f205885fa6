import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
} from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { JWK } from 'jose';
import type * as oidc from 'openid-client';
import type { LoginProviderConfig } from '../config/load.js';
import { PortcullisError } from '../errors.js';

/**
 * Login sessions and the OpenID provider client.
 *
 * A session lives in the browser: an encrypted, authenticated cookie (JWE, `dir` + A256GCM, with
 * the key from `cookie.secretFile`), so no server-side store is needed and any replica can read
 * it. What it holds is small and never a token: issuer, subject, the ID token's claims, the
 * provider and the expiry. Opened values are cached by cookie value (decrypt once per cookie, as a
 * JWT is verified once per token).
 */

/** At least 32 random bytes, written as base64 or base64url text (what `openssl rand -base64 32` writes). */
export function readSessionKey(file: string): Uint8Array {
  let text: string;
  try {
    text = readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new PortcullisError(
      'ERR_CONFIG_INVALID',
      `cannot read: ${(err as NodeJS.ErrnoException).code ?? err}`,
    );
  }
  if (!/^[A-Za-z0-9+/_-]+={0,2}$/.test(text))
    throw new PortcullisError('ERR_CONFIG_INVALID', 'not base64 or base64url text');
  const bytes = Buffer.from(text.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
  if (bytes.length < 32)
    throw new PortcullisError(
      'ERR_CONFIG_INVALID',
      `${bytes.length} bytes; a session key is at least 32 random bytes (openssl rand -base64 32)`,
    );
  // A256GCM with `dir` takes exactly 32 bytes: longer keys are cut (they are random throughout).
  return new Uint8Array(bytes.subarray(0, 32));
}

export interface Session {
  readonly iss: string;
  readonly sub: string;
  readonly claims: Readonly<Record<string, unknown>>;
  readonly provider: string;
  /** Expiry, epoch seconds: the session's absolute end (login time + cookie.ttl). */
  readonly exp: number;
  /** The provider's refresh token, when it issued one ('' otherwise): kept only inside the encrypted cookie. */
  readonly rt: string;
  /** When the claims are next refreshed with `rt` (epoch seconds; 0 without one). */
  readonly rexp: number;
}

/** The short-lived login transaction: what the callback must match. */
export interface LoginTransaction {
  readonly state: string;
  readonly nonce: string;
  readonly verifier: string;
  /** Where to return after login: a path on this origin. */
  readonly returnTo: string;
  readonly provider: string;
  readonly exp: number;
}

const MAX_CACHED = 10_000;

type Jose = typeof import('jose');
let jose: Promise<Jose> | null = null;

/** jose, loaded when a listener with `login` first needs it (startup does not pay for it otherwise). */
function loadJose(): Promise<Jose> {
  if (jose === null) jose = import('jose');
  return jose;
}

/** Seals and opens cookie values; `previous` keys still open sessions sealed before a key rotation. */
export class CookieSealer {
  private readonly key: Uint8Array;
  private readonly previous: readonly Uint8Array[];
  private readonly opened = new Map<string, Session>();

  constructor(key: Uint8Array, previous: readonly Uint8Array[] = []) {
    this.key = key;
    this.previous = previous;
  }

  async seal(payload: Session | LoginTransaction, kind: 'session' | 'tx'): Promise<string> {
    const { CompactEncrypt } = await loadJose();
    return new CompactEncrypt(new TextEncoder().encode(JSON.stringify({ k: kind, ...payload })))
      .setProtectedHeader({ alg: 'dir', enc: 'A256GCM' })
      .encrypt(this.key);
  }

  /** A session opened before (no decryption): the session, null when expired, undefined when not cached. */
  cachedSession(value: string, nowSeconds: number): Session | null | undefined {
    const hit = this.opened.get(value);
    if (hit === undefined) return undefined;
    return hit.exp > nowSeconds ? hit : null;
  }

  /** The session a cookie value holds, or null (tampered, another key, expired, not a session). */
  async openSession(value: string, nowSeconds: number): Promise<Session | null> {
    const hit = this.opened.get(value);
    if (hit !== undefined) return hit.exp > nowSeconds ? hit : null;
    const p = await this.open(value, 'session');
    if (p === null) return null;
    const s = p as unknown as Session;
    if (typeof s.iss !== 'string' || typeof s.sub !== 'string' || typeof s.exp !== 'number') return null;
    if (this.opened.size >= MAX_CACHED) this.opened.clear();
    this.opened.set(value, s);
    return s.exp > nowSeconds ? s : null;
  }

  async openTransaction(value: string, nowSeconds: number): Promise<LoginTransaction | null> {
    const p = await this.open(value, 'tx');
    if (p === null) return null;
    const t = p as unknown as LoginTransaction;
    return typeof t.state === 'string' && typeof t.exp === 'number' && t.exp > nowSeconds ? t : null;
  }

  private async open(value: string, kind: string): Promise<Record<string, unknown> | null> {
    const { compactDecrypt } = await loadJose();
    for (const key of [this.key, ...this.previous]) {
      try {
        const { plaintext } = await compactDecrypt(value, key, {
          keyManagementAlgorithms: ['dir'],
          contentEncryptionAlgorithms: ['A256GCM'],
        });
        const p = JSON.parse(new TextDecoder().decode(plaintext)) as Record<string, unknown>;
        return p.k === kind ? p : null;
      } catch {
        // another key, or not ours
      }
    }
    return null;
  }
}

/**
 * One OpenID provider: discovered on first use (and again after a failure), through openid-client,
 * the certified relying-party library. Loaded only when a listener has `login`.
 */
export class LoginProvider {
  readonly config: LoginProviderConfig;
  private readonly secret: string;
  private configuration: Promise<oidc.Configuration> | null = null;

  constructor(config: LoginProviderConfig) {
    this.config = config;
    try {
      this.secret = readFileSync(config.clientSecretFile, 'utf8').trim();
    } catch (err) {
      throw new PortcullisError(
        'ERR_CONFIG_INVALID',
        `cannot read the client secret: ${(err as NodeJS.ErrnoException).code ?? err}`,
      );
    }
    if (this.secret === '')
      throw new PortcullisError('ERR_CONFIG_INVALID', 'the client secret file is empty');
  }

  /** The provider's metadata and client, discovered once (a failed discovery is retried next time). */
  discovered(): Promise<oidc.Configuration> {
    if (this.configuration === null) {
      const c = this.config;
      const loopbackHttp = c.issuer.startsWith('http://');
      this.configuration = import('openid-client').then((client) =>
        client.discovery(new URL(c.issuer), c.clientId, this.secret, undefined, {
          // http:// issuers are accepted on loopback only (checked when the config loads).
          execute: loopbackHttp ? [client.allowInsecureRequests] : [],
        }),
      );
      this.configuration.catch(() => {
        this.configuration = null;
      });
    }
    return this.configuration;
  }
}

/**
 * Signs identity assertions for the upstream (what Pomerium and Teleport call a signed identity
 * header): a short-lived ES256 JWT naming the person, so the app can check that the identity came
 * from Portcullis and not from whoever reached it. One token per session, reused until half its
 * lifetime is gone (a signature costs tens of microseconds; a cache hit, a map lookup).
 */
export class AssertionSigner {
  private readonly key: KeyObject;
  readonly kid: string;
  private readonly publicJwk: JWK;
  private readonly cache = new Map<string, { jwt: string; exp: number }>();

  private constructor(key: KeyObject, kid: string, publicJwk: JWK) {
    this.key = key;
    this.kid = kid;
    this.publicJwk = publicJwk;
  }

  /** From an EC P-256 PKCS#8 PEM file (replicas share it), or a key made now. */
  static create(keyFile: string | null): AssertionSigner {
    let key: KeyObject;
    if (keyFile === null) {
      key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    } else {
      try {
        key = createPrivateKey(readFileSync(keyFile, 'utf8'));
      } catch (err) {
        throw new PortcullisError(
          'ERR_CONFIG_INVALID',
          `not a readable private key: ${(err as Error).message}`,
        );
      }
      if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1')
        throw new PortcullisError('ERR_CONFIG_INVALID', 'the assertion key must be an EC P-256 key (ES256)');
    }
    const jwk = createPublicKey(key).export({ format: 'jwk' }) as { crv: string; x: string; y: string };
    // RFC 7638 thumbprint: the required members in lexicographic order, no spaces.
    const kid = createHash('sha256')
      .update(`{"crv":"${jwk.crv}","kty":"EC","x":"${jwk.x}","y":"${jwk.y}"}`)
      .digest('base64url');
    return new AssertionSigner(key, kid, {
      kty: 'EC',
      crv: jwk.crv,
      x: jwk.x,
      y: jwk.y,
      kid,
      alg: 'ES256',
      use: 'sig',
    });
  }

  /** The JWKS the upstream verifies assertions with. */
  jwks(): { keys: JWK[] } {
    return { keys: [this.publicJwk] };
  }

  /** A cached assertion still good for more than half its lifetime, or undefined. */
  cached(sessionValue: string, ttlMs: number, nowSeconds: number): string | undefined {
    const hit = this.cache.get(sessionValue);
    return hit !== undefined && hit.exp - nowSeconds > Math.floor(ttlMs / 1000) / 2 ? hit.jwt : undefined;
  }

  /** The assertion for a session (cached by its cookie value). */
  async assert(
    sessionValue: string,
    s: Session,
    issuer: string,
    audience: string,
    ttlMs: number,
    nowSeconds: number,
  ): Promise<string> {
    const ttl = Math.max(1, Math.floor(ttlMs / 1000));
    const hit = this.cache.get(sessionValue);
    if (hit !== undefined && hit.exp - nowSeconds > ttl / 2) return hit.jwt;
    const exp = Math.min(nowSeconds + ttl, s.exp);
    const { SignJWT } = await loadJose();
    const claims: Record<string, unknown> = { idp: s.iss };
    for (const k of ['email', 'name', 'preferred_username', 'groups', 'roles'])
      if (s.claims[k] !== undefined) claims[k] = s.claims[k];
    const jwt = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'ES256', kid: this.kid, typ: 'JWT' })
      .setIssuer(issuer)
      .setAudience(audience)
      .setSubject(s.sub)
      .setIssuedAt(nowSeconds)
      .setExpirationTime(exp)
      .sign(this.key);
    if (this.cache.size >= MAX_CACHED) this.cache.clear();
    this.cache.set(sessionValue, { jwt, exp });
    return jwt;
  }
}
