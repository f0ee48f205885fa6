import type { Logger } from 'pino';
import type { ReplayGuard, ReplayVerdict } from '../authn/dpop.js';
import type { Config } from '../config/load.js';
import { errorMessage } from '../errors.js';
import { Portcullis } from '../proxy/portcullis.js';
import { isToWorker, type ToPrimary, type ToWorker } from './messages.js';

function send(m: ToPrimary): void {
  if (process.connected) process.send?.(m);
}

/** How long a worker waits for the primary's word on a DPoP proof before refusing it. */
const DPOP_CHECK_TIMEOUT_MS = 1_000;

/**
 * A worker's DPoP replay guard: the proof id goes to the primary, whose one cache serves every
 * worker — a proof is accepted once by the cluster. No answer in time (the primary gone or
 * stalled) is `unavailable`, and the request is refused: fail closed.
 */
export class PrimaryReplayGuard implements ReplayGuard {
  private readonly pending = new Map<number, { resolve(v: ReplayVerdict): void; timer: NodeJS.Timeout }>();
  private nextId = 1;

  record(key: string, expiresAt: number): Promise<ReplayVerdict> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        resolve('unavailable');
      }, DPOP_CHECK_TIMEOUT_MS);
      this.pending.set(id, { resolve, timer });
      if (process.connected)
        process.send?.({ type: 'portcullis:dpop', id, key, expiresAt } satisfies ToPrimary);
    });
  }

  settle(id: number, fresh: boolean): void {
    const p = this.pending.get(id);
    if (p === undefined) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    p.resolve(fresh ? 'fresh' : 'replayed');
  }
}

/**
 * A cluster worker: the whole proxy (listeners shared with the other workers through the primary's
 * handles), without an admin server and with its audit events sent to the primary. It answers the
 * primary's queries (readiness, status, metrics, decision explains), reloads when told, and drains and exits when told
 * to stop — or when the primary is gone. Signals go to the primary: a Ctrl-C that reaches the
 * whole process group is handled there, once.
 */
export async function runWorker(config: Config, log: Logger): Promise<number> {
  let proxy: Portcullis;
  const replayGuard = new PrimaryReplayGuard();
  // Answers to the guard's questions can come while the proxy is starting up, or any time after.
  process.on('message', (m: unknown) => {
    if (isToWorker(m) && m.type === 'portcullis:dpop-seen') replayGuard.settle(m.id, m.fresh);
  });
  try {
    proxy = await Portcullis.start(config, { logger: log, worker: true, replayGuard });
  } catch (err) {
    // The CLI prints the error and exits 1; the IPC channel must not keep this process alive.
    if (process.connected) process.disconnect();
    throw err;
  }
  send({ type: 'portcullis:started' });
  return new Promise<number>((resolveExit) => {
    let stopping = false;
    const stop = (why: string): void => {
      if (stopping) return;
      stopping = true;
      log.info({ why }, 'worker stopping');
      // Closing the IPC channel (once the last audit events went through it) lets the process end.
      proxy.close().then(
        () => {
          if (process.connected) process.disconnect();
          resolveExit(0);
        },
        (err: unknown) => {
          log.error({ err: errorMessage(err) }, 'worker shutdown failed');
          if (process.connected) process.disconnect();
          resolveExit(1);
        },
      );
    };
    const answer = async (m: ToWorker): Promise<void> => {
      if (m.type === 'portcullis:dpop-seen') return;
      if (m.type === 'portcullis:stop') return stop('told by the primary');
      if (m.type === 'portcullis:reload') {
        send({ type: 'portcullis:reply', id: m.id, value: proxy.reload(m.reason) });
        return;
      }
      if (m.type === 'portcullis:explain') {
        send({ type: 'portcullis:reply', id: m.id, value: proxy.explainDecisions(m.requestId) });
        return;
      }
      let value: unknown = null;
      if (m.what === 'ready') value = proxy.ready;
      else if (m.what === 'status') value = { pid: process.pid, ...(proxy.statusJson() as object) };
      else value = await proxy.metrics.registry.getMetricsAsJSON();
      send({ type: 'portcullis:reply', id: m.id, value });
    };
    process.on('message', (m: unknown) => {
      if (isToWorker(m)) void answer(m);
    });
    process.on('disconnect', () => stop('the primary process is gone'));
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => undefined);
    process.on('SIGHUP', () => undefined);
  });
}
