import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { join } from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCa, issueSvid, type PemPair } from '../../src/identity/dev-ca.js';
import { request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import { makePki, TempDir, type TestPki } from '../helpers/pki.js';
import type { EchoReply } from '../helpers/upstream.js';
import { until } from '../helpers/wait.js';
import {
  identityFrom,
  startAgent,
  svidEntry,
  svidResponse,
  WorkloadApiServer,
} from '../helpers/workload-api.js';

/**
 * SVIDs from the SPIFFE Workload API: a test agent (grpc-js on a Unix socket, the standard's proto
 * through protobufjs) issues SVIDs from the dev CA, rotates them, adds and withdraws a federated
 * bundle, goes away and comes back; Portcullis follows each change.
 */

const API = 'spiffe://example.org/ns/default/sa/api';
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** The certificate a fresh TLS connection to the proxy is served (fingerprint), or the error. */
function servedCert(port: number, client: PemPair & { ca: string }): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({
      host: '127.0.0.1',
      port,
      servername: 'localhost',
      cert: client.certPem,
      key: client.keyPem,
      ca: client.ca,
      ALPNProtocols: ['http/1.1'],
    });
    s.once('secureConnect', () => {
      resolve(s.getPeerX509Certificate()?.fingerprint256 ?? '');
      s.end();
    });
    s.once('error', reject);
  });
}

const fingerprint = (p: PemPair): string => new X509Certificate(p.certPem).fingerprint256;

describe('identity from the SPIFFE Workload API', () => {
  let pki: TestPki;
  let dir: TempDir;
  let agent: WorkloadApiServer;
  let h: Harness;
  let client: PemPair & { ca: string };

  beforeAll(async () => {
    pki = await makePki();
    dir = new TempDir('pc-wapi-');
    agent = new WorkloadApiServer(dir.file('agent.sock'));
    agent.push(svidResponse([svidEntry(pki.server, API, [pki.ca])]));
    await agent.start();
    h = await startHarness({
      pki,
      config: {
        identity: { workloadApi: { socket: `unix://${agent.socketPath}`, startTimeout: '10s' } },
      },
    });
    client = { ...pki.client, ca: pki.ca.certPem };
  });
  afterAll(async () => {
    await h.close();
    agent.stop();
    dir.cleanup();
  });

  it('serves the SVID the agent issued, asked for with the required metadata', async () => {
    expect(await servedCert(h.port, client)).toBe(fingerprint(pki.server));
    const r = await request(`${h.url}/hello`, h.client);
    expect(r.status).toBe(200);
    expect(agent.refusedWithoutHeader).toBe(0);
    expect(h.proxy.statusJson()).toMatchObject({ spiffeId: API, workloadApi: { updates: 1 } });
  });

  it('a rotated SVID is served on new handshakes; open connections carry on', async () => {
    const agentKeepAlive = new (await import('node:https')).Agent({ keepAlive: true, maxSockets: 1 });
    const opts = { ...h.client, agent: agentKeepAlive };
    expect((await request(`${h.url}/before`, opts)).socketReused).toBe(false);
    const next = await issueSvid(pki.ca, API, { dnsNames: ['localhost'] });
    agent.push(svidResponse([svidEntry(next, API, [pki.ca])]));
    await until('the rotated SVID', () => h.proxy.snapshot.credentials.certPem === next.certPem);
    expect(await servedCert(h.port, client)).toBe(fingerprint(next));
    const again = await request(`${h.url}/after`, opts);
    expect(again.status).toBe(200);
    expect(again.socketReused).toBe(true);
    agentKeepAlive.destroy();
  });

  it('a peer of a federated domain is accepted only while the agent sends its bundle', async () => {
    const partnerCa = await createCa('partner.example');
    const partnerId = 'spiffe://partner.example/ns/shop/sa/frontend';
    const partner = await issueSvid(partnerCa, partnerId);
    const partnerClient = { cert: partner.certPem, key: partner.keyPem, ca: pki.ca.certPem };
    // TLS 1.3: the client's handshake completes before the server refuses its certificate, so the
    // refusal shows on the request.
    await expect(request(`${h.url}/from-partner`, partnerClient)).rejects.toThrow();

    const current = h.proxy.snapshot.credentials;
    const own = svidEntry({ certPem: current.certPem, keyPem: current.keyPem }, API, [pki.ca]);
    agent.push(svidResponse([own], { 'spiffe://partner.example': partnerCa }));
    await until('the federated bundle', () => h.proxy.snapshot.bundles.domains.includes('partner.example'));
    const r = await request(`${h.url}/from-partner`, {
      cert: partner.certPem,
      key: partner.keyPem,
      ca: pki.ca.certPem,
    });
    expect(r.status).toBe(200);
    expect(String((JSON.parse(r.text) as EchoReply).headers['x-forwarded-client-cert'])).toContain(
      `URI=${partnerId}`,
    );

    // The next message leaves the domain out: it is no longer trusted (Workload API §4.4).
    agent.push(svidResponse([own]));
    await until('the withdrawal', () => !h.proxy.snapshot.bundles.domains.includes('partner.example'));
    await expect(request(`${h.url}/from-partner`, partnerClient)).rejects.toThrow();
  });

  it('an unusable message is discarded and the last good SVID stays', async () => {
    const before = h.proxy.snapshot;
    const stranger = await issueSvid(await createCa('elsewhere.example'), 'spiffe://elsewhere.example/x');
    agent.push(svidResponse([svidEntry(stranger, 'spiffe://elsewhere.example/x', [pki.ca])]));
    await until(
      'the discard',
      () =>
        (h.proxy.statusJson() as { workloadApi: { lastError: string | null } }).workloadApi.lastError !==
        null,
    );
    expect(h.proxy.snapshot).toBe(before);
    expect((await request(`${h.url}/still`, h.client)).status).toBe(200);
  });

  it('keeps serving while the agent is away, and takes the new SVID when it comes back', async () => {
    agent.stop();
    await new Promise((r) => setTimeout(r, 400));
    expect((await request(`${h.url}/agent-away`, h.client)).status).toBe(200);
    expect(h.proxy.ready).toBe(true);
    const next = await issueSvid(pki.ca, API, { dnsNames: ['localhost'] });
    agent.push(svidResponse([svidEntry(next, API, [pki.ca])]));
    await agent.start();
    await until(
      'the SVID after the agent came back',
      () => h.proxy.snapshot.credentials.certPem === next.certPem,
      15_000,
    );
    expect(await servedCert(h.port, client)).toBe(fingerprint(next));
  });
});

