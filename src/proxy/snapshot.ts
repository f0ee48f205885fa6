import { constants as cryptoConstants } from 'node:crypto';
import type { SecureContextOptions } from 'node:tls';
import type { Logger } from 'pino';
import { type PeerAuthnDecision, resolvePeerAuthn } from '../authn/peer-authn.js';
import { Authorizer } from '../authz/compile.js';
import { RegoEngine } from '../authz/rego/engine.js';
import type { Config } from '../config/load.js';
import { ConfigError, type ConfigIssue, errorMessage } from '../errors.js';
import { TrustBundleSet } from '../identity/bundle.js';
import { type Credentials, loadServerCertificate, type ServerCertificate } from '../identity/credentials.js';
import type { X509Material, X509Source } from '../identity/source.js';
import { loadPolicies, type PolicySet } from '../istio/load.js';
import type { JwtRule } from '../istio/request-authentication.js';
import { appliesTo } from '../istio/selector.js';

/**
 * Everything a request is decided with, loaded and checked as one unit and never changed after:
 * identity material, policies, and what they mean for each listener. A reload builds a new
 * snapshot and swaps it in; requests that began on the old one finish on it.
 */
export class Snapshot {
  readonly generation: number;
  readonly config: Config;
  readonly credentials: Credentials;
  readonly bundles: TrustBundleSet;
  readonly policies: PolicySet;
  /** Peer authentication per listener name. */
  readonly peerAuthn: ReadonlyMap<string, PeerAuthnDecision>;
  /** JWT rules of every RequestAuthentication that applies to this workload, merged in load order. */
  readonly jwtRules: readonly JwtRule[];
  /** The AuthorizationPolicies that apply to this workload, compiled. */
  readonly authorizer: Authorizer;
  /** Rego engines by listener name (listeners without `rego` have none). */
  readonly rego: ReadonlyMap<string, RegoEngine>;
  /** The full TLS option set: setSecureContext() resets whatever it is not given. */
  readonly tlsOptions: SecureContextOptions;
  /** XFCC `By=` value: the proxy's own SPIFFE ID. */
  readonly xfccBy: string;
  /** Listeners with browser-facing TLS: their own server certificate, with the same bundles for client SVIDs. */
  private readonly listenerTls: ReadonlyMap<string, SecureContextOptions>;

  constructor(init: SnapshotInit) {
    const credentials = init.credentials;
    const bundles = init.bundles;
    this.generation = init.generation;
    this.config = init.config;
    this.credentials = credentials;
    this.bundles = bundles;
    this.policies = init.policies;
    this.peerAuthn = init.peerAuthn;
    this.jwtRules = init.jwtRules;
    this.authorizer = init.authorizer;
    this.rego = init.rego;
    const tlsByListener = new Map<string, SecureContextOptions>();
    for (const [name, c] of init.serverCertificates)
      tlsByListener.set(name, { ...this.sharedTls(credentials, bundles), cert: c.certPem, key: c.keyPem });
    this.listenerTls = tlsByListener;
    this.tlsOptions = this.sharedTls(credentials, bundles);
    this.xfccBy = credentials.spiffeId.id;
  }

  /** The full TLS option set a listener serves: its own certificate (`tls`) or the SVID. */
  tlsOptionsFor(listener: string): SecureContextOptions {
    return this.listenerTls.get(listener) ?? this.tlsOptions;
  }

  private sharedTls(credentials: Credentials, bundles: TrustBundleSet): SecureContextOptions {
    return {
      cert: credentials.certPem,
      key: credentials.keyPem,
      ca: bundles.caPem,
      minVersion: 'TLSv1.2',
      // No session resumption: a resumed session carries no peer chain, and every connection must be
      // verified against the bundles in force when it opens.
      secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
      sessionTimeout: 0,
    };
  }

  /**
   * Files whose change should trigger a reload, besides the identity source's own: policies, and
   * listeners' browser-facing certificates.
   */
  watchedFiles(): string[] {
    const tlsFiles = this.config.listeners.flatMap((l) => (l.tls === null ? [] : [l.tls.cert, l.tls.key]));
    return [...this.policies.files, ...this.config.policies, ...tlsFiles];
  }
}

/** What a snapshot is made of (the derived TLS options and XFCC name are computed from it). */
export type SnapshotInit = {
  /** Listener name → its own server certificate (listeners with `tls`). */
  readonly serverCertificates: ReadonlyMap<string, ServerCertificate>;
} & Pick<
  Snapshot,
  | 'generation'
  | 'config'
  | 'credentials'
  | 'bundles'
  | 'policies'
  | 'peerAuthn'
  | 'jwtRules'
  | 'authorizer'
  | 'rego'
