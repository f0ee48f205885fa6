import net, { type AddressInfo, type Socket } from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { EffectiveMode } from '../authn/peer-authn.js';
import type { Limits } from '../config/load.js';
import type { TrustBundleSet } from '../identity/bundle.js';
import { PeerError, type PeerIdentity } from '../identity/verify-peer.js';
import { LogLimiter } from './log-limit.js';
import { verifyConnectionPeer } from './peer.js';
import { PendingConnections } from './pending.js';

/** First byte of a TLS record carrying a handshake (RFC 8446 §5.1, ContentType handshake = 22). */
const TLS_HANDSHAKE = 0x16;

const kTransport = Symbol('portcullis.transport');
/** Set on a raw socket once it has left the pending budget for HTTP. */
const kHandedOff = Symbol('portcullis.handedOff');
/** Set on a raw socket closed by the pending deadline, so the TLS error that follows is not counted again. */
const kTimedOut = Symbol('portcullis.timedOut');

interface Tagged {
  [kTransport]?: InboundTransport;
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

function count(map: Map<string, number>, key: string): void {
  map.set(key, (map.get(key) ?? 0) + 1);
}

/** What the transport needs from the layer above it: the current policy, and where accepted connections go. */
export interface ConnectionSink {
  /** The mTLS mode for a new connection (read per connection, so a reload applies at once). */
  currentMode(): EffectiveMode;
  /** The trust bundles peers are verified against now. */
  currentBundles(): TrustBundleSet;
  /**
   * A connection that proved what its mode asks (a verified SPIFFE peer, or plaintext where the
   * mode allows it), within the connection budget. `socket` is the TLS socket for mTLS.
   */
  accepted(socket: Socket, peer: PeerIdentity | null): void;
  /** A connection refused before it carried a request (audit: `peer-untrusted`). */
  peerRefused(reason: string, detail: string, address: string, port: number): void;
}

/**
 * The transport of one inbound listener: TCP accept, the budget for unauthenticated connections,
 * the first-byte sniff (PERMISSIVE), TLS with the client certificate required, ALPN, and the
 * SPIFFE checks on the peer, once per connection. It knows nothing of HTTP or policy: a
 * connection that passes goes to the sink, which picks the HTTP server by ALPN.
 * - STRICT: straight to TLS, client certificate required;
 * - PERMISSIVE: a TLS handshake record as first byte means mTLS, anything else plaintext;
 * - DISABLE: plaintext.
 */
export class InboundTransport {
  readonly name: string;
  readonly stats = new ListenerStats();
  private readonly limits: Limits;
  private readonly address: { host: string; port: number };
  private readonly sink: ConnectionSink;
  private readonly log: Logger;
  private readonly server: net.Server;
  private readonly tls: tls.Server;
  private readonly sockets = new Set<Socket>();
  private readonly pending: PendingConnections;
  /** Reused out-parameter of PendingConnections.admit (no object per connection). */
  private readonly evicted: { socket: Socket | null } = { socket: null };
  private lastRefusalWarning = 0;
  /** Client-caused log lines (refusals) per reason, at most one per 10 s each. */
  private readonly logLimit = new LogLimiter();
  private drainWaiters: (() => void)[] = [];
  /** require: an X.509-SVID or no connection; optional: an SVID if one is presented; none: never asked. */
  private readonly clientCertificates: 'none' | 'optional' | 'require';
  closing = false;

