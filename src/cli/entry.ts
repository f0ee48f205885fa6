// The entry of the single-file CLI bundle (dist/bundle/portcullis.cjs, built by
// scripts/bundle.mjs and loaded by launch.cjs): the CLI, run with the process arguments.
import { main } from './main.js';

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
