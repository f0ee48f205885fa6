import type { AuthorizationPolicy } from '../istio/authorization-policy.js';
import type { Attributes } from './attributes.js';
import { type Authorizer, Decision, type DecisionOut } from './compile.js';
import { redactQuery } from './query.js';
import { type NearestMiss, referenceDecide } from './reference.js';
import type { RegoEngine } from './rego/engine.js';
import { envoyInput } from './rego/input.js';

/**
 * Why a request was decided as it was: the explanation `portcullis check --explain` prints for a
 * described request and the admin server's `/decisions/<id>` returns for a recent one — built by
 * one function and printed by one function, so the two say the same thing the same way. It is
 * plain data (JSON-safe): a cluster worker sends it to the primary as is.
 */
export interface Explanation {
  /** The request id (`portcullis check` uses the one it was given, or `portcullis-check`). */
  readonly requestId: string;
  /** Arrival, ISO 8601. */
  readonly time: string;
  readonly listener: string;
  readonly request: {
    readonly method: string;
    readonly host: string;
    readonly path: string;
    /** Token parameters' values are REDACTED. */
    readonly query: string;
    /** The path as sent, when normalization changed it; else null. */
    readonly normalizedFrom: string | null;
    readonly peer: string;
    readonly requestPrincipal: string;
  };
  /** What the client got: null for `portcullis check`, which describes a request that was not sent. */
  readonly answered: {
    readonly decision: 'allow' | 'deny';
    readonly status: number;
    /** The reason recorded in the audit event and metrics (`policy`, `jwt-invalid`, …). */
    readonly reason: string;
    /** Why a stage refused it, in its words ('' when it said nothing more). */
    readonly detail: string;
    /** The stage that answered (`jwt`, `authz`, …), or '' when the request went on to forwarding. */
    readonly by: string;
  } | null;
  /** The AuthorizationPolicies' part; null when the request was refused before authorization. */
  readonly authorization: AuthorizationExplanation | null;
  /** The listener's Rego policy, when it has one and the request reached it; else null. */
  readonly rego: RegoExplanation | null;
}

export interface AuthorizationExplanation {
  readonly allowed: boolean;
  /** allowed-by-policy, no-allow-policies, denied-by-policy or no-matching-allow. */
  readonly reason: string;
  /** `ns/name` of the deciding policy and its action, or null. */
  readonly policy: string | null;
  readonly action: string | null;
  readonly rule: number;
  readonly audit: string | null;
  readonly dryRunDeny: string | null;
  /** Whether the dry-run ALLOW policies would allow, and which; null without any. */
  readonly dryRunAllow: { readonly allowed: boolean; readonly policy: string | null } | null;
  /** A CUSTOM policy that matches (its provider is asked too), or null. */
  readonly custom: { readonly policy: string; readonly provider: string } | null;
  /** For a request no ALLOW rule matched: the rule it came closest to, and what failed. */
  readonly nearestMiss: NearestMiss | null;
  /** Every policy that applies: whether it matched, and for each rule why or why not. */
  readonly policies: readonly {
    readonly policy: string;
    readonly action: string;
    readonly dryRun: boolean;
    readonly rule: number;
    readonly rules: readonly string[];
  }[];
  /** Set when the reference evaluator decides otherwise than the compiled policies (a bug to report). */
  readonly referenceDisagrees: string | null;
}

export interface RegoExplanation {
  readonly entrypoint: string;
  readonly allowed: boolean;
  readonly status: number;
  readonly body: string;
  readonly upstreamHeaders: readonly (readonly [string, string])[];
  /** The policy failed (trapped or aborted); its message. */
  readonly error: string | null;
}

/** What decides on one listener under one snapshot, as an explanation needs it (built once per plan). */
export interface ExplainSource {
  /** The AuthorizationPolicies that apply to the workload, and the same compiled. */
  readonly policies: readonly AuthorizationPolicy[];
  readonly authorizer: Authorizer;
  readonly rego: RegoEngine | null;
  /** The proxy's own SPIFFE ID (Rego's destination principal), or ''. */
  readonly ourId: string;
  /** Query parameters that carry tokens: their values are shown as REDACTED. */
  readonly tokenParams: ReadonlySet<string>;
  /** Headers that carry credentials: a `when` on one shows REDACTED instead of its value. */
  readonly redactedHeaders: ReadonlySet<string>;
}

