// Builds dist/bundle/portcullis.cjs: the CLI and every dependency it loads in one CommonJS file.
// Node then reads and compiles one file instead of resolving some 400 modules, and launch.cjs can
// keep a V8 code cache for it (run → ready: ~550 ms → under 300 ms here). The library API stays
// in dist/ as tsc wrote it. Runs after tsc (npm run build, prepare).
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outfile = join(root, 'dist/bundle/portcullis.cjs');
await build({
  entryPoints: [join(root, 'dist/cli/entry.js')],
  outfile,
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

// launch.cjs runs the bundle as a vm.Script, which has no loader for import(): esbuild turns the
// imports of bundled modules into requires, but leaves import() of anything it did not bundle
// (a built-in module, say). Fail the build rather than the command that reaches one.
const left = /(?<![.\w$])import\(\s*["'`]([^"'`]*)/.exec(readFileSync(outfile, 'utf8'));
if (left !== null) {
  process.stderr.write(`bundle: import("${left[1]}") is left in ${outfile}; import it statically\n`);
  process.exit(1);
}
