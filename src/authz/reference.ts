import { BlockList, isIPv4 } from 'node:net';
import type {
  AuthorizationPolicy,
  ConditionSpec,
  OperationSpec,
  RuleSpec,
  SourceSpec,
} from '../istio/authorization-policy.js';
import type { RequestAttributes } from './attributes.js';

/**
 * A reference evaluator, written plainly from Istio's semantics with none of the compiler's
 * tricks: values are matched one by one, CIDRs with net.BlockList, templates segment by segment.
 * It is slow and allocates freely. Tests check that the compiled decision function agrees with it
 * on random policies and requests; `portcullis check --explain` uses its trace.
 */

export interface ReferenceResult {
  allowed: boolean;
  reason: string;
  /** `ns/name` of the deciding policy, or null. */
  policy: string | null;
  ruleIndex: number;
  audit: string | null;
  shadowDeny: string | null;
  shadowAllowed: boolean;
  explanations: PolicyExplanation[];
  /** For a request no ALLOW policy matched: the rule closest to allowing it; else null. */
  nearestMiss: NearestMiss | null;
}

export interface PolicyExplanation {
  policy: string;
  action: string;
  dryRun: boolean;
  /** Index of the matching rule, or -1. */
  ruleIndex: number;
  /** One line per rule: why it matched or which clauses failed. */
  rules: string[];
  /** Per rule, what failed. */
  failures: RuleFailures[];
}

/** The ALLOW rule a denied request came closest to: the fewest failed conditions (first on a tie). */
export interface NearestMiss {
  readonly policy: string;
  readonly ruleIndex: number;
  /** The conditions that failed (see RuleFailures.conditions). */
  readonly failed: readonly string[];
}

function valueMatches(pattern: string, v: string): boolean {
  if (v === '') return false;
  if (pattern === '*') return true;
  if (pattern.endsWith('*')) return v.startsWith(pattern.slice(0, -1));
  if (pattern.startsWith('*')) return v.endsWith(pattern.slice(1));
  return v === pattern;
}

export function anyValue(patterns: readonly string[], v: string, ignoreCase = false): boolean {
  const value = ignoreCase ? v.toLowerCase() : v;
  return patterns.some((p) => valueMatches(ignoreCase ? p.toLowerCase() : p, value));
}

/** A template without `{**}`: same number of segments, `{*}` any non-empty one, the rest literal. */
function segmentsMatch(template: string, path: string): boolean {
  const t = template.split('/');
  const p = path.split('/');
  return t.length === p.length && t.every((seg, i) => (seg === '{*}' ? p[i] !== '' : seg === p[i]));
}

/** `{**}` is any run of characters (slashes too, or none) between what precedes and follows it. */
function templateMatches(template: string, path: string): boolean {
  const k = template.indexOf('{**}');
  if (k === -1) return segmentsMatch(template, path);
  const before = template.slice(0, k);
  const after = template.slice(k + 4);
  for (let i = 0; i <= path.length; i++) {
    const tail = path.slice(i);
    if (tail.length >= after.length && tail.endsWith(after) && segmentsMatch(before, path.slice(0, i)))
      return true;
  }
  return false;
}

export function pathMatches(patterns: readonly string[], path: string): boolean {
  return patterns.some((p) => (p.includes('{') ? templateMatches(p, path) : valueMatches(p, path)));
}

/** Block lists by their entries: replay asks the same policies about many requests. */
const blockLists = new Map<string, BlockList>();

function blockList(blocks: readonly string[]): BlockList {
  const key = blocks.join(' ');
  let list = blockLists.get(key);
  if (list !== undefined) return list;
  list = new BlockList();
  for (const b of blocks) {
    const [net, bits] = b.split('/') as [string, string | undefined];
    const type = isIPv4(net) ? 'ipv4' : 'ipv6';
    if (bits === undefined) list.addAddress(net, type);
    else list.addSubnet(net, Number(bits), type);
  }
  if (blockLists.size > 1000) blockLists.clear();
  blockLists.set(key, list);
  return list;
}

export function ipMatches(blocks: readonly string[], addr: string): boolean {
  if (addr === '') return false;
  const list = blockList(blocks);
  // A v4-mapped v6 address (how dual-stack sockets report IPv4 peers) is its v4 address.
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(addr);
  const a = mapped ? (mapped[1] as string) : addr;
  try {
    return list.check(a, isIPv4(a) ? 'ipv4' : 'ipv6');
  } catch {
    return false;
  }
}

type Check = (v: string) => boolean;

/**
 * How values read from a request are shown in an explanation: `redacted` names headers whose
 * values are credentials (tokens, cookies) and are shown as REDACTED; matching still uses them.
 */
export interface ExplainOptions {
  readonly redacted?: ReadonlySet<string>;
}

const NO_OPTIONS: ExplainOptions = {};

