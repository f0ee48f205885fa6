import type { Logger } from 'pino';
import type {
  AssertionSigner,
  CookieSealer,
  LoginProvider,
  LoginTransaction,
  Session,
} from '../../authn/login.js';
import type { LoginConfig } from '../../config/load.js';
import type { RequestContext } from '../context.js';
import { claimHeaderValue, cookieValue } from '../headers.js';
import { LocalReply, REPLIES } from '../local-reply.js';
import type { Stage, StageResult } from '../plan.js';

/** How long a login may take, from the redirect to the provider to the callback. */
const TRANSACTION_SECONDS = 600;
/** Browsers keep cookies up to 4096 bytes (name, value and attributes). */
const MAX_COOKIE_VALUE = 3800;
/**
 * A session too large for one cookie is split over at most this many (`name`, `name-1`, …): more
 * would push request heads past the usual 16 KB limits (maxHeaderSize); beyond it the claims are
 * cut to the usual ones.
 */
const MAX_CHUNKS = 3;
/** ID token claims that only concern the token itself, not the person. */
const TOKEN_ONLY_CLAIMS = new Set([
  'nonce',
  'at_hash',
  'c_hash',
  's_hash',
  'exp',
  'iat',
  'nbf',
  'jti',
  'sid',
]);

/**
 * People logging in through OpenID Connect (authorization code flow with PKCE, `state` and
 * `nonce`, through openid-client). A valid session cookie makes the request's principal
 * `<iss>/<sub>` with the ID token's claims — what AuthorizationPolicy's `requestPrincipals` and
 * `request.auth.claims[...]` read, exactly as for a JWT — and sets the configured identity headers
 * (client copies always removed). Without a session: a peer with a verified SVID goes on (machine
 * callers); a browser navigation is sent to the provider and brought back to the page it asked
 * for; anything else (an API call, XHR) gets 401, never a redirect. The session and transaction
 * cookies never reach the upstream.
 */
export class LoginStage implements Stage {
  readonly name = 'login';
  private readonly config: LoginConfig;
  /** By name, in config order (the first is the default when there is one). */
  private readonly providers: ReadonlyMap<string, LoginProvider>;
  private readonly sealer: CookieSealer;
  private readonly txName: string;
  private readonly log: Logger;
  /** Upstream headers the stage sets from claims: the client's own copies never pass. */
  readonly outputHeaders: readonly string[];

  /** Signs identity assertions for the upstream (login.assertion), or null. */
  private readonly signer: AssertionSigner | null;
  private readonly jwksReply: LocalReply | null;
  /** Refreshes under way (or just done), by the cookie value they renew. */
  private readonly refreshing = new Map<string, Promise<{ session: Session; value: string } | null>>();

  constructor(
    config: LoginConfig,
    providers: ReadonlyMap<string, LoginProvider>,
    sealer: CookieSealer,
    signer: AssertionSigner | null,
    log: Logger,
  ) {
    this.config = config;
    this.signer = signer;
    this.jwksReply =
      signer === null
        ? null
        : new LocalReply(200, 'jwks', JSON.stringify(signer.jwks()), {
            deny: false,
            headers: { 'content-type': 'application/json', 'cache-control': 'max-age=300' },
          });
    this.providers = providers;
    this.sealer = sealer;
    this.txName = `${config.cookie.name}-tx`;
    this.log = log;
    this.outputHeaders = [
      ...config.headers.map(([h]) => h),
      ...(config.assertion === null ? [] : [config.assertion.header]),
    ];
  }

  run(ctx: RequestContext): StageResult | Promise<StageResult> {
    const a = ctx.attrs;
    for (const h of this.outputHeaders) if (a.headers[h] !== undefined) ctx.dropHeader(h);
    const cookies = a.headers.cookie;
    // A cookie given twice (tossed by a sibling site, say) counts as absent: no session, no transaction.
    const session = cookies === undefined ? undefined : sessionValue(cookies, this.config.cookie.name);
    const tx = cookieValue(cookies, this.txName) ?? undefined;
    if (session !== undefined || tx !== undefined) {
      // Our cookies are the proxy's business: the upstream sees the others only.
      const rest = withoutCookies(cookies as string, this.config.cookie.name, this.txName);
      if (rest === '') ctx.dropHeader('cookie');
      else ctx.addHeader('cookie', rest);
    }
    if (a.path === this.config.callbackPath) return this.callback(ctx, tx);
    if (a.path === this.config.logoutPath) return this.logout(ctx, session);
    if (a.path === this.config.loginPath) return this.loginPage(ctx);
    if (this.jwksReply !== null && a.path === this.config.assertion?.jwksPath) return this.jwksReply;
    if (session !== undefined) {
      const now = Math.floor(Date.now() / 1000);
      const cached = this.sealer.cachedSession(session, now);
      if (cached !== undefined) return this.withSession(ctx, cached, session, now);
      return this.sealer.openSession(session, now).then((s) => this.withSession(ctx, s, session, now));
    }
    return this.withoutSession(ctx);
  }

