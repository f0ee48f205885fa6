import http from 'node:http';
import http2 from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type tls from 'node:tls';
import type { Logger } from 'pino';
import type { EffectiveMode } from '../authn/peer-authn.js';
import type { ListenerConfig } from '../config/load.js';
import type { TrustBundleSet } from '../identity/bundle.js';
import type { PeerIdentity } from '../identity/verify-peer.js';
import { attachConnection, connectionOf } from '../transport/connection.js';
import { type ConnectionSink, InboundTransport, type ListenerStats } from '../transport/inbound.js';
import { LogLimiter } from '../transport/log-limit.js';
import { xfccElement } from './headers.js';
import { http1Options } from './http1.js';
import { type LocalReply, REPLIES } from './local-reply.js';
import type { ListenerPlan } from './plan.js';
import { RequestStream } from './stream.js';

const kListener = Symbol('portcullis.listener');

interface Tagged {
  [kListener]?: InboundListener;
}

/**
 * A request the parser refused is answered with fixed bytes (there is no ServerResponse for it),
 * made once from its entry of the reply table.
 */
function rawReply(r: LocalReply): Buffer {
  return Buffer.from(
    `HTTP/1.1 ${r.status} ${http.STATUS_CODES[r.status]}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`,
    'latin1',
  );
}

const PARSER_REPLIES: ReadonlyMap<LocalReply, Buffer> = new Map(
  [REPLIES.parserBadRequest, REPLIES.requestTimeout, REPLIES.headerTooLarge, REPLIES.methodNotAllowed].map(
    (r) => [r, rawReply(r)] as const,
  ),
);

/**
 * One inbound listener: its transport (accept, limits, sniff, TLS, ALPN, peer verification; see
 * transport/inbound.ts) hands each accepted connection here, where the HTTP server is chosen by
 * ALPN — HTTP/2 for `h2` (listeners with http2 on), HTTP/1.1 otherwise — and every request or
 * stream becomes a RequestStream over the current plan. The mode and bundles are read per
 * connection from the current plan, so a policy reload applies to the next connection without
 * restarting the listener.
 */
export class InboundListener implements ConnectionSink {
  readonly config: ListenerConfig;
  plan: ListenerPlan;
  closing = false;
  readonly log: Logger;
  private readonly transport: InboundTransport;
  /** HTTP/1.1: a server that never listens; the transport injects connections into it. */
  private readonly http: http.Server;
  /** HTTP/2 sessions over verified TLS connections that chose h2 by ALPN (listeners with http2: true). */
  private readonly h2: http2.Http2Server | null;
  private readonly h2Sessions = new Set<http2.ServerHttp2Session>();
  /** Client-caused log lines (refusals) per reason, at most one per 10 s each. */
  private readonly logLimit = new LogLimiter();

  constructor(config: ListenerConfig, plan: ListenerPlan, log: Logger) {
    this.config = config;
    this.plan = plan;
    this.log = log;
    const limits = config.limits;
    this.transport = new InboundTransport(
      config.name,
      config.address,
      limits,
      plan.snapshot.tlsOptionsFor(config.name),
      config.http2 ? ['h2', 'http/1.1'] : ['http/1.1'],
      config.tls?.clientCertificates ?? 'require',
      this,
      log,
    );
    this.http = http.createServer(http1Options(limits), onRequest);
    this.http.on('clientError', onClientError);
    // Without a listener Node answers `Expect: 100-continue` at once, inviting the body of a
    // request that may be refused; the proxy sends 100 Continue only when it forwards.
    this.http.on('checkContinue', onCheckContinue);
    // CONNECT asks for a tunnel, which a reverse proxy does not open; without a listener Node
    // would drop the connection without an answer.
    this.http.on('connect', onConnect);
    // Upgrade requests (WebSocket) go through the same stages as any other; see tunnel.ts.
    this.http.on('upgrade', onUpgrade);
    (this.http as http.Server & Tagged)[kListener] = this;
    // An http.Server starts tracking its connections (the header and request deadlines above, idle
    // closing) when it starts listening. This one never listens — the transport owns the port and
    // injects connections ('connection', documented for that) — so it is told it is listening.
    // The slow-head and drain tests fail if a Node release stops honouring this.
    this.http.emit('listening');
    if (config.http2) {
      // A plain (not secure) HTTP/2 server: TLS and the SPIFFE checks are done by then, and the
      // verified TLS socket is handed to it. Each stream comes out as a compat request and runs
      // the same stages as an HTTP/1.1 request.
      this.h2 = http2.createServer(
        {
          maxSessionMemory: 16,
          settings: {
            maxConcurrentStreams: 128,
            maxHeaderListSize: limits.maxHeaderSize,
            // RFC 8441: WebSocket over HTTP/2 (extended CONNECT), checked like any request (onH2Connect).
            enableConnectProtocol: true,
          },
          maxHeaderListPairs: 256,
        },
        onH2Request,
      );
      (this.h2 as http2.Http2Server & Tagged)[kListener] = this;
      this.h2.on('session', onH2Session);
      this.h2.on('connect', onH2Connect);
      this.h2.on('timeout', onH2Timeout);
      this.h2.setTimeout(limits.keepAliveTimeout);
    } else {
      this.h2 = null;
    }
  }