>;

/**
 * Loads a snapshot; throws ConfigError listing every problem (file, field, message). The identity
 * (SVID and bundles) is the source's current material: files read now, or the latest the Workload
 * API delivered.
 */
export function loadSnapshot(config: Config, generation: number, source: X509Source, log?: Logger): Snapshot {
  const issues: ConfigIssue[] = [];
  let material: X509Material | null = null;
  try {
    material = source.material();
  } catch (err) {
    if (err instanceof ConfigError) issues.push(...err.issues);
    else issues.push({ file: config.file, field: 'identity', message: errorMessage(err) });
  }
  const credentials = material?.credentials ?? null;
  const bundleSet = material?.bundles ?? new TrustBundleSet([]);

  let policies: PolicySet | null = null;
  try {
    policies = loadPolicies(config.policies, config.workload.namespace);
  } catch (err) {
    if (err instanceof ConfigError) issues.push(...err.issues);
    else issues.push({ file: config.file, field: 'policies', message: errorMessage(err) });
  }
  if (issues.length > 0 || credentials === null || policies === null) {
    throw new ConfigError('ERR_CONFIG_INVALID', issues);
  }
  const peerAuthn = new Map<string, PeerAuthnDecision>();
  for (const l of config.listeners) {
    peerAuthn.set(
      l.name,
      resolvePeerAuthn(
        policies.peerAuthentications,
        config.workload,
        config.rootNamespace,
        l.workloadPort,
        log,
      ),
    );
  }
  const jwtRules: JwtRule[] = [];
  for (const ra of policies.requestAuthentications) {
    if (appliesTo(ra.meta.namespace, ra.selector, config.workload, config.rootNamespace))
      jwtRules.push(...ra.rules);
  }
  // Tokens never reach the audit log: a header some rule reads tokens from cannot be recorded.
  // Checked here, not in the config schema, because the rules come from policies that reload.
  config.audit?.headers.forEach((h, i) => {
    const rule = jwtRules.find((r) => r.fromHeaders.some((l) => l.name === h));
    if (rule !== undefined) {
      issues.push({
        file: config.file,
        field: `audit.headers[${i}]`,
        message: `${h} carries tokens (${rule.source} reads them from it); tokens are never recorded`,
      });
    }
  });
  const authorizer = Authorizer.forWorkload(
    policies.authorizationPolicies,
    config.workload,
    config.rootNamespace,
  );
  // Every CUSTOM policy must name a configured provider: an unknown one would either fail every
  // request or, worse, be skipped.
  for (const p of policies.authorizationPolicies) {
    if (
      p.action !== 'CUSTOM' ||
      !appliesTo(p.meta.namespace, p.selector, config.workload, config.rootNamespace)
    )
      continue;
    const field = `AuthorizationPolicy ${p.meta.namespace}/${p.meta.name}`;
    if (p.dryRun) {
      issues.push({
        file: p.meta.origin.file,
        field: `${field}: metadata.annotations`,
        message: 'dry-run is not supported for CUSTOM policies',
      });
    } else if (!config.extensionProviders.some((x) => x.name === p.provider)) {
      issues.push({
        file: p.meta.origin.file,
        field: `${field}: spec.provider.name`,
        message: `no extension provider named "${p.provider}" in ${config.file} (extensionProviders)`,
      });
    }
  }
  const serverCertificates = new Map<string, ServerCertificate>();
  config.listeners.forEach((l, i) => {
    if (l.tls === null) return;
    try {
      serverCertificates.set(l.name, loadServerCertificate(l.tls.cert, l.tls.key));
    } catch (err) {
      issues.push({
        file: config.file,
        field: `listeners[${i}].tls.cert`,
        message: `${l.tls.cert}: ${errorMessage(err)}`,
      });
    }
  });
  const rego = new Map<string, RegoEngine>();
  config.listeners.forEach((l, i) => {
    if (l.rego === null) return;
    try {
      rego.set(l.name, RegoEngine.load(l.rego));
    } catch (err) {
      const field = l.rego.bundle !== null ? 'bundle' : 'wasm';
      issues.push({
        file: config.file,
        field: `listeners[${i}].rego.${field}`,
        message: `${l.rego.bundle ?? l.rego.wasm}: ${errorMessage(err)}`,
      });
    }
  });
  if (issues.length > 0) throw new ConfigError('ERR_CONFIG_INVALID', issues);
  return new Snapshot({
    serverCertificates,
    generation,
    config,
    credentials,
    bundles: bundleSet,
    policies,
    peerAuthn,
    jwtRules,
    authorizer,
    rego,
  });
}
