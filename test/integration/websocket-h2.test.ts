import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import type http from 'node:http';
import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WebSocket } from 'ws';
import { type Harness, startHarness } from '../helpers/harness.js';
import { until } from '../helpers/wait.js';
import { EchoWsUpstream, H2WebSocket } from '../helpers/ws.js';

/**
 * WebSocket over HTTP/2 (RFC 8441 extended CONNECT): a client on an mTLS HTTP/2 connection opens a
 * WebSocket on a stream; the proxy authorizes it as the GET it stands for, makes the HTTP/1.1
 * upgrade to a `ws` server upstream (its own Sec-WebSocket-Key, the upstream's Accept checked),
 * and joins the stream to the upstream socket.
 */

const POLICIES = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ws-h2, namespace: default }
spec:
  selector: { matchLabels: { app: api } }
  action: ALLOW
  rules:
    - to: [{ operation: { methods: [GET], notPaths: [/denied] } }]
`;

describe('WebSocket over HTTP/2 through Portcullis', () => {
  let h: Harness;
  let upstream: EchoWsUpstream;
  let session: http2.ClientHttp2Session;
  let auditFile: string;
  const authority = 'api.example';

  const audit = (): Record<string, unknown>[] =>
    existsSync(auditFile)
      ? readFileSync(auditFile, 'utf8')
          .split('\n')
          .filter((l) => l !== '')
          .map((l) => JSON.parse(l) as Record<string, unknown>)
      : [];

  beforeAll(async () => {
    upstream = new EchoWsUpstream();
    h = await startHarness({
      policies: POLICIES,
      upstreamUrl: await upstream.listen(),
      config: { audit: { sinks: [{ type: 'file', path: 'audit.ndjson' }] } },
    });
    auditFile = h.dir.file('audit.ndjson');
    session = http2.connect(`https://localhost:${h.port}`, { ...h.client, servername: 'localhost' });
    await new Promise<void>((resolve, reject) => {
      session.once('remoteSettings', () => resolve());
      session.once('error', reject);
    });
  });
  afterAll(async () => {
    session.close();
    await h.close();
    await upstream.close();
  });

  it('the server offers extended CONNECT, and a WebSocket echoes through it', async () => {
    expect(session.remoteSettings.enableConnectProtocol).toBe(true);
    const before = upstream.upgrades.length;
    const r = await H2WebSocket.open(session, '/chat?room=1', authority, {
      'sec-websocket-protocol': 'chat.v1',
      'sec-websocket-key': 'Y2xpZW50LWNob3Nlbi1rZXk=',
      'x-forwarded-client-cert': 'By=x;URI=spiffe://example.org/ns/default/sa/admin',
    });
    expect(r.status).toBe(200);
    const ws = r.ws as H2WebSocket;
    await ws.send('hello over h2');
    expect(String(await ws.next())).toBe('hello over h2');
    await ws.send(Buffer.from([0, 1, 2, 255]));
    expect([...(await ws.next())]).toEqual([0, 1, 2, 255]);
    // What the upstream got: an HTTP/1.1 upgrade to the authorized path and Host, the verified
    // peer in XFCC, and a key the proxy made (not the one the client slipped in).
    const seen = upstream.upgrades[before] as http.IncomingMessage;
    expect(seen.method).toBe('GET');
    expect(seen.url).toBe('/chat?room=1');
    expect(seen.headers.host).toBe(authority);
    expect(seen.headers.upgrade).toBe('websocket');
    expect(seen.headers['sec-websocket-key']).not.toBe('Y2xpZW50LWNob3Nlbi1rZXk=');
    expect(seen.headers['sec-websocket-protocol']).toBe('chat.v1');
    expect(String(seen.headers['x-forwarded-client-cert'])).toMatch(
      /URI=spiffe:\/\/example\.org\/ns\/default\/sa\/web$/,
    );
    ws.close();
    expect(await ws.closed).toBe(1000);
  });

  it('is authorized before anything is opened: a denied path is 403 and the upstream never sees it', async () => {
    const before = upstream.upgrades.length;
    const r = await H2WebSocket.open(session, '/denied', authority);
    expect(r.status).toBe(403);
    expect(r.ws).toBeNull();
    expect(r.body).toContain('RBAC: access denied');
    expect(upstream.upgrades.length).toBe(before);
  });

  it('a plain CONNECT (a TCP tunnel) is 405, another :protocol 400; the session carries on', async () => {
    const plain = await new Promise<number>((resolve, reject) => {
      const s = session.request({ ':method': 'CONNECT', ':authority': 'internal.example:22' });
      s.once('response', (hd) => resolve(Number(hd[':status'])));
      s.once('error', reject);
      s.resume();
    });
    expect(plain).toBe(405);
    const other = await new Promise<number>((resolve, reject) => {
      const s = session.request({
        ':method': 'CONNECT',
        ':protocol': 'connect-udp',
        ':scheme': 'https',
        ':path': '/x',
        ':authority': authority,
      });
      s.once('response', (hd) => resolve(Number(hd[':status'])));
      s.once('error', reject);
      s.resume();
    });
    expect(other).toBe(400);
    const again = await H2WebSocket.open(session, '/after', authority);
    expect(again.status).toBe(200);
    again.ws?.close();
  });

  it('a 4 MiB message crosses intact under HTTP/2 flow control, while the client does not read', async () => {
    const ws = (await H2WebSocket.open(session, '/big', authority)).ws as H2WebSocket;
    const big = Buffer.alloc(4 * 1024 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
    ws.stream.pause();
    const back = ws.next();
    await ws.send(big);
    await new Promise((r) => setTimeout(r, 200));
    ws.stream.resume();
    expect(
      createHash('sha256')
        .update(await back)
        .digest('hex'),
    ).toBe(createHash('sha256').update(big).digest('hex'));
    ws.close();
  });

  it('the upstream closing ends the stream; the client closing closes the upstream', async () => {
    const a = (await H2WebSocket.open(session, '/close-a', authority)).ws as H2WebSocket;
    await until('the upstream side', () => upstream.sockets.at(-1)?.readyState === 1);
    const upA = upstream.sockets.at(-1) as WebSocket;
    upA.close(1001, 'going away');
    expect(await a.closed).toBe(1001);

    const b = (await H2WebSocket.open(session, '/close-b', authority)).ws as H2WebSocket;
    await until(
      'the upstream side',
      () => upstream.sockets.at(-1) !== upA && upstream.sockets.at(-1)?.readyState === 1,
    );
    const upB = upstream.sockets.at(-1) as WebSocket;
    const bClosed = new Promise<void>((r) => upB.once('close', () => r()));
    b.stream.close(http2.constants.NGHTTP2_CANCEL);
    await bClosed;
    // Other streams on the session are unaffected.
    const c = (await H2WebSocket.open(session, '/close-c', authority)).ws as H2WebSocket;
    await c.send('still here');
    expect(String(await c.next())).toBe('still here');
    c.close();
  });

  it('is audited once at the decision (status 200, GET) and once when the tunnel closes', async () => {
    const r = await H2WebSocket.open(session, '/audited', authority, { 'x-request-id': 'h2-ws-audit' });
    const ws = r.ws as H2WebSocket;
    await ws.send('x');
    await ws.next();
    ws.close();
    await ws.closed;
    await until('the tunnel event', () =>
      audit().some((e) => e.requestId === 'h2-ws-audit' && e.event === 'tunnel-closed'),
    );
    const events = audit().filter((e) => e.requestId === 'h2-ws-audit');
    const decisions = events.filter((e) => e.event !== 'tunnel-closed');
    expect(decisions).toHaveLength(1);
    expect(decisions[0]).toMatchObject({
      decision: 'allow',
      status: 200,
      request: { method: 'GET', path: '/audited' },
    });
    const closed = events.find((e) => e.event === 'tunnel-closed') as {
      bytesFromClient: number;
      bytesToClient: number;
    };
    // Frame bytes both ways: the message and its echo, and the close frames.
    expect(closed.bytesFromClient).toBeGreaterThan(0);
    expect(closed.bytesToClient).toBeGreaterThan(0);
  });
});

