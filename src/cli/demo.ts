import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { loadConfigFile } from '../config/load.js';
import { initCaDir, issueToFiles } from '../identity/dev-ca.js';
import { defaultLogger, Portcullis } from '../proxy/portcullis.js';

export interface DemoOptions {
  port: number;
  adminPort: number;
  /** Keep files here instead of a temp folder that is removed on exit. */
  dir?: string;
  /** Run the three example calls, print the outcome, stop; exit code tells whether all behaved. */
  once: boolean;
  logLevel: string;
  out: (line: string) => void;
}

/** The package's own examples folder, found from this file (works through the bin symlink). */
export const EXAMPLES_DIR = fileURLToPath(new URL('../../examples/', import.meta.url));

interface CallResult {
  ok: boolean;
  summary: string;
}

function startEcho(): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const body = JSON.stringify(
        {
          upstream: 'demo echo service',
          method: req.method,
          path: req.url,
          'x-forwarded-client-cert': req.headers['x-forwarded-client-cert'] ?? null,
        },
        null,
        2,
      );
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(`${body}\n`);
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

function call(port: number, path: string, ca: string, cert?: string, key?: string): Promise<CallResult> {
  return new Promise((resolve) => {
    const req = https.request(
      { host: '127.0.0.1', servername: 'localhost', port, path, ca, cert, key, agent: false },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () =>
          resolve({ ok: res.statusCode === 200, summary: `HTTP ${res.statusCode}\n${text.trimEnd()}` }),
        );
        res.on('error', (err) =>
          resolve({
            ok: false,
            summary: `connection closed by the proxy (${(err as NodeJS.ErrnoException).code ?? err.message})`,
          }),
        );
      },
    );
    req.on('error', (err) =>
      resolve({ ok: false, summary: `refused: ${(err as NodeJS.ErrnoException).code ?? err.message}` }),
    );
    req.end();
  });
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n');
}

/**
 * `portcullis demo`: a throwaway CA and SVIDs, an echo upstream and the proxy in front of it with
 * the example policies; shows an allowed call and two refusals, then keeps running.
 * Resolves with the process exit code.
 */
export async function runDemo(opts: DemoOptions): Promise<number> {
  const out = opts.out;
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'portcullis-demo-'));
  mkdirSync(dir, { recursive: true });
  const certs = join(dir, 'certs');
  out(`Portcullis demo — files in ${dir}`);
  out('Making a development CA for trust domain example.org and three certificates...');
  await initCaDir(join(dir, 'ca'), 'example.org');
  await issueToFiles(join(dir, 'ca'), 'spiffe://example.org/ns/default/sa/api', join(certs, 'api'), {
    dnsNames: ['localhost'],
  });
  await issueToFiles(join(dir, 'ca'), 'spiffe://example.org/ns/default/sa/web', join(certs, 'web'));
  // Signed by the trusted CA, but naming another trust domain: OpenSSL accepts the chain; the
  // SPIFFE check refuses it because attacker.test has no bundle here.
  await issueToFiles(join(dir, 'ca'), 'spiffe://attacker.test/ns/default/sa/web', join(certs, 'impostor'));

  const echo = await startEcho();
  const upstreamPort = (echo.address() as AddressInfo).port;
  const configFile = join(dir, 'portcullis.yaml');
  writeFileSync(
    configFile,
    stringify({
      trustDomain: 'example.org',
      workload: { namespace: 'default', serviceAccount: 'api', labels: { app: 'api' } },
      identity: { cert: 'certs/api.pem', key: 'certs/api.key', bundles: { 'example.org': 'ca/bundle.pem' } },
      listeners: [
        { name: 'inbound', address: `127.0.0.1:${opts.port}`, upstream: `http://127.0.0.1:${upstreamPort}` },
      ],
      policies: [join(EXAMPLES_DIR, 'demo', 'policies')],
      admin: { address: `127.0.0.1:${opts.adminPort}` },
      shutdown: { drainTimeout: '2s' },
    }),
  );

  let proxy: Portcullis;
  try {
    proxy = await Portcullis.start(loadConfigFile(configFile), { logger: defaultLogger(opts.logLevel) });
  } catch (err) {
    echo.close();
    throw err;
  }
  const port = proxy.listenerAddress('inbound').port;
  const adminPort = proxy.adminAddress()?.port ?? 0;
  out(
    `Proxy on https://localhost:${port} (mTLS ${proxy.listeners[0]?.plan.mode}), admin on http://127.0.0.1:${adminPort}, upstream echo on 127.0.0.1:${upstreamPort}\n`,
  );

  const certFile = (name: string): string => join(certs, name);
  const bundle = readFileSync(join(dir, 'ca', 'bundle.pem'), 'utf8');
  const read = (f: string): string => readFileSync(f, 'utf8');

  const allowed = await call(port, '/hello', bundle, read(certFile('web.pem')), read(certFile('web.key')));
  out('1. spiffe://example.org/ns/default/sa/web, signed by the trusted CA — allowed:');
  out(indent(allowed.summary));
  const impostor = await call(
    port,
    '/hello',
    bundle,
    read(certFile('impostor.pem')),
    read(certFile('impostor.key')),
  );
  out(
    '\n2. spiffe://attacker.test/ns/default/sa/web, signed by the same CA but naming an untrusted trust domain — refused:',
  );
  out(indent(impostor.summary));
  const reasons = [...(proxy.listeners[0]?.stats.peersRejected.keys() ?? [])];
  if (reasons.length > 0) out(indent(`(the proxy's reason: ${reasons.join(', ')})`));
  const anonymous = await call(port, '/hello', bundle);
  out('\n3. no client certificate — refused:');
  out(indent(anonymous.summary));
  const shutdown = async (): Promise<void> => {
    await proxy.close();
    await new Promise<void>((r) => echo.close(() => r()));
    echo.closeAllConnections();
    if (opts.dir === undefined) rmSync(dir, { recursive: true, force: true });
  };
  const behaved = allowed.ok && !impostor.ok && !anonymous.ok;
  out(
    `\n${behaved ? 'All three calls behaved as expected.' : 'UNEXPECTED: the calls above did not behave as expected.'}`,
  );

  if (opts.once) {
    await shutdown();
    return behaved ? 0 : 1;
  }
  const curl = `curl --cacert ${join(dir, 'ca', 'bundle.pem')}`;
  out('\nTry it yourself:');
  out(`  ${curl} --cert ${certFile('web.pem')} --key ${certFile('web.key')} https://localhost:${port}/hello`);
  out(
    `  ${curl} --cert ${certFile('impostor.pem')} --key ${certFile('impostor.key')} https://localhost:${port}/hello`,
  );
  out(`  ${curl} https://localhost:${port}/hello`);
  out(`  curl http://127.0.0.1:${adminPort}/status`);

  out('\nRunning until Ctrl-C.');
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  out('\nStopping...');
  await shutdown();
  return 0;
}
