import { isIP } from 'node:net';
import type { ResourceMeta } from './load.js';
import { parseSelector } from './peer-authentication.js';
import { isMap, Problems, type Report, specMap, unknownKeys } from './validate.js';

/**
 * Istio AuthorizationPolicy (security.istio.io/v1 and v1beta1), validated into plain data that
 * authz/ compiles. https://istio.io/latest/docs/reference/config/security/authorization-policy/
 */
export type AuthzAction = 'ALLOW' | 'DENY' | 'AUDIT' | 'CUSTOM';

export interface SourceSpec {
  principals?: string[];
  notPrincipals?: string[];
  requestPrincipals?: string[];
  notRequestPrincipals?: string[];
  namespaces?: string[];
  notNamespaces?: string[];
  ipBlocks?: string[];
  notIpBlocks?: string[];
  remoteIpBlocks?: string[];
  notRemoteIpBlocks?: string[];
}

export interface OperationSpec {
  hosts?: string[];
  notHosts?: string[];
  ports?: number[];
  notPorts?: number[];
  methods?: string[];
  notMethods?: string[];
  paths?: string[];
  notPaths?: string[];
}

export interface ConditionSpec {
  key: string;
  values?: string[];
  notValues?: string[];
}

export interface RuleSpec {
  /** null: no `from` (matches any source). */
  from: SourceSpec[] | null;
  to: OperationSpec[] | null;
  when: ConditionSpec[] | null;
}

export interface AuthorizationPolicy {
  readonly meta: ResourceMeta;
  readonly selector: Readonly<Record<string, string>> | null;
  readonly action: AuthzAction;
  /** CUSTOM only: the extension provider's name. */
  readonly provider: string | null;
  /** null: no `rules` field at all (an ALLOW policy that allows nothing). */
  readonly rules: readonly RuleSpec[] | null;
  /** `istio.io/dry-run: "true"`: evaluated and recorded, never enforced. */
  readonly dryRun: boolean;
}

const SOURCE_FIELDS = [
  'principals',
  'notPrincipals',
  'requestPrincipals',
  'notRequestPrincipals',
  'namespaces',
  'notNamespaces',
  'ipBlocks',
  'notIpBlocks',
  'remoteIpBlocks',
  'notRemoteIpBlocks',
] as const;
const OPERATION_FIELDS = [
  'hosts',
  'notHosts',
  'ports',
  'notPorts',
  'methods',
  'notMethods',
  'paths',
  'notPaths',
] as const;
const IP_FIELDS: ReadonlySet<string> = new Set([
  'ipBlocks',
  'notIpBlocks',
  'remoteIpBlocks',
  'notRemoteIpBlocks',
]);

