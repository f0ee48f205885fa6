// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata API.
import 'reflect-metadata';
import { createPrivateKey, randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { PortcullisError } from '../errors.js';
import { toPem } from './pem.js';
import { SpiffeId, trustDomainProblem } from './spiffe-id.js';

/**
 * A development certificate authority: a self-signed root per trust domain that issues
 * X.509-SVIDs. EC P-256 keys and ECDSA-SHA256 signatures (what SPIRE issues by default), built on
 * @peculiar/x509 over Node's WebCrypto. For demos, tests and local setups — not a production CA.
 */

const subtle = webcrypto.subtle;
// The library's types name the DOM's Crypto, which this Node-only build does not include.
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

const EC_ALG = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN_ALG = { name: 'ECDSA', hash: 'SHA-256' } as const;

export const KeyUsage = x509.KeyUsageFlags;

export interface PemPair {
  readonly certPem: string;
  readonly keyPem: string;
}

/** Everything about a certificate to make; tests use the raw knobs to make malformed SVIDs. */
export interface CertificateSpec {
  commonName: string;
  uris?: string[];
  dnsNames?: string[];
  isCa?: boolean;
  /** KeyUsageFlags bits; omit the extension with `null`. */
  keyUsage?: number | null;
  extendedKeyUsage?: string[];
  notBefore?: Date;
  notAfter?: Date;
}

async function newKeyPair(): Promise<CryptoKeyPair> {
  return (await subtle.generateKey(EC_ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function exportKeyPem(key: CryptoKey): Promise<string> {
  return toPem(Buffer.from(await subtle.exportKey('pkcs8', key)), 'PRIVATE KEY');
}

async function importSigningKey(keyPem: string): Promise<CryptoKey> {
  const key = createPrivateKey(keyPem);
  const der = key.export({ type: 'pkcs8', format: 'der' });
  if (key.asymmetricKeyType === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    const namedCurve = curve === 'prime256v1' ? 'P-256' : curve === 'secp384r1' ? 'P-384' : null;
    if (namedCurve === null)
      throw new PortcullisError('ERR_CREDENTIALS_INVALID', `unsupported CA key curve ${curve}`);
    return subtle.importKey('pkcs8', der, { name: 'ECDSA', namedCurve }, false, ['sign']);
  }
  if (key.asymmetricKeyType === 'rsa') {
    return subtle.importKey('pkcs8', der, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, false, ['sign']);
  }
  throw new PortcullisError('ERR_CREDENTIALS_INVALID', `unsupported CA key type ${key.asymmetricKeyType}`);
}

function signingAlgorithm(key: CryptoKey): webcrypto.Algorithm {
  return key.algorithm.name === 'ECDSA' ? SIGN_ALG : { name: 'RSASSA-PKCS1-v1_5' };
}

function extensionsFor(spec: CertificateSpec, publicKey: CryptoKey): Promise<x509.Extension[]> {
  const exts: x509.Extension[] = [new x509.BasicConstraintsExtension(spec.isCa ?? false, undefined, true)];
  const ku = spec.keyUsage === undefined ? defaultKeyUsage(spec.isCa ?? false) : spec.keyUsage;
  if (ku !== null) exts.push(new x509.KeyUsagesExtension(ku, true));
  if (spec.extendedKeyUsage !== undefined && spec.extendedKeyUsage.length > 0) {
    exts.push(new x509.ExtendedKeyUsageExtension(spec.extendedKeyUsage, false));
  }
  const names: x509.JsonGeneralName[] = [];
  for (const uri of spec.uris ?? []) names.push({ type: 'url', value: uri });
  for (const dns of spec.dnsNames ?? []) names.push({ type: 'dns', value: dns });
  if (names.length > 0) exts.push(new x509.SubjectAlternativeNameExtension(names, false));
  return x509.SubjectKeyIdentifierExtension.create(publicKey).then((ski) => [...exts, ski]);
}

function defaultKeyUsage(isCa: boolean): number {
  return isCa ? KeyUsage.keyCertSign | KeyUsage.cRLSign : KeyUsage.digitalSignature;
}

function serial(): string {
  // Positive 128-bit serial (RFC 5280 §4.1.2.2 allows up to 20 octets; the top bit clear keeps it positive).
  const b = randomBytes(16);
  b[0] = (b[0] as number) & 0x7f;
  return b.toString('hex');
}

/** Makes a self-signed root CA for a trust domain (its URI SAN is the trust domain's SPIFFE ID). */
export async function createCa(trustDomain: string, ttlMs = 365 * 24 * 3600_000): Promise<PemPair> {
  const problem = trustDomainProblem(trustDomain);
  if (problem !== null)
    throw new PortcullisError('ERR_SPIFFE_ID_INVALID', `invalid trust domain "${trustDomain}": ${problem}`);
  const keys = await newKeyPair();
  const notBefore = new Date(Date.now() - 60_000);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=Portcullis dev CA ${trustDomain}, O=Portcullis`,
    notBefore,
    notAfter: new Date(notBefore.getTime() + ttlMs),
    keys,
    signingAlgorithm: SIGN_ALG,
    extensions: await extensionsFor(
      { commonName: '', isCa: true, uris: [`spiffe://${trustDomain}`] },
      keys.publicKey,
    ),
  });
  return { certPem: cert.toString('pem') + '\n', keyPem: await exportKeyPem(keys.privateKey) };
}

/** Issues any certificate from `issuer`; the public entry points below keep to valid SVIDs. */
export async function issueCertificate(issuer: PemPair, spec: CertificateSpec): Promise<PemPair> {
  const issuerCert = new x509.X509Certificate(issuer.certPem);
  const signingKey = await importSigningKey(issuer.keyPem);
  const keys = await newKeyPair();
  const notBefore = spec.notBefore ?? new Date(Date.now() - 60_000);
  const notAfter = spec.notAfter ?? new Date(notBefore.getTime() + 24 * 3600_000);
  const extensions = await extensionsFor(spec, keys.publicKey);
  extensions.push(await x509.AuthorityKeyIdentifierExtension.create(issuerCert.publicKey));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=${spec.commonName}, O=Portcullis`,
    issuer: issuerCert.subject,
    notBefore,
    notAfter,
    publicKey: keys.publicKey,
    signingKey,
    signingAlgorithm: signingAlgorithm(signingKey),
    extensions,
  });
  return { certPem: cert.toString('pem') + '\n', keyPem: await exportKeyPem(keys.privateKey) };
}

export interface SvidOptions {
  dnsNames?: string[];
  ttlMs?: number;
}

/** Issues a valid X.509-SVID for `spiffeId`, usable as client and server certificate. */
export async function issueSvid(issuer: PemPair, spiffeId: string, opts: SvidOptions = {}): Promise<PemPair> {
  const id = SpiffeId.parse(spiffeId);
  if (id.path === '')
    throw new PortcullisError(
      'ERR_SPIFFE_ID_INVALID',
      `${spiffeId}: an X.509-SVID's SPIFFE ID must have a path`,
    );
  const notBefore = new Date(Date.now() - 60_000);
  return issueCertificate(issuer, {
    commonName: id.path.split('/').pop() || id.trustDomain,
    uris: [id.id],
    dnsNames: opts.dnsNames ?? [],
    keyUsage: KeyUsage.digitalSignature,
    extendedKeyUsage: [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
    notBefore,
    notAfter: new Date(notBefore.getTime() + (opts.ttlMs ?? 24 * 3600_000)),
  });
}

function writeFile(file: string, text: string, secret: boolean): void {
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, text, { mode: secret ? 0o600 : 0o644 });
  if (secret) chmodSync(file, 0o600);
}

