import { createPrivateKey, X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { Config } from '../config/load.js';
import { ConfigError, errorMessage } from '../errors.js';
import { bundleOf, type TrustBundle, TrustBundleSet } from './bundle.js';
import { credentialsFromPem } from './credentials.js';
import {
  GRPC_PERMISSION_DENIED,
  GRPC_STATUS_NAMES,
  GrpcServerStream,
  type GrpcTarget,
  parseTarget,
} from './grpc-stream.js';
import { checkOwnSvid, type X509Material, type X509Source } from './source.js';
import { SpiffeId } from './spiffe-id.js';
import {
  decodeX509SvidResponse,
  encodeX509SvidRequest,
  splitDer,
  type X509SvidResponseMessage,
} from './workload-api-proto.js';

export interface WorkloadApiOptions {
  /** `unix:///path/to/agent.sock` or `tcp://127.0.0.1:8081` (SPIFFE Workload Endpoint §4). */
  readonly socket: string;
  /** Which SVID when several are served: the one with this hint; '' for the first. */
  readonly hint: string;
  /** The config: an SVID outside its trust domain, or not verifying with its bundle, is refused. */
  readonly config: Config;
}

/** The FetchX509SVID method of the SpiffeWorkloadAPI service (no proto package). */
const FETCH_X509_SVID = '/SpiffeWorkloadAPI/FetchX509SVID';
const MIN_BACKOFF_MS = 200;
const MAX_BACKOFF_MS = 30_000;

/**
 * The SPIFFE Workload API as an X.509 source: the `FetchX509SVID` server stream over gRPC
 * (grpc-stream.ts; a Unix socket to the SPIRE agent, usually), with the `workload.spiffe.io: true` metadata the endpoint
 * requires. Every message is the full state (Workload API §4.3, §4.4): the chosen SVID and the
 * bundles of its own domain and of every federated one, so a domain missing from a later message
 * is no longer trusted. A message that cannot be used (no SVID, a bad certificate or key, another
 * trust domain) is logged and discarded; the last good material stays. When the stream fails or
 * ends — the agent restarting, PermissionDenied before the workload is registered — it reconnects
 * with exponential backoff (0.2 s doubling to 30 s, with jitter), keeping the last SVID.
 *
 * Events: `update` (X509Material) for each usable message; `error` is never emitted (failures are
 * counted and logged instead).
 */
export class WorkloadApiSource extends EventEmitter implements X509Source {
  readonly options: WorkloadApiOptions;
  private readonly log: Logger;
  private readonly target: GrpcTarget;
  private call: GrpcServerStream | null = null;
  private latest: X509Material | null = null;
  private backoff = MIN_BACKOFF_MS;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  /** Epoch ms of the last usable update (0: none yet). */
  lastUpdate = 0;
  /** The last failure (stream error, or a message discarded), '' if none since the last update. */
  lastError = '';
  /** The server said PermissionDenied: this workload is not (or no longer) entitled to an SVID. */
  denied = false;
  updates = 0;
  failures = 0;

  constructor(options: WorkloadApiOptions, log: Logger) {
    super();
    this.options = options;
    this.log = log;
    this.target = parseTarget(options.socket);
    this.connect();
  }

  get description(): string {
    return `the Workload API at ${this.options.socket}`;
  }

  material(): X509Material {
    if (this.latest !== null) return this.latest;
    throw new ConfigError('ERR_CONFIG_INVALID', [
      {
        file: this.options.config.file,
        field: 'identity.workloadApi',
        message: `no X.509-SVID received from ${this.options.socket} yet${this.lastError === '' ? '' : ` (${this.lastError})`}`,
      },
    ]);
  }

  get withdrawn(): boolean {
    return this.denied;
  }

  watchedFiles(): string[] {
    return [];
  }

  async ready(timeoutMs: number): Promise<void> {
    await this.first(timeoutMs);
  }

  subscribe(onChange: () => void): void {
    this.on('update', onChange);
  }

  status(): unknown {
    return {
      socket: this.options.socket,
      lastUpdate: this.lastUpdate === 0 ? null : new Date(this.lastUpdate).toISOString(),
      updates: this.updates,
      failures: this.failures,
      lastError: this.lastError === '' ? null : this.lastError,
      permissionDenied: this.denied,
    };
  }

  /** Resolves with the first usable material; rejects after `timeoutMs` with the last error. */
  first(timeoutMs: number): Promise<X509Material> {
    const now = this.latest;
    if (now !== null) return Promise.resolve(now);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('update', onUpdate);
        reject(
          new Error(
            `no X.509-SVID from the Workload API at ${this.options.socket} within ${timeoutMs} ms${this.lastError === '' ? '' : `: ${this.lastError}`}`,
          ),
        );
      }, timeoutMs);
      const onUpdate = (m: X509Material): void => {
        clearTimeout(timer);
        resolve(m);
      };
      this.once('update', onUpdate);
    });
  }

  close(): void {
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    const call = this.call;
    this.call = null;
    call?.cancel();
  }

  private connect(): void {
    if (this.closed) return;
    // SPIFFE Workload Endpoint §5: the header that keeps a browser or a confused proxy from asking.
    const call = new GrpcServerStream(this.target, FETCH_X509_SVID, encodeX509SvidRequest(), {
      'workload.spiffe.io': 'true',
    });
    this.call = call;
    call.on('message', (m: Buffer) => {
      let decoded: X509SvidResponseMessage;
      try {
        decoded = decodeX509SvidResponse(m);
      } catch (err) {
        this.discard(`not a valid X509SVIDResponse: ${errorMessage(err)}`);
        return;
      }
      this.receive(decoded);
    });
    call.on('status', (code: number, details: string) => this.failed(call, code, details));
  }

  private discard(problem: string): void {
    this.failures++;
    this.lastError = `message discarded: ${problem}`;
    this.log.error({ socket: this.options.socket, problem }, 'Workload API update discarded');
  }

  private receive(m: X509SvidResponseMessage): void {
    let material: X509Material;
    try {
      material = this.materialOf(m);
    } catch (err) {
      this.failures++;
      this.lastError = `message discarded: ${errorMessage(err)}`;
      this.log.error(
        { socket: this.options.socket, problem: errorMessage(err) },
        'Workload API update discarded',
      );
      return;
    }
    this.latest = material;
    this.backoff = MIN_BACKOFF_MS;
    this.denied = false;
    this.lastError = '';
    this.lastUpdate = Date.now();
    this.updates++;
    this.emit('update', material);
  }

  private failed(call: GrpcServerStream, code: number, details: string): void {
    if (this.call !== call) return;
    this.call = null;
    if (this.closed) return;
    this.failures++;
    // A server stream does not end with OK while the agent runs; any end is a reason to reconnect.
    const why = `${GRPC_STATUS_NAMES[code] ?? code}: ${details === '' ? 'the stream ended' : details}`;
    this.denied = code === GRPC_PERMISSION_DENIED;
    this.lastError = why;
    const delay = Math.round(this.backoff * (0.8 + Math.random() * 0.4));
    this.backoff = Math.min(MAX_BACKOFF_MS, this.backoff * 2);
    this.log.warn(
      { socket: this.options.socket, problem: why, retryInMs: delay, holding: this.latest !== null },
      this.latest === null
        ? 'Workload API: no SVID yet; retrying'
        : 'Workload API stream lost; keeping the last SVID until it expires, retrying',
    );
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, delay);
  }

  /** The SVID to use (by hint, else the first) and the full bundle set, checked. */
  private materialOf(m: X509SvidResponseMessage): X509Material {
    if (m.svids.length === 0) throw new Error('the response holds no SVID');
    const hint = this.options.hint;
    const svid = hint === '' ? m.svids[0] : m.svids.find((s) => s.hint === hint);
    if (svid === undefined)
      throw new Error(
        `no SVID with hint "${hint}" (hints: ${m.svids.map((s) => JSON.stringify(s.hint)).join(', ')})`,
      );
    if (
      svid.spiffeId === '' ||
      svid.x509Svid.length === 0 ||
      svid.x509SvidKey.length === 0 ||
      svid.bundle.length === 0
    )
      throw new Error('a mandatory SVID field is empty');
    const chain = splitDer(svid.x509Svid).map((der) => new X509Certificate(der));
    const keyPem = createPrivateKey({ key: svid.x509SvidKey, format: 'der', type: 'pkcs8' })
      .export({ type: 'pkcs8', format: 'pem' })
      .toString();
    const credentials = credentialsFromPem(chain.map((c) => c.toString()).join(''), keyPem);
    if (credentials.spiffeId.id !== svid.spiffeId)
      throw new Error(`the certificate names ${credentials.spiffeId.id}, the message ${svid.spiffeId}`);
    const own = credentials.spiffeId.trustDomain;
    const trustDomain = this.options.config.trustDomain;
    if (own !== trustDomain)
      throw new Error(`the SVID ${svid.spiffeId} is not in trust domain "${trustDomain}"`);
    const bundles: TrustBundle[] = [
      bundleOf(
        own,
        splitDer(svid.bundle).map((der) => new X509Certificate(der)),
      ),
    ];
    for (const [key, der] of m.federatedBundles) {
      const td = SpiffeId.parse(key).trustDomain;
      if (td === own) continue; // the SVID's own bundle is authoritative for its domain
      try {
        bundles.push(
          bundleOf(
            td,
            splitDer(der).map((d) => new X509Certificate(d)),
          ),
        );
      } catch (err) {
        // One bad federated bundle does not cost the workload its own identity.
        this.log.error(
          { trustDomain: td, problem: errorMessage(err) },
          'federated bundle from the Workload API ignored',
        );
      }
    }
    const set = new TrustBundleSet(bundles);
    // Peers will verify it against its own domain's bundle: so must it.
    const problems = checkOwnSvid(this.options.config, credentials, set, 'identity.workloadApi', '');
    if (problems.length > 0) throw new Error((problems[0] as { message: string }).message);
    return { credentials, bundles: set };
  }
}
