// npm run soak [-- --duration 60] — a bounded soak of a real `portcullis run` process: mixed
// allowed, denied and hostile traffic while the proxy's certificate rotates, policies reload and
// the upstream restarts. Reports failed allowed requests (must be 0 outside the planned upstream
// outages), wrong answers to denied and hostile requests (must be 0), and the proxy's open file
// descriptors and RSS at start and end. Exit 1 when any of those checks fails. Loopback only.
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { stringify } from 'yaml';
import { createCa, issueSvid, type PemPair } from '../src/index.js';
import { TempDir } from '../test/helpers/pki.js';
import { connect, rawExchange } from '../test/helpers/raw.js';
import { EchoUpstream } from '../test/helpers/upstream.js';

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '60' },
    concurrency: { type: 'string', default: '6' },
  },
});
const DURATION_MS = Number(args.duration) * 1000;
const CONCURRENCY = Number(args.concurrency);
const ROOT = resolve(import.meta.dirname, '..', '..');
const log = (s: string): void => {
  process.stderr.write(`${s}\n`);
};

const POLICY = (generation: number): string => `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-admin, namespace: default, labels: { generation: "g${generation}" } }
spec:
  selector: { matchLabels: { app: api } }
  action: DENY
  rules: [{ to: [{ operation: { paths: [/admin, /admin/*] } }] }]
`;

interface Counts {
  allowedOk: number;
  allowedFailed: number;
  allowedDuringOutage: number;
  deniedOk: number;
  deniedWrong: number;
  hostileOk: number;
  hostileWrong: number;
  rotations: number;
  reloads: number;
  upstreamRestarts: number;
}

function procStats(pid: number): { fds: number; rssMb: number } {
  const fds = readdirSync(`/proc/${pid}/fd`).length;
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return { fds, rssMb: m === null ? 0 : Math.round(Number(m[1]) / 1024) };
}

function writeAtomic(file: string, text: string): void {
  writeFileSync(`${file}.tmp`, text);
  renameSync(`${file}.tmp`, file);
}

function get(url: string, agent: https.Agent, client: PemPair, ca: string): Promise<number> {
  return new Promise((done) => {
    const req = https.get(
      url,
      { agent, cert: client.certPem, key: client.keyPem, ca, servername: 'localhost', timeout: 5_000 },
      (res) => {
        res.resume();
        res.on('end', () => done(res.statusCode ?? 0));
        res.on('error', () => done(-1));
      },
    );
    req.on('timeout', () => req.destroy());
    req.on('error', () => done(-1));
  });
}

