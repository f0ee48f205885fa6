import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import type { IncomingHttpHeaders } from 'node:http';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import type { RequestAttributes } from '../authz/attributes.js';
import { Authorizer, Decision } from '../authz/compile.js';
import { keysRead, PartialAuthorizer } from '../authz/partial.js';
import type { Config } from '../config/load.js';
import { errorMessage } from '../errors.js';
import { namespaceOf } from '../identity/spiffe-id.js';
import type { AuthorizationPolicy } from '../istio/authorization-policy.js';
import { appliesTo } from '../istio/selector.js';
import { isMap } from '../istio/validate.js';

/**
 * Replay: audit events read back (the proxy's own NDJSON, rotated and gzipped files too) and each
 * request decided again with other policies, to see what a policy change would do to real traffic
 * before it is rolled out. Streaming: one line at a time, a bounded report whatever the input size.
 *
 * Only the AuthorizationPolicies' part is replayed. A request the policies did not decide (refused
 * before them: a bad token, a bad request, a login redirect; a connection refused at TLS; an
 * outbound call) keeps its outcome and is counted apart. A request an external authorizer (CUSTOM)
 * or the Rego policy refused after the policies allowed it stays refused: neither is asked again.
 *
 * An event holds what audit recorded: a header not in `audit.headers`, a claim the policies of the
 * time did not read, is not there. A decision that needs one of those is not guessed: it is counted
 * undecidable, by the attribute it needed (see authz/partial.ts).
 */

export type Transition = 'allow_to_deny' | 'deny_to_allow' | 'undecidable';

/** How a request was decided, old or new. */
export interface Outcome {
  readonly decision: 'allow' | 'deny' | 'unknown';
  /** The audit reason (old) or the decision reason (new: allowed-by-policy, no-matching-allow, …). */
  readonly reason: string;
  readonly policy: string | null;
  readonly rule: number | null;
}

export interface ReplaySample {
  readonly file: string;
  readonly line: number;
  readonly time: string;
  readonly requestId: string;
  readonly listener: string;
  readonly method: string;
  readonly host: string;
  readonly path: string;
  readonly peer: string;
  readonly requestPrincipal: string;
}

/** Requests that changed the same way: old outcome → new outcome (with the deciding policy and rule). */
export interface ReplayGroup {
  readonly transition: Transition;
  readonly count: number;
  readonly old: Outcome;
  readonly new: Outcome;
  /** For undecidable requests: the attributes the decision needed and the events lack. */
  readonly missing: readonly string[];
  readonly samples: readonly ReplaySample[];
}

export interface ReplayReport {
  readonly files: readonly string[];
  /** Audit events read (valid lines). */
  readonly events: number;
  /** Events whose authorization was decided again. */
  readonly replayed: number;
  readonly allow_to_deny: number;
  readonly deny_to_allow: number;
  readonly unchanged: number;
  /** Of the unchanged: decided by another policy or rule than before. */
  readonly unchanged_other_rule: number;
  readonly undecidable: number;
  /** Events not replayed (not decided by the policies), by reason. */
  readonly not_replayed: number;
  readonly not_replayed_by_reason: Readonly<Record<string, number>>;
  /** Lines that are not audit events (not JSON, another schema version), and the first few of them. */
  readonly invalid_lines: number;
  readonly invalid_samples: readonly string[];
  readonly fidelity: {
    /** Decisions that read an attribute the events lack, yet came out the same whatever its value. */
    readonly decided_despite_missing: number;
    /** Undecidable decisions, by each attribute they needed. */
    readonly undecidable_by_attribute: Readonly<Record<string, number>>;
  };
  readonly groups: readonly ReplayGroup[];
  readonly seconds: number;
  readonly events_per_second: number;
}

export interface ReplayOptions {
  readonly files: readonly string[];
  /** The config the events were recorded under (workload, listeners). */
  readonly config: Config;
  /** The AuthorizationPolicies to decide with (all of them; those applying to the workload are used). */
  readonly policies: readonly AuthorizationPolicy[];
  /** Samples kept per group (default 3). */
  readonly samples?: number;
  /** Called about every 50 ms of work with the events read so far. */
  readonly progress?: (events: number, file: string, fileIndex: number) => void;
}

