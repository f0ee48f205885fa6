import { availableParallelism } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configFromObject, DEFAULT_LIMITS, loadConfigFile } from '../../../src/config/load.js';
import { ConfigError } from '../../../src/errors.js';
import { DOCUMENTED_AUDIT, DOCUMENTED_CONFIG } from '../../helpers/fixtures.js';
import { TempDir } from '../../helpers/pki.js';

function issuesOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.issues.map((i) => `${i.field}: ${i.message}`);
    throw err;
  }
  return [];
}

const MINIMAL = {
  trustDomain: 'example.org',
  identity: { cert: 'certs/api.pem', key: 'certs/api.key', bundles: { 'example.org': 'certs/bundle.pem' } },
  listeners: [{ name: 'inbound', address: '127.0.0.1:15006', upstream: 'http://127.0.0.1:8080' }],
};

describe('portcullis.yaml loading', () => {
  let dir: TempDir;
  beforeAll(() => {
    dir = new TempDir();
  });
  afterAll(() => dir.cleanup());

  it('loads the documented example as written, resolving paths against the config folder', () => {
    const file = dir.write('portcullis.yaml', DOCUMENTED_CONFIG);
    const c = loadConfigFile(file);
    expect(c.identity.cert).toBe(dir.file('certs/api.pem'));
    expect(c.identity.bundles['example.org']).toBe(dir.file('certs/bundle.pem'));
    expect(c.policies).toEqual([dir.file('policies')]);
    expect(c.listeners[0]).toMatchObject({
      name: 'inbound',
      address: { host: '127.0.0.1', port: 15006 },
      upstream: 'http://127.0.0.1:8080',
      workloadPort: 8080,
      limits: DEFAULT_LIMITS,
    });
    expect(c.admin).toEqual({
      address: { host: '127.0.0.1', port: 15000 },
      decisions: { size: 1000, record: 'deny' },
    });
    expect(c.rootNamespace).toBe('istio-system');
    expect(c.workload.labels).toEqual({ app: 'api' });
  });

  it('takes the documented audit block as written', () => {
    const file = dir.write('with-audit.yaml', `${DOCUMENTED_CONFIG}${DOCUMENTED_AUDIT}`);
    const c = loadConfigFile(file);
    expect(c.audit?.decisions).toBe('all');
    expect(c.audit?.flushIntervalMs).toBe(20);
    expect(c.audit?.sinks).toEqual([
      { type: 'stdout' },
      { type: 'file', path: dir.file('audit.ndjson'), maxBytes: 100 * 1024 * 1024, keep: 5 },
      {
        type: 'http',
        url: 'http://127.0.0.1:9000/ingest',
        timeoutMs: 5000,
        gzip: true,
        batchSize: 500,
        maxRetryDelayMs: 30000,
        headers: {},
      },
    ]);
  });

  it('takes workers as a count, or auto for the CPUs this process may use', () => {
    expect(configFromObject(MINIMAL, '/x', '/x/p.yaml').workers).toBe(1);
    expect(configFromObject({ ...MINIMAL, workers: 3 }, '/x', '/x/p.yaml').workers).toBe(3);
    expect(configFromObject({ ...MINIMAL, workers: 'auto' }, '/x', '/x/p.yaml').workers).toBe(
      availableParallelism(),
    );
    for (const bad of [0, -1, 1.5, 'all', 65]) {
      const issues = issuesOf(() => configFromObject({ ...MINIMAL, workers: bad }, '/x', '/x/p.yaml'));
      expect(
        issues.some((i) => i.startsWith('workers:')),
        `${bad}: ${issues.join(' | ')}`,
      ).toBe(true);
    }
  });

  it('refuses to record credential headers in audit events', () => {
    const issues = issuesOf(() =>
      configFromObject(
        { ...MINIMAL, audit: { headers: ['Authorization'], sinks: [{ type: 'stdout' }] } },
        '/x',
        '/x/p.yaml',
      ),
    );
    expect(issues.some((i) => i.startsWith('audit.headers: credential headers'))).toBe(true);
  });

  it('applies listener limits over global limits over defaults', () => {
    const c = configFromObject(
      {
        ...MINIMAL,
        limits: { headersTimeout: '5s', maxConnections: 10 },
        listeners: [{ ...MINIMAL.listeners[0], limits: { maxConnections: 3 } }],
      },
      '/etc/portcullis',
    );
    expect(c.listeners[0]?.limits).toMatchObject({
      headersTimeout: 5000,
      maxConnections: 3,
      keepAliveTimeout: DEFAULT_LIMITS.keepAliveTimeout,
    });
  });

  it('refuses a duration without a unit, naming the field', () => {
    const err = (() => {
      try {
        configFromObject({ ...MINIMAL, limits: { headersTimeout: 10 } }, '/x');
      } catch (e) {
        return e as ConfigError;
      }
      return null;
    })();
    expect(err?.issues[0]?.field).toBe('limits.headersTimeout');
    expect(err?.issues[0]?.message).toContain('10ms, or 10s');
    expect(
      configFromObject({ ...MINIMAL, limits: { requestTimeout: 0 } }, '/x').listeners[0]?.limits
        .requestTimeout,
    ).toBe(0);
  });

  it('accepts IPv6 listener addresses', () => {
    const c = configFromObject(
      { ...MINIMAL, listeners: [{ ...MINIMAL.listeners[0], address: '[::1]:0' }] },
      '/x',
    );
    expect(c.listeners[0]?.address).toEqual({ host: '::1', port: 0 });
  });

  it.each([
    [
      { ...MINIMAL, trustDomain: 'Example.org' },
      'trustDomain: invalid trust domain "Example.org": the trust domain must be lowercase',
    ],
    [{ ...MINIMAL, trustDomain: undefined }, 'trustDomain: is required'],
    [{ ...MINIMAL, tls: {} }, 'tls: unknown field'],
    [{ ...MINIMAL, identity: { ...MINIMAL.identity, cert: undefined } }, 'identity.cert: is required'],
    [
      { ...MINIMAL, identity: { ...MINIMAL.identity, bundles: {} } },
      'identity.bundles: at least one trust bundle is needed',
    ],
    [
      { ...MINIMAL, identity: { ...MINIMAL.identity, bundles: { 'other.org': 'b.pem' } } },
      'identity.bundles: no bundle for the workload\'s own trust domain "example.org"',
    ],
    [{ ...MINIMAL, listeners: [] }, 'listeners: at least one listener is needed'],
    [
      { ...MINIMAL, listeners: [{ ...MINIMAL.listeners[0], address: 'localhost' }] },
      'listeners[0].address: "localhost" is not host:port',
    ],
    [
      { ...MINIMAL, listeners: [{ ...MINIMAL.listeners[0], upstream: 'ftp://x' }] },
      'listeners[0].upstream: the upstream must be an http:// or https:// URL',
    ],
    [
      { ...MINIMAL, listeners: [{ ...MINIMAL.listeners[0], upstream: 'http://x:1/api' }] },
      'listeners[0].upstream: the upstream is an origin only',
    ],
    [
      { ...MINIMAL, listeners: [{ ...MINIMAL.listeners[0], requireCert: true }] },
      'listeners[0].requireCert: unknown field',
    ],
    [
      { ...MINIMAL, listeners: [MINIMAL.listeners[0], MINIMAL.listeners[0]] },
      'listeners[1].name: duplicate listener name "inbound"',
    ],
    [{ ...MINIMAL, limits: { headersTimeout: 'soon' } }, 'limits.headersTimeout: "soon" is not a duration'],
    [
      { ...MINIMAL, limits: { headersTimeout: '20s', requestTimeout: '10s' } },
      'limits.headersTimeout: must not be longer than requestTimeout',
    ],
    [
      { ...MINIMAL, audit: { flushInterval: '5s', sinks: [{ type: 'stdout' }] } },
      'audit.flushInterval: at most 1s',
    ],
    [
      { ...MINIMAL, admin: { address: '127.0.0.1:15006' } },
      'admin.address: the admin address is also a listener address',
    ],
  ])('names the field and the problem (%#)', (raw, expected) => {
    const issues = issuesOf(() => configFromObject(raw, '/x', '/x/portcullis.yaml'));
    expect(
      issues.some((i) => i.startsWith(expected)),
      `got: ${issues.join(' | ')}`,
    ).toBe(true);
  });

  it('reports every problem at once, with the file name', () => {
    try {
      configFromObject({ ...MINIMAL, trustDomain: 'A', listeners: [{ name: 'x' }] }, '/x', '/x/p.yaml');
      expect.unreachable();
    } catch (err) {
      const e = err as ConfigError;
      expect(e.code).toBe('ERR_CONFIG_INVALID');
      expect(e.issues.length).toBeGreaterThanOrEqual(3);
      expect(e.message).toContain('/x/p.yaml: trustDomain:');
      expect(e.message).toContain('/x/p.yaml: listeners[0].upstream: is required');
    }
  });

  it('names the file and line of a YAML syntax error, and a missing file', () => {
    const bad = dir.write('bad.yaml', 'trustDomain: example.org\nlisteners: [\n');
    expect(() => loadConfigFile(bad)).toThrow(/bad\.yaml: YAML syntax error at line \d+/);
    expect(() => loadConfigFile(dir.file('missing.yaml'))).toThrow(/missing\.yaml: file not found/);
  });
});

