import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import type { EchoReply } from '../helpers/upstream.js';

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  bodyBytes: number;
}

/** A real external authorizer speaking Envoy ext_authz's HTTP protocol. */
class Authorizer {
  readonly server: http.Server;
  readonly seen: Seen[] = [];
  url = '';

  constructor() {
    this.server = http.createServer((req, res) => {
      let bodyBytes = 0;
      req.on('data', (c: Buffer) => (bodyBytes += c.length));
      req.on('end', () => {
        this.seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, bodyBytes });
        if (req.headers['x-slow'] !== undefined) {
          setTimeout(() => res.end('late'), 2_000);
          return;
        }
        if (req.headers['x-allow'] === 'yes') {
          res.writeHead(200, { 'x-ext-user': 'alice', 'x-ext-seen': 'checked', 'x-not-listed': 'no' });
          res.end();
          return;
        }
        res.writeHead(401, { 'x-reason': 'no badge', 'content-type': 'text/plain' });
        res.end('nope');
      });
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
    return this.url;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}

async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

const CUSTOM = (name: string, provider: string, paths: string[]): string => `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ${name}, namespace: default }
spec:
  action: CUSTOM
  provider: { name: ${provider} }
  rules: [{ to: [{ operation: { paths: ${JSON.stringify(paths)} } }] }]
---
`;

describe('CUSTOM policies and an external authorizer (ext_authz HTTP)', () => {
  let h: Harness;
  let authz: Authorizer;

  beforeAll(async () => {
    authz = new Authorizer();
    const url = await authz.listen();
    const down = await closedPort();
    h = await startHarness({
      policies:
        CUSTOM('badge-check', 'badges', ['/protected/*']) + CUSTOM('best-effort', 'down-open', ['/open/*']),
      config: {
        extensionProviders: [
          {
            name: 'badges',
            envoyExtAuthzHttp: {
              service: url,
              pathPrefix: '/check',
              timeout: '300ms',
              includeRequestHeadersInCheck: ['x-allow', 'x-slow'],
              includeAdditionalHeadersInCheck: { 'x-from': 'portcullis' },
              headersToUpstreamOnAllow: ['x-ext-user'],
              headersToDownstreamOnAllow: ['x-ext-seen'],
              headersToDownstreamOnDeny: ['x-reason', 'content-type'],
            },
          },
          {
            name: 'down-open',
            envoyExtAuthzHttp: { service: '127.0.0.1', port: down, failOpen: true, timeout: '300ms' },
          },
        ],
      },
    });
  });
  afterAll(async () => {
    await h.close();
    await authz.close();
  });

  it('does not call the authorizer for requests no CUSTOM rule matches', async () => {
    const before = authz.seen.length;
    expect((await request(`${h.url}/public`, h.client)).status).toBe(200);
    expect(authz.seen.length).toBe(before);
  });

  it('allows what the authorizer allows, passing its headers up- and downstream', async () => {
    const res = await request(`${h.url}/protected/a?x=1`, {
      ...h.client,
      method: 'POST',
      body: 'payload',
      headers: { 'x-allow': 'yes', authorization: 'Bearer abc', 'x-ext-user': 'spoofed', 'x-secret': 's' },
    });
    expect(res.status).toBe(200);
    expect(res.headers['x-ext-seen']).toBe('checked');
    expect(res.headers['x-not-listed']).toBeUndefined();
    const up = JSON.parse(res.text) as EchoReply;
    expect(up.headers['x-ext-user']).toBe('alice');
    expect(up.bodyBytes).toBe(7);

    const check = authz.seen.at(-1) as Seen;
    expect(check.method).toBe('POST');
    expect(check.url).toBe('/check/protected/a?x=1');
    expect(check.bodyBytes).toBe(0);
    expect(check.headers.authorization).toBe('Bearer abc');
    expect(check.headers['x-from']).toBe('portcullis');
    expect(check.headers['x-secret']).toBeUndefined();
    expect(check.headers['x-forwarded-client-cert']).toContain('URI=spiffe://example.org/ns/default/sa/web');
  });

  it("relays the authorizer's denial (status, body, listed headers) and never calls the upstream", async () => {
    const before = h.upstream.requests;
    const res = await request(`${h.url}/protected/b`, h.client);
    expect(res.status).toBe(401);
    expect(res.text).toBe('nope');
    expect(res.headers['x-reason']).toBe('no badge');
    expect(h.upstream.requests).toBe(before);
  });

  it('fails closed with 403 when the authorizer does not answer in time', async () => {
    const t0 = performance.now();
    const res = await request(`${h.url}/protected/c`, { ...h.client, headers: { 'x-slow': '1' } });
    expect(res.status).toBe(403);
    expect(performance.now() - t0).toBeLessThan(1_500);
  });

  it('lets requests through a failOpen provider that is down', async () => {
    expect((await request(`${h.url}/open/x`, h.client)).status).toBe(200);
  });

  it('asks about the normalized path, the one that is forwarded', async () => {
    await request(`${h.url}/public/../protected/d`, { ...h.client, headers: { 'x-allow': 'yes' } });
    expect((authz.seen.at(-1) as Seen).url).toBe('/check/protected/d');
  });
});

describe('CUSTOM policy configuration', () => {
  it('refuses to start when a CUSTOM policy names a provider that is not configured', async () => {
    await expect(startHarness({ policies: CUSTOM('x', 'nowhere', ['/a']) })).rejects.toThrow(
      /AuthorizationPolicy default\/x: spec\.provider\.name: no extension provider named "nowhere"/,
    );
  });
});
