import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueSvid } from '../../src/identity/dev-ca.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import { makePki, type TestPki } from '../helpers/pki.js';
import { type EchoReply, EchoUpstream } from '../helpers/upstream.js';
import { until } from '../helpers/wait.js';

/**
 * Sidecar to sidecar: the app beside A calls out in plain HTTP through A's outbound listener; A
 * calls B's inbound listener with mTLS as A's own SPIFFE ID and checks that B's server is who the
 * destination says (secure naming); B verifies A and forwards to its service, which sees A's ID
 * in XFCC. No TLS code in the app.
 */

const WEB = 'spiffe://example.org/ns/default/sa/web';
const API = 'spiffe://example.org/ns/default/sa/api';

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** Plain HTTP to the outbound listener, with the request target exactly as given (origin- or absolute-form). */
function call(
  port: number,
  target: string,
  opts: { host?: string; method?: string; agent?: http.Agent } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        path: target,
        method: opts.method ?? 'GET',
        headers: { host: opts.host ?? 'billing.default.svc' },
        agent: opts.agent ?? false,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          body += c;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

describe('outbound: A → B with mTLS and secure naming', () => {
  let pki: TestPki;
  let b: Harness;
  let a: Harness;
  let outPort: number;
  let plain: EchoUpstream;
  let plainUrl: string;

  const audit = (): Record<string, unknown>[] => {
    const f = a.dir.file('audit.ndjson');
    return existsSync(f)
      ? readFileSync(f, 'utf8')
          .split('\n')
          .filter((l) => l !== '')
          .map((l) => JSON.parse(l) as Record<string, unknown>)
      : [];
  };

  beforeAll(async () => {
    pki = await makePki();
    // B: a service behind Portcullis (STRICT mTLS by default), SPIFFE ID sa/api.
    b = await startHarness({ pki });
    plain = new EchoUpstream();
    plainUrl = await plain.listen();
    const bOrigin = `https://127.0.0.1:${b.port}`;
    // A: this workload (sa/web), with an outbound listener for its app.
    a = await startHarness({
      pki,
      files: { 'web.pem': pki.client.certPem, 'web.key': pki.client.keyPem },
      config: {
        identity: { cert: 'web.pem', key: 'web.key', bundles: { 'example.org': 'bundle.pem' } },
        audit: { sinks: [{ type: 'file', path: 'audit.ndjson' }] },
        outbound: {
          address: '127.0.0.1:0',
          destinations: [
            { host: 'billing.default.svc', upstream: bOrigin, identities: [API] },
            { host: 'impostor.default.svc', upstream: bOrigin, identities: [`${API}-not`] },
            { host: 'any-in-domain.svc:8080', upstream: bOrigin, trustDomains: ['example.org'] },
            { host: 'partner.svc', upstream: bOrigin, trustDomains: ['partner.example'] },
          ],
        },
      },
    });
    outPort = a.proxy.outboundAddress()?.port ?? 0;
  });
  afterAll(async () => {
    await a.close();
    await b.close();
    await plain.close();
  });

  it('the app sends plain HTTP with the destination Host; B’s service sees A’s SPIFFE ID in XFCC', async () => {
    const r = await call(outPort, '/orders/7?full=1');
    expect(r.status).toBe(200);
    const e = JSON.parse(r.body) as EchoReply;
    expect(e.url).toBe('/orders/7?full=1');
    expect(e.headers.host).toBe('billing.default.svc');
    expect(String(e.headers['x-forwarded-client-cert'])).toMatch(new RegExp(`URI=${WEB}$`));
  });

  it('as an HTTP proxy (absolute-form target, as HTTP_PROXY clients send): the target names the destination', async () => {
    const r = await call(outPort, 'http://billing.default.svc/x/./y?q=1', { host: 'ignored.example' });
    expect(r.status).toBe(200);
    const e = JSON.parse(r.body) as EchoReply;
    expect(e.url).toBe('/x/y?q=1');
    expect(e.headers.host).toBe('billing.default.svc');
  });

  it('a server that proves another identity never gets the request: 503, audited with the ID it presented', async () => {
    const before = b.upstream.requests;
    const r = await call(outPort, '/secret', { host: 'impostor.default.svc' });
    expect(r.status).toBe(503);
    expect(r.body).toContain('server identity mismatch');
    expect(b.upstream.requests).toBe(before);
    await until('the audit event', () =>
      audit().some((e) => (e.request as { path?: string }).path === '/secret'),
    );
    const event = audit().find((e) => (e.request as { path?: string }).path === '/secret');
    expect(event).toMatchObject({
      direction: 'outbound',
      decision: 'deny',
      status: 503,
      reason: 'server-identity-mismatch',
      destination: { host: 'impostor.default.svc', principal: API },
    });
  });

  it('trustDomains accepts any workload of the domain, and only of that domain', async () => {
    expect((await call(outPort, '/td', { host: 'any-in-domain.svc:8080' })).status).toBe(200);
    const before = b.upstream.requests;
    const r = await call(outPort, '/td', { host: 'partner.svc' });
    expect(r.status).toBe(503);
    expect(b.upstream.requests).toBe(before);
  });

  it('REGISTRY_ONLY refuses a host no destination names; CONNECT and https:// targets get a clear refusal', async () => {
    const unlisted = await call(outPort, '/x', { host: 'elsewhere.example' });
    expect(unlisted.status).toBe(502);
    expect(unlisted.body).toContain('not registered');
    const tls = await call(outPort, 'https://billing.default.svc/x');
    expect(tls.status).toBe(400);
    expect(tls.body).toContain('send http://');
    // Node's client hands any answer to a CONNECT to 'connect', with the socket after the head.
    const connect = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request({
        host: '127.0.0.1',
        port: outPort,
        method: 'CONNECT',
        path: 'billing.default.svc:443',
      });
      req.on('connect', (res, socket, head) => {
        let body = head.toString('utf8');
        socket.setEncoding('utf8');
        socket.on('data', (c: string) => {
          body += c;
        });
        socket.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on('error', reject);
      req.end();
    });
    expect(connect.status).toBe(405);
    expect(connect.body).toContain('CONNECT is not supported');
    await until('the refusals in the audit log', () =>
      audit().some((e) => e.reason === 'destination-not-registered'),
    );
  });

  it('refuses hostile targets: userinfo in the authority, an invalid host, a dot-dot escape is normalized', async () => {
    const before = b.upstream.requests;
    expect((await call(outPort, 'http://user:pw@billing.default.svc/x')).status).toBe(400);
    expect(
      (await call(outPort, '/x', { host: 'billing.default.svc\u0000evil' }).catch(() => ({ status: 400 })))
        .status,
    ).toBe(400);
    expect((await call(outPort, 'http://bil ling/x').catch(() => ({ status: 400 }))).status).toBe(400);
    expect(b.upstream.requests).toBe(before);
    const r = await call(outPort, 'http://billing.default.svc/a/../../../etc/passwd');
    expect(r.status).toBe(200);
    expect((JSON.parse(r.body) as EchoReply).url).toBe('/etc/passwd');
  });

  it('keeps connections to B alive across calls', async () => {
    await call(outPort, '/warm');
    const before = b.proxy.listeners[0]?.stats.connections ?? 0;
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    for (let i = 0; i < 10; i++) expect((await call(outPort, `/k/${i}`, { agent })).status).toBe(200);
    agent.destroy();
    expect((b.proxy.listeners[0]?.stats.connections ?? 0) - before).toBeLessThanOrEqual(1);
  });

  it('B rotating its certificate mid-run fails no call', async () => {
    let failures = 0;
    let calls = 0;
    let running = true;
    const loop = (async () => {
      while (running) {
        const r = await call(outPort, '/during-rotation');
        calls++;
        if (r.status !== 200) failures++;
      }
    })();
    await until('some calls', () => calls >= 20);
    const next = await issueSvid(pki.ca, API, { dnsNames: ['localhost'] });
    b.dir.write('api.pem', next.certPem);
    b.dir.write('api.key', next.keyPem);
    expect(b.proxy.reload('test rotation')).toBe(true);
    const after = calls;
    await until('calls after the rotation', () => calls >= after + 20);
    running = false;
    await loop;
    expect(failures).toBe(0);
  });

  it('audits each call out with its direction and the destination’s verified principal', async () => {
    await call(outPort, '/audited-out');
    await until('the event', () =>
      audit().some((e) => (e.request as { path?: string }).path === '/audited-out'),
    );
    expect(audit().find((e) => (e.request as { path?: string }).path === '/audited-out')).toMatchObject({
      direction: 'outbound',
      listener: 'outbound',
      decision: 'allow',
      status: 200,
      request: { method: 'GET', host: 'billing.default.svc' },
      destination: { host: 'billing.default.svc', upstream: `https://127.0.0.1:${b.port}`, principal: API },
    });
  });

  it('ALLOW_ANY would pass an unlisted host through in plain HTTP (this one is REGISTRY_ONLY)', async () => {
    const host = new URL(plainUrl).host;
    expect((await call(outPort, '/p', { host })).status).toBe(502);
    expect(plain.requests).toBe(0);
  });
});

describe('outbound with ALLOW_ANY', () => {
  let a: Harness;
  let plain: EchoUpstream;
  let plainUrl: string;
  beforeAll(async () => {
    plain = new EchoUpstream();
    plainUrl = await plain.listen();
    a = await startHarness({
      config: {
        audit: { sinks: [{ type: 'file', path: 'audit.ndjson' }] },
        outbound: { address: '127.0.0.1:0', policy: 'ALLOW_ANY' },
      },
    });
  });
  afterAll(async () => {
    await a.close();
    await plain.close();
  });

  it('passes an unlisted host through in plain HTTP, audited as such', async () => {
    const host = new URL(plainUrl).host;
    const port = a.proxy.outboundAddress()?.port ?? 0;
    const r = await call(port, `http://${host}/through?x=1`);
    expect(r.status).toBe(200);
    expect((JSON.parse(r.body) as EchoReply).url).toBe('/through?x=1');
    const file = a.dir.file('audit.ndjson');
    await until('the event', () => existsSync(file) && readFileSync(file, 'utf8').includes('/through'));
    const event = readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l.includes('/through'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)[0];
    expect(event).toMatchObject({
      direction: 'outbound',
      decision: 'allow',
      destination: { host, upstream: `http://${host}`, principal: '' },
    });
  });
});
