import type { Logger } from 'pino';
import { DpopReplayCache, type ReplayGuard, verifyDpopProof } from '../../authn/dpop.js';
import type { JwksRegistry, JwksSource, JwtStats } from '../../authn/jwks.js';
import {
  CompiledJwtRule,
  peekToken,
  TokenCache,
  TokenError,
  type VerifiedToken,
  verifyToken,
} from '../../authn/jwt.js';
import { parseQuery } from '../../authz/query.js';
import type { JwtRule } from '../../istio/request-authentication.js';
import type { RequestContext } from '../context.js';
import { claimHeaderValue, cookieValue, countHeader } from '../headers.js';
import { REPLIES } from '../local-reply.js';
import type { Stage, StageResult } from '../plan.js';

enum LocationKind {
  Header = 0,
  Param = 1,
  Cookie = 2,
}

/** A place a token may be, and the rules (issuers) that read from it. */
class TokenLocation {
  readonly kind: LocationKind;
  readonly name: string;
  readonly prefix: string;
  /** The default `Authorization: Bearer` location: a value without the prefix is simply not a JWT. */
  readonly lenientPrefix: boolean;
  readonly rules: CompiledJwtRule[] = [];
  /** For explanations: `header authorization`, `query parameter access_token`, `cookie session`. */
  readonly describe: string;
  /** The default Authorization location also takes `DPoP <token>` (some rule here accepts DPoP). */
  dpop = false;

  constructor(kind: LocationKind, name: string, prefix: string, lenientPrefix: boolean) {
    this.kind = kind;
    this.name = name;
    this.prefix = prefix;
    this.lenientPrefix = lenientPrefix;
    this.describe = `${kind === LocationKind.Header ? 'header' : kind === LocationKind.Param ? 'query parameter' : 'cookie'} ${name}`;
  }

  ruleFor(iss: string): CompiledJwtRule | undefined {
    for (const r of this.rules) if (r.rule.issuer === iss) return r;
    return undefined;
  }
}

/** A token found in a request, with where it was found. */
interface Found {
  token: string;
  location: TokenLocation;
}

export interface JwtStageOptions {
  readonly clockSkewMs: number;
  readonly cacheSize: number;
  /** DPoP proofs seen (kept across reloads by the proxy, so a reload does not reopen replays). */
  readonly replays?: ReplayGuard;
}

/**
 * Request authentication (Istio RequestAuthentication, applied as Envoy's jwt_authn does):
 * - no token: the request continues without a request principal (authorization decides);
 * - a token that fails (signature, expiry, not-before, unknown issuer, malformed, disallowed
 *   algorithm, a configured header without its prefix): 401 `Jwt verification fails`;
 * - a valid token whose audience is not allowed: 403;
 * - several tokens: every one must pass; the first (in location order) sets the principal;
 * - CORS preflight requests skip the check.
 * On success the attributes get requestPrincipal (`iss/sub`), claims, audiences and presenter —
 * what authorization reads — and the configured headers are written.
 */
export class JwtStage implements Stage {
  readonly name = 'jwt';
  private readonly locations: TokenLocation[];
  private readonly cache: TokenCache;
  private readonly skewSeconds: number;
  private readonly replays: ReplayGuard;
  readonly stats: JwtStats;
  /** Headers the proxy writes from tokens; whatever a client sends under these names is dropped. */
  readonly outputHeaders: ReadonlySet<string>;
  readonly sources: ReadonlySet<JwksSource>;
  /** Request headers tokens are read from (`cookie` when a rule reads cookies). */
  readonly tokenHeaders: ReadonlySet<string>;
  /** Query parameters tokens are read from. */
  readonly tokenParams: ReadonlySet<string>;
  private readonly log: Logger;

