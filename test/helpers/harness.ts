import pino, { type Logger } from 'pino';
import { configFromObject } from '../../src/config/load.js';
import { Portcullis } from '../../src/proxy/portcullis.js';
import { makePki, TempDir, type TestPki } from './pki.js';
import { EchoUpstream } from './upstream.js';

export const testLogger = pino({ level: process.env.PORTCULLIS_TEST_LOG ?? 'silent' });

export interface Harness {
  dir: TempDir;
  pki: TestPki;
  upstream: EchoUpstream;
  proxy: Portcullis;
  /** https://localhost:PORT of the first listener */
  url: string;
  port: number;
  /** client TLS options with the good client SVID */
  client: { cert: string; key: string; ca: string };
  close(): Promise<void>;
}

export interface HarnessOptions {
  policies?: string;
  config?: Record<string, unknown>;
  pki?: TestPki;
  upstreamUrl?: string;
  /** Extra fields for the one listener (e.g. rego). */
  listener?: Record<string, unknown>;
  /** Files to write in the temp folder before starting (name → content). */
  files?: Record<string, string | Buffer>;
  /** Anything else to prepare in the temp folder before starting (symlinks, modes). */
  setup?: (dir: TempDir) => void;
  /** The proxy's logger (default: silent unless PORTCULLIS_TEST_LOG is set). */
  logger?: Logger;
}

/** A logger that keeps every line as an object, for tests about what is logged. */
export function memoryLogger(level = 'info'): { logger: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const logger = pino(
    { level },
    { write: (s: string) => lines.push(JSON.parse(s) as Record<string, unknown>) },
  );
  return { logger, lines };
}

/** Writes PKI and policies to a temp folder, starts a real upstream and a real proxy on port 0. */
export async function startHarness(opts: HarnessOptions = {}): Promise<Harness> {
  const dir = new TempDir();
  const pki = opts.pki ?? (await makePki());
  dir.write('api.pem', pki.server.certPem);
  dir.write('api.key', pki.server.keyPem);
  dir.write('bundle.pem', pki.ca.certPem);
  const policies: string[] = [];
  if (opts.policies !== undefined) {
    dir.write('policies.yaml', opts.policies);
    policies.push('policies.yaml');
  }
  for (const [name, content] of Object.entries(opts.files ?? {})) dir.write(name, content);
  opts.setup?.(dir);
  const upstream = new EchoUpstream();
  const upstreamUrl = opts.upstreamUrl ?? (await upstream.listen());
  const raw = {
    trustDomain: 'example.org',
    workload: { namespace: 'default', serviceAccount: 'api', labels: { app: 'api' } },
    identity: { cert: 'api.pem', key: 'api.key', bundles: { 'example.org': 'bundle.pem' } },
    listeners: [{ name: 'inbound', address: '127.0.0.1:0', upstream: upstreamUrl, ...opts.listener }],
    policies,
    shutdown: { drainTimeout: '2s' },
    ...opts.config,
  };
  const proxy = await Portcullis.start(configFromObject(raw, dir.path, dir.file('portcullis.yaml')), {
    logger: opts.logger ?? testLogger,
  });
  const port = proxy.listenerAddress('inbound').port;
  return {
    dir,
    pki,
    upstream,
    proxy,
    url: `https://localhost:${port}`,
    port,
    client: { cert: pki.client.certPem, key: pki.client.keyPem, ca: pki.ca.certPem },
    async close() {
      await proxy.close();
      await upstream.close();
      dir.cleanup();
    },
  };
}
