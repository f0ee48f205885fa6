import type { KeyObject } from 'node:crypto';
import type { JwtRule } from '../istio/request-authentication.js';
import { isMap } from '../istio/validate.js';
import type { JwksKey, JwksSource, JwtStats } from './jwks.js';

/**
 * Signature algorithms accepted. Symmetric (HS*) algorithms are not: a JWKS publishes public keys,
 * and `none` is never accepted (jose refuses unsecured JWTs in jwtVerify).
 */
const ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
  'Ed25519',
];
const ALGORITHM_SET: ReadonlySet<string> = new Set(ALGORITHMS);

/** A rule with its key source, compiled once per snapshot. */
export class CompiledJwtRule {
  readonly rule: JwtRule;
  readonly source: JwksSource;
  readonly audiences: ReadonlySet<string>;

  constructor(rule: JwtRule, source: JwksSource) {
    this.rule = rule;
    this.source = source;
    this.audiences = new Set(rule.audiences);
  }
}

const NO_AUDIENCES: readonly string[] = Object.freeze([]);

/**
 * A token whose signature and time claims were verified. What authorization reads of it
 * (RequestAttributes: requestPrincipal, claims, audiences, presenter) is computed here once.
 */
export class VerifiedToken {
  readonly rule: CompiledJwtRule;
  /** `iss/sub`, Istio's request principal. */
  readonly principal: string;
  readonly payload: Readonly<Record<string, unknown>>;
  readonly audiences: readonly string[];
  /** `azp`, or ''. */
  readonly presenter: string;
  /** The token's payload segment (base64url of the claims JSON), for outputPayloadToHeader. */
  readonly payloadSegment: string;
  /** `exp` in ms since the epoch, or Infinity when the token has none. */
  readonly expMs: number;
  readonly key: KeyObject;
  /** RFC 8705: the certificate thumbprint the token is bound to (`cnf` `x5t#S256`), or ''. */
  readonly boundTo: string;
  /** RFC 9449: the thumbprint of the key the token is bound to (`cnf` `jkt`), or ''. */
  readonly jkt: string;

  constructor(
    rule: CompiledJwtRule,
    payload: Record<string, unknown>,
    payloadSegment: string,
    key: KeyObject,
  ) {
    this.rule = rule;
    this.payload = payload;
    const iss = typeof payload.iss === 'string' ? payload.iss : '';
    const sub = typeof payload.sub === 'string' ? payload.sub : '';
    this.principal = `${iss}/${sub}`;
    const aud = payload.aud;
    this.audiences =
      typeof aud === 'string'
        ? [aud]
        : Array.isArray(aud)
          ? aud.filter((a): a is string => typeof a === 'string')
          : NO_AUDIENCES;
    this.presenter = typeof payload.azp === 'string' ? payload.azp : '';
    this.payloadSegment = payloadSegment;
    this.expMs = typeof payload.exp === 'number' ? payload.exp * 1000 : Number.POSITIVE_INFINITY;
    this.key = key;
    const cnf = payload.cnf;
    const x5t = isMap(cnf) ? cnf['x5t#S256'] : undefined;
    this.boundTo = typeof x5t === 'string' ? x5t : '';
    const jkt = isMap(cnf) ? cnf.jkt : undefined;
    this.jkt = typeof jkt === 'string' ? jkt : '';
  }

  /** Istio: with audiences configured, the token's `aud` must contain one of them. */
  audienceAllowed(): boolean {
    const allowed = this.rule.audiences;
    if (allowed.size === 0) return true;
    for (const a of this.audiences) if (allowed.has(a)) return true;
    return false;
  }
}

/**
 * Verified tokens by token string: a repeat token costs a map lookup instead of a signature check.
 * Bounded by entry count (oldest out first). An entry is used only while the token is unexpired
 * (with the same clock skew as verification) and its key is still in the key set; otherwise it is
 * dropped and the token verified afresh, so the cache never changes a decision.
 */
export class TokenCache {
  private readonly map = new Map<string, VerifiedToken>();
  private readonly max: number;
  private readonly skewMs: number;

  constructor(max: number, skewMs: number) {
    this.max = max;
    this.skewMs = skewMs;
  }

  get(token: string, now: number): VerifiedToken | undefined {
    const hit = this.map.get(token);
    if (hit === undefined) return undefined;
    if (now > hit.expMs + this.skewMs || !hit.rule.source.holds(hit.key)) {
      this.map.delete(token);
      return undefined;
    }
    return hit;
  }

  set(token: string, verified: VerifiedToken): void {
    if (this.max === 0) return;
    if (this.map.size >= this.max) {
      const oldest = this.map.keys().next();
      if (oldest.done !== true) this.map.delete(oldest.value);
    }
    this.map.set(token, verified);
  }
}

