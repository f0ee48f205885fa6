import type {
  AuthorizationPolicy,
  ConditionSpec,
  OperationSpec,
  RuleSpec,
  SourceSpec,
} from '../istio/authorization-policy.js';
import { appliesTo, type Workload } from '../istio/selector.js';
import type { RequestAttributes } from './attributes.js';
import { CidrMatcher, PathMatcher, StringMatcher } from './matchers.js';

/**
 * Compiles the AuthorizationPolicies that apply to one workload into a decision function.
 * Everything a request does not change is done here, once per policy load: value lists become
 * sets, prefix/suffix lists, template regexes and CIDR byte masks; `when` keys become a kind tag
 * and a pre-split claim path. Per request, `decide` reads the attributes and writes the outcome
 * into an object the caller owns: it allocates nothing (test/unit/authz/allocation.test.ts).
 */

export type DecisionReason =
  | 'allowed-by-policy'
  | 'no-allow-policies'
  | 'denied-by-policy'
  | 'no-matching-allow';

/** Where `decide` writes its outcome; the request context implements it, so nothing is allocated. */
export interface DecisionOut {
  allowed: boolean;
  reason: DecisionReason;
  /** The policy that decided (the matching DENY or ALLOW), or null. */
  policy: CompiledPolicy | null;
  /** Index of the matching rule in that policy, or -1. */
  ruleIndex: number;
  /** The first AUDIT policy that matched (the request is to be audited), or null. */
  auditPolicy: CompiledPolicy | null;
  /** Dry-run results: the first dry-run DENY that would have denied, or null. */
  shadowDenyPolicy: CompiledPolicy | null;
  /** Dry-run ALLOW policies: the one that would have allowed, or null. */
  shadowAllowPolicy: CompiledPolicy | null;
  /** Whether the dry-run ALLOW policies (if any) would have allowed the request. */
  shadowAllowed: boolean;
}

export class Decision implements DecisionOut {
  allowed = true;
  reason: DecisionReason = 'no-allow-policies';
  policy: CompiledPolicy | null = null;
  ruleIndex = -1;
  auditPolicy: CompiledPolicy | null = null;
  shadowDenyPolicy: CompiledPolicy | null = null;
  shadowAllowPolicy: CompiledPolicy | null = null;
  shadowAllowed = true;
}

enum Key {
  Header,
  SourceIp,
  RemoteIp,
  SourceNamespace,
  SourcePrincipal,
  AuthPrincipal,
  AuthAudiences,
  AuthPresenter,
  AuthClaim,
  DestinationIp,
  DestinationPort,
  Sni,
}

/** What a condition's values are matched with. */
interface ValueMatcher {
  matches(s: string): boolean;
}

class PortMatcher implements ValueMatcher {
  private readonly ports: ReadonlySet<number>;

  constructor(values: readonly (string | number)[]) {
    this.ports = new Set(values.map(Number));
  }

  matches(s: string): boolean {
    return this.ports.has(Number(s));
  }

  has(port: number): boolean {
    return this.ports.has(port);
  }
}

/** Claims whose string value is a space-separated list (OAuth 2.0 `scope`, RFC 8693 `scp`). */
const WORD_LIST_CLAIMS: ReadonlySet<string> = new Set(['scope', 'scp']);

class CompiledCondition {
  readonly key: Key;
  readonly header: string;
  readonly claim: readonly string[];
  readonly splitWords: boolean;
  readonly values: ValueMatcher | null;
  readonly notValues: ValueMatcher | null;
  readonly ports: PortMatcher | null;
  readonly notPorts: PortMatcher | null;

