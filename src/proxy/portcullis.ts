import type { AddressInfo } from 'node:net';
import pino, { type Logger } from 'pino';
import { DecisionRing } from '../admin/decisions.js';
import { Metrics } from '../admin/metrics.js';
import { AdminServer, type AdminStatus } from '../admin/server.js';
import { AuditLog } from '../audit/log.js';
import { DpopReplayCache, type ReplayGuard } from '../authn/dpop.js';
import { JwksRegistry, type JwksSource } from '../authn/jwks.js';
import { AssertionSigner, CookieSealer, LoginProvider, readSessionKey } from '../authn/login.js';
import { Authorizer } from '../authz/compile.js';
import type { Explanation } from '../authz/explain.js';
import { ExtAuthzClient } from '../authz/ext-authz.js';
import { formatHostPort } from '../config/address.js';
import type { Config, ListenerConfig } from '../config/load.js';
import { CREDENTIAL_HEADERS } from '../config/schema.js';
import { FolderWatcher } from '../config/watch.js';
import { ConfigError, errorMessage } from '../errors.js';
import { openSource, type X509Source } from '../identity/source.js';
import { PinnedHeaders } from './headers.js';
import { InboundListener } from './listener.js';
import { ObservabilitySubscriber, RequestObserver } from './observer.js';
import { OutboundForwarder, OutboundListener } from './outbound.js';
import { ListenerPlan, type Stage } from './plan.js';
import { loadSnapshot, type Snapshot } from './snapshot.js';
import { AuthzStage, CustomAuthzStage } from './stages/authz.js';
import { JwtStage } from './stages/jwt.js';
import { LoginStage } from './stages/login.js';
import { RegoStage } from './stages/rego.js';
import { RequestLineStage } from './stages/request-line.js';
import { Upstream } from './upstream.js';

const OUTBOUND_TOKEN_PARAMS: ReadonlySet<string> = new Set(['access_token']);
const NO_POLICIES = new Authorizer([]);

export interface StartOptions {
  /** A pino logger; by default on stderr at the config's log level and format. */
  logger?: Logger;
  /**
   * A cluster worker (`workers` > 1): the primary process serves the admin endpoints and writes
   * the audit stream, so this process opens no admin server and hands its audit events over IPC.
   */
  worker?: boolean;
  /** Where DPoP proof ids are remembered (a cluster worker asks the primary); this process by default. */
  replayGuard?: ReplayGuard;
}

export type LogFormat = 'auto' | 'json' | 'pretty';

/**
 * Logs on stderr: JSON lines for machines, or with `pretty` (and `auto` on a terminal) readable
 * lines through pino-pretty, which is loaded only then.
 */
export async function defaultLogger(level: string, format: LogFormat = 'auto'): Promise<Logger> {
  const opts = { level, base: { name: 'portcullis' } };
  const pretty = format === 'pretty' || (format === 'auto' && process.stderr.isTTY === true);
  if (!pretty) return pino(opts, pino.destination({ dest: 2, sync: true }));
  const { default: prettyStream } = await import('pino-pretty');
  return pino(
    opts,
    prettyStream({
      destination: 2,
      sync: true,
      colorize: process.stderr.isTTY === true,
      translateTime: 'SYS:HH:MM:ss.l',
      ignore: 'pid,hostname,name',
    }),
  );
}

/**
 * A running proxy: the current snapshot, the listeners serving it, the admin server and the file
 * watcher. Reloads build a complete new snapshot first and swap only if it loads; otherwise the
 * last good one stays in force and the error names file and field.
 */
