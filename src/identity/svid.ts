import type { X509Certificate } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import {
  BasicConstraints,
  Certificate,
  id_ce_basicConstraints,
  id_ce_keyUsage,
  id_ce_subjectAltName,
  KeyUsage,
  KeyUsageFlags,
  SubjectAlternativeName,
} from '@peculiar/asn1-x509';
import { PortcullisError } from '../errors.js';
import { SpiffeId, spiffeIdProblem } from './spiffe-id.js';

/**
 * X.509-SVID leaf rules (SPIFFE X509-SVID standard §4 and §5). OpenSSL's own checks are not
 * these rules: it accepts a keyAgreement-only leaf, a leaf with cA=TRUE and a leaf with two URI
 * SANs. So the extensions are read from the certificate's DER here — never from Node's
 * `subjectaltname` string, which joins and quotes entries (CVE-2021-44532) and cannot be split safely.
 */

export type SvidRule =
  | 'malformed'
  | 'uri-san-count'
  | 'spiffe-id'
  | 'no-path'
  | 'ca-leaf'
  | 'key-usage-missing'
  | 'digital-signature'
  | 'key-cert-sign'
  | 'crl-sign';

export class SvidError extends PortcullisError {
  readonly rule: SvidRule;

  constructor(rule: SvidRule, message: string) {
    super('ERR_SVID_INVALID', message);
    this.name = 'SvidError';
    this.rule = rule;
  }
}

interface LeafExtensions {
  uris: string[];
  ca: boolean;
  keyUsage: number | null;
}

function readExtensions(der: Uint8Array): LeafExtensions {
  const cert = AsnConvert.parse(der, Certificate);
  const out: LeafExtensions = { uris: [], ca: false, keyUsage: null };
  for (const ext of cert.tbsCertificate.extensions ?? []) {
    const value = ext.extnValue.buffer;
    if (ext.extnID === id_ce_subjectAltName) {
      for (const name of AsnConvert.parse(value, SubjectAlternativeName)) {
        if (name.uniformResourceIdentifier !== undefined) out.uris.push(name.uniformResourceIdentifier);
      }
    } else if (ext.extnID === id_ce_basicConstraints) {
      out.ca = AsnConvert.parse(value, BasicConstraints).cA;
    } else if (ext.extnID === id_ce_keyUsage) {
      out.keyUsage = AsnConvert.parse(value, KeyUsage).toNumber();
    }
  }
  return out;
}

/**
 * Checks the leaf rules and returns the SPIFFE ID the certificate carries.
 * Chain and validity-period checks are separate (see verify-peer.ts).
 */
export function leafSpiffeId(cert: X509Certificate): SpiffeId {
  let ext: LeafExtensions;
  try {
    ext = readExtensions(cert.raw);
  } catch {
    throw new SvidError('malformed', 'X.509-SVID: the certificate extensions do not parse');
  }
  if (ext.uris.length !== 1) {
    throw new SvidError(
      'uri-san-count',
      `X.509-SVID: a leaf must carry exactly one URI SAN, this one has ${ext.uris.length}`,
    );
  }
  const uri = ext.uris[0] as string;
  const problem = spiffeIdProblem(uri);
  if (problem !== null)
    throw new SvidError('spiffe-id', `X.509-SVID: the URI SAN is not a valid SPIFFE ID: ${problem}`);
  const id = SpiffeId.parse(uri);
  // §3.1 and §5.2: a leaf's SPIFFE ID names a workload, never the trust domain itself.
  if (id.path === '')
    throw new SvidError('no-path', `X.509-SVID: a leaf's SPIFFE ID must have a path, ${uri} has none`);
  if (ext.ca) throw new SvidError('ca-leaf', 'X.509-SVID: a leaf must have cA=false in basicConstraints');
  if (ext.keyUsage === null) {
    throw new SvidError('key-usage-missing', 'X.509-SVID: a leaf must have the keyUsage extension');
  }
  if ((ext.keyUsage & KeyUsageFlags.digitalSignature) === 0) {
    throw new SvidError('digital-signature', 'X.509-SVID: a leaf must set digitalSignature in keyUsage');
  }
  if ((ext.keyUsage & KeyUsageFlags.keyCertSign) !== 0) {
    throw new SvidError('key-cert-sign', 'X.509-SVID: a leaf must not set keyCertSign in keyUsage');
  }
  if ((ext.keyUsage & KeyUsageFlags.cRLSign) !== 0) {
    throw new SvidError('crl-sign', 'X.509-SVID: a leaf must not set cRLSign in keyUsage');
  }
  return id;
}
