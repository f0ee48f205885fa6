import { readFileSync } from 'node:fs';
import { build, type Histogram } from 'hdr-histogram-js';
import { PortcullisError } from '../errors.js';
import { Pool } from '../http-client.js';

export interface LoadtestInput {
  target: string;
  cert?: string;
  key?: string;
  ca?: string;
  servername?: string;
  jwt?: string;
  pathsFile?: string;
  method: string;
  /** Requests per second on an open-loop schedule; absent: closed loop, as fast as answered. */
  rate?: number;
  durationSeconds: number;
  connections: number;
  /** Per-request timeout, ms. */
  timeoutMs: number;
  json: boolean;
  progress: boolean;
}

/** What a latency histogram reports, in milliseconds. */
export interface LatencySummary {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

/** The `--json` document (and what the text report prints). */
export interface LoadtestReport {
  target: string;
  mode: 'open-loop' | 'closed-loop';
  rate: number | null;
  durationSeconds: number;
  connections: number;
  requests: {
    /** Requests the schedule asked for (open loop). */
    due: number;
    sent: number;
    completed: number;
    /** Still waiting when the run ended (given up after a grace period). */
    unfinished: number;
    /** Never sent because the backlog of due requests reached its bound. */
    skipped: number;
    errors: number;
  };
  /** Completed responses per second, over the duration (or longer, if answers came after it). */
  achievedRate: number;
  errors: Record<string, { count: number; example: string }>;
  /** Latency in ms: from when each request was due (open loop), or from when it was sent (closed loop). */
  latencyMs: { allowed: LatencySummary; denied: LatencySummary; other: LatencySummary };
  /** Authorization time a Portcullis reports in Server-Timing, µs (null when the target sends none). */
  authzMicros: LatencySummary | null;
  warnings: string[];
}

interface Target {
  method: string;
  path: string;
}

function readPaths(file: string | undefined, method: string): Target[] {
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
  const out: Target[] = [];
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

function readFlagFile(f: string | undefined, flag: string): string | undefined {
  if (f === undefined) return undefined;
  try {
    return readFileSync(f, 'utf8');
  } catch (err) {
    throw new PortcullisError(
      'ERR_USAGE',
      `${flag}: cannot read ${f} (${(err as NodeJS.ErrnoException).code})`,
    );
  }
}

const TIMING = /(?:^|,)\s*authz;(?:[^,]*;)?\s*dur=([0-9.]+)/;

/** Latencies in µs, 3 significant digits, up to an hour. */
function histogram(): Histogram {
  return build({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 3_600_000_000,
    numberOfSignificantValueDigits: 3,
  });
}

function summary(h: Histogram, unit: number): LatencySummary {
  const max = Math.round((h.maxValue / unit) * 1000) / 1000;
  // A percentile is the top of its HdrHistogram bucket, which can lie a hair above the true max.
  const at = (p: number): number =>
    Math.min(max, Math.round((h.getValueAtPercentile(p) / unit) * 1000) / 1000);
  return { count: h.totalCount, p50: at(50), p90: at(90), p99: at(99), p999: at(99.9), max };
}

/** The state of one run, shared by the request callbacks (one object, no closure per request). */
class Run {
  readonly pool: Pool;
  readonly targets: Target[];
  readonly headers: Record<string, string>;
  readonly timeoutMs: number;
  readonly allowed = histogram();
  readonly denied = histogram();
  readonly other = histogram();
  readonly authz = histogram();
  readonly errors = new Map<string, { count: number; example: string }>();
  sent = 0;
  completed = 0;
  /** performance.now() of the last completion. */
  lastCompletion = 0;
  errorCount = 0;
  outstanding = 0;
  next = 0;

  constructor(pool: Pool, targets: Target[], headers: Record<string, string>, timeoutMs: number) {
    this.pool = pool;
    this.targets = targets;
    this.headers = headers;
    this.timeoutMs = timeoutMs;
  }

  /** Sends the next request; `since` is when it counts from (its due time, or now). */
  async send(since: number): Promise<void> {
    const t = this.targets[this.next++ % this.targets.length] as Target;
    this.sent++;
    this.outstanding++;
    try {
      const res = await this.pool.request({
        path: t.path,
        method: t.method as 'GET',
        headers: this.headers,
        headersTimeout: this.timeoutMs,
        bodyTimeout: this.timeoutMs,
      });
      await res.body.dump();
      const micros = Math.max(1, Math.round((performance.now() - since) * 1000));
      const s = res.statusCode;
      (s >= 200 && s < 400 ? this.allowed : s === 401 || s === 403 ? this.denied : this.other).recordValue(
        micros,
      );
      const st = res.headers['server-timing'];
      const m = typeof st === 'string' ? TIMING.exec(st) : null;
      if (m !== null) this.authz.recordValue(Math.max(1, Math.round(Number(m[1]) * 1000)));
      this.completed++;
      this.lastCompletion = performance.now();
    } catch (err) {
      const e = err as Error & { code?: string; cause?: Error & { code?: string } };
      // undici wraps connection failures; the cause says what happened (ECONNREFUSED, a TLS error).
      const kind = e.cause?.code ?? e.code ?? e.name;
      if (kind === 'UND_ERR_DESTROYED' || kind === 'UND_ERR_CLOSED') return; // ended by us at the end
      this.errorCount++;
      const seen = this.errors.get(kind);
      if (seen === undefined) this.errors.set(kind, { count: 1, example: (e.cause ?? e).message });
      else seen.count++;
    } finally {
      this.outstanding--;
    }
  }
}

/**
 * `portcullis loadtest`: load against any running PEP, latency reported apart for allowed and
 * denied responses, plus the authorization time a Portcullis reports in Server-Timing.
 *
 * With --rate the schedule is an open loop, as wrk2's: request i is due at start + i/rate whatever
 * happened to the ones before, and its latency counts from when it was due. A slow server then
 * shows as growing latency (the queueing is measured) instead of as a lower request rate that hides
 * it (coordinated omission). The rate actually achieved is reported, with a warning when it falls
 * short. Latencies go into HdrHistograms (3 significant digits).
 */
export async function runLoadtest(input: LoadtestInput, out: (line: string) => void): Promise<number> {
  const report = await loadtest(input);
  if (input.json) out(JSON.stringify(report, null, 2));
  else printReport(report, out);
  return report.requests.completed === 0 ? 1 : 0;
}

/** The load run behind `portcullis loadtest`, returning its report (also used by `npm run bench`). */
export async function loadtest(input: LoadtestInput): Promise<LoadtestReport> {
  let url: URL;
  try {
    url = new URL(input.target);
  } catch {
    throw new PortcullisError('ERR_USAGE', `--target: "${input.target}" is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new PortcullisError('ERR_USAGE', `--target: "${input.target}" is not an http(s) URL`);
  const tls = url.protocol === 'https:';
  const pool = new Pool(url.origin, {
    connections: input.connections,
    pipelining: 1,
    connect: tls
      ? {
          cert: readFlagFile(input.cert, '--cert'),
          key: readFlagFile(input.key, '--key'),
          ca: readFlagFile(input.ca, '--ca'),
          servername: input.servername ?? url.hostname,
          timeout: input.timeoutMs,
        }
      : { timeout: input.timeoutMs },
  });
  const paths = readPaths(input.pathsFile, input.method);
  const targets = paths.length > 0 ? paths : [{ method: input.method, path: `${url.pathname}${url.search}` }];
  const headers: Record<string, string> =
    input.jwt === undefined ? {} : { authorization: `Bearer ${input.jwt}` };
  const run = new Run(pool, targets, headers, input.timeoutMs);
  const durationMs = input.durationSeconds * 1000;
  const progress =
    input.progress && process.stderr.isTTY === true ? setInterval(showProgress, 1000, run) : null;

  const start = performance.now();
  let due = 0;
  let skipped = 0;
  if (input.rate !== undefined) {
    const rate = input.rate;
    due = Math.floor(rate * input.durationSeconds);
    // Bounded backlog: ten seconds of requests (at least 10 000) may wait; past that they are skipped.
    const maxOutstanding = Math.max(10_000, rate * 10);
    let i = 0;
    await new Promise<void>((done) => {
      const tick = (): void => {
        const now = performance.now();
        while (i < due) {
          const dueAt = start + (i * 1000) / rate;
          if (dueAt > now) break;
          i++;
          if (run.outstanding >= maxOutstanding) {
            skipped++;
            continue;
          }
          void run.send(dueAt);
        }
        if (i >= due) done();
        else setTimeout(tick, Math.max(0, start + (i * 1000) / rate - performance.now()));
      };
      tick();
    });
  } else {
    const end = start + durationMs;
    const worker = async (): Promise<void> => {
      while (performance.now() < end) await run.send(performance.now());
    };
    const workers: Promise<void>[] = [];
    for (let c = 0; c < input.connections; c++) workers.push(worker());
    await Promise.all(workers);
  }
  // Let what is still in flight finish (it was due within the duration), within a grace period.
  const graceEnd = performance.now() + Math.min(2_000, input.timeoutMs);
  while (run.outstanding > 0 && performance.now() < graceEnd) await new Promise((r) => setTimeout(r, 20));
  const unfinished = run.outstanding;
  if (progress !== null) {
    clearInterval(progress);
    process.stderr.write('\n');
  }
  await pool.destroy();

  // Over the time the completions took: the duration, or longer when answers came in the grace period.
  const elapsedS = Math.max(input.durationSeconds, (run.lastCompletion - start) / 1000);
  const achieved = Math.round((run.completed / elapsedS) * 10) / 10;
  const warnings: string[] = [];
  if (input.rate !== undefined && achieved < input.rate * 0.95 && run.errorCount < run.sent / 2) {
    warnings.push(
      `achieved ${achieved} req/s of the ${input.rate} req/s asked (${Math.round((achieved / input.rate) * 100)}%): the target, the connections (--connections ${input.connections}) or this machine could not keep up. Latency counts from when each request was due, so the queueing is in the figures.`,
    );
  }
  if (run.errorCount > 0) warnings.push(`${run.errorCount} requests failed; causes below`);
  if (skipped > 0) warnings.push(`${skipped} requests were not sent: the backlog of due requests was full`);
  const authz = run.authz.totalCount === 0 ? null : summary(run.authz, 1);
  const report: LoadtestReport = {
    target: input.target,
    mode: input.rate === undefined ? 'closed-loop' : 'open-loop',
    rate: input.rate ?? null,
    durationSeconds: input.durationSeconds,
    connections: input.connections,
    requests: { due, sent: run.sent, completed: run.completed, unfinished, skipped, errors: run.errorCount },
    achievedRate: achieved,
    errors: Object.fromEntries(run.errors),
    latencyMs: {
      allowed: summary(run.allowed, 1000),
      denied: summary(run.denied, 1000),
      other: summary(run.other, 1000),
    },
    authzMicros: authz,
    warnings,
  };
  return report;
}

function showProgress(run: Run): void {
  process.stderr.write(
    `\r  sent ${run.sent}  completed ${run.completed}  errors ${run.errorCount}  in flight ${run.outstanding}   `,
  );
}

function printReport(r: LoadtestReport, out: (line: string) => void): void {
  out(
    r.mode === 'open-loop'
      ? `open loop: ${r.rate} req/s for ${r.durationSeconds} s (${r.requests.due} requests due), ${r.connections} connections, against ${r.target}`
      : `closed loop: ${r.connections} connections, each sending as soon as the last answer came, for ${r.durationSeconds} s, against ${r.target}`,
  );
  out(
    `sent ${r.requests.sent}, completed ${r.requests.completed} (${r.achievedRate} req/s), unfinished at the end ${r.requests.unfinished}, errors ${r.requests.errors}${r.requests.skipped > 0 ? `, skipped ${r.requests.skipped}` : ''}`,
  );
  for (const w of r.warnings) out(`WARNING: ${w}`);
  const kinds = Object.entries(r.errors).sort((a, b) => b[1].count - a[1].count);
  for (const [kind, e] of kinds) out(`  error ${kind} × ${e.count}: ${e.example}`);
  out('');
  out(
    r.mode === 'open-loop'
      ? 'latency, ms, from when each request was due (coordinated omission corrected):'
      : 'latency, ms, from when each request was sent (a closed loop understates queueing; use --rate for latency figures):',
  );
  out('| responses | count | p50 | p90 | p99 | p99.9 | max |');
  out('|---|---:|---:|---:|---:|---:|---:|');
  for (const [name, s] of [
    ['allowed (2xx/3xx)', r.latencyMs.allowed],
    ['denied (401/403)', r.latencyMs.denied],
    ['other', r.latencyMs.other],
  ] as const) {
    if (s.count > 0) out(`| ${name} | ${s.count} | ${s.p50} | ${s.p90} | ${s.p99} | ${s.p999} | ${s.max} |`);
    else if (name !== 'other') out(`| ${name} | 0 | – | – | – | – | – |`);
  }
  out('');
  const a = r.authzMicros;
  out(
    a === null
      ? 'authorization time: not reported (the target sends no Server-Timing authz entry; for Portcullis set serverTiming: true)'
      : `authorization time (Server-Timing), µs: p50 ${a.p50}, p99 ${a.p99}, p99.9 ${a.p999}, max ${a.max} over ${a.count} responses`,
  );
}