/**
 * `portcullis ca init`: writes DIR/ca.pem, DIR/ca.key (mode 0600) and DIR/bundle.pem. An existing
 * CA key is never overwritten unless `force`: every SVID it issued would stop verifying.
 */
export async function initCaDir(
  dir: string,
  trustDomain: string,
  ttlMs?: number,
  force = false,
): Promise<PemPair> {
  if (!force && existsSync(join(dir, 'ca.key'))) {
    throw new PortcullisError(
      'ERR_USAGE',
      `${join(dir, 'ca.key')} exists: replacing it would orphan every SVID it issued (use --force to replace it)`,
    );
  }
  const ca = await createCa(trustDomain, ttlMs);
  writeFile(join(dir, 'ca.pem'), ca.certPem, false);
  writeFile(join(dir, 'ca.key'), ca.keyPem, true);
  writeFile(join(dir, 'bundle.pem'), ca.certPem, false);
  return ca;
}

export function readCaDir(dir: string): PemPair {
  try {
    return {
      certPem: readFileSync(join(dir, 'ca.pem'), 'utf8'),
      keyPem: readFileSync(join(dir, 'ca.key'), 'utf8'),
    };
  } catch (err) {
    throw new PortcullisError(
      'ERR_USAGE',
      `cannot read the CA in ${dir} (expected ca.pem and ca.key, made by "portcullis ca init"): ${(err as NodeJS.ErrnoException).code}`,
    );
  }
}

