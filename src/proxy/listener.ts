import { X509Certificate } from 'node:crypto';
import http from 'node:http';
import http2 from 'node:http2';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { ListenerConfig } from '../config/load.js';
import { PeerError, type PeerIdentity, verifyPeer } from '../identity/verify-peer.js';
import { attachConnection, connectionOf } from '../transport/connection.js';
import { PendingConnections } from '../transport/pending.js';
import { xfccElement } from './headers.js';
import { type LocalReply, REPLIES } from './local-reply.js';
import { LogLimiter } from './log-limit.js';
import type { ListenerPlan } from './plan.js';
import { RequestStream } from './stream.js';
import { abortUpstream } from './upstream.js';

const kListener = Symbol('portcullis.listener');
const kStream = Symbol('portcullis.stream');
const kHandedOff = Symbol('portcullis.handedOff');
/** Set on a raw socket closed by the pending deadline, so the TLS error that follows is not counted again. */
const kTimedOut = Symbol('portcullis.timedOut');
/** First byte of a TLS record carrying a handshake (RFC 8446 §5.1, ContentType handshake = 22). */
const TLS_HANDSHAKE = 0x16;

interface Tagged {
  [kListener]?: InboundListener;
  [kHandedOff]?: boolean;
  [kTimedOut]?: boolean;
}

/** Counters a listener keeps; the metrics endpoint reads them. */
export class ListenerStats {
  connections = 0;
  requests = 0;
  /** Peers that passed the SPIFFE checks: one per connection, however many requests it carries. */
  peersVerified = 0;
  /** Handshakes that OpenSSL refused, by error code. */
  readonly tlsFailures = new Map<string, number>();
  /** Verified-by-OpenSSL peers that the SPIFFE checks refused, by reason. */
  readonly peersRejected = new Map<string, number>();
  /**
   * Connections closed by a limit before they carried a request: `handshake-timeout`,
   * `pending-per-source`, `pending-evicted` (the oldest pending one, when the budget was full),
   * `connection-limit` (verified, but maxConnections were open).
   */
  readonly refused = new Map<string, number>();
  /** Connections in the sniff, the TLS handshake or the SPIFFE checks now. */
  pending = 0;
  /** Connections handed to HTTP (verified peers, or plaintext where the mode allows it) now. */
  active = 0;
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

function count(map: Map<string, number>, key: string): void {
  map.set(key, (map.get(key) ?? 0) + 1);
}

/**
 * One inbound listener. A single TCP port serves every mTLS mode:
 * - STRICT: the connection goes straight to TLS, client certificate required;
 * - PERMISSIVE: the first byte decides — a TLS handshake record means mTLS, anything else plaintext;
 * - DISABLE: plaintext HTTP.
 * The mode is read per connection from the current plan, so a policy reload applies to the next
 * connection without restarting the listener.
 *
 * The HTTP server is the one that listens (so Node's own connection tracking, timeouts and
 * close() keep working); its 'connection' handler is replaced by ours, which routes each socket and
 * hands it to Node's HTTP handler only after the peer has been verified.
 */
export class InboundListener {
  readonly config: ListenerConfig;
  readonly stats = new ListenerStats();
  plan: ListenerPlan;
  closing = false;
  readonly log: Logger;
  private readonly http: http.Server;
  /** HTTP/2 sessions over verified TLS connections that chose h2 by ALPN (listeners with http2: true). */
  private readonly h2: http2.Http2Server | null;
  private readonly h2Sessions = new Set<http2.ServerHttp2Session>();
  private readonly tls: tls.Server;
  private readonly httpConnection: (socket: Duplex) => void;
  private readonly sockets = new Set<Socket>();
  private readonly pending: PendingConnections;
  /** Reused out-parameter of PendingConnections.admit (no object per connection). */
  private readonly evicted: { socket: Socket | null } = { socket: null };
  private lastRefusalWarning = 0;
  /** Client-caused log lines (refusals) per reason, at most one per 10 s each. */
  private readonly logLimit = new LogLimiter();

