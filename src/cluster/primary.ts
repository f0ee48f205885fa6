import cluster, { type Worker } from 'node:cluster';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import AggregatorRegistry from 'prom-client/lib/cluster.js';
import { registerSinkMetrics } from '../admin/metrics.js';
import { Counter, Gauge, Registry } from '../admin/prom.js';
import { AdminServer, type AdminStatus } from '../admin/server.js';
import { AuditLog } from '../audit/log.js';
import { DpopReplayCache } from '../authn/dpop.js';
import type { Explanation } from '../authz/explain.js';
import { formatHostPort } from '../config/address.js';
import type { Config } from '../config/load.js';
import { isToPrimary, type Query, type ToPrimary, type ToWorker } from './messages.js';

/** How long the primary waits for a worker to answer a query (a busy worker answers late). */
const QUERY_TIMEOUT_MS = 2_000;
/** A worker that stayed up this long and then crashed restarts at once (its crash count is reset). */
const STABLE_MS = 30_000;
const MAX_RESTART_DELAY_MS = 5_000;

interface Slot {
  worker: Worker;
  started: boolean;
  startedAt: number;
}

interface Pending {
  resolve(value: unknown): void;
  timer: NodeJS.Timeout;
}

/**
 * The cluster primary (`workers` > 1): forks the workers, which share the listening ports through
 * it, and does what must happen once per host rather than once per process — the admin endpoints
 * (readiness only when every worker is ready; metrics summed over the workers; status of each),
 * the audit stream (workers hand their events over; one writer per file or collector), the DPoP
 * replay cache (a proof is accepted once by the cluster, not once per worker), restarting
 * a crashed worker (counted), passing SIGHUP on, and draining every worker on SIGTERM.
 * It never handles a request itself.
 */
export class ClusterPrimary implements AdminStatus {
  private readonly config: Config;
  private readonly log: Logger;
  private readonly slots = new Map<number, Slot>();
  private readonly pending = new Map<number, Pending>();
  private readonly audit: AuditLog | null;
  private readonly registry = new Registry();
  /** DPoP proof ids for the whole cluster: a proof is accepted once, whichever worker gets it. */
  private readonly dpopReplays = new DpopReplayCache();
  private admin: AdminServer | null = null;
  private nextId = 1;
  private everStarted = false;
  /** Settles start(): once every worker has said it is serving, or when the primary stops first. */
  private starting: { resolve(): void; reject(err: Error): void } | null = null;
  private stopping = false;
  private restarts = 0;
  private consecutiveCrashes = 0;
  /** Resolves with the exit code once the primary has stopped (or failed to start). */
  readonly done: Promise<number>;
  private finish: (code: number) => void = () => undefined;

  constructor(config: Config, log: Logger) {
    this.config = config;
    this.log = log;
    this.audit = config.audit === null ? null : new AuditLog(config.audit, log);
    this.done = new Promise((r) => {
      this.finish = r;
    });
    const registers = [this.registry];
    const slots = this.slots;
    new Gauge({
      name: 'portcullis_workers',
      help: 'Worker processes running now (cluster mode).',
      registers,
      collect() {
        this.set(slots.size);
      },
    });
    const self = this;
    new Counter({
      name: 'portcullis_worker_restarts_total',
      help: 'Workers restarted after they exited unexpectedly (cluster mode).',
      registers,
      collect() {
        this.reset();
        this.inc(self.restarts);
      },
    });
    if (this.audit !== null) registerSinkMetrics(this.registry, () => this.audit?.sinks ?? []);
  }

  /** Forks the workers; resolves once every one of them is serving (or throws if one could not start). */
  async start(): Promise<void> {
    cluster.on('message', (worker: Worker, m: unknown) => {
      if (isToPrimary(m)) this.onMessage(worker, m);
    });
    cluster.on('exit', (worker: Worker, code: number | null, signal: string | null) =>
      this.onExit(worker, code, signal),
    );
    // The admin port first: if it cannot be had, nothing is forked (readiness is 503 until every
    // worker is serving).
    if (this.config.admin !== null) {
      this.admin = new AdminServer(this.config.admin.address, this);
      const addr = await this.admin.listen();
      this.log.info({ address: formatHostPort({ host: addr.address, port: addr.port }) }, 'admin listening');
    }
    for (let i = 0; i < this.config.workers; i++) this.fork();
    const allStarted = new Promise<void>((resolve, reject) => {
      this.starting = { resolve, reject };
    });
    await allStarted;
    this.log.info({ workers: this.config.workers }, 'ready');
  }

  private fork(): void {
    const worker = cluster.fork();
    this.slots.set(worker.id, { worker, started: false, startedAt: Date.now() });
  }

  private onMessage(worker: Worker, m: ToPrimary): void {
    if (m.type === 'portcullis:dpop') {
      const fresh = this.dpopReplays.record(m.key, m.expiresAt, Date.now()) === 'fresh';
      this.send(worker, { type: 'portcullis:dpop-seen', id: m.id, fresh });
    } else if (m.type === 'portcullis:audit') {
      const sinks = this.audit?.sinks ?? [];
      for (const line of m.lines) for (const s of sinks) s.offer(line);
    } else if (m.type === 'portcullis:started') {
      const slot = this.slots.get(worker.id);
      if (slot !== undefined) slot.started = true;
      this.everStarted = true;
      const all = this.slots.size === this.config.workers && [...this.slots.values()].every((x) => x.started);
      if (all && this.starting !== null) {
        this.starting.resolve();
        this.starting = null;
      }
    } else {
      const p = this.pending.get(m.id);
      if (p === undefined) return;
      this.pending.delete(m.id);
      clearTimeout(p.timer);
      p.resolve(m.value);
    }
  }