  constructor(spec: ConditionSpec) {
    const k = spec.key;
    let key: Key;
    let header = '';
    let claim: string[] = [];
    if (k.startsWith('request.headers[')) {
      key = Key.Header;
      header = k.slice('request.headers['.length, -1).toLowerCase();
    } else if (k.startsWith('request.auth.claims[')) {
      key = Key.AuthClaim;
      claim = k.slice('request.auth.claims['.length, -1).split('][');
    } else {
      key = STATIC_KEY[k] as Key;
    }
    this.key = key;
    this.header = header;
    this.claim = claim;
    this.splitWords = key === Key.AuthClaim && WORD_LIST_CLAIMS.has(claim[claim.length - 1] as string);
    const make = (values: string[] | undefined): ValueMatcher | null => {
      if (values === undefined) return null;
      if (key === Key.SourceIp || key === Key.RemoteIp || key === Key.DestinationIp)
        return new CidrMatcher(values);
      if (key === Key.DestinationPort) return new PortMatcher(values);
      return new StringMatcher(values);
    };
    this.values = make(spec.values);
    this.notValues = make(spec.notValues);
    this.ports = key === Key.DestinationPort ? (this.values as PortMatcher | null) : null;
    this.notPorts = key === Key.DestinationPort ? (this.notValues as PortMatcher | null) : null;
  }

  holds(a: RequestAttributes): boolean {
    switch (this.key) {
      case Key.Header:
        return this.headerHolds(a.headers[this.header]);
      case Key.AuthClaim:
        return this.claimHolds(a.claims);
      case Key.AuthAudiences:
        return this.listHolds(a.audiences);
      case Key.DestinationPort:
        return (
          (this.ports === null || this.ports.has(a.destinationPort)) &&
          (this.notPorts === null || !this.notPorts.has(a.destinationPort))
        );
      default:
        return this.stringHolds(this.valueOf(a));
    }
  }

  private valueOf(a: RequestAttributes): string {
    switch (this.key) {
      case Key.SourceIp:
        return a.sourceAddress;
      case Key.RemoteIp:
        return a.remoteAddress;
      case Key.SourceNamespace:
        return a.peerNamespace;
      case Key.SourcePrincipal:
        return a.peerPrincipal;
      case Key.AuthPrincipal:
        return a.requestPrincipal;
      case Key.AuthPresenter:
        return a.presenter;
      case Key.DestinationIp:
        return a.destinationAddress;
      default:
        return a.sni;
    }
  }

  private stringHolds(v: string): boolean {
    if (this.values !== null && !this.values.matches(v)) return false;
    return this.notValues === null || !this.notValues.matches(v);
  }

  private headerHolds(v: string | string[] | undefined): boolean {
    if (v === undefined || typeof v === 'string') return this.stringHolds(v ?? '');
    return this.listHolds(v);
  }

  /**
   * A list attribute: `values` holds if any element matches; `notValues` if none does. Only string
   * elements count (Istio matches string claims and lists of strings).
   */
  private listHolds(list: readonly unknown[]): boolean {
    if (this.values !== null) {
      let any = false;
      for (let i = 0; i < list.length && !any; i++) {
        const e = list[i];
        any = typeof e === 'string' && this.values.matches(e);
      }
      if (!any) return false;
    }
    if (this.notValues !== null) {
      for (let i = 0; i < list.length; i++) {
        const e = list[i];
        if (typeof e === 'string' && this.notValues.matches(e)) return false;
      }
    }
    return true;
  }

  private claimHolds(claims: Readonly<Record<string, unknown>> | null): boolean {
    let v: unknown = claims;
    for (let i = 0; i < this.claim.length; i++) {
      if (v === null || typeof v !== 'object' || Array.isArray(v)) {
        v = undefined;
        break;
      }
      v = (v as Record<string, unknown>)[this.claim[i] as string];
    }
    if (Array.isArray(v)) {
      // Only string elements count (Istio matches string claims and lists of strings).
      return this.listHolds(v);
    }
    const s = typeof v === 'string' ? v : '';
    if (!this.splitWords) return this.stringHolds(s);
    const pos = this.values as StringMatcher | null;
    const neg = this.notValues as StringMatcher | null;
    if (pos !== null && !pos.matchesAnyWord(s)) return false;
    return neg === null || !neg.matchesAnyWord(s);
  }
}

const STATIC_KEY: Readonly<Record<string, Key>> = {
  'source.ip': Key.SourceIp,
  'remote.ip': Key.RemoteIp,
  'source.namespace': Key.SourceNamespace,
  'source.principal': Key.SourcePrincipal,
  'request.auth.principal': Key.AuthPrincipal,
  'request.auth.audiences': Key.AuthAudiences,
  'request.auth.presenter': Key.AuthPresenter,
  'destination.ip': Key.DestinationIp,
  'destination.port': Key.DestinationPort,
  'connection.sni': Key.Sni,
};

