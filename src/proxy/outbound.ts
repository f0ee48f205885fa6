import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { isIP } from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { Limits, OutboundConfig, OutboundDestination } from '../config/load.js';
import { PortcullisError } from '../errors.js';
import { Agent, type buildConnector, Pool } from '../http-client.js';
import type { SpiffeId } from '../identity/spiffe-id.js';
import { PeerError } from '../identity/verify-peer.js';
import { attachConnection } from '../transport/connection.js';
import { LogLimiter } from '../transport/log-limit.js';
import { verifyConnectionPeer } from '../transport/peer.js';
import { http1Options } from './http1.js';
import { type LocalReply, REPLIES } from './local-reply.js';
import type { Forwarder, ListenerPlan } from './plan.js';
import type { Snapshot } from './snapshot.js';
import { type OutboundRoute, RequestStream } from './stream.js';
import { dispatchTo, forwardingHeaders, replyForUpstreamError } from './upstream.js';

/**
 * The outbound (egress) side of the sidecar: the app sends plain HTTP to a loopback listener —
 * as to an HTTP proxy (`HTTP_PROXY`, absolute-form `GET http://billing.default.svc/x`) or with the
 * destination's `Host` — and Portcullis calls the registered destination with mTLS, presenting the
 * workload's own SVID, verifying the server's chain against the bundle of the server's own trust
 * domain and the X.509-SVID rules (the inbound code), then **secure naming**: the server's SPIFFE
 * ID must be one the destination lists (or of a trust domain it lists). A server that fails any of
 * it never receives the request. Hosts no destination names are refused (REGISTRY_ONLY) or passed
 * through in plain HTTP (ALLOW_ANY), audited either way.
 */

/** The error a connection fails with when the server's identity is not the destination's. */
export class ServerIdentityError extends PortcullisError {
  readonly presented: string;

  constructor(presented: string, destination: string) {
    super('ERR_SERVER_IDENTITY_MISMATCH', `${destination} presented ${presented}, which it may not have`);
    this.name = 'ServerIdentityError';
    this.presented = presented;
  }
}

/** TLS verification failures of the server's chain (OpenSSL's codes as Node reports them). */
const UNTRUSTED_TLS = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_SIGNATURE_FAILURE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'ERR_PEER_UNTRUSTED',
]);

/** One registered destination: its pool of mTLS connections and what its server must prove. */
class Destination implements OutboundRoute {
  readonly host: string;
  readonly upstream: string;
  private readonly identities: ReadonlySet<string>;
  private readonly trustDomains: ReadonlySet<string>;
  private readonly servername: string | undefined;
  readonly pool: Pool;
  /** The SPIFFE ID its server presented most recently (verified or refused), '' before any. */
  presented: string;

  constructor(d: OutboundDestination, limits: Limits, snapshot: () => Snapshot) {
    this.host = d.host;
    this.upstream = d.upstream;
    this.identities = new Set(d.identities);
    this.trustDomains = new Set(d.trustDomains);
    const url = new URL(d.upstream);
    const name = url.hostname.replace(/^\[|\]$/g, '');
    this.servername = d.sni ?? (isIP(name) === 0 ? name : hostName(d.host));
    this.presented = '';
    this.pool = new Pool(d.upstream, {
      connections: limits.upstreamConnections,
      headersTimeout: limits.upstreamHeadersTimeout,
      bodyTimeout: limits.upstreamBodyTimeout,
      keepAliveTimeout: 4_000,
      connect: this.connector(snapshot, limits.upstreamConnectTimeout),
    });
  }

  /** Whether the server may answer for this destination (secure naming). */
  accepts(id: SpiffeId): boolean {
    return this.identities.has(id.id) || this.trustDomains.has(id.trustDomain);
  }