export class Portcullis implements AdminStatus {
  readonly config: Config;
  readonly log: Logger;
  readonly listeners: InboundListener[] = [];
  /** The outbound listener and its forwarder, when the config has `outbound`. */
  outbound: OutboundListener | null = null;
  private outboundForwarder: OutboundForwarder | null = null;
  /** Where the SVID and bundles come from: files, or the SPIFFE Workload API. */
  private readonly source: X509Source;
  /** When the SVID in use was received or read (epoch ms). */
  private identityUpdated = Date.now();
  snapshot: Snapshot;
  private admin: AdminServer | null = null;
  private watcher: FolderWatcher | null = null;
  private readonly upstreams = new Map<string, Upstream>();
  /** Per listener with `login`: its provider, and the session key and sealer in force. */
  private readonly logins = new Map<
    string,
    {
      providers: ReadonlyMap<string, LoginProvider>;
      key: Uint8Array;
      sealer: CookieSealer;
      signer: AssertionSigner | null;
    }
  >();
  readonly jwks: JwksRegistry;
  /** External authorizers for CUSTOM policies, by provider name (from the config; fixed for the run). */
  readonly extAuthz: ReadonlyMap<string, ExtAuthzClient>;
  readonly metrics: Metrics;
  readonly audit: AuditLog | null;
  private readonly observer: RequestObserver;
  /** Metrics and audit, subscribed to this proxy's events. */
  private readonly subscriber: ObservabilitySubscriber;
  /** DPoP proofs seen, kept across reloads (a reload must not let a proof be used twice). */
  private readonly dpopReplays: ReplayGuard;
  /** Recent decisions for `/decisions/<id>` (null when `admin.decisions.size` is 0 or there is no admin). */
  readonly decisions: DecisionRing | null;
  private listening = false;
  private closing = false;
  private generation = 1;
  reloads = 0;
  reloadFailures = 0;

  private constructor(
    config: Config,
    snapshot: Snapshot,
    source: X509Source,
    log: Logger,
    worker: boolean,
    replayGuard: ReplayGuard,
  ) {
    this.dpopReplays = replayGuard;
    this.config = config;
    this.snapshot = snapshot;
    this.source = source;
    this.log = log;
    this.extAuthz = new Map(config.extensionProviders.map((p) => [p.name, new ExtAuthzClient(p)]));
    this.audit = config.audit === null ? null : new AuditLog(config.audit, log, worker);
    this.metrics = new Metrics({
      listeners: () => this.listeners,
      jwt: () => this.jwks.stats,
      sinks: () => this.audit?.sinks ?? [],
      keySets: () => this.jwks.list().map((k) => ({ id: keySetLabel(k.id), keys: k.keys().length })),
      certificateNotAfter: () => this.snapshot.credentials.notAfter,
      identityUpdated: () => this.identityUpdated,
      reloads: () => ({ success: this.reloads, failure: this.reloadFailures }),
    });
    this.observer = new RequestObserver();
    const ring = config.admin?.decisions;
    this.decisions =
      ring === undefined || ring.size === 0 ? null : new DecisionRing(ring.size, ring.record === 'all');
    this.subscriber = new ObservabilitySubscriber(this.observer, this.metrics, this.audit, this.decisions);
    this.jwks = new JwksRegistry(
      {
        refreshIntervalMs: config.jwt.jwksRefreshInterval,
        minRefetchIntervalMs: config.jwt.jwksMinRefetchInterval,
      },
      log,
    );
  }