/** Istio's X / notX: X must match when set, notX must not. Pushes a failure text onto `out`. */
function field(
  out: string[],
  name: string,
  v: string,
  pos: string[] | undefined,
  neg: string[] | undefined,
  m: (ps: string[], v: string) => boolean,
): void {
  if (pos !== undefined && !m(pos, v))
    out.push(`${name}: ${JSON.stringify(v)} is not in ${JSON.stringify(pos)}`);
  if (neg !== undefined && m(neg, v))
    out.push(
      `not${name[0]?.toUpperCase()}${name.slice(1)}: ${JSON.stringify(v)} is in ${JSON.stringify(neg)}`,
    );
}

/** Every field of a source that fails (empty: the source matches). */
function sourceFailures(s: SourceSpec, a: RequestAttributes): string[] {
  const out: string[] = [];
  field(out, 'principals', a.peerPrincipal, s.principals, s.notPrincipals, anyValue);
  field(out, 'requestPrincipals', a.requestPrincipal, s.requestPrincipals, s.notRequestPrincipals, anyValue);
  field(out, 'namespaces', a.peerNamespace, s.namespaces, s.notNamespaces, anyValue);
  field(out, 'ipBlocks', a.sourceAddress, s.ipBlocks, s.notIpBlocks, ipMatches);
  field(out, 'remoteIpBlocks', a.remoteAddress, s.remoteIpBlocks, s.notRemoteIpBlocks, ipMatches);
  return out;
}

/** Every field of an operation that fails (empty: the operation matches). */
function operationFailures(o: OperationSpec, a: RequestAttributes): string[] {
  const out: string[] = [];
  const port = String(a.destinationPort);
  const ports = (ps: string[], v: string): boolean => ps.includes(v);
  field(out, 'hosts', a.host, o.hosts, o.notHosts, (ps, v) => anyValue(ps, v, true));
  field(out, 'ports', port, o.ports?.map(String), o.notPorts?.map(String), ports);
  field(out, 'methods', a.method, o.methods, o.notMethods, anyValue);
  field(out, 'paths', a.path, o.paths, o.notPaths, pathMatches);
  return out;
}

function claimOf(a: RequestAttributes, key: string): string[] {
  const path = key.slice('request.auth.claims['.length, -1).split('][');
  let v: unknown = a.claims;
  for (const p of path)
    v =
      v !== null && typeof v === 'object' && !Array.isArray(v)
        ? (v as Record<string, unknown>)[p]
        : undefined;
  if (typeof v === 'string') {
    const last = path[path.length - 1] as string;
    return last === 'scope' || last === 'scp' ? v.split(' ') : [v];
  }
  if (Array.isArray(v)) return v.filter((e): e is string => typeof e === 'string');
  return [];
}

/** The attribute a `when` key names, as a list of strings (a single value is a list of one). */
export function conditionValues(a: RequestAttributes, key: string): string[] {
  if (key.startsWith('request.headers[')) {
    const h = a.headers[key.slice('request.headers['.length, -1).toLowerCase()];
    return h === undefined ? [''] : Array.isArray(h) ? h : [h];
  }
  if (key.startsWith('request.auth.claims[')) return claimOf(a, key);
  switch (key) {
    case 'source.ip':
      return [a.sourceAddress];
    case 'remote.ip':
      return [a.remoteAddress];
    case 'source.namespace':
      return [a.peerNamespace];
    case 'source.principal':
      return [a.peerPrincipal];
    case 'request.auth.principal':
      return [a.requestPrincipal];
    case 'request.auth.audiences':
      return [...a.audiences];
    case 'request.auth.presenter':
      return [a.presenter];
    case 'destination.ip':
      return [a.destinationAddress];
    case 'destination.port':
      return [String(a.destinationPort)];
    case 'connection.sni':
      return [a.sni];
    default:
      throw new Error(`unknown key ${key}`);
  }
}

function conditionFails(c: ConditionSpec, a: RequestAttributes, o: ExplainOptions): string | null {
  const vals = conditionValues(a, c.key);
  const isIp = c.key === 'source.ip' || c.key === 'remote.ip' || c.key === 'destination.ip';
  const one: (patterns: string[], v: string) => boolean =
    c.key === 'destination.port' ? (ps, v) => ps.includes(v) : isIp ? ipMatches : anyValue;
  const some: Check = (v) => vals.length > 0 && vals.some((x) => one([v], x));
  const header = c.key.startsWith('request.headers[')
    ? c.key.slice('request.headers['.length, -1).toLowerCase()
    : '';
  const shown =
    header !== '' && o.redacted?.has(header) === true ? vals.map((v) => (v === '' ? v : 'REDACTED')) : vals;
  if (c.values !== undefined && !c.values.some(some))
    return `when ${c.key}: ${JSON.stringify(shown)} matches none of ${JSON.stringify(c.values)}`;
  if (c.notValues?.some(some))
    return `when ${c.key}: ${JSON.stringify(shown)} matches notValues ${JSON.stringify(c.notValues)}`;
  return null;
}

