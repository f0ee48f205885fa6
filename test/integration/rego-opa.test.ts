import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { request } from '../helpers/client.js';
import { startHarness } from '../helpers/harness.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const hasOpa = spawnSync('opa', ['version'], { encoding: 'utf8' }).status === 0;
if (!hasOpa)
  console.log(
    'rego-opa.test.ts: skipped — the `opa` CLI is not on PATH (it is not in the npm or Debian registries)',
  );

describe.skipIf(!hasOpa)('the Rego example in policies/rego, compiled by opa build -t wasm', () => {
  it('allows the web front end to read and refuses the rest', async () => {
    const { TempDir } = await import('../helpers/pki.js');
    const tmp = new TempDir();
    const bundle = tmp.file('authz.tar.gz');
    execFileSync('opa', [
      'build',
      '-t',
      'wasm',
      '-e',
      'envoy/authz/allow',
      '-o',
      bundle,
      `${ROOT}policies/rego/`,
    ]);
    const h = await startHarness({
      files: { 'authz.tar.gz': (await import('node:fs')).readFileSync(bundle) },
      listener: { rego: { bundle: 'authz.tar.gz' } },
    });
    try {
      expect((await request(`${h.url}/api/items`, h.client)).status).toBe(200);
      expect((await request(`${h.url}/api/items`, { ...h.client, method: 'DELETE' })).status).toBe(403);
      expect((await request(`${h.url}/admin`, h.client)).status).toBe(403);
    } finally {
      await h.close();
      tmp.cleanup();
    }
  });
});
