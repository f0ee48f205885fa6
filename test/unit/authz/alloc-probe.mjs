// Run by allocation.test.ts in a child process: node --expose-gc --max-semi-space-size=128 alloc-probe.mjs
// Measures heap growth over a million decisions with the young generation large enough that no
// garbage collection runs during the loop: growth is then what the loop allocated.
import { PerformanceObserver } from 'node:perf_hooks';
import { Authorizer, Decision } from '../../../dist/authz/compile.js';
import { parseAuthorizationPolicy } from '../../../dist/istio/authorization-policy.js';

const N = Number(process.argv[2] ?? 1_000_000);
const count = Number(process.argv[3] ?? 20);

function policy(i) {
  const meta = { name: `p${i}`, namespace: 'default', annotations: {}, origin: { file: 'x', index: i } };
  const spec =
    i % 5 === 0
      ? {
          action: 'DENY',
          rules: [
            {
              from: [{ source: { notNamespaces: ['default', 'prod'] } }],
              to: [{ operation: { paths: [`/internal${i}/*`] } }],
            },
          ],
        }
      : {
          action: 'ALLOW',
          rules: [
            {
              from: [
                { source: { principals: [`example.org/ns/default/sa/svc${i}`, '*/sa/web'] } },
                { source: { ipBlocks: ['10.0.0.0/8', '2001:db8::/32'] } },
              ],
              to: [
                {
                  operation: {
                    methods: ['GET', 'HEAD'],
                    paths:
                      i % 7 === 3
                        ? ['*.png']
                        : [`/api/v${i}/*`, `/users/{*}/orders${i}`, `/static${i}/logo.png`],
                  },
                },
              ],
              when: [
                { key: 'request.auth.claims[groups]', values: ['dev', `team${i}`] },
                { key: 'request.headers[x-env]', notValues: ['staging'] },
                { key: 'request.auth.claims[scope]', values: ['read', 'write:*'] },
              ],
            },
            { to: [{ operation: { hosts: ['*.example.org'], paths: [`/health${i}`] } }] },
          ],
        };
  const p = parseAuthorizationPolicy(meta, spec, (f, m) => {
    throw new Error(`${f}: ${m}`);
  });
  return p;
}

const authorizer = new Authorizer(Array.from({ length: count }, (_, i) => policy(i)));
const base = {
  method: 'GET',
  host: 'api.example.org',
  path: '/api/v2/x',
  query: '',
  headers: { 'x-env': 'prod' },
  sourceAddress: '10.1.2.3',
  sourcePort: 1,
  remoteAddress: '10.1.2.3',
  destinationAddress: '10.0.0.1',
  destinationPort: 8080,
  sni: '',
  peerPrincipal: 'example.org/ns/default/sa/web',
  peerNamespace: 'default',
  requestPrincipal: 'https://idp/alice',
  claims: { sub: 'alice', groups: ['ops', 'dev'], scope: 'read write:orders' },
  audiences: ['api'],
  presenter: '',
};
const requests = [
  base,
  { ...base, path: '/users/7/orders2', sourceAddress: '::ffff:10.9.9.9' },
  { ...base, path: '/internal5/secret', peerNamespace: 'other' },
  { ...base, path: '/img/x.png', sourceAddress: '2001:db8::5', headers: { 'x-env': 'staging' } },
  { ...base, path: '/health7', host: 'web.example.org', peerPrincipal: '' },
  { ...base, method: 'POST', path: '/nothing' },
  { ...base, claims: { sub: 'bob', groups: 'dev', scope: 'admin' } },
  { ...base, claims: null, requestPrincipal: '' },
];
const out = new Decision();
let allowed = 0;
for (let i = 0; i < 300_000; i++) {
  authorizer.decide(requests[i & 7], out);
  if (out.allowed) allowed++;
}
let gcs = 0;
const obs = new PerformanceObserver((list) => {
  gcs += list.getEntries().length;
});
globalThis.gc();
await new Promise((r) => setImmediate(r));
obs.observe({ entryTypes: ['gc'] });
const before = process.memoryUsage().heapUsed;
const t0 = process.hrtime.bigint();
for (let i = 0; i < N; i++) {
  authorizer.decide(requests[i & 7], out);
  if (out.allowed) allowed++;
}
const ns = Number(process.hrtime.bigint() - t0);
const after = process.memoryUsage().heapUsed;
await new Promise((r) => setTimeout(r, 50));
obs.disconnect();
process.stdout.write(
  `${JSON.stringify({ decisions: N, policies: count, bytesPerDecision: (after - before) / N, gcs, nsPerDecision: ns / N, allowed })}\n`,
);