describe('starting before the workload is registered', () => {
  it('retries PermissionDenied with backoff until an SVID arrives, then listens', async () => {
    const pki = await makePki();
    const agent = await startAgent(svidResponse([svidEntry(pki.server, API, [pki.ca])]), { deny: true });
    setTimeout(() => {
      agent.deny = false;
    }, 700);
    const h = await startHarness({ pki, config: { identity: identityFrom(agent) } });
    try {
      expect(agent.calls).toBeGreaterThanOrEqual(2);
      expect((await request(`${h.url}/registered`, h.client)).status).toBe(200);
    } finally {
      await h.close();
      agent.close();
    }
  });

  it('gives up after startTimeout with the agent’s last answer', async () => {
    const dir = new TempDir('pc-wapi-');
    const agent = new WorkloadApiServer(dir.file('agent.sock'));
    agent.deny = true;
    await agent.start();
    try {
      await expect(
        startHarness({
          config: {
            identity: { workloadApi: { socket: `unix://${agent.socketPath}`, startTimeout: '600ms' } },
          },
        }),
      ).rejects.toThrow(
        /no X\.509-SVID from the Workload API at unix:\/\/.* within 600 ms: PERMISSION_DENIED: no identity issued/,
      );
    } finally {
      agent.stop();
      dir.cleanup();
    }
    expect(grpc.status.PERMISSION_DENIED).toBe(7);
  });

  it('`portcullis validate` connects once and reports the SVID it received', async () => {
    const pki = await makePki();
    const dir = new TempDir('pc-wapi-');
    const agent = new WorkloadApiServer(dir.file('agent.sock'));
    agent.push(svidResponse([svidEntry(pki.server, API, [pki.ca])]));
    await agent.start();
    dir.write(
      'portcullis.yaml',
      [
        'trustDomain: example.org',
        'identity:',
        `  workloadApi: { socket: "unix://${agent.socketPath}" }`,
        'listeners:',
        '  - { name: inbound, address: 127.0.0.1:0, upstream: http://127.0.0.1:8080 }',
        '',
      ].join('\n'),
    );
    try {
      const out = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
        execFile(
          process.execPath,
          [join(ROOT, 'dist/cli/main.js'), 'validate', '-c', dir.file('portcullis.yaml')],
          { timeout: 30_000 },
          (err, stdout, stderr) =>
            resolve({ code: err === null ? 0 : Number(err.code ?? 1), stdout, stderr }),
        ),
      );
      expect(out.code, out.stderr).toBe(0);
      expect(out.stdout).toContain(`identity: ${API}`);
      expect(out.stdout).toContain(`from the Workload API at unix://${agent.socketPath}`);
    } finally {
      agent.stop();
      dir.cleanup();
    }
  });
});

