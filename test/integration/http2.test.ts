import http2 from 'node:http2';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import {
  ISSUER,
  JwksServer,
  makeKey,
  requestAuthentication,
  type SigningKey,
  sign,
} from '../helpers/jwks.js';
import type { EchoReply } from '../helpers/upstream.js';

/**
 * HTTP/2 inbound with Node's own http2 client over mTLS: one connection, many streams, each one
 * checked as a request (peer verified once for the connection; token, policy, audit per stream),
 * forwarded to an HTTP/1.1 upstream.
 */

const POLICIES = (jwksUri: string): string => `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: h2, namespace: default }
spec:
  selector: { matchLabels: { app: api } }
  action: DENY
  rules:
    - to: [{ operation: { paths: [/denied] } }]
    - to: [{ operation: { hosts: [secret.example] } }]
---
${requestAuthentication([{ issuer: ISSUER, jwksUri, audiences: ['api'], outputClaimToHeaders: [{ header: 'x-jwt-sub', claim: 'sub' }] }])}`;

interface H2Response {
  status: number;
  headers: http2.IncomingHttpHeaders;
  body: string;
}

function h2request(
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  body?: string,
): Promise<H2Response> {
  return new Promise((resolve, reject) => {
    const s = session.request(headers, { endStream: body === undefined });
    let data = '';
    let status = 0;
    let got: http2.IncomingHttpHeaders = {};
    s.on('response', (h) => {
      status = Number(h[':status']);
      got = h;
    });
    s.setEncoding('utf8');
    s.on('data', (c: string) => {
      data += c;
    });
    s.on('end', () => resolve({ status, headers: got, body: data }));
    s.on('error', reject);
    if (body !== undefined) s.end(body);
  });
}