  constructor(
    name: string,
    address: { host: string; port: number },
    limits: Limits,
    tlsOptions: tls.SecureContextOptions,
    alpn: readonly string[],
    clientCertificates: 'none' | 'optional' | 'require',
    sink: ConnectionSink,
    log: Logger,
  ) {
    this.name = name;
    this.address = address;
    this.limits = limits;
    this.sink = sink;
    this.log = log;
    this.clientCertificates = clientCertificates;
    this.server = net.createServer({ noDelay: true, allowHalfOpen: false }, onConnection);
    // A hard ceiling the kernel-facing side applies before anything else; the pending and
    // verified budgets below are what normally decide.
    this.server.maxConnections = limits.maxConnections + limits.maxPendingHandshakes;
    (this.server as net.Server & Tagged)[kTransport] = this;
    this.pending = new PendingConnections(
      limits.maxPendingHandshakes,
      limits.maxPendingPerSource,
      limits.handshakeTimeout,
      onPendingDeadline,
    );
    // A TLS server that never listens: raw sockets are handed to it ('connection', which a
    // net.Server documents for injection) once the transport has decided they are TLS.
    this.tls = tls.createServer({
      ...tlsOptions,
      requestCert: clientCertificates !== 'none',
      // optional: OpenSSL must not refuse a client without a certificate; one that presents a
      // certificate is still held to the chain and the SPIFFE checks (verified()).
      rejectUnauthorized: clientCertificates === 'require',
      ALPNProtocols: [...alpn],
      // The pending deadline (from accept, covering sniff, handshake and SPIFFE checks) is what
      // closes slow handshakes; Node's own timer only reports (tlsClientError) and never closes,
      // and 0 would mean its 120 s default, so it is set just past ours as a backstop.
      handshakeTimeout: limits.handshakeTimeout + 1_000,
    });
    (this.tls as tls.Server & Tagged)[kTransport] = this;
    this.tls.on('secureConnection', onSecureConnection);
    this.tls.on('tlsClientError', onTlsClientError);
  }

