// Micro-benchmarks of the hot path, with bytes allocated per operation.
// Run: node --expose-gc --max-semi-space-size=128 bench/micro.mjs   (npm run bench runs it too)
// Timing: the median of many batch means (robust to a noisy shared machine). Allocation: heap
// growth over a batch run with the young generation large enough that no GC runs during it
// (a GC during the run is reported; then the figure is only an upper bound).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { exportJWK, generateKeyPair, jwtVerify, SignJWT } from 'jose';
import pino from 'pino';
import { JwksRegistry } from '../dist/authn/jwks.js';
import { requestAttributes } from '../dist/authz/attributes.js';
import { Authorizer, Decision } from '../dist/authz/compile.js';
import { SpiffeId } from '../dist/identity/spiffe-id.js';
import { parseAuthorizationPolicy } from '../dist/istio/authorization-policy.js';
import { loadPolicies } from '../dist/istio/load.js';
import { RequestContext } from '../dist/proxy/context.js';
import { JwtStage } from '../dist/proxy/stages/jwt.js';
import { RequestLineStage } from '../dist/proxy/stages/request-line.js';
import { policiesYaml } from './policies.mjs';

if (typeof globalThis.gc !== 'function') {
  console.error('run with: node --expose-gc --max-semi-space-size=128 bench/micro.mjs');
  process.exit(2);
}
const HERE = dirname(fileURLToPath(import.meta.url));
const silent = pino({ level: 'silent' });
let gcs = 0;
new PerformanceObserver((l) => {
  gcs += l.getEntries().length;
}).observe({ entryTypes: ['gc'] });

/** Runs fn `batch` times per sample; returns median ns/op and bytes/op. */
const QUICK = process.argv.includes('--quick');
/** The connection and listener settings the request-path benchmarks describe requests with. */
const CONN = {
  sourceAddress: '127.0.0.1',
  sourcePort: 40000,
  destinationAddress: '127.0.0.1',
  tls: true,
  sni: '',
  peerId: 'spiffe://example.org/ns/default/sa/web',
  peerPrincipal: 'example.org/ns/default/sa/web',
  peerNamespace: 'default',
};
const SETTINGS = { workloadPort: 8080, normalization: 'BASE', trustedProxies: 0 };

async function measure(name, fn, { batch = 10_000, samples = QUICK ? 30 : 100 } = {}) {
  for (let i = 0; i < batch * 5; i++) fn(i); // warm-up (JIT)
  // Allocation first, in a loop that does nothing else (no timer reads, no arrays).
  const n = batch * samples;
  globalThis.gc();
  await new Promise((r) => setImmediate(r));
  const gcBefore = gcs;
  const heapBefore = process.memoryUsage().heapUsed;
  for (let i = 0; i < n; i++) fn(i);
  const heapAfter = process.memoryUsage().heapUsed;
  await new Promise((r) => setTimeout(r, 20));
  const gcDuring = gcs - gcBefore;
  const times = new Float64Array(samples);
  for (let s = 0; s < samples; s++) {
    const t0 = performance.now();
    for (let i = 0; i < batch; i++) fn(i);
    times[s] = ((performance.now() - t0) * 1e6) / batch;
  }
  times.sort();
  const r = {
    name,
    medianNs: Math.round(times[Math.floor(times.length / 2)] * 10) / 10,
    bytesPerOp: Math.max(0, Math.round(((heapAfter - heapBefore) / n) * 100) / 100),
    gcDuringRun: gcDuring,
  };
  console.log(
    `${name.padEnd(58)} ${String(r.medianNs).padStart(9)} ns/op  ${String(r.bytesPerOp).padStart(7)} B/op${r.gcDuringRun ? `  (${r.gcDuringRun} GC: upper bound)` : ''}`,
  );
  return r;
}

async function measureAsync(name, fn, n) {
  for (let i = 0; i < 50; i++) await fn();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await fn();
  const ns = Number(process.hrtime.bigint() - t0) / n;
  const r = { name, medianNs: Math.round(ns), bytesPerOp: null, gcDuringRun: null };
  console.log(
    `${name.padEnd(58)} ${String(r.medianNs).padStart(9)} ns/op  (mean; async, allocates by design)`,
  );
  return r;
}

const attrs = (over = {}) => ({
  method: 'GET',
  host: 'api.example.org',
  path: '/api/v1/items/42',
  query: '',
  headers: {},
  sourceAddress: '10.0.0.5',
  sourcePort: 1,
  remoteAddress: '10.0.0.5',
  destinationAddress: '10.0.0.1',
  destinationPort: 8080,
  sni: '',
  peerPrincipal: 'example.org/ns/default/sa/web',
  peerNamespace: 'default',
  requestPrincipal: 'https://issuer.bench.portcullis/alice',
  claims: { sub: 'alice', groups: ['readers'], scope: 'read' },
  audiences: ['api'],
  presenter: '',
  ...over,
});

