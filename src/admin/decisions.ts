import type { Attributes } from '../authz/attributes.js';
import type { DecisionOut } from '../authz/compile.js';
import { type ExplainSource, type Explanation, explainRequest } from '../authz/explain.js';

/** What the ring reads of a finished request (the proxy's request stream has these). */
export interface DecidedRequest {
  readonly attrs: Attributes;
  readonly decision: DecisionOut;
  readonly deny: boolean;
  readonly status: number;
  readonly decisionReason: string;
  readonly reachedAuthorization: boolean;
  readonly reachedRego: boolean;
  readonly ctx: { readonly target: string; readonly answeredBy: string; readonly detail: string };
  readonly plan: { readonly explain: ExplainSource; readonly listenerName: string };
}

/** One remembered decision: references to what the request already holds, overwritten in place. */
class Slot {
  source: ExplainSource | null = null;
  attrs: Attributes | null = null;
  decision: DecisionOut | null = null;
  /** The request target as received (the path before normalization). */
  target = '';
  listener = '';
  deny = false;
  status = 0;
  reason = '';
  detail = '';
  answeredBy = '';
  reachedAuthorization = false;
  reachedRego = false;
}

/** At most this many decisions are explained for one id (a client may reuse an id on purpose). */
const MAX_MATCHES = 20;

/**
 * The recent decisions `GET /decisions/<request-id>` explains: a fixed ring of slots, filled as
 * requests finish. Recording writes a few fields into a slot and keeps references to the request's
 * attributes and decision (no copy, no map); the explanation is computed only when asked, with the
 * policies that decided (the plan's, so a reload does not change the answer). Only denies are kept
 * unless `all` is chosen: keeping every allowed request's attributes alive longer costs the
 * garbage collector, and denies are what users quote.
 */
export class DecisionRing {
  readonly size: number;
  readonly recordAllows: boolean;
  private readonly slots: Slot[];
  private next = 0;
  /** Decisions recorded since start (the ring holds the last `size`). */
  recorded = 0;

  constructor(size: number, recordAllows: boolean) {
    this.size = size;
    this.recordAllows = recordAllows;
    this.slots = Array.from({ length: size }, () => new Slot());
  }

  /** Keeps a finished request's decision (a deny, or any with `record: all`). */
  record(r: DecidedRequest): void {
    if (this.size === 0 || (!r.deny && !this.recordAllows)) return;
    const s = this.slots[this.next] as Slot;
    this.next = this.next + 1 === this.size ? 0 : this.next + 1;
    this.recorded++;
    s.source = r.plan.explain;
    s.attrs = r.attrs;
    s.decision = r.decision;
    s.target = r.ctx.target;
    s.listener = r.plan.listenerName;
    s.deny = r.deny;
    s.status = r.status;
    s.reason = r.decisionReason;
    s.detail = r.ctx.detail;
    s.answeredBy = r.ctx.answeredBy;
    s.reachedAuthorization = r.reachedAuthorization;
    s.reachedRego = r.reachedRego;
  }

  /** The explanations of the kept decisions with this request id, newest first. */
  explain(requestId: string): Explanation[] {
    const out: Explanation[] = [];
    for (let k = 1; k <= this.size && out.length < MAX_MATCHES; k++) {
      const s = this.slots[(this.next - k + this.size) % this.size] as Slot;
      if (s.attrs === null || s.attrs.requestId !== requestId) continue;
      const q = s.target.indexOf('?');
      out.push(
        explainRequest(s.source as ExplainSource, s.attrs, q === -1 ? s.target : s.target.slice(0, q), {
          listener: s.listener,
          decision: s.decision as DecisionOut,
          deny: s.deny,
          status: s.status,
          reason: s.reason,
          detail: s.detail,
          answeredBy: s.answeredBy,
          reachedAuthorization: s.reachedAuthorization,
          reachedRego: s.reachedRego,
        }),
      );
    }
    return out;
  }
}