/** How far a request went, and what it was answered, as the proxy recorded it. */
export interface RecordedOutcome {
  readonly listener: string;
  /** The decision the authorization stage wrote (its defaults when the stage did not run). */
  readonly decision: DecisionOut;
  readonly deny: boolean;
  readonly status: number;
  readonly reason: string;
  readonly detail: string;
  /** The stage that answered, or '' (forwarded). */
  readonly answeredBy: string;
  /** The AuthorizationPolicies decided this request (it was not refused before them). */
  readonly reachedAuthorization: boolean;
  /** The Rego policy was evaluated for it. */
  readonly reachedRego: boolean;
}

/**
 * Explains a request's decision. With `recorded` (a request the proxy answered) the decision is the
 * one the proxy made; without it (`portcullis check`) the compiled policies decide now. The
 * reference evaluator traces every policy either way, and says so if it disagrees.
 */
export function explainRequest(
  source: ExplainSource,
  a: Attributes,
  rawPath: string,
  recorded: RecordedOutcome | null,
): Explanation {
  let d: DecisionOut;
  if (recorded === null) {
    d = new Decision();
    source.authorizer.decide(a, d);
  } else {
    d = recorded.decision;
  }
  const authorization =
    recorded === null || recorded.reachedAuthorization ? authorizationPart(source, a, d) : null;
  let rego: RegoExplanation | null = null;
  // check shows what Rego says even when the Istio policies deny; a recorded request, what it said.
  if (source.rego !== null && (recorded === null || recorded.reachedRego))
    rego = regoPart(source.rego, a, source.ourId);
  return {
    requestId: a.requestId,
    time: new Date(a.time).toISOString(),
    listener: recorded?.listener ?? '',
    request: {
      method: a.method,
      host: a.host,
      path: a.path,
      query: a.query === '' ? '' : redactQuery(a.query, source.tokenParams),
      normalizedFrom: rawPath !== a.path && rawPath.startsWith('/') ? rawPath : null,
      peer: a.peerPrincipal,
      requestPrincipal: a.requestPrincipal,
    },
    answered:
      recorded === null
        ? null
        : {
            decision: recorded.deny ? 'deny' : 'allow',
            status: recorded.status,
            reason: recorded.reason,
            detail: recorded.detail,
            by: recorded.answeredBy,
          },
    authorization,
    rego,
  };
}

function authorizationPart(source: ExplainSource, a: Attributes, d: DecisionOut): AuthorizationExplanation {
  const ref = referenceDecide(source.policies, a, { redacted: source.redactedHeaders });
  const custom = source.authorizer.matchCustom(a);
  const shadowAllow = source.authorizer.shadowAllow.length > 0;
  const policy = d.policy?.id ?? null;
  return {
    allowed: d.allowed,
    reason: d.reason,
    policy,
    action: d.policy?.spec.action ?? null,
    rule: d.ruleIndex,
    audit: d.auditPolicy?.id ?? null,
    dryRunDeny: d.shadowDenyPolicy?.id ?? null,
    dryRunAllow: shadowAllow ? { allowed: d.shadowAllowed, policy: d.shadowAllowPolicy?.id ?? null } : null,
    custom: custom === null ? null : { policy: custom.id, provider: String(custom.spec.provider) },
    nearestMiss: d.allowed ? null : ref.nearestMiss,
    policies: ref.explanations.map((e) => ({
      policy: e.policy,
      action: e.action,
      dryRun: e.dryRun,
      rule: e.ruleIndex,
      rules: e.rules,
    })),
    referenceDisagrees:
      ref.allowed !== d.allowed || ref.policy !== policy || ref.ruleIndex !== d.ruleIndex
        ? `${ref.allowed ? 'allow' : 'deny'} by ${ref.policy ?? '-'} rule[${ref.ruleIndex}]`
        : null,
  };
}

function regoPart(engine: RegoEngine, a: Attributes, ourId: string): RegoExplanation {
  try {
    const r = engine.evaluate(envoyInput(a, engine.headers, ourId));
    return {
      entrypoint: engine.entrypoint,
      allowed: r.allowed,
      status: r.status,
      body: r.body,
      upstreamHeaders: r.upstreamHeaders,
      error: null,
    };
  } catch (err) {
    return {
      entrypoint: engine.entrypoint,
      allowed: false,
      status: 403,
      body: '',
      upstreamHeaders: [],
      error: err instanceof Error ? err.message : String(err),
    };
  }
}

