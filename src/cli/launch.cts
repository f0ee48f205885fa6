#!/usr/bin/env node
/**
 * The `portcullis` command. Loads the single-file CLI bundle (dist/bundle/portcullis.cjs) with a
 * V8 code cache beside it, so that a sidecar starts without resolving hundreds of modules and
 * without compiling what it compiled last time: run → /readyz drops from ~550 ms to under 300 ms.
 *
 * The cache is V8's own format (bytecode of the functions compiled so far). V8 checks it against
 * the source, the V8 version and the flags, and ignores a cache that does not match; then this
 * launcher writes a new one. It is only ever read from and written to the bundle's own directory,
 * whose files are the code anyway: a cache in a shared directory such as /tmp could be planted by
 * another user. Where that directory is read-only (an image run as a non-root user), nothing is
 * written: build the image so that one run writes it (the Dockerfile does).
 * PORTCULLIS_CODE_CACHE=off turns the cache off; =write writes it at exit whatever the command.
 *
 * Without a bundle (a checkout where only tsc ran), it runs the unbundled CLI instead.
 */
import fs = require('node:fs');
import Module = require('node:module');
import path = require('node:path');
import url = require('node:url');
import vm = require('node:vm');

const bundle = path.join(__dirname, '..', 'bundle', 'portcullis.cjs');
// One cache per Node version and architecture: installs shared by several Node versions (a
// developer's machine) do not overwrite each other's cache on every run.
const cacheFile = `${bundle}.${process.version}-${process.arch}.cache`;
const mode = process.env.PORTCULLIS_CODE_CACHE;
const useCache = mode !== 'off';
// A cache made by a short command (validate, probe) holds little of what `run` compiles: the
// first byte says which kind of command made it, and `run` replaces one that a short command made.
const LONG_RUNNING = new Set(['run', 'demo']);
const FROM_RUN = 0x52; // 'R'
const FROM_OTHER = 0x43; // 'C'
const command = process.argv[2] ?? '';
const marker = LONG_RUNNING.has(command) ? FROM_RUN : FROM_OTHER;

interface Cache {
  readonly data: Buffer;
  readonly marker: number;
}

function readCache(): Cache | null {
  if (!useCache) return null;
  try {
    const file = fs.readFileSync(cacheFile);
    if (file.length < 2) return null;
    return { marker: file[0] as number, data: file.subarray(1) };
  } catch {
    return null;
  }
}

/** Writes the cache atomically (a reader never sees half a file); silent where it cannot. */
function writeCache(script: vm.Script): void {
  try {
    fs.accessSync(path.dirname(bundle), fs.constants.W_OK);
  } catch {
    return;
  }
  const tmp = `${cacheFile}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, Buffer.concat([Buffer.of(marker), script.createCachedData()]), {
      mode: 0o644,
      flag: 'wx',
    });
    fs.renameSync(tmp, cacheFile);
  } catch {
    fs.rmSync(tmp, { force: true });
  }
}

function runBundle(source: string): void {
  const cache = readCache();
  const script = new vm.Script(Module.wrap(source), {
    filename: bundle,
    // No dynamic import() may be left in the bundle (scripts/bundle.mjs checks): a script run
    // this way has no module loader for one.
    cachedData: cache?.data,
  });
  const loaded = cache !== null && script.cachedDataRejected === false;
  const write =
    mode === 'write' || (useCache && (!loaded || (marker === FROM_RUN && cache?.marker !== FROM_RUN)));
  if (write) {
    // Written once most of what the command needs has been compiled: two seconds into a
    // long-running command, or at exit, whichever comes first (PORTCULLIS_CODE_CACHE=write: at
    // exit, whatever the command; an image build uses it).
    const onExit = (): void => {
      clearTimeout(timer);
      writeCache(script);
    };
    const timer = setTimeout(() => {
      process.removeListener('exit', onExit);
      writeCache(script);
    }, 2_000);
    timer.unref();
    if (mode === 'write') clearTimeout(timer);
    process.once('exit', onExit);
  }
  const wrapper = script.runInThisContext() as (
    exports: unknown,
    require: NodeJS.Require,
    module: { exports: unknown },
    filename: string,
    dirname: string,
  ) => void;
  const mod = { exports: {} };
  wrapper.call(mod.exports, mod.exports, Module.createRequire(bundle), mod, bundle, path.dirname(bundle));
}

let source: string | null = null;
try {
  source = fs.readFileSync(bundle, 'utf8');
} catch {
  source = null;
}
if (source !== null) {
  runBundle(source);
} else {
  // No bundle: the CLI as tsc built it.
  const main = url.pathToFileURL(path.join(__dirname, 'main.js')).href;
  import(main).then(
    (m: { main: (argv: string[]) => Promise<number> }) =>
      m.main(process.argv.slice(2)).then((code) => {
        process.exitCode = code;
      }),
    (err: unknown) => {
      process.stderr.write(`portcullis: cannot load the CLI: ${(err as Error).message}\n`);
      process.exitCode = 1;
    },
  );
}