function sm(values: string[] | undefined, ignoreCase = false): StringMatcher | null {
  return values === undefined ? null : new StringMatcher(values, ignoreCase);
}

function cm(values: string[] | undefined): CidrMatcher | null {
  return values === undefined ? null : new CidrMatcher(values);
}

/** `pos` must match (when set) and `neg` must not (when set): Istio's X / notX pair. */
function pair(
  pos: { matches(s: string): boolean } | null,
  neg: { matches(s: string): boolean } | null,
  v: string,
): boolean {
  if (pos !== null && !pos.matches(v)) return false;
  return neg === null || !neg.matches(v);
}

class CompiledSource {
  readonly principals: StringMatcher | null;
  readonly notPrincipals: StringMatcher | null;
  readonly requestPrincipals: StringMatcher | null;
  readonly notRequestPrincipals: StringMatcher | null;
  readonly namespaces: StringMatcher | null;
  readonly notNamespaces: StringMatcher | null;
  readonly ipBlocks: CidrMatcher | null;
  readonly notIpBlocks: CidrMatcher | null;
  readonly remoteIpBlocks: CidrMatcher | null;
  readonly notRemoteIpBlocks: CidrMatcher | null;

  constructor(s: SourceSpec) {
    this.principals = sm(s.principals);
    this.notPrincipals = sm(s.notPrincipals);
    this.requestPrincipals = sm(s.requestPrincipals);
    this.notRequestPrincipals = sm(s.notRequestPrincipals);
    this.namespaces = sm(s.namespaces);
    this.notNamespaces = sm(s.notNamespaces);
    this.ipBlocks = cm(s.ipBlocks);
    this.notIpBlocks = cm(s.notIpBlocks);
    this.remoteIpBlocks = cm(s.remoteIpBlocks);
    this.notRemoteIpBlocks = cm(s.notRemoteIpBlocks);
  }

  matches(a: RequestAttributes): boolean {
    return (
      pair(this.principals, this.notPrincipals, a.peerPrincipal) &&
      pair(this.requestPrincipals, this.notRequestPrincipals, a.requestPrincipal) &&
      pair(this.namespaces, this.notNamespaces, a.peerNamespace) &&
      pair(this.ipBlocks, this.notIpBlocks, a.sourceAddress) &&
      pair(this.remoteIpBlocks, this.notRemoteIpBlocks, a.remoteAddress)
    );
  }
}

class CompiledOperation {
  readonly hosts: StringMatcher | null;
  readonly notHosts: StringMatcher | null;
  readonly ports: PortMatcher | null;
  readonly notPorts: PortMatcher | null;
  readonly methods: StringMatcher | null;
  readonly notMethods: StringMatcher | null;
  readonly paths: PathMatcher | null;
  readonly notPaths: PathMatcher | null;

  constructor(o: OperationSpec) {
    this.hosts = sm(o.hosts, true);
    this.notHosts = sm(o.notHosts, true);
    this.ports = o.ports === undefined ? null : new PortMatcher(o.ports);
    this.notPorts = o.notPorts === undefined ? null : new PortMatcher(o.notPorts);
    this.methods = sm(o.methods);
    this.notMethods = sm(o.notMethods);
    this.paths = o.paths === undefined ? null : new PathMatcher(o.paths);
    this.notPaths = o.notPaths === undefined ? null : new PathMatcher(o.notPaths);
  }

  matches(a: RequestAttributes): boolean {
    if (!pair(this.hosts, this.notHosts, a.host)) return false;
    if (this.ports !== null && !this.ports.has(a.destinationPort)) return false;
    if (this.notPorts?.has(a.destinationPort)) return false;
    return pair(this.methods, this.notMethods, a.method) && pair(this.paths, this.notPaths, a.path);
  }
}

class CompiledRule {
  readonly from: readonly CompiledSource[];
  readonly to: readonly CompiledOperation[];
  readonly when: readonly CompiledCondition[];
  /** Literal starts a request path must have for this rule to match, or null when any path may. */
  readonly literalPrefixes: ReadonlySet<string> | null;

