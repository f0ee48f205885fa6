import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { replayAudit } from '../../src/audit/replay.js';
import { loadConfigFile } from '../../src/config/load.js';
import { loadPolicies } from '../../src/istio/load.js';
import {
  requestEvent,
  SCENARIO_CONFIG,
  SCENARIO_NEW_POLICIES,
  SCENARIO_OLD_POLICIES,
  scenarioEvent,
} from '../helpers/audit-events.js';
import { request } from '../helpers/client.js';
import { startHarness } from '../helpers/harness.js';
import { ISSUER, JwksServer, makeKey, requestAuthentication, sign } from '../helpers/jwks.js';
import { TempDir } from '../helpers/pki.js';
import { until } from '../helpers/wait.js';

const BIN = join(import.meta.dirname, '../../dist/cli/launch.cjs');
const N = 120_000;

function cli(args: string[], cwd: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

interface Report {
  events: number;
  replayed: number;
  allow_to_deny: number;
  deny_to_allow: number;
  unchanged: number;
  unchanged_other_rule: number;
  undecidable: number;
  not_replayed: number;
  not_replayed_by_reason: Record<string, number>;
  invalid_lines: number;
  invalid_samples: string[];
  fidelity: { decided_despite_missing: number; undecidable_by_attribute: Record<string, number> };
  groups: {
    transition: string;
    count: number;
    old: { decision: string; reason: string; policy: string | null; rule: number | null };
    new: { decision: string; reason: string; policy: string | null; rule: number | null };
    missing: string[];
    samples: { requestId: string; file: string; line: number; path: string }[];
  }[];
  events_per_second: number;
  exit: number;
}

/**
 * `portcullis replay` on a generated audit log of 120,000 events whose fate under the new policies
 * is known event by event (test/helpers/audit-events.ts), spread over a current file, a rotated
 * one and a gzipped older one.
 */
describe('portcullis replay over 120,000 recorded events', () => {
  const dir = new TempDir('portcullis-replay-');
  let json: Report;
  let code: number | null;

  beforeAll(async () => {
    dir.write('portcullis.yaml', SCENARIO_CONFIG);
    dir.write('old/policies.yaml', SCENARIO_OLD_POLICIES);
    dir.write('new/policies.yaml', SCENARIO_NEW_POLICIES);
    const chunk = (from: number, to: number): string[] => {
      const out: string[] = [];
      for (let i = from; i < to; i++) out.push(JSON.stringify(scenarioEvent(i)));
      return out;
    };
    const third = N / 3;
    writeFileSync(dir.file('audit.ndjson.2.gz'), gzipSync(`${chunk(0, third).join('\n')}\n`));
    const middle = chunk(third, 2 * third);
    // A line cut short (a crash mid-write) and one of another schema: counted, never fatal.
    middle.splice(10, 0, '{"version":1,"time":"2026-12-06T00:0', '{"version":2,"requestId":"x"}');
    writeFileSync(dir.file('audit.ndjson.1'), `${middle.join('\n')}\n`);
    writeFileSync(dir.file('audit.ndjson'), `${chunk(2 * third, N).join('\n')}\n`);
    const files = ['audit.ndjson.2.gz', 'audit.ndjson.1', 'audit.ndjson'].flatMap((f) => ['--audit', f]);
    const run = await cli(['replay', ...files, '--policies', 'new', '--json', '--samples', '2'], dir.path);
    code = run.code;
    expect(run.stderr).toBe('');
    json = JSON.parse(run.stdout) as Report;
  }, 60_000);
  afterAll(() => dir.cleanup());

  it('counts every transition exactly', () => {
    expect({
      events: json.events,
      replayed: json.replayed,
      allow_to_deny: json.allow_to_deny,
      deny_to_allow: json.deny_to_allow,
      unchanged: json.unchanged,
      unchanged_other_rule: json.unchanged_other_rule,
      undecidable: json.undecidable,
      not_replayed: json.not_replayed,
      invalid_lines: json.invalid_lines,
    }).toEqual({
      events: N,
      replayed: (N / 12) * 10,
      allow_to_deny: N / 12,
      deny_to_allow: N / 12,
      unchanged: (N / 12) * 6,
      unchanged_other_rule: 0,
      undecidable: (N / 12) * 2,
      not_replayed: (N / 12) * 2,
      invalid_lines: 2,
    });
    expect(json.not_replayed_by_reason).toEqual({
      'jwt-invalid': N / 12,
      'tunnel-closed': N / 24,
      'peer-untrusted': N / 24,
    });
    expect(json.invalid_samples).toEqual([
      'audit.ndjson.1:11: not a JSON object',
      'audit.ndjson.1:12: schema version 2 is not 1',
    ]);
  });

  it('groups each change by what decides it now, with samples that point at the events', () => {
    const a2d = json.groups.find((g) => g.transition === 'allow_to_deny');
    expect(a2d).toMatchObject({
      count: N / 12,
      old: { decision: 'allow', reason: 'policy', policy: 'default/api', rule: 0 },
      new: { decision: 'deny', reason: 'no-matching-allow', policy: null, rule: null },
    });
    expect(a2d?.samples.map((s) => s.requestId)).toEqual(['req-1', 'req-13']);
    expect(a2d?.samples[0]).toMatchObject({ file: 'audit.ndjson.2.gz', line: 2, path: '/api/items' });
    const d2a = json.groups.find((g) => g.transition === 'deny_to_allow');
    expect(d2a).toMatchObject({
      count: N / 12,
      old: { decision: 'deny', reason: 'no-matching-allow' },
      new: { decision: 'allow', reason: 'allowed-by-policy', policy: 'default/metrics', rule: 0 },
    });
    expect(json.groups.map((g) => g.transition)).toEqual([
      'allow_to_deny',
      'deny_to_allow',
      'undecidable',
      'undecidable',
    ]);
  });

  it('is honest about what the events do not hold: undecidable by attribute, and decided-despite counted', () => {
    expect(json.fidelity).toEqual({
      decided_despite_missing: N / 12,
      undecidable_by_attribute: {
        'request.headers[x-debug]': N / 12,
        'request.auth.claims[groups]': N / 12,
      },
    });
    const byClaims = json.groups.find((g) => g.missing.includes('request.auth.claims[groups]'));
    expect(byClaims?.samples[0]?.requestId).toBe('req-8');
  });

  it('fails a pipeline on allow → deny by default (exit 3), on what --fail-on names, or never', async () => {
    expect(code).toBe(3);
    expect(json.exit).toBe(3);
    const args = ['replay', '--audit', 'audit.ndjson', '--policies', 'new'];
    expect((await cli([...args, '--fail-on', 'none'], dir.path)).code).toBe(0);
    expect((await cli([...args, '--fail-on', 'deny-to-allow'], dir.path)).code).toBe(3);
    const bad = await cli([...args, '--fail-on', 'sometimes'], dir.path);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--fail-on: "sometimes" is not one of');
  });

  it('prints a readable report with the rate; against the config policies nothing is denied anew', async () => {
    const text = await cli(['replay', '--audit', 'audit.ndjson', '--audit', 'audit.ndjson.1'], dir.path);
    expect(text.code).toBe(0);
    const out = text.stdout;
    expect(out).toMatch(
      /^replayed 80,000 audit events from 2 files in [\d.]+ s \([\d,]+ events\/s\) against /,
    );
    expect(out).toContain('  2 lines were not audit events (schema version 1), e.g.:');
    expect(out).toContain('  allow → deny    0\n');
    expect(out).toMatch(
      /undecidable: [\d,]+ — needs request\.auth\.claims\[groups\]; was ALLOW \(policy default\/admins rule\[0\]\)/,
    );
    expect(out).toContain('    e.g. 2026-12-06T');
    expect(out).toContain('  request.auth.claims[groups]: ');
    expect(out).toContain('exit 0 (no allow-to-deny)');
  });
});

describe('portcullis replay against the policies that decided the events', () => {
  it('changes nothing (what a no-op policy change must show)', async () => {
    const dir = new TempDir('portcullis-replay-same-');
    try {
      dir.write('portcullis.yaml', SCENARIO_CONFIG);
      dir.write('old/policies.yaml', SCENARIO_OLD_POLICIES);
      const lines: string[] = [];
      // Only the kinds whose record holds what the old policies read (every kind but 8, whose
      // claims the old admins policy read but the event lacks).
      for (let i = 0; i < 1200; i++) if (i % 12 !== 8) lines.push(JSON.stringify(scenarioEvent(i)));
      dir.write('audit.ndjson', `${lines.join('\n')}\n`);
      const config = loadConfigFile(dir.file('portcullis.yaml'), { policiesOnly: true });
      const report = await replayAudit({
        files: [dir.file('audit.ndjson')],
        config,
        policies: loadPolicies(config.policies, 'default').authorizationPolicies,
      });
      expect(report).toMatchObject({
        allow_to_deny: 0,
        deny_to_allow: 0,
        undecidable: 0,
        unchanged_other_rule: 0,
      });
      expect(report.unchanged).toBe(report.replayed);
    } finally {
      dir.cleanup();
    }
  });
});

describe('portcullis replay of what the proxy recorded', () => {
  it('replays real events: the recorded claims and headers decide, and the generator writes the same schema', async () => {
    const key = await makeKey('k1');
    const jwks = new JwksServer([key]);
    const uri = await jwks.listen();
    const h = await startHarness({
      policies: `${SCENARIO_OLD_POLICIES}---\n${requestAuthentication([{ issuer: ISSUER, jwksUri: uri }])}`,
      config: {
        audit: { decisions: 'all', headers: ['x-tenant'], sinks: [{ type: 'file', path: 'audit.ndjson' }] },
      },
    });
    const file = h.dir.file('audit.ndjson');
    try {
      const token = await sign(key, { groups: ['admins'], email: 'alice@example.org' });
      const sent: [string, string, Record<string, string>, number][] = [
        ['POST', '/api/items', { 'x-request-id': 'real-post' }, 200],
        ['GET', '/api/items', { 'x-request-id': 'real-get' }, 200],
        ['GET', '/admin/x', { 'x-request-id': 'real-admin', authorization: `Bearer ${token}` }, 200],
        ['GET', '/tenant/a', { 'x-request-id': 'real-tenant', 'x-tenant': 'acme' }, 200],
      ];
      for (const [method, path, headers, status] of sent)
        expect((await request(`${h.url}${path}`, { ...h.client, method, headers })).status).toBe(status);
      await until('four events', () => {
        try {
          return readFileSync(file, 'utf8').trim().split('\n').length >= 4;
        } catch {
          return false;
        }
      });
      const events = readFileSync(file, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      const admin = events.find((e) => e.requestId === 'real-admin') as Record<
        string,
        Record<string, unknown>
      >;
      // The claims the policies read, and nothing else of the token.
      expect(admin.request?.claims).toEqual({ groups: ['admins'] });
      expect(JSON.stringify(events)).not.toContain('alice@example.org');
      // The generator of the big test writes what the proxy writes.
      const generated = JSON.parse(
        JSON.stringify(
          requestEvent({
            i: 1,
            decision: 'allow',
            status: 200,
            reason: 'policy',
            path: '/admin/x',
            principal: 'x/y',
            headers: { 'x-tenant': null },
            claims: { groups: [] },
          }),
        ),
      ) as Record<string, Record<string, unknown>>;
      const keys = (o: object | undefined): string[] => Object.keys(o ?? {}).sort();
      expect(keys(generated)).toEqual(keys(admin));
      expect(keys(generated.request)).toEqual(keys(admin.request));
      expect(keys(generated.source)).toEqual(keys(admin.source));
      expect(admin.request?.headers).toEqual({ 'x-tenant': null });

      const report = await replayAudit({
        files: [file],
        config: h.proxy.config,
        policies: loadPolicies([h.dir.write('new.yaml', SCENARIO_NEW_POLICIES)], 'default')
          .authorizationPolicies,
      });
      expect(report).toMatchObject({
        events: 4,
        replayed: 4,
        allow_to_deny: 1,
        unchanged: 3,
        undecidable: 0,
      });
      expect(report.groups[0]?.samples[0]?.requestId).toBe('real-post');
    } finally {
      await h.close();
      await jwks.close();
    }
  });
});

describe('replay given hostile or broken input', () => {
  const dir = new TempDir('portcullis-replay-bad-');
  afterAll(() => dir.cleanup());

  it('keeps its memory bounded: reasons an event file makes up are counted as "other" past 64', async () => {
    dir.write('portcullis.yaml', SCENARIO_CONFIG);
    dir.write('old/policies.yaml', SCENARIO_OLD_POLICIES);
    const lines: string[] = [];
    for (let i = 0; i < 500; i++)
      lines.push(JSON.stringify({ ...scenarioEvent(9), requestId: `r${i}`, reason: `made-up-${i}` }));
    dir.write('many.ndjson', `${lines.join('\n')}\n`);
    const config = loadConfigFile(dir.file('portcullis.yaml'), { policiesOnly: true });
    const r = await replayAudit({
      files: [dir.file('many.ndjson')],
      config,
      policies: loadPolicies(config.policies, 'default').authorizationPolicies,
    });
    expect(r.not_replayed).toBe(500);
    expect(Object.keys(r.not_replayed_by_reason)).toHaveLength(65);
    expect(r.not_replayed_by_reason.other).toBe(500 - 64);
  });

  it('names the file of a gzip stream that breaks off, and exits 1', async () => {
    const whole = gzipSync(`${JSON.stringify(scenarioEvent(0))}\n`.repeat(1000));
    writeFileSync(dir.file('cut.ndjson.gz'), whole.subarray(0, whole.length - 40));
    const run = await cli(['replay', '--audit', 'cut.ndjson.gz', '--policies', 'old'], dir.path);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^portcullis: .*cut\.ndjson\.gz.*: unexpected end of file/);
  });

  it('refuses a missing file or a folder as a usage error', async () => {
    const missing = await cli(['replay', '--audit', 'nope.ndjson'], dir.path);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('--audit nope.ndjson: no such file');
    expect((await cli(['replay', '--audit', 'old'], dir.path)).stderr).toContain('not a file');
    expect((await cli(['replay'], dir.path)).stderr).toContain('--audit FILE is required');
  });
});
