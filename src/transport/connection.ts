import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { ConnectionFacts } from '../authz/attributes.js';
import type { PeerIdentity } from '../identity/verify-peer.js';

/** Where a connection's facts hang off its socket (sockets are not our objects). */
export const kConnection = Symbol('portcullis.connection');

/**
 * One accepted connection, as every request on it sees it: addresses, TLS, and the peer verified
 * once when the connection was handed to HTTP (with its XFCC element, built then too).
 */
export class Connection implements ConnectionFacts {
  readonly sourceAddress: string;
  readonly sourcePort: number;
  readonly destinationAddress: string;
  readonly tls: boolean;
  readonly sni: string;
  readonly peerId: string;
  readonly peerPrincipal: string;
  readonly peerNamespace: string;
  /** The verified peer, or null on a plaintext connection (PERMISSIVE, DISABLE). */
  readonly peer: PeerIdentity | null;
  /** The XFCC element for the peer (`By=…;Hash=…;URI=…`), or ''. */
  readonly xfcc: string;
  /** Requests or HTTP/2 streams (tunnels included) begun on this connection and not yet closed. */
  exchanges: number;
  /** The response of the latest request on this connection (HTTP/1.1), or null before the first. */
  lastResponse: { readonly headersSent: boolean; readonly writableFinished: boolean } | null;

  constructor(socket: Socket, peer: PeerIdentity | null, xfcc: string) {
    const tls = (socket as Partial<TLSSocket>).encrypted === true;
    const servername = tls ? (socket as TLSSocket).servername : undefined;
    this.sourceAddress = socket.remoteAddress ?? '';
    this.sourcePort = socket.remotePort ?? 0;
    this.destinationAddress = socket.localAddress ?? '';
    this.tls = tls;
    this.sni = typeof servername === 'string' ? servername : '';
    this.peerId = peer === null ? '' : peer.spiffeId.id;
    this.peerPrincipal = peer === null ? '' : peer.spiffeId.principal;
    this.peerNamespace = peer === null ? '' : peer.spiffeId.namespace;
    this.peer = peer;
    this.xfcc = xfcc;
    this.exchanges = 0;
    this.lastResponse = null;
  }
}

interface Tagged {
  [kConnection]?: Connection;
}

/** Records the connection's facts on its socket (once, when it is handed to HTTP). */
export function attachConnection(socket: Socket, peer: PeerIdentity | null, xfcc: string): Connection {
  const c = new Connection(socket, peer, xfcc);
  (socket as Socket & Tagged)[kConnection] = c;
  return c;
}

/** The facts recorded for a socket, or null if it never passed the transport's hand-off. */
export function connectionOf(socket: unknown): Connection | null {
  return (socket as Tagged | null)?.[kConnection] ?? null;
}
