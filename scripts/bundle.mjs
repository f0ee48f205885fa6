// Builds dist/bundle/portcullis.cjs: the CLI and every dependency it loads in one CommonJS file.
// Node then reads and compiles one file instead of resolving some 400 modules, and launch.cjs can
// keep a V8 code cache for it (run → ready: ~550 ms → under 300 ms here). The library API stays
// in dist/ as tsc wrote it. Runs after tsc (npm run build, prepare).
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
await build({
  entryPoints: [join(root, 'dist/cli/entry.js')],
  outfile: join(root, 'dist/bundle/portcullis.cjs'),
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20.18',
  // The code reads files beside itself through import.meta.url (package.json, examples/): the
  // bundle sits two levels under the package root as dist/cli/*.js does, so the same relative
  // URLs hold. opa-wasm is loaded with createRequire at run time and stays a node_modules package.
  define: { 'import.meta.url': '__portcullisModuleUrl' },
  banner: { js: "const __portcullisModuleUrl = require('node:url').pathToFileURL(__filename).href;" },
  minify: true,
  keepNames: true,
  legalComments: 'linked',
  logLevel: 'warning',
});