  private withSession(
    ctx: RequestContext,
    s: Session | null,
    value: string,
    now: number,
  ): StageResult | Promise<StageResult> {
    if (s === null) return this.withoutSession(ctx); // tampered, another key, or expired: log in again
    if (s.rt !== '' && now >= s.rexp)
      return this.refresh(value, s, now).then((r) =>
        r === null ? this.withoutSession(ctx) : this.refreshed(ctx, r, now),
      );
    const a = ctx.attrs;
    if (this.config.checkOrigin && !SAFE_METHODS.has(a.method) && foreignOrigin(ctx, this.origin(ctx)))
      return REPLIES.csrfOrigin;
    a.requestPrincipal = `${s.iss}/${s.sub}`;
    a.claims = s.claims;
    const aud = s.claims.aud;
    a.audiences =
      typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud.filter((x) => typeof x === 'string') : [];
    a.presenter = typeof s.claims.azp === 'string' ? s.claims.azp : '';
    a.loginProvider = s.provider;
    for (const [header, claim] of this.config.headers) {
      const v = claimHeaderValue(s.claims[claim]);
      if (v !== null) ctx.addHeader(header, v);
    }
    const assertion = this.config.assertion;
    if (this.signer === null || assertion === null) return null;
    const jwt = this.signer.cached(value, assertion.ttl, now);
    if (jwt !== undefined) {
      ctx.addHeader(assertion.header, jwt);
      return null;
    }
    return this.signer
      .assert(value, s, this.origin(ctx), assertion.audience, assertion.ttl, now)
      .then((signed) => {
        ctx.addHeader(assertion.header, signed);
        return null;
      });
  }

  /** A session renewed with its refresh token: the browser gets the new cookie with this response. */
  private refreshed(
    ctx: RequestContext,
    r: { session: Session; value: string },
    now: number,
  ): StageResult | Promise<StageResult> {
    for (const c of sessionCookies(this.config.cookie.name, r.value, Math.max(0, r.session.exp - now)))
      ctx.addResponseHeader('set-cookie', c);
    return this.withSession(ctx, r.session, r.value, now);
  }

  /**
   * Fetches the claims again with the refresh token (one call per session, shared by the requests
   * that arrive meanwhile). null when the provider refuses: the person was disabled, the grant
   * revoked — the session ends and the person logs in again.
   */
  private refresh(
    value: string,
    s: Session,
    now: number,
  ): Promise<{ session: Session; value: string } | null> {
    const pending = this.refreshing.get(value);
    if (pending !== undefined) return pending;
    const p = this.doRefresh(s, now);
    this.refreshing.set(value, p);
    // Kept a little while: requests still carrying the old cookie get the same answer.
    p.finally(() => setTimeout(() => this.refreshing.delete(value), 30_000).unref());
    return p;
  }

  private async doRefresh(s: Session, now: number): Promise<{ session: Session; value: string } | null> {
    const provider = this.providers.get(s.provider);
    if (provider === undefined) return null;
    try {
      const client = await import('openid-client');
      const tokens = await client.refreshTokenGrant(await provider.discovered(), s.rt);
      const fresh = tokens.claims();
      const claims: Record<string, unknown> = fresh === undefined ? { ...s.claims } : { ...fresh };
      if (fresh !== undefined && (fresh.sub !== s.sub || fresh.iss !== s.iss)) return null;
      for (const k of TOKEN_ONLY_CLAIMS) delete claims[k];
      const session: Session = {
        ...s,
        claims,
        rt: tokens.refresh_token ?? s.rt,
        rexp: now + Math.floor(this.config.refreshInterval / 1000),
      };
      return { session, value: await this.sealSession(session) };
    } catch (err) {
      const e = err as Error & { error?: string };
      this.log.info(
        { provider: s.provider, error: e.error, message: e.message },
        'session refresh refused; the person logs in again',
      );
      return null;
    }
  }

