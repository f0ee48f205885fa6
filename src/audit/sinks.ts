import { type FileHandle, open, rename, stat } from 'node:fs/promises';
import { promisify } from 'node:util';
import { gzip as gzipCb } from 'node:zlib';
import type { Logger } from 'pino';
import { request } from '../http-client.js';

const gzip = promisify(gzipCb);

export interface SinkCounters {
  readonly name: string;
  readonly written: number;
  readonly dropped: number;
  readonly buffered: number;
  readonly failures: number;
}

/**
 * A destination for audit events with its own bounded buffer. The request path calls `offer`,
 * which only appends a line (or counts a drop when the buffer is full); delivery happens later,
 * in batches, off the request path. A batch leaves the buffer only once delivered, so events
 * buffered while a destination is down arrive when it recovers — and new ones are dropped (and
 * counted) only once the buffer is full. Requests never wait on, or fail because of, a sink.
 */
export abstract class Sink implements SinkCounters {
  readonly name: string;
  written = 0;
  dropped = 0;
  failures = 0;
  protected readonly log: Logger;
  private readonly queue: string[] = [];
  private readonly capacity: number;
  private readonly batchSize: number;
  private pumping: Promise<void> | null = null;
  private retryDelayMs = 0;
  private readonly maxRetryDelayMs: number;
  private closing = false;
  private deadline = Number.POSITIVE_INFINITY;
  /** How long the first event of a batch waits for others before the batch is written. */
  private readonly lingerMs: number;
  /** Ends the linger early (a full batch, or a flush); null when the pump is not lingering. */
  private wake: (() => void) | null = null;
  private lingerTimer: NodeJS.Timeout | null = null;
  private readonly onWake = (): void => {
    // A linger ended early must not leave its timer to end the next one early too.
    if (this.lingerTimer !== null) clearTimeout(this.lingerTimer);
    this.lingerTimer = null;
    const w = this.wake;
    this.wake = null;
    w?.();
  };

  constructor(
    name: string,
    capacity: number,
    batchSize: number,
    maxRetryDelayMs: number,
    lingerMs: number,
    log: Logger,
  ) {
    this.name = name;
    this.capacity = capacity;
    this.batchSize = batchSize;
    this.maxRetryDelayMs = maxRetryDelayMs;
    this.lingerMs = lingerMs;
    this.log = log;
  }

  get buffered(): number {
    return this.queue.length;
  }

  offer(line: string): void {
    if (this.queue.length >= this.capacity) {
      this.dropped++;
      return;
    }
    this.queue.push(line);
    if (this.pumping === null) this.pumping = this.pump();
    else if (this.wake !== null && this.queue.length >= this.batchSize) this.onWake();
  }

  /** Writes out one batch; throws when the destination did not take it. */
  protected abstract deliver(batch: readonly string[]): Promise<void>;

  private async pump(): Promise<void> {
    // Linger: at a steady rate, writing each event as it comes costs a thread-pool write and two
    // thread wake-ups per request; waiting a few milliseconds for the events that follow turns a
    // thousand writes a second into a few dozen. A full batch or a flush ends the wait. Even with
    // no linger, let the request that queued the first event finish before any I/O starts.
    if (this.lingerMs > 0 && !this.closing && this.queue.length < this.batchSize) {
      await new Promise<void>((r) => {
        this.wake = r;
        this.lingerTimer = setTimeout(this.onWake, this.lingerMs).unref();
      });
    } else {
      await new Promise<void>((r) => setImmediate(r));
    }
    while (this.queue.length > 0) {
      const batch = this.queue.slice(0, this.batchSize);
      try {
        await this.deliver(batch);
        this.queue.splice(0, batch.length);
        this.written += batch.length;
        this.retryDelayMs = 0;
      } catch (err) {
        this.failures++;
        this.retryDelayMs = Math.min(
          this.maxRetryDelayMs,
          this.retryDelayMs === 0 ? 100 : this.retryDelayMs * 2,
        );
        this.log.warn(
          {
            sink: this.name,
            err: (err as Error).message,
            buffered: this.queue.length,
            retryInMs: this.retryDelayMs,
          },
          'audit sink delivery failed',
        );
        if (this.closing && Date.now() + this.retryDelayMs > this.deadline) break;
        await new Promise<void>((r) => setTimeout(r, this.retryDelayMs).unref());
      }
    }
    this.pumping = null;
  }

  /** Resolves once everything buffered so far is delivered (or the time box runs out). */
  async flush(timeoutMs: number): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (this.queue.length > 0 && Date.now() < end) {
      if (this.pumping === null) this.pumping = this.pump();
      else this.onWake();
      await Promise.race([
        this.pumping,
        new Promise((r) => setTimeout(r, Math.max(1, end - Date.now())).unref()),
      ]);
    }
  }

  async close(timeoutMs: number): Promise<void> {
    this.closing = true;
    this.deadline = Date.now() + timeoutMs;
    await this.flush(timeoutMs);
    if (this.queue.length > 0) {
      this.log.error(
        { sink: this.name, lost: this.queue.length },
        'audit sink could not deliver everything before shutdown',
      );
    }
    await this.release();
  }

  protected async release(): Promise<void> {}
}

