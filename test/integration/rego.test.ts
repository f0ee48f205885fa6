import { renameSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { type Harness, startHarness } from '../helpers/harness.js';
import { opaTestModule, tarGz } from '../helpers/opa-wasm.js';
import type { EchoReply } from '../helpers/upstream.js';

// The test modules implement the OPA Wasm ABI and decide by markers in the input (see
// test/helpers/opa-wasm.ts); the SDK, the engine and the proxy around them are the real ones.

describe('Rego (OPA Wasm) in the request path', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({
      files: {
        'authz.tar.gz': tarGz({ '/policy.wasm': await opaTestModule(), '/data.json': '{"roles":{}}' }),
      },
      listener: { rego: { bundle: 'authz.tar.gz', entrypoint: 'envoy/authz/allow' } },
      policies: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: istio-first }
spec:
  action: DENY
  rules: [{ to: [{ operation: { paths: ["/allowed/but-istio-says-no"] } }] }]
`,
    });
  });
  afterAll(() => h.close());

  it('allows what the policy allows and denies the rest with 403 RBAC: access denied', async () => {
    expect((await request(`${h.url}/allowed/x`, h.client)).status).toBe(200);
    const denied = await request(`${h.url}/nope`, h.client);
    expect(denied.status).toBe(403);
    expect(denied.text).toMatch(/^RBAC: access denied\nrequest id: [0-9a-f-]{36}\n$/);
  });

  it('applies an object result: status, body and headers of a denial', async () => {
    const res = await request(`${h.url}/object`, h.client);
    expect(res.status).toBe(418);
    expect(res.text).toBe('short and stout');
    expect(res.headers['x-rego']).toBe('on');
    expect(res.headers['x-rego-says']).toBe('no');
  });

  it('applies an object result on an allow: headers up- and downstream', async () => {
    const res = await request(`${h.url}/headers`, { ...h.client, headers: { 'x-rego-user': 'spoofed' } });
    expect(res.status).toBe(200);
    expect(res.headers['x-rego-says']).toBe('yes');
    expect((JSON.parse(res.text) as EchoReply).headers['x-rego-user']).toBe('alice');
  });

  it('denies (fail closed) when the policy aborts, and keeps serving', async () => {
    const before = h.upstream.requests;
    expect((await request(`${h.url}/abort`, h.client)).status).toBe(403);
    expect(h.upstream.requests).toBe(before);
    expect((await request(`${h.url}/allowed/after-abort`, h.client)).status).toBe(200);
  });

  it('runs after the Istio policies: both must allow', async () => {
    expect((await request(`${h.url}/allowed/but-istio-says-no`, h.client)).status).toBe(403);
  });

  it('reloads the bundle when it changes, and keeps the last good one when the new one is bad', async () => {
    const file = h.dir.file('authz.tar.gz');
    const replace = (buf: Buffer): void => {
      writeFileSync(`${file}.tmp`, buf);
      renameSync(`${file}.tmp`, file);
    };
    let reloads = h.proxy.reloads;
    replace(tarGz({ '/policy.wasm': await opaTestModule({ allowMarker: '"/other' }) }));
    while (h.proxy.reloads === reloads) await new Promise((r) => setTimeout(r, 20));
    expect((await request(`${h.url}/allowed/x`, h.client)).status).toBe(403);
    expect((await request(`${h.url}/other`, h.client)).status).toBe(200);

    const failures = h.proxy.reloadFailures;
    replace(Buffer.from('not a bundle'));
    while (h.proxy.reloadFailures === failures) await new Promise((r) => setTimeout(r, 20));
    expect((await request(`${h.url}/other`, h.client)).status).toBe(200);
    reloads = h.proxy.reloads;
  });
});

describe('Rego configuration errors are clear', () => {
  it.each([
    [
      'an ABI version the SDK does not speak',
      async () => ({ 'p.tar.gz': tarGz({ '/policy.wasm': await opaTestModule({ abiVersion: 2 }) }) }),
      { bundle: 'p.tar.gz' },
      'unsupported ABI version 2',
    ],
    [
      'a module without opa_eval',
      async () => ({ 'p.wasm': await opaTestModule({ omitExport: 'opa_eval' }) }),
      { wasm: 'p.wasm' },
      'missing export opa_eval',
    ],
    [
      'a module without entrypoints',
      async () => ({ 'p.wasm': await opaTestModule({ omitExport: 'entrypoints' }) }),
      { wasm: 'p.wasm' },
      'missing export entrypoints',
    ],
    [
      'an entrypoint the module lacks',
      async () => ({ 'p.wasm': await opaTestModule() }),
      { wasm: 'p.wasm', entrypoint: 'x/y' },
      'entrypoint "x/y" is not in the module (it has: envoy/authz/allow, envoy/authz/other)',
    ],
    [
      'a bundle without policy.wasm',
      async () => ({ 'p.tar.gz': tarGz({ '/data.json': '{}' }) }),
      { bundle: 'p.tar.gz' },
      'the bundle has no /policy.wasm',
    ],
    [
      'a file that is not wasm',
      async () => ({ 'p.wasm': 'hello' }),
      { wasm: 'p.wasm' },
      'not a WebAssembly module',
    ],
    [
      'bad data JSON',
      async () => ({ 'p.wasm': await opaTestModule(), 'd.json': '{' }),
      { wasm: 'p.wasm', data: 'd.json' },
      'the data file is not valid JSON',
    ],
  ])('refuses %s', async (_name, files, rego, message) => {
    await expect(startHarness({ files: await files(), listener: { rego } })).rejects.toThrow(message);
  });

  it('takes a bare wasm with a data file', async () => {
    const h = await startHarness({
      files: { 'p.wasm': await opaTestModule(), 'd.json': '{"a":1}' },
      listener: { rego: { wasm: 'p.wasm', data: 'd.json' } },
    });
    try {
      expect((await request(`${h.url}/allowed`, h.client)).status).toBe(200);
    } finally {
      await h.close();
    }
  });
});

describe('portcullis check with a Rego engine', () => {
  it('shows the Rego decision beside the Istio one', async () => {
    const { execFile } = await import('node:child_process');
    const { fileURLToPath } = await import('node:url');
    const { TempDir } = await import('../helpers/pki.js');
    const bin = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));
    const tmp = new TempDir();
    tmp.write('p.wasm', await opaTestModule());
    tmp.write(
      'portcullis.yaml',
      'trustDomain: example.org\nidentity: { cert: c.pem, key: c.key, bundles: { example.org: b.pem } }\nlisteners: [{ name: inbound, address: 127.0.0.1:1, upstream: http://127.0.0.1:2, rego: { wasm: p.wasm } }]\n',
    );
    const run = (path: string): Promise<{ code: number; stdout: string }> =>
      new Promise((resolve) =>
        execFile(
          process.execPath,
          [
            bin,
            'check',
            '-c',
            tmp.file('portcullis.yaml'),
            '--principal',
            'example.org/ns/default/sa/web',
            '--path',
            path,
          ],
          (err, stdout) => resolve({ code: err === null ? 0 : Number(err.code), stdout }),
        ),
      );
    try {
      const yes = await run('/allowed/x');
      expect(yes.code).toBe(0);
      expect(yes.stdout).toContain('rego envoy/authz/allow: ALLOW');
      const no = await run('/object');
      expect(no.code).toBe(3);
      expect(no.stdout).toContain('rego envoy/authz/allow: DENY (418 "short and stout")');
      expect(no.stdout).toContain('decision with Rego: DENY');
    } finally {
      tmp.cleanup();
    }
  });
});
