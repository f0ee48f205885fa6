import { X509Certificate } from 'node:crypto';
import { renameSync, symlinkSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import type { TLSSocket } from 'node:tls';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createCa, issueSvid, type PemPair } from '../../src/identity/dev-ca.js';
import { request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import { until } from '../helpers/wait.js';

interface Seen {
  status: number;
  serverCert: string;
  reused: boolean;
}

/** A request that reports which server certificate answered and whether the socket was reused. */
function get(h: Harness, path: string, agent: https.Agent | false): Promise<Seen> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port: h.port, path, servername: 'localhost', agent, ...h.client },
      (res) => {
        const serverCert = (res.socket as TLSSocket).getPeerCertificate().fingerprint256;
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode ?? 0, serverCert, reused: req.reusedSocket }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** Replaces a file the way rotation tools do: write beside it, then rename over it. */
function replace(file: string, text: string): void {
  writeFileSync(`${file}.tmp`, text);
  renameSync(`${file}.tmp`, file);
}

function fingerprint(p: PemPair): string {
  return new X509Certificate(p.certPem).fingerprint256;
}

describe('certificate rotation without downtime', () => {
  let h: Harness;
  beforeEach(async () => {
    h = await startHarness();
  });
  afterEach(() => h.close());

  it('serves new connections with a rotated certificate while an open connection keeps working', async () => {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    const first = await get(h, '/one', agent);
    expect(first.serverCert).toBe(fingerprint(h.pki.server));

    const next = await issueSvid(h.pki.ca, 'spiffe://example.org/ns/default/sa/api', {
      dnsNames: ['localhost'],
    });
    const reloads = h.proxy.reloads;
    replace(h.dir.file('api.key'), next.keyPem);
    replace(h.dir.file('api.pem'), next.certPem);
    await until('the reload', () => h.proxy.reloads > reloads);

    const sameConnection = await get(h, '/two', agent);
    expect(sameConnection).toEqual({ status: 200, serverCert: first.serverCert, reused: true });
    const fresh = await get(h, '/three', false);
    expect(fresh.status).toBe(200);
    expect(fresh.serverCert).toBe(fingerprint(next));
    agent.destroy();
  });

  it('keeps the last good certificate when the new one is half-written or does not match its key', async () => {
    const failures = h.proxy.reloadFailures;
    replace(h.dir.file('api.pem'), h.pki.server.certPem.slice(0, 200));
    await until('the failed reload', () => h.proxy.reloadFailures > failures);
    expect((await get(h, '/still', false)).serverCert).toBe(fingerprint(h.pki.server));

    // A new certificate whose key has not been written yet: refused until the key arrives.
    const next = await issueSvid(h.pki.ca, 'spiffe://example.org/ns/default/sa/api', {
      dnsNames: ['localhost'],
    });
    const f2 = h.proxy.reloadFailures;
    replace(h.dir.file('api.pem'), next.certPem);
    await until('the failed reload', () => h.proxy.reloadFailures > f2);
    expect(h.proxy.reload('test')).toBe(false);
    expect((await get(h, '/still', false)).serverCert).toBe(fingerprint(h.pki.server));

    const reloads = h.proxy.reloads;
    replace(h.dir.file('api.key'), next.keyPem);
    await until('the reload', () => h.proxy.reloads > reloads);
    expect((await get(h, '/new', false)).serverCert).toBe(fingerprint(next));
  });

  it('trusts a new CA once the bundle gains it, and drops a removed one', async () => {
    const newCa = await createCa('example.org');
    const client = await issueSvid(newCa, 'spiffe://example.org/ns/default/sa/web');
    const asNew = { cert: client.certPem, key: client.keyPem, ca: h.pki.ca.certPem };
    await expect(request(`${h.url}/x`, asNew)).rejects.toThrow();

    replace(h.dir.file('bundle.pem'), h.pki.ca.certPem + newCa.certPem);
    expect(h.proxy.reload('SIGHUP')).toBe(true);
    expect((await request(`${h.url}/x`, asNew)).status).toBe(200);

    // The server's own SVID is from the old CA, so the old CA must stay while it is in use:
    // a bundle without it is refused and the last good one kept.
    replace(h.dir.file('bundle.pem'), newCa.certPem);
    expect(h.proxy.reload('SIGHUP')).toBe(false);
    expect((await request(`${h.url}/y`, h.client)).status).toBe(200);
  });
});

describe('policy reload', () => {
  it('switches STRICT to PERMISSIVE on file change, and keeps PERMISSIVE when the next edit is invalid', async () => {
    const h = await startHarness({
      policies:
        'apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: { name: p, namespace: default }\nspec: { mtls: { mode: STRICT } }\n',
    });
    try {
      const plain = `http://127.0.0.1:${h.port}/plain`;
      await expect(request(plain, {})).rejects.toThrow();
      const reloads = h.proxy.reloads;
      replace(
        h.dir.file('policies.yaml'),
        'apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: { name: p, namespace: default }\nspec: { mtls: { mode: PERMISSIVE } }\n',
      );
      await until('the reload', () => h.proxy.reloads > reloads);
      expect((await request(plain, {})).status).toBe(200);
      expect((await request(`${h.url}/tls`, h.client)).status).toBe(200);

      const failures = h.proxy.reloadFailures;
      replace(
        h.dir.file('policies.yaml'),
        'apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: { name: p }\nspec: { mtls: { mode: OFF } }\n',
      );
      await until('the failed reload', () => h.proxy.reloadFailures > failures);
      expect((await request(plain, {})).status).toBe(200);
    } finally {
      await h.close();
    }
  });
});

describe('policies in a Kubernetes ConfigMap volume', () => {
  // A ConfigMap volume: each key is a symlink into `..data`, itself a symlink to a timestamped
  // folder; an update writes a new folder and renames a new `..data` link over the old one.
  const DENY_ALL = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-all, namespace: default }
spec: { action: DENY, rules: [{}] }
`;
  const ALLOW_ALL = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-all, namespace: default }
spec: { action: ALLOW, rules: [{}] }
`;
  let h: Harness;
  beforeEach(async () => {
    h = await startHarness({
      config: { policies: ['cm/'] },
      setup: (dir) => {
        dir.write('cm/..2026_11_30_1/authz.yaml', ALLOW_ALL);
        symlinkSync('..2026_11_30_1', dir.file('cm/..data'));
        symlinkSync('..data/authz.yaml', dir.file('cm/authz.yaml'));
      },
    });
  });
  afterEach(() => h.close());

  it('reloads when the kubelet swaps ..data, without a signal', async () => {
    expect((await request(`${h.url}/x`, h.client)).status).toBe(200);
    h.dir.write('cm/..2026_11_30_2/authz.yaml', DENY_ALL);
    symlinkSync('..2026_11_30_2', h.dir.file('cm/..data_tmp'));
    renameSync(h.dir.file('cm/..data_tmp'), h.dir.file('cm/..data'));
    await until('the new policy to apply', () => h.proxy.reloads > 0);
    expect((await request(`${h.url}/x`, h.client)).status).toBe(403);
  });
});
