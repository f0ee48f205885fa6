// npm run bench [-- --quick] — load-tests Portcullis against the upstream alone, a hand-written
// Node PEP doing the same checks, and HAProxy when it is installed. Every target answers the same
// requests with the same certificates and tokens; each is checked to allow what must be allowed
// and deny what must be denied before it is timed. Runs are interleaved (round-robin) so that
// machine drift hits all targets alike. Writes bench/results/<time>.json, latest.json, latest.svg.
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { cpus, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import autocannon from 'autocannon';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { stringify } from 'yaml';
import { createCa, issueSvid, loadtest } from '../dist/index.js';
import { grpcLoad } from './grpc-load.mjs';
import { h2Load } from './h2-load.mjs';
import { haproxyTarget } from './haproxy.mjs';
import { nodeOptions } from './node-options.mjs';
import { opaTestModule, tarGz } from './opa-test-module.mjs';
import { policiesYaml } from './policies.mjs';
import { measure } from './proc.mjs';
import { startupTimes } from './startup.mjs';
import { writeSvg } from './svg.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean' },
    duration: { type: 'string' },
    connections: { type: 'string' },
    rounds: { type: 'string' },
    only: { type: 'string' },
    // Only the fixed-rate section (CPU, RSS, latency at a fixed arrival rate), with the CPU split
    // by thread when --threads is given: the quick loop for working on per-request cost.
    'fixed-only': { type: 'boolean' },
    threads: { type: 'boolean' },
    rate: { type: 'string' },
  },
});
const QUICK = args.quick === true;
const DURATION = Number(args.duration ?? (QUICK ? 3 : 10));
const ROUNDS = Number(args.rounds ?? (QUICK ? 1 : 3));
const CONNECTIONS = Number(args.connections ?? 32);
const ISSUER = 'https://issuer.bench.portcullis';
const log = (s) => process.stderr.write(`${s}\n`);

// ---------- material: PKI, keys, tokens, policies ----------
const dir = mkdtempSync(join(tmpdir(), 'portcullis-bench-'));
const children = [];
/** Listening port → the pid of the process behind it (for the CPU and RSS readings). */
const pidOfPort = new Map();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});
process.on('SIGINT', () => process.exit(130));

log(
  `Portcullis benchmark (${QUICK ? 'quick' : 'full'}: ${ROUNDS} round(s) × ${DURATION}s per target, ${CONNECTIONS} connections)`,
);
const ca = await createCa('example.org');
const server = await issueSvid(ca, 'spiffe://example.org/ns/default/sa/api', { dnsNames: ['localhost'] });
const web = await issueSvid(ca, 'spiffe://example.org/ns/default/sa/web');
const db = await issueSvid(ca, 'spiffe://example.org/ns/default/sa/db');
const files = {};
for (const [name, text] of Object.entries({
  'ca.pem': ca.certPem,
  'api.pem': server.certPem,
  'api.key': server.keyPem,
  'web.pem': web.certPem,
  'web.key': web.keyPem,
})) {
  files[name] = join(dir, name);
  writeFileSync(files[name], text);
}

const rs = await generateKeyPair('RS256');
const es = await generateKeyPair('ES256');
const jwks = {
  keys: [
    { ...(await exportJWK(rs.publicKey)), kid: 'rs', alg: 'RS256', use: 'sig' },
    { ...(await exportJWK(es.publicKey)), kid: 'es', alg: 'ES256', use: 'sig' },
  ],
};
const sign = (k, kid, alg) =>
  new SignJWT({ sub: 'alice', aud: 'api', groups: ['readers'], scope: 'read' })
    .setProtectedHeader({ alg, kid })
    .setIssuer(ISSUER)
    .setIssuedAt()
    .setExpirationTime('2h')
    .sign(k.privateKey);
const tokens = { rs: await sign(rs, 'rs', 'RS256'), es: await sign(es, 'es', 'ES256') };

const jwksServer = http.createServer((_req, res) => {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify(jwks));
});
await new Promise((r) => jwksServer.listen(0, '127.0.0.1', r));
jwksServer.unref();
const jwksUri = `http://127.0.0.1:${jwksServer.address().port}/jwks.json`;
mkdirSync(join(dir, 'policies'));
writeFileSync(join(dir, 'policies', 'bench.yaml'), policiesYaml(ISSUER, jwksUri));

// ---------- processes ----------
function startProcess(name, script, argv) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(HERE, script), ...argv], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(child);
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /ready (\d+)/.exec(out);
      if (m) {
        pidOfPort.set(Number(m[1]), child.pid);
        resolve(Number(m[1]));
      }
    });
    child.on('exit', (code) => reject(new Error(`${name} exited with ${code}`)));
  });
}