  listen(): Promise<AddressInfo> {
    const { host, port } = this.address;
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host, port }, () => {
        this.server.off('error', reject);
        resolve(this.server.address() as AddressInfo);
      });
    });
  }

  addressInfo(): AddressInfo {
    return this.server.address() as AddressInfo;
  }

  /** New certificates and bundles for connections from now on (open ones carry on). */
  setTlsOptions(options: tls.SecureContextOptions): void {
    // setSecureContext() resets every option it is not given: pass the full set each time.
    this.tls.setSecureContext({ ...options });
  }

  /** Connections handed to HTTP and not yet closed. */
  get open(): number {
    return this.stats.active;
  }

  /** Stops accepting and cuts the connections that have not been handed to HTTP yet. */
  stopAccepting(): void {
    if (this.closing) return;
    this.closing = true;
    this.server.close();
    for (const s of this.sockets) if ((s as Socket & Tagged)[kHandedOff] !== true) s.destroy();
  }

  /** Resolves when every connection has closed. */
  drained(): Promise<void> {
    if (this.sockets.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Cuts every connection still open. */
  destroyAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  // --- connection routing (called with `this` bound by the module-level handlers below) ---

  handleConnection(socket: Socket): void {
    this.stats.connections++;
    this.sockets.add(socket);
    (socket as Socket & Tagged)[kTransport] = this;
    socket.on('close', onRawClose);
    if (this.closing) {
      socket.destroy();
      return;
    }
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
    const mode = this.sink.currentMode();
    if (mode === 'STRICT') {
      this.startTls(socket);
    } else if (mode === 'DISABLE') {
      this.handOff(socket, socket, null);
    } else {
      // PERMISSIVE: wait for the first byte without consuming it, then route. The pending
      // deadline covers the wait.
      socket.on('error', onSniffError);
      socket.once('readable', onSniffReadable);
    }
  }

  private startTls(socket: Socket): void {
    this.tls.emit('connection', socket);
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
    this.sink.peerRefused(
      'handshake-timeout',
      `no verified handshake within ${this.limits.handshakeTimeout} ms`,
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
    if (chunk[0] === TLS_HANDSHAKE) this.startTls(socket);
    else this.handOff(socket, socket, null);
  }

  verified(socket: tls.TLSSocket): void {
    if (this.clientCertificates !== 'require') {
      if (socket.getPeerX509Certificate() === undefined) {
        // No certificate (browsers): anonymous TLS. Policies see no peer principal.
        this.handOff(socket, rawSocketOf(socket), null);
        return;
      }
      if (!socket.authorized) {
        // A certificate was presented and does not chain to a trusted bundle: refused, never
        // downgraded to an anonymous client.
        this.refusePeer(
          socket,
          'untrusted-chain',
          `the client certificate does not verify: ${String(socket.authorizationError)}`,
        );
        return;
      }
    }
    let peer: PeerIdentity;
    try {
      peer = verifyConnectionPeer(socket, this.sink.currentBundles());
    } catch (err) {
      const reason = err instanceof PeerError ? err.reason : 'error';
      count(this.stats.peersRejected, reason);
      this.sink.peerRefused(
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
    this.handOff(socket, rawSocketOf(socket), peer);
  }

  private refusePeer(socket: tls.TLSSocket, reason: string, detail: string): void {
    count(this.stats.peersRejected, reason);
    this.sink.peerRefused(reason, detail, socket.remoteAddress ?? '', socket.remotePort ?? 0);
    const held = this.logLimit.allow(`peer:${reason}`);
    if (held >= 0) {
      this.log.warn(
        { listener: this.name, reason, remote: socket.remoteAddress, detail, held },
        'peer refused (held: like lines not logged in the last 10 s)',
      );
    }
    socket.destroy();
  }

  /** The connection has proved what it must (or the mode asks nothing): it leaves the pending budget for HTTP. */
  private handOff(socket: Socket, raw: Socket | null, peer: PeerIdentity | null): void {
    if (raw !== null && this.pending.has(raw)) {
      this.pending.settle(raw);
      this.stats.pending--;
    }
    if (this.stats.active >= this.limits.maxConnections) {
      this.refuse(socket, 'connection-limit');
      return;
    }
    this.stats.active++;
    if (raw !== null) (raw as Socket & Tagged)[kHandedOff] = true;
    this.sink.accepted(socket, peer);
  }

  tlsFailed(err: Error & { code?: string }, socket: tls.TLSSocket | undefined): void {
    const raw = socket === undefined ? null : rawSocketOf(socket);
    // Node reports and leaves the socket open: close it (and with it the raw socket).
    socket?.destroy();
    if ((raw as (Socket & Tagged) | null)?.[kTimedOut] === true) return; // the deadline closed it, and counted it
    const code = err.code ?? 'unknown';
    count(this.stats.tlsFailures, code);
    this.sink.peerRefused('tls-handshake', code, socket?.remoteAddress ?? '', socket?.remotePort ?? 0);
    const held = this.logLimit.allow(`tls:${code}`);
    if (held >= 0) {
      this.log.info(
        { listener: this.name, code, remote: socket?.remoteAddress, message: err.message, held },
        'TLS handshake refused (held: like lines not logged in the last 10 s)',
      );
    }
  }

  untrack(socket: Socket): void {
    this.sockets.delete(socket);
    if (this.pending.has(socket)) {
      this.pending.settle(socket);
      this.stats.pending--;
    } else if ((socket as Socket & Tagged)[kHandedOff] === true) {
      this.stats.active--;
    }
    if (this.sockets.size === 0 && this.drainWaiters.length > 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    }
  }
}

/**
 * The raw TCP socket under a TLS socket that tls.Server made from it. Node offers no public
 * accessor; `_parent` is where TLSSocket keeps it (checked: a TLS socket without it is treated as
 * its own raw socket, which only costs the pending budget an early settle at close).
 */
function rawSocketOf(socket: tls.TLSSocket): Socket | null {
  return (socket as tls.TLSSocket & { _parent?: Socket })._parent ?? null;
}

// Module-level handlers: `this` is the emitter, and the transport hangs off it under a symbol,
// so that no closure is allocated per connection.

function onConnection(this: net.Server & Tagged, socket: Socket): void {
  (this[kTransport] as InboundTransport).handleConnection(socket);
}

function onSniffReadable(this: Socket & Tagged): void {
  (this[kTransport] as InboundTransport).routeSniffed(this);
}

function onPendingDeadline(socket: Socket & Tagged): void {
  socket[kTransport]?.pendingExpired(socket);
}

function onSniffError(this: Socket): void {
  this.destroy();
}

function onRawClose(this: Socket & Tagged): void {
  this[kTransport]?.untrack(this);
}

function onSecureConnection(this: tls.Server & Tagged, socket: tls.TLSSocket): void {
  (this[kTransport] as InboundTransport).verified(socket);
}

function onTlsClientError(this: tls.Server & Tagged, err: Error, socket: tls.TLSSocket): void {
  (this[kTransport] as InboundTransport).tlsFailed(err, socket);
}