describe('sidecar to sidecar, both on the Workload API', () => {
  it('A calls B through its outbound listener; each presents the SVID its agent issued', async () => {
    const pki = await makePki();
    const WEB = 'spiffe://example.org/ns/default/sa/web';
    const agentA = await startAgent(svidResponse([svidEntry(pki.client, WEB, [pki.ca])]));
    const agentB = await startAgent(svidResponse([svidEntry(pki.server, API, [pki.ca])]));
    const b = await startHarness({ pki, config: { identity: identityFrom(agentB) } });
    const a = await startHarness({
      pki,
      config: {
        identity: identityFrom(agentA),
        outbound: {
          address: '127.0.0.1:0',
          destinations: [
            { host: 'api.default.svc', upstream: `https://127.0.0.1:${b.port}`, identities: [API] },
          ],
        },
      },
    });
    try {
      const port = a.proxy.outboundAddress()?.port ?? 0;
      const r = await request(`http://127.0.0.1:${port}/orders`, { headers: { host: 'api.default.svc' } });
      expect(r.status).toBe(200);
      expect(String((JSON.parse(r.text) as EchoReply).headers['x-forwarded-client-cert'])).toMatch(
        new RegExp(`URI=${WEB}$`),
      );
    } finally {
      await a.close();
      await b.close();
      agentA.close();
      agentB.close();
    }
  });
});

describe('readiness follows the SVID', () => {
  it('turns 503 when the agent withdraws the identity (PermissionDenied) and back when it returns', async () => {
    const pki = await makePki();
    const agent = await startAgent(svidResponse([svidEntry(pki.server, API, [pki.ca])]));
    const h = await startHarness({ pki, config: { identity: identityFrom(agent) } });
    try {
      expect(h.proxy.ready).toBe(true);
      agent.deny = true;
      agent.fail(grpc.status.PERMISSION_DENIED, 'registration entry deleted');
      await until('not ready', () => !h.proxy.ready);
      // Still serving with the SVID it holds (it has not expired); the orchestrator drains traffic.
      expect((await request(`${h.url}/withdrawn`, h.client)).status).toBe(200);
      agent.deny = false;
      await until('ready again', () => h.proxy.ready, 10_000);
    } finally {
      await h.close();
      agent.close();
    }
  });

  it('turns 503 when the SVID held expires and no rotation came', async () => {
    const pki = await makePki();
    // issueSvid back-dates notBefore by 60 s: this SVID has about 2.5 s left.
    const short = await issueSvid(pki.ca, API, { dnsNames: ['localhost'], ttlMs: 62_500 });
    const agent = await startAgent(svidResponse([svidEntry(short, API, [pki.ca])]));
    const h = await startHarness({ pki, config: { identity: identityFrom(agent) } });
    try {
      expect(h.proxy.ready).toBe(true);
      agent.stop();
      await until('the SVID expired', () => !h.proxy.ready, 6_000);
      expect(Date.now()).toBeGreaterThanOrEqual(h.proxy.snapshot.credentials.notAfter);
    } finally {
      await h.close();
      agent.close();
    }
  });
});
