import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TempDir } from '../helpers/pki.js';

/**
 * The `portcullis` command (dist/cli/launch.cjs): the single-file bundle, loaded with a V8 code
 * cache kept beside it. Each case runs a copy of the built package in a scratch directory, so the
 * caches it writes are its own.
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const CACHE_NAME = `portcullis.cjs.${process.version}-${process.arch}.cache`;

/** A copy of the built package: dist/ (optionally without the bundle), package.json, node_modules. */
function installCopy(dir: TempDir, name: string, withBundle = true): string {
  const root = dir.file(name);
  cpSync(join(ROOT, 'dist'), join(root, 'dist'), {
    recursive: true,
    filter: (src) => !src.endsWith('.cache') && (withBundle || !src.includes(`${join('dist', 'bundle')}`)),
  });
  cpSync(join(ROOT, 'package.json'), join(root, 'package.json'));
  cpSync(join(ROOT, 'examples', 'demo'), join(root, 'examples', 'demo'), { recursive: true });
  symlinkSync(join(ROOT, 'node_modules'), join(root, 'node_modules'));
  return root;
}

function portcullis(root: string, args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [join(root, 'dist/cli/launch.cjs'), ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 60_000,
  });
}

describe('the portcullis command and its code cache', () => {
  const dir = new TempDir('portcullis-launch-');
  let root: string;
  let cache: string;
  beforeAll(() => {
    root = installCopy(dir, 'pkg');
    cache = join(root, 'dist', 'bundle', CACHE_NAME);
  });
  afterAll(() => dir.cleanup());

  it('runs from the bundle and writes a cache beside it on the first run', () => {
    expect(existsSync(cache)).toBe(false);
    const r = portcullis(root, ['--version']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(VERSION);
    expect(r.stderr).toBe('');
    const written = readFileSync(cache);
    expect(written.length).toBeGreaterThan(10_000);
    expect(String.fromCharCode(written[0] as number)).toBe('C'); // made by a short command
  });

  it('uses a cache V8 accepts as it is, and replaces one it rejects', () => {
    const before = readFileSync(cache);
    expect(portcullis(root, ['--version']).stdout.trim()).toBe(VERSION);
    expect(readFileSync(cache).equals(before)).toBe(true);

    // Garbage (or a cache from another Node build): V8 refuses it, the command still works.
    writeFileSync(cache, Buffer.concat([Buffer.from('C'), Buffer.alloc(4096, 7)]));
    const r = portcullis(root, ['--version']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(VERSION);
    const rewritten = readFileSync(cache);
    expect(rewritten.subarray(1, 4097).equals(Buffer.alloc(4096, 7))).toBe(false);
    expect(rewritten.length).toBeGreaterThan(10_000);
  });

  it('lets the proxy replace a cache a short command made, with a larger one', () => {
    const small = readFileSync(cache);
    const r = portcullis(root, ['demo', '--once', '--port', '0', '--admin-port', '0']);
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toContain('Every call behaved as expected.');
    const big = readFileSync(cache);
    expect(String.fromCharCode(big[0] as number)).toBe('R');
    expect(big.length).toBeGreaterThan(small.length);
    // A short command then leaves the proxy's cache alone.
    expect(portcullis(root, ['--version']).status).toBe(0);
    expect(readFileSync(cache).equals(big)).toBe(true);
  }, 60_000);

  it('writes nothing with PORTCULLIS_CODE_CACHE=off', () => {
    const other = installCopy(dir, 'off');
    const r = portcullis(other, ['--version'], { PORTCULLIS_CODE_CACHE: 'off' });
    expect(r.stdout.trim()).toBe(VERSION);
    expect(existsSync(join(other, 'dist', 'bundle', CACHE_NAME))).toBe(false);
  });

  it('runs the unbundled CLI where there is no bundle', () => {
    const plain = installCopy(dir, 'plain', false);
    expect(existsSync(join(plain, 'dist', 'bundle'))).toBe(false);
    const r = portcullis(plain, ['--version']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(VERSION);
  });
});