describe('outbound config', () => {
  const withOutbound = (outbound: unknown): unknown => ({ ...MINIMAL, outbound });
  const dest = {
    host: 'billing.default.svc',
    upstream: 'https://127.0.0.1:18443',
    identities: ['spiffe://example.org/ns/billing/sa/billing'],
  };

  it('defaults to 127.0.0.1:15001 and REGISTRY_ONLY', () => {
    const c = configFromObject(withOutbound({ destinations: [dest] }), '/tmp');
    expect(c.outbound).toMatchObject({
      address: { host: '127.0.0.1', port: 15001 },
      policy: 'REGISTRY_ONLY',
      destinations: [{ ...dest, trustDomains: [], sni: null }],
    });
  });

  it('listens on loopback only: anyone reaching it would call out as this workload', () => {
    expect(issuesOf(() => configFromObject(withOutbound({ address: '0.0.0.0:15001' }), '/tmp'))).toEqual([
      expect.stringMatching(/^outbound\.address: 0\.0\.0\.0:15001 is not a loopback address/),
    ]);
    expect(configFromObject(withOutbound({ address: '[::1]:15001' }), '/tmp').outbound?.address.host).toBe(
      '::1',
    );
  });

  it('refuses a destination without secure naming, over plain HTTP, named twice, or with a bad SPIFFE ID', () => {
    const issues = issuesOf(() =>
      configFromObject(
        withOutbound({
          destinations: [
            { host: 'a.svc', upstream: 'https://127.0.0.1:1' },
            { host: 'b.svc', upstream: 'http://127.0.0.1:2', identities: [dest.identities[0]] },
            { ...dest },
            { ...dest, host: 'Billing.Default.Svc' },
            { host: 'c.svc', upstream: 'https://127.0.0.1:3', identities: ['spiffe://Example.org/x'] },
          ],
        }),
        '/tmp',
      ),
    );
    expect(issues).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^outbound\.destinations\[0\]: a destination needs identities/),
        expect.stringMatching(/^outbound\.destinations\[4\]\.identities\[0\]: invalid SPIFFE ID/),
      ]),
    );
    const second = issuesOf(() =>
      configFromObject(
        withOutbound({
          destinations: [
            { host: 'b.svc', upstream: 'http://127.0.0.1:2', identities: [dest.identities[0]] },
            { ...dest },
            { ...dest, host: 'Billing.Default.Svc' },
          ],
        }),
        '/tmp',
      ),
    );
    expect(second).toEqual([
      expect.stringMatching(/^outbound\.destinations\[0\]\.upstream: .*upstream is https:\/\//),
      'outbound.destinations[2].host: "billing.default.svc" is already outbound.destinations[1]',
    ]);
  });
});

