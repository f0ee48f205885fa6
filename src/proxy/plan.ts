import type { Logger } from 'pino';
import type { EffectiveMode } from '../authn/peer-authn.js';
import type { AttributeSettings } from '../authz/attributes.js';
import type { ExplainSource } from '../authz/explain.js';
import type { Limits } from '../config/load.js';
import type { LogLimiter } from '../transport/log-limit.js';
import type { RequestContext } from './context.js';
import type { PinnedHeaders } from './headers.js';
import type { LocalReply } from './local-reply.js';
import type { RequestObserver } from './observer.js';
import type { Snapshot } from './snapshot.js';
import type { RequestStream } from './stream.js';

/** A stage either lets the request continue (null) or answers it (a local reply). */
export type StageResult = LocalReply | null;

/**
 * One step of the request path (Envoy's HTTP filter): reads the attributes and what earlier stages
 * wrote on the context, writes its own part, and returns continue or a local reply. Stages never
 * touch the request, the response or a socket (the stream does). A stage the config does not
 * need is left out of the plan rather than run as a no-op.
 */
export interface Stage {
  readonly name: string;
  run(ctx: RequestContext): StageResult | Promise<StageResult>;
}

/**
 * Where allowed requests go (DESIGN: forwarding is per protocol behind one interface): the
 * inbound upstream (HTTP/1.1 or HTTP/2), or the outbound destinations (mTLS with secure naming).
 */
export interface Forwarder {
  /** The upstream origin, for logs (`outbound` for the outbound forwarder). */
  readonly origin: string;
  readonly limits: Limits;
  /** Upstream failures come one per request while it is down: one line per error code per 10 s. */
  readonly logLimit: LogLimiter;
  readonly logger: Logger;
  forward(rs: RequestStream): void;
  /** The reply for a failure before response headers. */
  replyFor(err: Error & { code?: string }): LocalReply;
  close(): Promise<void>;
}

/** What one listener does with requests under one snapshot; rebuilt when the snapshot changes. */
export class ListenerPlan {
  readonly snapshot: Snapshot;
  readonly mode: EffectiveMode;
  /** Which policy set the mode, for logs. */
  readonly modeSource: string;
  readonly stages: readonly Stage[];
  readonly upstream: Forwarder;
  /** How heads become attributes here: workload port (destination.port), path normalization, trusted hops. */
  readonly settings: AttributeSettings;
  readonly listenerName: string;
  /** Requests from clients to this workload (inbound), or from this workload out (outbound). */
  readonly direction: 'inbound' | 'outbound';
  /** Whether an authorization stage is in the plan (some AuthorizationPolicy applies). */
  readonly authorized: boolean;
  readonly observer: RequestObserver;
  /** Headers a client's Connection header cannot remove (what the stages decided on). */
  readonly pinned: PinnedHeaders;
  /** Query parameters that carry tokens: redacted wherever a query is recorded. */
  readonly tokenParams: ReadonlySet<string>;
  /** Drop client headers whose names contain `_` (headersWithUnderscores: drop). */
  readonly dropUnderscoreHeaders: boolean;
  /** What decides here, for explaining a decision later (`/decisions/<id>`). */
  readonly explain: ExplainSource;

  constructor(init: ListenerPlanInit) {
    this.snapshot = init.snapshot;
    this.mode = init.mode;
    this.modeSource = init.modeSource;
    this.stages = init.stages;
    this.upstream = init.upstream;
    this.settings = init.settings;
    this.listenerName = init.listenerName;
    this.direction = init.direction;
    this.authorized = init.authorized;
    this.observer = init.observer;
    this.pinned = init.pinned;
    this.tokenParams = init.tokenParams;
    this.dropUnderscoreHeaders = init.dropUnderscoreHeaders;
    this.explain = init.explain;
  }
}

export type ListenerPlanInit = { readonly [K in keyof ListenerPlan]: ListenerPlan[K] };
