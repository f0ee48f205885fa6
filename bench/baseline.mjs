// The baseline: what a Node user would write by hand to do the same checks, done naively.
// https with client certificates, a SPIFFE-ID allow-list read from the certificate, jose jwtVerify
// on every request, a path/method check, and forwarding with http-proxy over a keep-alive agent.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import httpProxy from 'http-proxy';
import { createLocalJWKSet, jwtVerify } from 'jose';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const jwks = createLocalJWKSet(cfg.jwks);
const allowedPeers = new Set(cfg.allowedPeers);
const agent = new http.Agent({ keepAlive: true, maxSockets: 128 });
const proxy = httpProxy.createProxyServer({ target: cfg.upstream, agent });
proxy.on('error', (_err, _req, res) => {
  res.writeHead(503);
  res.end('upstream error');
});

function peerId(socket) {
  const san = socket.getPeerCertificate()?.subjectaltname ?? '';
  const m = /URI:(spiffe:\/\/[^,\s]+)/.exec(san);
  return m ? m[1] : null;
}

const server = https.createServer(
  {
    cert: readFileSync(cfg.cert),
    key: readFileSync(cfg.key),
    ca: readFileSync(cfg.ca),
    requestCert: true,
    rejectUnauthorized: true,
  },
  async (req, res) => {
    const id = peerId(req.socket);
    if (id === null || !allowedPeers.has(id)) {
      res.writeHead(403);
      return res.end('forbidden peer');
    }
    const auth = req.headers.authorization ?? '';
    if (!auth.startsWith('Bearer ')) {
      res.writeHead(401);
      return res.end('no token');
    }
    try {
      await jwtVerify(auth.slice(7), jwks, { issuer: cfg.issuer, audience: cfg.audience });
    } catch {
      res.writeHead(401);
      return res.end('bad token');
    }
    const path = req.url.split('?')[0];
    if (req.method !== 'GET' || !path.startsWith('/api/')) {
      res.writeHead(403);
      return res.end('forbidden');
    }
    proxy.web(req, res);
  },
);
server.keepAliveTimeout = 65_000;
server.listen(0, '127.0.0.1', () => process.stdout.write(`ready ${server.address().port}\n`));
process.on('SIGTERM', () => process.exit(0));