/**
 * Portcullis as users run it: the `portcullis run` command (the bundle, its code cache) with the
 * image's V8 flags. Resolves with the inbound listener's port, read from the `listening` log line.
 */
function startPortcullis(name, configFile) {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [...nodeOptions, join(HERE, '..', 'dist', 'cli', 'launch.cjs'), 'run', '-c', configFile],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    children.push(child);
    let out = '';
    let port = 0;
    // The log (stderr, JSON lines): the port from `listening`; warnings and errors are passed on.
    child.stderr.on('data', (d) => {
      out += d;
      for (let nl = out.indexOf('\n'); nl >= 0; nl = out.indexOf('\n')) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        const m = /"listener":"inbound","address":"[^"]*:(\d+)"/.exec(line);
        if (port === 0 && m !== null && line.includes('"msg":"listening"')) {
          port = Number(m[1]);
          pidOfPort.set(port, child.pid);
          resolve(port);
        } else if (!line.startsWith('{"level":30') && !line.startsWith('{"level":20')) {
          log(`  [${name}] ${line}`);
        }
      }
    });
    child.on('exit', (code) => reject(new Error(`${name} exited with ${code}`)));
  });
}

const upstreamPort = await startProcess('upstream', 'upstream.mjs', []);
const FIXED_ONLY = args['fixed-only'] === true;
const upstream = `http://127.0.0.1:${upstreamPort}`;

function portcullisConfig(name, extra, listenerExtra = {}) {
  const file = join(dir, `${name}.yaml`);
  writeFileSync(
    file,
    stringify({
      trustDomain: 'example.org',
      workload: { namespace: 'default', serviceAccount: 'api', labels: { app: 'api' } },
      identity: {
        cert: files['api.pem'],
        key: files['api.key'],
        bundles: { 'example.org': files['ca.pem'] },
      },
      listeners: [{ name: 'inbound', address: '127.0.0.1:0', upstream, ...listenerExtra }],
      admin: { address: '127.0.0.1:0' },
      watch: false,
      // info: the `listening` line tells the bench the port; nothing is logged per request.
      log: { level: 'info', format: 'json' },
      ...extra,
    }),
  );
  return file;
}

const full = {
  policies: [join(dir, 'policies')],
  serverTiming: true,
  audit: { sinks: [{ type: 'file', path: join(dir, 'audit.ndjson') }] },
};
const portcullis = {
  mtls: await startPortcullis('portcullis-mtls', portcullisConfig('mtls', {})),
  full: await startPortcullis('portcullis-full', portcullisConfig('full', full)),
  noaudit: await startPortcullis(
    'portcullis-noaudit',
    portcullisConfig('noaudit', { policies: full.policies }),
  ),
  // Rego: no `opa` compiler here, so the bundle holds a test module that implements the OPA Wasm
  // ABI (bench/opa-test-module.mjs) and allows inputs that name /api/v1/items — the SDK, the input
  // document and the evaluation path are the real ones.
  rego: await (async () => {
    writeFileSync(
      join(dir, 'authz.tar.gz'),
      tarGz({ '/policy.wasm': await opaTestModule({ allowMarker: '"/api/v1/items' }) }),
    );
    return startPortcullis(
      'portcullis-rego',
      portcullisConfig('rego', full, { rego: { bundle: join(dir, 'authz.tar.gz') } }),
    );
  })(),
  // The same, as a cluster of two workers (one audit writer: the primary).
  full2: await startPortcullis(
    'portcullis-2-workers',
    portcullisConfig('full2', {
      ...full,
      workers: 2,
      audit: { sinks: [{ type: 'file', path: join(dir, 'audit-2.ndjson') }] },
    }),
  ),
  // Every decision kept for /decisions/<id> (the default keeps denies only, which this bench has none of).
  explainall: await startPortcullis(
    'portcullis-explain-all',
    portcullisConfig('explainall', {
      ...full,
      admin: { address: '127.0.0.1:0', decisions: { record: 'all' } },
      audit: { sinks: [{ type: 'file', path: join(dir, 'audit-explain.ndjson') }] },
    }),
  ),
  nocache: await startPortcullis(
    'portcullis-nocache',
    portcullisConfig('nocache', { ...full, jwt: { cacheSize: 0 }, audit: undefined }),
  ),
};
writeFileSync(
  join(dir, 'baseline.json'),
  JSON.stringify({
    cert: files['api.pem'],
    key: files['api.key'],
    ca: files['ca.pem'],
    upstream,
    jwks,
    issuer: ISSUER,
    audience: 'api',
    allowedPeers: ['spiffe://example.org/ns/default/sa/web'],
  }),
);
const baselinePort = await startProcess('baseline', 'baseline.mjs', [join(dir, 'baseline.json')]);

