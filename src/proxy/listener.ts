import { X509Certificate } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { ListenerConfig } from '../config/load.js';
import { PeerError, verifyPeer } from '../identity/verify-peer.js';
import { kPeer, kXfcc, type PortcullisSocket, RequestContext } from './context.js';
import { xfccElement } from './headers.js';
import { runStages } from './pipeline.js';
import type { ListenerPlan } from './plan.js';
import { abortUpstream } from './upstream.js';

const kListener = Symbol('portcullis.listener');
const kContext = Symbol('portcullis.context');
const kHandedOff = Symbol('portcullis.handedOff');
/** First byte of a TLS record carrying a handshake (RFC 8446 §5.1, ContentType handshake = 22). */
const TLS_HANDSHAKE = 0x16;

interface Tagged {
  [kListener]?: InboundListener;
  [kHandedOff]?: boolean;
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
}

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
  private readonly tls: tls.Server;
  private readonly httpConnection: (socket: Duplex) => void;
  private readonly sockets = new Set<Socket>();

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
    this.http.maxConnections = limits.maxConnections;
    const handlers = this.http.listeners('connection');
    if (handlers.length !== 1)
      throw new Error('unexpected http.Server internals: expected one connection listener');
    this.httpConnection = handlers[0] as (socket: Duplex) => void;
    this.http.removeAllListeners('connection');
    this.http.on('connection', onConnection);
    (this.http as http.Server & Tagged)[kListener] = this;

    this.tls = tls.createServer({
      ...plan.snapshot.tlsOptions,
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: ['http/1.1'],
      handshakeTimeout: limits.handshakeTimeout,
    });
    (this.tls as tls.Server & Tagged)[kListener] = this;
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
    const mode = this.plan.mode;
    if (mode === 'STRICT') {
      this.tls.emit('connection', socket);
    } else if (mode === 'DISABLE') {
      this.handOff(socket);
    } else {
      // PERMISSIVE: wait for the first byte without consuming it, then route.
      socket.setTimeout(this.config.limits.handshakeTimeout, onSniffTimeout);
      socket.on('error', onSniffError);
      socket.once('readable', onSniffReadable);
    }
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
    socket.setTimeout(0);
    socket.off('error', onSniffError);
    if (chunk[0] === TLS_HANDSHAKE) this.tls.emit('connection', socket);
    else this.handOff(socket);
  }

  verifyAndHandOff(socket: tls.TLSSocket): void {
    const snap = this.plan.snapshot;
    const tagged = socket as tls.TLSSocket & PortcullisSocket;
    try {
      const peer = verifyPeer(socket.getPeerX509Certificate(), presentedChain(socket), snap.bundles);
      tagged[kPeer] = peer;
      tagged[kXfcc] = xfccElement(snap.xfccBy, peer.certHash, peer.spiffeId.id);
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
      this.log.warn(
        { listener: this.name, reason, remote: socket.remoteAddress, detail: (err as Error).message },
        'peer refused',
      );
      socket.destroy();
      return;
    }
    this.stats.peersVerified++;
    this.handOff(socket);
  }

  private handOff(socket: Duplex): void {
    const raw = (socket as tls.TLSSocket & { _parent?: Socket })._parent ?? socket;
    (raw as Socket & Tagged)[kHandedOff] = true;
    this.httpConnection.call(this.http, socket);
  }

  tlsFailed(err: Error & { code?: string }, socket: tls.TLSSocket | undefined): void {
    const code = err.code ?? 'unknown';
    count(this.stats.tlsFailures, code);
    this.plan.observer.peerRefused(
      this.name,
      'tls-handshake',
      code,
      socket?.remoteAddress ?? '',
      socket?.remotePort ?? 0,
    );
    this.log.debug({ listener: this.name, code, message: err.message }, 'TLS handshake failed');
  }

  untrack(socket: Socket): void {
    this.sockets.delete(socket);
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

function onConnection(this: http.Server & Tagged, socket: Socket): void {
  (this[kListener] as InboundListener).handleConnection(socket);
}

function onSniffReadable(this: Socket & Tagged): void {
  (this[kListener] as InboundListener).routeSniffed(this);
}

function onSniffTimeout(this: Socket): void {
  this.destroy();
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

function onRequest(this: http.Server & Tagged, req: http.IncomingMessage, res: http.ServerResponse): void {
  const listener = this[kListener] as InboundListener;
  listener.stats.requests++;
  if (listener.closing) res.shouldKeepAlive = false;
  const ctx = new RequestContext(listener.plan, req, res);
  (res as http.ServerResponse & { [kContext]?: RequestContext })[kContext] = ctx;
  res.once('close', onResponseClose);
  runStages(ctx, 0);
}

/** The response is done (sent, or the client went away): count it and record it. */
function onResponseClose(this: http.ServerResponse & { [kContext]?: RequestContext }): void {
  const ctx = this[kContext] as RequestContext;
  abortUpstream(this);
  const plan = ctx.plan;
  plan.observer.finished(ctx, plan.listenerName, plan.authorized);
}