  constructor(rules: readonly JwtRule[], registry: JwksRegistry, opts: JwtStageOptions, log: Logger) {
    this.stats = registry.stats;
    this.log = log;
    this.cache = new TokenCache(opts.cacheSize, opts.clockSkewMs);
    this.skewSeconds = Math.round(opts.clockSkewMs / 1000);
    this.replays = opts.replays ?? new DpopReplayCache();
    const byKey = new Map<string, TokenLocation>();
    const loc = (kind: LocationKind, name: string, prefix: string, lenient: boolean): TokenLocation => {
      const key = `${kind}:${name}:${prefix}`;
      let l = byKey.get(key);
      if (l === undefined) {
        l = new TokenLocation(kind, name, prefix, lenient);
        byKey.set(key, l);
      }
      return l;
    };
    const outputs = new Set<string>();
    const sources = new Set<JwksSource>();
    const issuers = new Set<string>();
    for (const rule of rules) {
      if (issuers.has(rule.issuer)) {
        log.warn(
          { rule: rule.source, issuer: rule.issuer },
          'two JWT rules name the same issuer; the first one is used',
        );
      }
      issuers.add(rule.issuer);
      const compiled = new CompiledJwtRule(rule, registry.sourceFor(rule));
      sources.add(compiled.source);
      if (rule.defaultLocations) {
        const auth = loc(LocationKind.Header, 'authorization', 'Bearer ', true);
        auth.rules.push(compiled);
        if (rule.dpop) auth.dpop = true;
        loc(LocationKind.Param, 'access_token', '', false).rules.push(compiled);
      }
      for (const h of rule.fromHeaders)
        loc(LocationKind.Header, h.name, h.prefix, false).rules.push(compiled);
      for (const p of rule.fromParams) loc(LocationKind.Param, p, '', false).rules.push(compiled);
      for (const c of rule.fromCookies) loc(LocationKind.Cookie, c, '', false).rules.push(compiled);
      if (rule.outputPayloadToHeader !== null) outputs.add(rule.outputPayloadToHeader);
      for (const c of rule.outputClaimToHeaders) outputs.add(c.header);
    }
    this.locations = [...byKey.values()];
    this.outputHeaders = outputs;
    this.sources = sources;
    const headers = new Set<string>();
    const params = new Set<string>();
    for (const l of this.locations) {
      if (l.kind === LocationKind.Header) headers.add(l.name);
      else if (l.kind === LocationKind.Param) params.add(l.name);
      else headers.add('cookie');
    }
    this.tokenHeaders = headers;
    this.tokenParams = params;
  }

  run(ctx: RequestContext): StageResult | Promise<StageResult> {
    // Headers this stage writes are the proxy's to set: a client's own copies never pass.
    const headers = ctx.attrs.headers;
    for (const h of this.outputHeaders) if (headers[h] !== undefined) ctx.dropHeader(h);
    if (
      ctx.attrs.method === 'OPTIONS' &&
      headers.origin !== undefined &&
      headers['access-control-request-method'] !== undefined
    ) {
      return null;
    }
    // One token is the usual case: keep it in locals and allocate a list only for a second one.
    let firstToken: string | null = null;
    let firstLocation: TokenLocation | null = null;
    let more: Found[] | null = null;
    for (const location of this.locations) {
      const token = extract(ctx, location);
      if (token === null) continue;
      if (token === INVALID)
        return ctx.refuse(
          REPLIES.jwtInvalid,
          `the token in ${location.describe} is empty or not a Bearer credential`,
        );
      // Two credentials where one is read: whichever is verified, the other would travel on.
      if (token === DUPLICATE)
        return ctx.refuse(REPLIES.badRequest, `${location.describe} was given more than once`);
      if (firstToken === null) {
        firstToken = token;
        firstLocation = location;
      } else if (token !== firstToken && (more === null || !more.some((f) => f.token === token))) {
        if (more === null) more = [];
        more.push({ token, location });
      }
    }
    if (firstToken === null || firstLocation === null) return null;
    if (more === null) {
      // Fast path: one token, already verified — a map lookup and a few field writes.
      const hit = this.cache.get(firstToken, Date.now());
      if (hit !== undefined && firstLocation.rules.includes(hit.rule)) {
        this.stats.cacheHits++;
        return this.acceptOne(ctx, firstLocation, hit, firstToken);
      }
      return this.verifyAll(ctx, [{ token: firstToken, location: firstLocation }]);
    }
    return this.verifyAll(ctx, [{ token: firstToken, location: firstLocation }, ...more]);
  }