  /** Loads everything, then listens. Throws ConfigError (nothing is listening then) if the config does not load. */
  static async start(config: Config, options: StartOptions = {}): Promise<Portcullis> {
    const log = options.logger ?? (await defaultLogger(config.log.level, config.log.format));
    const source = await openSource(config, log);
    let snapshot: Snapshot;
    try {
      const wapi = config.identity.workloadApi;
      if (wapi !== null) {
        // Nothing listens until the first SVID arrives (readiness probes fail until then).
        log.info({ socket: wapi.socket }, 'waiting for an X.509-SVID from the Workload API');
        await source.ready(wapi.startTimeout);
      }
      snapshot = loadSnapshot(config, 1, source, log);
    } catch (err) {
      source.close();
      throw err;
    }
    const worker = options.worker === true;
    const p = new Portcullis(
      config,
      snapshot,
      source,
      log,
      worker,
      options.replayGuard ?? new DpopReplayCache(),
    );
    try {
      const plans = p.buildPlans(snapshot);
      config.listeners.forEach((lc, i) => {
        p.listeners.push(new InboundListener(lc, plans.inbound[i] as ListenerPlan, log));
      });
      if (config.outbound !== null && plans.outbound !== null) {
        p.outbound = new OutboundListener(config.outbound, plans.outbound, log);
        const addr = await p.outbound.listen();
        log.info(
          {
            listener: 'outbound',
            address: formatHostPort({ host: addr.address, port: addr.port }),
            policy: config.outbound.policy,
            destinations: config.outbound.destinations.map((d) => d.host),
          },
          'listening',
        );
      }
      for (const l of p.listeners) {
        const addr = await l.listen();
        const plan = l.plan;
        log.info(
          {
            listener: l.name,
            address: formatHostPort({ host: addr.address, port: addr.port }),
            upstream: l.config.upstream,
            mtls: plan.mode,
            mtlsSource: plan.modeSource,
          },
          'listening',
        );
      }
      if (config.admin !== null && !worker) {
        p.admin = new AdminServer(config.admin.address, p);
        const addr = await p.admin.listen();
        log.info({ address: formatHostPort({ host: addr.address, port: addr.port }) }, 'admin listening');
      }
    } catch (err) {
      await p.close();
      throw err;
    }
    p.listening = true;
    if (config.watch) p.watch();
    // Every change the source learns of by itself (a Workload API message) is a new snapshot,
    // swapped like a reload.
    p.source.subscribe(() => p.reload(`identity update from ${p.source.description}`));
    log.info({ spiffeId: snapshot.credentials.spiffeId.id, trustDomains: snapshot.bundles.domains }, 'ready');
    return p;
  }

  /**
   * The stage sequence for each listener under a snapshot, in config order. Stages the snapshot
   * does not need are left out (no RequestAuthentication: no JWT stage). Throws if a stage cannot
   * be built, before anything is swapped in.
   */
  private buildPlans(snapshot: Snapshot): { inbound: ListenerPlan[]; outbound: ListenerPlan | null } {
    const jwt =
      snapshot.jwtRules.length === 0
        ? null
        : new JwtStage(
            snapshot.jwtRules,
            this.jwks,
            {
              clockSkewMs: this.config.jwt.clockSkew,
              cacheSize: this.config.jwt.cacheSize,
              replays: this.dpopReplays,
            },
            this.log,
          );
    const authz = snapshot.authorizer.empty
      ? null
      : new AuthzStage(snapshot.authorizer, { serverTiming: this.config.serverTiming });
    const custom =
      snapshot.authorizer.custom.length === 0
        ? null
        : new CustomAuthzStage(
            snapshot.authorizer,
            { serverTiming: this.config.serverTiming, providers: this.extAuthz },
            this.log,
          );
    const requestLine = new RequestLineStage({
      rejectUnderscoreHeaders: this.config.headersWithUnderscores === 'reject',
      rejectOverrideHeaders: this.config.rejectOverrideHeaders,
    });
    // Key sets no rule refers to any more stop refreshing.
    this.jwks.retain(jwt?.sources ?? new Set<JwksSource>());
    return {
      inbound: this.config.listeners.map((lc) => this.plan(lc, snapshot, requestLine, jwt, authz, custom)),
      outbound: this.outboundPlan(snapshot, requestLine),
    };
  }