  private withoutSession(ctx: RequestContext): StageResult | Promise<StageResult> {
    const a = ctx.attrs;
    // A machine caller that proved an SVID (clientCertificates: optional) needs no login: policies
    // decide on its principal. Skipped paths are served without one (and still authorized).
    if (a.peerPrincipal !== '' || matchesSkip(a.path, this.config.skip)) return null;
    if (!isNavigation(ctx)) return REPLIES.loginRequired;
    if (this.providers.size === 1)
      return this.startLogin(
        ctx,
        this.providers.values().next().value as LoginProvider,
        safeReturnPath(ctx.target),
      );
    // Several providers: the person picks one.
    return redirect(
      `${this.config.loginPath}?rd=${encodeURIComponent(safeReturnPath(ctx.target))}`,
      [],
      'login-required',
      true,
    );
  }

  /**
   * `loginPath`: with `?provider=<name>` a login at that provider starts (returning to `rd`, a
   * path on this origin); without one, a page listing the providers.
   */
  private loginPage(ctx: RequestContext): StageResult | Promise<StageResult> {
    const params = new URLSearchParams(ctx.attrs.query);
    const returnTo = safeReturnPath(params.get('rd') ?? '/');
    const chosen = this.providers.get(params.get('provider') ?? '');
    if (chosen !== undefined) return this.startLogin(ctx, chosen, returnTo);
    const items = [...this.providers.keys()]
      .map(
        (name) =>
          `<li><a href="${this.config.loginPath}?provider=${encodeURIComponent(name)}&amp;rd=${encodeURIComponent(returnTo)}">${escapeHtml(name)}</a></li>`,
      )
      .join('');
    return new LocalReply(
      200,
      'login-chooser',
      `<!doctype html><title>Sign in</title><h1>Sign in with</h1><ul>${items}</ul>`,
      {
        deny: true,
        headers: {
          'content-type': 'text/html; charset=utf-8',
          'content-security-policy': "default-src 'none'",
          'cache-control': 'no-store',
        },
      },
    );
  }

  /** Off to the provider, with a transaction cookie holding what the callback must match. */
  private async startLogin(
    ctx: RequestContext,
    provider: LoginProvider,
    returnTo: string,
  ): Promise<StageResult> {
    const client = await import('openid-client');
    let configuration: Awaited<ReturnType<LoginProvider['discovered']>>;
    try {
      configuration = await provider.discovered();
    } catch (err) {
      this.log.warn(
        { provider: provider.config.name, err: (err as Error).message },
        'OpenID provider discovery failed',
      );
      return REPLIES.loginUnavailable;
    }
    const verifier = client.randomPKCECodeVerifier();
    const tx: LoginTransaction = {
      state: client.randomState(),
      nonce: client.randomNonce(),
      verifier,
      returnTo,
      provider: provider.config.name,
      exp: Math.floor(Date.now() / 1000) + TRANSACTION_SECONDS,
    };
    const url = client.buildAuthorizationUrl(configuration, {
      redirect_uri: `${this.origin(ctx)}${this.config.callbackPath}`,
      scope: provider.config.scopes.join(' '),
      code_challenge: await client.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
      state: tx.state,
      nonce: tx.nonce,
      // A refresh token is only issued after consent to offline access (OpenID Connect Core §11).
      ...(provider.config.scopes.includes('offline_access') ? { prompt: 'consent' } : {}),
    });
    const cookie = setCookie(this.txName, await this.sealer.seal(tx, 'tx'), TRANSACTION_SECONDS);
    return redirect(url.href, [cookie], 'login-required', true);
  }