  /**
   * undici's connector: TLS with the workload's current SVID (a reload or rotation applies to the
   * next connection), OpenSSL's chain check against every trusted bundle, then the SPIFFE checks
   * against the bundle of the server's own trust domain and secure naming. Only then is the socket
   * handed to undici. One closure per destination, not per connection.
   */
  private connector(snapshot: () => Snapshot, timeoutMs: number): buildConnector.connector {
    return (opts, callback) => {
      const snap = snapshot();
      let done = false;
      const finish = (err: Error | null, socket: tls.TLSSocket): void => {
        if (done) return;
        done = true;
        socket.setTimeout(0);
        if (err === null) callback(null, socket);
        else {
          socket.destroy();
          callback(err, null);
        }
      };
      const socket = tls.connect({
        host: opts.hostname.replace(/^\[|\]$/g, ''),
        port: Number(opts.port === '' ? 443 : opts.port),
        servername: this.servername,
        cert: snap.credentials.certPem,
        key: snap.credentials.keyPem,
        ca: snap.bundles.caPem,
        rejectUnauthorized: true,
        minVersion: 'TLSv1.2',
        ALPNProtocols: ['http/1.1'],
        // The server's identity is its SPIFFE ID, checked below; an SVID need not name a DNS host.
        checkServerIdentity: noHostnameCheck,
      });
      socket.setNoDelay(true);
      socket.setTimeout(timeoutMs, () =>
        finish(Object.assign(new Error('connect timeout'), { code: 'UND_ERR_CONNECT_TIMEOUT' }), socket),
      );
      socket.once('error', (err) => finish(err, socket));
      socket.once('secureConnect', () => {
        try {
          const peer = verifyConnectionPeer(socket, snap.bundles);
          this.presented = peer.spiffeId.id;
          if (!this.accepts(peer.spiffeId)) throw new ServerIdentityError(peer.spiffeId.id, this.host);
          finish(null, socket);
        } catch (err) {
          finish(err as Error, socket);
        }
      });
    };
  }
}

function noHostnameCheck(): undefined {
  return undefined;
}

/** `billing:8080` → `billing`; `[::1]:80` → `::1`. */
function hostName(hostPort: string): string {
  if (hostPort.startsWith('[')) return hostPort.slice(1, hostPort.indexOf(']'));
  const colon = hostPort.lastIndexOf(':');
  return colon === -1 ? hostPort : hostPort.slice(0, colon);
}

/** A host passed through (ALLOW_ANY): plain HTTP, no identity. */
class PassThrough implements OutboundRoute {
  readonly host: string;
  readonly upstream: string;
  readonly presented = '';

  constructor(host: string) {
    this.host = host;
    this.upstream = `http://${host}`;
  }
}

/** Routes allowed outbound requests to their destinations. */
export class OutboundForwarder implements Forwarder {
  readonly origin = 'outbound';
  readonly limits: Limits;
  readonly logLimit = new LogLimiter();
  private readonly log: Logger;
  private readonly byHost: ReadonlyMap<string, Destination>;
  /** ALLOW_ANY: plain HTTP to hosts no destination names; null under REGISTRY_ONLY. */
  private readonly passthrough: Agent | null;

  constructor(config: OutboundConfig, snapshot: () => Snapshot, log: Logger) {
    this.limits = config.limits;
    this.log = log;
    this.byHost = new Map(
      config.destinations.map((d) => [d.host, new Destination(d, config.limits, snapshot)] as const),
    );
    this.passthrough =
      config.policy === 'ALLOW_ANY'
        ? new Agent({
            connections: config.limits.upstreamConnections,
            connect: { timeout: config.limits.upstreamConnectTimeout },
            headersTimeout: config.limits.upstreamHeadersTimeout,
            bodyTimeout: config.limits.upstreamBodyTimeout,
            keepAliveTimeout: 4_000,
          })
        : null;
  }

  get logger(): Logger {
    return this.log;
  }

  /** The destination for a Host: exactly as named (with its port), or by name when the port is 80. */
  private route(host: string): Destination | undefined {
    const exact = this.byHost.get(host);
    if (exact !== undefined) return exact;
    return host.endsWith(':80') ? this.byHost.get(host.slice(0, -3)) : undefined;
  }

  forward(rs: RequestStream): void {
    if (rs.closed) return;
    const host = rs.attrs.host;
    const dest = this.route(host);
    if (dest !== undefined) {
      rs.route = dest;
      dispatchTo(dest.pool, rs, forwardingHeaders(rs), undefined);
      return;
    }
    if (this.passthrough === null) {
      rs.answer(REPLIES.outboundUnregistered);
      return;
    }
    const route = new PassThrough(host);
    rs.route = route;
    dispatchTo(this.passthrough, rs, forwardingHeaders(rs), route.upstream);
  }

  /** For /status: each destination and the SPIFFE ID its server last presented. */
  status(): { host: string; upstream: string; presented: string }[] {
    return [...this.byHost.values()].map((d) => ({
      host: d.host,
      upstream: d.upstream,
      presented: d.presented,
    }));
  }

  replyFor(err: Error & { code?: string }): LocalReply {
    if (err instanceof ServerIdentityError) return REPLIES.serverIdentityMismatch;
    if (err instanceof PeerError || UNTRUSTED_TLS.has(err.code ?? '')) return REPLIES.serverUntrusted;
    return replyForUpstreamError(err);
  }

  async close(): Promise<void> {
    await Promise.all([...[...this.byHost.values()].map((d) => d.pool.close()), this.passthrough?.close()]);
  }
}

const kOutbound = Symbol('portcullis.outbound');

