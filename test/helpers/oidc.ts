import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import Provider from 'oidc-provider';
import { Agent, request } from 'undici';
import { type Harness, startHarness } from './harness.js';
import { makePki } from './pki.js';

/**
 * A real OpenID provider for tests: panva's oidc-provider (a certified OP) on loopback, with one
 * confidential client and its development login and consent pages (any login and password
 * sign in as that login). `admin` belongs to the group `admins`, everyone else to `users`.
 */
export class TestProvider {
  readonly server: http.Server;
  issuer = '';
  provider: Provider | null = null;
  /** Accounts the provider no longer knows (a person disabled): their grants stop working. */
  readonly disabled = new Set<string>();
  /** Group overrides by account (a person's groups changing at the provider). */
  readonly groups = new Map<string, string[]>();

  constructor() {
    this.server = http.createServer();
  }

  /** Listens first, so that the issuer is known before the relying party's redirect URI is. */
  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.issuer = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.issuer;
  }

  /** Registers the one client and starts answering. */
  configure(
    clientId: string,
    clientSecret: string,
    redirectUri: string,
    opts: { claimsInUserinfoOnly?: boolean } = {},
  ): void {
    const provider = new Provider(this.issuer, {
      clients: [
        {
          client_id: clientId,
          client_secret: clientSecret,
          redirect_uris: [redirectUri],
          response_types: ['code'],
          grant_types: ['authorization_code', 'refresh_token'],
        },
      ],
      // By default the ID token carries the profile claims (so the session has them without
      // userinfo); conforming providers keep them for userinfo when an access token is issued.
      conformIdTokenClaims: opts.claimsInUserinfoOnly === true,
      claims: { openid: ['sub'], email: ['email'], profile: ['name'], groups: ['groups'] },
      scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
      findAccount: (_ctx: unknown, id: string) =>
        this.disabled.has(id)
          ? undefined
          : {
              accountId: id,
              claims: () => ({
                sub: id,
                email: `${id}@example.com`,
                name: id.toUpperCase(),
                groups: this.groups.get(id) ?? (id === 'admin' ? ['admins'] : ['users']),
              }),
            },
      cookies: { keys: ['test-cookie-key-0123456789abcdef'] },
      features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
    } as ConstructorParameters<typeof Provider>[1]);
    this.provider = provider;
    this.server.on('request', provider.callback());
  }

  async start(clientId: string, clientSecret: string, redirectUri: string): Promise<string> {
    await this.listen();
    this.configure(clientId, clientSecret, redirectUri);
    return this.issuer;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}

/** A cookie jar keyed by host: enough for a browser-like walk through login pages. */
export class CookieJar {
  private readonly jars = new Map<string, Map<string, string>>();

  store(url: string, setCookies: readonly string[]): void {
    const host = new URL(url).host;
    const jar = this.jars.get(host) ?? new Map<string, string>();
    this.jars.set(host, jar);
    for (const c of setCookies) {
      const first = c.split(';')[0] as string;
      const eq = first.indexOf('=');
      const name = first.slice(0, eq).trim();
      const value = first.slice(eq + 1).trim();
      const expired = /max-age=0\b/i.test(c) || /expires=Thu, 01 Jan 1970/i.test(c);
      if (expired || value === '') jar.delete(name);
      else jar.set(name, value);
    }
  }

  header(url: string): string {
    const jar = this.jars.get(new URL(url).host);
    return jar === undefined ? '' : [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  }

  get(url: string, name: string): string | undefined {
    return this.jars.get(new URL(url).host)?.get(name);
  }

  set(url: string, name: string, value: string): void {
    const host = new URL(url).host;
    const jar = this.jars.get(host) ?? new Map<string, string>();
    this.jars.set(host, jar);
    jar.set(name, value);
  }
}

export interface Step {
  status: number;
  url: string;
  location: string | null;
  body: string;
  setCookies: string[];
}

/**
 * A browser's way through a login, over HTTP: requests with the jar's cookies and a top-level
 * navigation's headers, redirects followed by hand, and the provider's login and consent forms
 * filled as a person would. `external` is the origin redirect URIs name (`externalUrl`), reached
 * here at `origin`.
 */
export class BrowserWalk {
  private readonly dispatcher: Agent;
  private readonly issuer: string;
  private readonly origin: string;
  private readonly external: string;

  constructor(dispatcher: Agent, issuer: string, origin: string, external: string = origin) {
    this.dispatcher = dispatcher;
    this.issuer = issuer;
    this.origin = origin;
    this.external = external;
  }

