import { existsSync, readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Harness, startHarness } from '../helpers/harness.js';
import { ISSUER, JwksServer, makeKey, requestAuthentication, type SigningKey } from '../helpers/jwks.js';
import { until } from '../helpers/wait.js';

/**
 * A gRPC client (@grpc/grpc-js, mTLS) through an HTTP/2 listener: calls the proxy refuses get the
 * gRPC status Envoy would send (trailers-only, HTTP 200), and the audit event records it. (Calls it
 * allows need an HTTP/2 upstream, which is not there yet.)
 */

const POLICIES = (jwksUri: string): string => `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: grpc, namespace: default }
spec:
  selector: { matchLabels: { app: api } }
  action: ALLOW
  rules:
    - to: [{ operation: { paths: [/shop.Orders/List] } }]
    - from: [{ source: { requestPrincipals: ["${ISSUER}/*"] } }]
      to: [{ operation: { paths: [/shop.Orders/Cancel] } }]
---
${requestAuthentication([{ issuer: ISSUER, jwksUri, audiences: ['api'] }])}`;

describe('gRPC calls the proxy refuses', () => {
  let h: Harness;
  let jwks: JwksServer;
  let key: SigningKey;
  let client: grpc.Client;

  const call = (method: string, token?: string): Promise<grpc.ServiceError | null> =>
    new Promise((resolve) => {
      const md = new grpc.Metadata();
      if (token !== undefined) md.set('authorization', `Bearer ${token}`);
      client.makeUnaryRequest(
        method,
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.alloc(0),
        md,
        { deadline: Date.now() + 5_000 },
        (err) => resolve(err),
      );
    });

  beforeAll(async () => {
    key = await makeKey('k1');
    jwks = new JwksServer([key]);
    h = await startHarness({
      policies: POLICIES(await jwks.listen()),
      listener: { http2: true },
      config: { audit: { sinks: [{ type: 'file', path: 'audit.ndjson' }] } },
    });
    const creds = grpc.credentials.createSsl(
      Buffer.from(h.client.ca),
      Buffer.from(h.client.key),
      Buffer.from(h.client.cert),
    );
    client = new grpc.Client(`localhost:${h.port}`, creds);
  });
  afterAll(async () => {
    client.close();
    await h.close();
    await jwks.close();
  });

  it('a method no policy allows: PERMISSION_DENIED with Envoy’s message', async () => {
    const err = await call('/shop.Orders/Delete');
    expect(err?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(err?.details).toBe('RBAC: access denied');
    // The id to quote travels as metadata; grpc-message stays Envoy's text.
    expect(String(err?.metadata.get('x-request-id')[0])).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('a method that needs a token: a bad token is UNAUTHENTICATED, none is PERMISSION_DENIED', async () => {
    expect((await call('/shop.Orders/Cancel', 'not.a.jwt'))?.code).toBe(grpc.status.UNAUTHENTICATED);
    expect((await call('/shop.Orders/Cancel'))?.code).toBe(grpc.status.PERMISSION_DENIED);
  });

  it('records the gRPC status in the audit event', async () => {
    await call('/shop.Orders/Audit');
    const file = h.dir.file('audit.ndjson');
    await until(
      'the event',
      () => existsSync(file) && readFileSync(file, 'utf8').includes('/shop.Orders/Audit'),
    );
    const e = readFileSync(file, 'utf8')
      .trim()
      .split('\n')
      .map(
        (l) =>
          JSON.parse(l) as {
            request: { path: string };
            grpcStatus?: number;
            status: number;
            decision: string;
          },
      )
      .find((x) => x.request.path === '/shop.Orders/Audit');
    expect(e).toMatchObject({ decision: 'deny', status: 200, grpcStatus: 7 });
  });
});

/** A real gRPC server (@grpc/grpc-js, h2c) with generic byte methods: no .proto needed. */
function bytes(path: string, requestStream: boolean, responseStream: boolean) {
  return {
    path,
    requestStream,
    responseStream,
    requestSerialize: (b: Buffer) => b,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (b: Buffer) => b,
    responseDeserialize: (b: Buffer) => b,
  };
}

describe('gRPC through Portcullis to a gRPC service (HTTP/2 both sides)', () => {
  let h: Harness;
  let server: grpc.Server;
  let client: grpc.Client;
  let seenXfcc = '';

  beforeAll(async () => {
    server = new grpc.Server();
    server.addService(
      {
        Echo: bytes('/shop.Orders/Echo', false, false),
        List: bytes('/shop.Orders/List', false, true),
        Chat: bytes('/shop.Orders/Chat', true, true),
        Missing: bytes('/shop.Orders/Missing', false, false),
      },
      {
        Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
          seenXfcc = String(call.metadata.get('x-forwarded-client-cert')[0] ?? '');
          const trailer = new grpc.Metadata();
          trailer.set('x-served-by', 'orders');
          cb(null, Buffer.concat([Buffer.from('echo:'), call.request]), trailer);
        },
        List: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
          for (let i = 0; i < 3; i++) call.write(Buffer.from(`item-${i}`));
          call.end();
        },
        Chat: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
          call.on('data', (b: Buffer) => call.write(Buffer.concat([Buffer.from('re:'), b])));
          call.on('end', () => call.end());
        },
        Missing: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
          cb({ code: grpc.status.NOT_FOUND, details: 'no such order' });
        },
      },
    );
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    );
    h = await startHarness({
      upstreamUrl: `http://127.0.0.1:${port}`,
      listener: { http2: true, upstreamProtocol: 'http2' },
    });
    const creds = grpc.credentials.createSsl(
      Buffer.from(h.client.ca),
      Buffer.from(h.client.key),
      Buffer.from(h.client.cert),
    );
    client = new grpc.Client(`localhost:${h.port}`, creds);
  });
  afterAll(async () => {
    client.close();
    await h.close();
    server.forceShutdown();
  });

  it('a unary call goes through, with XFCC for the service and its trailing metadata back', async () => {
    const trailers = new Promise<grpc.Metadata>((resolve) => {
      const call = client.makeUnaryRequest(
        '/shop.Orders/Echo',
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from('hi'),
        (err, res) => {
          expect(err).toBeNull();
          expect(res?.toString()).toBe('echo:hi');
        },
      );
      call.on('status', (s: grpc.StatusObject) => resolve(s.metadata));
    });
    expect((await trailers).get('x-served-by')).toEqual(['orders']);
    expect(seenXfcc).toMatch(/URI=spiffe:\/\/example\.org\/ns\/default\/sa\/web$/);
  });

  it('server streaming and bidirectional streaming pass through', async () => {
    const items: string[] = [];
    await new Promise<void>((resolve, reject) => {
      const s = client.makeServerStreamRequest(
        '/shop.Orders/List',
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.alloc(0),
      );
      s.on('data', (b: Buffer) => items.push(b.toString()));
      s.on('end', () => resolve());
      s.on('error', reject);
    });
    expect(items).toEqual(['item-0', 'item-1', 'item-2']);
    const replies: string[] = [];
    await new Promise<void>((resolve, reject) => {
      const s = client.makeBidiStreamRequest(
        '/shop.Orders/Chat',
        (b: Buffer) => b,
        (b: Buffer) => b,
      );
      s.on('data', (b: Buffer) => replies.push(b.toString()));
      s.on('end', () => resolve());
      s.on('error', reject);
      s.write(Buffer.from('a'));
      s.write(Buffer.from('b'));
      s.end();
    });
    expect(replies).toEqual(['re:a', 're:b']);
  });

  it("the service's own error status reaches the client", async () => {
    const err = await new Promise<grpc.ServiceError | null>((resolve) =>
      client.makeUnaryRequest(
        '/shop.Orders/Missing',
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.alloc(0),
        (e) => resolve(e),
      ),
    );
    expect(err?.code, err?.details).toBe(grpc.status.NOT_FOUND);
    expect(err?.details).toBe('no such order');
  });
});
