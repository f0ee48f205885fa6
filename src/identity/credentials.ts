import { createPrivateKey, createPublicKey, type X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { PortcullisError } from '../errors.js';
import { parseCertificates } from './pem.js';
import type { SpiffeId } from './spiffe-id.js';
import { leafSpiffeId } from './svid.js';

/** The proxy's own X.509-SVID and key, checked to belong together. */
export class Credentials {
  readonly certPem: string;
  readonly keyPem: string;
  readonly leaf: X509Certificate;
  readonly spiffeId: SpiffeId;
  readonly notAfter: number;

  constructor(certPem: string, keyPem: string, leaf: X509Certificate, spiffeId: SpiffeId) {
    this.certPem = certPem;
    this.keyPem = keyPem;
    this.leaf = leaf;
    this.spiffeId = spiffeId;
    this.notAfter = Date.parse(leaf.validTo);
  }
}

function fail(message: string, cause?: unknown): never {
  throw new PortcullisError('ERR_CREDENTIALS_INVALID', message, { cause });
}

function readText(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    return fail(`cannot read the ${what} file: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/**
 * Loads and checks a certificate and key pair. A half-written file (a rotation caught mid-write)
 * fails here — no certificate, a truncated block, or a key that does not match — and the caller
 * keeps the last good pair. Messages never include key material.
 */
export function loadCredentials(certFile: string, keyFile: string, now: number = Date.now()): Credentials {
  return credentialsFromPem(readText(certFile, 'certificate'), readText(keyFile, 'key'), now);
}

/** Checks a certificate chain and key given as PEM text (from files, or from the Workload API). */
export function credentialsFromPem(certPem: string, keyPem: string, now: number = Date.now()): Credentials {
  let chain: X509Certificate[];
  try {
    chain = parseCertificates(certPem);
  } catch (err) {
    return fail(`the certificate file: ${(err as Error).message}`);
  }
  const leaf = chain[0];
  if (leaf === undefined) return fail('the certificate file holds no certificate');
  let spiffeId: SpiffeId;
  try {
    spiffeId = leafSpiffeId(leaf);
  } catch (err) {
    return fail(`the certificate is not a valid X.509-SVID: ${(err as Error).message}`);
  }
  if (Date.parse(leaf.validTo) < now) fail(`the certificate expired on ${leaf.validTo}`);
  matchKey(leaf, keyPem);
  return new Credentials(certPem, keyPem, leaf, spiffeId);
}

/** A server certificate that need not be an SVID (browser-facing TLS), with its key. */
export interface ServerCertificate {
  readonly certPem: string;
  readonly keyPem: string;
  readonly notAfter: number;
}

/**
 * Loads a listener's own server certificate (from any CA: browsers do not know SPIFFE): the chain
 * parses, the leaf has not expired, and the key matches it. Messages never include key material.
 */
export function loadServerCertificate(
  certFile: string,
  keyFile: string,
  now: number = Date.now(),
): ServerCertificate {
  const certPem = readText(certFile, 'certificate');
  const keyPem = readText(keyFile, 'key');
  let leaf: X509Certificate | undefined;
  try {
    leaf = parseCertificates(certPem)[0];
  } catch (err) {
    return fail(`the certificate file: ${(err as Error).message}`);
  }
  if (leaf === undefined) return fail('the certificate file holds no certificate');
  if (Date.parse(leaf.validTo) < now) fail(`the certificate expired on ${leaf.validTo}`);
  matchKey(leaf, keyPem);
  return { certPem, keyPem, notAfter: Date.parse(leaf.validTo) };
}

function matchKey(leaf: X509Certificate, keyPem: string): void {
  let keyDer: Buffer;
  try {
    keyDer = createPublicKey(createPrivateKey(keyPem)).export({ type: 'spki', format: 'der' });
  } catch {
    fail('the key file does not hold a readable private key');
  }
  if (!keyDer.equals(leaf.publicKey.export({ type: 'spki', format: 'der' })))
    fail('the private key does not match the certificate');
}
