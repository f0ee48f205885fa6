import { existsSync, readFileSync } from 'node:fs';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import { collect, connect, rawExchange } from '../helpers/raw.js';
import type { EchoReply } from '../helpers/upstream.js';
import { until } from '../helpers/wait.js';

/**
 * Hostile request heads and bodies over real mTLS connections, written byte for byte. Each test
 * reproduces one way a client could make the upstream see something other than what was
 * authorized, or make the proxy hold resources or keep no record.
 */

const POLICIES = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-secret, namespace: default }
spec:
  selector: { matchLabels: { app: api } }
  action: DENY
  rules:
    - to: [{ operation: { hosts: [secret.example.com] } }]
    - to: [{ operation: { paths: [/denied, /denied/*] } }]
    - to: [{ operation: { paths: ["*"] } }]
      when: [{ key: "request.headers[x-tenant]", values: [evil] }]
`;

interface AuditLine {
  decision: string;
  status: number | null;
  reason: string;
  requestId: string | null;
  source: { principal: string; address: string };
  request?: { method: string; host: string; path: string; query?: string };
}

describe('hostile requests', () => {
  let h: Harness;
  let auditFile: string;
  const head = (lines: string[]): string => `${lines.join('\r\n')}\r\n\r\n`;

  const send = (data: string | Buffer | (string | Buffer)[], timeoutMs = 3_000) =>
    rawExchange(h.port, data, { tls: h.client, timeoutMs });

  const audit = (): AuditLine[] =>
    existsSync(auditFile)
      ? readFileSync(auditFile, 'utf8')
          .split('\n')
          .filter((l) => l !== '')
          .map((l) => JSON.parse(l) as AuditLine)
      : [];

  async function eventFor(reason: string, count: number): Promise<AuditLine[]> {
    await until(
      `${count} audit events with reason ${reason}`,
      () => audit().filter((e) => e.reason === reason).length >= count,
    );
    return audit().filter((e) => e.reason === reason);
  }

  beforeAll(async () => {
    h = await startHarness({
      policies: POLICIES,
      config: {
        limits: { maxHeaderSize: 4096, headersTimeout: '1s' },
        audit: { sinks: [{ type: 'file', path: 'audit.ndjson' }] },
      },
    });
    auditFile = h.dir.file('audit.ndjson');
  });
  afterAll(() => h.close());

  describe('Connection cannot remove what the proxy relies on (defect 3)', () => {
    it('`Connection: close, host` still forwards the Host that was authorized', async () => {
      const r = await send(head(['GET /h HTTP/1.1', 'Host: public.example.com', 'Connection: close, host']));
      expect(r.status).toBe(200);
      const e = JSON.parse(r.body) as EchoReply;
      expect(e.headers.host).toBe('public.example.com');
    });

    it('`Connection: x-request-id` still forwards the request id the audit event has', async () => {
      const r = await send(
        head([
          'GET /rid HTTP/1.1',
          'Host: a.example',
          'X-Request-Id: rid-123',
          'Connection: close, x-request-id',
        ]),
      );
      expect(r.status).toBe(200);
      expect((JSON.parse(r.body) as EchoReply).headers['x-request-id']).toBe('rid-123');
      await until('the audit event of rid-123', () => audit().some((e) => e.requestId === 'rid-123'));
    });

    it('`Connection` naming XFCC, X-Forwarded-For or a header a policy read does not remove them', async () => {
      const r = await send(
        head([
          'GET /x HTTP/1.1',
          'Host: a.example',
          'X-Tenant: good',
          'Connection: close, x-forwarded-client-cert, x-forwarded-for, x-forwarded-proto, x-tenant',
        ]),
      );
      expect(r.status).toBe(200);
      const e = JSON.parse(r.body) as EchoReply;
      expect(String(e.headers['x-forwarded-client-cert'])).toContain(
        'URI=spiffe://example.org/ns/default/sa/web',
      );
      expect(e.headers['x-forwarded-for']).toBe('127.0.0.1');
      expect(e.headers['x-forwarded-proto']).toBe('https');
      expect(e.headers['x-tenant']).toBe('good');
    });

    it('an ordinary header named in Connection is still treated as hop-by-hop', async () => {
      const r = await send(
        head(['GET /hop HTTP/1.1', 'Host: a.example', 'X-Hop: 1', 'Connection: close, x-hop']),
      );
      expect(r.status).toBe(200);
      expect((JSON.parse(r.body) as EchoReply).headers['x-hop']).toBeUndefined();
    });
  });

  describe('Host (defects 4 and 9)', () => {
    it('HTTP/1.0 without Host is refused with 400', async () => {
      const r = await send('GET /ten HTTP/1.0\r\n\r\n');
      expect(r.status).toBe(400);
    });

    it('two Host headers are refused with 400, whatever their order', async () => {
      for (const hosts of [
        ['public.example.com', 'secret.example.com'],
        ['secret.example.com', 'public.example.com'],
      ]) {
        const r = await send(
          head(['GET /two HTTP/1.1', `Host: ${hosts[0]}`, `Host: ${hosts[1]}`, 'Connection: close']),
        );
        expect(r.status).toBe(400);
      }
    });

    it.each([
      'x", error="injected',
      'a b.example',
      'a.example:port',
      'a.example:99999',
      'a.example/evil',
      'user@a.example',
      '[::1',
      'a.example:80:80',
      '',
    ])('Host %j is refused with 400', async (host) => {
      const r = await send(head(['GET /h HTTP/1.1', `Host: ${host}`, 'Connection: close']));
      expect(r.status).toBe(400);
    });

    it.each([
      'a.example',
      'A.Example:8443',
      '127.0.0.1:15006',
      '[::1]:8080',
      '[2001:db8::1]',
      'xn--bcher-kva.example',
    ])('Host %j is accepted', async (host) => {
      const r = await send(head(['GET /ok HTTP/1.1', `Host: ${host}`, 'Connection: close']));
      expect(r.status).toBe(200);
    });
  });

  describe('requests the HTTP parser refuses are answered and recorded (defect 6)', () => {
    it('an 8-bit request target: 400, a deny event with reason bad-request, a metric', async () => {
      const r = await send(Buffer.from('GET /caf\xe9\xff HTTP/1.1\r\nHost: a.example\r\n\r\n', 'latin1'));
      expect(r.status).toBe(400);
      const [e] = await eventFor('bad-request', 1);
      expect(e?.decision).toBe('deny');
      expect(e?.status).toBe(400);
      expect(e?.source.principal).toBe('example.org/ns/default/sa/web');
    });

    it('Content-Length with Transfer-Encoding (smuggling): 400 and an event', async () => {
      const before = audit().filter((e) => e.reason === 'bad-request').length;
      const forwarded = h.upstream.requests;
      const r = await send(
        head([
          'POST /smuggle HTTP/1.1',
          'Host: a.example',
          'Content-Length: 4',
          'Transfer-Encoding: chunked',
        ]) + '0\r\n\r\nGET /denied HTTP/1.1\r\nHost: a.example\r\n\r\n',
      );
      expect(r.status).toBe(400);
      // Neither the POST nor the GET /denied smuggled in its body reached the upstream.
      expect(h.upstream.requests).toBe(forwarded);
      await eventFor('bad-request', before + 1);
    });

    it('an oversized head: 431 and an event with reason header-too-large', async () => {
      const r = await send(head(['GET /big HTTP/1.1', 'Host: a.example', `X-Big: ${'a'.repeat(8000)}`]));
      expect(r.status).toBe(431);
      const [e] = await eventFor('header-too-large', 1);
      expect(e?.status).toBe(431);
    });

    it('a head that does not arrive within headersTimeout: 408 and an event with reason request-timeout', async () => {
      const r = await send('GET /slow HTTP/1.1\r\nHost: a.example\r\n', 4_000);
      expect(r.status).toBe(408);
      expect(r.closed).toBe(true);
      const [e] = await eventFor('request-timeout', 1);
      expect(e?.status).toBe(408);
    });

    it('the bad bytes never reach the log or the audit line unescaped', async () => {
      await send(Buffer.from('GET /\x1b[31mred HTTP/1.1\r\nHost: a.example\r\n\r\n', 'latin1'));
      await eventFor('bad-request', 2);
      expect(readFileSync(auditFile, 'latin1')).not.toContain('\x1b');
    });

    it('counts parser refusals in portcullis_requests_total', async () => {
      const text = (await h.proxy.metricsText()).body;
      expect(text).toMatch(
        /portcullis_requests_total\{listener="inbound",decision="deny",reason="bad-request",status="400"\} [1-9]/,
      );
      expect(text).toMatch(/reason="header-too-large",status="431"\} [1-9]/);
      expect(text).toMatch(/reason="request-timeout",status="408"\} [1-9]/);
    });
  });

  describe('the body of a refused request is not read (defect 7)', () => {
    it('a 403 before the body ends closes the connection after a bounded drain', async () => {
      const s: net.Socket = await connect(h.port, { tls: h.client });
      const total = 100 * 1024 * 1024;
      s.write(head(['POST /denied HTTP/1.1', 'Host: a.example', `Content-Length: ${total}`]));
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      let written = 0;
      let stop = false;
      const pump = (): void => {
        while (!stop && written < total) {
          written += chunk.length;
          if (!s.write(chunk)) {
            s.once('drain', pump);
            return;
          }
        }
      };
      const t0 = Date.now();
      const result = collect(s, [], 10_000);
      pump();
      const r = await result;
      stop = true;
      expect(r.status).toBe(403);
      expect(r.headers.connection).toBe('close');
      expect(r.closed).toBe(true);
      expect(Date.now() - t0).toBeLessThan(3_000);
      // What the proxy took in is bounded by socket buffers and the drain, not the 100 MiB.
      expect(written).toBeLessThan(32 * 1024 * 1024);
    });

    it('`Expect: 100-continue` on a refused request gets the refusal, never a 100 Continue', async () => {
      const r = await send(
        head(['POST /denied HTTP/1.1', 'Host: a.example', 'Content-Length: 1000000', 'Expect: 100-continue']),
      );
      expect(r.raw.startsWith('HTTP/1.1 403')).toBe(true);
      expect(r.raw).not.toContain('100 Continue');
    });

    it('`Expect: 100-continue` on an allowed request gets 100 Continue, then the upstream answer', async () => {
      const s = await connect(h.port, { tls: h.client });
      s.write(
        head([
          'POST /ok HTTP/1.1',
          'Host: a.example',
          'Content-Length: 5',
          'Expect: 100-continue',
          'Connection: close',
        ]),
      );
      await new Promise<void>((resolve) => s.once('data', () => resolve()));
      const r = await collect(s, 'hello', 3_000);
      expect(r.status).toBe(200);
      expect((JSON.parse(r.body) as EchoReply).bodyBytes).toBe(5);
    });

    it('a keep-alive connection survives a refusal of a request without a body', async () => {
      const s = await connect(h.port, { tls: h.client });
      const r = await collect(
        s,
        head(['GET /denied HTTP/1.1', 'Host: a.example']) +
          head(['GET /fine HTTP/1.1', 'Host: a.example', 'Connection: close']),
        3_000,
      );
      expect(r.status).toBe(403);
      expect(r.raw).toMatch(/HTTP\/1\.1 200/);
    });
  });

  it('WebSocket smuggling: bytes after an upgrade the upstream did not accept never reach it', async () => {
    // The echo upstream does not speak WebSocket: it answers the upgrade request with a 200. A proxy
    // that took the connection for a tunnel would pass the next request on unchecked.
    const before = h.upstream.received.length;
    const r = await send(
      head([
        'GET /ws-plain HTTP/1.1',
        'Host: a.example',
        'Connection: Upgrade',
        'Upgrade: websocket',
        'Sec-WebSocket-Version: 13',
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
      ]) + head(['GET /denied HTTP/1.1', 'Host: a.example']),
    );
    expect(r.status).toBe(200);
    expect(r.closed).toBe(true);
    const urls = h.upstream.received.slice(before).map((x) => x.url);
    expect(urls).toEqual(['/ws-plain']);
  });

  describe('OPTIONS * (defect 11)', () => {
    it('is authorized and answered by the proxy with 200 and an empty body', async () => {
      const r = await send(head(['OPTIONS * HTTP/1.1', 'Host: a.example', 'Connection: close']));
      expect(r.status).toBe(200);
      expect(r.body).toBe('');
    });

    it('is refused when a policy denies it', async () => {
      const r = await send(head(['OPTIONS * HTTP/1.1', 'Host: secret.example.com', 'Connection: close']));
      expect(r.status).toBe(403);
    });
  });

  it('an allowed request through Node’s client still works end to end', async () => {
    const res = await request(`${h.url}/plain`, { ...h.client, headers: { host: 'a.example' } });
    expect(res.status).toBe(200);
  });
});