describe('HTTP/2 inbound', () => {
  let h: Harness;
  let jwks: JwksServer;
  let key: SigningKey;
  let session: http2.ClientHttp2Session;

  beforeAll(async () => {
    key = await makeKey('k1');
    jwks = new JwksServer([key]);
    // HTTP/2 is offered by default (listeners[].http2 defaults to true).
    h = await startHarness({ policies: POLICIES(await jwks.listen()) });
    session = http2.connect(`https://localhost:${h.port}`, { ...h.client, servername: 'localhost' });
    await new Promise<void>((resolve, reject) => {
      session.once('connect', () => resolve());
      session.once('error', reject);
    });
  });
  afterAll(async () => {
    session.close();
    await h.close();
    await jwks.close();
  });

  it('negotiates h2 by ALPN and verifies the peer once for all the streams', async () => {
    expect(session.alpnProtocol).toBe('h2');
    expect((await h2request(session, { ':path': '/first', ':authority': 'api.example' })).status).toBe(200);
    const verified = h.proxy.listeners[0]?.stats.peersVerified ?? 0;
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        h2request(session, { ':path': `/ok/${i}`, ':authority': 'api.example' }),
      ),
    );
    for (const [i, r] of results.entries()) {
      expect(r.status).toBe(200);
      const e = JSON.parse(r.body) as EchoReply;
      expect(e.url).toBe(`/ok/${i}`);
      expect(e.headers.host).toBe('api.example');
      expect(String(e.headers['x-forwarded-client-cert'])).toContain(
        'URI=spiffe://example.org/ns/default/sa/web',
      );
      expect(e.headers['x-request-id']).toBeDefined();
    }
    expect(h.proxy.listeners[0]?.stats.peersVerified).toBe(verified);
  });

  it('a denied stream gets 403 and the streams beside it are not disturbed', async () => {
    const [a, denied, b, hostDenied] = await Promise.all([
      h2request(session, { ':path': '/a', ':authority': 'api.example' }),
      h2request(session, { ':path': '/denied', ':authority': 'api.example' }),
      h2request(session, { ':path': '/b', ':authority': 'api.example' }),
      h2request(session, { ':path': '/c', ':authority': 'secret.example' }),
    ]);
    expect([a.status, denied.status, b.status, hostDenied.status]).toEqual([200, 403, 200, 403]);
    expect(denied.body).toMatch(/^RBAC: access denied\nrequest id: [0-9a-f-]{36}\n$/);
    expect(session.closed).toBe(false);
  });

  it('checks tokens per stream: claims reach the upstream, a bad token is 401 with its challenge', async () => {
    const ok = await h2request(session, {
      ':path': '/me',
      ':authority': 'api.example',
      authorization: `Bearer ${await sign(key)}`,
    });
    expect(ok.status).toBe(200);
    expect((JSON.parse(ok.body) as EchoReply).headers['x-jwt-sub']).toBe('alice');
    const bad = await h2request(session, {
      ':path': '/me',
      ':authority': 'api.example',
      authorization: 'Bearer x.y.z',
    });
    expect(bad.status).toBe(401);
    expect(bad.headers['www-authenticate']).toMatch(/^Bearer realm="https:\/\/api\.example\/me"$/);
  });

  it('streams a request body to the upstream and joins split cookies into one field', async () => {
    const r = await h2request(
      session,
      { ':method': 'POST', ':path': '/upload', ':authority': 'api.example', cookie: ['a=1', 'b=2'] },
      'x'.repeat(100_000),
    );
    expect(r.status).toBe(200);
    const e = JSON.parse(r.body) as EchoReply;
    expect(e.bodyBytes).toBe(100_000);
    expect(e.headers.cookie).toBe('a=1; b=2');
  });

  it('a header list over maxHeaderSize never reaches the upstream, and the connection goes on', async () => {
    const before = h.upstream.requests;
    const outcome = await h2request(session, {
      ':path': '/huge',
      ':authority': 'api.example',
      'x-big': 'a'.repeat(40_000),
    }).then(
      (r) => `status ${r.status}`,
      (e: Error & { code?: string }) => `refused ${e.code ?? e.message}`,
    );
    expect(outcome).not.toBe('status 200');
    expect(h.upstream.requests).toBe(before);
    expect((await h2request(session, { ':path': '/after-huge', ':authority': 'api.example' })).status).toBe(
      200,
    );
  });

  it('refuses a Host that disagrees with :authority', async () => {
    const r = await h2request(session, {
      ':path': '/x',
      ':authority': 'api.example',
      host: 'secret.example',
    });
    expect(r.status).toBe(400);
  });

  it('a rapid-reset flood (streams opened and cancelled at once) is cut; other connections carry on', async () => {
    const attacker = http2.connect(`https://localhost:${h.port}`, { ...h.client, servername: 'localhost' });
    attacker.on('error', () => undefined);
    await new Promise<void>((r) => attacker.once('connect', () => r()));
    const upstreamBefore = h.upstream.requests;
    const ended = new Promise<string>((r) => {
      attacker.once('goaway', (code) => r(`goaway ${code}`));
      attacker.once('close', () => r('close'));
    });
    for (let i = 0; i < 5000 && !attacker.closed && !attacker.destroyed; i++) {
      const s = attacker.request({ ':path': `/flood/${i}`, ':authority': 'api.example' });
      s.on('error', () => undefined);
      s.close(http2.constants.NGHTTP2_CANCEL);
      if (i % 100 === 99) await new Promise((r) => setImmediate(r));
    }
    expect(
      await Promise.race([ended, new Promise((r) => setTimeout(() => r('still open'), 5_000))]),
    ).not.toBe('still open');
    attacker.destroy();
    // The well-behaved session beside it still works, and the flood did not become 5000 upstream calls.
    expect((await h2request(session, { ':path': '/after-flood', ':authority': 'api.example' })).status).toBe(
      200,
    );
    expect(h.upstream.requests - upstreamBefore).toBeLessThan(2_500);
  });

  it('a CONTINUATION flood (a header block that never ends) is cut; other connections carry on', async () => {
    // No library sends this on purpose, so the frames are written here (RFC 9113 §4.1, §6.2, §6.10):
    // a HEADERS frame without END_HEADERS, then CONTINUATION frames that never set it.
    const frame = (type: number, flags: number, stream: number, payload: Buffer): Buffer => {
      const h = Buffer.alloc(9);
      h.writeUIntBE(payload.length, 0, 3);
      h[3] = type;
      h[4] = flags;
      h.writeUInt32BE(stream, 5);
      return Buffer.concat([h, payload]);
    };
    const literal = (name: string, value: string): Buffer =>
      Buffer.concat([
        Buffer.from([0x00, name.length]),
        Buffer.from(name),
        Buffer.from([value.length]),
        Buffer.from(value),
      ]);
    const sock = tls.connect({
      host: '127.0.0.1',
      port: h.port,
      ...h.client,
      servername: 'localhost',
      ALPNProtocols: ['h2'],
    });
    sock.on('error', () => undefined);
    await new Promise<void>((r) => sock.once('secureConnect', () => r()));
    expect(sock.alpnProtocol).toBe('h2');
    const closed = new Promise<void>((r) => sock.once('close', () => r()));
    sock.write(Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
    sock.write(frame(0x4, 0, 0, Buffer.alloc(0))); // SETTINGS
    // :method GET, :path /, :scheme https (static table 2, 4, 7), no END_HEADERS (flag 0x4).
    sock.write(frame(0x1, 0x1, 1, Buffer.from([0x82, 0x84, 0x87])));
    let sent = 0;
    for (let i = 0; i < 20_000 && !sock.destroyed; i++) {
      sock.write(frame(0x9, 0, 1, literal(`x-${i % 100}`, 'v')));
      sent++;
      if (i % 500 === 499) await new Promise((r) => setImmediate(r));
    }
    const outcome = await Promise.race([
      closed.then(() => 'closed'),
      new Promise((r) => setTimeout(() => r('open'), 5_000)),
    ]);
    sock.destroy();
    expect(outcome).toBe('closed');
    expect(sent).toBeGreaterThan(0);
    expect(
      (await h2request(session, { ':path': '/after-continuation', ':authority': 'api.example' })).status,
    ).toBe(200);
  });

  it('still serves HTTP/1.1 clients on the same listener', async () => {
    const r = await request(`${h.url}/h1`, h.client);
    expect(r.status).toBe(200);
  });
});