  private acceptOne(
    ctx: RequestContext,
    location: TokenLocation,
    v: VerifiedToken,
    token: string,
  ): StageResult | Promise<StageResult> {
    if (!v.audienceAllowed()) return audienceRefused(ctx, v);
    const rule = v.rule.rule;
    if (rule.certificateBound || rule.dpop || location.dpop) {
      const bound = this.binding(ctx, location, v, token);
      if (bound !== null) {
        if (bound instanceof Promise)
          return bound.then((r) => (r === null ? this.acceptBound(ctx, location, v) : r));
        return bound;
      }
    }
    return this.acceptBound(ctx, location, v);
  }

  private acceptBound(ctx: RequestContext, location: TokenLocation, v: VerifiedToken): StageResult {
    const a = ctx.attrs;
    a.requestPrincipal = v.principal;
    a.claims = v.payload;
    a.audiences = v.audiences;
    a.presenter = v.presenter;
    this.writeHeaders(ctx, location, v);
    return null;
  }

  /**
   * Whether a token is bound to this client, under a rule that requires it (RFC 8705, RFC 9449):
   * null when it is (or need not be), a refusal, or a promise of either while a DPoP proof is
   * checked. `DPoP <token>` is checked against the `DPoP` proof whatever else holds; a token bound
   * to a DPoP key cannot be used as a bearer token (§7.2); otherwise, under a binding rule, the
   * token's certificate thumbprint must be this connection's.
   */
  private binding(
    ctx: RequestContext,
    location: TokenLocation,
    v: VerifiedToken,
    token: string,
  ): StageResult | Promise<StageResult> {
    const rule = v.rule.rule;
    const viaDpop = location.dpop && location.lenientPrefix && isDpopScheme(ctx.attrs.headers.authorization);
    if (viaDpop) {
      if (!rule.dpop)
        return ctx.refuse(
          REPLIES.jwtInvalid,
          `the token was sent as DPoP, and ${rule.source} does not accept DPoP`,
        );
      if (v.jkt === '')
        return ctx.refuse(
          REPLIES.jwtUnboundDpop,
          'the token was sent as DPoP, and is not bound to a key (no cnf.jkt)',
        );
      const proof = ctx.attrs.headers.dpop;
      if (typeof proof !== 'string' || countHeader(ctx.rawHeaders, 'dpop') !== 1)
        return ctx.refuse(REPLIES.dpopInvalid, 'the request carries no DPoP proof, or more than one');
      return this.checkProof(ctx, v, token, proof);
    }
    if (!rule.certificateBound && !rule.dpop) return null;
    if (rule.certificateBound && boundHere(v, ctx)) return null;
    if (v.jkt !== '')
      return ctx.refuse(
        REPLIES.jwtUnboundDpop,
        'the token is bound to a DPoP key and was sent as a bearer token',
      );
    if (rule.certificateBound) return unbound(ctx, v);
    return ctx.refuse(
      REPLIES.jwtUnboundDpop,
      `${rule.source} requires DPoP-bound tokens, sent as DPoP with a proof`,
    );
  }

  private async checkProof(
    ctx: RequestContext,
    v: VerifiedToken,
    token: string,
    proof: string,
  ): Promise<StageResult> {
    const a = ctx.attrs;
    const q = ctx.target.indexOf('?');
    const why = await verifyDpopProof(
      proof,
      {
        method: a.method,
        url: `${a.tls ? 'https' : 'http'}://${a.host}${q === -1 ? ctx.target : ctx.target.slice(0, q)}`,
        accessToken: token,
        jkt: v.jkt,
        now: Date.now(),
        skewSeconds: this.skewSeconds,
      },
      this.replays,
    );
    if (why !== null) return ctx.refuse(REPLIES.dpopInvalid, why);
    // The proof goes with the token: neither reaches the upstream unless the rule forwards the token.
    if (!v.rule.rule.forwardOriginalToken) ctx.dropHeader('dpop');
    return null;
  }

  private writeHeaders(ctx: RequestContext, location: TokenLocation, v: VerifiedToken): void {
    const rule = v.rule.rule;
    if (!rule.forwardOriginalToken) removeToken(ctx, location);
    if (rule.outputPayloadToHeader !== null) ctx.addHeader(rule.outputPayloadToHeader, v.payloadSegment);
    for (const out of rule.outputClaimToHeaders) {
      const value = claimValue(v.payload, out.claim);
      if (value !== null) ctx.addHeader(out.header, value);
    }
  }

