import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Ignore } from '@balena/dockerignore';
import { describe, expect, it } from 'vitest';

/**
 * The image must never carry a private key. The Docker build context is the working tree minus
 * what .dockerignore excludes (Docker's own matching rules, through @balena/dockerignore, the
 * implementation docker-modem uses); the runtime stage copies only what it names.
 */

// The package is CommonJS (module.exports = factory) while its types declare an ES default export.
const ignore = createRequire(import.meta.url)('@balena/dockerignore') as () => Ignore;
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const ig = ignore().add(readFileSync(join(ROOT, '.dockerignore'), 'utf8'));
const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');

/** Every file Docker would send as the build context (node_modules and .git are walked no deeper than needed). */
function buildContext(): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir)) {
      const full = join(dir, name);
      const rel = relative(ROOT, full);
      if (statSync(full).isDirectory()) {
        // These are large; the walk only needs to know that they are excluded.
        if (rel === 'node_modules' || rel === '.git') {
          expect(ig.ignores(`${rel}/x`), `${rel} must not be in the build context`).toBe(true);
          continue;
        }
        walk(full);
      } else if (!ig.ignores(rel)) {
        out.push(rel);
      }
    }
  };
  walk(ROOT);
  return out;
}

describe('the Docker build context and image', () => {
  const context = buildContext();

  it('holds no private key, whatever else the tree holds', () => {
    expect(context.length).toBeGreaterThan(10);
    const withKeys = context.filter((f) =>
      /-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(readFileSync(join(ROOT, f), 'latin1')),
    );
    expect(withKeys).toEqual([]);
  });

  it.each([
    'examples/quickstart/ca/ca.key',
    'examples/quickstart/certs/api.key',
    'examples/edge-gateway/certs/partner-a.key',
    'examples/edge-gateway/issuer/partner-a.json',
    'certs/api.key',
    'secrets/cookie-key',
    '.env',
    'portcullis.yaml',
  ])('would leave out %s, should a user make it', (p) => {
    expect(ig.ignores(p)).toBe(true);
  });

  it('holds what the build stage copies', () => {
    const copied = [...dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap((m) =>
      (m[1] as string).split(/\s+/),
    );
    expect(copied.length).toBeGreaterThan(3);
    for (const src of copied)
      expect(
        context.some((f) => f === src || f.startsWith(`${src}/`)),
        src,
      ).toBe(true);
  });

  it('warms the code cache under the V8 flags it runs with (V8 ignores a cache made under others)', () => {
    const stages = dockerfile.split(/^FROM /m).slice(1);
    expect(stages).toHaveLength(2);
    for (const stage of stages) expect(stage).toMatch(/^ENV NODE_OPTIONS=\$\{PORTCULLIS_NODE_OPTIONS\}$/m);
    expect(dockerfile).toMatch(/^ARG PORTCULLIS_NODE_OPTIONS="--max-semi-space-size=\d+"$/m);
    const build = stages[0] as string;
    expect(build).toMatch(
      /npm ci[\s\\]*&& PORTCULLIS_CODE_CACHE=write node dist\/cli\/launch\.cjs demo --once/,
    );
    expect(dockerfile).toMatch(/^ENTRYPOINT \["node", "\/app\/dist\/cli\/launch\.cjs"\]$/m);
  });

  it('runs as a numeric non-root user, with a health check and only runtime files', () => {
    const runtime = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
    expect(runtime).toMatch(/^USER [1-9]\d*:[1-9]\d*$/m);
    expect(runtime).toMatch(/^HEALTHCHECK .*\n?.*probe/m);
    expect(runtime).toMatch(/^EXPOSE 15006$/m);
    const sources = [...runtime.matchAll(/^COPY (.+) \S+$/gm)].map((m) => m[1] as string);
    expect(sources).toEqual([
      '--from=build /app/package.json',
      '--from=build /app/node_modules',
      '--from=build /app/dist',
      'LICENSE',
    ]);
    expect(dockerfile).toMatch(/^ARG NODE_IMAGE=node:\d+\.\d+\.\d+-bookworm-slim$/m);
  });
});
