import { statSync } from 'node:fs';
import { type Outcome, type ReplayReport, replayAudit } from '../audit/replay.js';
import type { Config } from '../config/load.js';
import { PortcullisError } from '../errors.js';
import { loadPolicies } from '../istio/load.js';

/** Exit code when a transition named by --fail-on happened. */
export const EXIT_CHANGED = 3;

export const FAIL_ON = ['allow-to-deny', 'deny-to-allow', 'undecidable'] as const;
export type FailOn = (typeof FAIL_ON)[number];

export interface ReplayInput {
  readonly files: readonly string[];
  /** Policy files or folders to decide with; empty: the config's `policies`. */
  readonly policies: readonly string[];
  readonly json: boolean;
  readonly failOn: readonly FailOn[];
  readonly samples: number;
  readonly progress: boolean;
}

/** Parses `--fail-on` (comma-separated; `none` for never). */
export function parseFailOn(v: string | undefined): FailOn[] {
  if (v === undefined) return ['allow-to-deny'];
  if (v === 'none') return [];
  const out: FailOn[] = [];
  for (const part of v.split(',')) {
    const t = part.trim();
    if (!(FAIL_ON as readonly string[]).includes(t))
      throw new PortcullisError('ERR_USAGE', `--fail-on: "${t}" is not one of ${FAIL_ON.join(', ')}, none`);
    out.push(t as FailOn);
  }
  return out;
}

const n = (x: number): string => x.toLocaleString('en-US');

function describe(o: Outcome): string {
  const by = o.policy === null ? '' : ` ${o.policy} rule[${o.rule}]`;
  if (o.decision === 'unknown') return 'undecidable';
  return `${o.decision.toUpperCase()} (${o.reason}${by})`;
}

/**
 * `portcullis replay`: decides the requests of recorded audit events with the given policies and
 * reports what would change. Exit 0, or 3 when a transition named by --fail-on happened (by
 * default allow → deny), so that it can gate a pipeline.
 */
export async function runReplay(
  config: Config,
  input: ReplayInput,
  out: (line: string) => void,
): Promise<number> {
  for (const f of input.files) {
    let file = false;
    try {
      file = statSync(f).isFile();
    } catch {
      throw new PortcullisError('ERR_USAGE', `--audit ${f}: no such file`);
    }
    if (!file)
      throw new PortcullisError(
        'ERR_USAGE',
        `--audit ${f}: not a file (name each file; a shell glob does it)`,
      );
  }
  const sources = input.policies.length > 0 ? input.policies : config.policies;
  const policies = loadPolicies(sources, config.workload.namespace).authorizationPolicies;
  const showProgress = input.progress;
  const started = performance.now();
  const report = await replayAudit({
    files: input.files,
    config,
    policies,
    samples: input.samples,
    progress: showProgress
      ? (events, file, i) => {
          const rate = Math.round(events / ((performance.now() - started) / 1000));
          process.stderr.write(
            `\r  ${n(events)} events, ${n(rate)}/s  (file ${i + 1}/${input.files.length}: ${file})   `,
          );
        }
      : undefined,
  });
  if (showProgress) process.stderr.write('\n');
  const failed =
    (input.failOn.includes('allow-to-deny') && report.allow_to_deny > 0) ||
    (input.failOn.includes('deny-to-allow') && report.deny_to_allow > 0) ||
    (input.failOn.includes('undecidable') && report.undecidable > 0);
  const code = failed ? EXIT_CHANGED : 0;
  if (input.json)
    out(JSON.stringify({ ...report, policies: sources, fail_on: input.failOn, exit: code }, null, 2));
  else printReport(report, sources, input.failOn, code, out);
  return code;
}

function printReport(
  r: ReplayReport,
  sources: readonly string[],
  failOn: readonly FailOn[],
  code: number,
  out: (line: string) => void,
): void {
  out(
    `replayed ${n(r.events)} audit events from ${r.files.length} file${r.files.length === 1 ? '' : 's'} in ${r.seconds} s (${n(r.events_per_second)} events/s) against ${sources.join(', ')}`,
  );
  if (r.invalid_lines > 0) {
    out(`  ${n(r.invalid_lines)} lines were not audit events (schema version 1), e.g.:`);
    for (const s of r.invalid_samples) out(`    ${s}`);
  }
  out('');
  out(`decided again by the AuthorizationPolicies: ${n(r.replayed)}`);
  out(
    `  unchanged       ${n(r.unchanged)}${r.unchanged_other_rule > 0 ? `  (${n(r.unchanged_other_rule)} of them now decided by another policy or rule)` : ''}`,
  );
  out(`  allow → deny    ${n(r.allow_to_deny)}`);
  out(`  deny → allow    ${n(r.deny_to_allow)}`);
  out(
    `  undecidable     ${n(r.undecidable)}${r.undecidable > 0 ? '  (they need an attribute the events do not hold: see below)' : ''}`,
  );
  const reasons = Object.entries(r.not_replayed_by_reason);
  out(
    `not replayed (the policies did not decide them; they keep their outcome): ${n(r.not_replayed)}${reasons.length > 0 ? ` — ${reasons.map(([k, v]) => `${k} ${n(v)}`).join(', ')}` : ''}`,
  );
  for (const g of r.groups) {
    out('');
    const head =
      g.transition === 'undecidable'
        ? `undecidable: ${n(g.count)} — needs ${g.missing.join(', ')}; was ${describe(g.old)}`
        : `${g.transition === 'allow_to_deny' ? 'allow → deny' : 'deny → allow'}: ${n(g.count)} — was ${describe(g.old)}, now ${describe(g.new)}`;
    out(head);
    for (const s of g.samples)
      out(
        `    e.g. ${s.time} ${s.method} ${s.host}${s.path}  peer ${s.peer === '' ? '(none)' : s.peer}${s.requestPrincipal === '' ? '' : `  user ${s.requestPrincipal}`}  id ${s.requestId}  (${s.file}:${s.line})`,
      );
  }
  const missing = Object.entries(r.fidelity.undecidable_by_attribute);
  if (missing.length > 0 || r.fidelity.decided_despite_missing > 0) {
    out('');
    out(
      `fidelity: ${n(r.fidelity.decided_despite_missing)} decisions read an attribute the events do not hold and came out the same whatever its value; ${n(r.undecidable)} could not be decided:`,
    );
    for (const [k, v] of missing)
      out(
        `  ${k}: ${n(v)}${k.startsWith('request.headers[') ? '  (record it: audit.headers)' : k.startsWith('request.auth.') ? '  (recorded in events once policies read it)' : ''}`,
      );
  }
  out('');
  out(
    code === 0
      ? `exit 0${failOn.length === 0 ? ' (--fail-on none)' : ` (no ${failOn.join(', ')})`}`
      : `exit ${code}: ${failOn.filter((f) => (f === 'allow-to-deny' ? r.allow_to_deny : f === 'deny-to-allow' ? r.deny_to_allow : r.undecidable) > 0).join(', ')} found`,
  );
}