  get name(): string {
    return this.config.name;
  }

  get stats(): ListenerStats {
    return this.transport.stats;
  }

  listen(): Promise<AddressInfo> {
    return this.transport.listen();
  }

  address(): AddressInfo {
    return this.transport.addressInfo();
  }

  /** Swaps in a new plan; new connections use its certificates and mode at once, open ones carry on. */
  setPlan(plan: ListenerPlan): void {
    const prev = this.plan;
    this.plan = plan;
    const next = plan.snapshot.tlsOptionsFor(this.config.name);
    if (prev.snapshot.tlsOptionsFor(this.config.name) !== next) this.transport.setTlsOptions(next);
  }

  // --- ConnectionSink: what the transport asks of this layer ---

  currentMode(): EffectiveMode {
    return this.plan.mode;
  }

  currentBundles(): TrustBundleSet {
    return this.plan.snapshot.bundles;
  }

  accepted(socket: Socket, peer: PeerIdentity | null): void {
    const xfcc = peer === null ? '' : xfccElement(this.plan.snapshot.xfccBy, peer.certHash, peer.spiffeId.id);
    attachConnection(socket, peer, xfcc);
    if (this.h2 !== null && (socket as tls.TLSSocket).alpnProtocol === 'h2')
      this.h2.emit('connection', socket);
    else this.http.emit('connection', socket);
  }

  peerRefused(reason: string, detail: string, address: string, port: number): void {
    this.plan.observer.peerRefused(this.name, reason, detail, address, port);
  }

  /**
   * Stops accepting, lets in-flight requests finish (closing each keep-alive connection as soon as
   * it is idle), and after `drainMs` cuts whatever is left.
   */
  async close(drainMs: number): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    // Connections still in the handshake or the first-byte sniff have no request yet: cut them now.
    this.transport.stopAccepting();
    // HTTP/2 sessions get a GOAWAY: no new streams, the open ones finish.
    for (const s of this.h2Sessions) s.close();
    this.http.closeIdleConnections();
    const sweep = setInterval(() => this.http.closeIdleConnections(), 50);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), drainMs);
    });
    const drained = this.transport.drained();
    const expired = await Promise.race([drained.then(() => false), timedOut]);
    if (expired) {
      this.log.warn(
        { listener: this.name, open: this.transport.open },
        'drain time is up; closing the connections left',
      );
      this.http.closeAllConnections();
      this.transport.destroyAll();
    }
    clearTimeout(timer);
    clearInterval(sweep);
    await drained;
    // Stops the HTTP server's deadline checks (it never listened, so Node reports it was not running).
    this.http.close(ignore);
  }

  /**
   * A request Node's parser refused (malformed, head too large, head too slow): answered here with
   * a fixed reply and recorded as a deny. Never logs the offending bytes (`err.rawPacket`).
   */
  clientError(err: Error & { code?: string }, socket: Duplex): void {
    this.refuseRequest(err.code ?? '', socket);
  }

  /** Answers a request that never reaches the stages with a fixed reply, and records it as a deny. */
  refuseRequest(code: string, socket: Duplex): void {
    const s = socket as Socket;
    if (code === 'ECONNRESET' || code === 'EPIPE' || !s.writable) {
      // The client went away: nothing to answer and nothing that was a request.
      s.destroy();
      return;
    }
    const reply =
      code === 'HPE_HEADER_OVERFLOW'
        ? REPLIES.headerTooLarge
        : code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? REPLIES.requestTimeout
          : code === 'CONNECT'
            ? REPLIES.methodNotAllowed
            : REPLIES.parserBadRequest;
    const conn = connectionOf(s);
    this.plan.observer.clientError(
      this.name,
      reply.status,
      reply.reason,
      conn?.peerPrincipal ?? '',
      s.remoteAddress ?? '',
      s.remotePort ?? 0,
      (s as Partial<tls.TLSSocket>).encrypted === true,
    );
    const held = this.logLimit.allow(`request:${reply.reason}`);
    if (held >= 0) {
      this.log.info(
        { listener: this.name, code, reason: reply.reason, remote: s.remoteAddress, held },
        'request refused before the stages (held: like lines not logged in the last 10 s)',
      );
    }
    // A response already being written on this connection (a pipelined request behind it went
    // bad) cannot be followed by a clean reply: just close.
    const last = conn?.lastResponse;
    if (last?.headersSent === true && !last.writableFinished) {
      s.destroy();
      return;
    }
    s.write(PARSER_REPLIES.get(reply) as Buffer);
    s.destroySoon();
  }

  trackSession(session: http2.ServerHttp2Session): void {
    this.h2Sessions.add(session);
    (session as http2.ServerHttp2Session & Tagged)[kListener] = this;
    session.once('close', onH2SessionClose);
    if (this.closing) session.close();
  }

  untrackSession(session: http2.ServerHttp2Session): void {
    this.h2Sessions.delete(session);
  }
}

