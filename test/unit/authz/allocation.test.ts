import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const PROBE = fileURLToPath(new URL('./alloc-probe.mjs', import.meta.url));
const DIST = fileURLToPath(new URL('../../../dist/authz/compile.js', import.meta.url));

interface ProbeResult {
  decisions: number;
  policies: number;
  bytesPerDecision: number;
  gcs: number;
  nsPerDecision: number;
  allowed: number;
}

function probe(decisions: number, policies: number): Promise<ProbeResult> {
  return new Promise((resolve, reject) => {
    // A young generation large enough that no collection runs during the loop: heap growth is then
    // exactly what the decisions allocated, and any collection at all is itself evidence of garbage.
    execFile(
      process.execPath,
      ['--expose-gc', '--max-semi-space-size=128', PROBE, String(decisions), String(policies)],
      { timeout: 120_000 },
      (err, stdout, stderr) =>
        err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(JSON.parse(stdout) as ProbeResult),
    );
  });
}

describe('the compiled decision path allocates nothing', () => {
  it.each([5, 20])(
    'a million decisions over %i policies grow the heap by less than one byte each',
    async (policies) => {
      expect(existsSync(DIST), 'run "npm run build" first (npm test does)').toBe(true);
      const r = await probe(1_000_000, policies);
      expect(r.decisions).toBe(1_000_000);
      // Both outcomes occur, so both code paths were exercised.
      expect(r.allowed).toBeGreaterThan(0);
      expect(r.allowed).toBeLessThan(1_300_000);
      expect(r.gcs).toBe(0);
      expect(r.bytesPerDecision).toBeLessThan(1);
    },
    120_000,
  );
});
