import { createHash } from 'node:crypto';

/**
 * DPoP (RFC 9449) proofs, as a resource server checks them: a client without a certificate binds
 * its access token to a key pair it holds (`cnf.jkt`, the key's RFC 7638 thumbprint) and signs a
 * fresh proof for each request. A stolen token is useless without the private key, and a stolen
 * proof without the request it was made for (method, URL, time, unique id, the token's hash).
 */

/** Asymmetric algorithms only, as for access tokens (§4.2: no `none`, no MAC). */
export const DPOP_ALGORITHMS = [
  'ES256',
  'ES384',
  'ES512',
  'PS256',
  'PS384',
  'PS512',
  'RS256',
  'RS384',
  'RS512',
  'EdDSA',
  'Ed25519',
];

/** A proof older than this (by its `iat`) is refused (§11.1: a short window bounds replays). */
export const DPOP_MAX_AGE_SECONDS = 300;

/** What a proof's id was: seen for the first time, seen before, or not known (fail closed). */
export type ReplayVerdict = 'fresh' | 'replayed' | 'unavailable';

/**
 * Where proof ids are remembered: this process's cache, or (cluster workers) the primary's, so
 * that a proof is accepted once by the whole cluster, not once per worker.
 */
export interface ReplayGuard {
  record(key: string, expiresAt: number, now: number): ReplayVerdict | Promise<ReplayVerdict>;
}

/**
 * The proofs seen within the acceptance window, by key thumbprint and `jti` (§11.1): a proof is
 * accepted once. Bounded: past `max` entries the oldest are forgotten first (they are the nearest to
 * expiry), so a flood of valid proofs cannot grow memory; the bound is documented.
 */
export class DpopReplayCache implements ReplayGuard {
  private readonly seen = new Map<string, number>();
  private readonly max: number;

  constructor(max = 100_000) {
    this.max = max;
  }

  get size(): number {
    return this.seen.size;
  }

  /** Records the proof's id: `replayed` when it was already seen. */
  record(key: string, expiresAt: number, now: number): ReplayVerdict {
    for (const [k, exp] of this.seen) {
      if (exp > now && this.seen.size < this.max) break;
      this.seen.delete(k);
    }
    if (this.seen.has(key)) return 'replayed';
    this.seen.set(key, expiresAt);
    return 'fresh';
  }
}

export interface ProofContext {
  readonly method: string;
  /** The request's URL without query or fragment, as the client addressed this proxy. */
  readonly url: string;
  readonly accessToken: string;
  /** The access token's `cnf.jkt`. */
  readonly jkt: string;
  readonly now: number;
  readonly skewSeconds: number;
}

type Jose = typeof import('jose');
let jose: Promise<Jose> | null = null;

/** `scheme://host[:port]/path` with scheme and host lowercased, default ports dropped (RFC 3986 §6.2.2–3). */
function normalizedUrl(u: string): string | null {
  try {
    const url = new URL(u);
    return `${url.protocol}//${url.host}${url.pathname}`;
  } catch {
    return null;
  }
}

/**
 * Checks a DPoP proof for a request; resolves with null when it holds, or the reason it does not
 * (fixed texts, never the proof or the token). §4.3: one well-formed JWT, `typ: dpop+jwt`, an
 * allowed asymmetric `alg`, a public `jwk` whose signature verifies; `htm` and `htu` are this
 * request's; `iat` within the window; `jti` not seen before; `ath` the hash of this access token;
 * and the key is the one the token is bound to.
 */
export async function verifyDpopProof(
  proof: string,
  c: ProofContext,
  replays: ReplayGuard,
): Promise<string | null> {
  if (jose === null) jose = import('jose');
  const { EmbeddedJWK, calculateJwkThumbprint, jwtVerify } = await jose;
  let payload: Record<string, unknown>;
  let jwk: Record<string, unknown>;
  try {
    const r = await jwtVerify(proof, EmbeddedJWK, {
      typ: 'dpop+jwt',
      algorithms: DPOP_ALGORITHMS,
      maxTokenAge: DPOP_MAX_AGE_SECONDS,
      clockTolerance: c.skewSeconds,
      currentDate: new Date(c.now),
    });
    payload = r.payload as Record<string, unknown>;
    jwk = r.protectedHeader.jwk as Record<string, unknown>;
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    return `the DPoP proof does not verify (${typeof code === 'string' ? code : 'malformed'})`;
  }
  if (payload.htm !== c.method) return 'the DPoP proof is for another method (htm)';
  const htu = typeof payload.htu === 'string' ? normalizedUrl(payload.htu) : null;
  if (htu === null || htu !== normalizedUrl(c.url)) return 'the DPoP proof is for another URL (htu)';
  if (typeof payload.jti !== 'string' || payload.jti === '' || payload.jti.length > 256)
    return 'the DPoP proof has no usable jti';
  const ath = createHash('sha256').update(c.accessToken).digest('base64url');
  if (payload.ath !== ath) return 'the DPoP proof is for another access token (ath)';
  const thumbprint = await calculateJwkThumbprint(
    jwk as Parameters<typeof calculateJwkThumbprint>[0],
    'sha256',
  );
  if (thumbprint !== c.jkt) return "the DPoP proof's key is not the one the token is bound to (cnf.jkt)";
  const iat = typeof payload.iat === 'number' ? payload.iat * 1000 : c.now;
  const expires = iat + (DPOP_MAX_AGE_SECONDS + c.skewSeconds) * 1000;
  const verdict = await replays.record(`${thumbprint}\u0000${payload.jti}`, expires, c.now);
  if (verdict === 'replayed') return 'the DPoP proof was used before (jti)';
  if (verdict === 'unavailable')
    return 'the DPoP proof could not be checked for replay (the cluster primary did not answer)';
  return null;
}
