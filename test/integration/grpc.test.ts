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
