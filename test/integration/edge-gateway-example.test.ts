import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfigFile } from '../../src/config/load.js';
import { Portcullis } from '../../src/proxy/portcullis.js';
import { request } from '../helpers/client.js';
import { testLogger } from '../helpers/harness.js';
import { TempDir } from '../helpers/pki.js';

/**
 * examples/edge-gateway as its README runs it: the `npx portcullis` commands of its first shell
 * block, executed as written (with the built CLI) in a copy of the folder; its partner issuer and
 * legacy app; then the README's calls, allowed and refused. Only the ports change (port 0).
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const EXAMPLE = join(ROOT, 'examples/edge-gateway');
const BIN = join(ROOT, 'dist/cli/main.js');

function readmeCommands(): string[][] {
  const readme = readFileSync(join(EXAMPLE, 'README.md'), 'utf8');
  const block = /```sh\n([\s\S]*?)```/.exec(readme)?.[1] ?? '';
  return block
    .split('\n')
    .filter((l) => l.startsWith('npx portcullis ca '))
    .map((l) => l.replace(/^npx portcullis /, '').split(/\s+/));
}

/** Starts one of the example's scripts with --port 0 and resolves with the port it printed. */
function startScript(
  dir: string,
  script: string,
  args: string[],
): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, [join(dir, script), ...args, '--port', '0'], { cwd: dir });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /127\.0\.0\.1:(\d+)/.exec(out);
      if (m !== null) resolve({ child, port: Number(m[1]) });
    });
    child.once('exit', (code) => reject(new Error(`${script} exited with ${code}`)));
  });
}

describe('examples/edge-gateway, run as its README says', () => {
  const dir = new TempDir('portcullis-edge-');
  let issuer: { child: ChildProcess; port: number };
  let app: { child: ChildProcess; port: number };
  let proxy: Portcullis;
  let url: string;
  const tls = (who: string) => ({
    cert: readFileSync(dir.file(`certs/${who}.pem`), 'utf8'),
    key: readFileSync(dir.file(`certs/${who}.key`), 'utf8'),
    ca: readFileSync(dir.file('bundles/corp.example.pem'), 'utf8'),
  });
  const token = (partner: string, tenant: string): string =>
    execFileSync(process.execPath, [dir.file('partner-issuer.mjs'), 'token', partner, '--tenant', tenant], {
      cwd: dir.path,
    })
      .toString()
      .trim();

  beforeAll(async () => {
    cpSync(EXAMPLE, dir.path, { recursive: true });
    const commands = readmeCommands();
    expect(commands.length).toBe(10);
    for (const args of commands) execFileSync(process.execPath, [BIN, ...args], { cwd: dir.path });
    // The scripts import jose: resolve it from the project, as they do when run in place.
    cpSync(join(ROOT, 'node_modules/jose'), dir.file('node_modules/jose'), { recursive: true });
    issuer = await startScript(dir.path, 'partner-issuer.mjs', ['serve']);
    app = await startScript(dir.path, 'legacy-app.mjs', []);
    const cfg = readFileSync(dir.file('portcullis.yaml'), 'utf8')
      .replace('127.0.0.1:8443', '127.0.0.1:0')
      .replace('http://127.0.0.1:8080', `http://127.0.0.1:${app.port}`)
      .replace('127.0.0.1:15000', '127.0.0.1:0');
    writeFileSync(dir.file('portcullis.yaml'), cfg);
    const jwt = readFileSync(dir.file('policies/jwt.yaml'), 'utf8').replaceAll(
      '127.0.0.1:9444',
      `127.0.0.1:${issuer.port}`,
    );
    writeFileSync(dir.file('policies/jwt.yaml'), jwt);
    execFileSync(process.execPath, [BIN, 'validate', '-c', dir.file('portcullis.yaml')]);
    proxy = await Portcullis.start(loadConfigFile(dir.file('portcullis.yaml')), { logger: testLogger });
    url = `https://localhost:${proxy.listenerAddress('public').port}`;
  });
  afterAll(async () => {
    await proxy?.close();
    issuer?.child.kill();
    app?.child.kill();
    dir.cleanup();
  });

  it('partner A with its token reaches the app, which learns the caller and tenant', async () => {
    const res = await request(`${url}/invoices`, {
      ...tls('partner-a'),
      headers: { 'x-partner-token': `Token ${token('partner-a', 'acme')}` },
    });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toMatchObject({
      caller: 'spiffe://partner-a.example/ns/erp/sa/invoicing',
      tenant: 'acme',
    });
  });

  it('partner A without a token is refused (403), though its certificate is valid', async () => {
    const res = await request(`${url}/invoices`, tls('partner-a'));
    expect(res.status).toBe(403);
  });

  it("partner B with partner A's token is refused: a token is bound to its partner", async () => {
    const res = await request(`${url}/invoices`, {
      ...tls('partner-b'),
      headers: { 'x-partner-token': `Token ${token('partner-a', 'acme')}` },
    });
    expect(res.status).toBe(403);
  });

  it('partner B reads with its token, and may not write', async () => {
    const headers = { 'x-partner-token': `Token ${token('partner-b', 'shop-7')}` };
    expect((await request(`${url}/invoices/7`, { ...tls('partner-b'), headers })).status).toBe(200);
    expect((await request(`${url}/invoices`, { ...tls('partner-b'), headers, method: 'POST' })).status).toBe(
      403,
    );
  });

  it('a bad token is 401, and the corp workload needs none', async () => {
    const bad = await request(`${url}/invoices`, {
      ...tls('partner-a'),
      headers: { 'x-partner-token': 'Token not.a.jwt' },
    });
    expect(bad.status).toBe(401);
    expect((await request(`${url}/reports`, tls('corp-reports'))).status).toBe(200);
  });

  it('a client without a certificate is refused at TLS', async () => {
    const { cert: _c, key: _k, ...noCert } = tls('partner-a');
    await expect(request(`${url}/invoices`, noCert)).rejects.toThrow();
  });

  it('partner A’s bundle is in the SPIFFE format, made by ca bundle --format spiffe', () => {
    const b = JSON.parse(readFileSync(dir.file('bundles/partner-a.json'), 'utf8')) as {
      keys: { use: string; x5c: string[] }[];
    };
    expect(b.keys[0]?.use).toBe('x509-svid');
    expect(b.keys[0]?.x5c).toHaveLength(1);
  });
});