const PATH = '/api/v1/items/42';
const tlsClient = { cert: web.certPem, key: web.keyPem, ca: ca.certPem };
const targets = [
  { name: 'upstream alone', url: `${upstream}${PATH}`, tls: false, token: null, enforces: false },
  { name: 'portcullis mTLS only', port: portcullis.mtls, token: null, enforces: false },
  {
    name: 'portcullis everything (RS256, audit)',
    port: portcullis.full,
    token: tokens.rs,
    enforces: true,
    key: 'full',
  },
  { name: 'portcullis everything (ES256, audit)', port: portcullis.full, token: tokens.es, enforces: true },
  {
    name: 'portcullis everything, 2 workers',
    port: portcullis.full2,
    token: tokens.rs,
    enforces: true,
    key: 'full2',
  },
  {
    name: 'portcullis everything, audit off',
    port: portcullis.noaudit,
    token: tokens.rs,
    enforces: true,
    key: 'noaudit',
  },
  {
    name: 'portcullis everything, every decision kept (decisions record: all)',
    port: portcullis.explainall,
    token: tokens.rs,
    enforces: true,
    key: 'explainall',
  },
  {
    name: 'portcullis everything, no token cache',
    port: portcullis.nocache,
    token: tokens.rs,
    enforces: true,
  },
  {
    name: 'portcullis everything + Rego (wasm)',
    port: portcullis.rego,
    token: tokens.rs,
    enforces: true,
    key: 'rego',
  },
  {
    name: 'hand-written Node PEP (baseline)',
    port: baselinePort,
    token: tokens.rs,
    enforces: true,
    key: 'baseline',
  },
];
const hap = await haproxyTarget({
  dir,
  files,
  upstreamPort,
  jwks,
  issuer: ISSUER,
  log,
  spawnChild: (c) => children.push(c),
});
if (hap.target !== null) targets.push({ ...hap.target, token: tokens.rs });
for (const t of targets) if (t.url === undefined) t.url = `https://localhost:${t.port}${PATH}`;
const selected =
  args.only === undefined
    ? targets
    : targets.filter((t) => t.name.includes(args.only) || t.name === 'upstream alone');

// ---------- enforcement check ----------
function once(url, opts) {
  return new Promise((resolve) => {
    const u = new URL(url);
    const mod = u.protocol === 'https:' ? https : http;
    const req = mod.request(
      {
        hostname: u.hostname,
        port: u.port,
        path: u.pathname,
        method: opts.method ?? 'GET',
        headers: opts.headers,
        agent: false,
        servername: 'localhost',
        ...(u.protocol === 'https:' ? opts.tls : {}),
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      },
    );
    req.on('error', () => resolve(0));
    req.end();
  });
}

async function enforces(t) {
  const bearer = { authorization: `Bearer ${t.token}` };
  const ok = await once(t.url, { tls: tlsClient, headers: bearer });
  if (ok !== 200) return `the allowed request got ${ok}`;
  const checks = [
    [
      'no client certificate',
      once(t.url, { tls: { ca: ca.certPem }, headers: bearer }),
      (s) => s === 0 || s === 403,
    ],
    [
      'another workload (sa/db)',
      once(t.url, { tls: { cert: db.certPem, key: db.keyPem, ca: ca.certPem }, headers: bearer }),
      (s) => s === 0 || s === 403,
    ],
    ['no token', once(t.url, { tls: tlsClient, headers: {} }), (s) => s === 401 || s === 403],
    [
      'a bad token',
      once(t.url, { tls: tlsClient, headers: { authorization: `Bearer ${t.token.slice(0, -4)}AAAA` } }),
      (s) => s === 401,
    ],
    [
      'a forbidden path',
      once(t.url.replace(PATH, '/admin/users'), { tls: tlsClient, headers: bearer }),
      (s) => s === 403,
    ],
    [
      'a forbidden method',
      once(t.url, { tls: tlsClient, headers: bearer, method: 'DELETE' }),
      (s) => s === 403,
    ],
  ];
  for (const [what, p, good] of checks) {
    const s = await p;
    if (!good(s)) return `${what} got ${s}`;
  }
  return null;
}

