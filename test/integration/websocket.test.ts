import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import type http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { type Harness, startHarness } from '../helpers/harness.js';
import {
  ISSUER,
  JwksServer,
  makeKey,
  requestAuthentication,
  type SigningKey,
  sign,
} from '../helpers/jwks.js';
import { rawExchange } from '../helpers/raw.js';
import { until } from '../helpers/wait.js';
import { EchoWsUpstream } from '../helpers/ws.js';

/**
 * WebSocket through the proxy with the `ws` package on both ends: the upgrade request passes every
 * check first (peer, token, policy), then the sockets are joined.
 */

const POLICIES = (jwksUri: string): string => `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ws, namespace: default }
spec:
  selector: { matchLabels: { app: api } }
  action: DENY
  rules:
    - to: [{ operation: { paths: [/denied] } }]
    - to: [{ operation: { paths: [/needs-token] } }]
      from: [{ source: { notRequestPrincipals: ["*"] } }]
---
${requestAuthentication([{ issuer: ISSUER, jwksUri, audiences: ['api'] }])}`;

describe('WebSocket through Portcullis', () => {
  let h: Harness;
  let upstream: EchoWsUpstream;
  let jwks: JwksServer;
  let key: SigningKey;
  let auditFile: string;

  const open = (path: string, headers: Record<string, string> = {}): Promise<WebSocket> =>
    new Promise((resolve, reject) => {
      const ws = new WebSocket(`wss://localhost:${h.port}${path}`, {
        ...h.client,
        headers,
        maxPayload: 64 * 1024 * 1024,
      });
      ws.once('open', () => resolve(ws));
      ws.once('unexpected-response', (_req, res) =>
        reject(Object.assign(new Error('refused'), { status: res.statusCode })),
      );
      ws.once('error', reject);
    });

  const refusal = (path: string, headers: Record<string, string> = {}): Promise<number> =>
    open(path, headers).then(
      (ws) => {
        ws.terminate();
        return 101;
      },
      (err: { status?: number }) => err.status ?? 0,
    );

  const audit = (): Record<string, unknown>[] =>
    existsSync(auditFile)
      ? readFileSync(auditFile, 'utf8')
          .split('\n')
          .filter((l) => l !== '')
          .map((l) => JSON.parse(l) as Record<string, unknown>)
      : [];

  beforeAll(async () => {
    key = await makeKey('k1');
    jwks = new JwksServer([key]);
    const uri = await jwks.listen();
    upstream = new EchoWsUpstream();
    h = await startHarness({
      policies: POLICIES(uri),
      upstreamUrl: await upstream.listen(),
      config: { audit: { sinks: [{ type: 'file', path: 'audit.ndjson' }] } },
    });
    auditFile = h.dir.file('audit.ndjson');
  });
  afterAll(async () => {
    await h.close();
    await upstream.close();
    await jwks.close();
  });

  it('echoes messages, and the upstream sees the verified peer in XFCC, not the one the client claimed', async () => {
    const ws = await open('/echo', {
      'x-forwarded-client-cert': 'By=x;URI=spiffe://example.org/ns/default/sa/admin',
    });
    const reply = new Promise<string>((r) => ws.once('message', (d) => r(String(d))));
    ws.send('hello through the proxy');
    expect(await reply).toBe('hello through the proxy');
    const seen = upstream.upgrades.at(-1) as http.IncomingMessage;
    expect(String(seen.headers['x-forwarded-client-cert'])).toMatch(
      /URI=spiffe:\/\/example\.org\/ns\/default\/sa\/web$/,
    );
    expect(seen.headers['x-request-id']).toBeDefined();
    ws.close();
  });

  it('a denied path gets 403 and is never upgraded; the upstream never sees it', async () => {
    const before = upstream.upgrades.length;
    expect(await refusal('/denied')).toBe(403);
    expect(upstream.upgrades.length).toBe(before);
  });

  it('a token is checked before the upgrade: a bad one is 401, none where one is required is 403, a good one opens', async () => {
    expect(await refusal('/needs-token', { authorization: 'Bearer not.a.jwt' })).toBe(401);
    expect(await refusal('/needs-token')).toBe(403);
    const ws = await open('/needs-token', { authorization: `Bearer ${await sign(key)}` });
    expect(ws.readyState).toBe(WebSocket.OPEN);
    ws.close();
  });

  it('the upstream refusing the upgrade is relayed as it answered', async () => {
    expect(await refusal('/refuse')).toBe(403);
  });

  it('an 8 MiB message crosses intact while the reader pauses', async () => {
    const ws = await open('/big');
    const big = Buffer.alloc(8 * 1024 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
    // Slow reader: do not read for a while, so the proxy has to hold back rather than buffer.
    (ws as unknown as { _socket: { pause(): void; resume(): void } })._socket.pause();
    const back = new Promise<Buffer>((r) => ws.once('message', (d) => r(d as Buffer)));
    ws.send(big);
    await new Promise((r) => setTimeout(r, 300));
    (ws as unknown as { _socket: { resume(): void } })._socket.resume();
    const got = await back;
    expect(createHash('sha256').update(got).digest('hex')).toBe(
      createHash('sha256').update(big).digest('hex'),
    );
    ws.close();
  });

  it('the upstream closing closes the client, and the client closing closes the upstream', async () => {
    const a = await open('/close-a');
    await until(
      'the upstream side',
      () => upstream.sockets.length > 0 && upstream.sockets.at(-1)?.readyState === 1,
    );
    const upA = upstream.sockets.at(-1) as WebSocket;
    const aClosed = new Promise<void>((r) => a.once('close', () => r()));
    upA.terminate();
    await aClosed;

    const b = await open('/close-b');
    await until(
      'the upstream side',
      () => upstream.sockets.at(-1) !== upA && upstream.sockets.at(-1)?.readyState === 1,
    );
    const upB = upstream.sockets.at(-1) as WebSocket;
    const bClosed = new Promise<void>((r) => upB.once('close', () => r()));
    b.terminate();
    await bClosed;
  });

  it('records the decision when the tunnel opens (101) and its bytes when it closes', async () => {
    const ws = await open('/audited');
    const reply = new Promise<void>((r) => ws.once('message', () => r()));
    ws.send('x'.repeat(1000));
    await reply;
    const closed = new Promise<void>((r) => ws.once('close', () => r()));
    ws.close();
    await closed;
    await until('the decision event', () =>
      audit().some((e) => (e.request as { path?: string } | undefined)?.path === '/audited'),
    );
    const opened = audit().find((e) => (e.request as { path?: string } | undefined)?.path === '/audited');
    expect(opened).toMatchObject({ decision: 'allow', status: 101 });
    await until('the tunnel-closed event', () =>
      audit().some((e) => e.event === 'tunnel-closed' && e.requestId === opened?.requestId),
    );
    const end = audit().find((e) => e.event === 'tunnel-closed' && e.requestId === opened?.requestId);
    expect(end?.bytesFromClient as number).toBeGreaterThan(1000);
    expect(end?.bytesToClient as number).toBeGreaterThan(1000);
  });

  it('an Upgrade other than websocket (h2c) is refused with 400', async () => {
    const r = await rawExchange(
      h.port,
      'GET / HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n',
      { tls: h.client },
    );
    expect(r.status).toBe(400);
  });
});

describe('an idle WebSocket tunnel', () => {
  let h: Harness;
  let upstream: EchoWsUpstream;
  beforeAll(async () => {
    upstream = new EchoWsUpstream();
    h = await startHarness({
      upstreamUrl: await upstream.listen(),
      config: { limits: { tunnelIdleTimeout: '300ms' } },
    });
  });
  afterAll(async () => {
    await h.close();
    await upstream.close();
  });

  it('is closed on both sides after tunnelIdleTimeout without a byte', async () => {
    const ws = new WebSocket(`wss://localhost:${h.port}/idle`, { ...h.client });
    await new Promise((r, j) => {
      ws.once('open', r);
      ws.once('error', j);
    });
    const t0 = Date.now();
    await new Promise<void>((r) => ws.once('close', () => r()));
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    await until('the upstream side to close', () => upstream.sockets.at(-1)?.readyState === WebSocket.CLOSED);
  });
});
