import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { type Harness, memoryLogger, startHarness } from '../helpers/harness.js';
import { requestAuthentication } from '../helpers/jwks.js';
import { makePki, TempDir } from '../helpers/pki.js';
import { until } from '../helpers/wait.js';

/** What an operator reads: refusals at info without floods, errors with code and message. */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(ROOT, 'dist/cli/main.js');

describe('log lines a client causes', () => {
  const mem = memoryLogger('info');
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({
      logger: mem.logger,
      upstreamUrl: 'http://127.0.0.1:1', // nothing listens: every forward fails
      policies: requestAuthentication([
        { issuer: 'https://down.example', jwksUri: 'http://127.0.0.1:1/jwks' },
      ]),
    });
  });
  afterAll(() => h.close());
  const lines = (msg: string) => mem.lines.filter((l) => String(l.msg).startsWith(msg));

  it('a refused handshake is logged at info with its reason, once per reason per 10 s however many come', async () => {
    for (let i = 0; i < 5; i++) await request(`${h.url}/x`, { ca: h.pki.ca.certPem }).catch(() => undefined);
    await until(
      'five TLS failures counted',
      () => [...(h.proxy.listeners[0]?.stats.tlsFailures.values() ?? [])].reduce((a, b) => a + b, 0) >= 5,
    );
    const refused = lines('TLS handshake refused');
    expect(refused).toHaveLength(1);
    expect(refused[0]?.level).toBe(30);
    expect(typeof refused[0]?.code).toBe('string');
  });

  it('an upstream failure is logged with code and message, not an empty error object, and not once per request', async () => {
    for (let i = 0; i < 3; i++) expect((await request(`${h.url}/x`, h.client)).status).toBe(503);
    const failed = lines('upstream request failed');
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({ code: 'ECONNREFUSED', upstream: 'http://127.0.0.1:1' });
    expect(String(failed[0]?.message)).toContain('ECONNREFUSED');
    expect(failed[0]?.err).toBeUndefined();
  });

  it('a key set that never loaded says what it means, and /metrics shows 0 keys', async () => {
    await until('the JWKS warning', () => lines('JWKS fetch failed').length > 0);
    expect(String(lines('JWKS fetch failed')[0]?.msg)).toContain('no keys are held yet');
    expect((await h.proxy.metricsText()).body).toMatch(
      /portcullis_jwks_keys\{jwks="http:\/\/127\.0\.0\.1:1\/jwks"\} 0/,
    );
  });
});

describe('log format of portcullis run', () => {
  const dir = new TempDir();
  beforeAll(async () => {
    const pki = await makePki();
    dir.write('api.pem', pki.server.certPem);
    dir.write('api.key', pki.server.keyPem);
    dir.write('bundle.pem', pki.ca.certPem);
    dir.write(
      'p.yaml',
      [
        'trustDomain: example.org',
        'identity: { cert: api.pem, key: api.key, bundles: { example.org: bundle.pem } }',
        'listeners: [{ name: inbound, address: 127.0.0.1:0, upstream: http://127.0.0.1:1 }]',
      ].join('\n'),
    );
  });
  afterAll(() => dir.cleanup());

  /** Runs the proxy until it logs that it is ready; resolves with what it wrote on stderr. */
  function runUntilReady(args: string[]): Promise<string> {
    const child: ChildProcess = spawn(process.execPath, [BIN, 'run', '-c', dir.file('p.yaml'), ...args]);
    return new Promise((resolve, reject) => {
      let err = '';
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      child.stderr?.on('data', (c: Buffer) => {
        err += c.toString();
        if (/ready/.test(err)) child.kill('SIGTERM');
      });
      child.once('exit', () => {
        clearTimeout(timer);
        if (/ready/.test(err)) resolve(err);
        else reject(new Error(err));
      });
    });
  }

  it('writes JSON lines when stderr is not a terminal', async () => {
    const err = await runUntilReady([]);
    const first = err.split('\n')[0] as string;
    expect(JSON.parse(first)).toMatchObject({ level: 30, name: 'portcullis' });
  });

  it('writes readable lines with --log-format pretty', async () => {
    const err = await runUntilReady(['--log-format', 'pretty']);
    expect(err).toMatch(/^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: listening/m);
    expect(() => JSON.parse(err.split('\n')[0] as string)).toThrow();
  });
});
