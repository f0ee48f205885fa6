import { X509Certificate } from 'node:crypto';
import type { DetailedPeerCertificate, TLSSocket } from 'node:tls';
import type { TrustBundleSet } from '../identity/bundle.js';
import { type PeerIdentity, verifyPeer } from '../identity/verify-peer.js';

/**
 * Peer verification, once per connection, after OpenSSL accepted the handshake: the chain the
 * peer presented, against the bundle of the peer's own trust domain, and the X.509-SVID rules.
 * Throws PeerError (with a reason) when the peer is not a valid SVID of a trusted domain.
 */
export function verifyConnectionPeer(socket: TLSSocket, bundles: TrustBundleSet): PeerIdentity {
  return verifyPeer(socket.getPeerX509Certificate(), presentedChain(socket), bundles);
}

/** The certificates the peer sent after its leaf (Node's detailed chain; a self-signed root points to itself). */
function presentedChain(socket: TLSSocket): X509Certificate[] {
  const out: X509Certificate[] = [];
  const seen = new Set<unknown>();
  let c = socket.getPeerCertificate(true) as DetailedPeerCertificate | undefined;
  while (c !== undefined && c !== null && c.raw !== undefined && !seen.has(c)) {
    seen.add(c);
    if (seen.size > 1) out.push(new X509Certificate(c.raw));
    c = c.issuerCertificate;
    if (seen.size > 10) break;
  }
  return out;
}
