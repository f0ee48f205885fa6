import https from 'node:https';
import net from 'node:net';
import { Readable } from 'node:stream';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import { type EchoReply, EchoUpstream, patternBytes, sha256 } from '../helpers/upstream.js';

/** Sends raw bytes over mTLS and returns what came back until the server closed or answered. */
function rawTls(h: Harness, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ port: h.port, host: '127.0.0.1', servername: 'localhost', ...h.client }, () =>
      sock.write(text),
    );
    let out = '';
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      out += d;
      if (/\r\n\r\n/.test(out)) sock.end();
    });
    sock.on('end', () => resolve(out));
    sock.on('close', () => resolve(out));
    sock.on('error', reject);
  });
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

describe('data path', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(() => h.close());

  it('streams an 8 MB request body to the upstream unchanged', async () => {
    const chunks = patternBytes(8 * 1024 * 1024);
    const res = await request(`${h.url}/upload`, {
      ...h.client,
      method: 'POST',
      body: Readable.from(chunks),
      headers: { 'content-type': 'application/octet-stream' },
    });
    expect(res.status).toBe(200);
    const echo = JSON.parse(res.text) as EchoReply;
    expect(echo.bodyBytes).toBe(8 * 1024 * 1024);
    expect(echo.bodySha256).toBe(sha256(chunks));
    expect(echo.headers['transfer-encoding']).toBe('chunked');
  });

  it('streams a request body with Content-Length unchanged', async () => {
    const body = Buffer.concat(patternBytes(3 * 1024 * 1024 + 7));
    const res = await request(`${h.url}/upload`, {
      ...h.client,
      method: 'PUT',
      body,
      headers: { 'content-length': String(body.length) },
    });
    const echo = JSON.parse(res.text) as EchoReply;
    expect(echo.bodyBytes).toBe(body.length);
    expect(echo.headers['content-length']).toBe(String(body.length));
    expect(echo.bodySha256).toBe(sha256([body]));
  });

  it('streams an 8 MB response body to the client unchanged', async () => {
    const res = await request(`${h.url}/bytes/${8 * 1024 * 1024}`, h.client);
    expect(res.status).toBe(200);
    expect(res.bytes.length).toBe(8 * 1024 * 1024);
    expect(sha256([res.bytes])).toBe(sha256(patternBytes(8 * 1024 * 1024)));
  });

  it('drops hop-by-hop headers and the ones Connection names, both ways', async () => {
    const res = await request(`${h.url}/hop`, {
      ...h.client,
      headers: {
        connection: 'keep-alive, x-secret-hop',
        'x-secret-hop': '1',
        'keep-alive': 'timeout=5',
        te: 'trailers',
        'x-kept': 'yes',
      },
    });
    const echo = JSON.parse(res.text) as EchoReply;
    expect(echo.headers['x-secret-hop']).toBeUndefined();
    expect(echo.headers['keep-alive']).toBeUndefined();
    expect(echo.headers.te).toBeUndefined();
    expect(echo.headers['x-kept']).toBe('yes');
    // The echo upstream answers with `connection: keep-alive, x-hop` and `x-hop: secret`.
    expect(res.headers['x-hop']).toBeUndefined();
    expect(res.headers['x-upstream']).toBe('echo');
  });

  it('appends the peer address to X-Forwarded-For and keeps the Host', async () => {
    const res = await request(`${h.url}/xff`, {
      ...h.client,
      headers: { 'x-forwarded-for': '203.0.113.9', host: 'api.example.org' },
    });
    const echo = JSON.parse(res.text) as EchoReply;
    expect(echo.headers['x-forwarded-for']).toBe('203.0.113.9, 127.0.0.1');
    expect(echo.headers.host).toBe('api.example.org');
  });

  it('reuses client connections (keep-alive) across requests', async () => {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ...h.client });
    const first = await request(`${h.url}/k1`, { ...h.client, agent });
    const second = await request(`${h.url}/k2`, { ...h.client, agent });
    agent.destroy();
    expect(first.status).toBe(200);
    expect(second.status).toBe(200);
    expect(second.socketReused).toBe(true);
  });

  it.each([
    ['an absolute-form target', 'GET http://evil.example/ HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['an encoded NUL', 'GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['a missing Host header', 'GET / HTTP/1.1\r\n\r\n'],
  ])('answers 400 to %s without calling the upstream', async (_name, raw) => {
    const before = h.upstream.requests;
    expect(await rawTls(h, raw)).toMatch(/^HTTP\/1\.1 400/);
    expect(h.upstream.requests).toBe(before);
  });

  it('answers 431 to a request head over the size limit', async () => {
    const res = await request(`${h.url}/big`, { ...h.client, headers: { 'x-big': 'a'.repeat(20_000) } });
    expect(res.status).toBe(431);
  });
});

