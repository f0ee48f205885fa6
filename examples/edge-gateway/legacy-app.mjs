// A stand-in for the legacy application behind the gateway: it answers every request with what
// it was told about the caller. `node legacy-app.mjs [--port 8080]`, on 127.0.0.1 only.
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { port: { type: 'string', default: '8080' } } });
const server = http.createServer((req, res) => {
  const xfcc = String(req.headers['x-forwarded-client-cert'] ?? '');
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(
    `${JSON.stringify({
      app: 'legacy billing',
      method: req.method,
      path: req.url,
      caller: /URI=([^;,]+)/.exec(xfcc)?.[1] ?? null,
      tenant: req.headers['x-partner-tenant'] ?? null,
    })}\n`,
  );
});
server.listen(Number(values.port), '127.0.0.1', () => {
  process.stdout.write(`legacy app on http://127.0.0.1:${server.address().port}\n`);
});
