import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { type Attributes, requestAttributes } from '../authz/attributes.js';
import type { Decision } from '../authz/compile.js';
import { Connection, connectionOf } from '../transport/connection.js';
import { RequestContext } from './context.js';
import type { ForwardedFor } from './headers.js';
import { LocalReply, REPLIES, sendLocalReply } from './local-reply.js';
import type { ListenerPlan, Stage, StageResult } from './plan.js';
import { openTunnel } from './tunnel.js';
import { abortUpstream } from './upstream.js';

/** Where an outbound request went: the destination as the app named it, and the server it reached. */
export interface OutboundRoute {
  readonly host: string;
  readonly upstream: string;
  /** The SPIFFE ID the destination's server presented (most recently), or '' (none yet, or plain HTTP). */
  readonly presented: string;
}

/**
 * One exchange — an HTTP/1.1 request, an HTTP/2 stream, a WebSocket upgrade — from its head to
 * the end of its response. It builds the attributes, drives the plan's stages over the request
 * context, answers with a local reply or hands the exchange to forwarding, and publishes the
 * outcome when the response closes. Stages see only the context; the request, the response and
 * their sockets stay here and in forwarding.
 */
export class RequestStream implements ForwardedFor {
  /** The plan (snapshot-bound stage list) this request started on; it finishes on it. */
  readonly plan: ListenerPlan;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly ctx: RequestContext;
  /** The connection it came on (facts decided once per connection). */
  readonly connection: Connection;
  /** performance.now() at arrival (durations). */
  readonly startTime: number;
  /** The local reply sent (an entry of the reply table), or null when the request was forwarded. */
  reply: LocalReply | null;
  /** The client's response closed (sent, or the client went away / reset its HTTP/2 stream). */
  closed: boolean;
  /** Set when the exchange is finished: whether it was refused, and the reason recorded. */
  deny: boolean;
  decisionReason: string;
  /** performance.now() when forwarding began and when the upstream response ended (0: not yet). */
  upstreamStart: number;
  upstreamEnd: number;
  upstreamStatus: number;
  /** The client sent `Expect: 100-continue` and waits for 100 Continue before its body. */
  expectContinue: boolean;
  /** For an `Upgrade` request: the bytes that came after its head (the start of the tunnel); else null. */
  upgradeHead: Buffer | null;
  /** A WebSocket over HTTP/2 (RFC 8441 extended CONNECT): a tunnel on this stream once allowed. */
  readonly extendedConnect: boolean;
  /** The outcome was published (a tunnel publishes at its opening, not again when it closes). */
  published: boolean;
  /** Outbound requests: the destination chosen; null inbound (and before routing). */
  route: OutboundRoute | null;

  /**
   * `extendedConnect`: an HTTP/2 `CONNECT` with `:protocol: websocket`, which is authorized as the
   * `GET` it stands for (RFC 8441 §5; what Envoy's policies see too), so one policy covers
   * WebSocket over either HTTP version.
   */
  constructor(plan: ListenerPlan, req: IncomingMessage, res: ServerResponse, extendedConnect = false) {
    const conn = connectionOf(req.socket) ?? new Connection(req.socket as Socket, null, '');
    const attrs = requestAttributes(
      conn,
      {
        method: extendedConnect ? 'GET' : (req.method ?? ''),
        target: req.url ?? '',
        headers: req.headers,
        httpVersion: req.httpVersion,
      },
      plan.settings,
      Date.now(),
    );
    this.plan = plan;
    this.req = req;
    this.res = res;
    this.ctx = new RequestContext(
      attrs,
      req.url ?? '',
      req.rawHeaders,
      req.httpVersionMajor === 2,
      conn.xfcc,
      conn.peer?.x5tS256 ?? '',
    );
    this.connection = conn;
    conn.lastResponse = res;
    conn.exchanges++;
    this.startTime = performance.now();
    this.reply = null;
    this.closed = false;
    this.deny = false;
    this.decisionReason = '';
    this.upstreamStart = 0;
    this.upstreamEnd = 0;
    this.upstreamStatus = 0;
    this.expectContinue = false;
    this.upgradeHead = null;
    this.extendedConnect = extendedConnect;
    this.published = false;
    this.route = null;
  }

  get attrs(): Attributes {
    return this.ctx.attrs;
  }

  get decision(): Decision {
    return this.ctx.decision;
  }

  get authzMs(): number {
    return this.ctx.authzMs;
  }

  // What the forwarding headers read (ForwardedFor), without an object per request.
  get dropHeaders(): readonly string[] | null {
    return this.ctx.dropHeaders;
  }