for (const t of selected) {
  if (!t.enforces) continue;
  const problem = await enforces(t);
  if (problem !== null) {
    log(`  ${t.name}: NOT ENFORCING (${problem}) — left out of the comparison`);
    t.excluded = problem;
  }
}
const timed = selected.filter((t) => t.excluded === undefined);

// ---------- load ----------
function cannon(t, duration, extra = {}) {
  return autocannon({
    url: t.url,
    connections: CONNECTIONS,
    duration,
    headers: t.token ? { authorization: `Bearer ${t.token}` } : {},
    tlsOptions: t.url.startsWith('https') ? { ...tlsClient, servername: 'localhost' } : undefined,
    ...extra,
  });
}

for (const t of timed) t.pid ??= t.port === undefined ? pidOfPort.get(upstreamPort) : pidOfPort.get(t.port);

// The fixed-rate section runs first, on fresh processes: its RSS is that of a proxy that has only
// ever seen the fixed rate, not one whose heap grew under the saturation rounds.
// At a fixed arrival rate: what each proxy costs in CPU and memory at the load a sidecar really
// runs at, and its latency there (a closed-loop test at full load measures the queue, not the
// proxy). CPU is the target process's own (user + system, all threads) per wall second; the load
// generator's is not counted. Same connections and rate for every target.
const RATE = Number(args.rate ?? 1000);
const FIXED_SECONDS = QUICK ? 5 : 10;
const fixed = {};
const FIXED_TARGETS = ['upstream alone', 'portcullis mTLS only', 'full', 'full2', 'baseline', 'haproxy'];
for (const id of FIXED_TARGETS) {
  const t = timed.find((x) => x.key === id || x.name === id);
  if (t === undefined) continue;
  // An open-loop schedule (request i due at start + i/rate, evenly spaced; latency from when it was
  // due): autocannon's rate limit instead fires each second's requests in a burst at the top of the
  // second, which measures a queue at concurrency 10, not a steady rate.
  const schedule = (durationSeconds) =>
    loadtest({
      target: t.url,
      ...(t.url.startsWith('https')
        ? { cert: files['web.pem'], key: files['web.key'], ca: files['ca.pem'], servername: 'localhost' }
        : {}),
      ...(t.token ? { jwt: t.token } : {}),
      method: 'GET',
      rate: RATE,
      durationSeconds,
      connections: 10,
      timeoutMs: 10_000,
      json: true,
      progress: false,
    });
  // Two seconds at the same rate first (not measured): a cold process compiles its request path
  // while the first requests queue, which would otherwise be most of the p99 of a 10 s run. Each
  // run still opens its 10 connections (TLS handshakes, SPIFFE checks) inside its own window.
  await schedule(2);
  const m = await measure(t.pid === undefined ? [] : [t.pid], () => schedule(FIXED_SECONDS), {
    perThread: args.threads === true,
  });
  const r = m.result;
  const lat = r.latencyMs.allowed;
  fixed[t.name] = {
    rate: RATE,
    served: Math.round(r.achievedRate),
    vcpu: m.vcpu,
    vcpuPer1000: m.vcpu === null ? null : (m.vcpu * 1000) / r.achievedRate,
    rssMiB: m.rssMiB,
    pssMiB: m.pssMiB,
    p50: lat.p50,
    p90: lat.p90,
    p99: lat.p99,
    authzP50Micros: r.authzMicros?.p50 ?? null,
    authzP99Micros: r.authzMicros?.p99 ?? null,
    errors: r.requests.errors,
    refused: r.latencyMs.denied.count + r.latencyMs.other.count,
  };
  const f = fixed[t.name];
  log(
    `  fixed ${RATE} req/s  ${t.name.padEnd(42)} ${f.vcpu === null ? 'vCPU n/a' : `${f.vcpu.toFixed(3)} vCPU (${f.vcpuPer1000.toFixed(3)} per 1000 req/s)`}  RSS ${f.rssMiB === null ? 'n/a' : `${f.rssMiB.toFixed(0)} MiB`}  p50 ${f.p50} ms  p99 ${f.p99} ms${f.authzP50Micros === null ? '' : `  authz p50 ${f.authzP50Micros} µs p99 ${f.authzP99Micros} µs`}  errors ${f.errors}  refused ${f.refused}`,
  );
  if (m.threads !== null) {
    for (const th of m.threads.slice(0, 8))
      log(`      thread ${th.tid} ${th.name.padEnd(16)} ${th.vcpu.toFixed(3)} vCPU`);
  }
}

