import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, readFileSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TempDir } from '../helpers/pki.js';

/**
 * Portcullis as a package: `npm pack`, then installed from the tarball in a scratch project the
 * way a user would, with `npx portcullis` working and npm printing no warning. The pack runs in a
 * copy of the project (sharing its node_modules), so that prepack's build and postpack's rewrite of
 * package.json never touch files other tests are reading.
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';

interface PackResult {
  filename: string;
  files: { path: string }[];
}

describe('the packed package', () => {
  const dir = new TempDir('portcullis-pack-');
  const before = readFileSync(join(ROOT, 'package.json'), 'utf8');
  const copy = dir.file('source');
  let packed: PackResult;
  let tarball: string;

  beforeAll(() => {
    for (const p of [
      'package.json',
      'README.md',
      'LICENSE',
      'tsconfig.json',
      'tsconfig.base.json',
      'src',
      'scripts',
      'examples',
      'policies',
    ])
      cpSync(join(ROOT, p), join(copy, p), { recursive: true });
    symlinkSync(join(ROOT, 'node_modules'), join(copy, 'node_modules'));
    const out = execFileSync(NPM, ['pack', '--json', '--pack-destination', dir.path], {
      cwd: copy,
      stdio: ['ignore', 'pipe', 'pipe'],
    }).toString();
    // prepack's tsc prints nothing; the JSON is the whole of stdout.
    packed = (JSON.parse(out.slice(out.indexOf('['))) as PackResult[])[0] as PackResult;
    tarball = join(dir.path, packed.filename);
  }, 120_000);
  afterAll(() => dir.cleanup());

  it('ships the CLI, the library, the licence and the examples, and no key or source', () => {
    const paths = packed.files.map((f) => f.path);
    for (const p of [
      'package.json',
      'LICENSE',
      'README.md',
      'dist/cli/main.js',
      'dist/cli/launch.cjs',
      'dist/bundle/portcullis.cjs',
      'dist/index.js',
      'dist/index.d.ts',
    ])
      expect(paths).toContain(p);
    expect(paths).toContain('examples/demo/policies/authz.yaml');
    // A code cache is made where the package runs, never shipped (it is specific to one Node build).
    expect(paths.filter((p) => p.endsWith('.cache') || p.endsWith('.tmp'))).toEqual([]);
    expect(paths.filter((p) => p.startsWith('src/') || p.startsWith('test/'))).toEqual([]);
    expect(paths.filter((p) => /\.(key|pem|tgz)$|\/(ca|certs|bundles|issuer)\//.test(p))).toEqual([]);
    const withKeys = paths.filter((p) =>
      // A key is the armour line followed by base64; the bundle carries PEM parsers that name the line.
      /-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=]{40,}/.test(
        readFileSync(join(ROOT, p), 'latin1'),
      ),
    );
    expect(withKeys).toEqual([]);
  });

  it('leaves package.json as it was (postpack puts prepare back)', () => {
    expect(readFileSync(join(copy, 'package.json'), 'utf8')).toBe(before);
  });

  it('has no install-time scripts, and source maps that carry their sources', () => {
    execFileSync('tar', ['xzf', tarball, '-C', dir.path]);
    const manifest = JSON.parse(readFileSync(dir.file('package/package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    };
    for (const s of ['preinstall', 'install', 'postinstall', 'prepare'])
      expect(manifest.scripts[s]).toBeUndefined();
    const map = JSON.parse(readFileSync(dir.file('package/dist/cli/main.js.map'), 'utf8')) as {
      sourcesContent?: string[];
    };
    expect(map.sourcesContent?.[0]).toContain('export async function main');
  });

  it('installs from the tarball without a warning, and npx portcullis runs', () => {
    const project = dir.file('project');
    dir.write('project/package.json', JSON.stringify({ name: 'scratch', version: '1.0.0', private: true }));
    const install = spawnSync(NPM, ['install', tarball, '--prefer-offline', '--no-audit', '--no-fund'], {
      cwd: project,
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(install.status, install.stderr).toBe(0);
    expect(install.stderr).not.toMatch(/warn/i);
    const help = spawnSync(NPM, ['exec', '--', 'portcullis', '--help'], { cwd: project, encoding: 'utf8' });
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toContain('portcullis run');
    const version = spawnSync(NPM, ['exec', '--', 'portcullis', '--version'], {
      cwd: project,
      encoding: 'utf8',
    });
    expect(version.stdout.trim()).toBe(JSON.parse(before).version);
  }, 120_000);
});
