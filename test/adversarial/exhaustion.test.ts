import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import { closedWithin, connect, openFds } from '../helpers/raw.js';
import { until } from '../helpers/wait.js';

/**
 * Unauthenticated clients must never lock verified peers out: connections that have not finished
 * the handshake and the SPIFFE checks have a budget of their own (total and per source address),
 * a deadline that counts from accept (not from the last byte), and a client that hangs up is hung
 * up on. Attackers connect from 127.0.0.2–127.0.0.9 so that the verified client (127.0.0.1) is a
 * different source, as it would be in a real attack.
 */

const LIMITS = {
  maxConnections: 30,
  handshakeTimeout: '2s',
  maxPendingHandshakes: 12,
  maxPendingPerSource: 6,
};

async function silent(port: number, n: number, source: string): Promise<net.Socket[]> {
  const out: net.Socket[] = [];
  for (let i = 0; i < n; i++) {
    const s = await connect(port, { localAddress: source });
    s.on('error', () => undefined);
    out.push(s);
  }
  return out;
}

function openCount(sockets: net.Socket[]): number {
  return sockets.filter((s) => !s.destroyed && !s.readableEnded).length;
}

describe.each(['STRICT', 'PERMISSIVE'] as const)('connection exhaustion (%s)', (mode) => {
  let h: Harness;

  beforeAll(async () => {
    h = await startHarness({
      config: { limits: LIMITS },
      policies:
        mode === 'PERMISSIVE'
          ? `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: default }
spec: { mtls: { mode: PERMISSIVE } }
`
          : undefined,
    });
  });
  afterAll(() => h.close());

  it('a verified peer gets through while more silent connections than maxConnections are open', async () => {
    const attackers: net.Socket[] = [];
    for (let a = 2; a <= 8; a++) attackers.push(...(await silent(h.port, 6, `127.0.0.${a}`)));
    expect(attackers.length).toBeGreaterThan(LIMITS.maxConnections);
    // Before the pending budget existed this request got ECONNRESET: Node had refused it at
    // maxConnections, all of them held by the silent sockets.
    const res = await request(`${h.url}/ok`, h.client);
    expect(res.status).toBe(200);
    // The pending budget is 12 in all, so at most 12 of the 42 are still held.
    expect(openCount(attackers)).toBeLessThanOrEqual(LIMITS.maxPendingHandshakes);
    for (const s of attackers) s.destroy();
  });

  it('a silent connection is closed at handshakeTimeout', async () => {
    const [s] = await silent(h.port, 1, '127.0.0.2');
    const ms = await closedWithin(s as net.Socket);
    expect(ms).toBeGreaterThan(1_500);
    expect(ms).toBeLessThan(3_500);
  });

  it('a ClientHello trickled one byte at a time is closed at handshakeTimeout, not kept alive by each byte', async () => {
    const [s] = await silent(h.port, 1, '127.0.0.3');
    const sock = s as net.Socket;
    // A TLS record header then one byte every 100 ms: activity that resets an idle timer.
    const hello = Buffer.from('160301020001', 'hex');
    let i = 0;
    const drip = setInterval(() => {
      if (!sock.destroyed) sock.write(hello.subarray(i % hello.length, (i % hello.length) + 1));
      i++;
    }, 100);
    const ms = await closedWithin(sock);
    clearInterval(drip);
    expect(ms).toBeLessThan(5_000);
  });

  it('more than maxPendingPerSource connections from one address are refused at once', async () => {
    const sockets = await silent(h.port, 10, '127.0.0.4');
    await until(
      'the extra connections to be closed',
      () => openCount(sockets) <= LIMITS.maxPendingPerSource,
      2_000,
    );
    expect(openCount(sockets)).toBe(LIMITS.maxPendingPerSource);
    for (const s of sockets) s.destroy();
  });

  it('a client that hangs up before sending a byte leaves no descriptor behind', async () => {
    await new Promise((r) => setTimeout(r, 300));
    const before = openFds();
    for (let i = 0; i < 10; i++) {
      const s = await connect(h.port, { localAddress: '127.0.0.5' });
      s.on('error', () => undefined);
      s.end();
    }
    // Well before handshakeTimeout (2 s): the hang-up alone must close our side.
    await until('the server side to close', () => openFds() <= before, 1_000);
    expect(h.proxy.listeners[0]?.stats.pending).toBe(0);
  });

  it('counts refused and timed-out connections in /metrics and the status', async () => {
    const text = (await h.proxy.metricsText()).body;
    expect(text).toMatch(
      /portcullis_connections_refused_total\{listener="inbound",reason="pending-per-source"\} [1-9]/,
    );
    expect(text).toMatch(
      /portcullis_connections_refused_total\{listener="inbound",reason="handshake-timeout"\} [1-9]/,
    );
    expect(text).toMatch(/portcullis_pending_connections\{listener="inbound"\} \d+/);
  });
});

describe('verified connections have their own budget', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ config: { limits: { ...LIMITS, maxConnections: 2 } } });
  });
  afterAll(() => h.close());

  it('a third verified connection is refused while two are open, and admitted once one closes', async () => {
    const a = await connect(h.port, { tls: h.client });
    const b = await connect(h.port, { tls: h.client });
    await until('two verified peers', () => h.proxy.listeners[0]?.stats.active === 2);
    const c = await connect(h.port, { tls: h.client });
    await closedWithin(c);
    a.destroy();
    await until('a slot to free up', () => h.proxy.listeners[0]?.stats.active === 1);
    const res = await request(`${h.url}/after`, h.client);
    expect(res.status).toBe(200);
    b.destroy();
  });
});
