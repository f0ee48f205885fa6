// A bare HTTP/2 TLS server that requires a client certificate from the bench CA and answers what
// bench/upstream.mjs answers: what the HTTP/2 driver costs without any proxy. Prints "ready PORT".
// argv: cert key ca (PEM files).
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';

const [cert, key, ca] = process.argv.slice(2).map((f) => readFileSync(f));
const body = Buffer.from('{"ok":true,"service":"bench-upstream"}\n');
const server = http2.createSecureServer({ cert, key, ca, requestCert: true, rejectUnauthorized: true });
server.on('stream', (stream) => {
  stream.respond({ ':status': 200, 'content-type': 'application/json', 'content-length': body.length });
  stream.end(body);
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`ready ${server.address().port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
