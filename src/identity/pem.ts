import { X509Certificate } from 'node:crypto';

const BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g;

export interface PemBlock {
  readonly label: string;
  readonly der: Buffer;
}

/** Splits PEM text into its blocks; anything between blocks is ignored, as OpenSSL does. */
export function pemBlocks(text: string): PemBlock[] {
  const out: PemBlock[] = [];
  for (const m of text.matchAll(BLOCK)) {
    out.push({ label: m[1] ?? '', der: Buffer.from((m[2] ?? '').replace(/\s+/g, ''), 'base64') });
  }
  return out;
}

/** Every CERTIFICATE block in `text`, parsed. Throws (with the index) on a block that does not parse. */
export function parseCertificates(text: string): X509Certificate[] {
  const certs: X509Certificate[] = [];
  let i = 0;
  for (const block of pemBlocks(text)) {
    if (block.label !== 'CERTIFICATE') continue;
    try {
      certs.push(new X509Certificate(block.der));
    } catch (err) {
      throw new Error(`certificate #${i + 1} does not parse`, { cause: err });
    }
    i++;
  }
  return certs;
}

export function toPem(der: Buffer | Uint8Array, label = 'CERTIFICATE'): string {
  const b64 = Buffer.from(der).toString('base64');
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}