// Startup, run → /readyz 200, with the everything-on config: the shipped command (bundle, code
// cache — written by the targets above — and the image's V8 flags) next to the unbundled CLI that
// tsc writes (what `portcullis` was before the bundle), 10 starts each, alternating.
const STARTS = QUICK ? 5 : 10;
const startupConfig = portcullisConfig('startup', full);
const startup = {
  bundled: await startupTimes(
    [...nodeOptions, join(HERE, '..', 'dist', 'cli', 'launch.cjs'), 'run', '-c', startupConfig],
    STARTS,
  ),
  unbundled: await startupTimes(
    [join(HERE, '..', 'dist', 'cli', 'main.js'), 'run', '-c', startupConfig],
    STARTS,
  ),
};
log(
  `  startup (run → /readyz 200, median of ${STARTS}): portcullis ${startup.bundled.median} ms (${startup.bundled.min}–${startup.bundled.max}); unbundled CLI, no code cache ${startup.unbundled.median} ms (${startup.unbundled.min}–${startup.unbundled.max})`,
);
if (FIXED_ONLY) process.exit(0);

for (const t of timed) {
  t.runs = [];
  await cannon(t, 1); // warm-up: JIT, connections, caches
}
for (let round = 1; round <= ROUNDS; round++) {
  for (const t of timed) {
    // The target's own CPU over the round: at saturation, vCPU per 1000 req/s is its cost per request.
    const m = await measure(t.pid === undefined ? [] : [t.pid], () => cannon(t, DURATION));
    const r = m.result;
    t.runs.push(r);
    (t.cpu ??= []).push(m.vcpu === null ? null : (m.vcpu * 1000) / r.requests.average);
    log(
      `  round ${round}/${ROUNDS}  ${t.name.padEnd(42)} ${Math.round(r.requests.average).toString().padStart(7)} req/s  p99 ${r.latency.p99} ms  errors ${r.errors}  non-2xx ${r.non2xx}`,
    );
  }
}

// gRPC unary calls: the service directly (h2c) and through Portcullis (mTLS + HTTP/2 in, h2c out,
// one ALLOW policy on the method), driven alike by grpc-js, interleaved over the rounds.
const grpcPort = await startProcess('grpc-upstream', 'grpc-upstream.mjs', []);
mkdirSync(join(dir, 'grpc-policies'));
writeFileSync(
  join(dir, 'grpc-policies', 'grpc.yaml'),
  stringify({
    apiVersion: 'security.istio.io/v1',
    kind: 'AuthorizationPolicy',
    metadata: { name: 'grpc', namespace: 'default' },
    spec: {
      selector: { matchLabels: { app: 'api' } },
      action: 'ALLOW',
      rules: [
        {
          from: [{ source: { principals: ['example.org/ns/default/sa/web'] } }],
          to: [{ operation: { paths: ['/bench.Echo/*'] } }],
        },
      ],
    },
  }),
);
const grpcProxyPort = await startPortcullis(
  'portcullis-grpc',
  portcullisConfig(
    'grpc',
    { policies: [join(dir, 'grpc-policies')] },
    { upstream: `http://127.0.0.1:${grpcPort}`, http2: true, upstreamProtocol: 'http2' },
  ),
);
const grpcCreds = grpc.credentials.createSsl(
  Buffer.from(ca.certPem),
  Buffer.from(web.keyPem),
  Buffer.from(web.certPem),
);
const grpcRuns = { direct: [], portcullis: [] };
for (let round = 1; round <= ROUNDS; round++) {
  const d = await grpcLoad(`127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure(), {
    seconds: DURATION,
    concurrency: CONNECTIONS,
  });
  grpcRuns.direct.push(d);
  const p = await grpcLoad(`localhost:${grpcProxyPort}`, grpcCreds, {
    seconds: DURATION,
    concurrency: CONNECTIONS,
  });
  grpcRuns.portcullis.push(p);
  log(
    `  round ${round}/${ROUNDS}  gRPC unary: direct ${d.callsPerSec} calls/s p99 ${d.p99.toFixed(1)} ms; through Portcullis ${p.callsPerSec} calls/s p99 ${p.p99.toFixed(1)} ms (errors ${d.errors}/${p.errors})`,
  );
}

// HTTP/2 requests (not gRPC): the same request and checks as the HTTP/1.1 targets, over mTLS h2
// to Portcullis (HTTP/1.1 to the upstream), next to a bare HTTP/2 server that verifies the client
// certificate and answers at once (the driver's own cost), all driven by one node:http2 driver.
const h2Port = await startProcess('h2-upstream', 'h2-upstream.mjs', [
  files['api.pem'],
  files['api.key'],
  files['ca.pem'],
]);
const h2Tls = { ...tlsClient, servername: 'localhost' };
const H2_TARGETS = [
  ['bare HTTP/2 server (mTLS, no checks)', h2Port, {}],
  ['Portcullis mTLS only', portcullis.mtls, {}],
  ['Portcullis everything (RS256, audit)', portcullis.full, { authorization: `Bearer ${tokens.rs}` }],
];
const h2Runs = Object.fromEntries(H2_TARGETS.map(([name]) => [name, []]));
for (let round = 1; round <= ROUNDS; round++) {
  for (const [name, port, headers] of H2_TARGETS) {
    const r = await h2Load(`https://localhost:${port}`, h2Tls, {
      seconds: DURATION,
      concurrency: CONNECTIONS,
      path: PATH,
      headers,
    });
    h2Runs[name].push(r);
    log(
      `  round ${round}/${ROUNDS}  HTTP/2 ${name.padEnd(38)} ${String(r.reqPerSec).padStart(7)} req/s  p99 ${r.p99.toFixed(1)} ms  errors ${r.errors}  non-2xx ${r.non2xx}`,
    );
  }
}

