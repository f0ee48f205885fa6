// HAProxy as a peer, when it is installed: the same checks in its own terms. Skipped with a note
// otherwise; the benchmark never fails because a peer is missing.
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';

function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export async function haproxyTarget({ dir, files, upstreamPort, jwks, issuer, log, spawnChild }) {
  const which = spawnSync('haproxy', ['-v'], { encoding: 'utf8' });
  if (which.error !== undefined || which.status !== 0) {
    const note = 'haproxy is not installed (apt-get install -y haproxy to include it)';
    log(`  skipping HAProxy: ${note}`);
    return { target: null, note };
  }
  const version = /version (\d+\.\d+)/.exec(which.stdout)?.[1] ?? '?';
  const port = await freePort();
  // HAProxy wants the certificate and key in one file, and the RS256 public key as PEM.
  const { createPublicKey } = await import('node:crypto');
  const { readFileSync } = await import('node:fs');
  writeFileSync(
    join(dir, 'hap.pem'),
    readFileSync(files['api.pem'], 'utf8') + readFileSync(files['api.key'], 'utf8'),
  );
  const rsa = createPublicKey({ key: jwks.keys.find((k) => k.kid === 'rs'), format: 'jwk' }).export({
    type: 'spki',
    format: 'pem',
  });
  writeFileSync(join(dir, 'hap-jwt.pem'), rsa);
  // HAProxy 2.6 has no fetch for a certificate's URI SAN; the SPIFFE ID is matched as its DER bytes
  // (the IA5String of the URI) inside the client certificate.
  const idHex = Buffer.from('spiffe://example.org/ns/default/sa/web').toString('hex').toUpperCase();
  const cfg = `global
  maxconn 4096
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend pep
  bind 127.0.0.1:${port} ssl crt ${join(dir, 'hap.pem')} ca-file ${files['ca.pem']} verify required alpn http/1.1
  http-request deny deny_status 403 unless { ssl_c_der,hex -m sub ${idHex} }
  http-request set-var(txn.bearer) http_auth_bearer
  http-request deny deny_status 401 unless { var(txn.bearer) -m found }
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request deny deny_status 401 unless { var(txn.alg) -m str RS256 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"${join(dir, 'hap-jwt.pem')}") -m int 1 }
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request deny deny_status 401 unless { var(txn.iss) -m str ${issuer} } { var(txn.aud) -m str api }
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
  http-request deny deny_status 403 unless METH_GET { path_beg /api/ }
  default_backend svc
backend svc
  http-reuse always
  server up 127.0.0.1:${upstreamPort}
`;
  writeFileSync(join(dir, 'haproxy.cfg'), cfg);
  const check = spawnSync('haproxy', ['-c', '-f', join(dir, 'haproxy.cfg')], { encoding: 'utf8' });
  if (check.status !== 0) {
    const note = `haproxy ${version} rejected the config: ${(check.stderr || check.stdout).trim().split('\n').slice(-2).join(' ')}`;
    log(`  skipping HAProxy: ${note}`);
    return { target: null, note };
  }
  const child = spawn('haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  spawnChild(child);
  await new Promise((r) => setTimeout(r, 500));
  return {
    target: { name: `HAProxy ${version}`, port, pid: child.pid, token: null, enforces: true, key: 'haproxy' },
    note: `haproxy ${version}`,
  };
}