/** Why a token was refused: `invalid` → 401, `audience` → 403 (Envoy's jwt_authn statuses). */
export type TokenFailure = 'invalid' | 'audience';

export class TokenError extends Error {
  readonly failure: TokenFailure;

  constructor(failure: TokenFailure, message: string) {
    super(message);
    this.name = 'TokenError';
    this.failure = failure;
  }
}

interface UnverifiedParts {
  alg: string;
  kid: string;
  iss: string;
  payloadSegment: string;
}

function decodeSegment(seg: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(Buffer.from(seg, 'base64url').toString('utf8')) as unknown;
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** Reads header and issuer without trusting them (to pick the rule and key); null if malformed. */
export function peekToken(token: string): UnverifiedParts | null {
  const a = token.indexOf('.');
  const b = a === -1 ? -1 : token.indexOf('.', a + 1);
  if (a <= 0 || b === -1 || token.indexOf('.', b + 1) !== -1) return null;
  const header = decodeSegment(token.slice(0, a));
  const payload = decodeSegment(token.slice(a + 1, b));
  if (header === null || payload === null) return null;
  return {
    alg: typeof header.alg === 'string' ? header.alg : '',
    kid: typeof header.kid === 'string' ? header.kid : '',
    iss: typeof payload.iss === 'string' ? payload.iss : '',
    payloadSegment: token.slice(a + 1, b),
  };
}

/** Whether a key can verify an algorithm at all (so a token is not tried against every key). */
function keyFits(k: JwksKey, alg: string): boolean {
  if (k.alg !== '' && k.alg !== alg) return false;
  const type = k.key.asymmetricKeyType;
  if (alg.startsWith('RS') || alg.startsWith('PS')) return type === 'rsa' || type === 'rsa-pss';
  if (alg.startsWith('ES')) return type === 'ec';
  return type === 'ed25519' || type === 'ed448';
}

/**
 * Verifies one token against a rule: algorithm allow-list first (before any crypto), then key
 * lookup (fetching on an unknown `kid`, within the cool-down), then signature, `iss`, `exp`, `nbf`
 * with jose. Messages are fixed texts: they never include the token.
 */
export async function verifyToken(
  token: string,
  parts: UnverifiedParts,
  rule: CompiledJwtRule,
  skewSeconds: number,
  stats: JwtStats,
): Promise<VerifiedToken> {
  if (!ALGORITHM_SET.has(parts.alg)) throw new TokenError('invalid', 'the token algorithm is not allowed');
  let candidates: readonly JwksKey[];
  if (parts.kid !== '') {
    const k = await rule.source.resolve(parts.kid);
    if (k === undefined) throw new TokenError('invalid', 'no key with the token kid');
    candidates = [k];
  } else {
    await rule.source.ready();
    candidates = rule.source.keys();
  }
  // jose is loaded on the first token to verify: a proxy without RequestAuthentication never loads it.
  const { errors: joseErrors, jwtVerify } = await loadJose();
  let tried = false;
  for (const k of candidates) {
    if (!keyFits(k, parts.alg)) continue;
    tried = true;
    stats.verifications++;
    try {
      const { payload } = await jwtVerify(token, k.key, {
        issuer: rule.rule.issuer,
        algorithms: ALGORITHMS,
        clockTolerance: skewSeconds,
      });
      // jose checks `iat` only against maxTokenAge; a token issued in the future (beyond the
      // skew) is either forged ahead of time or from a broken clock: refuse it.
      if (typeof payload.iat === 'number' && payload.iat > Date.now() / 1000 + skewSeconds)
        throw new TokenError('invalid', 'claim check failed: iat is in the future');
      return new VerifiedToken(rule, payload as Record<string, unknown>, parts.payloadSegment, k.key);
    } catch (err) {
      if (err instanceof TokenError) throw err;
      // With no kid, another key may fit; any other failure is final.
      if (parts.kid === '' && err instanceof joseErrors.JWSSignatureVerificationFailed) continue;
      throw new TokenError('invalid', describe(err, joseErrors));
    }
  }
  throw new TokenError(
    'invalid',
    tried ? 'the signature does not verify' : 'no key fits the token algorithm',
  );
}

type Jose = typeof import('jose');
let jose: Promise<Jose> | null = null;

function loadJose(): Promise<Jose> {
  if (jose === null) jose = import('jose');
  return jose;
}

function describe(err: unknown, joseErrors: Jose['errors']): string {
  if (err instanceof joseErrors.JWTExpired) return 'the token has expired';
  if (err instanceof joseErrors.JWTClaimValidationFailed) return `claim check failed: ${err.claim}`;
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return 'the signature does not verify';
  if (err instanceof joseErrors.JOSEError) return err.code;
  return 'the token does not verify';
}