/** Whether a `when` condition holds for the request (Istio's values / notValues). */
export function conditionHolds(c: ConditionSpec, a: RequestAttributes): boolean {
  return conditionFails(c, a, NO_OPTIONS) === null;
}

/**
 * Why a rule does not match: one entry per failed condition (empty: it matches). A `from` (or
 * `to`) whose sources all fail counts as many conditions as its closest source fails on.
 */
export interface RuleFailures {
  /** One text per failed clause, for display. */
  readonly texts: string[];
  /** Failed conditions, counting a failed `from`/`to` by its closest source/operation. */
  readonly count: number;
  /** The failed conditions of the closest source, the closest operation and the `when` list. */
  readonly conditions: string[];
}

function ruleFailures(r: RuleSpec, a: RequestAttributes, o: ExplainOptions): RuleFailures {
  const texts: string[] = [];
  const conditions: string[] = [];
  const block = (name: 'from' | 'to', fails: string[][]): void => {
    if (fails.length === 0 || fails.some((f) => f.length === 0)) return;
    texts.push(
      `${name}: no ${name === 'from' ? 'source' : 'operation'} matches (${fails.map((f, i) => `${name}[${i}] ${f.join(', ')}`).join('; ')})`,
    );
    let best = 0;
    fails.forEach((f, i) => {
      if (f.length < (fails[best] as string[]).length) best = i;
    });
    for (const f of fails[best] as string[]) conditions.push(`${name}[${best}] ${f}`);
  };
  block(
    'from',
    (r.from ?? []).map((s) => sourceFailures(s, a)),
  );
  block(
    'to',
    (r.to ?? []).map((op) => operationFailures(op, a)),
  );
  for (const c of r.when ?? []) {
    const f = conditionFails(c, a, o);
    if (f !== null) {
      texts.push(f);
      conditions.push(f);
    }
  }
  return { texts, count: conditions.length, conditions };
}

function explain(p: AuthorizationPolicy, a: RequestAttributes, o: ExplainOptions): PolicyExplanation {
  const rules: string[] = [];
  const failures: RuleFailures[] = [];
  let ruleIndex = -1;
  if (p.rules === null || p.rules.length === 0) rules.push('no rules: matches nothing');
  (p.rules ?? []).forEach((r, i) => {
    const f = ruleFailures(r, a, o);
    failures.push(f);
    if (f.count === 0 && ruleIndex === -1) ruleIndex = i;
    rules.push(f.count === 0 ? `rule[${i}]: matches` : `rule[${i}]: ${f.texts.join('; ')}`);
  });
  return {
    policy: `${p.meta.namespace}/${p.meta.name}`,
    action: p.action,
    dryRun: p.dryRun,
    ruleIndex,
    rules,
    failures,
  };
}

/** Decides as Istio would, for the policies that apply to the workload (CUSTOM ones are only explained). */
export function referenceDecide(
  policies: readonly AuthorizationPolicy[],
  a: RequestAttributes,
  options: ExplainOptions = NO_OPTIONS,
): ReferenceResult {
  const explanations = policies.map((p) => explain(p, a, options));
  const byAction = (action: string, dryRun: boolean): PolicyExplanation[] =>
    explanations.filter((e) => e.action === action && e.dryRun === dryRun);
  const first = (list: PolicyExplanation[]): PolicyExplanation | undefined =>
    list.find((e) => e.ruleIndex !== -1);

  const audit = first(byAction('AUDIT', false))?.policy ?? null;
  const shadowDeny = first(byAction('DENY', true))?.policy ?? null;
  const shadowAllowList = byAction('ALLOW', true);
  const shadowAllowed = shadowAllowList.length === 0 || first(shadowAllowList) !== undefined;
  const base = { audit, shadowDeny, shadowAllowed, explanations, nearestMiss: null };

  const deny = first(byAction('DENY', false));
  if (deny !== undefined)
    return {
      allowed: false,
      reason: 'denied-by-policy',
      policy: deny.policy,
      ruleIndex: deny.ruleIndex,
      ...base,
    };
  const allows = byAction('ALLOW', false);
  if (allows.length === 0)
    return { allowed: true, reason: 'no-allow-policies', policy: null, ruleIndex: -1, ...base };
  const allow = first(allows);
  if (allow !== undefined)
    return {
      allowed: true,
      reason: 'allowed-by-policy',
      policy: allow.policy,
      ruleIndex: allow.ruleIndex,
      ...base,
    };
  return {
    allowed: false,
    reason: 'no-matching-allow',
    policy: null,
    ruleIndex: -1,
    ...base,
    nearestMiss: nearestMiss(allows),
  };
}

function nearestMiss(allows: readonly PolicyExplanation[]): NearestMiss | null {
  let best: NearestMiss | null = null;
  for (const e of allows) {
    e.failures.forEach((f, i) => {
      if (best === null || f.count < best.failed.length)
        best = { policy: e.policy, ruleIndex: i, failed: f.conditions };
    });
  }
  return best;
}
