// A closed-loop gRPC load driver on @grpc/grpc-js: `concurrency` unary calls in flight for
// `seconds`, latency in an HdrHistogram. h2load cannot present a client certificate, so it cannot
// drive a STRICT listener; grpc-js can, and the same driver measures the service directly (h2c) in
// the same run, which makes the driver's own cost visible.
import * as grpc from '@grpc/grpc-js';
import hdr from 'hdr-histogram-js';

const id = (b) => b;

/** `creds`: grpc.credentials.createInsecure() or createSsl(ca, key, cert). */
export async function grpcLoad(address, creds, { seconds, concurrency, servername }) {
  const options = servername === undefined ? {} : { 'grpc.ssl_target_name_override': servername };
  const client = new grpc.Client(address, creds, options);
  const hist = hdr.build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 60_000_000,
    numberOfSignificantValueDigits: 3,
  });
  const payload = Buffer.from('ping');
  let ok = 0;
  let errors = 0;
  const end = performance.now() + seconds * 1000;
  const one = () =>
    new Promise((resolve) => {
      const t0 = performance.now();
      client.makeUnaryRequest('/bench.Echo/Echo', id, id, payload, (err) => {
        if (err) errors++;
        else {
          ok++;
          hist.recordValue(Math.max(1, Math.round((performance.now() - t0) * 1000)));
        }
        resolve();
      });
    });
  const worker = async () => {
    while (performance.now() < end) await one();
  };
  // Warm-up: connect and let the JIT settle before timing.
  for (let i = 0; i < 200; i++) await one();
  ok = 0;
  errors = 0;
  hist.reset();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  const elapsed = (performance.now() - t0) / 1000;
  client.close();
  return {
    callsPerSec: Math.round(ok / elapsed),
    p50: hist.getValueAtPercentile(50) / 1000,
    p99: hist.getValueAtPercentile(99) / 1000,
    errors,
  };
}