// ---------- report ----------
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const rows = timed.map((t) => {
  const rates = t.runs.map((r) => r.requests.average);
  return {
    target: t.name,
    reqPerSec: Math.round(mean(rates)),
    // Spread across rounds: what the same target measured from one round to the next.
    minReqPerSec: Math.round(Math.min(...rates)),
    maxReqPerSec: Math.round(Math.max(...rates)),
    p50: mean(t.runs.map((r) => r.latency.p50)),
    p90: mean(t.runs.map((r) => r.latency.p90)),
    p99: mean(t.runs.map((r) => r.latency.p99)),
    errors: t.runs.reduce((a, r) => a + r.errors, 0),
    non2xx: t.runs.reduce((a, r) => a + r.non2xx, 0),
    key: t.key,
  };
});
const timedBy = (k) => timed.find((t) => t.key === k);
const round2 = (x) => Math.round(x * 100) / 100;
/**
 * A ratio of two targets' throughput: the mean over rounds, and its range (each round's ratio, the
 * two targets measured back to back in that round).
 */
function ratio(a, b) {
  const ta = typeof a === 'string' ? timedBy(a) : a;
  const tb = typeof b === 'string' ? timedBy(b) : b;
  if (ta === undefined || tb === undefined) return null;
  const per = ta.runs.map((r, i) => r.requests.average / tb.runs[i].requests.average);
  return {
    value: round2(
      mean(ta.runs.map((r) => r.requests.average)) / mean(tb.runs.map((r) => r.requests.average)),
    ),
    min: round2(Math.min(...per)),
    max: round2(Math.max(...per)),
  };
}
const mtlsOnly = timed.find((t) => t.name === 'portcullis mTLS only');
const RATIOS = [
  ['everythingVsBaseline', 'everything on / hand-written Node PEP', ratio('full', 'baseline'), 2.5, '≥ 2.5×'],
  ['everythingVsHaproxy', 'everything on / HAProxy', ratio('full', 'haproxy'), 1.0, '≥ 1.0×'],
  ['everythingVsMtlsOnly', 'everything on / mTLS only', ratio(timedBy('full'), mtlsOnly), 0.9, '≥ 0.9×'],
  ['auditOnVsOff', 'audit on / audit off', ratio('full', 'noaudit'), null, 'no measurable cost'],
  [
    'decisionsAllVsDeny',
    'decisions ring keeping every request / denies only',
    ratio('explainall', 'full'),
    null,
    'no measurable cost',
  ],
  ['twoWorkersVsOne', 'everything on: 2 workers / 1', ratio('full2', 'full'), null, ''],
  ['regoVsEverything', 'everything + Rego / everything', ratio('rego', 'full'), null, ''],
];
const ratios = Object.fromEntries(RATIOS.map(([k, , r]) => [k, r]));
const fmtRatio = (r) =>
  r === null
    ? 'n/a'
    : ROUNDS > 1
      ? `${r.value.toFixed(2)}× (rounds ${r.min.toFixed(2)}–${r.max.toFixed(2)}×)`
      : `${r.value.toFixed(2)}×`;
const verdict = (r, goal) =>
  r === null || goal === null ? '' : r.value >= goal ? ' — met' : ' — **missed**';