  constructor(spec: RuleSpec) {
    this.from = (spec.from ?? []).map((s) => new CompiledSource(s));
    this.to = (spec.to ?? []).map((o) => new CompiledOperation(o));
    this.when = (spec.when ?? []).map((c) => new CompiledCondition(c));
    this.literalPrefixes = literalPrefixes(spec.to);
  }

  /** Some `from` AND some `to` AND every `when`; an absent or empty list matches anything. */
  matches(a: RequestAttributes): boolean {
    if (this.from.length > 0) {
      let any = false;
      for (let i = 0; i < this.from.length && !any; i++) any = (this.from[i] as CompiledSource).matches(a);
      if (!any) return false;
    }
    if (this.to.length > 0) {
      let any = false;
      for (let i = 0; i < this.to.length && !any; i++) any = (this.to[i] as CompiledOperation).matches(a);
      if (!any) return false;
    }
    for (let i = 0; i < this.when.length; i++)
      if (!(this.when[i] as CompiledCondition).holds(a)) return false;
    return true;
  }
}

export class CompiledPolicy {
  /** `namespace/name`. */
  readonly id: string;
  readonly spec: AuthorizationPolicy;
  readonly rules: readonly CompiledRule[];

  constructor(spec: AuthorizationPolicy) {
    this.id = `${spec.meta.namespace}/${spec.meta.name}`;
    this.spec = spec;
    this.rules = (spec.rules ?? []).map((r) => new CompiledRule(r));
  }

  /** Index of the first matching rule, or -1. */
  match(a: RequestAttributes): number {
    for (let i = 0; i < this.rules.length; i++) if ((this.rules[i] as CompiledRule).matches(a)) return i;
    return -1;
  }
}

/**
 * The literal start every path matched by a value has (`/api/v1/*` → `/api/v1/`, `/users/{*}` →
 * `/users/`, `/health` → `/health`), or null when the value can match a path that starts with
 * anything (`*`, `*.png`).
 */
function literalPrefixOf(value: string): string | null {
  if (!value.startsWith('/')) return null;
  const brace = value.indexOf('{');
  if (brace !== -1) return value.slice(0, brace);
  return value.endsWith('*') ? value.slice(0, -1) : value;
}

/** The literal prefixes a request path must start with for this rule to match; null: any path may. */
function literalPrefixes(to: readonly OperationSpec[] | null): ReadonlySet<string> | null {
  if (to === null || to.length === 0) return null;
  const out = new Set<string>();
  for (const o of to) {
    if (o.paths === undefined) return null;
    for (const v of o.paths) {
      const prefix = literalPrefixOf(v);
      if (prefix === null || prefix === '/' || prefix === '') return null;
      out.add(prefix);
    }
  }
  return out;
}

/** One rule of one policy, in the order Istio evaluates them. */
class RuleRef {
  readonly policy: CompiledPolicy;
  readonly ruleIndex: number;
  readonly rule: CompiledRule;
  readonly order: number;

  constructor(policy: CompiledPolicy, ruleIndex: number, order: number) {
    this.policy = policy;
    this.ruleIndex = ruleIndex;
    this.rule = policy.rules[ruleIndex] as CompiledRule;
    this.order = order;
  }
}

const NO_RULES: readonly RuleRef[] = [];

class PrefixNode {
  readonly children = new Map<number, PrefixNode>();
  readonly here: RuleRef[] = [];
  /** Rules stored here and at every ancestor, in policy order (shared with the parent when none are here). */
  cumulative: readonly RuleRef[] = NO_RULES;
}

function mergeOrdered(a: readonly RuleRef[], b: readonly RuleRef[]): readonly RuleRef[] {
  if (a.length === 0) return b;
  if (b.length === 0) return a;
  return [...a, ...b].sort((x, y) => x.order - y.order).filter((r, i, all) => i === 0 || all[i - 1] !== r);
}

/**
 * The rules of a policy list, grouped so that a request only tries rules that can match its path.
 * Rules whose paths all have a literal start sit in a character trie under those starts; the rest
 * are tried for every request. A lookup walks the trie over the path's characters (no substring is
 * made), takes the deepest node's precomputed list of candidate rules and merges it with the
 * always-tried ones by policy order, so the first matching rule is the one a plain scan in policy
 * order would find (the property test checks this against the reference evaluator).
 */