  private onExit(worker: Worker, code: number | null, signal: string | null): void {
    const slot = this.slots.get(worker.id);
    this.slots.delete(worker.id);
    if (this.stopping || slot === undefined) return;
    if (!slot.started && !this.everStarted) {
      // The first workers cannot start (a port in use, a file they cannot read): restarting would
      // only fail again. Stop the others and exit with an error.
      this.log.error({ pid: worker.process.pid, code, signal }, 'a worker could not start; stopping');
      void this.stop(1);
      return;
    }
    this.restarts++;
    this.consecutiveCrashes = Date.now() - slot.startedAt > STABLE_MS ? 1 : this.consecutiveCrashes + 1;
    const delay = Math.min(MAX_RESTART_DELAY_MS, 100 * 2 ** (this.consecutiveCrashes - 1));
    this.log.error(
      { pid: worker.process.pid, code, signal, restartInMs: delay, restarts: this.restarts },
      'worker exited unexpectedly; starting another',
    );
    setTimeout(() => {
      if (!this.stopping) this.fork();
    }, delay);
  }

  private send(worker: Worker, m: ToWorker): void {
    if (worker.isConnected()) worker.send(m);
  }

  /** Asks every running worker; a worker that does not answer in time counts as null. */
  private queryAll(what: Query): Promise<unknown[]> {
    return Promise.all([...this.slots.values()].map((s) => this.ask(s.worker, what)));
  }

  private ask(worker: Worker, what: Query | { reload: string } | { explain: string }): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        resolve(null);
      }, QUERY_TIMEOUT_MS);
      this.pending.set(id, { resolve, timer });
      if (typeof what === 'string') this.send(worker, { type: 'portcullis:query', id, what });
      else if ('reload' in what) this.send(worker, { type: 'portcullis:reload', id, reason: what.reload });
      else this.send(worker, { type: 'portcullis:explain', id, requestId: what.explain });
    });
  }

  /** SIGHUP: every worker reloads; each keeps its last good state if its reload fails. */
  async reload(reason: string): Promise<void> {
    const slots = [...this.slots.values()];
    const results = await Promise.all(slots.map((s) => this.ask(s.worker, { reload: reason })));
    const failed = results.filter((r) => r !== true).length;
    if (failed === 0) this.log.info({ reason, workers: slots.length }, 'every worker reloaded');
    else
      this.log.error(
        { reason, failed, workers: slots.length },
        'reload failed in some workers; they keep their last good configuration',
      );
  }

  get live(): boolean {
    return !this.stopping && this.slots.size > 0;
  }

  /** Ready when every configured worker is running and says it is ready. */
  get ready(): Promise<boolean> {
    if (this.stopping || this.slots.size < this.config.workers) return Promise.resolve(false);
    return this.queryAll('ready').then((rs) => rs.length > 0 && rs.every((r) => r === true));
  }

  async statusJson(): Promise<unknown> {
    const workers = await this.queryAll('status');
    return {
      ready: await this.ready,
      cluster: { workers: this.config.workers, running: this.slots.size, restarts: this.restarts },
      audit: this.audit?.status() ?? null,
      workers,
    };
  }

  /** Every worker's metrics summed (timestamps and key counts: the minimum), plus the primary's own. */
  async metricsText(): Promise<{ contentType: string; body: string }> {
    const own = await this.registry.getMetricsAsJSON();
    const fromWorkers = (await this.queryAll('metrics')).filter((m): m is typeof own => Array.isArray(m));
    const merged = AggregatorRegistry.aggregate([...fromWorkers, own]);
    return { contentType: merged.contentType, body: await merged.metrics() };
  }

  /** Each worker keeps its own recent decisions: the request was served by one of them. */
  async explainDecisions(requestId: string): Promise<Explanation[]> {
    const answers = await Promise.all(
      [...this.slots.values()].map((s) => this.ask(s.worker, { explain: requestId })),
    );
    const found = answers.flatMap((a) => (Array.isArray(a) ? (a as Explanation[]) : []));
    return found.sort((x, y) => (x.time < y.time ? 1 : x.time > y.time ? -1 : 0));
  }

  adminAddress(): AddressInfo | null {
    return this.admin?.addressInfo() ?? null;
  }

  /**
   * Drains every worker (each finishes its requests within shutdown.drainTimeout and hands over its
   * last audit events), then writes out the audit stream and closes the admin server.
   */
  async stop(code = 0): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.starting?.reject(new Error('a worker could not start (its error is above)'));
    this.starting = null;
    const exited = [...this.slots.values()].map(
      (s) =>
        new Promise<void>((resolve) => {
          if (s.worker.isDead()) return resolve();
          s.worker.once('exit', () => resolve());
          this.send(s.worker, { type: 'portcullis:stop' });
        }),
    );
    const deadline = setTimeout(() => {
      for (const s of this.slots.values()) s.worker.process.kill('SIGKILL');
    }, this.config.shutdown.drainTimeout + 10_000);
    await Promise.all(exited);
    clearTimeout(deadline);
    await this.audit?.close(5_000);
    await this.admin?.close();
    this.log.info('stopped');
    this.finish(code);
  }
}