describe('an HTTP/2 session idle past keepAliveTimeout', () => {
  let h: Harness;
  let upstream: EchoWsUpstream;
  beforeAll(async () => {
    upstream = new EchoWsUpstream();
    h = await startHarness({
      upstreamUrl: await upstream.listen(),
      listener: { limits: { keepAliveTimeout: '300ms' } },
    });
  });
  afterAll(async () => {
    await h.close();
    await upstream.close();
  });

  const connect = async (): Promise<http2.ClientHttp2Session> => {
    const s = http2.connect(`https://localhost:${h.port}`, { ...h.client, servername: 'localhost' });
    await new Promise<void>((resolve, reject) => {
      s.once('remoteSettings', () => resolve());
      s.once('error', reject);
    });
    return s;
  };

  it('is closed when nothing is open on it, but not while it carries a quiet WebSocket', async () => {
    const idle = await connect();
    const idleClosed = new Promise<void>((r) => idle.once('close', () => r()));
    const busy = await connect();
    const ws = (await H2WebSocket.open(busy, '/quiet', 'api.example')).ws as H2WebSocket;
    await idleClosed;
    await new Promise((r) => setTimeout(r, 600));
    await ws.send('still open after 900 ms of silence');
    expect(String(await ws.next())).toBe('still open after 900 ms of silence');
    ws.close();
    await ws.closed;
    busy.close();
  });
});