class RuleIndex {
  private readonly any: readonly RuleRef[];
  private readonly root = new PrefixNode();

  constructor(policies: readonly CompiledPolicy[]) {
    const any: RuleRef[] = [];
    let order = 0;
    for (const p of policies) {
      for (let r = 0; r < p.rules.length; r++) {
        const ref = new RuleRef(p, r, order++);
        const prefixes = ref.rule.literalPrefixes;
        if (prefixes === null) {
          any.push(ref);
          continue;
        }
        for (const prefix of prefixes) this.node(prefix).here.push(ref);
      }
    }
    this.any = any;
    this.accumulate(this.root, NO_RULES);
  }

  private node(prefix: string): PrefixNode {
    let n = this.root;
    for (let i = 0; i < prefix.length; i++) {
      const c = prefix.charCodeAt(i);
      let next = n.children.get(c);
      if (next === undefined) {
        next = new PrefixNode();
        n.children.set(c, next);
      }
      n = next;
    }
    return n;
  }

  private accumulate(n: PrefixNode, inherited: readonly RuleRef[]): void {
    n.cumulative = mergeOrdered(inherited, n.here);
    for (const child of n.children.values()) this.accumulate(child, n.cumulative);
  }

  private candidates(path: string): readonly RuleRef[] {
    let n = this.root;
    for (let i = 0; i < path.length; i++) {
      const next = n.children.get(path.charCodeAt(i));
      if (next === undefined) break;
      n = next;
    }
    return n.cumulative;
  }

  /** The first rule, in policy order, that matches the request; null if none does. */
  first(a: RequestAttributes): RuleRef | null {
    const cand = this.candidates(a.path);
    const any = this.any;
    let i = 0;
    let j = 0;
    while (i < any.length || j < cand.length) {
      const takeAny =
        j >= cand.length || (i < any.length && (any[i] as RuleRef).order < (cand[j] as RuleRef).order);
      const ref = (takeAny ? any[i++] : cand[j++]) as RuleRef;
      if (ref.rule.matches(a)) return ref;
    }
    return null;
  }
}

/**
 * The token attributes policies read, so that an audit event can keep them for replay: claim paths
 * (`request.auth.claims[a][b]` → ['a', 'b']), and whether audiences or the presenter are read.
 */
export interface TokenReads {
  readonly claimPaths: readonly (readonly string[])[];
  readonly audiences: boolean;
  readonly presenter: boolean;
}

function tokenReads(policies: readonly AuthorizationPolicy[]): TokenReads {
  const paths = new Map<string, string[]>();
  let audiences = false;
  let presenter = false;
  for (const p of policies)
    for (const r of p.rules ?? [])
      for (const c of r.when ?? []) {
        if (c.key.startsWith('request.auth.claims['))
          paths.set(c.key, c.key.slice('request.auth.claims['.length, -1).split(']['));
        else if (c.key === 'request.auth.audiences') audiences = true;
        else if (c.key === 'request.auth.presenter') presenter = true;
      }
  return { claimPaths: [...paths.values()], audiences, presenter };
}

/** Request headers the policies' `when` conditions read (lowercase). */
function headersRead(policies: readonly AuthorizationPolicy[]): Set<string> {
  const out = new Set<string>();
  for (const p of policies)
    for (const r of p.rules ?? [])
      for (const c of r.when ?? [])
        if (c.key.startsWith('request.headers['))
          out.add(c.key.slice('request.headers['.length, -1).toLowerCase());
  return out;
}

/**
 * The decision function for one workload. Evaluation order (Istio's): DENY policies first — any
 * match denies; then, if the workload has at least one ALLOW policy, one must match; with none,
 * the request is allowed. AUDIT policies only mark; dry-run policies are evaluated into the shadow
 * fields and never change the outcome. CUSTOM policies are matched separately (`matchCustom`),
 * because their verdict comes from an external service.
 */