/**
 * The explanation as text, one line per element: the request, the decision and why (with the
 * nearest miss of a denied request), AUDIT and dry-run results, the Rego policy's answer, and with
 * `policies` each policy's trace.
 */
export function explanationLines(e: Explanation, policies: boolean): string[] {
  const out: string[] = [];
  const r = e.request;
  if (e.answered !== null) {
    out.push(`request id: ${e.requestId}   time: ${e.time}   listener: ${e.listener}`);
  }
  out.push(
    `request: ${r.method} ${r.host}${r.path}${r.query === '' ? '' : `?${r.query}`}${r.normalizedFrom === null ? '' : `  (normalized from ${r.normalizedFrom})`}`,
  );
  out.push(
    `  peer: ${r.peer === '' ? '(none: plaintext)' : r.peer}   request principal: ${r.requestPrincipal === '' ? '(none)' : r.requestPrincipal}`,
  );
  const ans = e.answered;
  if (ans !== null) {
    const by = ans.by === '' ? 'when forwarding' : `by the ${ans.by} stage`;
    out.push(
      `answered: ${ans.status} ${ans.decision === 'deny' ? 'DENY' : 'ALLOW'} ${by} (${ans.reason})${ans.detail === '' ? '' : ` — ${ans.detail}`}`,
    );
  }
  const z = e.authorization;
  if (z === null) {
    out.push('decision: answered before authorization; no policy was evaluated');
    return out;
  }
  out.push(`decision: ${z.allowed ? 'ALLOW' : 'DENY (403 RBAC: access denied)'}`);
  const by = z.policy === null ? '' : ` — ${z.action} ${z.policy} rule[${z.rule}]`;
  out.push(`  reason: ${z.reason}${by}`);
  const miss = z.nearestMiss;
  if (miss !== null) {
    const n = miss.failed.length;
    out.push(
      `  nearest miss: ALLOW ${miss.policy} rule[${miss.ruleIndex}], ${n} condition${n === 1 ? '' : 's'} failed:`,
    );
    for (const f of miss.failed) out.push(`    ${f}`);
  }
  if (z.audit !== null) out.push(`  audit: marked by AUDIT ${z.audit}`);
  if (z.dryRunDeny !== null) out.push(`  dry-run: DENY ${z.dryRunDeny} would deny`);
  if (z.dryRunAllow !== null)
    out.push(
      `  dry-run: ALLOW policies would ${z.dryRunAllow.allowed ? `allow (${z.dryRunAllow.policy})` : 'deny'}`,
    );
  if (z.custom !== null)
    out.push(`  CUSTOM ${z.custom.policy} matches: provider "${z.custom.provider}" would also be asked`);
  if (z.referenceDisagrees !== null)
    out.push(`  WARNING: the reference evaluator disagrees (${z.referenceDisagrees}); please report this`);
  const g = e.rego;
  if (g !== null) {
    const extra =
      g.error !== null
        ? ` (the policy failed: ${g.error})`
        : g.allowed
          ? g.upstreamHeaders.length > 0
            ? ` (headers upstream: ${g.upstreamHeaders.map(([k, v]) => `${k}: ${v}`).join(', ')})`
            : ''
          : ` (${g.status}${g.body === '' ? '' : ` ${JSON.stringify(g.body)}`})`;
    out.push(`rego ${g.entrypoint}: ${g.allowed ? 'ALLOW' : 'DENY'}${extra}`);
    if (z.allowed && !g.allowed)
      out.push('decision with Rego: DENY (Istio policies allow, the Rego policy does not)');
    if (!z.allowed)
      out.push('decision with Rego: DENY (the Istio policies already deny; Rego would not be asked)');
    if (z.allowed && g.allowed) out.push('decision with Rego: ALLOW');
  }
  if (policies) {
    out.push('');
    if (z.policies.length === 0)
      out.push('no AuthorizationPolicy applies to this workload: every request is allowed');
    for (const p of z.policies) {
      out.push(
        `${p.action}${p.dryRun ? ' (dry-run)' : ''} ${p.policy}: ${p.rule === -1 ? 'does not match' : `matches (rule[${p.rule}])`}`,
      );
      for (const line of p.rules) out.push(`  ${line}`);
    }
  }
  return out;
}