const table = [
  `| target | req/s | range over rounds | p50 ms | p90 ms | p99 ms | errors | non-2xx |`,
  `|---|---:|---:|---:|---:|---:|---:|---:|`,
  ...rows.map(
    (r) =>
      `| ${r.target} | ${r.reqPerSec} | ${r.minReqPerSec}–${r.maxReqPerSec} | ${r.p50.toFixed(2)} | ${r.p90.toFixed(2)} | ${r.p99.toFixed(2)} | ${r.errors} | ${r.non2xx} |`,
  ),
].join('\n');
const ratioTable = [
  '| ratio of throughput (same run) | measured | target |',
  '|---|---:|---:|',
  ...RATIOS.map(
    ([k, label, r, goal, target]) =>
      `| ${label} | ${k === 'everythingVsHaproxy' && r === null ? `n/a (${hap.note})` : fmtRatio(r)} | ${target}${verdict(r, goal)} |`,
  ),
].join('\n');
// CPU and memory: per request at saturation (the rounds above) and at a fixed 1000 req/s.
const fmt = (x, d) => (x === null || x === undefined || Number.isNaN(x) ? 'n/a' : x.toFixed(d));
const cpuTable = [
  `| target | req/s at saturation | vCPU per 1000 req/s at saturation | at a fixed ${RATE} req/s: vCPU | RSS (PSS) MiB | p50 ms | p99 ms | authz p50 / p99 µs |`,
  '|---|---:|---:|---:|---:|---:|---:|---:|',
  ...Object.entries(fixed).map(([name, f]) => {
    const t = timed.find((x) => x.name === name);
    const sat = t?.runs.length ? Math.round(mean(t.runs.map((r) => r.requests.average))) : null;
    const cpu = t?.cpu?.every((c) => c !== null) && t.cpu.length > 0 ? mean(t.cpu) : null;
    return `| ${name} | ${sat ?? 'n/a'} | ${fmt(cpu, 3)} | ${fmt(f.vcpu, 3)} | ${fmt(f.rssMiB, 0)} (${fmt(f.pssMiB, 0)}) | ${f.p50} | ${f.p99} | ${f.authzP50Micros === null ? '–' : `${f.authzP50Micros} / ${f.authzP99Micros}`} |`;
  }),
].join('\n');
const fullFixed = fixed['portcullis everything (RS256, audit)'];
const fullCpuSat = timedBy('full')?.cpu?.every((c) => c !== null) ? mean(timedBy('full').cpu) : null;
const targetRow = (label, value, unit, goal) =>
  `| ${label} | ${value === null || value === undefined ? 'n/a' : `${value}${unit}`} | ≤ ${goal}${unit}${value === null || value === undefined ? '' : value <= goal ? ' — met' : ' — **missed**'} |`;
const targetsTable = [
  '| goal for a sidecar | measured | goal |',
  '|---|---:|---:|',
  targetRow(
    'vCPU per 1000 req/s at saturation, everything on',
    fullCpuSat === null ? null : Number(fullCpuSat.toFixed(3)),
    '',
    0.1,
  ),
  targetRow(
    `vCPU at a fixed ${RATE} req/s, everything on`,
    fullFixed?.vcpuPer1000 == null ? null : Number(fullFixed.vcpuPer1000.toFixed(3)),
    '',
    0.1,
  ),
  targetRow(
    `RSS at a fixed ${RATE} req/s, everything on`,
    fullFixed?.rssMiB == null ? null : Math.round(fullFixed.rssMiB),
    ' MiB',
    64,
  ),
  targetRow('startup, run → /readyz', startup.bundled.median, ' ms', 300),
].join('\n');
const startupLine = `Startup, \`portcullis run\` → /readyz 200, everything-on config (median of ${startup.bundled.runs}): ${startup.bundled.median} ms (${startup.bundled.min}–${startup.bundled.max}); the unbundled CLI without a code cache: ${startup.unbundled.median} ms (${startup.unbundled.min}–${startup.unbundled.max}). Portcullis runs with ${nodeOptions.join(' ') || 'no extra V8 flags'} (the image's).`;
const grpcRow = (name, runs) =>
  `| ${name} | ${Math.round(mean(runs.map((r) => r.callsPerSec)))} | ${Math.min(...runs.map((r) => r.callsPerSec))}–${Math.max(...runs.map((r) => r.callsPerSec))} | ${mean(runs.map((r) => r.p50)).toFixed(2)} | ${mean(runs.map((r) => r.p99)).toFixed(2)} | ${runs.reduce((a, r) => a + r.errors, 0)} |`;
