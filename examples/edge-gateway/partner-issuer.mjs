// The partners' token issuers, for trying this example on one machine (not for production).
//
//   node partner-issuer.mjs serve [--port 9444]
//       serves each partner's public key set on http://127.0.0.1:PORT/<partner>/keys
//   node partner-issuer.mjs token <partner-a|partner-b> [--tenant ID] [--ttl SECONDS]
//       prints a token from https://login.<partner>.example for audience "billing"
//
// Signing keys are made on first use and kept in ./issuer/<partner>.json (mode 0600).
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { exportJWK, generateKeyPair, importJWK, SignJWT } from 'jose';

const HERE = dirname(fileURLToPath(import.meta.url));
const PARTNERS = ['partner-a', 'partner-b'];
const issuer = (partner) => `https://login.${partner}.example`;

/** The partner's private JWK, made and saved on first use. */
async function privateJwk(partner) {
  const file = join(HERE, 'issuer', `${partner}.json`);
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8'));
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk = { ...(await exportJWK(privateKey)), kid: `${partner}-1`, alg: 'ES256', use: 'sig' };
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, `${JSON.stringify(jwk)}\n`, { mode: 0o600 });
  return jwk;
}

async function publicJwks(partner) {
  const { d: _private, ...pub } = await privateJwk(partner);
  return { keys: [pub] };
}

const [command, ...rest] = process.argv.slice(2);
if (command === 'serve') {
  const { values } = parseArgs({ args: rest, options: { port: { type: 'string', default: '9444' } } });
  const sets = new Map();
  for (const p of PARTNERS) sets.set(`/${p}/keys`, JSON.stringify(await publicJwks(p)));
  const server = http.createServer((req, res) => {
    const body = sets.get(req.url ?? '');
    res.writeHead(body === undefined ? 404 : 200, { 'content-type': 'application/json' });
    res.end(body ?? '{"error":"no such key set"}');
  });
  server.listen(Number(values.port), '127.0.0.1', () => {
    process.stdout.write(
      `partner issuers' key sets on http://127.0.0.1:${server.address().port}/<partner>/keys\n`,
    );
  });
} else if (command === 'token' && PARTNERS.includes(rest[0])) {
  const partner = rest[0];
  const { values } = parseArgs({
    args: rest.slice(1),
    options: {
      tenant: { type: 'string', default: `${partner}-tenant` },
      ttl: { type: 'string', default: '3600' },
    },
  });
  const jwk = await privateJwk(partner);
  const now = Math.floor(Date.now() / 1000);
  const token = await new SignJWT({ tenant: { id: values.tenant } })
    .setProtectedHeader({ alg: 'ES256', kid: jwk.kid })
    .setIssuer(issuer(partner))
    .setSubject(`${partner}-backend`)
    .setAudience('billing')
    .setIssuedAt(now)
    .setExpirationTime(now + Number(values.ttl))
    .sign(await importJWK(jwk, 'ES256'));
  process.stdout.write(`${token}\n`);
} else {
  process.stderr.write(
    'usage: node partner-issuer.mjs serve [--port N] | token <partner-a|partner-b> [--tenant ID] [--ttl S]\n',
  );
  process.exit(2);
}
