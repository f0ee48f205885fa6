/** A DPoP client (RFC 9449), for tests: its key pair, and the proofs it signs. */
import { createHash, randomUUID } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';

type PrivateKey = Awaited<ReturnType<typeof generateKeyPair>>['privateKey'];

/** A client's DPoP key pair: the public JWK goes in every proof's header. */
export interface ClientKey {
  privateKey: PrivateKey;
  jwk: JWK;
  jkt: string;
}

export async function clientKey(alg = 'ES256'): Promise<ClientKey> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = await exportJWK(publicKey);
  return { privateKey, jwk, jkt: await calculateJwkThumbprint(jwk, 'sha256') };
}

export interface ProofOptions {
  method?: string;
  url: string;
  token: string;
  iat?: number;
  jti?: string;
  typ?: string;
  jwk?: JWK;
  ath?: string | null;
}

export function proof(k: ClientKey, o: ProofOptions): Promise<string> {
  const claims: Record<string, unknown> = {
    htm: o.method ?? 'GET',
    htu: o.url,
    jti: o.jti ?? randomUUID(),
    iat: o.iat ?? Math.floor(Date.now() / 1000),
  };
  const ath = o.ath === undefined ? createHash('sha256').update(o.token).digest('base64url') : o.ath;
  if (ath !== null) claims.ath = ath;
  return new SignJWT(claims)
    .setProtectedHeader({ typ: o.typ ?? 'dpop+jwt', alg: 'ES256', jwk: o.jwk ?? k.jwk })
    .sign(k.privateKey);
}