describe('an HTTP/2 upstream (h2c with prior knowledge)', () => {
  let h: Harness;
  const server = http2.createServer();
  const seen: http2.IncomingHttpHeaders[] = [];

  beforeAll(async () => {
    server.on('stream', (stream, headers) => {
      seen.push(headers);
      let n = 0;
      stream.on('data', (c: Buffer) => {
        n += c.length;
      });
      stream.on('end', () => {
        stream.respond({ ':status': 200, 'content-type': 'text/plain', 'x-upstream': 'h2c' });
        stream.end(`h2c upstream got ${headers[':method']} ${headers[':path']} with ${n} bytes`);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    h = await startHarness({
      upstreamUrl: `http://127.0.0.1:${port}`,
      listener: { upstreamProtocol: 'http2' },
    });
  });
  afterAll(async () => {
    await h.close();
    server.close();
  });

  it('serves an HTTP/1.1 client, with the Host authorized as :authority and the body streamed', async () => {
    const r = await request(`${h.url}/items?x=1`, {
      ...h.client,
      method: 'POST',
      body: 'x'.repeat(5000),
      headers: { host: 'api.example' },
    });
    expect(r.status).toBe(200);
    expect(r.headers['x-upstream']).toBe('h2c');
    expect(r.text).toBe('h2c upstream got POST /items?x=1 with 5000 bytes');
    const last = seen.at(-1) as http2.IncomingHttpHeaders;
    expect(last[':authority']).toBe('api.example');
    expect(String(last['x-forwarded-client-cert'])).toContain('URI=spiffe://example.org/ns/default/sa/web');
    expect(last.host).toBeUndefined();
  });
});

describe('an HTTP/2 upstream that is down', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ upstreamUrl: 'http://127.0.0.1:1', listener: { upstreamProtocol: 'http2' } });
  });
  afterAll(() => h.close());

  it('answers 503 and keeps serving', async () => {
    expect((await request(`${h.url}/a`, h.client)).status).toBe(503);
    expect((await request(`${h.url}/b`, h.client)).status).toBe(503);
  });
});

describe('a listener with http2: false', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ listener: { http2: false } });
  });
  afterAll(async () => {
    await h.close();
  });

  it('offers HTTP/1.1 alone: a client that asks for h2 and http/1.1 gets http/1.1, an h2-only client is refused', async () => {
    const alpn = (protocols: string[]): Promise<string | false | Error> =>
      new Promise((resolve) => {
        const c = tls.connect({
          ...h.client,
          port: h.port,
          host: '127.0.0.1',
          servername: 'localhost',
          ALPNProtocols: protocols,
        });
        c.once('secureConnect', () => {
          resolve(c.alpnProtocol ?? false);
          c.destroy();
        });
        c.once('error', (err) => resolve(err));
      });
    expect(await alpn(['h2', 'http/1.1'])).toBe('http/1.1');
    const refused = await alpn(['h2']);
    expect(refused).toBeInstanceOf(Error);
    expect(String((refused as Error).message)).toMatch(/no application protocol|alert number 120/i);
    expect((await request(`${h.url}/h1`, h.client)).status).toBe(200);
  });
});
