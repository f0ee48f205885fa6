import type {
  AuthorizationPolicy,
  ConditionSpec,
  OperationSpec,
  RuleSpec,
  SourceSpec,
} from '../istio/authorization-policy.js';
import type { RequestAttributes } from './attributes.js';
import { anyValue, conditionHolds, ipMatches, pathMatches } from './reference.js';

/**
 * Deciding a request whose record lacks some attributes (replay of audit events that did not keep
 * every header or claim a policy reads). Each condition is true, false or unknown (Kleene logic:
 * unknown AND false is false, unknown OR true is true), and the decision is Istio's — DENY, then
 * ALLOW — over those three values. A decision that comes out the same whatever the missing values
 * are is decided; one that depends on them is not, and says which attributes it needed. Nothing
 * is guessed. Slow (the reference evaluator's matching); replay uses it only for the requests
 * whose records lack an attribute the policies read.
 */

/** Whether the record holds the attribute a key names (Istio's `when` keys; `source.principal` etc.). */
export type Known = (key: string) => boolean;

const F = 0;
const T = 1;
const U = 2;
type Tri = 0 | 1 | 2;

function and(a: Tri, b: Tri): Tri {
  if (a === F || b === F) return F;
  return a === U || b === U ? U : T;
}

function or(a: Tri, b: Tri): Tri {
  if (a === T || b === T) return T;
  return a === U || b === U ? U : F;
}

export interface PartialDecision {
  readonly outcome: 'allow' | 'deny' | 'unknown';
  /** allowed-by-policy, no-allow-policies, denied-by-policy, no-matching-allow, or undecidable. */
  readonly reason: string;
  /** `ns/name` of the deciding policy, or null. */
  readonly policy: string | null;
  readonly rule: number;
  /** The keys whose values the decision needed and the record lacks (empty when decided). */
  readonly missing: readonly string[];
  /** The keys the record lacks that evaluation came to (a decision despite them, or undecidable). */
  readonly unknownRead: readonly string[];
}

/** Evaluation state for one request: what is known, and which unknowns were met. */
class Ctx {
  readonly a: RequestAttributes;
  readonly known: Known;
  readonly met = new Set<string>();

  constructor(a: RequestAttributes, known: Known) {
    this.a = a;
    this.known = known;
  }

  /** X / notX of one attribute: T when no constraint; U when constrained and not recorded. */
  field(
    key: string,
    v: string,
    pos: readonly string[] | undefined,
    neg: readonly string[] | undefined,
    m: (ps: string[], v: string) => boolean,
  ): Tri {
    if (pos === undefined && neg === undefined) return T;
    if (!this.known(key)) {
      this.met.add(key);
      return U;
    }
    if (pos !== undefined && !m(pos as string[], v)) return F;
    if (neg !== undefined && m(neg as string[], v)) return F;
    return T;
  }
}

const ports = (ps: string[], v: string): boolean => ps.includes(v);

function source(s: SourceSpec, c: Ctx): Tri {
  const a = c.a;
  let r = c.field('source.principal', a.peerPrincipal, s.principals, s.notPrincipals, anyValue);
  r = and(
    r,
    c.field(
      'request.auth.principal',
      a.requestPrincipal,
      s.requestPrincipals,
      s.notRequestPrincipals,
      anyValue,
    ),
  );
  r = and(r, c.field('source.namespace', a.peerNamespace, s.namespaces, s.notNamespaces, anyValue));
  r = and(r, c.field('source.ip', a.sourceAddress, s.ipBlocks, s.notIpBlocks, ipMatches));
  return and(r, c.field('remote.ip', a.remoteAddress, s.remoteIpBlocks, s.notRemoteIpBlocks, ipMatches));
}

function operation(o: OperationSpec, c: Ctx): Tri {
  const a = c.a;
  let r = c.field('request.host', a.host, o.hosts, o.notHosts, (ps, v) => anyValue(ps, v, true));
  r = and(
    r,
    c.field(
      'destination.port',
      String(a.destinationPort),
      o.ports?.map(String),
      o.notPorts?.map(String),
      ports,
    ),
  );
  r = and(r, c.field('request.method', a.method, o.methods, o.notMethods, anyValue));
  return and(r, c.field('request.path', a.path, o.paths, o.notPaths, pathMatches));
}

function condition(w: ConditionSpec, c: Ctx): Tri {
  if (!c.known(w.key)) {
    c.met.add(w.key);
    return U;
  }
  return conditionHolds(w, c.a) ? T : F;
}

function rule(r: RuleSpec, c: Ctx): Tri {
  let res: Tri = T;
  if (r.from !== null && r.from.length > 0)
    res = and(
      res,
      r.from.reduce<Tri>((acc, s) => or(acc, source(s, c)), F),
    );
  if (res !== F && r.to !== null && r.to.length > 0)
    res = and(
      res,
      r.to.reduce<Tri>((acc, o) => or(acc, operation(o, c)), F),
    );
  for (const w of r.when ?? []) {
    if (res === F) break;
    res = and(res, condition(w, c));
  }
  return res;
}