describe('upstream failures', () => {
  it('answers 503 quickly when the upstream is down, and serves again once it is back', async () => {
    const port = await freePort();
    const h = await startHarness({ upstreamUrl: `http://127.0.0.1:${port}` });
    try {
      const t0 = performance.now();
      const down = await request(`${h.url}/x`, h.client);
      expect(down.status).toBe(503);
      expect(down.text).toContain('upstream connect error');
      expect(performance.now() - t0).toBeLessThan(2_000);
      expect((await request(`${h.url}/y`, h.client)).status).toBe(503);
      // A request with a body gets the same clean 503 (the unread body does not take the reply down).
      const post = await request(`${h.url}/p`, {
        ...h.client,
        method: 'POST',
        body: 'hello world',
        headers: { 'content-length': '11' },
      });
      expect(post.status).toBe(503);

      const upstream = new EchoUpstream();
      await new Promise<void>((r) => upstream.server.listen(port, '127.0.0.1', r));
      try {
        const up = await request(`${h.url}/z`, h.client);
        expect(up.status).toBe(200);
        expect((JSON.parse(up.text) as EchoReply).url).toBe('/z');
      } finally {
        await upstream.close();
      }
    } finally {
      await h.close();
    }
  });

  it('answers 504 when the upstream does not send headers in time', async () => {
    const h = await startHarness({ config: { limits: { upstreamHeadersTimeout: '200ms' } } });
    try {
      const res = await request(`${h.url}/slow/2000`, h.client);
      expect(res.status).toBe(504);
      expect(res.text).toContain('upstream request timeout');
    } finally {
      await h.close();
    }
  });
});

describe('graceful shutdown', () => {
  it('finishes in-flight requests, then stops accepting', async () => {
    const h = await startHarness();
    const inflight = request(`${h.url}/slow/400`, h.client);
    await new Promise((r) => setTimeout(r, 100));
    const closing = h.proxy.close();
    const res = await inflight;
    expect(res.status).toBe(200);
    expect(res.text).toBe('slow done');
    await closing;
    await expect(request(`${h.url}/late`, h.client)).rejects.toThrow();
    await h.close();
  });
});

describe('connection limits and per-connection identity', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({
      config: { limits: { headersTimeout: '300ms', maxConnections: 2 }, admin: { address: '127.0.0.1:0' } },
    });
  });
  afterAll(() => h.close());

  it('verifies a peer once per connection, not once per request', async () => {
    const stats = h.proxy.listeners[0]!.stats;
    const before = stats.peersVerified;
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    for (let i = 0; i < 5; i++)
      expect((await request(`${h.url}/r${i}`, { ...h.client, agent })).status).toBe(200);
    agent.destroy();
    expect(stats.peersVerified - before).toBe(1);
  });

  it('closes a connection that does not finish its request head within headersTimeout', async () => {
    const t0 = performance.now();
    const got = await new Promise<string>((resolve, reject) => {
      const sock = tls.connect(
        { port: h.port, host: '127.0.0.1', servername: 'localhost', ...h.client },
        () => sock.write('GET /slowloris HTTP/1.1\r\nHost: x\r\n'),
      );
      let out = '';
      sock.setEncoding('utf8');
      sock.on('data', (d: string) => (out += d));
      sock.on('close', () => resolve(out));
      sock.on('error', reject);
    });
    expect(got).toMatch(/^HTTP\/1\.1 408 Request Timeout/);
    expect(performance.now() - t0).toBeLessThan(3_000);
  });

  it('refuses connections beyond maxConnections', async () => {
    const open = (): Promise<tls.TLSSocket> =>
      new Promise((resolve, reject) => {
        const s = tls.connect({ port: h.port, host: '127.0.0.1', servername: 'localhost', ...h.client }, () =>
          resolve(s),
        );
        s.on('error', reject);
      });
    const a = await open();
    const b = await open();
    await expect(
      open().then(
        (c) =>
          new Promise((resolve, reject) => {
            c.on('close', () => reject(new Error('closed')));
            c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
            c.on('data', resolve);
          }),
      ),
    ).rejects.toThrow();
    a.destroy();
    b.destroy();
  });

  it('reports ready on /readyz while serving and 503 once shutdown begins', async () => {
    const admin = `http://127.0.0.1:${h.proxy.adminAddress()?.port}`;
    expect((await request(`${admin}/healthz`)).status).toBe(200);
    expect((await request(`${admin}/readyz`)).status).toBe(200);
    const status = JSON.parse((await request(`${admin}/status`)).text) as {
      spiffeId: string;
      listeners: { mtls: string }[];
    };
    expect(status.spiffeId).toBe('spiffe://example.org/ns/default/sa/api');
    expect(status.listeners[0]?.mtls).toBe('STRICT');
    expect(JSON.stringify(status)).not.toContain('PRIVATE KEY');
    const inflight = request(`${h.url}/slow/300`, h.client);
    await new Promise((r) => setTimeout(r, 50));
    const closing = h.proxy.close();
    expect((await request(`${admin}/readyz`)).status).toBe(503);
    expect((await inflight).status).toBe(200);
    await closing;
  });
});
