import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { cpSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfigFile } from '../../src/config/load.js';
import { Portcullis } from '../../src/proxy/portcullis.js';
import { request } from '../helpers/client.js';
import { testLogger } from '../helpers/harness.js';
import { BrowserWalk, CookieJar } from '../helpers/oidc.js';
import { TempDir } from '../helpers/pki.js';

/**
 * examples/edge-gateway-people as its README runs it: the commands of its first shell block
 * (`npx portcullis …` with the built CLI, `mkdir`, the `node -e` secrets) in a copy of the folder,
 * its provider and app, then people signing in through the provider's own pages. Only the ports
 * change (free ports).
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const EXAMPLE = join(ROOT, 'examples/edge-gateway-people');
const BIN = join(ROOT, 'dist/cli/main.js');

/** The README's first shell block, up to the background processes. */
function readmeSteps(): string[] {
  const readme = readFileSync(join(EXAMPLE, 'README.md'), 'utf8');
  const block = /```sh\n([\s\S]*?)```/.exec(readme)?.[1] ?? '';
  return block.split('\n').filter((l) => /^(npx portcullis ca |mkdir |node -e )/.test(l));
}

function run(dir: string, line: string): void {
  if (line.startsWith('npx portcullis ')) {
    execFileSync(process.execPath, [BIN, ...line.replace(/^npx portcullis /, '').split(/\s+/)], { cwd: dir });
  } else if (line.startsWith('mkdir -p ')) {
    execFileSync('mkdir', ['-p', line.slice('mkdir -p '.length)], { cwd: dir });
  } else {
    // node -e "<script>" > <file>
    const m = /^node -e "(.+)" > (\S+)$/.exec(line);
    if (m === null) throw new Error(`unexpected README line: ${line}`);
    writeFileSync(join(dir, m[2] as string), execFileSync(process.execPath, ['-e', m[1] as string]));
  }
}

function start(dir: string, script: string, args: string[]): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, [join(dir, script), ...args], { cwd: dir });
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

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

describe('examples/edge-gateway-people, run as its README says', () => {
  const dir = new TempDir('portcullis-people-');
  let provider: { child: ChildProcess; port: number };
  let app: { child: ChildProcess; port: number };
  let proxy: Portcullis;
  let origin: string;
  let walk: BrowserWalk;
  let dispatcher: Agent;

  beforeAll(async () => {
    cpSync(EXAMPLE, dir.path, { recursive: true });
    // The provider script imports oidc-provider: resolve it from the project, as when run in place.
    symlinkSync(join(ROOT, 'node_modules'), dir.file('node_modules'));
    const steps = readmeSteps();
    expect(steps.length).toBe(6);
    for (const line of steps) run(dir.path, line);
    const port = await freePort();
    origin = `https://localhost:${port}`;
    provider = await start(dir.path, 'login-provider.mjs', [
      '--port',
      '0',
      '--redirect-uri',
      `${origin}/.portcullis/callback`,
    ]);
    app = await start(dir.path, 'legacy-app.mjs', ['--port', '0']);
    const cfg = readFileSync(dir.file('portcullis.yaml'), 'utf8')
      .replace('127.0.0.1:8443', `127.0.0.1:${port}`)
      .replace('http://127.0.0.1:9000', `http://127.0.0.1:${provider.port}`)
      .replace('http://127.0.0.1:8080', `http://127.0.0.1:${app.port}`)
      .replace('127.0.0.1:15000', '127.0.0.1:0');
    writeFileSync(dir.file('portcullis.yaml'), cfg);
    execFileSync(process.execPath, [BIN, 'validate', '-c', dir.file('portcullis.yaml')]);
    proxy = await Portcullis.start(loadConfigFile(dir.file('portcullis.yaml')), { logger: testLogger });
    dispatcher = new Agent({ connect: { ca: readFileSync(dir.file('bundles/corp.example.pem'), 'utf8') } });
    walk = new BrowserWalk(dispatcher, `http://127.0.0.1:${provider.port}`, origin);
  }, 60_000);
  afterAll(async () => {
    await proxy?.close();
    provider?.child.kill();
    app?.child.kill();
    await dispatcher?.close();
    dir.cleanup();
  });

  it('alice signs in and the app greets her; /admin is refused to her', async () => {
    const jar = new CookieJar();
    const page = await walk.browse(jar, `${origin}/`, 'alice');
    expect(page.status).toBe(200);
    expect(page.body).toContain('Hello alice alice@corp.example');
    expect((await walk.step(jar, `${origin}/admin/`)).status).toBe(403);
  });

  it('admin signs in and reaches /admin', async () => {
    const page = await walk.browse(new CookieJar(), `${origin}/admin/`, 'admin');
    expect(page.status).toBe(200);
    expect(page.body).toContain('<h1>Administration</h1>');
  });

  it('answers the README’s calls without a browser', async () => {
    const ca = readFileSync(dir.file('bundles/corp.example.pem'), 'utf8');
    expect((await request(`${origin}/healthz`, { ca })).status).toBe(200);
    expect((await request(`${origin}/`, { ca, headers: { accept: 'application/json' } })).status).toBe(401);
    const redirect = await request(`${origin}/`, { ca, headers: { accept: 'text/html' } });
    expect(redirect.status).toBe(302);
    expect(String(redirect.headers.location)).toContain(`http://127.0.0.1:${provider.port}/auth?`);
    const workload = await request(`${origin}/reports`, {
      ca,
      cert: readFileSync(dir.file('certs/gateway.pem'), 'utf8'),
      key: readFileSync(dir.file('certs/gateway.key'), 'utf8'),
    });
    expect(workload.status).toBe(200);
    expect(workload.text).toContain('Hello (nobody)');
  });
});
