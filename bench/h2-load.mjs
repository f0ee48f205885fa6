// A closed-loop HTTP/2 load driver on node:http2: `concurrency` requests in flight, spread over
// `sessions` TLS connections, for `seconds`, latency in an HdrHistogram. Debian's h2load cannot
// present a client certificate, so it cannot drive a STRICT listener; this driver can, and it
// drives a bare HTTP/2 server in the same run, which keeps its own cost visible.
import http2 from 'node:http2';
import hdr from 'hdr-histogram-js';

/** `tls`: { ca, cert, key, servername }; `headers`: extra request headers (e.g. authorization). */
export async function h2Load(origin, tls, { seconds, concurrency, sessions = 4, path, headers = {} }) {
  const open = () =>
    new Promise((resolve, reject) => {
      const s = http2.connect(origin, { ...tls, settings: { enablePush: false } });
      s.once('remoteSettings', () => resolve(s));
      s.once('error', reject);
    });
  const pool = await Promise.all(Array.from({ length: sessions }, open));
  const hist = hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 60_000_000,
    numberOfSignificantValueDigits: 3,
  });
  const request = { ':method': 'GET', ':path': path, ':authority': 'localhost', ...headers };
  let ok = 0;
  let errors = 0;
  let non2xx = 0;
  const one = (session) =>
    new Promise((resolve) => {
      const t0 = performance.now();
      const s = session.request(request, { endStream: true });
      let status = 0;
      s.on('response', (h) => {
        status = Number(h[':status']);
      });
      s.on('data', () => {});
      s.on('end', () => {
        if (status >= 200 && status < 300) {
          ok++;
          hist.recordValue(Math.max(1, Math.round((performance.now() - t0) * 1000)));
        } else non2xx++;
        resolve();
      });
      s.on('error', () => {
        errors++;
        resolve();
      });
    });
  let end = 0;
  const worker = async (i) => {
    const session = pool[i % pool.length];
    while (performance.now() < end) await one(session);
  };
  // Warm-up: let the JIT settle and the proxy's caches fill before timing.
  end = performance.now() + 1000;
  await Promise.all(Array.from({ length: concurrency }, (_, i) => worker(i)));
  ok = 0;
  errors = 0;
  non2xx = 0;
  hist.reset();
  const t0 = performance.now();
  end = t0 + seconds * 1000;
  await Promise.all(Array.from({ length: concurrency }, (_, i) => worker(i)));
  const elapsed = (performance.now() - t0) / 1000;
  for (const s of pool) s.close();
  return {
    reqPerSec: Math.round(ok / elapsed),
    p50: hist.getValueAtPercentile(50) / 1000,
    p99: hist.getValueAtPercentile(99) / 1000,
    errors,
    non2xx,
  };
}
