import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueSvid } from '../../src/identity/dev-ca.js';
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
import { until } from '../helpers/wait.js';

interface AuditEvent {
  version: number;
  time: string;
  requestId: string;
  listener: string;
  decision: 'allow' | 'deny';
  status: number;
  reason: string;
  policy: string | null;
  rule: number | null;
  audit: string | null;
  dryRun: { deny: string | null; allowPoliciesAllow: boolean } | null;
  source: { principal: string; address: string; port: number };
  request: {
    method: string;
    host: string;
    path: string;
    principal: string;
    query?: string;
    claims?: Record<string, unknown>;
    presenter?: string;
    audiences?: string[];
  };
  destinationAddress: string;
  destinationPort: number;
  sni?: string;
  upstream: { status: number; durationMs: number } | null;
  authzMicros: number;
  durationMs: number;
}

/** A real log collector on loopback: takes gzip NDJSON batches, or answers 503 while "down". */
class Collector {
  readonly server: http.Server;
  readonly events: AuditEvent[] = [];
  /** Batches taken (POSTs answered 204). */
  batches = 0;
  down = false;
  url = '';

  constructor() {
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (this.down) {
          res.writeHead(503);
          res.end();
          return;
        }
        const raw = Buffer.concat(chunks);
        const text = (req.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw).toString('utf8');
        for (const line of text.split('\n'))
          if (line !== '') this.events.push(JSON.parse(line) as AuditEvent);
        this.batches++;
        res.writeHead(204);
        res.end();
      });
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/ingest`;
    return this.url;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}

function fileEvents(path: string): AuditEvent[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as AuditEvent);
}

/** Parses Prometheus text exposition strictly enough to catch a malformed line. */
function parseProm(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ') || line.startsWith('# TYPE ')) continue;
    const m =
      /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+]+|NaN|\+Inf|-Inf)$/.exec(
        line,
      );
    if (m === null) throw new Error(`not Prometheus text: ${line}`);
    out.set(`${m[1]}${m[2] ?? ''}`, Number(m[3]));
  }
  return out;
}

const POLICIES = (jwksUri: string): string => `${requestAuthentication([{ issuer: ISSUER, jwksUri }])}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: api, namespace: default }
spec:
  rules:
    - from: [{ source: { principals: ["example.org/ns/default/sa/web"] } }]
      to: [{ operation: { paths: ["/ok*"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: tighter
  namespace: default
  annotations: { istio.io/dry-run: "true" }
spec:
  action: DENY
  rules: [{ to: [{ operation: { paths: ["/ok/tight"] } }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: mark-gold, namespace: default }
spec:
  action: AUDIT
  rules:
    - when:
        - { key: "request.auth.claims[org][tier]", values: ["gold"] }
        - { key: "request.auth.claims[groups]", values: ["staff"] }
        - { key: "request.auth.presenter", values: ["cli"] }
`;

describe('audit events and metrics', () => {
  let h: Harness;
  let jwks: JwksServer;
  let key: SigningKey;
  let collector: Collector;

  beforeAll(async () => {
    key = await makeKey('k1');
    jwks = new JwksServer([key]);
    collector = new Collector();
    const url = await collector.listen();
    h = await startHarness({
      policies: POLICIES(await jwks.listen()),
      config: {
        admin: { address: '127.0.0.1:0' },
        audit: {
          decisions: 'all',
          bufferSize: 10,
          sinks: [
            { type: 'file', path: 'audit.ndjson' },
            { type: 'http', url, maxRetryDelay: '200ms', batchSize: 4 },
          ],
        },
      },
    });
  });
  afterAll(async () => {
    await h.close();
    await jwks.close();
    await collector.close();
  });

  it('records one event per request with the schema fields, a deny with its policy, and never a token', async () => {
    const token = await sign(key, {
      groups: ['staff'],
      org: { tier: 'gold', plan: 'x' },
      email: 'a@b',
      azp: 'cli',
    });
    const db = await issueSvid(h.pki.ca, 'spiffe://example.org/ns/default/sa/db');
    const sent: [string, Parameters<typeof request>[1], number][] = [
      [
        '/ok/1?secret=q',
        { ...h.client, headers: { authorization: `Bearer ${token}`, 'x-request-id': 'req-123' } },
        200,
      ],
      ['/ok/tight', h.client, 200],
      ['/nope', h.client, 403],
      ['/ok/2', { cert: db.certPem, key: db.keyPem, ca: h.pki.ca.certPem }, 403],
      ['/ok/3', { ...h.client, headers: { authorization: 'Bearer not.a.jwt' } }, 401],
    ];
    for (const [path, opts, status] of sent)
      expect((await request(`${h.url}${path}`, opts)).status).toBe(status);
    const file = h.dir.file('audit.ndjson');
    await until('five events in the file', () => fileEvents(file).length >= 5);
    const events = fileEvents(file);
    expect(events).toHaveLength(5);
    const [ok, tight, nope, db403, bad] = events as [
      AuditEvent,
      AuditEvent,
      AuditEvent,
      AuditEvent,
      AuditEvent,
    ];

    expect(ok).toMatchObject({
      version: 1,
      requestId: 'req-123',
      listener: 'inbound',
      decision: 'allow',
      status: 200,
      reason: 'policy',
      policy: 'default/api',
      rule: 0,
      source: { principal: 'example.org/ns/default/sa/web', address: '127.0.0.1' },
      request: { method: 'GET', host: `localhost:${h.port}`, path: '/ok/1', principal: `${ISSUER}/alice` },
      upstream: { status: 200 },
    });
    expect(ok.request.query).toBeUndefined();
    // What the policies read of the token, for replay: the claims at their paths, nothing else.
    expect(ok.request.claims).toEqual({ org: { tier: 'gold' }, groups: ['staff'] });
    expect(ok.request.presenter).toBe('cli');
    expect(ok.request.audiences).toBeUndefined();
    expect(ok.audit).toBe('default/mark-gold');
    expect(tight.request.claims).toBeUndefined();
    expect(ok).toMatchObject({ destinationAddress: '127.0.0.1', sni: 'localhost' });
    expect(ok.destinationPort).toBe(Number(new URL(h.proxy.config.listeners[0]?.upstream ?? '').port));
    expect(Date.parse(ok.time)).toBeGreaterThan(Date.now() - 60_000);
    expect(ok.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    expect(ok.authzMicros).toBeGreaterThan(0);
    expect(tight.dryRun?.deny).toBe('default/tighter');
    expect(ok.dryRun?.deny).toBeNull();
    expect(nope).toMatchObject({
      decision: 'deny',
      status: 403,
      reason: 'no-matching-allow',
      policy: null,
      upstream: null,
    });
    expect(db403).toMatchObject({
      decision: 'deny',
      reason: 'no-matching-allow',
      source: { principal: 'example.org/ns/default/sa/db' },
    });
    expect(bad).toMatchObject({ decision: 'deny', status: 401, reason: 'jwt-invalid' });
    for (const e of events) expect(e.requestId).toMatch(/^[\w.:-]{1,128}$/);

    const text = readFileSync(file, 'utf8');
    expect(text).not.toContain(token);
    expect(text).not.toContain(token.split('.')[2] as string);
    expect(text).not.toContain('Bearer');
    expect(text).not.toContain('secret=q');
  });

  it('keeps requests flowing while the collector is down, drops only past the buffer, and delivers the buffered events later', async () => {
    await until('the collector to catch up', () => collector.events.length >= 5);
    const sink = h.proxy.audit?.sinks.find((s) => s.name.startsWith('http')) as NonNullable<
      typeof h.proxy.audit
    >['sinks'][number];
    const before = collector.events.length;
    const droppedBefore = sink.dropped;
    collector.down = true;
    const agent = { ...h.client };
    for (let i = 0; i < 15; i++) expect((await request(`${h.url}/ok/outage-${i}`, agent)).status).toBe(200);
    await until('the buffer to fill', () => sink.buffered === 10);
    expect(sink.dropped - droppedBefore).toBe(5);
    expect(sink.failures).toBeGreaterThan(0);

    const metrics = parseProm(
      (await request(`http://127.0.0.1:${h.proxy.adminAddress()?.port}/metrics`)).text,
    );
    expect(metrics.get(`portcullis_audit_events_dropped_total{sink="${sink.name}"}`)).toBe(sink.dropped);
    expect(metrics.get(`portcullis_audit_events_buffered{sink="${sink.name}"}`)).toBe(10);

    collector.down = false;
    await until('the buffered events', () => collector.events.length >= before + 10);
    const delivered = collector.events.slice(before).map((e) => e.request.path);
    expect(delivered).toEqual(Array.from({ length: 10 }, (_, i) => `/ok/outage-${i}`));
  });

  it('exposes Prometheus text whose request counters match the requests sent', async () => {
    const admin = `http://127.0.0.1:${h.proxy.adminAddress()?.port}/metrics`;
    const read = async (): Promise<Map<string, number>> => parseProm((await request(admin)).text);
    const key200 =
      'portcullis_requests_total{listener="inbound",decision="allow",reason="policy",status="200"}';
    const key403 =
      'portcullis_requests_total{listener="inbound",decision="deny",reason="no-matching-allow",status="403"}';
    const m0 = await read();
    for (let i = 0; i < 7; i++) await request(`${h.url}/ok/m${i}`, h.client);
    for (let i = 0; i < 3; i++) await request(`${h.url}/denied${i}`, h.client);
    await new Promise((r) => setTimeout(r, 50));
    const m1 = await read();
    expect((m1.get(key200) ?? 0) - (m0.get(key200) ?? 0)).toBe(7);
    expect((m1.get(key403) ?? 0) - (m0.get(key403) ?? 0)).toBe(3);
    expect(
      m1.get('portcullis_authorization_duration_microseconds_count{listener="inbound"}'),
    ).toBeGreaterThanOrEqual(10);
    expect(m1.get('portcullis_certificate_expiry_timestamp_seconds')).toBeGreaterThan(Date.now() / 1000);
    expect(m1.get('portcullis_jwt_verifications_total')).toBeGreaterThanOrEqual(1);
    expect(m1.get('portcullis_peers_verified_total{listener="inbound"}')).toBeGreaterThan(0);
  });
});

describe('audit on shutdown and refused peers', () => {
  it('flushes buffered events on close, and records peers refused at the TLS layer', async () => {
    const h = await startHarness({ config: { audit: { sinks: [{ type: 'file', path: 'out.ndjson' }] } } });
    const impostor = await issueSvid(h.pki.ca, 'spiffe://attacker.test/ns/x/sa/y');
    for (let i = 0; i < 20; i++) await request(`${h.url}/r${i}`, h.client);
    await request(`${h.url}/x`, { cert: impostor.certPem, key: impostor.keyPem, ca: h.pki.ca.certPem }).catch(
      () => undefined,
    );
    const file = h.dir.file('out.ndjson');
    await h.proxy.close();
    const events = fileEvents(file);
    expect(events.filter((e) => e.request?.path?.startsWith('/r'))).toHaveLength(20);
    const refused = events.find((e) => e.reason === 'peer-untrusted') as AuditEvent & { detail: string };
    expect(refused.decision).toBe('deny');
    expect(refused.detail).toContain('unknown-trust-domain');
    await h.close();
  });

  it('with decisions: deny, records denials only', async () => {
    const h = await startHarness({
      policies:
        'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: a }\nspec: { rules: [{ to: [{ operation: { paths: ["/yes"] } }] }] }\n',
      config: { audit: { decisions: 'deny', sinks: [{ type: 'file', path: 'deny.ndjson' }] } },
    });
    await request(`${h.url}/yes`, h.client);
    await request(`${h.url}/no`, h.client);
    await h.proxy.close();
    expect(fileEvents(h.dir.file('deny.ndjson')).map((e) => [e.decision, e.request.path])).toEqual([
      ['deny', '/no'],
    ]);
    await h.close();
  });
});

describe('what every event carries, whatever the policies', () => {
  let h: Harness;
  beforeAll(async () => {
    // No policy reads remote.ip here: it is still worked out, once, before any stage.
    h = await startHarness({
      config: { trustedProxies: 1, audit: { sinks: [{ type: 'file', path: 'audit.ndjson' }] } },
    });
  });
  afterAll(() => h.close());

  it('records remote.ip after trustedProxies and the request id the upstream got', async () => {
    const res = await request(`${h.url}/ip`, { ...h.client, headers: { 'x-forwarded-for': '203.0.113.7' } });
    const upstreamId = (JSON.parse(res.text) as { headers: Record<string, string> }).headers['x-request-id'];
    const file = h.dir.file('audit.ndjson');
    await until('the event', () => existsSync(file) && readFileSync(file, 'utf8').includes('/ip'));
    const e = JSON.parse(readFileSync(file, 'utf8').trim().split('\n').pop() as string) as {
      remoteAddress: string;
      requestId: string;
    };
    expect(e.remoteAddress).toBe('203.0.113.7');
    expect(e.requestId).toBe(upstreamId);
  });
});

describe('batching at a steady rate', () => {
  let collector: Collector;
  let h: Harness;
  beforeAll(async () => {
    collector = new Collector();
    const url = await collector.listen();
    h = await startHarness({
      config: { audit: { flushInterval: '400ms', sinks: [{ type: 'http', url, gzip: false }] } },
    });
  });
  afterAll(async () => {
    await h.close();
    await collector.close();
  });

  it('lets events wait up to flushInterval to share one write, and delivers every one', async () => {
    // Requests one after another: without the linger, each event would be its own POST.
    for (let i = 0; i < 12; i++) await request(`${h.url}/steady/${i}`, h.client);
    await until('the events', () => collector.events.length === 12);
    expect(collector.batches).toBeLessThanOrEqual(2);
    expect(collector.events.map((e) => e.request.path)).toEqual(
      Array.from({ length: 12 }, (_, i) => `/steady/${i}`),
    );
  });

  it('delivers what lingers when the proxy closes', async () => {
    const before = collector.events.length;
    await request(`${h.url}/last`, h.client);
    await h.proxy.close();
    expect(collector.events.slice(before).map((e) => e.request.path)).toEqual(['/last']);
  });
});