/** The trust domain a dev CA vouches for: its URI SAN `spiffe://<td>`. */
export function caTrustDomain(ca: PemPair): string {
  const san = new X509Certificate(ca.certPem).subjectAltName ?? '';
  const m = /URI:spiffe:\/\/([^,/\s]+)/.exec(san);
  if (m === null) throw new PortcullisError('ERR_USAGE', 'the CA certificate names no SPIFFE trust domain');
  return m[1] as string;
}

/**
 * `portcullis ca issue`: writes PREFIX.pem and PREFIX.key (mode 0600). Refuses an ID outside the
 * CA's trust domain (peers would refuse it: a trust domain's CA vouches for that trust domain
 * alone) and a validity that outlives the CA.
 */
export async function issueToFiles(
  caDir: string,
  spiffeId: string,
  prefix: string,
  opts: SvidOptions & {
    /** Issue outside the CA's trust domain anyway (the demo's impostor). */ anyTrustDomain?: boolean;
  } = {},
): Promise<PemPair> {
  const ca = readCaDir(caDir);
  const td = caTrustDomain(ca);
  const id = SpiffeId.parse(spiffeId);
  if (id.trustDomain !== td && opts.anyTrustDomain !== true) {
    throw new PortcullisError(
      'ERR_USAGE',
      `${spiffeId} is not in trust domain ${td}, the only one this CA (${caDir}) vouches for`,
    );
  }
  const caNotAfter = Date.parse(new X509Certificate(ca.certPem).validTo);
  const notAfter = Date.now() - 60_000 + (opts.ttlMs ?? 24 * 3600_000);
  if (notAfter > caNotAfter) {
    throw new PortcullisError(
      'ERR_USAGE',
      `the SVID would outlive its CA (the CA expires ${new Date(caNotAfter).toISOString()}): use a shorter --ttl`,
    );
  }
  const svid = await issueSvid(ca, spiffeId, opts);
  writeFile(`${prefix}.pem`, svid.certPem, false);
  writeFile(`${prefix}.key`, svid.keyPem, true);
  return svid;
}

/**
 * A trust domain's bundle in the SPIFFE format (SPIFFE Trust Domain and Bundle §4): a JWK Set whose
 * X.509 authorities are keys with `use: "x509-svid"` and the CA certificate in `x5c`.
 */
export function spiffeBundleJson(caCertPems: readonly string[], refreshHintSeconds = 300): string {
  const keys = caCertPems.map((pem) => {
    const cert = new X509Certificate(pem);
    const jwk = cert.publicKey.export({ format: 'jwk' });
    return { ...jwk, use: 'x509-svid', x5c: [cert.raw.toString('base64')] };
  });
  return `${JSON.stringify({ keys, spiffe_refresh_hint: refreshHintSeconds }, null, 2)}\n`;
}

/** `portcullis ca bundle`: writes the CA's trust bundle, PEM or SPIFFE JSON. */
export function writeBundle(caDir: string, format: 'pem' | 'spiffe', file: string): void {
  let certPem: string;
  try {
    certPem = readFileSync(join(caDir, 'ca.pem'), 'utf8');
  } catch (err) {
    throw new PortcullisError(
      'ERR_USAGE',
      `cannot read ${join(caDir, 'ca.pem')} (made by "portcullis ca init"): ${(err as NodeJS.ErrnoException).code}`,
    );
  }
  writeFile(file, format === 'pem' ? certPem : spiffeBundleJson([certPem]), false);
}
