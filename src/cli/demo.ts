import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { stringify } from 'yaml';
import { loadConfigFile } from '../config/load.js';
import { PortcullisError } from '../errors.js';
import { initCaDir, issueToFiles } from '../identity/dev-ca.js';
import { defaultLogger, Portcullis } from '../proxy/portcullis.js';

export interface DemoOptions {
  port: number;
  adminPort: number;
  /** Keep files here instead of a temp folder that is removed on exit. */
  dir?: string;
  /** Make the example calls, print the outcome, stop; the exit code tells whether all behaved. */
  once: boolean;
  logLevel: string;
  out: (line: string) => void;
}

/** The package's own examples folder, found from this file (works through the bin symlink). */
export const EXAMPLES_DIR = fileURLToPath(new URL('../../examples/', import.meta.url));
const ISSUER = 'https://issuer.demo.portcullis';

interface CallResult {
  status: number;
  summary: string;
  /** The `x-request-id` the proxy answered with, or ''. */
  requestId: string;
}

interface Client {
  ca: string;
  cert?: string;
  key?: string;
  token?: string;
}

/** The demo's service: answers with what it learned about the caller from the proxy. */
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
          'x-jwt-sub': req.headers['x-jwt-sub'] ?? null,
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

/** A JWKS endpoint for the demo's issuer, and a function that signs end-user tokens. */
async function startIssuer(): Promise<{
  server: http.Server;
  jwksUri: string;
  sign: (expSeconds: number) => Promise<string>;
}> {
  const { publicKey, privateKey } = await generateKeyPair('ES256');
  const jwk = { ...(await exportJWK(publicKey)), kid: 'demo-1', alg: 'ES256', use: 'sig' };
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ keys: [jwk] }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const jwksUri = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`;
  const sign = (expSeconds: number): Promise<string> => {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ sub: 'alice', aud: 'api' })
      .setProtectedHeader({ alg: 'ES256', kid: 'demo-1' })
      .setIssuer(ISSUER)
      .setIssuedAt(now)
      .setExpirationTime(now + expSeconds)
      .sign(privateKey);
  };
  return { server, jwksUri, sign };
}

function call(port: number, c: Client, path = '/hello'): Promise<CallResult> {
  return new Promise((resolve) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        servername: 'localhost',
        port,
        path,
        ca: c.ca,
        cert: c.cert,
        key: c.key,
        agent: false,
        headers: c.token === undefined ? {} : { authorization: `Bearer ${c.token}` },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        const id = res.headers['x-request-id'];
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            summary: `HTTP ${res.statusCode}\n${text.trimEnd()}`,
            requestId: typeof id === 'string' ? id : '',
          }),
        );
        res.on('error', (err) =>
          resolve({
            status: 0,
            summary: `connection closed (${(err as NodeJS.ErrnoException).code})`,
            requestId: '',
          }),
        );
      },
    );
    req.on('error', (err) =>
      resolve({
        status: 0,
        summary: `refused: ${(err as NodeJS.ErrnoException).code ?? err.message}`,
        requestId: '',
      }),
    );
    req.end();
  });
}

/** GET on the admin server, the body as text ('' when it cannot be had). */
function adminGet(port: number, path: string): Promise<string> {
  return new Promise((resolve) => {
    http
      .get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => resolve(text.trimEnd()));
        res.on('error', () => resolve(''));
      })
      .on('error', () => resolve(''));
  });
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((l) => (l === '' ? '' : `    ${l}`))
    .join('\n');
}

/**
 * `portcullis demo`: a throwaway CA and SVIDs, a token issuer with a JWKS endpoint, an echo
 * upstream, and the proxy in front of it with the example policies; shows allowed and refused
 * calls, then keeps running. Resolves with the process exit code.
 */
export async function runDemo(opts: DemoOptions): Promise<number> {
  const out = opts.out;
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'portcullis-demo-'));
  mkdirSync(dir, { recursive: true });
  const certs = join(dir, 'certs');
  const caDir = join(dir, 'ca');
  out(`Portcullis demo — files in ${dir}`);
  out('Making a development CA for trust domain example.org, four certificates and a token issuer...');
  // The demo owns its folder: a CA left by an earlier run with the same --dir is replaced.
  await initCaDir(caDir, 'example.org', undefined, true);
  await issueToFiles(caDir, 'spiffe://example.org/ns/default/sa/api', join(certs, 'api'), {
    dnsNames: ['localhost'],
  });
  await issueToFiles(caDir, 'spiffe://example.org/ns/default/sa/web', join(certs, 'web'));
  await issueToFiles(caDir, 'spiffe://example.org/ns/default/sa/db', join(certs, 'db'));
  // Signed by the trusted CA, but naming another trust domain: OpenSSL accepts the chain; the
  // SPIFFE check refuses it because attacker.test has no bundle here.
  await issueToFiles(caDir, 'spiffe://attacker.test/ns/default/sa/web', join(certs, 'impostor'), {
    anyTrustDomain: true,
  });

  const issuer = await startIssuer();
  const echo = await startEcho();
  const upstreamPort = (echo.address() as AddressInfo).port;
  mkdirSync(join(dir, 'policies'), { recursive: true });
  writeFileSync(
    join(dir, 'policies', 'jwt.yaml'),
    stringify({
      apiVersion: 'security.istio.io/v1',
      kind: 'RequestAuthentication',
      metadata: { name: 'demo-issuer', namespace: 'default' },
      spec: {
        selector: { matchLabels: { app: 'api' } },
        jwtRules: [
          {
            issuer: ISSUER,
            jwksUri: issuer.jwksUri,
            audiences: ['api'],
            outputClaimToHeaders: [{ header: 'x-jwt-sub', claim: 'sub' }],
          },
        ],
      },
    }),
  );
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
      policies: [join(EXAMPLES_DIR, 'demo', 'policies'), 'policies/'],
      admin: { address: `127.0.0.1:${opts.adminPort}` },
      shutdown: { drainTimeout: '2s' },
      // Every decision as one JSON line on stdout (in production: a file or a collector).
      audit: { decisions: 'all', sinks: [{ type: 'stdout' }] },
    }),
  );

  const stopHelpers = (): void => {
    echo.closeAllConnections();
    echo.close();
    issuer.server.closeAllConnections();
    issuer.server.close();
  };
  let proxy: Portcullis;
  try {
    proxy = await Portcullis.start(loadConfigFile(configFile), {
      logger: await defaultLogger(opts.logLevel),
    });
  } catch (err) {
    stopHelpers();
    // Nothing of a failed start stays behind: the throwaway folder holds a CA key.
    if (opts.dir === undefined) rmSync(dir, { recursive: true, force: true });
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      throw new PortcullisError(
        'ERR_USAGE',
        `port ${opts.port} or ${opts.adminPort} is taken: pick others, or let the system choose with --port 0 --admin-port 0`,
      );
    }
    throw err;
  }
  const port = proxy.listenerAddress('inbound').port;
  const adminPort = proxy.adminAddress()?.port ?? 0;
  out('Each call below is preceded by its audit event (one JSON line per decision, on stdout).');
  out(
    `Proxy on https://localhost:${port} (mTLS ${proxy.listeners[0]?.plan.mode}), admin on http://127.0.0.1:${adminPort}, upstream echo on 127.0.0.1:${upstreamPort}\n`,
  );

  const read = (name: string): string => readFileSync(join(certs, name), 'utf8');
  const bundle = readFileSync(join(caDir, 'bundle.pem'), 'utf8');
  const web: Client = { ca: bundle, cert: read('web.pem'), key: read('web.key') };
  const token = await issuer.sign(3600);
  const expired = await issuer.sign(-120);

  const steps: [string, Client, (status: number) => boolean, string?][] = [
    [
      'spiffe://example.org/ns/default/sa/web, signed by the trusted CA — allowed by policy',
      web,
      (s) => s === 200,
    ],
    [
      'spiffe://example.org/ns/default/sa/db, a valid identity that no AuthorizationPolicy allows — denied',
      { ca: bundle, cert: read('db.pem'), key: read('db.key') },
      (s) => s === 403,
    ],
    [
      'the web workload again, reaching for /admin through /hello/../admin — denied after path normalization',
      web,
      (s) => s === 403,
      '/hello/../admin',
    ],
    [
      'spiffe://attacker.test/ns/default/sa/web, signed by the same CA but naming an untrusted trust domain — refused',
      { ca: bundle, cert: read('impostor.pem'), key: read('impostor.key') },
      (s) => s === 0,
    ],
    ['no client certificate — refused', { ca: bundle }, (s) => s === 0],
    [
      'the web workload with an end-user token from the trusted issuer — allowed, the service learns the user',
      { ...web, token },
      (s) => s === 200,
    ],
    [
      'the web workload with an expired end-user token — refused',
      { ...web, token: expired },
      (s) => s === 401,
    ],
  ];
  let behaved = true;
  let deniedId = '';
  for (const [i, [title, client, expected, path]] of steps.entries()) {
    const result = await call(port, client, path);
    if (i === 1) deniedId = result.requestId;
    // This call's audit event goes out first, so that each event sits above the call it records.
    await proxy.audit?.flush(1_000);
    out(`${i + 1}. ${title}:`);
    out(indent(result.summary));
    out('');
    if (i === 3) {
      const reasons = [...(proxy.listeners[0]?.stats.peersRejected.keys() ?? [])];
      if (reasons.length > 0) out(indent(`(the proxy's reason: ${reasons.join(', ')})`));
    }
    if (!expected(result.status)) behaved = false;
  }
  if (deniedId !== '') {
    // The client of call 2 got only its request id; the operator looks it up.
    out(
      'Why was call 2 denied? The client got only its request id; the admin server (loopback only) explains it:',
    );
    out(`    curl http://127.0.0.1:${adminPort}/decisions/${deniedId}`);
    const explained = await adminGet(adminPort, `/decisions/${deniedId}`);
    if (!explained.includes('decision: DENY')) behaved = false;
    out(indent(explained));
  }
  out(
    `\n${behaved ? 'Every call behaved as expected.' : 'UNEXPECTED: the calls above did not behave as expected.'}`,
  );

  const shutdown = async (): Promise<void> => {
    await proxy.close();
    stopHelpers();
    if (opts.dir === undefined) rmSync(dir, { recursive: true, force: true });
  };
  if (opts.once) {
    await shutdown();
    return behaved ? 0 : 1;
  }
  const curl = `curl --cacert ${join(caDir, 'bundle.pem')}`;
  const asWeb = `--cert ${join(certs, 'web.pem')} --key ${join(certs, 'web.key')}`;
  out('\nTry it yourself:');
  out(`  ${curl} ${asWeb} https://localhost:${port}/hello`);
  out(
    `  ${curl} --cert ${join(certs, 'db.pem')} --key ${join(certs, 'db.key')} https://localhost:${port}/hello`,
  );
  out(`  ${curl} ${asWeb} --path-as-is https://localhost:${port}/hello/../admin`);
  out(`  ${curl} ${asWeb} -H "Authorization: Bearer ${token}" https://localhost:${port}/hello`);
  out(
    `  ${curl} --cert ${join(certs, 'impostor.pem')} --key ${join(certs, 'impostor.key')} https://localhost:${port}/hello`,
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