  /** The provider sent the browser back: exchange the code, check the ID token, open a session. */
  private async callback(ctx: RequestContext, txValue: string | undefined): Promise<StageResult> {
    const now = Math.floor(Date.now() / 1000);
    const tx = txValue === undefined ? null : await this.sealer.openTransaction(txValue, now);
    const provider = tx === null ? undefined : this.providers.get(tx.provider);
    if (tx === null || provider === undefined) return REPLIES.loginExpired;
    const client = await import('openid-client');
    let claims: Record<string, unknown>;
    let refreshToken = '';
    try {
      const configuration = await provider.discovered();
      const tokens = await client.authorizationCodeGrant(
        configuration,
        new URL(`${this.origin(ctx)}${ctx.target}`),
        {
          pkceCodeVerifier: tx.verifier,
          expectedState: tx.state,
          expectedNonce: tx.nonce,
          idTokenExpected: true,
        },
      );
      const idClaims: Record<string, unknown> = { ...(tokens.claims() ?? {}) };
      claims = { ...idClaims };
      if (provider.config.userinfo) {
        // The subject must be the ID token's (checked by openid-client); ID token claims win.
        const info = await client.fetchUserInfo(configuration, tokens.access_token, String(idClaims.sub));
        claims = { ...info, ...idClaims };
      }
      refreshToken = tokens.refresh_token ?? '';
    } catch (err) {
      // The reason, never the code or a token.
      const e = err as Error & { code?: string; error?: string };
      this.log.warn(
        { provider: tx.provider, code: e.code, error: e.error, message: e.message },
        'login refused at the callback',
      );
      return REPLIES.loginFailed;
    }
    for (const k of TOKEN_ONLY_CLAIMS) delete claims[k];
    const ttl = Math.floor(this.config.cookie.ttl / 1000);
    const session: Session = {
      iss: String(claims.iss),
      sub: String(claims.sub),
      claims,
      provider: tx.provider,
      exp: now + ttl,
      rt: refreshToken,
      rexp: refreshToken === '' ? 0 : now + Math.floor(this.config.refreshInterval / 1000),
    };
    const value = await this.sealSession(session);
    return redirect(
      tx.returnTo,
      [...sessionCookies(this.config.cookie.name, value, ttl), setCookie(this.txName, '', 0)],
      'login-complete',
      false,
    );
  }

  /** Clears the session and, when its provider has an end-session endpoint, ends the session there too. */
  private async logout(ctx: RequestContext, sessionValue: string | undefined): Promise<StageResult> {
    let to = '/';
    const session =
      sessionValue === undefined
        ? null
        : await this.sealer.openSession(sessionValue, Math.floor(Date.now() / 1000));
    const provider = session === null ? undefined : this.providers.get(session.provider);
    if (provider !== undefined) {
      try {
        const configuration = await provider.discovered();
        if (configuration.serverMetadata().end_session_endpoint !== undefined) {
          const client = await import('openid-client');
          to = client.buildEndSessionUrl(configuration, { client_id: provider.config.clientId }).href;
        }
      } catch {
        // The provider cannot be reached: the local session ends anyway.
      }
    }
    void ctx;
    return redirect(
      to,
      [...sessionCookies(this.config.cookie.name, '', 0), setCookie(this.txName, '', 0)],
      'logout',
      false,
    );
  }

  /**
   * The sealed session; one that would need more than MAX_CHUNKS cookies keeps only the claims
   * policies and headers most often read (logged).
   */
  private async sealSession(session: Session): Promise<string> {
    const value = await this.sealer.seal(session, 'session');
    if (value.length <= MAX_COOKIE_VALUE * MAX_CHUNKS) return value;
    this.log.warn(
      { provider: session.provider, bytes: value.length },
      'ID token claims too large for the session cookies; keeping the usual ones',
    );
    return this.sealer.seal({ ...session, claims: pick(session.claims, KEPT_CLAIMS) }, 'session');
  }

  /** The origin redirect URIs are built on: `externalUrl`, else the request's own (always https). */
  private origin(ctx: RequestContext): string {
    const ext = this.config.externalUrl;
    return ext === null ? `https://${ctx.attrs.host}` : new URL(ext).origin;
  }
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);
const KEPT_CLAIMS = [
  'iss',
  'sub',
  'aud',
  'azp',
  'email',
  'email_verified',
  'name',
  'preferred_username',
  'groups',
  'roles',
];

function pick(o: Record<string, unknown>, keys: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of keys) if (o[k] !== undefined) out[k] = o[k];
  return out;
}

function redirect(location: string, cookies: string[], reason: string, deny: boolean): LocalReply {
  return new LocalReply(302, reason, '', {
    deny,
    headers: { location, 'set-cookie': cookies, 'cache-control': 'no-store' },
  });
}