  /** One request as a browser would send it, cookies from the jar (redirects not followed). */
  async step(
    jar: CookieJar,
    url: string,
    init: { method?: string; body?: string; headers?: Record<string, string> } = {},
  ): Promise<Step> {
    const headers: Record<string, string> = {
      accept: 'text/html',
      'sec-fetch-mode': 'navigate',
      ...init.headers,
    };
    const cookie = jar.header(url);
    if (cookie !== '') headers.cookie = cookie;
    if (init.body !== undefined) headers['content-type'] = 'application/x-www-form-urlencoded';
    // undici's request, not fetch: fetch would replace Sec-Fetch-Mode, which a browser sets itself.
    const res = await request(url, {
      method: (init.method ?? 'GET') as 'GET',
      headers,
      body: init.body,
      dispatcher: this.dispatcher,
    });
    const raw = res.headers['set-cookie'];
    const setCookies = raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
    jar.store(url, setCookies);
    const loc = res.headers.location;
    const location =
      typeof loc !== 'string' ? null : new URL(loc, url).href.replace(this.external, this.origin);
    return { status: res.statusCode, url, location, body: await res.body.text(), setCookies };
  }

  /**
   * Follows a browser's way from `url`, signing in as `user`. Stops at the first answer that is
   * neither a redirect nor a provider form, or before the callback when `untilCallback`.
   */
  async browse(
    jar: CookieJar,
    url: string,
    user: string,
    untilCallback = false,
  ): Promise<Step & { trail: Step[] }> {
    const trail: Step[] = [];
    let next: { url: string; method?: string; body?: string } = { url };
    for (let i = 0; i < 20; i++) {
      const s = await this.step(jar, next.url, next);
      trail.push(s);
      if (s.location !== null) {
        if (untilCallback && s.location.startsWith(`${this.origin}/.portcullis/callback`))
          return { ...s, trail };
        next = { url: s.location };
        continue;
      }
      const action = /<form[^>]*action="([^"]+)"/.exec(s.body)?.[1];
      if (s.url.startsWith(this.issuer) && action !== undefined) {
        const form = s.body.includes('name="login"')
          ? new URLSearchParams({ prompt: 'login', login: user, password: 'any' })
          : new URLSearchParams({ prompt: 'consent' });
        next = { url: new URL(action, s.url).href, method: 'POST', body: form.toString() };
        continue;
      }
      return { ...s, trail };
    }
    throw new Error(`no end after 20 steps from ${url}`);
  }
}

/** A Portcullis listener with `login` in front of the echo upstream, its provider, and a browser walk. */
export interface LoginGateway {
  readonly op: TestProvider;
  readonly h: Harness;
  readonly issuer: string;
  /** https://localhost:PORT */
  readonly origin: string;
  readonly walk: BrowserWalk;
  close(): Promise<void>;
}

/**
 * Starts a provider and a gateway whose `login` block is the defaults below plus `login` (one
 * provider `test` unless `providers` says otherwise), served with the test PKI's certificate.
 */
export async function startLoginGateway(
  opts: {
    login?: Record<string, unknown>;
    providers?: (issuer: string) => Record<string, unknown>[];
    policies?: string;
    claimsInUserinfoOnly?: boolean;
  } = {},
): Promise<LoginGateway> {
  const op = new TestProvider();
  const issuer = await op.listen();
  const pki = await makePki();
  const h = await startHarness({
    pki,
    ...(opts.policies === undefined ? {} : { policies: opts.policies }),
    files: {
      'client-secret': 'client-secret\n',
      'cookie.key': `${randomBytes(32).toString('base64')}\n`,
    },
    listener: {
      tls: { cert: 'api.pem', key: 'api.key', clientCertificates: 'none' },
      login: {
        providers: opts.providers?.(issuer) ?? [
          { name: 'test', issuer, clientId: 'portcullis', clientSecretFile: 'client-secret' },
        ],
        cookie: { secretFile: 'cookie.key' },
        ...opts.login,
      },
    },
  });
  const origin = `https://localhost:${h.port}`;
  op.configure('portcullis', 'client-secret', `${origin}/.portcullis/callback`, {
    claimsInUserinfoOnly: opts.claimsInUserinfoOnly ?? false,
  });
  const dispatcher = new Agent({ connect: { ca: pki.ca.certPem } });
  return {
    op,
    h,
    issuer,
    origin,
    walk: new BrowserWalk(dispatcher, issuer, origin),
    async close() {
      await h.close();
      await op.close();
      await dispatcher.close();
    },
  };
}
