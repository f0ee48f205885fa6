// The service behind every target: answers a small JSON body at once. Run as its own process so
// that the load generator and the proxies do not share its event loop.
import http from 'node:http';

const body = Buffer.from('{"ok":true,"service":"bench-upstream"}\n');
const server = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
    res.end(body);
  });
});
server.keepAliveTimeout = 65_000;
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  process.stdout.write(`ready ${server.address().port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