  /**
   * The outbound plan: the request-line checks, then the outbound forwarder. No JWT or
   * AuthorizationPolicy stage: those are inbound concepts (Istio applies them where a request
   * arrives, here the destination's own sidecar).
   */
  private outboundPlan(snapshot: Snapshot, requestLine: RequestLineStage): ListenerPlan | null {
    const oc = this.config.outbound;
    if (oc === null) return null;
    if (this.outboundForwarder === null)
      this.outboundForwarder = new OutboundForwarder(oc, () => this.snapshot, this.log);
    return new ListenerPlan({
      snapshot,
      mode: 'DISABLE',
      modeSource: 'outbound (plain HTTP from the app on loopback)',
      stages: [requestLine],
      upstream: this.outboundForwarder,
      settings: {
        workloadPort: oc.address.port,
        normalization: this.config.pathNormalization,
        trustedProxies: 0,
      },
      listenerName: 'outbound',
      direction: 'outbound',
      authorized: false,
      observer: this.observer,
      pinned: new PinnedHeaders([], false),
      tokenParams: OUTBOUND_TOKEN_PARAMS,
      dropUnderscoreHeaders: this.config.headersWithUnderscores === 'drop',
      // Outbound calls are not authorized by AuthorizationPolicies (the destination's sidecar does that).
      explain: {
        policies: [],
        authorizer: NO_POLICIES,
        rego: null,
        ourId: snapshot.xfccBy,
        tokenParams: OUTBOUND_TOKEN_PARAMS,
        redactedHeaders: new Set(CREDENTIAL_HEADERS),
      },
    });
  }

  /**
   * The login stage of a listener with `login`: its provider (discovered once, kept across
   * reloads) and the session key read again on each reload — a changed key seals new sessions
   * while the previous one still opens the sessions it sealed. Throws ConfigError naming the field.
   */
  private loginStage(lc: ListenerConfig): LoginStage | null {
    const login = lc.login;
    if (login === null) return null;
    const index = this.config.listeners.indexOf(lc);
    const field = (f: string): string => `listeners[${index}].login.${f}`;
    let key: Uint8Array;
    try {
      key = readSessionKey(login.cookie.secretFile);
    } catch (err) {
      throw new ConfigError('ERR_CONFIG_INVALID', [
        {
          file: this.config.file,
          field: field('cookie.secretFile'),
          message: `${login.cookie.secretFile}: ${errorMessage(err)}`,
        },
      ]);
    }
    let state = this.logins.get(lc.name);
    if (state === undefined) {
      const providers = new Map<string, LoginProvider>();
      for (const [j, pc] of login.providers.entries()) {
        try {
          providers.set(pc.name, new LoginProvider(pc));
        } catch (err) {
          throw new ConfigError('ERR_CONFIG_INVALID', [
            {
              file: this.config.file,
              field: field(`providers[${j}].clientSecretFile`),
              message: `${pc.clientSecretFile}: ${errorMessage(err)}`,
            },
          ]);
        }
      }
      let signer: AssertionSigner | null = null;
      const assertion = login.assertion;
      if (assertion !== null) {
        try {
          signer = AssertionSigner.create(assertion.keyFile);
        } catch (err) {
          throw new ConfigError('ERR_CONFIG_INVALID', [
            {
              file: this.config.file,
              field: field('assertion.keyFile'),
              message: `${assertion.keyFile}: ${errorMessage(err)}`,
            },
          ]);
        }
      }
      state = { providers, key, sealer: new CookieSealer(key), signer };
      this.logins.set(lc.name, state);
    } else if (!Buffer.from(state.key).equals(Buffer.from(key))) {
      state = {
        providers: state.providers,
        key,
        sealer: new CookieSealer(key, [state.key]),
        signer: state.signer,
      };
      this.logins.set(lc.name, state);
    }
    return new LoginStage(login, state.providers, state.sealer, state.signer, this.log);
  }