const grpcTable = [
  `| gRPC unary (${CONNECTIONS} calls in flight, grpc-js) | calls/s | range over rounds | p50 ms | p99 ms | errors |`,
  '|---|---:|---:|---:|---:|---:|',
  grpcRow('service directly (h2c)', grpcRuns.direct),
  grpcRow('through Portcullis (mTLS h2 in, SPIFFE, policy, h2c out)', grpcRuns.portcullis),
].join('\n');
const h2Row = (name, runs) =>
  `| ${name} | ${Math.round(mean(runs.map((r) => r.reqPerSec)))} | ${Math.min(...runs.map((r) => r.reqPerSec))}–${Math.max(...runs.map((r) => r.reqPerSec))} | ${mean(runs.map((r) => r.p50)).toFixed(2)} | ${mean(runs.map((r) => r.p99)).toFixed(2)} | ${runs.reduce((a, r) => a + r.errors + r.non2xx, 0)} |`;
const h2Table = [
  `| HTTP/2 (${CONNECTIONS} streams in flight over 4 connections, node:http2) | req/s | range over rounds | p50 ms | p99 ms | errors + non-2xx |`,
  '|---|---:|---:|---:|---:|---:|',
  ...Object.entries(h2Runs).map(([name, runs]) => h2Row(name, runs)),
].join('\n');
const noise =
  ROUNDS > 1
    ? `Each ratio is the mean over ${ROUNDS} interleaved rounds; the range gives each round's ratio.`
    : 'One round only (--quick): there is no spread to report, and on a shared 2-core machine a ratio can move by ±15 % or more from one run to the next. Use the full run (3 rounds) for figures to quote.';
const cpu = cpus()[0]?.model ?? 'unknown CPU';
const machine = `${cpus().length} × ${cpu}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
console.log(
  `\n${table}\n\n${ratioTable}\n\n${cpuTable}\n\n${targetsTable}\n\n${startupLine}\n\n${grpcTable}\n\n${h2Table}\n\n${noise}\n`,
);
console.log(`machine: ${machine}`);
for (const t of selected.filter((x) => x.excluded)) console.log(`not compared: ${t.name} (${t.excluded})`);

const report = {
  time: new Date().toISOString(),
  mode: QUICK ? 'quick' : 'full',
  machine,
  durationSeconds: DURATION,
  rounds: ROUNDS,
  connections: CONNECTIONS,
  rows,
  ratios,
  fixedRate: fixed,
  cpuPer1000AtSaturation: Object.fromEntries(timed.map((t) => [t.name, t.cpu ?? null])),
  startup,
  nodeOptions,
  grpc: grpcRuns,
  http2: h2Runs,
  haproxy: hap.note,
  excluded: selected.filter((x) => x.excluded).map((x) => ({ target: x.name, why: x.excluded })),
};
// Quick runs never overwrite the committed results of a full run.
const resultsDir = QUICK ? join(HERE, 'results', 'quick') : join(HERE, 'results');
const shown = QUICK ? 'bench/results/quick' : 'bench/results';
mkdirSync(resultsDir, { recursive: true });
const stamp = report.time.replace(/[:.]/g, '-');
writeFileSync(join(resultsDir, `${stamp}.json`), `${JSON.stringify(report, null, 2)}\n`);
writeFileSync(join(resultsDir, 'latest.json'), `${JSON.stringify(report, null, 2)}\n`);
writeSvg(join(resultsDir, 'latest.svg'), report);
writeFileSync(
  join(resultsDir, 'latest.md'),
  `${report.mode} run, ${report.time}: ${ROUNDS} round(s) × ${DURATION} s per target, ${CONNECTIONS} connections, interleaved\n\n${table}\n\n${ratioTable}\n\n${cpuTable}\n\n${targetsTable}\n\n${startupLine}\n\n${grpcTable}\n\n${h2Table}\n\n${noise}\n\nmachine: ${machine}\n`,
);
log(`\nwrote ${shown}/${stamp}.json, latest.json, latest.svg, latest.md`);

// The hot-path micro-benchmarks, in a process of their own (they need --expose-gc and a large
// young generation to measure allocation).
for (const c of children) c.kill('SIGTERM');
log('\nmicro-benchmarks:');
spawnSync(
  process.execPath,
  [
    '--expose-gc',
    '--max-semi-space-size=128',
    join(HERE, 'micro.mjs'),
    ...(QUICK ? ['--quick'] : []),
    resultsDir,
  ],
  {
    stdio: 'inherit',
  },
);
process.exit(0);
