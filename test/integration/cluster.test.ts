import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { clientKey, proof } from '../helpers/dpop.js';
import { ISSUER, makeKey, requestAuthentication, type SigningKey, sign } from '../helpers/jwks.js';
import { makePki, TempDir, type TestPki } from '../helpers/pki.js';
import { EchoUpstream } from '../helpers/upstream.js';
import { until } from '../helpers/wait.js';

/**
 * `workers: 2`: the `portcullis run` command as a cluster — a primary and two worker processes
 * sharing the listening port, one admin server, one audit writer, reload and drain for all.
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(ROOT, 'dist/cli/main.js');

const policy = (paths: string[]): string => `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: api, namespace: default }
spec:
  rules:
    - from: [{ source: { principals: ["example.org/ns/default/sa/web"] } }]
      to: [{ operation: { paths: ${JSON.stringify(paths)} } }]
`;

interface Cluster {
  child: ChildProcess;
  stderr: () => string;
  exited: Promise<number | null>;
  port: number;
  admin: number;
}

function config(dir: TempDir, upstream: string, listen: string): string {
  return `trustDomain: example.org
workload: { namespace: default, serviceAccount: api }
identity:
  cert: api.pem
  key: api.key
  bundles: { example.org: ca.pem }
listeners:
  - { name: inbound, address: "${listen}", upstream: "${upstream}" }
admin: { address: "127.0.0.1:0" }
policies: [policies]
audit: { sinks: [{ type: file, path: audit.ndjson }] }
watch: false
workers: 2
log: { level: info, format: json }
shutdown: { drainTimeout: 5s }
`.replace(/^/, `# ${dir.path}\n`);
}

async function startCluster(dir: TempDir, file: string): Promise<Cluster> {
  const child = spawn(process.execPath, [BIN, 'run', '-c', file], { cwd: dir.path });
  let stderr = '';
  child.stderr?.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  await until(
    'the cluster to be ready',
    () => /"workers":2,"msg":"ready"/.test(stderr) || child.exitCode !== null,
    20_000,
  );
  const port = Number(/"listener":"inbound","address":"127\.0\.0\.1:(\d+)"/.exec(stderr)?.[1]);
  const admin = Number(/"address":"127\.0\.0\.1:(\d+)","msg":"admin listening"/.exec(stderr)?.[1]);
  return { child, stderr: () => stderr, exited, port, admin };
}

function metric(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? Number.NaN : Number(line.slice(name.length + 1));
}

describe('cluster mode (workers: 2)', () => {
  const dir = new TempDir('portcullis-cluster-');
  const upstream = new EchoUpstream();
  let pki: TestPki;
  let c: Cluster;
  let client: { cert: string; key: string; ca: string };
  let issuer: SigningKey;
  const url = (path: string): string => `https://localhost:${c.port}${path}`;
  const admin = async (path: string): Promise<string> =>
    (await request(`http://127.0.0.1:${c.admin}${path}`)).text;

  beforeAll(async () => {
    pki = await makePki();
    dir.write('ca.pem', pki.ca.certPem);
    dir.write('api.pem', pki.server.certPem);
    dir.write('api.key', pki.server.keyPem);
    dir.write('policies/api.yaml', policy(['/ok/*', '/slow/*']));
    issuer = await makeKey('k1');
    dir.write(
      'policies/dpop.yaml',
      requestAuthentication([{ issuer: ISSUER, jwks: JSON.stringify({ keys: [issuer.jwk] }) }], 'dpop')
        .replace('namespace: default }', 'namespace: default, annotations: { portcullis.dev/dpop: "true" } }')
        // The workload here has no labels: the resource applies to its whole namespace.
        .replace('  selector: { matchLabels: { app: api } }\n', ''),
    );
    client = { cert: pki.client.certPem, key: pki.client.keyPem, ca: pki.ca.certPem };
    await new Promise<void>((r) => upstream.server.listen(0, '127.0.0.1', r));
    const up = `http://127.0.0.1:${(upstream.server.address() as AddressInfo).port}`;
    c = await startCluster(dir, dir.write('portcullis.yaml', config(dir, up, '127.0.0.1:0')));
  }, 30_000);
  afterAll(async () => {
    c?.child.kill('SIGKILL');
    await upstream.close();
    dir.cleanup();
  });

  it('serves from both workers on one port, and the primary answers for both', async () => {
    expect(c.port).toBeGreaterThan(0);
    expect((await request(`http://127.0.0.1:${c.admin}/readyz`)).status).toBe(200);
    // A new connection each time: the primary hands connections to the workers in turn.
    for (let i = 0; i < 30; i++) expect((await request(url(`/ok/${i}`), client)).status).toBe(200);
    const status = JSON.parse(await admin('/status')) as {
      cluster: { workers: number; running: number; restarts: number };
      workers: { pid: number; listeners: { requests: number }[] }[];
    };
    expect(status.cluster).toEqual({ workers: 2, running: 2, restarts: 0 });
    expect(status.workers).toHaveLength(2);
    expect(new Set(status.workers.map((w) => w.pid)).size).toBe(2);
    for (const w of status.workers) expect(w.listeners[0]?.requests).toBeGreaterThan(0);
    // Metrics are the sum over the workers.
    const m = await admin('/metrics');
    expect(
      metric(
        m,
        'portcullis_requests_total{listener="inbound",decision="allow",reason="policy",status="200"}',
      ),
    ).toBe(30);
    expect(metric(m, 'portcullis_workers')).toBe(2);
    expect(metric(m, 'portcullis_worker_restarts_total')).toBe(0);
  });

  it('writes every event once, whole, through one writer', async () => {
    const file = dir.file('audit.ndjson');
    const events = (): { request: { path: string } }[] =>
      readFileSync(file, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { request: { path: string } });
    await until('30 events', () => {
      try {
        return events().length >= 30;
      } catch {
        return false;
      }
    });
    const paths = events().map((e) => e.request.path);
    expect(paths.filter((p) => p.startsWith('/ok/')).sort()).toEqual(
      Array.from({ length: 30 }, (_, i) => `/ok/${i}`).sort(),
    );
    const m = await admin('/metrics');
    expect(metric(m, 'portcullis_audit_events_written_total{sink="file-0"}')).toBe(30);
  });

  it('accepts a DPoP proof once in the whole cluster, whichever worker gets it again', async () => {
    const alice = await clientKey();
    const token = await sign(issuer, { cnf: { jkt: alice.jkt } });
    const p = await proof(alice, { url: url('/ok/dpop'), token });
    const headers = { authorization: `DPoP ${token}`, dpop: p };
    expect((await request(url('/ok/dpop'), { ...client, headers })).status).toBe(200);
    // New connections go to the workers in turn: the replays reach both, and both refuse them.
    const again: number[] = [];
    for (let i = 0; i < 4; i++) again.push((await request(url('/ok/dpop'), { ...client, headers })).status);
    expect(again).toEqual([401, 401, 401, 401]);
    // A fresh proof for the same token is fine on any worker.
    for (let i = 0; i < 2; i++) {
      const fresh = {
        authorization: `DPoP ${token}`,
        dpop: await proof(alice, { url: url('/ok/dpop'), token }),
      };
      expect((await request(url('/ok/dpop'), { ...client, headers: fresh })).status).toBe(200);
    }
  });

  it('reloads every worker on SIGHUP, and a bad reload leaves every worker on its last good state', async () => {
    dir.write('policies/api.yaml', 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nspec: [\n');
    c.child.kill('SIGHUP');
    await until('the failed reload', () => c.stderr().includes('reload failed in some workers'));
    for (let i = 0; i < 6; i++) expect((await request(url(`/ok/after-bad-${i}`), client)).status).toBe(200);
    let m = await admin('/metrics');
    expect(metric(m, 'portcullis_policy_reloads_total{result="failure"}')).toBe(2);

    dir.write('policies/api.yaml', policy(['/slow/*']));
    c.child.kill('SIGHUP');
    await until('the reload', () => c.stderr().includes('every worker reloaded'));
    for (let i = 0; i < 6; i++) {
      const headers = { 'x-request-id': `cluster-deny-${i}` };
      expect((await request(url(`/ok/after-good-${i}`), { ...client, headers })).status).toBe(403);
    }
    m = await admin('/metrics');
    expect(metric(m, 'portcullis_policy_reloads_total{result="success"}')).toBe(2);
    // Whichever worker served a deny, the primary finds its explanation (by the policies that decided).
    for (let i = 0; i < 6; i++) {
      const e = await admin(`/decisions/cluster-deny-${i}`);
      expect(e).toContain(`request id: cluster-deny-${i}`);
      expect(e).toContain(`to[0] paths: "/ok/after-good-${i}" is not in ["/slow/*"]`);
    }
  });

  it('restarts a worker that dies, and counts it', async () => {
    const status = JSON.parse(await admin('/status')) as { workers: { pid: number }[] };
    const victim = status.workers[0]?.pid as number;
    process.kill(victim, 'SIGKILL');
    await until(
      'a new worker',
      () => /"restarts":1,"msg":"worker exited unexpectedly; starting another"/.test(c.stderr()),
      10_000,
    );
    const end = Date.now() + 10_000;
    while ((await request(`http://127.0.0.1:${c.admin}/readyz`)).status !== 200) {
      if (Date.now() > end) throw new Error('not ready again after the restart');
      await new Promise((r) => setTimeout(r, 50));
    }
    const after = JSON.parse(await admin('/status')) as {
      cluster: { restarts: number };
      workers: { pid: number }[];
    };
    expect(after.cluster.restarts).toBe(1);
    expect(after.workers.map((w) => w.pid)).not.toContain(victim);
    expect(metric(await admin('/metrics'), 'portcullis_worker_restarts_total')).toBe(1);
    for (let i = 0; i < 4; i++) expect((await request(url(`/slow/${i}`), client)).status).toBe(200);
  }, 20_000);

  it('drains every worker on SIGTERM: a request in flight finishes, its event is written, exit 0', async () => {
    const slow = request(url('/slow/700'), client);
    await new Promise((r) => setTimeout(r, 200));
    c.child.kill('SIGTERM');
    expect((await slow).status).toBe(200);
    expect(await c.exited).toBe(0);
    expect(readFileSync(dir.file('audit.ndjson'), 'utf8')).toContain('"path":"/slow/700"');
  }, 20_000);
});

describe('cluster mode that cannot start', () => {
  const dir = new TempDir('portcullis-cluster-fail-');
  afterAll(() => dir.cleanup());

  it('exits 1 when the workers cannot listen, instead of restarting them forever', async () => {
    const pki = await makePki();
    dir.write('ca.pem', pki.ca.certPem);
    dir.write('api.pem', pki.server.certPem);
    dir.write('api.key', pki.server.keyPem);
    dir.write('policies/api.yaml', policy(['/ok/*']));
    const taken = net.createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    const port = (taken.address() as AddressInfo).port;
    try {
      const child = spawn(
        process.execPath,
        [
          BIN,
          'run',
          '-c',
          dir.write('portcullis.yaml', config(dir, 'http://127.0.0.1:9', `127.0.0.1:${port}`)),
        ],
        { cwd: dir.path },
      );
      let stderr = '';
      child.stderr?.on('data', (d) => (stderr += d));
      const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
      expect(code).toBe(1);
      expect(stderr).toContain('a worker could not start');
    } finally {
      taken.close();
    }
  }, 30_000);
});