  get addHeaders(): readonly string[] | null {
    return this.ctx.addHeaders;
  }

  get xfcc(): string {
    return this.ctx.xfcc;
  }

  get tls(): boolean {
    return this.ctx.attrs.tls;
  }

  get sourceAddress(): string {
    return this.ctx.attrs.sourceAddress;
  }

  /**
   * The AuthorizationPolicies decided this request: no stage before them answered it (a stage
   * without policies decides nothing, and the request is allowed as Istio allows it).
   */
  get reachedAuthorization(): boolean {
    const by = this.ctx.answeredBy;
    return by === '' || by === 'authz' || by === 'custom' || by === 'rego';
  }

  /** The listener's Rego policy was evaluated for this request. */
  get reachedRego(): boolean {
    const by = this.ctx.answeredBy;
    return this.plan.explain.rego !== null && (by === '' || by === 'rego');
  }

  /** The status the client got (or is getting). */
  get status(): number {
    return this.res.statusCode;
  }

  /** The whole response was written (not cut by the client going away or a failure). */
  get completed(): boolean {
    return this.res.writableFinished;
  }

  /**
   * Runs the stages from `from`, then forwards. Synchronous stages cost a call and a comparison;
   * only a stage that returns a promise (one that must wait on I/O) suspends the loop.
   */
  run(from: number): void {
    const stages = this.plan.stages;
    const ctx = this.ctx;
    for (let i = from; i < stages.length; i++) {
      let result: StageResult | Promise<StageResult>;
      const stage = stages[i] as (typeof stages)[number];
      try {
        result = stage.run(ctx);
      } catch (err) {
        ctx.answeredBy = stage.name;
        this.failClosed(err);
        return;
      }
      if (result === null) continue;
      if (result instanceof LocalReply) {
        ctx.answeredBy = stage.name;
        this.answer(result);
        return;
      }
      suspend(this, result, i + 1);
      return;
    }
    this.applyResponseHeaders();
    // undici sends origin-form targets only; the asterisk form is answered here (after the stages).
    if (ctx.forwardTarget === '*') this.answer(REPLIES.optionsAsterisk);
    else if (this.upgradeHead !== null || this.extendedConnect) openTunnel(this);
    else this.plan.upstream.forward(this);
  }

  /**
   * Ties the exchange to its response: when the response closes (sent, or the client went away
   * or reset its stream), the stream is closed, an unfinished upstream request is stopped and the
   * outcome is published.
   */
  watch(): void {
    (this.res as ServerResponse & Tagged)[kStream] = this;
    this.res.once('close', onResponseClose);
  }

  /** Answers with a local reply (and the response headers the stages chose). */
  answer(r: LocalReply): void {
    this.reply = r;
    this.applyResponseHeaders();
    const challenge = r.bearerChallenge ? this.ctx.bearerChallenge() + r.challengeParams : '';
    sendLocalReply(this.res, r, challenge, this.attrs.requestId);
  }

  /** Any error inside a stage denies the request: a PEP that cannot decide must not let it through. */
  failClosed(err: unknown): void {
    this.plan.upstream.logger.error({ err }, 'request stage failed; denying the request');
    this.ctx.detail = 'the stage failed (see the log); denied';
    this.answer(REPLIES.internal);
  }

  private applyResponseHeaders(): void {
    const h = this.ctx.responseHeaders;
    if (h === null || this.res.headersSent) return;
    this.ctx.responseHeaders = null;
    for (let i = 0; i + 1 < h.length; i += 2) this.res.appendHeader(h[i] as string, h[i + 1] as string);
  }
}

const kStream = Symbol('portcullis.stream');

interface Tagged {
  [kStream]?: RequestStream;
}

function onResponseClose(this: ServerResponse & Tagged): void {
  const rs = this[kStream] as RequestStream;
  rs.closed = true;
  rs.connection.exchanges--;
  abortUpstream(this);
  rs.plan.observer.finished(rs);
}

/** A stage is waiting on I/O (a key set, an external authorizer): go on when it settles. */
function suspend(stream: RequestStream, pending: Promise<StageResult>, next: number): void {
  pending.then(
    (r) => {
      if (r === null) return stream.run(next);
      stream.ctx.answeredBy = (stream.plan.stages[next - 1] as Stage).name;
      stream.answer(r);
    },
    (err: unknown) => {
      stream.ctx.answeredBy = (stream.plan.stages[next - 1] as Stage).name;
      stream.failClosed(err);
    },
  );
}
