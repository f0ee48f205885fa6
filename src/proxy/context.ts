import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { RequestAttributes } from '../authz/attributes.js';
import type { CompiledPolicy, DecisionOut, DecisionReason } from '../authz/compile.js';
import { parseQuery } from '../authz/query.js';
import type { PeerIdentity } from '../identity/verify-peer.js';
import type { LocalReply } from './local-reply.js';
import type { ListenerPlan } from './plan.js';

const NO_AUDIENCES: readonly string[] = Object.freeze([]);

/** Per-connection state hangs off the socket under symbols (sockets are not our objects). */
export const kPeer = Symbol('portcullis.peer');
/** The XFCC element for the connection's verified peer, built once when the peer is verified. */
export const kXfcc = Symbol('portcullis.xfcc');

export interface PortcullisSocket {
  [kPeer]?: PeerIdentity | null;
  [kXfcc]?: string;
}

/**
 * One request's state, filled by the stages in order. Every field is assigned in the constructor
 * so all requests share one object shape; absent values are '' / null / 0, never missing.
 */
export class RequestContext implements RequestAttributes, DecisionOut {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  /** The plan (snapshot-bound stage sequence) this request started on; it finishes on it. */
  readonly plan: ListenerPlan;
  /** performance.now() at arrival (durations) and Date.now() (the event time). */
  readonly startTime: number;
  readonly startedAt: number;
  /** The request's id: the client's valid x-request-id, or one made here (and forwarded). */
  requestId: string;
  /** The local reply sent (an entry of the reply table), or null when the request was forwarded. */
  reply: LocalReply | null;
  /** The client's response closed (sent, or the client went away / reset its HTTP/2 stream). */
  closed: boolean;
  /** Set when the request is finished: whether it was refused, and the reason recorded. */
  deny: boolean;
  decisionReason: string;
  /** performance.now() when forwarding began and when the upstream response ended (0: not yet). */
  upstreamStart: number;
  upstreamEnd: number;
  readonly peer: PeerIdentity | null;
  /** XFCC value to send upstream, or '' without a verified peer. */
  readonly xfcc: string;

  method: string;
  host: string;
  path: string;
  query: string;
  readonly headers: IncomingHttpHeaders;
  readonly sourceAddress: string;
  readonly sourcePort: number;
  remoteAddress: string;
  readonly destinationAddress: string;
  readonly destinationPort: number;
  readonly sni: string;
  readonly peerPrincipal: string;
  readonly peerNamespace: string;
  readonly tls: boolean;

  requestPrincipal: string;
  claims: Readonly<Record<string, unknown>> | null;
  audiences: readonly string[];
  presenter: string;

  /** The request target sent upstream (path and query), set by the request-line stage. */
  forwardTarget: string;
  // Authorization outcome (DecisionOut), written by the authz stage.
  allowed: boolean;
  reason: DecisionReason;
  policy: CompiledPolicy | null;
  ruleIndex: number;
  auditPolicy: CompiledPolicy | null;
  shadowDenyPolicy: CompiledPolicy | null;
  shadowAllowPolicy: CompiledPolicy | null;
  shadowAllowed: boolean;
  /** Time spent deciding (ms, fractional), for Server-Timing and audit. */
  authzMs: number;

  /** Client headers (lowercase names) not to forward, decided per request; null when none. */
  dropHeaders: string[] | null;
  /** Headers the proxy adds upstream, flat [name, value, …]; null when none. */
  addHeaders: string[] | null;
  upstreamStatus: number;
  /** The client sent `Expect: 100-continue` and waits for 100 Continue before its body. */
  expectContinue: boolean;
  /**
   * For an `Upgrade` request (handed over by Node's 'upgrade' event): the bytes that came after its
   * head (the start of the tunnel). null for an ordinary request.
   */
  upgradeHead: Buffer | null;

  constructor(plan: ListenerPlan, req: IncomingMessage, res: ServerResponse) {
    const socket = req.socket as TLSSocket & PortcullisSocket;
    const peer = socket[kPeer] ?? null;
    this.req = req;
    this.res = res;
    this.plan = plan;
    this.startTime = performance.now();
    this.startedAt = Date.now();
    this.requestId = '';
    this.reply = null;
    this.closed = false;
    this.deny = false;
    this.decisionReason = '';
    this.upstreamStart = 0;
    this.upstreamEnd = 0;
    this.peer = peer;
    this.xfcc = socket[kXfcc] ?? '';
    this.method = req.method ?? '';
    this.host = '';
    this.path = '';
    this.query = '';
    this.headers = req.headers;
    this.sourceAddress = socket.remoteAddress ?? '';
    this.sourcePort = socket.remotePort ?? 0;
    this.remoteAddress = this.sourceAddress;
    this.destinationAddress = socket.localAddress ?? '';
    this.destinationPort = plan === null ? (socket.localPort ?? 0) : plan.workloadPort;
    this.tls = socket.encrypted === true;
    this.sni = this.tls && typeof socket.servername === 'string' ? socket.servername : '';
    this.peerPrincipal = peer === null ? '' : peer.spiffeId.principal;
    this.peerNamespace = peer === null ? '' : peer.spiffeId.namespace;
    this.requestPrincipal = '';
    this.claims = null;
    this.audiences = NO_AUDIENCES;
    this.presenter = '';
    this.allowed = true;
    this.reason = 'no-allow-policies';
    this.policy = null;
    this.ruleIndex = -1;
    this.auditPolicy = null;
    this.shadowDenyPolicy = null;
    this.shadowAllowPolicy = null;
    this.shadowAllowed = true;
    this.authzMs = 0;
    this.forwardTarget = '';
    this.dropHeaders = null;
    this.addHeaders = null;
    this.upstreamStatus = 0;
    this.expectContinue = false;
    this.upgradeHead = null;
  }

  dropHeader(lowerName: string): void {
    if (this.dropHeaders === null) this.dropHeaders = [lowerName];
    else this.dropHeaders.push(lowerName);
  }

  /** Adds a header upstream, replacing any the client sent under that name. */
  addHeader(lowerName: string, value: string): void {
    this.dropHeader(lowerName);
    if (this.addHeaders === null) this.addHeaders = [lowerName, value];
    else this.addHeaders.push(lowerName, value);
  }

  /** Removes every `name=` pair from the query forwarded upstream. */
  removeQueryParam(name: string): void {
    if (this.query === '') return;
    this.query = parseQuery(this.query)
      .filter((p) => p.name !== name)
      .map((p) => p.raw)
      .join('&');
    const q = this.forwardTarget.indexOf('?');
    const base = q === -1 ? this.forwardTarget : this.forwardTarget.slice(0, q);
    this.forwardTarget = this.query === '' ? base : `${base}?${this.query}`;
  }

  /** RFC 6750 challenge naming the request URL as realm (what Envoy's jwt_authn sends). */
  bearerChallenge(): string {
    return `Bearer realm="${quotedStringContent(`${this.tls ? 'https' : 'http'}://${this.host}${this.path}`)}"`;
  }
}

/** Escapes `"` and `\\` for an RFC 9110 §5.6.4 quoted-string (the Host is validated; the path may hold either). */
function quotedStringContent(s: string): string {
  if (s.indexOf('"') === -1 && s.indexOf('\\') === -1) return s;
  return s.replace(/["\\]/g, '\\$&');
}