/** Errors on stdout (a closed pipe) must not crash the proxy: count them as failed deliveries. */
let stdoutGuarded = false;
function guardStdout(): void {
  if (stdoutGuarded) return;
  stdoutGuarded = true;
  process.stdout.on('error', () => undefined);
}

export class StdoutSink extends Sink {
  protected deliver(batch: readonly string[]): Promise<void> {
    guardStdout();
    return new Promise((resolve, reject) => {
      if (process.stdout.destroyed || !process.stdout.writable) {
        reject(new Error('stdout is closed'));
        return;
      }
      // The write callback fires once the data is handed to the OS (or failed): backpressure and errors in one place.
      process.stdout.write(`${batch.join('\n')}\n`, (err) => (err ? reject(err) : resolve()));
    });
  }
}

/** An NDJSON file, rotated by size: `file` → `file.1` → … → `file.<keep>` (the oldest is removed). */
export class FileSink extends Sink {
  private readonly path: string;
  private readonly maxBytes: number;
  private readonly keep: number;
  private handle: FileHandle | null = null;
  private size = 0;

  constructor(
    name: string,
    path: string,
    maxBytes: number,
    keep: number,
    capacity: number,
    lingerMs: number,
    log: Logger,
  ) {
    super(name, capacity, 1000, 5_000, lingerMs, log);
    this.path = path;
    this.maxBytes = maxBytes;
    this.keep = keep;
  }

  private async openFile(): Promise<FileHandle> {
    if (this.handle !== null) return this.handle;
    this.handle = await open(this.path, 'a', 0o640);
    this.size = (await stat(this.path)).size;
    return this.handle;
  }

  private async rotate(): Promise<void> {
    await this.handle?.close();
    this.handle = null;
    for (let i = this.keep - 1; i >= 1; i--) {
      await rename(`${this.path}.${i}`, `${this.path}.${i + 1}`).catch(() => undefined);
    }
    await rename(this.path, `${this.path}.1`).catch(() => undefined);
    this.size = 0;
  }

  protected async deliver(batch: readonly string[]): Promise<void> {
    const text = `${batch.join('\n')}\n`;
    const bytes = Buffer.byteLength(text);
    let h = await this.openFile();
    if (this.size > 0 && this.size + bytes > this.maxBytes) {
      await this.rotate();
      h = await this.openFile();
    }
    await h.write(text);
    this.size += bytes;
  }

  protected override async release(): Promise<void> {
    await this.handle?.close();
    this.handle = null;
  }
}

/** Batches POSTed as NDJSON (gzip by default) to a collector, with a timeout and retry with backoff. */
export class HttpSink extends Sink {
  private readonly url: string;
  private readonly timeoutMs: number;
  private readonly gzip: boolean;
  private readonly headers: Readonly<Record<string, string>>;

  constructor(
    name: string,
    opts: {
      url: string;
      timeoutMs: number;
      gzip: boolean;
      batchSize: number;
      maxRetryDelayMs: number;
      headers: Record<string, string>;
    },
    capacity: number,
    lingerMs: number,
    log: Logger,
  ) {
    super(name, capacity, opts.batchSize, opts.maxRetryDelayMs, lingerMs, log);
    this.url = opts.url;
    this.timeoutMs = opts.timeoutMs;
    this.gzip = opts.gzip;
    this.headers = opts.headers;
  }

  protected async deliver(batch: readonly string[]): Promise<void> {
    const text = Buffer.from(`${batch.join('\n')}\n`);
    const body = this.gzip ? await gzip(text) : text;
    const headers: Record<string, string> = { ...this.headers, 'content-type': 'application/x-ndjson' };
    if (this.gzip) headers['content-encoding'] = 'gzip';
    const res = await request(this.url, {
      method: 'POST',
      body,
      headers,
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    await res.body.dump();
    if (res.statusCode < 200 || res.statusCode >= 300)
      throw new Error(`collector answered HTTP ${res.statusCode}`);
  }
}

/**
 * A cluster worker's audit sink: batches go to the primary process over the IPC channel, where
 * the configured sinks are (one writer per file or collector, however many workers). A batch is
 * delivered once the channel has taken it; a worker whose primary is gone counts failures.
 */
export class PrimarySink extends Sink {
  protected deliver(batch: readonly string[]): Promise<void> {
    return new Promise((resolve, reject) => {
      if (process.send === undefined || !process.connected) {
        reject(new Error('no IPC channel to the primary process'));
        return;
      }
      process.send({ type: 'portcullis:audit', lines: batch }, (err: Error | null) =>
        err ? reject(err) : resolve(),
      );
    });
  }
}