  private async verifyAll(ctx: RequestContext, found: Found[]): Promise<StageResult> {
    const verified: VerifiedToken[] = [];
    const now = Date.now();
    for (const f of found) {
      const cached = this.cache.get(f.token, now);
      if (cached !== undefined && f.location.rules.includes(cached.rule)) {
        this.stats.cacheHits++;
        verified.push(cached);
        continue;
      }
      this.stats.cacheMisses++;
      const parts = peekToken(f.token);
      if (parts === null) return this.refuse(ctx, 'the token is malformed');
      const rule = f.location.ruleFor(parts.iss);
      if (rule === undefined) return this.refuse(ctx, 'the token issuer is not configured here');
      try {
        const v = await verifyToken(f.token, parts, rule, this.skewSeconds, this.stats);
        this.cache.set(f.token, v);
        verified.push(v);
      } catch (err) {
        if (err instanceof TokenError) return this.refuse(ctx, err.message);
        throw err;
      }
    }
    return this.accept(ctx, found, verified);
  }

  private refuse(ctx: RequestContext, why: string): StageResult {
    this.log.debug({ path: ctx.attrs.path, why }, 'JWT refused');
    return ctx.refuse(REPLIES.jwtInvalid, why);
  }

  private async accept(ctx: RequestContext, found: Found[], verified: VerifiedToken[]): Promise<StageResult> {
    for (let i = 0; i < verified.length; i++) {
      const v = verified[i] as VerifiedToken;
      const f = found[i] as Found;
      if (!v.audienceAllowed()) return audienceRefused(ctx, v);
      const rule = v.rule.rule;
      if (rule.certificateBound || rule.dpop || f.location.dpop) {
        const bound = await this.binding(ctx, f.location, v, f.token);
        if (bound !== null) return bound;
      }
    }
    const first = verified[0] as VerifiedToken;
    const a = ctx.attrs;
    a.requestPrincipal = first.principal;
    a.claims = first.payload;
    a.audiences = first.audiences;
    a.presenter = first.presenter;
    for (let i = 0; i < found.length; i++)
      this.writeHeaders(ctx, (found[i] as Found).location, verified[i] as VerifiedToken);
    return null;
  }
}

/** `Authorization: DPoP …` (the scheme in any case). */
function isDpopScheme(v: string | undefined): boolean {
  return v !== undefined && v.length > 5 && v.charCodeAt(4) === 32 && v.slice(0, 4).toLowerCase() === 'dpop';
}

/**
 * RFC 8705 §3: under a certificate-bound rule, a token must carry `cnf` `x5t#S256` equal to the
 * thumbprint of the client certificate this connection presented (checked on every request: the
 * verified-token cache is keyed by the token, not the connection).
 */
function boundHere(v: VerifiedToken, ctx: RequestContext): boolean {
  // Both '' (an unbound token on a connection without a certificate) is not a match.
  return v.boundTo !== '' && v.boundTo === ctx.certThumbprint;
}

function unbound(ctx: RequestContext, v: VerifiedToken): StageResult {
  return ctx.refuse(
    REPLIES.jwtUnbound,
    v.boundTo === ''
      ? `the token has no cnf x5t#S256 claim, and ${v.rule.rule.source} requires certificate-bound tokens`
      : ctx.certThumbprint === ''
        ? 'the token is certificate-bound, and this connection presented no client certificate'
        : `the token is bound to another certificate (cnf x5t#S256 ${v.boundTo}; this connection's is ${ctx.certThumbprint})`,
  );
}

function audienceRefused(ctx: RequestContext, v: VerifiedToken): StageResult {
  return ctx.refuse(
    REPLIES.jwtAudience,
    `the token's audiences ${JSON.stringify(v.audiences)} are not among the rule's (${v.rule.rule.issuer})`,
  );
}

const INVALID = '\u0000invalid';
const DUPLICATE = '\u0000duplicate';

/**
 * The token at a location: null when there is none, INVALID when there is one that cannot be a
 * token, DUPLICATE when the location is given twice (two headers, parameters or cookies of the
 * name). Node keeps the first `authorization` and joins other repeated headers, so headers are
 * counted on the raw list.
 */
