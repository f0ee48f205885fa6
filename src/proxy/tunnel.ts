import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import type { OutgoingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import https from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { upstreamResponseHeaders } from './headers.js';
import { REPLIES, sendLocalReply } from './local-reply.js';
import type { RequestStream } from './stream.js';
import { forwardingHeaders, fromHttp2, replyForUpstreamError } from './upstream.js';

/**
 * WebSocket (RFC 6455) through the proxy, from HTTP/1.1 (`Upgrade: websocket`) or HTTP/2 (RFC 8441
 * extended CONNECT with `:protocol: websocket`). The request went through every stage like any
 * other (peer, JWT, authorization, Rego); only an allowed one gets here. It is sent to the
 * upstream as an HTTP/1.1 upgrade with the same forwarding headers (XFCC, claims, request id;
 * client copies removed), and:
 * - the upstream answers 101: the client gets the 101 (HTTP/2: a 200 on its stream), and the two
 *   sides are joined, with backpressure both ways (pipe), an idle timeout, and closed together;
 *   the decision is recorded at once, and a second event when the tunnel closes (duration, bytes);
 * - the upstream answers anything else: that response is relayed, and the connection (HTTP/2:
 *   the stream) closes;
 * - the upstream cannot be reached: the usual 503/504.
 * For an HTTP/2 client the proxy is the WebSocket client of the upstream's handshake: it makes the
 * Sec-WebSocket-Key (an HTTP/2 client sends none) and checks the upstream's Sec-WebSocket-Accept.
 * One Tunnel per WebSocket; its handlers are module functions (no closure per tunnel).
 */

const kTunnel = Symbol('portcullis.tunnel');
/** RFC 6455 §1.3: appended to the key before hashing for Sec-WebSocket-Accept. */
const WEBSOCKET_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** Response fields of the upstream's 101 that belong to its HTTP/1.1 handshake, not to an HTTP/2 200. */
const H1_HANDSHAKE_ONLY: ReadonlySet<string> = new Set([
  'connection',
  'upgrade',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'sec-websocket-accept',
]);

interface Tagged {
  [kTunnel]?: Tunnel;
}

class Tunnel {
  readonly rs: RequestStream;
  /** The client's side: its socket (HTTP/1.1), or its HTTP/2 stream. */
  readonly client: Duplex;
  readonly h2: boolean;
  /** The Sec-WebSocket-Key the proxy made for the upstream (HTTP/2 clients), else ''. */
  readonly key: string;
  upstream: Socket | null = null;
  openedAt = 0;
  closed = false;
  /** Bytes counted on an HTTP/2 stream (a socket counts its own). */
  fromClient = 0;
  toClient = 0;

  constructor(rs: RequestStream, client: Duplex, h2: boolean) {
    this.rs = rs;
    this.client = client;
    this.h2 = h2;
    this.key = h2 ? randomBytes(16).toString('base64') : '';
  }

  /** The upstream switched protocols: answer the client and join the two sides. */
  joined(upRes: http.IncomingMessage, upSocket: Socket, upHead: Buffer): void {
    const rs = this.rs;
    const client = this.client;
    if (client.destroyed) {
      upSocket.destroy();
      return;
    }
    if (this.h2 && upRes.headers['sec-websocket-accept'] !== acceptFor(this.key)) {
      // Not a WebSocket handshake answering ours: nothing is joined.
      upSocket.destroy();
      rs.upstreamEnd = performance.now();
      rs.reply = REPLIES.upstreamError;
      sendLocalReply(rs.res, rs.reply, '', rs.attrs.requestId);
      return;
    }
    this.upstream = upSocket;
    this.openedAt = performance.now();
    rs.upstreamStatus = 101;
    rs.upstreamEnd = this.openedAt;
    const res = rs.res;
    if (this.h2) {
      // RFC 8441 §5: a 2xx on the stream is the handshake's success; the WebSocket headers the
      // upstream chose (subprotocol, extensions) go with it.
      const out: OutgoingHttpHeaders = {};
      for (const [name, value] of Object.entries(upRes.headers))
        if (value !== undefined && !H1_HANDSHAKE_ONLY.has(name)) out[name] = value;
      (client as ServerHttp2Stream).respond({ ...out, ':status': 200 });
      res.statusCode = 200;
      client.on('data', onClientData);
      upSocket.on('data', onUpstreamData);
    } else {
      // The 101 carries Upgrade and Connection (and Sec-WebSocket-Accept, -Protocol, -Extensions)
      // exactly as the upstream sent them: here they are the handshake, not hop-by-hop noise.
      let head = 'HTTP/1.1 101 Switching Protocols\r\n';
      const raw = upRes.rawHeaders;
      for (let i = 0; i + 1 < raw.length; i += 2) head += `${raw[i]}: ${raw[i + 1]}\r\n`;
      client.write(`${head}\r\n`, 'latin1');
      res.statusCode = 101;
      res.detachSocket(client as Socket);
    }
    if (upHead.length > 0) client.write(upHead);
    const early = rs.upgradeHead;
    if (early !== null && early.length > 0) upSocket.write(early);
    // The decision is on record now, not when the tunnel ends hours later.
    rs.plan.observer.finished(rs);
    (client as Duplex & Tagged)[kTunnel] = this;
    (upSocket as Socket & Tagged)[kTunnel] = this;
    const idle = rs.plan.upstream.limits.tunnelIdleTimeout;
    (client as Socket).setTimeout(idle, onIdle);
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
    const client = this.client;
    if (this.h2) {
      // The stream ends after what the upstream sent (END_STREAM), rather than with a reset that
      // could drop its last frames; errors and the idle timeout reset it (onSideError, onIdle).
      if (!client.destroyed && !client.writableEnded) client.end();
    } else {
      client.destroy();
    }
    this.upstream?.destroy();
    const rs = this.rs;
    rs.plan.observer.tunnelClosed(
      rs.plan.listenerName,
      rs.attrs.requestId,
      performance.now() - this.openedAt,
      this.h2 ? this.fromClient : (client as Socket).bytesRead,
      this.h2 ? this.toClient : (client as Socket).bytesWritten,
    );
  }
}

/** Sec-WebSocket-Accept for a key (RFC 6455 §4.2.2). */
function acceptFor(key: string): string {
  return createHash('sha1')
    .update(key + WEBSOCKET_GUID)
    .digest('base64');
}

function onClientData(this: Duplex & Tagged, chunk: Buffer): void {
  const t = this[kTunnel];
  if (t !== undefined) t.fromClient += chunk.length;
}

function onUpstreamData(this: Socket & Tagged, chunk: Buffer): void {
  const t = this[kTunnel];
  if (t !== undefined) t.toClient += chunk.length;
}

function onIdle(this: Duplex & Tagged): void {
  const t = this[kTunnel];
  if (t === undefined) return;
  // Idle, not finished: cut both sides.
  t.client.destroy();
  t.close();
}

function onSideClose(this: Duplex & Tagged): void {
  this[kTunnel]?.close();
}

function onSideError(this: Duplex & Tagged): void {
  const t = this[kTunnel];
  if (t === undefined) return;
  t.client.destroy();
  t.close();
}

/** The allowed upgrade request goes to the upstream; what it answers decides the rest. */
export function openTunnel(rs: RequestStream): void {
  const plan = rs.plan;
  const origin = new URL(plan.upstream.origin);
  const h2 = rs.extendedConnect;
  const headers = forwardingHeaders(rs);
  if (h2) fromHttp2(headers, rs);
  const client = h2 ? (rs.res as unknown as { stream: ServerHttp2Stream }).stream : (rs.res.socket as Socket);
  const tunnel = new Tunnel(rs, client, h2);
  // Upgrade and Connection are hop-by-hop, so the forwarding headers dropped them: the upgrade to
  // ask the upstream for is WebSocket, and nothing else (other upgrades were refused).
  headers.push('Connection', 'Upgrade', 'Upgrade', 'websocket');
  if (h2) {
    // An HTTP/2 client has no key of its own (and any it sent is not the proxy's to use).
    for (let i = 0; i + 1 < headers.length; i += 2) {
      if ((headers[i] as string).toLowerCase() === 'sec-websocket-key') {
        headers.splice(i, 2);
        i -= 2;
      }
    }
    headers.push('Sec-WebSocket-Key', tunnel.key);
  }
  rs.upstreamStart = performance.now();
  const options: https.RequestOptions = {
    host: origin.hostname,
    port: origin.port === '' ? undefined : Number(origin.port),
    method: 'GET',
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
  sendLocalReply(rs.res, reply, '', rs.attrs.requestId);
}
