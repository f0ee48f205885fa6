import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { PortcullisError } from '../errors.js';
import { parseCertificates, toPem } from './pem.js';

/**
 * The X.509 trust anchors of one trust domain. A peer is checked only against the bundle of the
 * trust domain its SPIFFE ID names (SPIFFE Trust Domain and Bundle §4): merging every domain's
 * roots into one pool would let domain A's CA mint identities in domain B.
 */
export class TrustBundle {
  readonly trustDomain: string;
  readonly roots: readonly X509Certificate[];
  /** Roots in PEM, concatenated, for OpenSSL's `ca` option. */
  readonly pem: string;
  private readonly fingerprints: ReadonlySet<string>;

  constructor(trustDomain: string, roots: readonly X509Certificate[]) {
    this.trustDomain = trustDomain;
    this.roots = roots;
    this.pem = roots.map((c) => c.toString()).join('');
    this.fingerprints = new Set(roots.map((c) => c.fingerprint256));
  }

  has(cert: X509Certificate): boolean {
    return this.fingerprints.has(cert.fingerprint256);
  }
}

/** Reads a bundle file: PEM certificates, or a SPIFFE bundle (a JWKS whose x509-svid keys carry `x5c`). */
export function loadBundleFile(trustDomain: string, file: string): TrustBundle {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new PortcullisError(
      'ERR_BUNDLE_INVALID',
      `cannot read bundle: ${(err as NodeJS.ErrnoException).code ?? err}`,
    );
  }
  return parseBundle(trustDomain, text);
}

export function parseBundle(trustDomain: string, text: string): TrustBundle {
  return bundleOf(trustDomain, text.trimStart().startsWith('{') ? spiffeBundleRoots(text) : pemRoots(text));
}

/** A bundle from its root certificates (a file's, or the Workload API's DER ones), checked as CAs in validity. */
export function bundleOf(trustDomain: string, roots: X509Certificate[]): TrustBundle {
  if (roots.length === 0) throw new PortcullisError('ERR_BUNDLE_INVALID', 'the bundle holds no certificate');
  const now = Date.now();
  for (const root of roots) {
    if (!root.ca) {
      throw new PortcullisError(
        'ERR_BUNDLE_INVALID',
        `bundle certificate "${root.subject}" is not a CA certificate`,
      );
    }
    if (Date.parse(root.validTo) < now) {
      throw new PortcullisError(
        'ERR_BUNDLE_INVALID',
        `bundle certificate "${root.subject}" expired on ${root.validTo}`,
      );
    }
  }
  return new TrustBundle(trustDomain, roots);
}

function pemRoots(text: string): X509Certificate[] {
  try {
    return parseCertificates(text);
  } catch (err) {
    throw new PortcullisError('ERR_BUNDLE_INVALID', `the PEM bundle: ${(err as Error).message}`);
  }
}

interface JwkEntry {
  use?: unknown;
  x5c?: unknown;
}

/**
 * SPIFFE bundle format (SPIFFE Trust Domain and Bundle §4.1): a JWK Set; entries with
 * `use: "x509-svid"` are X.509 authorities and carry exactly one certificate in `x5c`.
 * Entries with another `use` (jwt-svid, or unknown ones) are not X.509 authorities and are skipped.
 */
function spiffeBundleRoots(text: string): X509Certificate[] {
  let doc: { keys?: unknown };
  try {
    doc = JSON.parse(text) as { keys?: unknown };
  } catch {
    throw new PortcullisError('ERR_BUNDLE_INVALID', 'the SPIFFE bundle is not valid JSON');
  }
  if (!Array.isArray(doc.keys))
    throw new PortcullisError('ERR_BUNDLE_INVALID', 'the SPIFFE bundle has no "keys" array');
  const roots: X509Certificate[] = [];
  doc.keys.forEach((entry: JwkEntry, i: number) => {
    if (entry === null || typeof entry !== 'object' || entry.use !== 'x509-svid') return;
    if (!Array.isArray(entry.x5c) || entry.x5c.length !== 1 || typeof entry.x5c[0] !== 'string') {
      throw new PortcullisError(
        'ERR_BUNDLE_INVALID',
        `keys[${i}]: an x509-svid key must have exactly one x5c certificate`,
      );
    }
    try {
      roots.push(new X509Certificate(toPem(Buffer.from(entry.x5c[0], 'base64'))));
    } catch {
      throw new PortcullisError('ERR_BUNDLE_INVALID', `keys[${i}].x5c[0] is not a DER certificate in base64`);
    }
  });
  return roots;
}

/** Every configured trust domain's bundle. */
export class TrustBundleSet {
  private readonly byDomain: ReadonlyMap<string, TrustBundle>;
  /** All roots of all domains, for OpenSSL's first-pass chain check (the per-domain check follows). */
  readonly caPem: string;

  constructor(bundles: Iterable<TrustBundle>) {
    const map = new Map<string, TrustBundle>();
    for (const b of bundles) map.set(b.trustDomain, b);
    this.byDomain = map;
    this.caPem = [...map.values()].map((b) => b.pem).join('');
  }

  get(trustDomain: string): TrustBundle | undefined {
    return this.byDomain.get(trustDomain);
  }

  get domains(): string[] {
    return [...this.byDomain.keys()];
  }
}