export class Authorizer {
  readonly deny: readonly CompiledPolicy[];
  readonly allow: readonly CompiledPolicy[];
  readonly audit: readonly CompiledPolicy[];
  readonly custom: readonly CompiledPolicy[];
  readonly shadowDeny: readonly CompiledPolicy[];
  readonly shadowAllow: readonly CompiledPolicy[];
  /** Request headers some policy reads: the upstream must receive them as they were authorized. */
  readonly headers: ReadonlySet<string>;
  /** Token attributes some policy reads (audit events keep them, for replay). */
  readonly tokenReads: TokenReads;
  readonly all: readonly CompiledPolicy[];
  private readonly denyIndex: RuleIndex;
  private readonly allowIndex: RuleIndex;
  private readonly auditIndex: RuleIndex;
  private readonly customIndex: RuleIndex;
  private readonly shadowDenyIndex: RuleIndex;
  private readonly shadowAllowIndex: RuleIndex;

  constructor(policies: readonly AuthorizationPolicy[]) {
    const bucket = (action: string, dryRun: boolean): CompiledPolicy[] =>
      policies.filter((p) => p.action === action && p.dryRun === dryRun).map((p) => new CompiledPolicy(p));
    this.deny = bucket('DENY', false);
    this.allow = bucket('ALLOW', false);
    this.audit = bucket('AUDIT', false);
    this.custom = bucket('CUSTOM', false);
    this.shadowDeny = bucket('DENY', true);
    this.shadowAllow = bucket('ALLOW', true);
    this.headers = headersRead(policies);
    this.tokenReads = tokenReads(policies);
    this.all = [
      ...this.custom,
      ...this.deny,
      ...this.allow,
      ...this.audit,
      ...this.shadowDeny,
      ...this.shadowAllow,
    ];
    this.denyIndex = new RuleIndex(this.deny);
    this.allowIndex = new RuleIndex(this.allow);
    this.auditIndex = new RuleIndex(this.audit);
    this.customIndex = new RuleIndex(this.custom);
    this.shadowDenyIndex = new RuleIndex(this.shadowDeny);
    this.shadowAllowIndex = new RuleIndex(this.shadowAllow);
  }

  /** The policies of `set` that apply to `workload` (Istio's selector and namespace scoping), compiled. */
  static forWorkload(
    set: readonly AuthorizationPolicy[],
    workload: Workload,
    rootNamespace: string,
  ): Authorizer {
    return new Authorizer(
      set.filter((p) => appliesTo(p.meta.namespace, p.selector, workload, rootNamespace)),
    );
  }

  get empty(): boolean {
    return this.all.length === 0;
  }

  decide(a: RequestAttributes, out: DecisionOut): void {
    out.auditPolicy = this.auditIndex.first(a)?.policy ?? null;
    out.shadowDenyPolicy = this.shadowDenyIndex.first(a)?.policy ?? null;
    if (this.shadowAllow.length === 0) {
      out.shadowAllowPolicy = null;
      out.shadowAllowed = true;
    } else {
      out.shadowAllowPolicy = this.shadowAllowIndex.first(a)?.policy ?? null;
      out.shadowAllowed = out.shadowAllowPolicy !== null;
    }
    const denied = this.denyIndex.first(a);
    if (denied !== null) {
      out.allowed = false;
      out.reason = 'denied-by-policy';
      out.policy = denied.policy;
      out.ruleIndex = denied.ruleIndex;
      return;
    }
    if (this.allow.length === 0) {
      out.allowed = true;
      out.reason = 'no-allow-policies';
      out.policy = null;
      out.ruleIndex = -1;
      return;
    }
    const allowed = this.allowIndex.first(a);
    if (allowed !== null) {
      out.allowed = true;
      out.reason = 'allowed-by-policy';
      out.policy = allowed.policy;
      out.ruleIndex = allowed.ruleIndex;
      return;
    }
    out.allowed = false;
    out.reason = 'no-matching-allow';
    out.policy = null;
    out.ruleIndex = -1;
  }

  /** The first CUSTOM policy with a matching rule: its provider must then be asked. */
  matchCustom(a: RequestAttributes): CompiledPolicy | null {
    return this.customIndex.first(a)?.policy ?? null;
  }
}