  private plan(
    lc: ListenerConfig,
    snapshot: Snapshot,
    requestLine: RequestLineStage,
    jwt: JwtStage | null,
    authz: AuthzStage | null,
    custom: CustomAuthzStage | null,
  ): ListenerPlan {
    let upstream = this.upstreams.get(lc.name);
    if (upstream === undefined) {
      upstream = new Upstream(lc.upstream, lc.limits, this.log, lc.upstreamProtocol);
      this.upstreams.set(lc.name, upstream);
    }
    const decision = snapshot.peerAuthn.get(lc.name);
    if (decision === undefined) throw new Error(`no peer authentication resolved for listener ${lc.name}`);
    const stages: Stage[] = [requestLine];
    const login = this.loginStage(lc);
    if (login !== null) stages.push(login);
    if (jwt !== null) stages.push(jwt);
    if (authz !== null) stages.push(authz);
    if (custom !== null) stages.push(custom);
    const rego = snapshot.rego.get(lc.name);
    if (rego !== undefined) stages.push(new RegoStage(rego, snapshot.xfccBy, this.log));
    // What the stages decide on must reach the upstream as it was decided on.
    const pinned: string[] = [...(jwt?.tokenHeaders ?? []), ...(authz?.authorizer.headers ?? [])];
    if (custom !== null) {
      pinned.push('authorization');
      for (const p of this.extAuthz.values()) pinned.push(...p.provider.includeRequestHeaders);
    }
    const regoHeaders = lc.rego?.headers;
    if (regoHeaders !== undefined && regoHeaders !== null) pinned.push(...regoHeaders);
    // access_token is a token wherever it appears, whatever the rules say.
    const tokenParams = new Set(['access_token', ...(jwt?.tokenParams ?? [])]);
    return new ListenerPlan({
      snapshot,
      // Browser-facing TLS replaces the PeerAuthentication mode: always TLS, client certificates as configured.
      mode: lc.tls === null ? decision.mode : 'STRICT',
      modeSource:
        lc.tls === null
          ? decision.source
          : `listeners.tls (client certificates: ${lc.tls.clientCertificates})`,
      stages,
      upstream,
      settings: {
        workloadPort: lc.workloadPort,
        normalization: this.config.pathNormalization,
        trustedProxies: this.config.trustedProxies,
      },
      listenerName: lc.name,
      direction: 'inbound',
      authorized: authz !== null || rego !== undefined,
      observer: this.observer,
      pinned: new PinnedHeaders(pinned, rego !== undefined && regoHeaders === null),
      tokenParams,
      dropUnderscoreHeaders: this.config.headersWithUnderscores === 'drop',
      explain: {
        policies: snapshot.authorizer.all.map((p) => p.spec),
        authorizer: snapshot.authorizer,
        rego: rego ?? null,
        ourId: snapshot.xfccBy,
        tokenParams,
        redactedHeaders: new Set([...CREDENTIAL_HEADERS, ...(jwt?.tokenHeaders ?? [])]),
      },
    });
  }

  private watch(): void {
    this.watcher?.close();
    this.watcher = new FolderWatcher(
      [...this.source.watchedFiles(), ...this.snapshot.watchedFiles()],
      () => this.reload('file change'),
      this.log,
    );
  }

  /**
   * Re-reads certificates, bundles and policies. Returns true if the new snapshot is in force;
   * false (and the previous snapshot kept) if anything failed to load.
   */
  reload(reason: string): boolean {
    if (this.closing) return false;
    let next: Snapshot;
    let plans: { inbound: ListenerPlan[]; outbound: ListenerPlan | null };
    try {
      next = loadSnapshot(this.config, this.generation + 1, this.source, this.log);
      plans = this.buildPlans(next);
    } catch (err) {
      this.reloadFailures++;
      const problems =
        err instanceof ConfigError
          ? err.issues.map((i) => `${i.file}: ${i.field}: ${i.message}`)
          : [errorMessage(err)];
      this.log.error({ reason, problems }, 'reload failed; keeping the last good configuration');
      return false;
    }
    this.generation = next.generation;
    if (next.credentials !== this.snapshot.credentials) this.identityUpdated = Date.now();
    this.snapshot = next;
    this.listeners.forEach((l, i) => {
      l.setPlan(plans.inbound[i] as ListenerPlan);
    });
    if (plans.outbound !== null) this.outbound?.setPlan(plans.outbound);
    this.reloads++;
    this.log.info(
      {
        reason,
        generation: next.generation,
        spiffeId: next.credentials.spiffeId.id,
        notAfter: new Date(next.credentials.notAfter).toISOString(),
      },
      'reloaded',
    );
    // The set of files may have changed (a policy file added to a watched folder, for instance).
    if (this.config.watch) this.watch();
    return true;
  }

  get live(): boolean {
    return this.listening;
  }

