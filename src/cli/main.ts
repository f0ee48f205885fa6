#!/usr/bin/env node
import { readFileSync, realpathSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { formatHostPort } from '../config/address.js';
import { parseDuration } from '../config/duration.js';
import type { Config } from '../config/load.js';
import { ConfigError, errorMessage, formatIssue, PortcullisError } from '../errors.js';
import { SpiffeId } from '../identity/spiffe-id.js';
import type { ResourceMeta } from '../istio/load.js';
import { appliesTo } from '../istio/selector.js';
import type { Snapshot } from '../proxy/snapshot.js';
import { parse, required, str, strs } from './args.js';

// Commands import what they need when they run: `--help` should not pay for loading the proxy,
// and `ca` should not pay for the YAML and schema libraries.

const HELP = `portcullis — a zero-trust policy enforcement point (mTLS + SPIFFE, Istio security policies)

Usage:
  portcullis run [-c FILE]         start the proxy (default config: ./portcullis.yaml)
  portcullis validate [-c FILE]    check a config, its certificates and policies; exit 1 on any error
  portcullis ca init ...           make a development CA for a trust domain
  portcullis ca issue ...          issue an X.509-SVID from a development CA
  portcullis ca bundle ...         write a development CA's trust bundle (PEM or SPIFFE JSON)
  portcullis check ...             show the authorization decision for a described request
  portcullis replay ...            decide recorded audit events with other policies: what would change
  portcullis loadtest ...          load-test a running PEP (Portcullis or another)
  portcullis demo                  run a self-contained demo (what "npm start" runs)
  portcullis probe [--url URL]     health probe for containers: GET the admin URL, exit 0 on 2xx

Options:
  -h, --help       help for any command (e.g. portcullis ca issue --help)
  -v, --version    print the version

Exit codes: 0 success, 1 invalid config or failed check, 2 usage error (check: 3 denied;
replay: 3 a transition named by --fail-on happened).
`;

const CHECK_HELP = `portcullis check [-c FILE] --path PATH [options]

Shows the decision the AuthorizationPolicies in the config make for a described request: allow or
deny, which policy and rule decided, AUDIT and dry-run results. Loads only the config and its
policy files (no certificates). The path is normalized as the proxy would (pathNormalization).

Options:
  -c, --config FILE             config file (default ./portcullis.yaml)
  --listener NAME               listener whose workload port applies (default: the first)
  --principal ID                the peer's SPIFFE ID (spiffe://td/ns/x/sa/y or td/ns/x/sa/y);
                                leave out for a plaintext peer
  --method M                    default GET
  --path PATH                   request path, optionally with ?query (required)
  --host HOST                   authority, with port if any (default localhost)
  --header NAME=VALUE           a request header (repeatable)
  --jwt-claims JSON             claims of a verified token; iss/sub give the request principal
  --request-principal ISS/SUB   request principal, if not derived from --jwt-claims
  --source-ip IP                the direct peer's address (default 127.0.0.1)
  --remote-ip IP                remote.ip, as X-Forwarded-For through a trusted hop gives it (default: the source IP)
  --sni NAME                    TLS SNI
  --explain                     for every policy, why each rule matched or did not

Exit codes: 0 allowed, 3 denied, 1 invalid config or policies, 2 usage error.
`;

const REPLAY_HELP = `portcullis replay --audit FILE [--audit FILE]... [-c FILE] [--policies PATH]... [options]

Reads audit events (the proxy's NDJSON; rotated files and gzipped ones too, named one by one or
by a shell glob), rebuilds each request's attributes, decides it with the given
AuthorizationPolicies and reports what changes: counts of allow → deny, deny → allow, unchanged
and undecidable, each change grouped by the policy and rule deciding it now, with samples.
Requests the policies did not decide (bad tokens, bad requests, connections refused at TLS,
outbound calls) keep their outcome; CUSTOM and Rego answers are not asked again. A decision that
needs an attribute the events do not hold (a header not in audit.headers) is counted undecidable,
never guessed. Streams: any number of events in bounded memory.

Options:
  --audit FILE        an audit file, plain or gzipped (repeatable; required)
  -c, --config FILE   the config the events were recorded under (default ./portcullis.yaml):
                      workload, listeners, and the policies unless --policies is given
  --policies PATH     policy files or folders to decide with (repeatable; default: the config's)
  --json              one JSON document (events, allow_to_deny, deny_to_allow, unchanged,
                      undecidable, not_replayed, groups with samples, fidelity, events_per_second)
  --fail-on LIST      comma-separated: allow-to-deny (default), deny-to-allow, undecidable; or none
  --samples N         samples kept per group (default 3)
  --no-progress       no progress line (shown on a terminal otherwise)

Exit codes: 0 nothing named by --fail-on happened, 3 something did, 1 invalid config, policies
or unreadable file, 2 usage error.
`;

const RUN_HELP = `portcullis run [-c FILE] [--log-format json|pretty|auto]

Starts the proxy with the given config (default ./portcullis.yaml). Relative paths in the config
resolve against the config file's folder. Logs go to stderr: readable lines on a terminal, JSON
lines otherwise (log.format in the config, or --log-format, decides instead).

Signals:
  SIGTERM, SIGINT   graceful shutdown: stop accepting, drain in-flight requests, exit 0
  SIGHUP            re-read certificates, trust bundles and policies (also done on file change)

Options:
  -c, --config FILE   config file (default ./portcullis.yaml)
`;

const VALIDATE_HELP = `portcullis validate [-c FILE]

Loads the config, the proxy's certificate and key, the trust bundles and every policy, exactly as
"run" would, without listening. Prints a summary, or every problem found (file, field, problem)
and exits 1.

Options:
  -c, --config FILE   config file (default ./portcullis.yaml)
`;

const LOADTEST_HELP = `portcullis loadtest --target URL [options]

Load-tests a running PEP (Portcullis or another) and reports latency percentiles (HdrHistogram:
p50, p90, p99, p99.9, max, in ms) separately for allowed (2xx/3xx) and denied (401/403)
responses, the rate achieved, errors by cause, and the authorization time a Portcullis reports in
Server-Timing (serverTiming: true in its config).

Options:
  --target URL          e.g. https://localhost:15006/api/items (required)
  --cert F --key F      client certificate and key (mTLS)
  --ca F                CA bundle to verify the server with
  --servername NAME     TLS SNI (default: the target's host name)
  --jwt TOKEN           send Authorization: Bearer TOKEN
  --jwt-file F          read the token from a file
  --paths F             one "[METHOD] /path" per line; requests cycle through them
  --method M            default GET
  --rate N              open loop at N requests per second (use this for latency figures)
  --duration S          seconds (default 10)
  --connections N       connections to the target (default 10)
  --timeout D           per request (default 10s)
  --json                print one JSON document instead of the text report
  --no-progress         no progress line

With --rate, request i is due at start + i/N whatever happened to the ones before (an open loop,
as wrk2 does), and its latency counts from when it was due: a slow target shows as latency, not as
a quietly lower rate (coordinated omission). If the rate achieved falls short of N, a warning says
so. Without --rate, each connection sends as soon as its last answer came (a closed loop): good for
throughput, not for latency.
`;

const CA_HELP = `portcullis ca init --trust-domain TD --out DIR [--ttl DURATION] [--force]
portcullis ca issue --ca DIR --spiffe-id ID --out PREFIX [--dns NAME]... [--ttl DURATION]
portcullis ca bundle --ca DIR --out FILE [--format pem|spiffe]

A development CA (EC P-256, ECDSA-SHA256). Not for production.

ca init writes DIR/ca.pem, DIR/ca.key (mode 0600) and DIR/bundle.pem (the trust bundle to give
peers). --ttl defaults to 365d. An existing DIR/ca.key is kept unless --force.

ca issue writes PREFIX.pem and PREFIX.key (mode 0600): an X.509-SVID carrying the SPIFFE ID as
its one URI SAN, usable as client and server certificate. --dns adds DNS SANs (for clients such as
curl that check the server's host name). --ttl defaults to 24h. Durations: 90s, 30m, 24h, 30d.
The ID must be in the CA's trust domain and the SVID may not outlive the CA.

ca bundle writes the CA's trust bundle to FILE: PEM (the default), or with --format spiffe the
SPIFFE bundle format (a JWK Set with the CA in x5c), which identity.bundles also reads.
`;

const DEMO_HELP = `portcullis demo [--port N] [--admin-port N] [--dir DIR] [--once] [--verbose]

Makes a throwaway CA and SVIDs, starts an echo upstream and the proxy in front of it with the
policies in examples/demo/ and an end-user token issuer, makes example calls (allowed, a wrong
identity, no certificate, a valid and an expired end-user token),
prints curl commands to try, and runs until Ctrl-C.

Options:
  --port N         proxy port (default 15006; 0 picks a free one)
  --admin-port N   admin port (default 15000; 0 picks a free one)
  --dir DIR        keep the files in DIR (default: a temp folder removed on exit)
  --once           make the example calls and exit (0 if all behaved as expected)
  --verbose        show the proxy's own logs
`;

function version(): string {
  const pkg = JSON.parse(
    readFileSync(fileURLToPath(new URL('../../package.json', import.meta.url)), 'utf8'),
  ) as {
    version: string;
  };
  return pkg.version;
}

function durationFlag(v: unknown, flag: string): number | undefined {
  const s = str(v);
  if (s === undefined) return undefined;
  const ms = parseDuration(s);
  if (ms === null || ms <= 0)
    throw new PortcullisError('ERR_USAGE', `${flag}: "${s}" is not a duration (e.g. 24h, 30d)`);
  return ms;
}

function portFlag(v: unknown, flag: string, dflt: number): number {
  const s = str(v);
  if (s === undefined) return dflt;
  const n = Number(s);
  if (!/^\d+$/.test(s) || n > 65535)
    throw new PortcullisError('ERR_USAGE', `${flag}: "${s}" is not a port number`);
  return n;
}

type Out = (line: string) => void;

async function cmdRun(args: string[], out: Out): Promise<number> {
  const { values } = parse(args, {
    config: { type: 'string', short: 'c' },
    'log-format': { type: 'string' },
  });
  if (values.help) return help(out, RUN_HELP);
  const format = str(values['log-format']);
  if (format !== undefined && format !== 'json' && format !== 'pretty' && format !== 'auto')
    throw new PortcullisError('ERR_USAGE', `--log-format must be json, pretty or auto, not "${format}"`);
  const { loadConfigFile } = await import('../config/load.js');
  const config = loadConfigFile(str(values.config) ?? 'portcullis.yaml');
  const { Portcullis, defaultLogger } = await import('../proxy/portcullis.js');
  const logger = await defaultLogger(config.log.level, format ?? config.log.format);
  if (config.workers > 1) return runCluster(config, logger);
  const proxy = await Portcullis.start(config, { logger });
  return new Promise<number>((resolveExit) => {
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      proxy.log.info({ signal }, 'shutting down');
      proxy.close().then(
        () => resolveExit(0),
        (err: unknown) => {
          proxy.log.error({ err }, 'shutdown failed');
          resolveExit(1);
        },
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', () => proxy.reload('SIGHUP'));
  });
}

/** `workers` > 1: this process is the primary (forks the workers) or one of the workers. */
async function runCluster(config: Config, logger: Logger): Promise<number> {
  // Required here, not imported: node:cluster (and child_process under it) cost a single process
  // ~15 ms of start-up, and import() cannot be used in the CLI bundle (scripts/bundle.mjs).
  const cluster = createRequire(import.meta.url)('node:cluster') as typeof import('node:cluster').default;
  if (!cluster.isPrimary) {
    const { runWorker } = await import('../cluster/worker.js');
    return runWorker(config, logger.child({ worker: cluster.worker?.id ?? 0 }));
  }
  const { ClusterPrimary } = await import('../cluster/primary.js');
  const primary = new ClusterPrimary(config, logger);
  const stop = (signal: string): void => {
    logger.info({ signal }, 'shutting down');
    void primary.stop(0);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => void primary.reload('SIGHUP'));
  try {
    await primary.start();
  } catch (err) {
    logger.error({ err: errorMessage(err) }, 'cluster did not start');
    void primary.stop(1);
  }
  return primary.done;
}

async function cmdValidate(args: string[], out: Out): Promise<number> {
  const { values } = parse(args, { config: { type: 'string', short: 'c' } });
  if (values.help) return help(out, VALIDATE_HELP);
  const { loadConfigFile } = await import('../config/load.js');
  const { loadSnapshot } = await import('../proxy/snapshot.js');
  const config = loadConfigFile(str(values.config) ?? 'portcullis.yaml');
  const wapi = config.identity.workloadApi;
  const { openSource } = await import('../identity/source.js');
  const { default: pino } = await import('pino');
  // With the Workload API: connect once, as `run` would, and report what the agent serves.
  const source = await openSource(config, pino({ level: 'silent' }));
  let snap: Snapshot;
  try {
    if (wapi !== null) {
      await source.ready(Math.min(wapi.startTimeout, 10_000)).catch((err: unknown) => {
        throw new ConfigError('ERR_CONFIG_INVALID', [
          { file: config.file, field: 'identity.workloadApi', message: errorMessage(err) },
        ]);
      });
    }
    snap = loadSnapshot(config, 1, source);
  } finally {
    source.close();
  }
  out(`${config.file}: OK`);
  out(
    `  identity: ${snap.credentials.spiffeId.id} (certificate valid until ${new Date(snap.credentials.notAfter).toISOString()}${wapi === null ? '' : `; from the Workload API at ${wapi.socket}`})`,
  );
  out(`  trust domains: ${snap.bundles.domains.join(', ')}`);
  const p = snap.policies;
  out(
    `  policies: ${p.files.length} file(s): ${p.peerAuthentications.length} PeerAuthentication, ${p.requestAuthentications.length} RequestAuthentication, ${p.authorizationPolicies.length} AuthorizationPolicy (${snap.authorizer.all.length} apply to this workload, ${snap.jwtRules.length} JWT rule(s))`,
  );
  for (const l of config.listeners) {
    const pa = snap.peerAuthn.get(l.name);
    const rego = snap.rego.get(l.name);
    const transport =
      l.tls === null
        ? `mTLS ${pa?.mode} (${pa?.source})`
        : `TLS with its own certificate ${l.tls.cert}, client certificates ${l.tls.clientCertificates} (this replaces the PeerAuthentication mode, ${pa?.mode} from ${pa?.source})`;
    out(
      `  listener ${l.name}: ${formatHostPort(l.address)} -> ${l.upstream}, ${transport}${rego === undefined ? '' : `, then Rego ${rego.entrypoint}`}`,
    );
    if (l.login !== null) {
      const ps = l.login.providers.map((p) => `${p.name} (${p.issuer})`).join(', ');
      out(
        `    login: ${ps}, callback ${l.login.callbackPath}, session cookie ${l.login.cookie.name} for ${Math.round(l.login.cookie.ttl / 60_000)} min${l.login.skip.length > 0 ? `, no login for ${l.login.skip.join(' ')}` : ''}`,
      );
    }
  }
  const o = config.outbound;
  if (o !== null) {
    out(
      `  outbound: ${formatHostPort(o.address)} (plain HTTP from the app), ${o.policy === 'REGISTRY_ONLY' ? 'unlisted hosts refused' : 'unlisted hosts passed through in plain HTTP'}`,
    );
    for (const d of o.destinations) {
      const who = [...d.identities, ...d.trustDomains.map((td) => `any workload of ${td}`)].join(', ');
      out(`    ${d.host} -> ${d.upstream} (mTLS; the server must be ${who})`);
      for (const td of d.trustDomains) {
        if (!snap.bundles.domains.includes(td))
          out(
            `  warning: outbound ${d.host}: no bundle for trust domain ${td}, so no server of it can be verified`,
          );
      }
      for (const id of d.identities) {
        const td = id.slice('spiffe://'.length).split('/')[0] ?? '';
        if (!snap.bundles.domains.includes(td))
          out(`  warning: outbound ${d.host}: no bundle for trust domain ${td}, so ${id} cannot be verified`);
      }
    }
  }
  if (config.admin !== null) out(`  admin: ${formatHostPort(config.admin.address)}`);
  for (const w of policyWarnings(snap, config)) out(`  warning: ${w}`);
  return 0;
}

/**
 * What in the policy files will have no effect here: resources that are not security policies
 * (skipped), and policies whose namespace or selector leave this workload out (a typo in a
 * selector silently disables a policy).
 */
function policyWarnings(snap: Snapshot, config: Config): string[] {
  const out: string[] = [];
  for (const r of snap.policies.ignored)
    out.push(`${r.file}: ${r.kind} ${r.name} is not a security policy; skipped`);
  const wl = config.workload;
  const check = (
    kind: string,
    meta: ResourceMeta,
    selector: Readonly<Record<string, string>> | null,
  ): void => {
    if (appliesTo(meta.namespace, selector, wl, config.rootNamespace)) return;
    const why =
      meta.namespace !== wl.namespace && meta.namespace !== config.rootNamespace
        ? `its namespace ${meta.namespace} is neither the workload's (${wl.namespace}) nor the root namespace (${config.rootNamespace})`
        : `its selector ${JSON.stringify(selector)} does not match the workload labels ${JSON.stringify(wl.labels)}`;
    out.push(
      `${meta.origin.file}: ${kind} ${meta.namespace}/${meta.name} applies to no workload here: ${why}`,
    );
  };
  for (const p of snap.policies.peerAuthentications) check('PeerAuthentication', p.meta, p.selector);
  for (const p of snap.policies.requestAuthentications) check('RequestAuthentication', p.meta, p.selector);
  for (const p of snap.policies.authorizationPolicies) check('AuthorizationPolicy', p.meta, p.selector);
  return out;
}

async function cmdCheck(args: string[], out: Out): Promise<number> {
  const { values } = parse(args, {
    config: { type: 'string', short: 'c' },
    listener: { type: 'string' },
    principal: { type: 'string' },
    method: { type: 'string' },
    path: { type: 'string' },
    host: { type: 'string' },
    header: { type: 'string', multiple: true },
    'jwt-claims': { type: 'string' },
    'request-principal': { type: 'string' },
    'source-ip': { type: 'string' },
    'remote-ip': { type: 'string' },
    sni: { type: 'string' },
    explain: { type: 'boolean' },
  });
  if (values.help) return help(out, CHECK_HELP);
  const path = required(values.path, '--path');
  const { loadConfigFile } = await import('../config/load.js');
  const { runCheck } = await import('./check.js');
  const config = loadConfigFile(str(values.config) ?? 'portcullis.yaml', { policiesOnly: true });
  return runCheck(
    config,
    {
      listener: str(values.listener),
      principal: str(values.principal),
      requestPrincipal: str(values['request-principal']),
      claims: str(values['jwt-claims']),
      method: str(values.method) ?? 'GET',
      path,
      host: str(values.host),
      headers: strs(values.header),
      sourceIp: str(values['source-ip']),
      remoteIp: str(values['remote-ip']),
      sni: str(values.sni),
      explain: values.explain === true,
    },
    out,
  );
}

async function cmdReplay(args: string[], out: Out): Promise<number> {
  const { values } = parse(args, {
    config: { type: 'string', short: 'c' },
    audit: { type: 'string', multiple: true },
    policies: { type: 'string', multiple: true },
    json: { type: 'boolean' },
    'fail-on': { type: 'string' },
    samples: { type: 'string' },
    'no-progress': { type: 'boolean' },
  });
  if (values.help) return help(out, REPLAY_HELP);
  const files = strs(values.audit);
  if (files.length === 0) throw new PortcullisError('ERR_USAGE', '--audit FILE is required');
  const samples = str(values.samples) ?? '3';
  if (!/^\d{1,3}$/.test(samples))
    throw new PortcullisError('ERR_USAGE', `--samples: "${samples}" is not a number 0-999`);
  const { loadConfigFile } = await import('../config/load.js');
  const { parseFailOn, runReplay } = await import('./replay.js');
  const failOn = parseFailOn(str(values['fail-on']));
  const config = loadConfigFile(str(values.config) ?? 'portcullis.yaml', { policiesOnly: true });
  return runReplay(
    config,
    {
      files,
      policies: strs(values.policies).map((p) => resolve(p)),
      json: values.json === true,
      failOn,
      samples: Number(samples),
      progress: values['no-progress'] !== true && values.json !== true && process.stderr.isTTY === true,
    },
    out,
  );
}

async function cmdLoadtest(args: string[], out: Out): Promise<number> {
  const { values } = parse(args, {
    target: { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    ca: { type: 'string' },
    servername: { type: 'string' },
    jwt: { type: 'string' },
    'jwt-file': { type: 'string' },
    paths: { type: 'string' },
    method: { type: 'string' },
    rate: { type: 'string' },
    duration: { type: 'string' },
    connections: { type: 'string' },
    timeout: { type: 'string' },
    json: { type: 'boolean' },
    'no-progress': { type: 'boolean' },
  });
  if (values.help) return help(out, LOADTEST_HELP);
  const num = (v: unknown, flag: string, dflt?: number): number | undefined => {
    const s = str(v);
    if (s === undefined) return dflt;
    const n = Number(s);
    if (!Number.isFinite(n) || n <= 0)
      throw new PortcullisError('ERR_USAGE', `${flag}: "${s}" is not a positive number`);
    return n;
  };
  let jwt = str(values.jwt);
  const jwtFile = str(values['jwt-file']);
  if (jwt === undefined && jwtFile !== undefined) {
    jwt = readFileSync(jwtFile, 'utf8').trim();
  }
  const { runLoadtest } = await import('./loadtest.js');
  return runLoadtest(
    {
      target: required(values.target, '--target'),
      cert: str(values.cert),
      key: str(values.key),
      ca: str(values.ca),
      servername: str(values.servername),
      jwt,
      pathsFile: str(values.paths),
      method: str(values.method) ?? 'GET',
      rate: num(values.rate, '--rate'),
      durationSeconds: num(values.duration, '--duration', 10) as number,
      connections: Math.floor(num(values.connections, '--connections', 10) as number),
      timeoutMs: durationFlag(values.timeout, '--timeout') ?? 10_000,
      json: values.json === true,
      progress: values['no-progress'] !== true && values.json !== true && process.stderr.isTTY === true,
    },
    out,
  );
}

async function cmdCa(args: string[], out: Out): Promise<number> {
  const sub = args[0];
  const rest = args.slice(1);
  if (sub === undefined || sub === '--help' || sub === '-h') return help(out, CA_HELP);
  const { initCaDir, issueToFiles, writeBundle } = await import('../identity/dev-ca.js');
  if (sub === 'init') {
    const { values } = parse(rest, {
      'trust-domain': { type: 'string' },
      out: { type: 'string' },
      ttl: { type: 'string' },
      force: { type: 'boolean' },
    });
    if (values.help) return help(out, CA_HELP);
    const td = required(values['trust-domain'], '--trust-domain');
    const dir = resolve(required(values.out, '--out'));
    await initCaDir(dir, td, durationFlag(values.ttl, '--ttl'), values.force === true);
    out(`wrote ${dir}/ca.pem, ${dir}/ca.key, ${dir}/bundle.pem for trust domain ${td}`);
    return 0;
  }
  if (sub === 'issue') {
    const { values } = parse(rest, {
      ca: { type: 'string' },
      'spiffe-id': { type: 'string' },
      out: { type: 'string' },
      dns: { type: 'string', multiple: true },
      ttl: { type: 'string' },
    });
    if (values.help) return help(out, CA_HELP);
    const caDir = resolve(required(values.ca, '--ca'));
    const id = SpiffeId.parse(required(values['spiffe-id'], '--spiffe-id'));
    const prefix = resolve(required(values.out, '--out'));
    await issueToFiles(caDir, id.id, prefix, {
      dnsNames: strs(values.dns),
      ttlMs: durationFlag(values.ttl, '--ttl'),
    });
    out(`wrote ${prefix}.pem and ${prefix}.key for ${id.id}`);
    return 0;
  }
  if (sub === 'bundle') {
    const { values } = parse(rest, {
      ca: { type: 'string' },
      out: { type: 'string' },
      format: { type: 'string' },
    });
    if (values.help) return help(out, CA_HELP);
    const format = str(values.format) ?? 'pem';
    if (format !== 'pem' && format !== 'spiffe')
      throw new PortcullisError('ERR_USAGE', `--format must be pem or spiffe, not "${format}"`);
    const file = resolve(required(values.out, '--out'));
    writeBundle(resolve(required(values.ca, '--ca')), format, file);
    out(`wrote ${file} (${format === 'pem' ? 'PEM' : 'SPIFFE bundle'})`);
    return 0;
  }
  throw new PortcullisError('ERR_USAGE', `unknown ca command "${sub}" (use init, issue or bundle)`);
}

const PROBE_HELP = `portcullis probe [--url URL] [--timeout DURATION]

A health probe for container runtimes and Kubernetes exec probes: GETs URL (default
http://127.0.0.1:15000/readyz) and exits 0 when it answers 2xx within the timeout (default 2s),
1 otherwise. Lets the admin server stay on loopback while the kubelet or Docker probes it from
inside the container (no curl needed in a slim image).
`;

async function cmdProbe(args: string[], out: Out): Promise<number> {
  const { values } = parse(args, { url: { type: 'string' }, timeout: { type: 'string' } });
  if (values.help) return help(out, PROBE_HELP);
  const url = str(values.url) ?? 'http://127.0.0.1:15000/readyz';
  if (!/^http:\/\//.test(url))
    throw new PortcullisError('ERR_USAGE', `--url must be an http:// URL, not "${url}"`);
  const timeoutMs = durationFlag(values.timeout, '--timeout') ?? 2_000;
  const status = await new Promise<number>((resolve) => {
    const req = http.get(url, { timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (e) => {
      out(`probe ${url}: ${e.message}`);
      resolve(0);
    });
  });
  if (status >= 200 && status < 300) return 0;
  if (status !== 0) out(`probe ${url}: HTTP ${status}`);
  return 1;
}

async function cmdDemo(args: string[], out: Out): Promise<number> {
  const { values } = parse(args, {
    port: { type: 'string' },
    'admin-port': { type: 'string' },
    dir: { type: 'string' },
    once: { type: 'boolean' },
    verbose: { type: 'boolean' },
  });
  if (values.help) return help(out, DEMO_HELP);
  const dir = str(values.dir);
  const { runDemo } = await import('./demo.js');
  return runDemo({
    port: portFlag(values.port, '--port', 15006),
    adminPort: portFlag(values['admin-port'], '--admin-port', 15000),
    dir: dir === undefined ? undefined : resolve(dir),
    once: values.once === true,
    logLevel: values.verbose === true ? 'info' : 'error',
    out,
  });
}

function help(out: Out, text: string): number {
  out(text.trimEnd());
  return 0;
}

/** Runs the CLI; resolves with the exit code. Errors are printed, never thrown. */
export async function main(
  argv: string[],
  out: Out = console.log,
  err: Out = console.error,
): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'run':
        return await cmdRun(rest, out);
      case 'validate':
        return await cmdValidate(rest, out);
      case 'ca':
        return await cmdCa(rest, out);
      case 'check':
        return await cmdCheck(rest, out);
      case 'replay':
        return await cmdReplay(rest, out);
      case 'loadtest':
        return await cmdLoadtest(rest, out);
      case 'demo':
        return await cmdDemo(rest, out);
      case 'probe':
        return await cmdProbe(rest, out);
      case '-v':
      case '--version':
        out(version());
        return 0;
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        return help(out, HELP);
      default:
        throw new PortcullisError('ERR_USAGE', `unknown command "${cmd}"`);
    }
  } catch (e) {
    if (e instanceof ConfigError) {
      err(
        `portcullis: invalid configuration (${e.issues.length} problem${e.issues.length === 1 ? '' : 's'}):`,
      );
      for (const issue of e.issues) err(`  ${formatIssue(issue)}`);
      return 1;
    }
    if (e instanceof PortcullisError && e.code === 'ERR_USAGE') {
      err(`portcullis: ${e.message}\nRun "portcullis --help" for usage.`);
      return 2;
    }
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE' || code === 'EACCES') {
      err(`portcullis: cannot listen: ${(e as Error).message}`);
      return 1;
    }
    err(`portcullis: ${(e as Error).message ?? String(e)}`);
    return 1;
  }
}

// Run when executed directly (also through the node_modules/.bin symlink), not when imported, nor
// from the CLI bundle (dist/bundle/portcullis.cjs), whose own entry runs main.
const invoked = process.argv[1];
if (invoked !== undefined && !import.meta.url.endsWith('.cjs')) {
  if (realpathSync(invoked) === fileURLToPath(import.meta.url)) {
    main(process.argv.slice(2)).then((code) => {
      process.exitCode = code;
    });
  }
}