/** The policy's value, and its first rule that matches for certain (or -1). */
function policy(p: AuthorizationPolicy, c: Ctx): { value: Tri; rule: number } {
  let value: Tri = F;
  const rules = p.rules ?? [];
  for (let i = 0; i < rules.length; i++) {
    const v = rule(rules[i] as RuleSpec, c);
    if (v === T) return { value: T, rule: i };
    value = or(value, v);
  }
  return { value, rule: -1 };
}

const id = (p: AuthorizationPolicy): string => `${p.meta.namespace}/${p.meta.name}`;

/**
 * Istio's outcome for the policies that apply to a workload (AUDIT, dry-run and CUSTOM ones do not
 * change it), with the attributes `known` says the record lacks treated as unknown. The DENY and
 * ALLOW lists are picked once; replay asks the same policies about every event.
 */
export class PartialAuthorizer {
  private readonly denies: readonly AuthorizationPolicy[];
  private readonly allows: readonly AuthorizationPolicy[];

  constructor(policies: readonly AuthorizationPolicy[]) {
    this.denies = policies.filter((p) => p.action === 'DENY' && !p.dryRun);
    this.allows = policies.filter((p) => p.action === 'ALLOW' && !p.dryRun);
  }

  decide(a: RequestAttributes, known: Known): PartialDecision {
    const c = new Ctx(a, known);
    let deny: Tri = F;
    for (const p of this.denies) {
      const r = policy(p, c);
      if (r.value === T)
        return {
          outcome: 'deny',
          reason: 'denied-by-policy',
          policy: id(p),
          rule: r.rule,
          missing: [],
          unknownRead: [...c.met],
        };
      deny = or(deny, r.value);
    }
    let allow: Tri = this.allows.length === 0 ? T : F;
    let by: { policy: string | null; rule: number } = { policy: null, rule: -1 };
    for (const p of this.allows) {
      const r = policy(p, c);
      if (r.value === T) {
        allow = T;
        by = { policy: id(p), rule: r.rule };
        break;
      }
      allow = or(allow, r.value);
    }
    // A DENY that might match decides nothing unless the request is denied anyway.
    if (allow === F)
      return {
        outcome: 'deny',
        reason: 'no-matching-allow',
        policy: null,
        rule: -1,
        missing: [],
        unknownRead: [...c.met],
      };
    if (deny === U || allow === U)
      return {
        outcome: 'unknown',
        reason: 'undecidable',
        policy: null,
        rule: -1,
        missing: [...c.met],
        unknownRead: [...c.met],
      };
    return {
      outcome: 'allow',
      reason: this.allows.length === 0 ? 'no-allow-policies' : 'allowed-by-policy',
      policy: by.policy,
      rule: by.rule,
      missing: [],
      unknownRead: [...c.met],
    };
  }
}

/** One decision with attributes missing (PartialAuthorizer, for a single request). */
export function decidePartial(
  policies: readonly AuthorizationPolicy[],
  a: RequestAttributes,
  known: Known,
): PartialDecision {
  return new PartialAuthorizer(policies).decide(a, known);
}

/**
 * Every attribute key the policies read: `when` keys as written, and for `from`/`to` fields the
 * key of the attribute they match (`source.principal`, `destination.port`, …).
 */
export function keysRead(policies: readonly AuthorizationPolicy[]): Set<string> {
  const out = new Set<string>();
  const add = (set: boolean, key: string): void => {
    if (set) out.add(key);
  };
  for (const p of policies)
    for (const r of p.rules ?? []) {
      for (const s of r.from ?? []) {
        add(s.principals !== undefined || s.notPrincipals !== undefined, 'source.principal');
        add(
          s.requestPrincipals !== undefined || s.notRequestPrincipals !== undefined,
          'request.auth.principal',
        );
        add(s.namespaces !== undefined || s.notNamespaces !== undefined, 'source.namespace');
        add(s.ipBlocks !== undefined || s.notIpBlocks !== undefined, 'source.ip');
        add(s.remoteIpBlocks !== undefined || s.notRemoteIpBlocks !== undefined, 'remote.ip');
      }
      for (const o of r.to ?? []) {
        add(o.hosts !== undefined || o.notHosts !== undefined, 'request.host');
        add(o.ports !== undefined || o.notPorts !== undefined, 'destination.port');
        add(o.methods !== undefined || o.notMethods !== undefined, 'request.method');
        add(o.paths !== undefined || o.notPaths !== undefined, 'request.path');
      }
      for (const w of r.when ?? []) out.add(w.key);
    }
  return out;
}