/** `__Host-` cookies must be Secure, for Path=/, without Domain (RFC 6265bis); every one of ours is. */
function setCookie(name: string, value: string, maxAge: number): string {
  return `${name}=${value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=${maxAge}`;
}

/**
 * The Set-Cookie values for a session: one cookie when it fits, else `name` (holding `~N~` and the
 * first part) and `name-1` … `name-(N-1)`. Parts a longer session left behind are cleared, and an
 * empty value clears them all (logout).
 */
function sessionCookies(name: string, value: string, maxAge: number): string[] {
  const parts: string[] = [];
  for (let i = 0; i < value.length; i += MAX_COOKIE_VALUE) parts.push(value.slice(i, i + MAX_COOKIE_VALUE));
  if (parts.length === 0) parts.push('');
  const out = [
    setCookie(name, parts.length > 1 ? `~${parts.length}~${parts[0]}` : (parts[0] as string), maxAge),
  ];
  for (let i = 1; i < MAX_CHUNKS; i++)
    out.push(
      i < parts.length
        ? setCookie(`${name}-${i}`, parts[i] as string, maxAge)
        : setCookie(`${name}-${i}`, '', 0),
    );
  return out;
}

/**
 * A session's value, joined from its cookies when it was split; undefined when it is absent, a
 * part is missing, or a cookie of it is given twice.
 */
function sessionValue(header: string, name: string): string | undefined {
  const first = cookieValue(header, name) ?? undefined;
  if (first === undefined || !first.startsWith('~')) return first;
  const m = /^~(\d)~/.exec(first);
  const n = m === null ? 0 : Number(m[1]);
  if (n < 2 || n > MAX_CHUNKS) return undefined;
  let value = first.slice((m as RegExpExecArray)[0].length);
  for (let i = 1; i < n; i++) {
    const part = cookieValue(header, `${name}-${i}`);
    if (typeof part !== 'string') return undefined;
    value += part;
  }
  return value;
}

/** The Cookie header without the session's cookies (all its parts) and the transaction cookie. */
function withoutCookies(header: string, session: string, tx: string): string {
  return header
    .split(';')
    .map((p) => p.trim())
    .filter((p) => {
      if (p === '') return false;
      const name = p.slice(0, Math.max(0, p.indexOf('='))).trim();
      if (name === session || name === tx) return false;
      return !(name.startsWith(`${session}-`) && /^\d$/.test(name.slice(session.length + 1)));
    })
    .join('; ');
}

/**
 * Where to come back after login: this request's own path and query. A path that a browser
 * would read as another origin (`//evil.example`, `/\evil.example`) becomes `/`.
 */
function safeReturnPath(target: string): string {
  if (!target.startsWith('/') || target.startsWith('//')) return '/';
  // Browsers drop tabs and newlines inside URLs and read `\` as `/`: `/\t/evil.example` and
  // `/\\evil.example` would become another origin. None of these belong in a path to return to.
  for (let i = 0; i < target.length; i++) {
    const c = target.charCodeAt(i);
    if (c <= 0x20 || c === 0x5c || c === 0x7f) return '/';
  }
  return target;
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A top-level browser navigation (the one case a redirect to a login page makes sense). */
function isNavigation(ctx: RequestContext): boolean {
  const a = ctx.attrs;
  if (a.method !== 'GET' && a.method !== 'HEAD') return false;
  const mode = a.headers['sec-fetch-mode'];
  if (typeof mode === 'string') return mode === 'navigate';
  if (a.headers['x-requested-with'] !== undefined) return false;
  const accept = a.headers.accept;
  return typeof accept === 'string' && accept.includes('text/html');
}

/** A state-changing request from another site: its Origin (or Sec-Fetch-Site) says so. */
function foreignOrigin(ctx: RequestContext, own: string): boolean {
  const h = ctx.attrs.headers;
  const origin = h.origin;
  if (typeof origin === 'string') return origin !== own;
  return h['sec-fetch-site'] === 'cross-site';
}

function matchesSkip(path: string, skip: readonly string[]): boolean {
  for (const s of skip) {
    if (s.endsWith('*') ? path.startsWith(s.slice(0, -1)) : path === s) return true;
  }
  return false;
}