/** Audit reasons of requests the policies allowed (then forwarded or answered by the proxy). */
const ALLOWED_BY_POLICIES = new Set([
  'policy',
  'no-allow-policies',
  'no-policies',
  'upstream-unavailable',
  'upstream-timeout',
  'upstream-error',
  'options-asterisk',
]);
/** Denied by the policies. */
const DENIED_BY_POLICIES = new Set(['policy', 'no-matching-allow']);
/** Allowed by the policies, then refused by a later authorizer (not asked again: stays refused). */
const REFUSED_AFTER_POLICIES = new Set(['ext-authz-denied', 'ext-authz-error', 'rego-denied', 'rego-error']);

/** Distinct reasons counted apart, past which they are counted as `other` (an event's text is input). */
const MAX_REASONS = 64;
const MAX_INVALID_SAMPLES = 5;
/** Distinct groups kept, past which the rest are counted in the totals only (bounded memory). */
const MAX_GROUPS = 1000;

type EventRecord = Record<string, unknown>;

const str = (v: unknown, dflt = ''): string => (typeof v === 'string' ? v : dflt);

/** A request's attributes as its event records them, and which of them it does not hold. */
class Replayed implements RequestAttributes {
  readonly method: string;
  readonly host: string;
  readonly path: string;
  readonly query = '';
  readonly headers: IncomingHttpHeaders;
  readonly sourceAddress: string;
  readonly sourcePort: number;
  readonly remoteAddress: string;
  readonly destinationAddress: string;
  readonly destinationPort: number;
  readonly sni: string;
  readonly peerPrincipal: string;
  readonly peerNamespace: string;
  readonly requestPrincipal: string;
  readonly claims: Readonly<Record<string, unknown>> | null;
  readonly audiences: readonly string[];
  readonly presenter: string;
  private readonly recordedHeaders: EventRecord | null;
  private readonly recordedClaims: EventRecord | null;
  private readonly hasAudiences: boolean;
  private readonly hasPresenter: boolean;
  private readonly hasDestinationAddress: boolean;
  private readonly hasDestinationPort: boolean;
  private readonly hasSni: boolean;

  constructor(e: EventRecord, request: EventRecord, workloadPort: number | null) {
    const source = isMap(e.source) ? e.source : {};
    this.method = str(request.method);
    this.host = str(request.host);
    this.path = str(request.path);
    const headers: IncomingHttpHeaders = {};
    this.recordedHeaders = isMap(request.headers) ? request.headers : null;
    if (this.recordedHeaders !== null)
      for (const [k, v] of Object.entries(this.recordedHeaders)) if (typeof v === 'string') headers[k] = v;
    this.headers = headers;
    this.sourceAddress = str(source.address);
    this.sourcePort = typeof source.port === 'number' ? source.port : 0;
    this.remoteAddress = str(e.remoteAddress, this.sourceAddress);
    this.hasDestinationAddress = typeof e.destinationAddress === 'string';
    this.destinationAddress = str(e.destinationAddress);
    this.hasDestinationPort = typeof e.destinationPort === 'number' || workloadPort !== null;
    this.destinationPort = typeof e.destinationPort === 'number' ? e.destinationPort : (workloadPort ?? 0);
    this.hasSni = typeof e.sni === 'string' || e.tls === false;
    this.sni = str(e.sni);
    this.peerPrincipal = str(source.principal);
    const slash = this.peerPrincipal.indexOf('/');
    this.peerNamespace = slash === -1 ? '' : namespaceOf(this.peerPrincipal.slice(slash));
    this.requestPrincipal = str(request.principal);
    const token = this.requestPrincipal !== '';
    this.recordedClaims = token && isMap(request.claims) ? request.claims : null;
    this.claims = token ? (this.recordedClaims ?? {}) : null;
    this.hasAudiences = !token || Array.isArray(request.audiences);
    this.audiences = Array.isArray(request.audiences)
      ? request.audiences.filter((a): a is string => typeof a === 'string')
      : [];
    this.hasPresenter = !token || typeof request.presenter === 'string';
    this.presenter = str(request.presenter);
  }

