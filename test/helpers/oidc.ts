import http from 'node:http';
import type { AddressInfo } from 'node:net';
import Provider from 'oidc-provider';

/**
 * A real OpenID provider for tests: panva's oidc-provider (a certified OP) on loopback, with one
 * confidential client and its development login and consent pages (any login and password
 * sign in as that login). `admin` belongs to the group `admins`, everyone else to `users`.
 */
export class TestProvider {
  readonly server: http.Server;
  issuer = '';
  provider: Provider | null = null;

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
  configure(clientId: string, clientSecret: string, redirectUri: string): void {
    const provider = new Provider(this.issuer, {
      clients: [
        {
          client_id: clientId,
          client_secret: clientSecret,
          redirect_uris: [redirectUri],
          response_types: ['code'],
          grant_types: ['authorization_code'],
        },
      ],
      // The ID token carries the profile claims (so the session has them without userinfo).
      conformIdTokenClaims: false,
      claims: { openid: ['sub'], email: ['email'], profile: ['name'], groups: ['groups'] },
      scopes: ['openid', 'email', 'profile', 'groups'],
      findAccount: (_ctx: unknown, id: string) => ({
        accountId: id,
        claims: () => ({
          sub: id,
          email: `${id}@example.com`,
          name: id.toUpperCase(),
          groups: id === 'admin' ? ['admins'] : ['users'],
        }),
      }),
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