function extract(ctx: RequestContext, l: TokenLocation): string | null {
  let raw: string | undefined;
  if (l.kind === LocationKind.Header) {
    const v = ctx.attrs.headers[l.name];
    if (v === undefined) return null;
    if (Array.isArray(v) || countHeader(ctx.rawHeaders, l.name) > 1) return DUPLICATE;
    if (l.lenientPrefix) return authorizationToken(v, l.dpop);
    if (l.prefix !== '') {
      if (!v.startsWith(l.prefix)) return INVALID;
      raw = v.slice(l.prefix.length);
    } else {
      raw = v;
    }
    raw = raw.trim();
  } else if (l.kind === LocationKind.Param) {
    raw = queryParam(ctx.attrs.query, l.name);
    if (raw === undefined) return null;
  } else {
    // Node joins repeated Cookie fields with "; " already (RFC 6265 §5.4 allows only one).
    const c = cookieValue(ctx.attrs.headers.cookie, l.name);
    if (c === undefined) return null;
    if (c === null) return DUPLICATE;
    raw = c;
  }
  return raw === '' ? INVALID : raw;
}

/**
 * `Authorization: Bearer <token>` as RFC 7235 §2.1 and RFC 6750 §2.1 write it: the scheme
 * (any case), one or more spaces, the token — and `DPoP <token>` (RFC 9449 §7.1) where a rule
 * accepts DPoP. Another scheme (Basic, …) is not a token location; a Bearer credential written any
 * other way (a tab, a comma, nothing after it) is refused rather than passed on unverified.
 */
function authorizationToken(v: string, dpop: boolean): string | null {
  let i = 0;
  while (i < v.length && isTchar(v.charCodeAt(i))) i++;
  const scheme = i === 6 ? 'bearer' : i === 4 && dpop ? 'dpop' : '';
  if (scheme === '' || v.slice(0, i).toLowerCase() !== scheme) return null;
  if (v.charCodeAt(i) !== 32) return INVALID;
  i++;
  while (v.charCodeAt(i) === 32) i++;
  const token = v.slice(i).trimEnd();
  return token === '' ? INVALID : token;
}

/** RFC 9110 §5.6.2 tchar. */
function isTchar(c: number): boolean {
  return (
    (c >= 97 && c <= 122) ||
    (c >= 65 && c <= 90) ||
    (c >= 48 && c <= 57) ||
    c === 33 ||
    (c >= 35 && c <= 39) ||
    c === 42 ||
    c === 43 ||
    c === 45 ||
    c === 46 ||
    c === 94 ||
    c === 95 ||
    c === 96 ||
    c === 124 ||
    c === 126
  );
}

/** The parameter's value; DUPLICATE when it is given twice (under any encoding of its name). */
function queryParam(query: string, name: string): string | undefined {
  // Most requests carry no token parameter: skip parsing unless the name (or an escape) could be there.
  if (query === '' || (query.indexOf(name.charAt(0)) === -1 && query.indexOf('%') === -1)) return undefined;
  let found: string | undefined;
  for (const p of parseQuery(query)) {
    if (p.name !== name) continue;
    if (found !== undefined) return DUPLICATE;
    found = p.value;
  }
  return found;
}

/** forwardOriginalToken: false — the token does not travel upstream (a cookie is left in place, as Envoy does). */
function removeToken(ctx: RequestContext, l: TokenLocation): void {
  if (l.kind === LocationKind.Header) ctx.dropHeader(l.name);
  else if (l.kind === LocationKind.Param) ctx.removeQueryParam(l.name);
}

/**
 * A claim (nested by path) as a header value: strings, numbers and booleans only. A value that is
 * not printable ASCII (non-Latin-1 text, control characters such as CR LF) is sent
 * percent-encoded (encodeURIComponent, UTF-8), so it can neither fail the request nor inject a header.
 */
function claimValue(payload: Readonly<Record<string, unknown>>, path: readonly string[]): string | null {
  let v: unknown = payload;
  for (const p of path) {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return null;
    v = (v as Record<string, unknown>)[p];
  }
  return claimHeaderValue(v);
}