  /** Whether the event holds the attribute a key names. */
  known(key: string): boolean {
    if (key.startsWith('request.headers[')) {
      const name = key.slice('request.headers['.length, -1).toLowerCase();
      return this.recordedHeaders !== null && Object.hasOwn(this.recordedHeaders, name);
    }
    if (key.startsWith('request.auth.claims[')) {
      if (this.claims === null) return true;
      if (this.recordedClaims === null) return false;
      let v: unknown = this.recordedClaims;
      for (const k of key.slice('request.auth.claims['.length, -1).split('][')) {
        // A value where the path goes on (a string, null): known to hold nothing deeper.
        if (!isMap(v)) return v !== undefined;
        if (!Object.hasOwn(v, k)) return false;
        v = v[k];
      }
      return true;
    }
    switch (key) {
      case 'request.auth.audiences':
        return this.hasAudiences;
      case 'request.auth.presenter':
        return this.hasPresenter;
      case 'destination.ip':
        return this.hasDestinationAddress;
      case 'destination.port':
        return this.hasDestinationPort;
      case 'connection.sni':
        return this.hasSni;
      default:
        return true;
    }
  }
}

interface GroupState {
  transition: Transition;
  count: number;
  old: Outcome;
  new: Outcome;
  missing: readonly string[];
  samples: ReplaySample[];
}

/** Gunzips a file that starts with gzip's magic bytes, whatever its name. */
async function lines(file: string): Promise<AsyncIterable<string>> {
  const fh = await open(file, 'r');
  const head = Buffer.alloc(2);
  try {
    await fh.read(head, 0, 2, 0);
  } finally {
    await fh.close();
  }
  let input: Readable = createReadStream(file);
  if (head[0] === 0x1f && head[1] === 0x8b) input = input.pipe(createGunzip());
  return createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY });
}