async function waitReady(adminPort: number): Promise<void> {
  const end = Date.now() + 10_000;
  while (Date.now() < end) {
    const ok = await new Promise<boolean>((r) => {
      http
        .get({ host: '127.0.0.1', port: adminPort, path: '/readyz' }, (res) => {
          res.resume();
          r(res.statusCode === 200);
        })
        .on('error', () => r(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the proxy did not become ready within 10 s');
}

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net');
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function main(): Promise<number> {
  const dir = new TempDir('portcullis-soak-');
  const ca = await createCa('example.org');
  const other = await createCa('example.org');
  const server = await issueSvid(ca, 'spiffe://example.org/ns/default/sa/api', { dnsNames: ['localhost'] });
  const client = await issueSvid(ca, 'spiffe://example.org/ns/default/sa/web');
  const stranger = await issueSvid(other, 'spiffe://example.org/ns/default/sa/web');
  dir.write('api.pem', server.certPem);
  dir.write('api.key', server.keyPem);
  dir.write('bundle.pem', ca.certPem);
  dir.write('policies/deny.yaml', POLICY(0));

  const upstream = new EchoUpstream();
  const upstreamUrl = await upstream.listen();
  const upstreamPort = Number(new URL(upstreamUrl).port);
  const port = await freePort();
  const adminPort = await freePort();
  dir.write(
    'portcullis.yaml',
    stringify({
      trustDomain: 'example.org',
      workload: { namespace: 'default', labels: { app: 'api' } },
      identity: { cert: 'api.pem', key: 'api.key', bundles: { 'example.org': 'bundle.pem' } },
      listeners: [{ name: 'inbound', address: `127.0.0.1:${port}`, upstream: upstreamUrl }],
      policies: ['policies/'],
      admin: { address: `127.0.0.1:${adminPort}` },
      limits: { handshakeTimeout: '1s', headersTimeout: '1s', maxPendingPerSource: 64 },
      audit: { sinks: [{ type: 'file', path: 'audit.ndjson', maxSize: 5_000_000, keep: 2 }] },
      log: { level: 'warn' },
    }),
  );
  const proxy: ChildProcess = spawn(
    process.execPath,
    [join(ROOT, 'dist', 'cli', 'main.js'), 'run', '-c', dir.file('portcullis.yaml')],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let proxyLog = '';
  proxy.stderr?.on('data', (c: Buffer) => {
    proxyLog = (proxyLog + c.toString()).slice(-20_000);
  });
  const pid = proxy.pid as number;
  try {
    await waitReady(adminPort);
    log(`soak: proxy ready on ${port}`);
    const url = `https://localhost:${port}`;
    // Warm up, so the start figures are of a proxy that has served (lazy loads are done).
    const warm = new https.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
    for (let i = 0; i < 200; i++) await get(`${url}/warm`, warm, client, ca.certPem);
    warm.destroy();
    await new Promise((r) => setTimeout(r, 500));
    const start = procStats(pid);
    log(`soak: ${DURATION_MS / 1000}s, proxy pid ${pid}: ${start.fds} fds, ${start.rssMb} MB RSS at start`);

    const c: Counts = {
      allowedOk: 0,
      allowedFailed: 0,
      allowedDuringOutage: 0,
      deniedOk: 0,
      deniedWrong: 0,
      hostileOk: 0,
      hostileWrong: 0,
      rotations: 0,
      reloads: 0,
      upstreamRestarts: 0,
    };
    const deadline = Date.now() + DURATION_MS;
    let outage = false;

    const allowedLoop = async (): Promise<void> => {
      const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
      while (Date.now() < deadline) {
        const during = outage;
        const status = await get(`${url}/ok`, agent, client, ca.certPem);
        if (status === 200) c.allowedOk++;
        else if (during || outage) c.allowedDuringOutage++;
        else {
          c.allowedFailed++;
          if (c.allowedFailed <= 5) log(`  allowed request failed: status ${status}`);
        }
      }
      agent.destroy();
    };
    const deniedLoop = async (): Promise<void> => {
      const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
      while (Date.now() < deadline) {
        const status = await get(`${url}/admin/x`, agent, client, ca.certPem);
        if (status === 403) c.deniedOk++;
        else c.deniedWrong++;
      }
      agent.destroy();
    };
    const tlsClient = { cert: client.certPem, key: client.keyPem, ca: ca.certPem };
    const hostile: (() => Promise<boolean>)[] = [
      async () =>
        (await rawExchange(port, 'GET / HTTP/1.1\r\nHost: a b\r\n\r\n', { tls: tlsClient })).status === 400,
      async () =>
        (
          await rawExchange(
            port,
            'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
            { tls: tlsClient },
          )
        ).status === 400,
      async () =>
        (
          await rawExchange(port, 'GET /admin HTTP/1.1\r\nHost: a\r\nConnection: close, host\r\n\r\n', {
            tls: tlsClient,
          })
        ).status === 403,
      async () => {
        // A stranger's certificate (another CA claiming the trust domain): never an HTTP answer.
        const r = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: a\r\n\r\n', {
          tls: { cert: stranger.certPem, key: stranger.keyPem, ca: ca.certPem },
        }).catch(() => null);
        return r === null || r.status === 0;
      },
      async () => {
        // A silent connection: closed by the pending deadline (1 s).
        const s = await connect(port, { localAddress: '127.0.0.2' });
        s.on('error', () => undefined);
        const closed = await new Promise<boolean>((r) => {
          const t = setTimeout(() => r(false), 3_000);
          s.once('close', () => {
            clearTimeout(t);
            r(true);
          });
        });
        s.destroy();
        return closed;
      },
    ];
    const hostileLoop = async (): Promise<void> => {
      let i = 0;
      while (Date.now() < deadline) {
        const attack = hostile[i++ % hostile.length] as () => Promise<boolean>;
        if (await attack().catch(() => false)) c.hostileOk++;
        else c.hostileWrong++;
      }
    };
    const churn = async (): Promise<void> => {
      let tick = 0;
      while (Date.now() < deadline - 1_000) {
        await new Promise((r) => setTimeout(r, 1_000));
        tick++;
        if (tick % 5 === 0) {
          const next = await issueSvid(ca, 'spiffe://example.org/ns/default/sa/api', {
            dnsNames: ['localhost'],
          });
          // Key first, then the certificate: the proxy keeps the last good pair until both match.
          writeAtomic(dir.file('api.key'), next.keyPem);
          writeAtomic(dir.file('api.pem'), next.certPem);
          c.rotations++;
        }
        if (tick % 7 === 0) {
          writeAtomic(dir.file('policies/deny.yaml'), POLICY(tick));
          proxy.kill('SIGHUP');
          c.reloads++;
        }
        if (tick % 11 === 0) {
          outage = true;
          await upstream.close();
          await new Promise((r) => setTimeout(r, 200));
          await new Promise<void>((r) => upstream.server.listen(upstreamPort, '127.0.0.1', r));
          await new Promise((r) => setTimeout(r, 200));
          outage = false;
          c.upstreamRestarts++;
        }
      }
    };
    const loops: Promise<void>[] = [churn(), hostileLoop()];
    for (let i = 0; i < CONCURRENCY; i++) loops.push(i % 3 === 2 ? deniedLoop() : allowedLoop());
    await Promise.all(loops);
    await new Promise((r) => setTimeout(r, 1_500)); // pending deadlines and keep-alive closes settle
    const end = procStats(pid);
    const total = c.allowedOk + c.allowedFailed + c.allowedDuringOutage + c.deniedOk + c.deniedWrong;
    log(
      [
        `requests: ${total} (${Math.round(total / (DURATION_MS / 1000))}/s) + ${c.hostileOk + c.hostileWrong} hostile`,
        `allowed: ${c.allowedOk} ok, ${c.allowedFailed} failed, ${c.allowedDuringOutage} during planned upstream restarts`,
        `denied: ${c.deniedOk} refused as they must be, ${c.deniedWrong} wrong`,
        `hostile: ${c.hostileOk} handled, ${c.hostileWrong} wrong`,
        `churn: ${c.rotations} certificate rotations, ${c.reloads} policy reloads, ${c.upstreamRestarts} upstream restarts`,
        `proxy fds: ${start.fds} at start, ${end.fds} at end; RSS: ${start.rssMb} MB at start, ${end.rssMb} MB at end`,
      ].join('\n'),
    );
    const problems: string[] = [];
    if (c.allowedFailed > 0) problems.push(`${c.allowedFailed} allowed requests failed`);
    if (c.deniedWrong > 0) problems.push(`${c.deniedWrong} denied requests were not refused`);
    if (c.hostileWrong > 0) problems.push(`${c.hostileWrong} hostile requests were mishandled`);
    if (end.fds > start.fds + 10) problems.push(`file descriptors grew from ${start.fds} to ${end.fds}`);
    if (end.rssMb > start.rssMb * 1.5 + 20) problems.push(`RSS grew from ${start.rssMb} to ${end.rssMb} MB`);
    if (problems.length > 0) {
      log(`FAILED: ${problems.join('; ')}`);
      log(proxyLog.split('\n').slice(-20).join('\n'));
      return 1;
    }
    log('soak passed');
    return 0;
  } catch (err) {
    log(proxyLog.split('\n').slice(-20).join('\n'));
    throw err;
  } finally {
    if (proxy.exitCode === null && proxy.signalCode === null) {
      const exited = new Promise((r) => proxy.once('exit', r));
      proxy.kill('SIGTERM');
      await exited;
    }
    await upstream.close().catch(() => undefined);
    dir.cleanup();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    log(`soak could not run: ${(err as Error).stack ?? String(err)}`);
    process.exit(2);
  },
);
