import http from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import { upstreamResponseHeaders } from './headers.js';
import { sendLocalReply } from './local-reply.js';
import type { RequestStream } from './stream.js';
import { forwardingHeaders, replyForUpstreamError } from './upstream.js';

/**
 * WebSocket (RFC 6455) through the proxy. The upgrade request went through every stage like any
 * other request (peer, JWT, authorization, Rego); only an allowed one gets here. It is sent to the
 * upstream with the same forwarding headers (XFCC, claims, request id; client copies removed), and:
 * - the upstream answers 101: the client gets the 101, and the two sockets are joined, with
 *   backpressure both ways (pipe), an idle timeout, and closed together; the decision is recorded
 *   at once (status 101), and a second event when the tunnel closes (duration, bytes);
 * - the upstream answers anything else: that response is relayed, and the connection closes;
 * - the upstream cannot be reached: the usual 503/504.
 * One Tunnel per WebSocket connection; its handlers are module functions (no closure per tunnel).
 */

const kTunnel = Symbol('portcullis.tunnel');

interface Tagged {
  [kTunnel]?: Tunnel;
}

class Tunnel {
  readonly rs: RequestStream;
  readonly client: Socket;
  upstream: Socket | null = null;
  openedAt = 0;
  closed = false;

  constructor(rs: RequestStream, client: Socket) {
    this.rs = rs;
    this.client = client;
  }

  /** The upstream switched protocols: answer the client with its 101 and join the sockets. */
  joined(upRes: http.IncomingMessage, upSocket: Socket, upHead: Buffer): void {
    const rs = this.rs;
    const client = this.client;
    if (client.destroyed) {
      upSocket.destroy();
      return;
    }
    this.upstream = upSocket;
    this.openedAt = performance.now();
    rs.upstreamStatus = 101;
    rs.upstreamEnd = this.openedAt;
    // The 101 carries Upgrade and Connection (and Sec-WebSocket-Accept, -Protocol, -Extensions)
    // exactly as the upstream sent them: here they are the handshake, not hop-by-hop noise.
    let head = 'HTTP/1.1 101 Switching Protocols\r\n';
    const raw = upRes.rawHeaders;
    for (let i = 0; i + 1 < raw.length; i += 2) head += `${raw[i]}: ${raw[i + 1]}\r\n`;
    client.write(`${head}\r\n`, 'latin1');
    if (upHead.length > 0) client.write(upHead);
    const early = rs.upgradeHead;
    if (early !== null && early.length > 0) upSocket.write(early);
    // The decision is on record now, not when the tunnel ends hours later.
    const res = rs.res;
    res.statusCode = 101;
    res.detachSocket(client);
    rs.plan.observer.finished(rs);
    (client as Socket & Tagged)[kTunnel] = this;
    (upSocket as Socket & Tagged)[kTunnel] = this;
    const idle = rs.plan.upstream.limits.tunnelIdleTimeout;
    client.setTimeout(idle, onIdle);
    upSocket.setTimeout(idle, onIdle);
    client.on('close', onSideClose);
    upSocket.on('close', onSideClose);
    client.on('error', onSideError);
    upSocket.on('error', onSideError);
    client.pipe(upSocket);
    upSocket.pipe(client);
    client.resume();
  }

  /** Either side closed, failed or idled: close both, and record the tunnel once. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.client.destroy();
    this.upstream?.destroy();
    const rs = this.rs;
    rs.plan.observer.tunnelClosed(
      rs.plan.listenerName,
      rs.attrs.requestId,
      performance.now() - this.openedAt,
      this.client.bytesRead,
      this.client.bytesWritten,
    );
  }
}

function onIdle(this: Socket & Tagged): void {
  this[kTunnel]?.close();
}

function onSideClose(this: Socket & Tagged): void {
  this[kTunnel]?.close();
}

function onSideError(this: Socket & Tagged): void {
  this[kTunnel]?.close();
}

/** The allowed upgrade request goes to the upstream; what it answers decides the rest. */
export function openTunnel(rs: RequestStream): void {
  const plan = rs.plan;
  const origin = new URL(plan.upstream.origin);
  const headers = forwardingHeaders(rs);
  // Upgrade and Connection are hop-by-hop, so the forwarding headers dropped them: the upgrade to
  // ask the upstream for is WebSocket, and nothing else (other upgrades were refused).
  headers.push('Connection', 'Upgrade', 'Upgrade', 'websocket');
  const client = rs.res.socket as Socket;
  const tunnel = new Tunnel(rs, client);
  rs.upstreamStart = performance.now();
  const options: https.RequestOptions = {
    host: origin.hostname,
    port: origin.port === '' ? undefined : Number(origin.port),
    method: rs.attrs.method,
    path: rs.ctx.forwardTarget,
    headers: headers as unknown as http.OutgoingHttpHeaders, // a raw [name, value, …] list, which Node takes as is
    setHost: false,
    agent: false,
    timeout: plan.upstream.limits.upstreamConnectTimeout,
  };
  const req = origin.protocol === 'https:' ? https.request(options) : http.request(options);
  (req as http.ClientRequest & Tagged)[kTunnel] = tunnel;
  req.on('upgrade', onUpstreamUpgrade);
  req.on('response', onUpstreamResponse);
  req.on('timeout', onUpstreamTimeout);
  req.on('error', onUpstreamError);
  req.end();
}

function onUpstreamUpgrade(
  this: http.ClientRequest & Tagged,
  res: http.IncomingMessage,
  socket: Socket,
  head: Buffer,
): void {
  (this[kTunnel] as Tunnel).joined(res, socket, head);
}

/** The upstream refused to switch (a 4xx, a redirect): its answer goes to the client as it is. */
function onUpstreamResponse(this: http.ClientRequest & Tagged, upRes: http.IncomingMessage): void {
  const rs = (this[kTunnel] as Tunnel).rs;
  rs.upstreamStatus = upRes.statusCode ?? 502;
  const raw = upRes.rawHeaders.map((h) => Buffer.from(h, 'latin1'));
  rs.res.writeHead(rs.upstreamStatus, upstreamResponseHeaders(raw));
  (upRes as http.IncomingMessage & Tagged)[kTunnel] = this[kTunnel];
  upRes.once('end', onRelayEnd);
  upRes.pipe(rs.res);
}

function onRelayEnd(this: http.IncomingMessage & Tagged): void {
  const tunnel = this[kTunnel];
  if (tunnel !== undefined) tunnel.rs.upstreamEnd = performance.now();
}

function onUpstreamTimeout(this: http.ClientRequest): void {
  this.destroy(Object.assign(new Error('upstream connect timeout'), { code: 'UND_ERR_CONNECT_TIMEOUT' }));
}

function onUpstreamError(this: http.ClientRequest & Tagged, err: Error & { code?: string }): void {
  const tunnel = this[kTunnel] as Tunnel;
  if (tunnel.upstream !== null) return; // after the join, socket errors close the tunnel
  const rs = tunnel.rs;
  rs.upstreamEnd = performance.now();
  if (rs.res.headersSent || tunnel.client.destroyed) {
    tunnel.client.destroy();
    return;
  }
  const reply = replyForUpstreamError(err);
  rs.reply = reply;
  sendLocalReply(rs.res, reply);
}
