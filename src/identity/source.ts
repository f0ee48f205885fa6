import type { Logger } from 'pino';
import type { Config } from '../config/load.js';
import { ConfigError, type ConfigIssue, errorMessage } from '../errors.js';
import { loadBundleFile, type TrustBundle, TrustBundleSet } from './bundle.js';
import { type Credentials, loadCredentials } from './credentials.js';
import { parseCertificates } from './pem.js';
import { verifyPeer } from './verify-peer.js';

/** What a source gives the proxy: its own SVID and key, and the bundles of every trusted domain. */
export interface X509Material {
  readonly credentials: Credentials;
  readonly bundles: TrustBundleSet;
}

/**
 * Where the proxy's own X.509-SVID and the trust bundles come from (DESIGN: identity sources):
 * files the config names, or the SPIFFE Workload API. A snapshot takes `material()`; a source
 * that learns of a change by itself (the Workload API's stream) calls its subscribers, and the
 * proxy builds a new snapshot as on a reload.
 */
export interface X509Source {
  /** For logs: `files` or `the Workload API at unix://…`. */
  readonly description: string;
  /** The material for the next snapshot; throws ConfigError naming file and field when none is usable. */
  material(): X509Material;
  /** Files whose change means new material (the files source); none for the Workload API. */
  watchedFiles(): string[];
  /** The source says the workload may no longer use its identity (Workload API PermissionDenied). */
  readonly withdrawn: boolean;
  /**
   * Resolves once material is available (at once for files); rejects after `timeoutMs` with the
   * source's last error (the Workload API, before its first SVID).
   */
  ready(timeoutMs: number): Promise<void>;
  /** Called after each change the source learns of by itself. */
  subscribe(onChange: () => void): void;
  /** What /status shows of the source, or null. */
  status(): unknown;
  close(): void;
}

/**
 * Checks that an SVID is in the workload's trust domain and verifies with its own bundle (what
 * every peer will check). Problems are reported under `field`.
 */
export function checkOwnSvid(
  config: Config,
  credentials: Credentials,
  bundles: TrustBundleSet,
  field: string,
  prefix: string,
): ConfigIssue[] {
  if (credentials.spiffeId.trustDomain !== config.trustDomain) {
    return [
      {
        file: config.file,
        field,
        message: `${prefix}the certificate's SPIFFE ID ${credentials.spiffeId.id} is not in trust domain "${config.trustDomain}"`,
      },
    ];
  }
  try {
    verifyPeer(credentials.leaf, parseCertificates(credentials.certPem).slice(1), bundles);
  } catch (err) {
    return [{ file: config.file, field, message: `${prefix}${errorMessage(err)}` }];
  }
  return [];
}

/**
 * The files source: `identity.cert`, `identity.key` and `identity.bundles`, read again for each
 * snapshot (the file watcher and SIGHUP trigger those). A half-written rotation fails the checks
 * and the last good snapshot stays.
 */
export class FileSource implements X509Source {
  readonly description = 'files';
  readonly withdrawn = false;
  private readonly config: Config;

  constructor(config: Config) {
    this.config = config;
  }

  material(): X509Material {
    const config = this.config;
    const issues: ConfigIssue[] = [];
    const bundles: TrustBundle[] = [];
    for (const [td, file] of Object.entries(config.identity.bundles)) {
      try {
        bundles.push(loadBundleFile(td, file));
      } catch (err) {
        issues.push({
          file: config.file,
          field: `identity.bundles.${td}`,
          message: `${file}: ${errorMessage(err)}`,
        });
      }
    }
    const set = new TrustBundleSet(bundles);
    let credentials: Credentials | null = null;
    try {
      credentials = loadCredentials(config.identity.cert, config.identity.key);
      if (issues.length === 0)
        issues.push(...checkOwnSvid(config, credentials, set, 'identity.cert', `${config.identity.cert}: `));
    } catch (err) {
      issues.push({
        file: config.file,
        field: 'identity.cert',
        message: `${config.identity.cert}: ${errorMessage(err)}`,
      });
    }
    if (issues.length > 0 || credentials === null) throw new ConfigError('ERR_CONFIG_INVALID', issues);
    return { credentials, bundles: set };
  }

  watchedFiles(): string[] {
    const i = this.config.identity;
    return [i.cert, i.key, ...Object.values(i.bundles)];
  }

  ready(): Promise<void> {
    return Promise.resolve();
  }

  subscribe(): void {
    // Changes reach the proxy through its file watcher (and SIGHUP).
  }

  status(): unknown {
    return null;
  }

  close(): void {}
}

/**
 * The source the config asks for: files, or the Workload API (loaded only then, and started: it
 * connects at once). `log` receives the Workload API's retries and discarded messages.
 */
export async function openSource(config: Config, log: Logger): Promise<X509Source> {
  const wapi = config.identity.workloadApi;
  if (wapi === null) return new FileSource(config);
  const { WorkloadApiSource } = await import('./workload-api.js');
  return new WorkloadApiSource({ socket: wapi.socket, hint: wapi.hint, config }, log);
}