/** `when` keys this version evaluates (Istio's list for HTTP). */
const STATIC_KEYS: ReadonlySet<string> = new Set([
  'source.ip',
  'remote.ip',
  'source.namespace',
  'source.principal',
  'request.auth.principal',
  'request.auth.audiences',
  'request.auth.presenter',
  'destination.ip',
  'destination.port',
  'connection.sni',
]);
const IP_KEYS: ReadonlySet<string> = new Set(['source.ip', 'remote.ip', 'destination.ip']);
const HEADER_KEY = /^request\.headers\[([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\]$/;
const CLAIM_KEY = /^request\.auth\.claims(\[[^[\]]+\])+$/;

/** Checks one Istio string-match value: exact, `prefix*`, `*suffix` or `*`, but no `*` inside. */
function checkWildcard(v: string, field: string, report: Report): void {
  const inner = v.length > 1 ? v.slice(1, -1) : '';
  if (inner.includes('*')) report(field, `"${v}": a "*" may only stand at the start or the end of a value`);
  if (v.length > 1 && v.startsWith('*') && v.endsWith('*'))
    report(field, `"${v}": "*" at both ends is not supported`);
}

export function isPathTemplate(v: string): boolean {
  return v.includes('{');
}

/**
 * Istio's rules for path templates: the path starts with "/", `{*}` and `{**}` stand for whole
 * segments, `{**}` appears at most once and no operator follows it, and no plain `*` glob mixes in.
 */
export function pathTemplateProblem(v: string): string | null {
  if (!v.startsWith('/')) return 'a path template must start with "/"';
  if (v.includes('*') && v.replaceAll('{**}', '').replaceAll('{*}', '').includes('*')) {
    return 'a path template cannot also use a "*" glob';
  }
  let seenDouble = false;
  for (const seg of v.slice(1).split('/')) {
    const isOp = seg === '{*}' || seg === '{**}';
    if (!isOp && (seg.includes('{') || seg.includes('}'))) {
      return `"${seg}": {*} and {**} must stand for a whole path segment (named variables are not supported)`;
    }
    if (isOp && seenDouble) return '{**} must be the last operator in the path';
    if (seg === '{**}') seenDouble = true;
  }
  return null;
}

function parseStrings(raw: unknown, field: string, report: Report): string[] | undefined {
  if (raw === undefined || raw === null) return undefined;
  if (!Array.isArray(raw) || raw.some((x) => typeof x !== 'string' || x === '')) {
    report(field, 'must be a list of non-empty strings');
    return undefined;
  }
  if (raw.length === 0) {
    report(field, 'must not be empty (leave the field out to match anything)');
    return undefined;
  }
  return raw as string[];
}

function parsePorts(raw: unknown, field: string, report: Report): number[] | undefined {
  if (raw === undefined || raw === null) return undefined;
  if (!Array.isArray(raw) || raw.length === 0) {
    report(field, 'must be a non-empty list of port numbers');
    return undefined;
  }
  const out: number[] = [];
  for (const p of raw) {
    const n = typeof p === 'number' ? p : typeof p === 'string' && /^\d+$/.test(p) ? Number(p) : Number.NaN;
    if (!Number.isInteger(n) || n < 1 || n > 65535) {
      report(field, `"${p}" is not a port number (1-65535)`);
      return undefined;
    }
    out.push(n);
  }
  return out;
}

export function cidrProblem(v: string): string | null {
  const slash = v.indexOf('/');
  const ip = slash === -1 ? v : v.slice(0, slash);
  const family = isIP(ip);
  if (family === 0) return `"${v}" is not an IP address or CIDR`;
  if (slash !== -1) {
    const bits = v.slice(slash + 1);
    const max = family === 4 ? 32 : 128;
    if (!/^\d{1,3}$/.test(bits) || Number(bits) > max) return `"${v}": the prefix length must be 0-${max}`;
  }
  return null;
}

function parseSource(raw: unknown, at: string, report: Report): SourceSpec | null {
  if (!isMap(raw)) {
    report(at, 'must be a mapping with "source"');
    return null;
  }
  for (const k of Object.keys(raw)) if (k !== 'source') report(`${at}.${k}`, 'unknown field');
  const s = raw.source;
  if (!isMap(s)) {
    report(`${at}.source`, 'is required');
    return null;
  }
  const out: SourceSpec = {};
  for (const k of Object.keys(s)) {
    if (!(SOURCE_FIELDS as readonly string[]).includes(k)) report(`${at}.source.${k}`, 'unknown field');
  }
  for (const f of SOURCE_FIELDS) {
    const values = parseStrings(s[f], `${at}.source.${f}`, report);
    if (values === undefined) continue;
    for (const v of values) {
      if (IP_FIELDS.has(f)) {
        const p = cidrProblem(v);
        if (p !== null) report(`${at}.source.${f}`, p);
      } else {
        checkWildcard(v, `${at}.source.${f}`, report);
      }
    }
    out[f] = values;
  }
  if (Object.keys(out).length === 0) report(`${at}.source`, 'must set at least one field');
  return out;
}

function parseOperation(raw: unknown, at: string, report: Report): OperationSpec | null {
  if (!isMap(raw)) {
    report(at, 'must be a mapping with "operation"');
    return null;
  }
  for (const k of Object.keys(raw)) if (k !== 'operation') report(`${at}.${k}`, 'unknown field');
  const o = raw.operation;
  if (!isMap(o)) {
    report(`${at}.operation`, 'is required');
    return null;
  }
  const out: OperationSpec = {};
  for (const k of Object.keys(o)) {
    if (!(OPERATION_FIELDS as readonly string[]).includes(k)) report(`${at}.operation.${k}`, 'unknown field');
  }
  for (const f of ['ports', 'notPorts'] as const) {
    const ports = parsePorts(o[f], `${at}.operation.${f}`, report);
    if (ports !== undefined) out[f] = ports;
  }
  for (const f of ['hosts', 'notHosts', 'methods', 'notMethods', 'paths', 'notPaths'] as const) {
    const values = parseStrings(o[f], `${at}.operation.${f}`, report);
    if (values === undefined) continue;
    for (const v of values) {
      if ((f === 'paths' || f === 'notPaths') && isPathTemplate(v)) {
        const p = pathTemplateProblem(v);
        if (p !== null) report(`${at}.operation.${f}`, `"${v}": ${p}`);
      } else {
        checkWildcard(v, `${at}.operation.${f}`, report);
      }
    }
    out[f] = values;
  }
  if (Object.keys(out).length === 0) report(`${at}.operation`, 'must set at least one field');
  return out;
}

/** The reason a `when` key is not accepted, or null when it is one this version evaluates. */
export function conditionKeyProblem(key: string): string | null {
  if (STATIC_KEYS.has(key) || HEADER_KEY.test(key) || CLAIM_KEY.test(key)) return null;
  if (key.startsWith('experimental.'))
    return `"${key}" is an experimental Istio key that Portcullis does not evaluate`;
  return `unknown key "${key}" (supported: request.headers[<name>], request.auth.claims[<claim>]…, ${[...STATIC_KEYS].join(', ')})`;
}

function parseCondition(raw: unknown, at: string, report: Report): ConditionSpec | null {
  if (!isMap(raw)) {
    report(at, 'must be a mapping with key and values or notValues');
    return null;
  }
  for (const k of Object.keys(raw))
    if (k !== 'key' && k !== 'values' && k !== 'notValues') report(`${at}.${k}`, 'unknown field');
  if (typeof raw.key !== 'string') {
    report(`${at}.key`, 'is required');
    return null;
  }
  const problem = conditionKeyProblem(raw.key);
  if (problem !== null) report(`${at}.key`, problem);
  const values = parseStrings(raw.values, `${at}.values`, report);
  const notValues = parseStrings(raw.notValues, `${at}.notValues`, report);
  if (values === undefined && notValues === undefined) report(at, 'needs values or notValues');
  const out: ConditionSpec = { key: raw.key };
  if (values !== undefined) out.values = values;
  if (notValues !== undefined) out.notValues = notValues;
  for (const v of [...(values ?? []), ...(notValues ?? [])]) {
    if (IP_KEYS.has(raw.key)) {
      const p = cidrProblem(v);
      if (p !== null) report(`${at}.values`, p);
    } else if (raw.key === 'destination.port') {
      if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 65535)
        report(`${at}.values`, `"${v}" is not a port number`);
    } else {
      checkWildcard(v, `${at}.values`, report);
    }
  }
  return out;
}

function parseList<T>(
  raw: unknown,
  at: string,
  report: Report,
  item: (v: unknown, at: string) => T | null,
): T[] | null {
  if (raw === undefined || raw === null) return null;
  if (!Array.isArray(raw)) {
    report(at, 'must be a list');
    return null;
  }
  const out: T[] = [];
  raw.forEach((v, i) => {
    const x = item(v, `${at}[${i}]`);
    if (x !== null) out.push(x);
  });
  return out;
}

const ACTIONS: ReadonlySet<string> = new Set(['ALLOW', 'DENY', 'AUDIT', 'CUSTOM']);

/** Validates an AuthorizationPolicy; returns null (after reporting) when it is invalid. */
export function parseAuthorizationPolicy(
  meta: ResourceMeta,
  spec: unknown,
  report: Report,
): AuthorizationPolicy | null {
  const problems = new Problems(report);
  const fail = problems.report;
  const s = specMap(spec, fail);
  if (s === null) return null;
  unknownKeys(s, ['selector', 'action', 'provider', 'rules'], 'spec', fail);
  const selector = parseSelector(s.selector, fail);
  const action = s.action === undefined ? 'ALLOW' : s.action;
  if (typeof action !== 'string' || !ACTIONS.has(action))
    fail('spec.action', 'must be ALLOW, DENY, AUDIT or CUSTOM');
  let provider: string | null = null;
  if (action === 'CUSTOM') {
    if (!isMap(s.provider) || typeof s.provider.name !== 'string' || s.provider.name === '') {
      fail('spec.provider.name', 'is required for a CUSTOM policy');
    } else provider = s.provider.name;
  } else if (s.provider !== undefined) {
    fail('spec.provider', 'is only for CUSTOM policies');
  }
  const rules = parseList(s.rules, 'spec.rules', fail, (raw, at) => {
    if (!isMap(raw)) {
      fail(at, 'must be a mapping');
      return null;
    }
    for (const k of Object.keys(raw))
      if (k !== 'from' && k !== 'to' && k !== 'when') fail(`${at}.${k}`, 'unknown field');
    return {
      from: parseList(raw.from, `${at}.from`, fail, (v, a) => parseSource(v, a, fail)),
      to: parseList(raw.to, `${at}.to`, fail, (v, a) => parseOperation(v, a, fail)),
      when: parseList(raw.when, `${at}.when`, fail, (v, a) => parseCondition(v, a, fail)),
    };
  });
  // Istio refuses DENY and CUSTOM without rules: "deny nothing" is almost always a mistake.
  if ((action === 'DENY' || action === 'CUSTOM') && (rules === null || rules.length === 0)) {
    fail('spec.rules', `a ${action} policy needs at least one rule`);
  }
  const dryRunRaw = meta.annotations['istio.io/dry-run'];
  if (dryRunRaw !== undefined && dryRunRaw !== 'true' && dryRunRaw !== 'false') {
    fail('metadata.annotations.istio.io/dry-run', 'must be "true" or "false"');
  }
  if (!problems.ok || selector === undefined) return null;
  return {
    meta,
    selector,
    action: action as AuthzAction,
    provider,
    rules,
    dryRun: dryRunRaw === 'true',
  };
}
