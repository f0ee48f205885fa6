import { readFileSync } from 'node:fs';
import autocannon from 'autocannon';
import { PortcullisError } from '../errors.js';

export interface LoadtestInput {
  target: string;
  cert?: string;
  key?: string;
  ca?: string;
  servername?: string;
  jwt?: string;
  pathsFile?: string;
  method: string;
  rate?: number;
  durationSeconds: number;
  connections: number;
  progress: boolean;
}

interface Summary {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

function summarize(xs: number[]): Summary {
  if (xs.length === 0) return { count: 0, p50: 0, p90: 0, p99: 0, max: 0 };
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * s.length))] as number;
  return { count: s.length, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: s[s.length - 1] as number };
}

function readPaths(file: string | undefined, method: string): { method: string; path: string }[] {
  if (file === undefined) return [];
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new PortcullisError(
      'ERR_USAGE',
      `--paths: cannot read ${file} (${(err as NodeJS.ErrnoException).code})`,
    );
  }
  const out: { method: string; path: string }[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(?:([A-Z]+)\s+)?(\/\S*)$/.exec(line);
    if (m === null) throw new PortcullisError('ERR_USAGE', `--paths: "${line}" is not "[METHOD] /path"`);
    out.push({ method: m[1] ?? method, path: m[2] as string });
  }
  if (out.length === 0) throw new PortcullisError('ERR_USAGE', `--paths: ${file} holds no path`);
  return out;
}

const TIMING = /(?:^|,)\s*authz;(?:[^,]*;)?\s*dur=([0-9.]+)/;

/**
 * `portcullis loadtest`: drives autocannon against any running PEP and reports latency separately
 * for allowed and denied requests, plus the authorization time a Portcullis reports in
 * Server-Timing. With --rate it sends at a fixed rate, which is what latency figures need: a
 * closed loop at full speed measures mostly its own queue (coordinated omission).
 */
export async function runLoadtest(input: LoadtestInput, out: (line: string) => void): Promise<number> {
  let url: URL;
  try {
    url = new URL(input.target);
  } catch {
    throw new PortcullisError('ERR_USAGE', `--target: "${input.target}" is not a URL`);
  }
  const read = (f: string | undefined, flag: string): string | undefined => {
    if (f === undefined) return undefined;
    try {
      return readFileSync(f, 'utf8');
    } catch (err) {
      throw new PortcullisError(
        'ERR_USAGE',
        `${flag}: cannot read ${f} (${(err as NodeJS.ErrnoException).code})`,
      );
    }
  };
  const headers: Record<string, string> =
    input.jwt === undefined ? {} : { authorization: `Bearer ${input.jwt}` };
  const allowed: number[] = [];
  const denied: number[] = [];
  const other: number[] = [];
  const authz: number[] = [];
  const paths = readPaths(input.pathsFile, input.method);
  const onResponse = (
    _status: number,
    _body: string,
    _ctx: unknown,
    h: Record<string, string | string[]>,
  ): void => {
    const st = h['server-timing'];
    const v = typeof st === 'string' ? TIMING.exec(st) : null;
    if (v !== null) authz.push(Number(v[1]) * 1000);
  };
  const requests =
    paths.length > 0
      ? paths.map((p) => ({ method: p.method, path: p.path, headers, onResponse }))
      : [{ method: input.method, path: `${url.pathname}${url.search}`, headers, onResponse }];
  const tls = url.protocol === 'https:';
  const opts = {
    url: `${url.protocol}//${url.host}`,
    connections: input.rate !== undefined ? Math.min(input.connections, input.rate) : input.connections,
    duration: input.durationSeconds,
    requests,
    ...(input.rate !== undefined ? { overallRate: input.rate } : {}),
    ...(tls
      ? {
          tlsOptions: {
            cert: read(input.cert, '--cert'),
            key: read(input.key, '--key'),
            ca: read(input.ca, '--ca'),
            servername: input.servername ?? url.hostname,
          },
        }
      : {}),
  };
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    // With a callback autocannon returns its instance, which emits each response with its latency.
    const instance = autocannon(opts as autocannon.Options, (err, res) => (err ? reject(err) : resolve(res)));
    instance.on('response', (_client, status, _bytes, ms) => {
      if (status >= 200 && status < 400) allowed.push(ms);
      else if (status === 401 || status === 403) denied.push(ms);
      else other.push(ms);
    });
    if (input.progress)
      autocannon.track(instance, {
        renderProgressBar: true,
        renderResultsTable: false,
        renderLatencyTable: false,
      });
  });

  out(
    `${input.rate === undefined ? 'closed loop' : `fixed rate ${input.rate} req/s`}, ${opts.connections} connections, ${input.durationSeconds}s against ${url.origin}`,
  );
  out(
    `requests: ${result.requests.total} (${Math.round(result.requests.average)} req/s), errors ${result.errors}, timeouts ${result.timeouts}`,
  );
  out('');
  out('| responses | count | p50 ms | p90 ms | p99 ms | max ms |');
  out('|---|---:|---:|---:|---:|---:|');
  for (const [name, xs] of [
    ['allowed (2xx/3xx)', allowed],
    ['denied (401/403)', denied],
    ['other', other],
  ] as const) {
    const s = summarize(xs);
    if (s.count > 0 || name !== 'other')
      out(`| ${name} | ${s.count} | ${s.p50} | ${s.p90} | ${s.p99} | ${s.max} |`);
  }
  const a = summarize(authz);
  out('');
  out(
    a.count === 0
      ? 'authorization time: not reported (the target sends no Server-Timing authz entry; for Portcullis set serverTiming: true)'
      : `authorization time (Server-Timing): p50 ${a.p50.toFixed(1)} µs, p99 ${a.p99.toFixed(1)} µs over ${a.count} responses`,
  );
  return result.errors > 0 && result.requests.total === 0 ? 1 : 0;
}