const results = [];
const dir = mkdtempSync(join(tmpdir(), 'portcullis-micro-'));
try {
  // The benchmark's realistic set: 20 AuthorizationPolicies (and a RequestAuthentication).
  mkdirSync(join(dir, 'p'));
  writeFileSync(
    join(dir, 'p', 'bench.yaml'),
    policiesYaml('https://issuer.bench.portcullis', 'http://127.0.0.1:1/jwks.json'),
  );
  const set = loadPolicies([join(dir, 'p')], 'default').authorizationPolicies;
  const workload = { namespace: 'default', labels: { app: 'api' } };
  const out = new Decision();
  const reqs = [
    attrs(),
    attrs({ path: '/admin/users' }),
    attrs({ method: 'DELETE' }),
    attrs({ path: '/svc3/x', peerPrincipal: 'example.org/ns/team3/sa/a' }),
  ];
  for (const n of [1, 20, 500]) {
    let policies;
    if (n === 20) policies = set;
    else {
      policies = [];
      for (let i = 0; i < n; i++) {
        const spec = {
          rules: [
            {
              from: [{ source: { principals: [`example.org/ns/team${i}/sa/*`] } }],
              to: [{ operation: { methods: ['GET'], paths: [`/svc${i}/*`, `/api/v2/svc${i}/{*}/detail`] } }],
            },
          ],
        };
        policies.push(
          parseAuthorizationPolicy(
            { name: `p${i}`, namespace: 'default', annotations: {}, origin: { file: 'x', index: i } },
            spec,
            (f, m) => {
              throw new Error(`${f} ${m}`);
            },
          ),
        );
      }
    }
    const authz = Authorizer.forWorkload(policies, workload, 'istio-system');
    results.push(
      await measure(
        `decision, ${n} polic${n === 1 ? 'y' : 'ies'}${n === 20 ? ' (the load test set)' : ''}`,
        (i) => authz.decide(reqs[i & 3], out),
      ),
    );
  }

  // JWT: a cached token through the JWT stage (a map lookup), and uncached signature checks.
  const rs = await generateKeyPair('RS256');
  const es = await generateKeyPair('ES256');
  const jwk = { ...(await exportJWK(es.publicKey)), kid: 'es', alg: 'ES256' };
  const rsJwk = { ...(await exportJWK(rs.publicKey)), kid: 'rs', alg: 'RS256' };
  const issuer = 'https://issuer.bench.portcullis';
  const esToken = await new SignJWT({ sub: 'alice', aud: 'api' })
    .setProtectedHeader({ alg: 'ES256', kid: 'es' })
    .setIssuer(issuer)
    .setExpirationTime('1h')
    .sign(es.privateKey);
  const rsToken = await new SignJWT({ sub: 'alice', aud: 'api' })
    .setProtectedHeader({ alg: 'RS256', kid: 'rs' })
    .setIssuer(issuer)
    .setExpirationTime('1h')
    .sign(rs.privateKey);
  const registry = new JwksRegistry({ refreshIntervalMs: 3_600_000, minRefetchIntervalMs: 30_000 }, silent);
  const rule = {
    issuer,
    audiences: ['api'],
    jwksUri: null,
    jwks: JSON.stringify({ keys: [jwk, rsJwk] }),
    fromHeaders: [],
    fromParams: [],
    fromCookies: [],
    defaultLocations: true,
    outputPayloadToHeader: null,
    forwardOriginalToken: true,
    outputClaimToHeaders: [],
    timeoutMs: 5000,
    source: 'bench',
  };
  const stage = new JwtStage([rule], registry, { clockSkewMs: 60_000, cacheSize: 1000 }, silent);
  const makeCtx = (token) => {
    const head = {
      method: 'GET',
      target: '/api/v1/items/42',
      headers: { host: 'api', authorization: `Bearer ${token}`, 'x-request-id': 'bench' },
      httpVersion: '1.1',
    };
    const attrs = requestAttributes(CONN, head, SETTINGS, Date.now());
    return new RequestContext(attrs, head.target, [], false, '', '');
  };
  await stage.run(makeCtx(esToken)); // verify once, now cached
  const ctxs = Array.from({ length: 64 }, () => makeCtx(esToken));
  results.push(
    await measure('JWT stage, cached token (lookup + claims to context)', (i) => stage.run(ctxs[i & 63])),
  );
  const keyEs = (await import('node:crypto')).createPublicKey({ key: jwk, format: 'jwk' });
  const keyRs = (await import('node:crypto')).createPublicKey({ key: rsJwk, format: 'jwk' });
  results.push(
    await measureAsync(
      'JWT signature check, uncached, ES256 (jose jwtVerify)',
      () => jwtVerify(esToken, keyEs, { issuer }),
      2000,
    ),
  );
  results.push(
    await measureAsync(
      'JWT signature check, uncached, RS256 (jose jwtVerify)',
      () => jwtVerify(rsToken, keyRs, { issuer }),
      2000,
    ),
  );
  registry.close();

  // SPIFFE ID parsing and the request context.
  const ids = [
    'spiffe://example.org/ns/default/sa/web',
    'spiffe://example.org/ns/payments/sa/api',
    'spiffe://partner.example/ns/x/sa/y',
    'spiffe://example.org/workload',
  ];
  results.push(
    await measure('SPIFFE ID parse (validated, with principal and namespace)', (i) =>
      SpiffeId.parse(ids[i & 3]),
    ),
  );
  const rl = new RequestLineStage();
  const plainHead = {
    method: 'GET',
    target: '/api/v1/items/42?x=1',
    headers: { host: 'api', 'x-request-id': 'abc-123' },
    httpVersion: '1.1',
  };
  const plainRaw = ['Host', 'api', 'X-Request-Id', 'abc-123'];
  results.push(
    await measure('attributes + request context + request-line stage (Host and header checks)', () => {
      const attrs = requestAttributes(CONN, plainHead, SETTINGS, Date.now());
      const ctx = new RequestContext(attrs, plainHead.target, plainRaw, false, '', '');
      if (rl.run(ctx) !== null) throw new Error('the request line refused the benchmark request');
    }),
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}

// run.mjs names the folder (bench/results, or bench/results/quick for --quick runs).
const outDir = process.argv.slice(2).find((a) => !a.startsWith('--')) ?? join(HERE, 'results');
mkdirSync(outDir, { recursive: true });
writeFileSync(
  join(outDir, 'micro-latest.json'),
  `${JSON.stringify({ time: new Date().toISOString(), node: process.version, results }, null, 2)}\n`,
);
console.log(`\nwrote ${join(outDir, 'micro-latest.json')}`);