interface Tagged {
  [kOutbound]?: OutboundListener;
}

/**
 * The loopback listener the app calls out through. Plain HTTP/1.1 (the app and the sidecar share
 * the host); each request is a RequestStream over the outbound plan (the request-line checks),
 * then the outbound forwarder.
 */
export class OutboundListener {
  readonly config: OutboundConfig;
  plan: ListenerPlan;
  readonly log: Logger;
  closing = false;
  private readonly http: http.Server;

  constructor(config: OutboundConfig, plan: ListenerPlan, log: Logger) {
    this.config = config;
    this.plan = plan;
    this.log = log;
    const limits = config.limits;
    this.http = http.createServer(http1Options(limits), onRequest);
    this.http.maxConnections = limits.maxConnections;
    (this.http as http.Server & Tagged)[kOutbound] = this;
    this.http.on('connection', onConnection);
    this.http.on('connect', onConnect);
    this.http.on('upgrade', onUpgrade);
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

  setPlan(plan: ListenerPlan): void {
    this.plan = plan;
  }

  /** Stops accepting, lets in-flight calls finish (idle connections close), cuts the rest after drainMs. */
  async close(drainMs: number): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const closed = new Promise<void>((resolve) => this.http.close(() => resolve()));
    this.http.closeIdleConnections();
    const sweep = setInterval(() => this.http.closeIdleConnections(), 50);
    let timer: NodeJS.Timeout | undefined;
    const expired = await Promise.race([
      closed.then(() => false),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), drainMs);
      }),
    ]);
    if (expired) this.http.closeAllConnections();
    clearTimeout(timer);
    clearInterval(sweep);
    await closed;
  }

  /** The request, made origin-form: an absolute-form target names the destination (RFC 9112 §3.2.2). */
  start(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (this.closing) res.shouldKeepAlive = false;
    const url = req.url ?? '';
    let refusal: LocalReply | null = null;
    if (startsWithIgnoreCase(url, 'http://')) {
      const rest = url.slice(7);
      let end = rest.length;
      for (let i = 0; i < rest.length; i++) {
        const c = rest.charCodeAt(i);
        if (c === 47 /* / */ || c === 63 /* ? */) {
          end = i;
          break;
        }
      }
      const authority = rest.slice(0, end).toLowerCase();
      const path = rest.slice(end);
      if (authority === '' || authority.includes('@')) refusal = REPLIES.badRequest;
      else {
        // The proxy replaces Host with the target's authority; the request goes on origin-form.
        req.url = path === '' ? '/' : path.charCodeAt(0) === 63 ? `/${path}` : path;
        setHost(req, authority);
      }
    } else if (startsWithIgnoreCase(url, 'https://')) {
      refusal = REPLIES.outboundTlsTarget;
    }
    const rs = new RequestStream(this.plan, req, res);
    rs.watch();
    if (refusal !== null) rs.answer(refusal);
    else rs.run(0);
  }

  /** CONNECT and upgrades: answered with a clear refusal, recorded like any request. */
  refuse(req: http.IncomingMessage, socket: Socket, reply: LocalReply): void {
    const res = new http.ServerResponse(req);
    res.shouldKeepAlive = false;
    res.assignSocket(socket);
    res.once('finish', onRefusalFinish);
    const rs = new RequestStream(this.plan, req, res);
    rs.watch();
    rs.answer(reply);
  }
}

function startsWithIgnoreCase(s: string, prefix: string): boolean {
  return s.length >= prefix.length && s.slice(0, prefix.length).toLowerCase() === prefix;
}

/** Sets Host on both the parsed and the raw header lists (the raw list is what is forwarded). */
function setHost(req: http.IncomingMessage, authority: string): void {
  req.headers.host = authority;
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if ((raw[i] as string).length === 4 && (raw[i] as string).toLowerCase() === 'host')
      raw[i + 1] = authority;
  }
}

function onConnection(this: http.Server, socket: Socket): void {
  // A loopback client: no peer, no XFCC of its own.
  attachConnection(socket, null, '');
}

function onRequest(this: http.Server & Tagged, req: http.IncomingMessage, res: http.ServerResponse): void {
  (this[kOutbound] as OutboundListener).start(req, res);
}

function onConnect(this: http.Server & Tagged, req: http.IncomingMessage, socket: Socket): void {
  (this[kOutbound] as OutboundListener).refuse(req, socket, REPLIES.outboundConnect);
}

function onUpgrade(this: http.Server & Tagged, req: http.IncomingMessage, socket: Socket): void {
  (this[kOutbound] as OutboundListener).refuse(req, socket, REPLIES.outboundUpgrade);
}

function onRefusalFinish(this: http.ServerResponse): void {
  this.socket?.end();
}