function ignore(): void {}

// Module-level handlers: `this` is the emitter, and the listener hangs off it under a symbol,
// so that no closure is allocated per connection or per request.

/**
 * One HTTP/2 stream, through the compat API. Its request and response offer what the stages use of
 * an HTTP/1.1 pair (headers, rawHeaders, url, method, socket; setHeader, writeHead, write, end,
 * headersSent, the 'close' event): the differences (pseudo-headers, no Host, no connection-specific
 * headers) are handled where they matter (request-line stage, forwarding headers, local replies).
 */
function onH2Request(
  this: http2.Http2Server & Tagged,
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
): void {
  startRequest(
    this[kListener] as InboundListener,
    req as unknown as http.IncomingMessage,
    res as unknown as http.ServerResponse,
    false,
  );
}

/**
 * An HTTP/2 CONNECT. With `:protocol: websocket` (RFC 8441) it is a WebSocket: authorized as the
 * GET it stands for, then tunnelled (tunnel.ts). Any other protocol is refused like an HTTP/1.1
 * upgrade other than WebSocket, and a plain CONNECT (a TCP tunnel) like an HTTP/1.1 CONNECT.
 */
function onH2Connect(
  this: http2.Http2Server & Tagged,
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
): void {
  const listener = this[kListener] as InboundListener;
  listener.stats.requests++;
  const protocol = req.headers[':protocol'];
  const rs = new RequestStream(
    listener.plan,
    req as unknown as http.IncomingMessage,
    res as unknown as http.ServerResponse,
    protocol === 'websocket',
  );
  rs.watch();
  if (protocol === undefined) rs.answer(REPLIES.methodNotAllowed);
  else if (protocol !== 'websocket') rs.answer(REPLIES.upgradeRefused);
  else rs.run(0);
}

/**
 * A session idle for keepAliveTimeout. Node would destroy it, open streams and all; a session that
 * carries a WebSocket or a long gRPC stream is not idle in that sense (each tunnel has its own idle
 * timeout), so only a session with nothing open is closed (GOAWAY).
 */
function onH2Timeout(session: http2.ServerHttp2Session): void {
  const conn = connectionOf(session.socket);
  if (conn !== null && conn.exchanges > 0) return;
  session.close();
}

function onH2Session(this: http2.Http2Server & Tagged, session: http2.ServerHttp2Session): void {
  const listener = this[kListener] as InboundListener;
  listener.trackSession(session);
}

function onH2SessionClose(this: http2.ServerHttp2Session & Tagged): void {
  this[kListener]?.untrackSession(this);
}

function onClientError(this: http.Server & Tagged, err: Error, socket: Duplex): void {
  (this[kListener] as InboundListener).clientError(err, socket);
}

function onConnect(this: http.Server & Tagged, _req: http.IncomingMessage, socket: Duplex): void {
  (this[kListener] as InboundListener).refuseRequest('CONNECT', socket);
}

function onRequest(this: http.Server & Tagged, req: http.IncomingMessage, res: http.ServerResponse): void {
  startRequest(this[kListener] as InboundListener, req, res, false);
}

function onCheckContinue(
  this: http.Server & Tagged,
  req: http.IncomingMessage,
  res: http.ServerResponse,
): void {
  startRequest(this[kListener] as InboundListener, req, res, true);
}

/**
 * An `Upgrade` request: Node hands the socket over; a ServerResponse on it lets the stages answer
 * (401/403, …) as for any request, and the connection closes after such an answer.
 */
function onUpgrade(
  this: http.Server & Tagged,
  req: http.IncomingMessage,
  socket: Duplex,
  head: Buffer,
): void {
  const listener = this[kListener] as InboundListener;
  listener.stats.requests++;
  const res = new http.ServerResponse(req);
  res.shouldKeepAlive = false;
  res.assignSocket(socket as Socket);
  res.once('finish', onUpgradeReplyFinish);
  const rs = new RequestStream(listener.plan, req, res);
  rs.upgradeHead = head;
  rs.watch();
  if (!isWebSocketUpgrade(req)) {
    rs.answer(REPLIES.upgradeRefused);
    return;
  }
  rs.run(0);
}

/** RFC 6455 §4.2.1: a GET with Upgrade: websocket (any case, possibly among other tokens). */
function isWebSocketUpgrade(req: http.IncomingMessage): boolean {
  const u = req.headers.upgrade;
  return req.method === 'GET' && typeof u === 'string' && /(^|,)\s*websocket\s*(,|$)/i.test(u);
}

/** A local reply (or a relayed refusal) to an upgrade request is the end of that connection. */
function onUpgradeReplyFinish(this: http.ServerResponse): void {
  this.socket?.end();
}

function startRequest(
  listener: InboundListener,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  expectContinue: boolean,
): void {
  listener.stats.requests++;
  if (listener.closing) res.shouldKeepAlive = false;
  const rs = new RequestStream(listener.plan, req, res);
  rs.expectContinue = expectContinue;
  rs.watch();
  rs.run(0);
}
