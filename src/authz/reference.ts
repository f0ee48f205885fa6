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
}

export interface PolicyExplanation {
  policy: string;
  action: string;
  dryRun: boolean;
  /** Index of the matching rule, or -1. */
  ruleIndex: number;
  /** One line per rule: why it matched or which clause failed. */
  rules: string[];
}

function valueMatches(pattern: string, v: string): boolean {
  if (v === '') return false;
  if (pattern === '*') return true;
  if (pattern.endsWith('*')) return v.startsWith(pattern.slice(0, -1));
  if (pattern.startsWith('*')) return v.endsWith(pattern.slice(1));
  return v === pattern;
}

function anyValue(patterns: readonly string[], v: string, ignoreCase = false): boolean {
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

function pathMatches(patterns: readonly string[], path: string): boolean {
  return patterns.some((p) => (p.includes('{') ? templateMatches(p, path) : valueMatches(p, path)));
}

function ipMatches(blocks: readonly string[], addr: string): boolean {
  if (addr === '') return false;
  const list = new BlockList();
  for (const b of blocks) {
    const [net, bits] = b.split('/') as [string, string | undefined];
    const type = isIPv4(net) ? 'ipv4' : 'ipv6';
    if (bits === undefined) list.addAddress(net, type);
    else list.addSubnet(net, Number(bits), type);
  }
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

/** Istio's X / notX: X must match when set, notX must not. Returns a failure text or null. */
function field(
  name: string,
  v: string,
  pos: string[] | undefined,
  neg: string[] | undefined,
  m: (ps: string[], v: string) => boolean,
): string | null {
  if (pos !== undefined && !m(pos, v))
    return `${name}: ${JSON.stringify(v)} is not in ${JSON.stringify(pos)}`;
  if (neg !== undefined && m(neg, v))
    return `not${name[0]?.toUpperCase()}${name.slice(1)}: ${JSON.stringify(v)} is in ${JSON.stringify(neg)}`;
  return null;
}

function sourceFails(s: SourceSpec, a: RequestAttributes): string | null {
  return (
    field('principals', a.peerPrincipal, s.principals, s.notPrincipals, anyValue) ??
    field('requestPrincipals', a.requestPrincipal, s.requestPrincipals, s.notRequestPrincipals, anyValue) ??
    field('namespaces', a.peerNamespace, s.namespaces, s.notNamespaces, anyValue) ??
    field('ipBlocks', a.sourceAddress, s.ipBlocks, s.notIpBlocks, ipMatches) ??
    field('remoteIpBlocks', a.remoteAddress, s.remoteIpBlocks, s.notRemoteIpBlocks, ipMatches)
  );
}

function operationFails(o: OperationSpec, a: RequestAttributes): string | null {
  const port = String(a.destinationPort);
  const ports = (ps: string[], v: string): boolean => ps.includes(v);
  return (
    field('hosts', a.host, o.hosts, o.notHosts, (ps, v) => anyValue(ps, v, true)) ??
    field('ports', port, o.ports?.map(String), o.notPorts?.map(String), ports) ??
    field('methods', a.method, o.methods, o.notMethods, anyValue) ??
    field('paths', a.path, o.paths, o.notPaths, pathMatches)
  );
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
function conditionValues(a: RequestAttributes, key: string): string[] {
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

function conditionFails(c: ConditionSpec, a: RequestAttributes): string | null {
  const vals = conditionValues(a, c.key);
  const isIp = c.key === 'source.ip' || c.key === 'remote.ip' || c.key === 'destination.ip';
  const one: (patterns: string[], v: string) => boolean =
    c.key === 'destination.port' ? (ps, v) => ps.includes(v) : isIp ? ipMatches : anyValue;
  const some: Check = (v) => vals.length > 0 && vals.some((x) => one([v], x));
  if (c.values !== undefined && !c.values.some(some))
    return `when ${c.key}: ${JSON.stringify(vals)} matches none of ${JSON.stringify(c.values)}`;
  if (c.notValues?.some(some))
    return `when ${c.key}: ${JSON.stringify(vals)} matches notValues ${JSON.stringify(c.notValues)}`;
  return null;
}

function ruleFails(r: RuleSpec, a: RequestAttributes): string | null {
  if (r.from !== null && r.from.length > 0) {
    const fails = r.from.map((s) => sourceFails(s, a));
    if (fails.every((f) => f !== null))
      return `from: no source matches (${fails.map((f, i) => `from[${i}] ${f}`).join('; ')})`;
  }
  if (r.to !== null && r.to.length > 0) {
    const fails = r.to.map((o) => operationFails(o, a));
    if (fails.every((f) => f !== null))
      return `to: no operation matches (${fails.map((f, i) => `to[${i}] ${f}`).join('; ')})`;
  }
  for (const c of r.when ?? []) {
    const f = conditionFails(c, a);
    if (f !== null) return f;
  }
  return null;
}

function explain(p: AuthorizationPolicy, a: RequestAttributes): PolicyExplanation {
  const rules: string[] = [];
  let ruleIndex = -1;
  if (p.rules === null || p.rules.length === 0) rules.push('no rules: matches nothing');
  (p.rules ?? []).forEach((r, i) => {
    const f = ruleFails(r, a);
    if (f === null && ruleIndex === -1) ruleIndex = i;
    rules.push(f === null ? `rule[${i}]: matches` : `rule[${i}]: ${f}`);
  });
  return {
    policy: `${p.meta.namespace}/${p.meta.name}`,
    action: p.action,
    dryRun: p.dryRun,
    ruleIndex,
    rules,
  };
}

/** Decides as Istio would, for the policies that apply to the workload (CUSTOM ones are only explained). */
export function referenceDecide(
  policies: readonly AuthorizationPolicy[],
  a: RequestAttributes,
): ReferenceResult {
  const explanations = policies.map((p) => explain(p, a));
  const byAction = (action: string, dryRun: boolean): PolicyExplanation[] =>
    explanations.filter((e) => e.action === action && e.dryRun === dryRun);
  const first = (list: PolicyExplanation[]): PolicyExplanation | undefined =>
    list.find((e) => e.ruleIndex !== -1);

  const audit = first(byAction('AUDIT', false))?.policy ?? null;
  const shadowDeny = first(byAction('DENY', true))?.policy ?? null;
  const shadowAllowList = byAction('ALLOW', true);
  const shadowAllowed = shadowAllowList.length === 0 || first(shadowAllowList) !== undefined;
  const base = { audit, shadowDeny, shadowAllowed, explanations };

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
  return { allowed: false, reason: 'no-matching-allow', policy: null, ruleIndex: -1, ...base };
}