describe('identity from the Workload API', () => {
  const wapi = (identity: unknown): unknown => ({ ...MINIMAL, identity });

  it('takes a socket, a hint and a start timeout instead of files', () => {
    const c = configFromObject(
      wapi({ workloadApi: { socket: 'unix:///run/spire/sockets/agent.sock', hint: 'internal' } }),
      '/tmp',
    );
    expect(c.identity).toEqual({
      cert: '',
      key: '',
      bundles: {},
      workloadApi: { socket: 'unix:///run/spire/sockets/agent.sock', hint: 'internal', startTimeout: 60_000 },
    });
  });

  it('refuses files and the Workload API together, a bad socket, and no socket at all', () => {
    expect(
      issuesOf(() =>
        configFromObject(wapi({ ...MINIMAL.identity, workloadApi: { socket: 'unix:///a' } }), '/tmp'),
      ),
    ).toEqual([expect.stringMatching(/^identity: set workloadApi, or cert, key and bundles — not both/)]);
    expect(
      issuesOf(() => configFromObject(wapi({ workloadApi: { socket: '/run/agent.sock' } }), '/tmp')),
    ).toEqual(['identity.workloadApi.socket: use unix:///path/to/agent.sock or tcp://host:port']);
    const saved = process.env.SPIFFE_ENDPOINT_SOCKET;
    delete process.env.SPIFFE_ENDPOINT_SOCKET;
    try {
      expect(issuesOf(() => configFromObject(wapi({ workloadApi: {} }), '/tmp'))).toEqual([
        expect.stringMatching(
          /^identity\.workloadApi\.socket: is required \(or set SPIFFE_ENDPOINT_SOCKET\)/,
        ),
      ]);
      process.env.SPIFFE_ENDPOINT_SOCKET = 'unix:///from/env.sock';
      expect(configFromObject(wapi({ workloadApi: {} }), '/tmp').identity.workloadApi?.socket).toBe(
        'unix:///from/env.sock',
      );
    } finally {
      if (saved === undefined) delete process.env.SPIFFE_ENDPOINT_SOCKET;
      else process.env.SPIFFE_ENDPOINT_SOCKET = saved;
    }
  });

  it('still names what is missing when neither is given', () => {
    expect(issuesOf(() => configFromObject(wapi({ cert: 'a.pem' }), '/tmp'))).toEqual([
      'identity.key: is required (or use workloadApi)',
      'identity.bundles: is required (or use workloadApi)',
    ]);
  });
});
