import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseBundle, TrustBundleSet } from '../../src/identity/bundle.js';
import { verifyPeer } from '../../src/identity/verify-peer.js';
import { request } from '../helpers/client.js';
import { DOCUMENTED_AUDIT, DOCUMENTED_CONFIG } from '../helpers/fixtures.js';
import { TempDir } from '../helpers/pki.js';
import { type EchoReply, EchoUpstream } from '../helpers/upstream.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(ROOT, 'dist/cli/main.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[], cwd = ROOT): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { cwd, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

describe('portcullis CLI', () => {
  let dir: TempDir;
  beforeAll(async () => {
    expect(existsSync(BIN), 'run "npm run build" first (npm test does)').toBe(true);
    dir = new TempDir();
    // Set the documented layout up with the CLI itself.
    expect((await cli(['ca', 'init', '--trust-domain', 'example.org', '--out', dir.file('ca')])).code).toBe(
      0,
    );
    for (const [name, id, extra] of [
      ['api', 'spiffe://example.org/ns/default/sa/api', ['--dns', 'localhost']],
      ['web', 'spiffe://example.org/ns/default/sa/web', []],
    ] as const) {
      const r = await cli([
        'ca',
        'issue',
        '--ca',
        dir.file('ca'),
        '--spiffe-id',
        id,
        '--out',
        dir.file(`certs/${name}`),
        ...extra,
      ]);
      expect(r.code, r.stderr).toBe(0);
    }
    dir.write('certs/bundle.pem', readFileSync(dir.file('ca/bundle.pem'), 'utf8'));
    mkdirSync(dir.file('policies'));
    dir.write(
      'policies/mtls.yaml',
      'apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: { name: default, namespace: istio-system }\nspec: { mtls: { mode: STRICT } }\n',
    );
    dir.write('portcullis.yaml', DOCUMENTED_CONFIG);
  });
  afterAll(() => dir.cleanup());

  it('prints help and refuses unknown commands with exit code 2', async () => {
    const help = await cli(['--help']);
    expect(help.code).toBe(0);
    for (const cmd of ['run', 'validate', 'ca init', 'ca issue', 'check', 'demo'])
      expect(help.stdout).toContain(`portcullis ${cmd}`);
    for (const sub of [
      ['run', '--help'],
      ['validate', '-h'],
      ['ca', 'issue', '--help'],
      ['check', '--help'],
      ['demo', '--help'],
    ]) {
      const r = await cli(sub);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^portcullis /);
    }
    const bad = await cli(['frobnicate']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('unknown command "frobnicate"');
    const badFlag = await cli(['ca', 'init', '--trust-domain', 'example.org']);
    expect(badFlag.code).toBe(2);
    expect(badFlag.stderr).toContain('--out is required');
  });

  it('ca init and ca issue write a CA, a bundle and SVIDs that verify, with private keys at mode 0600', () => {
    expect(statSync(dir.file('ca/ca.key')).mode & 0o777).toBe(0o600);
    expect(statSync(dir.file('certs/web.key')).mode & 0o777).toBe(0o600);
    const bundles = new TrustBundleSet([
      parseBundle('example.org', readFileSync(dir.file('ca/bundle.pem'), 'utf8')),
    ]);
    const web = new X509Certificate(readFileSync(dir.file('certs/web.pem')));
    expect(verifyPeer(web, [], bundles).spiffeId.id).toBe('spiffe://example.org/ns/default/sa/web');
    const api = new X509Certificate(readFileSync(dir.file('certs/api.pem')));
    expect(api.checkHost('localhost')).toBe('localhost');
    // Default lifetime is 24h.
    expect(Date.parse(api.validTo) - Date.parse(api.validFrom)).toBe(24 * 3600_000);
  });

  it('ca issue refuses an invalid SPIFFE ID and names the rule', async () => {
    const r = await cli([
      'ca',
      'issue',
      '--ca',
      dir.file('ca'),
      '--spiffe-id',
      'spiffe://example.org/a/../b',
      '--out',
      dir.file('x'),
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('"." or ".." segments');
  });

  it('ca init keeps an existing CA key unless --force', async () => {
    const before = readFileSync(dir.file('ca/ca.key'), 'utf8');
    const again = await cli(['ca', 'init', '--trust-domain', 'example.org', '--out', dir.file('ca')]);
    expect(again.code).toBe(2);
    expect(again.stderr).toContain('--force');
    expect(readFileSync(dir.file('ca/ca.key'), 'utf8')).toBe(before);
    const other = new TempDir();
    try {
      expect((await cli(['ca', 'init', '--trust-domain', 'x.example', '--out', other.path])).code).toBe(0);
      const first = readFileSync(other.file('ca.key'), 'utf8');
      expect(
        (await cli(['ca', 'init', '--trust-domain', 'x.example', '--out', other.path, '--force'])).code,
      ).toBe(0);
      expect(readFileSync(other.file('ca.key'), 'utf8')).not.toBe(first);
    } finally {
      other.cleanup();
    }
  });

  it('probe exits 0 on a 2xx answer and 1 on another status, a refused connection or a timeout', async () => {
    const server = http.createServer((req, res) => {
      if (req.url === '/slow') return; // never answers
      res.writeHead(req.url === '/readyz' ? 200 : 503);
      res.end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    try {
      expect((await cli(['probe', '--url', `${base}/readyz`])).code).toBe(0);
      const down = await cli(['probe', '--url', `${base}/other`]);
      expect(down.code).toBe(1);
      expect(down.stdout).toContain('HTTP 503');
      expect((await cli(['probe', '--url', `${base}/slow`, '--timeout', '300ms'])).code).toBe(1);
      expect((await cli(['probe', '--url', 'http://127.0.0.1:1/readyz'])).code).toBe(1);
      expect((await cli(['probe', '--url', 'https://x/readyz'])).code).toBe(2);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it('ca issue refuses an ID outside the CA trust domain, and a TTL beyond the CA', async () => {
    const foreign = await cli([
      'ca',
      'issue',
      '--ca',
      dir.file('ca'),
      '--spiffe-id',
      'spiffe://other.example/ns/a/sa/b',
      '--out',
      dir.file('f'),
    ]);
    expect(foreign.code).toBe(2);
    expect(foreign.stderr).toContain('not in trust domain example.org');
    const long = await cli([
      'ca',
      'issue',
      '--ca',
      dir.file('ca'),
      '--spiffe-id',
      'spiffe://example.org/ns/a/sa/b',
      '--out',
      dir.file('l'),
      '--ttl',
      '400d',
    ]);
    expect(long.code).toBe(2);
    expect(long.stderr).toContain('outlive its CA');
    expect(existsSync(dir.file('l.key'))).toBe(false);
  });

  it('ca bundle writes PEM, or a SPIFFE bundle the proxy reads back as the same trust anchor', async () => {
    expect((await cli(['ca', 'bundle', '--ca', dir.file('ca'), '--out', dir.file('b.pem')])).code).toBe(0);
    expect(readFileSync(dir.file('b.pem'), 'utf8')).toBe(readFileSync(dir.file('ca/ca.pem'), 'utf8'));
    const r = await cli([
      'ca',
      'bundle',
      '--ca',
      dir.file('ca'),
      '--format',
      'spiffe',
      '--out',
      dir.file('b.json'),
    ]);
    expect(r.code, r.stderr).toBe(0);
    const bundles = new TrustBundleSet([
      parseBundle('example.org', readFileSync(dir.file('b.json'), 'utf8')),
    ]);
    const web = new X509Certificate(readFileSync(dir.file('certs/web.pem')));
    expect(verifyPeer(web, [], bundles).spiffeId.id).toBe('spiffe://example.org/ns/default/sa/web');
    const bad = await cli([
      'ca',
      'bundle',
      '--ca',
      dir.file('ca'),
      '--format',
      'der',
      '--out',
      dir.file('b.der'),
    ]);
    expect(bad.code).toBe(2);
  });

  it('validate accepts the documented config and summarises it', async () => {
    const r = await cli(['validate', '-c', dir.file('portcullis.yaml')], '/');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('identity: spiffe://example.org/ns/default/sa/api');
    expect(r.stdout).toContain(
      'listener inbound: 127.0.0.1:15006 -> http://127.0.0.1:8080, mTLS STRICT (PeerAuthentication istio-system/default)',
    );
  });

  it('validate summarises the outbound listener and warns of destinations no bundle can verify', async () => {
    dir.write(
      'out.yaml',
      `${DOCUMENTED_CONFIG}
outbound:
  destinations:
    - host: billing.default.svc
      upstream: https://127.0.0.1:18443
      identities: [spiffe://example.org/ns/billing/sa/billing]
    - host: partner.svc
      upstream: https://127.0.0.1:18444
      trustDomains: [partner.example]
`,
    );
    const r = await cli(['validate', '-c', dir.file('out.yaml')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('outbound: 127.0.0.1:15001 (plain HTTP from the app), unlisted hosts refused');
    expect(r.stdout).toContain(
      'billing.default.svc -> https://127.0.0.1:18443 (mTLS; the server must be spiffe://example.org/ns/billing/sa/billing)',
    );
    expect(r.stdout).toContain(
      'warning: outbound partner.svc: no bundle for trust domain partner.example, so no server of it can be verified',
    );
  });

  it('validate names file, field and problem for every error, with exit code 1', async () => {
    dir.write(
      'bad.yaml',
      DOCUMENTED_CONFIG.replace('certs/api.key', 'certs/web.key').replace('mode: STRICT', 'mode: STRICT'),
    );
    dir.write(
      'policies-bad/p.yaml',
      'apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: { name: p }\nspec: { mtls: { mode: strict } }\n',
    );
    const text = readFileSync(dir.file('bad.yaml'), 'utf8').replace(
      'policies: [policies/]',
      'policies: [policies-bad/]',
    );
    dir.write('bad.yaml', text);
    const r = await cli(['validate', '-c', dir.file('bad.yaml')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      `${dir.file('bad.yaml')}: identity.cert: ${dir.file('certs/api.pem')}: the private key does not match the certificate`,
    );
    expect(r.stderr).toContain(
      `${dir.file('policies-bad/p.yaml')}: PeerAuthentication default/p: spec.mtls.mode: must be one of`,
    );
    const missing = await cli(['validate', '-c', dir.file('nope.yaml')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('nope.yaml: file not found');
  });

  it('validate warns of resources it skips and of policies that apply to no workload here', async () => {
    dir.write(
      'warn-policies/mixed.yaml',
      [
        'apiVersion: networking.istio.io/v1',
        'kind: VirtualService',
        'metadata: { name: api-routes }',
        'spec: { hosts: [api] }',
        '---',
        'apiVersion: security.istio.io/v1',
        'kind: AuthorizationPolicy',
        'metadata: { name: typo, namespace: default }',
        'spec: { selector: { matchLabels: { app: ap } }, action: ALLOW, rules: [{}] }',
        '---',
        'apiVersion: security.istio.io/v1',
        'kind: AuthorizationPolicy',
        'metadata: { name: elsewhere, namespace: other }',
        'spec: { action: DENY, rules: [{}] }',
      ].join('\n'),
    );
    dir.write('warn.yaml', DOCUMENTED_CONFIG.replace('policies: [policies/]', 'policies: [warn-policies/]'));
    const r = await cli(['validate', '-c', dir.file('warn.yaml')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('warning: ');
    expect(r.stdout).toContain(
      'networking.istio.io/v1/VirtualService api-routes is not a security policy; skipped',
    );
    expect(r.stdout).toContain(
      'AuthorizationPolicy default/typo applies to no workload here: its selector {"app":"ap"} does not match the workload labels {"app":"api"}',
    );
    expect(r.stdout).toContain(
      'AuthorizationPolicy other/elsewhere applies to no workload here: its namespace other',
    );
  });

  it('an unknown option is named, with the options the command takes', async () => {
    const r = await cli(['run', '--bogus']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(
      'unknown option --bogus (this command takes --config, --log-format, and --help)',
    );
    expect(r.stderr).not.toContain("place it at the end of the command after '--'");
  });

  it('demo on a taken port suggests --port 0 and leaves no folder (with its CA key) behind', async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const port = (blocker.address() as net.AddressInfo).port;
    const tmp = new TempDir();
    try {
      const r = await new Promise<Run>((resolve) => {
        execFile(
          process.execPath,
          [BIN, 'demo', '--once', '--port', String(port), '--admin-port', '0'],
          { env: { ...process.env, TMPDIR: tmp.path }, timeout: 30_000 },
          (err, stdout, stderr) => resolve({ code: err === null ? 0 : Number(err.code), stdout, stderr }),
        );
      });
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('--port 0 --admin-port 0');
      expect(readdirSync(tmp.path)).toEqual([]);
    } finally {
      blocker.close();
      tmp.cleanup();
    }
  });

  it('check needs no identity block, and asks for --path before reading any config', async () => {
    dir.write(
      'noid.yaml',
      [
        'trustDomain: example.org',
        'workload: { namespace: default, labels: { app: api } }',
        'listeners: [{ name: inbound, address: 127.0.0.1:0, upstream: http://127.0.0.1:8080 }]',
        'policies: [warn-policies/]',
      ].join('\n'),
    );
    const r = await cli([
      'check',
      '-c',
      dir.file('noid.yaml'),
      '--path',
      '/x',
      '--principal',
      'spiffe://example.org/ns/default/sa/web',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const noPath = await cli(['check', '-c', dir.file('does-not-exist.yaml')]);
    expect(noPath.code).toBe(2);
    expect(noPath.stderr).toContain('--path is required');
    const run = await cli(['validate', '-c', dir.file('noid.yaml')]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('identity');
  });

  it('check shows the decision, the deciding policy and rule, and explains with --explain', async () => {
    dir.write(
      'check-policies/authz.yaml',
      [
        'apiVersion: security.istio.io/v1',
        'kind: AuthorizationPolicy',
        'metadata: { name: no-admin }',
        'spec: { action: DENY, rules: [{ to: [{ operation: { paths: ["/admin/*"] } }] }] }',
        '---',
        'apiVersion: security.istio.io/v1',
        'kind: AuthorizationPolicy',
        'metadata: { name: api }',
        'spec:',
        '  rules:',
        '    - from: [{ source: { principals: ["example.org/ns/default/sa/web"] } }]',
        '    - when: [{ key: "request.auth.claims[groups]", values: ["admins"] }]',
      ].join('\n'),
    );
    dir.write(
      'check.yaml',
      DOCUMENTED_CONFIG.replace('policies: [policies/]', 'policies: [check-policies/]'),
    );
    const cfg = ['-c', dir.file('check.yaml')];
    const allowed = await cli([
      'check',
      ...cfg,
      '--principal',
      'spiffe://example.org/ns/default/sa/web',
      '--path',
      '/api/x',
    ]);
    expect(allowed.code).toBe(0);
    expect(allowed.stdout).toContain('decision: ALLOW');
    expect(allowed.stdout).toContain('ALLOW default/api rule[0]');

    const denied = await cli([
      'check',
      ...cfg,
      '--principal',
      'example.org/ns/default/sa/web',
      '--path',
      '/api/../admin/x',
      '--explain',
    ]);
    expect(denied.code).toBe(3);
    expect(denied.stdout).toContain('(normalized from /api/../admin/x)');
    expect(denied.stdout).toContain('reason: denied-by-policy — DENY default/no-admin rule[0]');
    expect(denied.stdout).toContain('DENY default/no-admin: matches (rule[0])');

    const byClaim = await cli([
      'check',
      ...cfg,
      '--path',
      '/x',
      '--jwt-claims',
      '{"iss":"https://idp","sub":"a","groups":["admins"]}',
    ]);
    expect(byClaim.code).toBe(0);
    expect(byClaim.stdout).toContain('request principal: https://idp/a');
    expect(byClaim.stdout).toContain('ALLOW default/api rule[1]');

    const nobody = await cli(['check', ...cfg, '--path', '/x', '--explain']);
    expect(nobody.code).toBe(3);
    expect(nobody.stdout).toContain('reason: no-matching-allow');
    expect(nobody.stdout).toContain(
      'rule[1]: when request.auth.claims[groups]: [] matches none of ["admins"]',
    );
    // Both rules of default/api fail on one condition: the first is the nearest miss.
    expect(nobody.stdout).toContain(
      'nearest miss: ALLOW default/api rule[0], 1 condition failed:\n    from[0] principals: "" is not in ["example.org/ns/default/sa/web"]',
    );

    expect((await cli(['check', ...cfg])).code).toBe(2);
  });

  it('loadtest reports allowed and denied latency apart, and the authorization time from Server-Timing', async () => {
    const { startHarness } = await import('../helpers/harness.js');
    const h = await startHarness({
      policies:
        'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: a }\nspec: { rules: [{ to: [{ operation: { paths: ["/ok/*"] } }] }] }\n',
      config: { serverTiming: true },
    });
    try {
      const files = {
        cert: h.dir.write('c.pem', h.client.cert),
        key: h.dir.write('c.key', h.client.key),
        ca: h.dir.write('ca.pem', h.client.ca),
      };
      const paths = h.dir.write('paths.txt', '# two allowed, one denied\n/ok/a\nGET /ok/b\n/nope\n');
      const r = await cli([
        'loadtest',
        '--target',
        `https://localhost:${h.port}/`,
        '--cert',
        files.cert,
        '--key',
        files.key,
        '--ca',
        files.ca,
        '--paths',
        paths,
        '--rate',
        '60',
        '--duration',
        '2',
        '--connections',
        '3',
        '--no-progress',
      ]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain('open loop: 60 req/s for 2 s (120 requests due), 3 connections');
      const row = (name: string): number =>
        Number(new RegExp(`\\| ${name.replace(/[()/]/g, '\\$&')} \\| (\\d+) \\|`).exec(r.stdout)?.[1] ?? -1);
      expect(row('allowed (2xx/3xx)')).toBeGreaterThan(10);
      expect(row('denied (401/403)')).toBeGreaterThan(5);
      expect(r.stdout).toMatch(/authorization time \(Server-Timing\), µs: p50 [\d.]+, p99 [\d.]+/);
    } finally {
      await h.close();
    }
  });

  it('demo --once makes its calls and they behave', async () => {
    const r = await cli(['demo', '--once', '--port', '0', '--admin-port', '0']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toContain('Every call behaved as expected.');
    expect(r.stdout).toContain('"x-jwt-sub": "alice"');
    // The operator's side of a deny: the explanation the admin server gives for its request id.
    expect(r.stdout).toMatch(/curl http:\/\/127\.0\.0\.1:\d+\/decisions\/[\w-]+\n {4}request id: /);
    expect(r.stdout).toContain(
      'nearest miss: ALLOW default/api-callers rule[0], 1 condition failed:\n        from[0] principals: "example.org/ns/default/sa/db" is not in ["example.org/ns/default/sa/web"]',
    );
    expect(r.stdout).toContain('HTTP 401');
    expect(r.stdout).toContain('HTTP 403');
    // The audit events go to stdout: one JSON line per decision, allowed and denied.
    const events = r.stdout
      .split('\n')
      .filter((l) => l.startsWith('{"version":1'))
      .map((l) => JSON.parse(l) as { decision: string; reason: string });
    expect(events.length).toBe(7);
    expect(events.map((e) => `${e.decision}:${e.reason}`)).toEqual([
      'allow:policy',
      'deny:no-matching-allow',
      'deny:policy',
      'deny:peer-untrusted',
      'deny:peer-untrusted',
      'allow:policy',
      'deny:jwt-invalid',
    ]);
    expect(r.stdout).toContain('unknown-trust-domain');
  });

  it('run serves the documented config as written, reloads on SIGHUP and drains on SIGTERM', async (ctx) => {
    for (const port of [15006, 15000, 8080]) {
      if (!(await portFree(port))) ctx.skip(`port ${port} is in use on this machine`);
    }
    const upstream = new EchoUpstream();
    await new Promise<void>((r) => upstream.server.listen(8080, '127.0.0.1', r));
    // The documented config, plus the documented audit block as written (its collector on :9000 is
    // absent here, so that sink only retries — which must not hold up requests or the exit).
    dir.write('run.yaml', `${DOCUMENTED_CONFIG}${DOCUMENTED_AUDIT}`);
    const child: ChildProcess = spawn(process.execPath, [BIN, 'run', '-c', 'run.yaml'], { cwd: dir.path });
    let stdout = '';
    child.stdout?.on('data', (d) => (stdout += d));
    let stderr = '';
    child.stderr?.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      const end = Date.now() + 10_000;
      while (!stderr.includes('"msg":"ready"')) {
        if (Date.now() > end) throw new Error(`proxy did not start: ${stderr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      expect((await request('http://127.0.0.1:15000/healthz')).status).toBe(200);
      expect((await request('http://127.0.0.1:15000/readyz')).status).toBe(200);
      const client = {
        cert: readFileSync(dir.file('certs/web.pem'), 'utf8'),
        key: readFileSync(dir.file('certs/web.key'), 'utf8'),
        ca: readFileSync(dir.file('certs/bundle.pem'), 'utf8'),
      };
      const res = await request('https://localhost:15006/via-cli', client);
      expect(res.status).toBe(200);
      expect((JSON.parse(res.text) as EchoReply).headers['x-forwarded-client-cert']).toContain(
        'URI=spiffe://example.org/ns/default/sa/web',
      );

      child.kill('SIGHUP');
      const end2 = Date.now() + 5_000;
      while (!stderr.includes('"reason":"SIGHUP"')) {
        if (Date.now() > end2) throw new Error(`no reload logged: ${stderr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(stderr).toContain('"msg":"stopped"');
      // SIGTERM flushed the audit events: the request above is in the file and on stdout.
      const fileEvents = readFileSync(dir.file('audit.ndjson'), 'utf8').trim().split('\n');
      expect(fileEvents.some((l) => l.includes('"path":"/via-cli"'))).toBe(true);
      expect(stdout).toContain('"path":"/via-cli"');
      for (const line of stderr.trim().split('\n')) expect(() => JSON.parse(line)).not.toThrow();
    } finally {
      child.kill('SIGKILL');
      await upstream.close();
    }
  });
});
