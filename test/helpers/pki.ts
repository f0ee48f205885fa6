import { X509Certificate } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createCa, issueSvid, type PemPair } from '../../src/identity/dev-ca.js';

/** A throwaway folder under the OS temp dir, removed by `cleanup()`. */
export class TempDir {
  readonly path: string;

  constructor(prefix = 'portcullis-test-') {
    this.path = mkdtempSync(join(tmpdir(), prefix));
  }

  file(name: string): string {
    return join(this.path, name);
  }

  write(name: string, text: string | Buffer): string {
    const f = this.file(name);
    mkdirSync(dirname(f), { recursive: true });
    writeFileSync(f, text);
    return f;
  }

  cleanup(): void {
    rmSync(this.path, { recursive: true, force: true });
  }
}

export function cert(pair: PemPair): X509Certificate {
  return new X509Certificate(pair.certPem);
}

/** A trust domain's CA plus the usual SVIDs, all made at test time. */
export interface TestPki {
  ca: PemPair;
  server: PemPair;
  client: PemPair;
}

export async function makePki(trustDomain = 'example.org'): Promise<TestPki> {
  const ca = await createCa(trustDomain);
  const server = await issueSvid(ca, `spiffe://${trustDomain}/ns/default/sa/api`, {
    dnsNames: ['localhost'],
  });
  const client = await issueSvid(ca, `spiffe://${trustDomain}/ns/default/sa/web`);
  return { ca, server, client };
}