  constructor(config: ListenerConfig, plan: ListenerPlan, log: Logger) {
    this.config = config;
    this.plan = plan;
    this.log = log;
    const limits = config.limits;
    this.http = http.createServer(
      {
        maxHeaderSize: limits.maxHeaderSize,
        headersTimeout: limits.headersTimeout,
        requestTimeout: limits.requestTimeout,
        keepAliveTimeout: limits.keepAliveTimeout,
        requireHostHeader: true,
        noDelay: true,
        // Node checks header and request deadlines on this interval (30 s by default), which would
        // let a slow-loris client hold a connection for up to 30 s past headersTimeout.
        connectionsCheckingInterval: Math.max(100, Math.min(1_000, Math.floor(limits.headersTimeout / 4))),
      },
      onRequest,
    );
    // A hard ceiling Node applies before any JavaScript object exists for the connection; the
    // pending and verified budgets below are what normally decide.
    this.http.maxConnections = limits.maxConnections + limits.maxPendingHandshakes;
    this.pending = new PendingConnections(
      limits.maxPendingHandshakes,
      limits.maxPendingPerSource,
      limits.handshakeTimeout,
      onPendingDeadline,
    );
    const handlers = this.http.listeners('connection');
    if (handlers.length !== 1)
      throw new Error('unexpected http.Server internals: expected one connection listener');
    this.httpConnection = handlers[0] as (socket: Duplex) => void;
    this.http.removeAllListeners('connection');
    this.http.on('connection', onConnection);
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

    this.tls = tls.createServer({
      ...plan.snapshot.tlsOptions,
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: config.http2 ? ['h2', 'http/1.1'] : ['http/1.1'],
      // The pending deadline (from accept, covering sniff, handshake and SPIFFE checks) is what
      // closes slow handshakes; Node's own timer only reports (tlsClientError) and never closes,
      // and 0 would mean its 120 s default, so it is set just past ours as a backstop.
      handshakeTimeout: limits.handshakeTimeout + 1_000,
    });
    (this.tls as tls.Server & Tagged)[kListener] = this;
    if (config.http2) {
      // A plain (not secure) HTTP/2 server: TLS and the SPIFFE checks are done by then, and the
      // verified TLS socket is handed to it. Each stream comes out as a compat request and runs
      // the same stages as an HTTP/1.1 request.
      this.h2 = http2.createServer(
        {
          maxSessionMemory: 16,
          settings: { maxConcurrentStreams: 128, maxHeaderListSize: limits.maxHeaderSize },
          maxHeaderListPairs: 256,
        },
        onH2Request,
      );
      (this.h2 as http2.Http2Server & Tagged)[kListener] = this;
      this.h2.on('session', onH2Session);
      this.h2.setTimeout(limits.keepAliveTimeout);
    } else {
      this.h2 = null;
    }
    this.tls.on('secureConnection', onSecureConnection);
    this.tls.on('tlsClientError', onTlsClientError);
  }

  get name(): string {
    return this.config.name;
  }

  listen(): Promise<AddressInfo> {
    const { host, port } = this.config.address;
    return new Promise((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen({ host, port }, () => {
        this.http.off('error', reject);
        resolve(this.http.address() as AddressInfo);
      });
    });
  }

  address(): AddressInfo {
    return this.http.address() as AddressInfo;
  }

  /** Swaps in a new plan; new connections use its certificates and mode at once, open ones carry on. */
  setPlan(plan: ListenerPlan): void {
    const prev = this.plan;
    this.plan = plan;
    if (prev.snapshot.tlsOptions !== plan.snapshot.tlsOptions) {
      // setSecureContext() resets every option it is not given: pass the full set each time.
      this.tls.setSecureContext({ ...plan.snapshot.tlsOptions });
    }
  }

