import type { X509Certificate } from 'node:crypto';
import { PortcullisError } from '../errors.js';
import type { TrustBundleSet } from './bundle.js';
import type { SpiffeId } from './spiffe-id.js';
import { leafSpiffeId, SvidError, type SvidRule } from './svid.js';

export type PeerRejectReason =
  | 'no-certificate'
  | SvidRule
  | 'unknown-trust-domain'
  | 'untrusted-chain'
  | 'leaf-is-root'
  | 'expired'
  | 'not-yet-valid';

export class PeerError extends PortcullisError {
  readonly reason: PeerRejectReason;

  constructor(reason: PeerRejectReason, message: string) {
    super('ERR_PEER_UNTRUSTED', message);
    this.name = 'PeerError';
    this.reason = reason;
  }
}

/** What a verified peer is; computed once per connection and kept on the socket. */
export class PeerIdentity {
  readonly spiffeId: SpiffeId;
  /** Hex SHA-256 of the leaf's DER, as Envoy puts in XFCC's Hash. */
  readonly certHash: string;
  /** The same digest in base64url: RFC 8705's `x5t#S256` certificate thumbprint. */
  readonly x5tS256: string;
  readonly notAfter: number;

  constructor(spiffeId: SpiffeId, certHash: string, notAfter: number) {
    this.spiffeId = spiffeId;
    this.certHash = certHash;
    this.x5tS256 = Buffer.from(certHash, 'hex').toString('base64url');
    this.notAfter = notAfter;
  }
}

/** Longest chain walked; SPIFFE deployments rarely exceed 3 (leaf, intermediate, root). */
const MAX_DEPTH = 8;

function checkValidity(cert: X509Certificate, now: number, what: string): void {
  if (Date.parse(cert.validFrom) > now)
    throw new PeerError('not-yet-valid', `${what} is not valid before ${cert.validFrom}`);
  if (Date.parse(cert.validTo) < now) throw new PeerError('expired', `${what} expired on ${cert.validTo}`);
}

function issuedBy(child: X509Certificate, parent: X509Certificate): boolean {
  return child.checkIssued(parent) && child.verify(parent.publicKey);
}

/**
 * Verifies a peer's X.509-SVID: the leaf rules, then a chain from the leaf through the certificates
 * the peer presented to a root in the bundle of the trust domain that the leaf's SPIFFE ID names.
 * This runs after OpenSSL's own verification (against every configured root) and narrows it: a
 * chain that ends in another trust domain's root is refused here.
 */
export function verifyPeer(
  leaf: X509Certificate | undefined,
  presented: readonly X509Certificate[],
  bundles: TrustBundleSet,
  now: number = Date.now(),
): PeerIdentity {
  if (leaf === undefined) throw new PeerError('no-certificate', 'the peer presented no certificate');
  let id: SpiffeId;
  try {
    id = leafSpiffeId(leaf);
  } catch (err) {
    if (err instanceof SvidError) throw new PeerError(err.rule, err.message);
    throw err;
  }
  const bundle = bundles.get(id.trustDomain);
  if (bundle === undefined) {
    throw new PeerError('unknown-trust-domain', `no trust bundle for trust domain "${id.trustDomain}"`);
  }
  if (bundle.has(leaf)) throw new PeerError('leaf-is-root', 'the leaf certificate is itself a trust anchor');
  checkValidity(leaf, now, 'the leaf certificate');

  let current = leaf;
  const seen = new Set<string>([leaf.fingerprint256]);
  for (let depth = 0; depth < MAX_DEPTH; depth++) {
    for (const root of bundle.roots) {
      if (issuedBy(current, root))
        return new PeerIdentity(
          id,
          leaf.fingerprint256.replaceAll(':', '').toLowerCase(),
          Date.parse(leaf.validTo),
        );
    }
    let next: X509Certificate | undefined;
    for (const cand of presented) {
      if (seen.has(cand.fingerprint256) || !cand.ca) continue;
      // A self-signed certificate the peer sent is only trusted if it is in the bundle (checked above).
      if (cand.checkIssued(cand)) continue;
      if (issuedBy(current, cand)) {
        next = cand;
        break;
      }
    }
    if (next === undefined) break;
    checkValidity(next, now, `intermediate "${next.subject.replaceAll('\n', ', ')}"`);
    seen.add(next.fingerprint256);
    current = next;
  }
  throw new PeerError(
    'untrusted-chain',
    `the certificate chain does not lead to a root of trust domain "${id.trustDomain}"`,
  );
}
