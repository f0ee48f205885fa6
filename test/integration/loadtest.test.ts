import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LoadtestReport, runLoadtest } from '../../src/cli/loadtest.js';
import { createCa, issueSvid } from '../../src/identity/dev-ca.js';
import { TempDir } from '../helpers/pki.js';

/**
 * portcullis loadtest against servers whose behaviour is known: a fixed service time, so the rate
 * it can serve and the latency an open loop must report follow from arithmetic; and a TLS server
 * the client cannot verify, whose failures must be reported by cause.
 */

/** A server that answers every request after `ms`, with as many in parallel as it is sent. */
function slowServer(ms: number): Promise<{ url: string; close: () => Promise<void> }> {
  const server = http.createServer((_req, res) => {
    setTimeout(() => res.end('ok'), ms);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`,
        close: () => {
          server.closeAllConnections();
          return new Promise((r) => server.close(() => r()));
        },
      });
    });
  });
}

async function loadtest(args: Partial<Parameters<typeof runLoadtest>[0]> & { target: string }) {
  const lines: string[] = [];
  const code = await runLoadtest(
    {
      method: 'GET',
      durationSeconds: 2,
      connections: 2,
      timeoutMs: 10_000,
      json: true,
      progress: false,
      ...args,
    },
    (l) => lines.push(l),
  );
  return { code, report: JSON.parse(lines.join('\n')) as LoadtestReport };
}

describe('portcullis loadtest', () => {
  let slow: Awaited<ReturnType<typeof slowServer>>;
  let fast: Awaited<ReturnType<typeof slowServer>>;
  beforeAll(async () => {
    slow = await slowServer(200);
    fast = await slowServer(20);
  });
  afterAll(async () => {
    await slow.close();
    await fast.close();
  });

  it('asked for more than the target can serve, reports the rate achieved, warns, and shows the queueing in latency', async () => {
    // 2 connections × 200 ms per request = 10 req/s at most, whatever is asked.
    const { report } = await loadtest({ target: slow.url, rate: 100, connections: 2 });
    expect(report.requests.due).toBe(200);
    expect(report.achievedRate).toBeGreaterThan(5);
    expect(report.achievedRate).toBeLessThan(15);
    expect(report.warnings.join(' ')).toMatch(/achieved [\d.]+ req\/s of the 100 req\/s asked/);
    // Latency counts from when each request was due: most waited in the queue far longer than 200 ms.
    expect(report.latencyMs.allowed.p50).toBeGreaterThan(400);
    expect(report.latencyMs.allowed.max).toBeGreaterThan(report.latencyMs.allowed.p50);
    expect(report.requests.unfinished).toBeGreaterThan(100);
  });

  it('asked for what the target can serve, sends exactly the rate asked and reports the service time', async () => {
    const { report, code } = await loadtest({ target: fast.url, rate: 50, connections: 10 });
    expect(code).toBe(0);
    expect(report.requests.due).toBe(100);
    expect(report.requests.sent).toBe(100);
    expect(report.requests.completed).toBe(100);
    expect(report.warnings).toEqual([]);
    expect(report.latencyMs.allowed.count).toBe(100);
    expect(report.latencyMs.allowed.p50).toBeGreaterThanOrEqual(20);
    expect(report.latencyMs.allowed.p50).toBeLessThan(200);
    expect(report.latencyMs.allowed.p999).toBeLessThanOrEqual(report.latencyMs.allowed.max);
  });

  it('counts failures by cause when TLS does not verify', async () => {
    const dir = new TempDir();
    const ca = await createCa('example.org');
    const other = await createCa('example.org');
    const srv = await issueSvid(ca, 'spiffe://example.org/ns/a/sa/s', { dnsNames: ['localhost'] });
    const { default: https } = await import('node:https');
    const server = https.createServer({ cert: srv.certPem, key: srv.keyPem }, (_q, r) => r.end('ok'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const { report, code } = await loadtest({
        target: `https://localhost:${(server.address() as AddressInfo).port}/`,
        ca: dir.write('other.pem', other.certPem),
        rate: 20,
        durationSeconds: 1,
      });
      expect(code).toBe(1);
      expect(report.requests.errors).toBe(20);
      const kinds = Object.keys(report.errors);
      expect(kinds.length).toBe(1);
      expect(kinds[0]).toMatch(/CERT|VERIFY|SIGNATURE/);
      expect(report.errors[kinds[0] as string]?.count).toBe(20);
    } finally {
      server.close();
      dir.cleanup();
    }
  });
});