  /**
   * Stops accepting, lets in-flight requests finish (closing each keep-alive connection as soon as
   * it is idle), and after `drainMs` cuts whatever is left.
   */
  async close(drainMs: number): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    // Connections still in the handshake or the first-byte sniff have no request yet: cut them now.
    for (const s of this.sockets) if ((s as Socket & Tagged)[kHandedOff] !== true) s.destroy();
    // HTTP/2 sessions get a GOAWAY: no new streams, the open ones finish.
    for (const s of this.h2Sessions) s.close();
    const closed = new Promise<void>((resolve) => this.http.close(() => resolve()));
    const sweep = setInterval(() => this.http.closeIdleConnections(), 50);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), drainMs);
    });
    const expired = await Promise.race([closed.then(() => false), timedOut]);
    if (expired) {
      this.log.warn(
        { listener: this.name, open: this.sockets.size },
        'drain time is up; closing the connections left',
      );
      this.http.closeAllConnections();
      for (const s of this.sockets) s.destroy();
    }
    clearTimeout(timer);
    clearInterval(sweep);
    await closed;
  }

  // --- connection routing (called with `this` bound by the module-level handlers below) ---

  handleConnection(socket: Socket): void {
    this.stats.connections++;
    this.sockets.add(socket);
    (socket as Socket & Tagged)[kListener] = this;
    socket.on('close', onRawClose);
    if (this.closing) {
      socket.destroy();
      return;
    }
    // http.Server sockets are half-open by default, and a TLS socket built on one inherits it: a
    // client that hangs up mid-handshake would leave our side open. Hang up with it.
    socket.allowHalfOpen = false;
    const refusal = this.pending.admit(socket, this.evicted);
    const evicted = this.evicted.socket;
    if (evicted !== null) {
      this.evicted.socket = null;
      this.stats.pending--;
      this.refuse(evicted, 'pending-evicted');
    }
    if (refusal !== '') {
      this.refuse(socket, refusal);
      return;
    }
    this.stats.pending++;
    const mode = this.plan.mode;
    if (mode === 'STRICT') {
      this.tls.emit('connection', socket);
    } else if (mode === 'DISABLE') {
      this.handOff(socket, null, '');
    } else {
      // PERMISSIVE: wait for the first byte without consuming it, then route. The pending
      // deadline covers the wait.
      socket.on('error', onSniffError);
      socket.once('readable', onSniffReadable);
    }
  }

  /** Closes a connection a limit refused, counting it; a warning at most every 10 s says limits bite. */
  private refuse(socket: Socket, reason: string): void {
    count(this.stats.refused, reason);
    socket.destroy();
    const now = Date.now();
    if (now - this.lastRefusalWarning >= 10_000) {
      this.lastRefusalWarning = now;
      this.log.warn(
        {
          listener: this.name,
          reason,
          remote: socket.remoteAddress,
          refused: Object.fromEntries(this.stats.refused),
        },
        'connection limits are closing connections (counts in /metrics: portcullis_connections_refused_total)',
      );
    }
  }

  /** The pending deadline passed: the client did not finish sniff, handshake and checks in time. */
  pendingExpired(socket: Socket): void {
    if (!this.pending.has(socket)) return;
    this.pending.settle(socket);
    this.stats.pending--;
    (socket as Socket & Tagged)[kTimedOut] = true;
    count(this.stats.refused, 'handshake-timeout');
    const held = this.logLimit.allow('handshake-timeout');
    if (held >= 0) {
      this.log.info(
        { listener: this.name, remote: socket.remoteAddress, held },
        'connection closed: no verified handshake within handshakeTimeout (held: like lines not logged in the last 10 s)',
      );
    }
    this.plan.observer.peerRefused(
      this.name,
      'handshake-timeout',
      `no verified handshake within ${this.config.limits.handshakeTimeout} ms`,
      socket.remoteAddress ?? '',
      socket.remotePort ?? 0,
    );
    socket.destroy();
  }

  routeSniffed(socket: Socket): void {
    const chunk = socket.read() as Buffer | null;
    if (chunk === null) {
      // 'readable' also fires at end of stream; a client that closes without a byte is done.
      if (socket.readableEnded) socket.destroy();
      else socket.once('readable', onSniffReadable);
      return;
    }
    socket.unshift(chunk);
    socket.off('error', onSniffError);
    if (chunk[0] === TLS_HANDSHAKE) this.tls.emit('connection', socket);
    else this.handOff(socket, null, '');
  }

  verifyAndHandOff(socket: tls.TLSSocket): void {
    const snap = this.plan.snapshot;
    let peer: PeerIdentity;
    try {
      peer = verifyPeer(socket.getPeerX509Certificate(), presentedChain(socket), snap.bundles);
    } catch (err) {
      const reason = err instanceof PeerError ? err.reason : 'error';
      count(this.stats.peersRejected, reason);
      this.plan.observer.peerRefused(
        this.name,
        reason,
        (err as Error).message,
        socket.remoteAddress ?? '',
        socket.remotePort ?? 0,
      );
      const held = this.logLimit.allow(`peer:${reason}`);
      if (held >= 0) {
        this.log.warn(
          { listener: this.name, reason, remote: socket.remoteAddress, detail: (err as Error).message, held },
          'peer refused (held: like lines not logged in the last 10 s)',
        );
      }
      socket.destroy();
      return;
    }
    this.stats.peersVerified++;
    this.handOff(socket, peer, xfccElement(snap.xfccBy, peer.certHash, peer.spiffeId.id));
  }

  /** The connection has proved what it must (or the mode asks nothing): it leaves the pending budget for HTTP. */
  private handOff(socket: Duplex, peer: PeerIdentity | null, xfcc: string): void {
    const raw = (socket as tls.TLSSocket & { _parent?: Socket })._parent ?? (socket as Socket);
    if (this.pending.has(raw)) {
      this.pending.settle(raw);
      this.stats.pending--;
    }
    if (this.stats.active >= this.config.limits.maxConnections) {
      this.refuse(socket as Socket, 'connection-limit');
      return;
    }
    this.stats.active++;
    (raw as Socket & Tagged)[kHandedOff] = true;
    attachConnection(socket as Socket, peer, xfcc);
    if (this.h2 !== null && (socket as tls.TLSSocket).alpnProtocol === 'h2')
      this.h2.emit('connection', socket);
    else this.httpConnection.call(this.http, socket);
  }

  tlsFailed(err: Error & { code?: string }, socket: tls.TLSSocket | undefined): void {
    const raw = (socket as (tls.TLSSocket & { _parent?: Socket & Tagged }) | undefined)?._parent;
    // Node reports and leaves the socket open: close it (and with it the raw socket).
    socket?.destroy();
    if (raw?.[kTimedOut] === true) return; // the deadline closed it, and counted it
    const code = err.code ?? 'unknown';
    count(this.stats.tlsFailures, code);
    this.plan.observer.peerRefused(
      this.name,
      'tls-handshake',
      code,
      socket?.remoteAddress ?? '',
      socket?.remotePort ?? 0,
    );
    const held = this.logLimit.allow(`tls:${code}`);
    if (held >= 0) {
      this.log.info(
        { listener: this.name, code, remote: socket?.remoteAddress, message: err.message, held },
        'TLS handshake refused (held: like lines not logged in the last 10 s)',
      );
    }
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
    const s = socket as Socket & { _httpMessage?: http.ServerResponse | null };
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
    this.plan.observer.clientError(
      this.name,
      reply.status,
      reply.reason,
      connectionOf(s)?.peerPrincipal ?? '',
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
    // A response already under way (a pipelined request behind it went bad) cannot be followed by
    // a clean reply: just close.
    const pending = s._httpMessage;
    if (pending?.headersSent) {
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

  untrack(socket: Socket): void {
    this.sockets.delete(socket);
    if (this.pending.has(socket)) {
      this.pending.settle(socket);
      this.stats.pending--;
    } else if ((socket as Socket & Tagged)[kHandedOff] === true) {
      this.stats.active--;
    }
  }
}

/** The certificates the peer sent after its leaf (Node's detailed chain; a self-signed root points to itself). */
function presentedChain(socket: tls.TLSSocket): X509Certificate[] {
  const out: X509Certificate[] = [];
  const seen = new Set<tls.DetailedPeerCertificate>();
  let c = socket.getPeerCertificate(true) as tls.DetailedPeerCertificate | undefined;
  while (c !== undefined && c !== null && c.raw !== undefined && !seen.has(c)) {
    seen.add(c);
    if (seen.size > 1) out.push(new X509Certificate(c.raw));
    c = c.issuerCertificate;
    if (seen.size > 10) break;
  }
  return out;
}

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

function onH2Session(this: http2.Http2Server & Tagged, session: http2.ServerHttp2Session): void {
  const listener = this[kListener] as InboundListener;
  listener.trackSession(session);
}

function onH2SessionClose(this: http2.ServerHttp2Session & Tagged): void {
  this[kListener]?.untrackSession(this);
}

function onConnection(this: http.Server & Tagged, socket: Socket): void {
  (this[kListener] as InboundListener).handleConnection(socket);
}

function onSniffReadable(this: Socket & Tagged): void {
  (this[kListener] as InboundListener).routeSniffed(this);
}

function onPendingDeadline(socket: Socket & Tagged): void {
  socket[kListener]?.pendingExpired(socket);
}

function onSniffError(this: Socket): void {
  this.destroy();
}

function onRawClose(this: Socket & Tagged): void {
  this[kListener]?.untrack(this);
}

function onSecureConnection(this: tls.Server & Tagged, socket: tls.TLSSocket): void {
  (this[kListener] as InboundListener).verifyAndHandOff(socket);
}

function onTlsClientError(this: tls.Server & Tagged, err: Error, socket: tls.TLSSocket): void {
  (this[kListener] as InboundListener).tlsFailed(err, socket);
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
  (res as http.ServerResponse & { [kStream]?: RequestStream })[kStream] = rs;
  res.once('close', onResponseClose);
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
  (res as http.ServerResponse & { [kStream]?: RequestStream })[kStream] = rs;
  res.once('close', onResponseClose);
  rs.run(0);
}

/** The response is done (sent, or the client went away): count it and record it. */
function onResponseClose(this: http.ServerResponse & { [kStream]?: RequestStream }): void {
  const rs = this[kStream] as RequestStream;
  rs.closed = true;
  abortUpstream(this);
  rs.plan.observer.finished(rs);
}