  /**
   * Ready while listening with an SVID that has not expired, and — with the Workload API — that
   * the agent has not withdrawn (PermissionDenied).
   */
  get ready(): boolean {
    if (!this.listening || this.closing) return false;
    if (Date.now() >= this.snapshot.credentials.notAfter) return false;
    return !this.source.withdrawn;
  }

  statusJson(): unknown {
    const s = this.snapshot;
    return {
      ready: this.ready,
      generation: s.generation,
      spiffeId: s.credentials.spiffeId.id,
      certificateNotAfter: new Date(s.credentials.notAfter).toISOString(),
      trustDomains: s.bundles.domains,
      reloads: this.reloads,
      reloadFailures: this.reloadFailures,
      identitySource: this.source.description,
      workloadApi: this.source.status(),
      audit: this.audit?.status() ?? null,
      jwt: {
        ...this.jwks.stats,
        keySets: this.jwks.list().map((s) => ({
          id: keySetLabel(s.id),
          loaded: s.loaded,
          keys: s.keys().length,
          lastError: s.lastError,
        })),
      },
      outbound:
        this.outbound === null || this.outboundForwarder === null
          ? null
          : {
              address: formatHostPort(this.outbound.config.address),
              policy: this.outbound.config.policy,
              destinations: this.outboundForwarder.status(),
            },
      listeners: this.listeners.map((l) => ({
        name: l.name,
        address: l.config.address,
        upstream: l.config.upstream,
        mtls: l.plan.mode,
        mtlsSource: l.plan.modeSource,
        connections: l.stats.connections,
        requests: l.stats.requests,
        peersVerified: l.stats.peersVerified,
        tlsFailures: Object.fromEntries(l.stats.tlsFailures),
        peersRejected: Object.fromEntries(l.stats.peersRejected),
      })),
    };
  }

  /** The explanations of recent decisions with this request id, newest first (empty if none is kept). */
  explainDecisions(requestId: string): Explanation[] {
    return this.decisions?.explain(requestId) ?? [];
  }

  async metricsText(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.metrics.contentType, body: await this.metrics.text() };
  }

  /** The address a listener is bound to (useful with port 0). */
  listenerAddress(name: string): AddressInfo {
    const l = this.listeners.find((x) => x.name === name);
    if (l === undefined) throw new Error(`no listener named ${name}`);
    return l.address();
  }

  /** The outbound listener's address, or null without `outbound`. */
  outboundAddress(): AddressInfo | null {
    return this.outbound?.address() ?? null;
  }

  adminAddress(): AddressInfo | null {
    return this.admin?.addressInfo() ?? null;
  }

  /**
   * Graceful shutdown: readiness turns 503, listeners stop accepting, in-flight requests finish
   * (up to `shutdown.drainTimeout`), then upstream pools and the admin server close.
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.watcher?.close();
    this.source.close();
    const drain = this.config.shutdown.drainTimeout;
    await Promise.all([...this.listeners.map((l) => l.close(drain)), this.outbound?.close(drain)]);
    await Promise.all(
      [...this.upstreams.values(), ...(this.outboundForwarder === null ? [] : [this.outboundForwarder])].map(
        (u) => u.close().catch(() => undefined),
      ),
    );
    // Connections cut at the drain deadline report their 'close' on the next turn: let those events
    // in, then stop listening. Audit events of the drained requests go out before exit, within a
    // time box (a sink that is down must not hold the shutdown forever).
    await new Promise((r) => setImmediate(r));
    this.subscriber.close();
    await this.audit?.close(Math.max(1_000, Math.min(5_000, drain)));
    await this.admin?.close();
    this.jwks.close();
    await Promise.all([...this.extAuthz.values()].map((c) => c.close().catch(() => undefined)));
    this.listening = false;
    this.log.info('stopped');
  }
}

/** How a key set is named in /status and /metrics: inline key sets (their id is their content) as `inline`. */
function keySetLabel(id: string): string {
  return id.startsWith('inline:') ? 'inline' : id;
}
