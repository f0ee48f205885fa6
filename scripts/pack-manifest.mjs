// npm runs `prepare` in a repository clone (so `npm ci` builds dist/), but a package installed from
// its tarball must carry no install-time script: npm 11 warns about every one it finds. prepack
// calls this with `strip` to drop `prepare` from package.json before npm reads the manifest;
// postpack calls it with `restore`. `prepare` is kept as the last script so that the file is
// byte-for-byte the same afterwards (test/integration/package.test.ts checks it).
import { readFileSync, writeFileSync } from 'node:fs';

const PREPARE = 'tsc -p tsconfig.json && node scripts/bundle.mjs';
const file = new URL('../package.json', import.meta.url);
const manifest = JSON.parse(readFileSync(file, 'utf8'));
const mode = process.argv[2];
if (mode === 'strip') delete manifest.scripts.prepare;
else if (mode === 'restore') manifest.scripts.prepare = PREPARE;
else {
  process.stderr.write('usage: node scripts/pack-manifest.mjs strip|restore\n');
  process.exit(2);
}
writeFileSync(file, `${JSON.stringify(manifest, null, 2)}\n`);
