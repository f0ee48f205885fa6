// Stands in for an old intranet app with no login of its own: it trusts the X-Forwarded-User and
// X-Forwarded-Email headers Portcullis sets after a person logged in (and removes from anyone else).
//
//   node legacy-app.mjs [--port 8080]
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { port: { type: 'string', default: '8080' } } });
const html = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const server = http.createServer((req, res) => {
  const who = req.headers['x-forwarded-user'] ?? '(nobody)';
  const email = req.headers['x-forwarded-email'] ?? '';
  const page = req.url?.startsWith('/admin') ? 'Administration' : 'Intranet';
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(
    `<!doctype html><title>${page}</title><h1>${page}</h1><p>Hello ${html(who)} ${html(email)}</p>` +
      `<p><a href="/admin/">Administration</a> · <a href="/.portcullis/logout">Log out</a></p>\n`,
  );
});
server.listen(Number(values.port), '127.0.0.1', () => {
  console.log(`legacy app at http://127.0.0.1:${server.address().port}`);
});
process.on('SIGTERM', () => process.exit(0));