export async function replayAudit(opts: ReplayOptions): Promise<ReplayReport> {
  const config = opts.config;
  const applying = opts.policies.filter((p) =>
    appliesTo(p.meta.namespace, p.selector, config.workload, config.rootNamespace),
  );
  const authorizer = new Authorizer(applying);
  const partial = new PartialAuthorizer(applying);
  const read = [...keysRead(applying)];
  const workloadPorts = new Map(config.listeners.map((l) => [l.name, l.workloadPort]));
  const maxSamples = opts.samples ?? 3;
  const decision = new Decision();

  const notReplayed = new Map<string, number>();
  const undecidableBy = new Map<string, number>();
  const groups = new Map<string, GroupState>();
  const invalidSamples: string[] = [];
  let events = 0;
  let invalid = 0;
  let allowToDeny = 0;
  let denyToAllow = 0;
  let unchanged = 0;
  let unchangedOtherRule = 0;
  let undecidable = 0;
  let decidedWithMissing = 0;
  let notReplayedCount = 0;
  const started = performance.now();
  let lastProgress = started;

  const skip = (reason: string): void => {
    notReplayedCount++;
    const key = notReplayed.has(reason) || notReplayed.size < MAX_REASONS ? reason : 'other';
    notReplayed.set(key, (notReplayed.get(key) ?? 0) + 1);
  };

  for (const [fileIndex, file] of opts.files.entries()) {
    let lineNo = 0;
    try {
      for await (const line of await lines(file)) {
        lineNo++;
        if (line.length === 0) continue;
        let e: unknown;
        try {
          e = JSON.parse(line);
        } catch {
          e = undefined;
        }
        if (!isMap(e) || e.version !== 1) {
          invalid++;
          if (invalidSamples.length < MAX_INVALID_SAMPLES)
            invalidSamples.push(
              `${file}:${lineNo}: ${isMap(e) ? `schema version ${JSON.stringify(e.version)} is not 1` : 'not a JSON object'}`,
            );
          continue;
        }
        events++;
        if (opts.progress !== undefined && (events & 0x3fff) === 0) {
          const now = performance.now();
          if (now - lastProgress >= 50) {
            lastProgress = now;
            opts.progress(events, file, fileIndex);
          }
        }
        const request = e.request;
        if (typeof e.requestId !== 'string' || !isMap(request)) {
          skip(typeof e.event === 'string' ? e.event : str(e.reason, 'no request'));
          continue;
        }
        if (e.direction === 'outbound') {
          skip('outbound');
          continue;
        }
        const reason = str(e.reason);
        const wasAllowed = e.decision === 'allow';
        let policiesAllowed: boolean;
        if (wasAllowed && ALLOWED_BY_POLICIES.has(reason)) policiesAllowed = true;
        else if (!wasAllowed && DENIED_BY_POLICIES.has(reason)) policiesAllowed = false;
        else if (!wasAllowed && REFUSED_AFTER_POLICIES.has(reason)) {
          // Allowed by the policies, refused by an authorizer that is not asked again: stays refused.
          unchanged++;
          continue;
        } else {
          skip(reason === '' ? 'no reason' : reason);
          continue;
        }

        const a = new Replayed(e, request, workloadPorts.get(str(e.listener)) ?? null);
        let missingRead = false;
        for (let i = 0; i < read.length; i++) {
          if (!a.known(read[i] as string)) {
            missingRead = true;
            break;
          }
        }
        let outcome: Outcome;
        let missing: readonly string[] = [];
        if (!missingRead) {
          authorizer.decide(a, decision);
          outcome = {
            decision: decision.allowed ? 'allow' : 'deny',
            reason: decision.reason,
            policy: decision.policy?.id ?? null,
            rule: decision.policy === null ? null : decision.ruleIndex,
          };
        } else {
          const p = partial.decide(a, (k) => a.known(k));
          outcome = {
            decision: p.outcome,
            reason: p.reason,
            policy: p.policy,
            rule: p.policy === null ? null : p.rule,
          };
          missing = p.missing;
          if (p.outcome !== 'unknown' && p.unknownRead.length > 0) decidedWithMissing++;
        }
        const old: Outcome = {
          decision: wasAllowed ? 'allow' : 'deny',
          reason,
          policy: typeof e.policy === 'string' ? e.policy : null,
          rule: typeof e.rule === 'number' ? e.rule : null,
        };
        let transition: Transition;
        if (outcome.decision === 'unknown') {
          undecidable++;
          for (const k of missing) undecidableBy.set(k, (undecidableBy.get(k) ?? 0) + 1);
          transition = 'undecidable';
        } else if ((outcome.decision === 'allow') === policiesAllowed) {
          unchanged++;
          if (old.policy !== outcome.policy || old.rule !== outcome.rule) unchangedOtherRule++;
          continue;
        } else if (policiesAllowed) {
          allowToDeny++;
          transition = 'allow_to_deny';
        } else {
          denyToAllow++;
          transition = 'deny_to_allow';
        }
        const key = `${transition}\u0000${old.decision}\u0000${old.reason}\u0000${old.policy}\u0000${old.rule}\u0000${outcome.reason}\u0000${outcome.policy}\u0000${outcome.rule}\u0000${missing.join(',')}`;
        let g = groups.get(key);
        if (g === undefined) {
          if (groups.size >= MAX_GROUPS) continue;
          g = { transition, count: 0, old, new: outcome, missing, samples: [] };
          groups.set(key, g);
        }
        g.count++;
        if (g.samples.length < maxSamples)
          g.samples.push({
            file,
            line: lineNo,
            time: str(e.time),
            requestId: e.requestId,
            listener: str(e.listener),
            method: a.method,
            host: a.host,
            path: a.path,
            peer: a.peerPrincipal,
            requestPrincipal: a.requestPrincipal,
          });
      }
    } catch (err) {
      // A file that cannot be read, or a gzip stream that breaks off: say where.
      throw new Error(`${file}${lineNo > 0 ? ` (after line ${lineNo})` : ''}: ${errorMessage(err)}`);
    }
  }
  const seconds = (performance.now() - started) / 1000;
  const order: Record<Transition, number> = { allow_to_deny: 0, deny_to_allow: 1, undecidable: 2 };
  return {
    files: [...opts.files],
    events,
    replayed: allowToDeny + denyToAllow + unchanged + undecidable,
    allow_to_deny: allowToDeny,
    deny_to_allow: denyToAllow,
    unchanged,
    unchanged_other_rule: unchangedOtherRule,
    undecidable,
    not_replayed: notReplayedCount,
    not_replayed_by_reason: Object.fromEntries([...notReplayed].sort((x, y) => y[1] - x[1])),
    invalid_lines: invalid,
    invalid_samples: invalidSamples,
    fidelity: {
      decided_despite_missing: decidedWithMissing,
      undecidable_by_attribute: Object.fromEntries([...undecidableBy].sort((x, y) => y[1] - x[1])),
    },
    groups: [...groups.values()].sort(
      (x, y) => order[x.transition] - order[y.transition] || y.count - x.count,
    ),
    seconds: Math.round(seconds * 1000) / 1000,
    events_per_second: seconds > 0 ? Math.round(events / seconds) : events,
  };
}
