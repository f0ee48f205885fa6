import { readdirSync, readFileSync, statSync } from 'node:fs';
import { extname, join } from 'node:path';
import { LineCounter, parseAllDocuments } from 'yaml';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { type AuthorizationPolicy, parseAuthorizationPolicy } from './authorization-policy.js';
import { type PeerAuthentication, parsePeerAuthentication } from './peer-authentication.js';
import { parseRequestAuthentication, type RequestAuthentication } from './request-authentication.js';

/** Where a resource came from, for messages: `policies/mtls.yaml (document 2)`. */
export interface Origin {
  readonly file: string;
  readonly index: number;
}

export interface ResourceMeta {
  readonly name: string;
  readonly namespace: string;
  readonly annotations: Readonly<Record<string, string>>;
  readonly origin: Origin;
}

export interface PolicySet {
  readonly peerAuthentications: readonly PeerAuthentication[];
  readonly requestAuthentications: readonly RequestAuthentication[];
  readonly authorizationPolicies: readonly AuthorizationPolicy[];
  /** Every file read, for watching. */
  readonly files: readonly string[];
  /** Resources in the policy files that are not security policies (a VirtualService, a Deployment): skipped. */
  readonly ignored: readonly IgnoredResource[];
}

export interface IgnoredResource {
  readonly file: string;
  readonly kind: string;
  readonly name: string;
}

const ISTIO_SECURITY = /^security\.istio\.io\/(v1|v1beta1)$/;

function policyFiles(paths: readonly string[], issues: ConfigIssue[]): string[] {
  const files: string[] = [];
  for (const p of paths) {
    let st: ReturnType<typeof statSync>;
    try {
      st = statSync(p);
    } catch (err) {
      issues.push({
        file: p,
        field: '',
        message: `cannot read policies: ${(err as NodeJS.ErrnoException).code}`,
      });
      continue;
    }
    if (st.isDirectory()) {
      // Sorted so that load order (which breaks ties between equal-precedence policies) is stable.
      for (const name of readdirSync(p).sort()) {
        const ext = extname(name);
        if ((ext === '.yaml' || ext === '.yml') && !name.startsWith('.')) files.push(join(p, name));
      }
    } else {
      files.push(p);
    }
  }
  return files;
}

/** Reads Istio security resources from files and folders (multi-document YAML). */
export function loadPolicies(paths: readonly string[], defaultNamespace: string): PolicySet {
  const issues: ConfigIssue[] = [];
  const peerAuthentications: PeerAuthentication[] = [];
  const requestAuthentications: RequestAuthentication[] = [];
  const authorizationPolicies: AuthorizationPolicy[] = [];
  const ignored: IgnoredResource[] = [];
  const files = policyFiles(paths, issues);
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      issues.push({ file, field: '', message: `cannot read: ${(err as NodeJS.ErrnoException).code}` });
      continue;
    }
    const lines = new LineCounter();
    const docs = parseAllDocuments(text, { prettyErrors: false, lineCounter: lines });
    if (!Array.isArray(docs)) continue; // an empty stream
    docs.forEach((doc, index) => {
      if (doc.errors.length > 0) {
        const e = doc.errors[0];
        issues.push({
          file,
          field: '',
          message: `YAML syntax error at line ${e === undefined ? '?' : lines.linePos(e.pos[0]).line}: ${e?.message.split('\n')[0]}`,
        });
        return;
      }
      const value: unknown = doc.toJS();
      if (value === null || value === undefined) return;
      const where = `document ${index + 1}`;
      if (typeof value !== 'object' || Array.isArray(value)) {
        issues.push({
          file,
          field: where,
          message: 'a policy document must be a mapping with apiVersion and kind',
        });
        return;
      }
      const res = value as Record<string, unknown>;
      if (typeof res.apiVersion !== 'string' || typeof res.kind !== 'string') {
        issues.push({ file, field: where, message: 'apiVersion and kind are required' });
        return;
      }
      // Other Kubernetes resources may share the folder (a Deployment beside its policies): skip them.
      if (!res.apiVersion.startsWith('security.istio.io/')) {
        const m = res.metadata as { name?: unknown } | null | undefined;
        ignored.push({
          file,
          kind: `${res.apiVersion}/${res.kind}`,
          name: typeof m?.name === 'string' ? m.name : '',
        });
        return;
      }
      if (!ISTIO_SECURITY.test(res.apiVersion)) {
        issues.push({
          file,
          field: `${where}.apiVersion`,
          message: `unsupported apiVersion "${res.apiVersion}" (use security.istio.io/v1 or v1beta1)`,
        });
        return;
      }
      const meta = parseMeta(res.metadata, { file, index }, defaultNamespace, issues);
      if (meta === null) return;
      const label = `${res.kind} ${meta.namespace}/${meta.name}`;
      if (res.kind === 'PeerAuthentication') {
        const pa = parsePeerAuthentication(meta, res.spec, (field, message) =>
          issues.push({ file, field: `${label}: ${field}`, message }),
        );
        if (pa !== null) peerAuthentications.push(pa);
      } else if (res.kind === 'RequestAuthentication') {
        const ra = parseRequestAuthentication(meta, res.spec, (field, message) =>
          issues.push({ file, field: `${label}: ${field}`, message }),
        );
        if (ra !== null) requestAuthentications.push(ra);
      } else if (res.kind === 'AuthorizationPolicy') {
        const ap = parseAuthorizationPolicy(meta, res.spec, (field, message) =>
          issues.push({ file, field: `${label}: ${field}`, message }),
        );
        if (ap !== null) authorizationPolicies.push(ap);
      } else {
        issues.push({ file, field: label, message: `unknown security.istio.io kind "${res.kind}"` });
      }
    });
  }
  if (issues.length > 0) throw new ConfigError('ERR_POLICY_INVALID', issues);
  return { peerAuthentications, requestAuthentications, authorizationPolicies, files, ignored };
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

function parseMeta(
  raw: unknown,
  origin: Origin,
  defaultNamespace: string,
  issues: ConfigIssue[],
): ResourceMeta | null {
  const where = `document ${origin.index + 1}`;
  if (raw === null || typeof raw !== 'object') {
    issues.push({
      file: origin.file,
      field: `${where}.metadata`,
      message: 'metadata with a name is required',
    });
    return null;
  }
  const m = raw as Record<string, unknown>;
  if (typeof m.name !== 'string' || m.name === '') {
    issues.push({ file: origin.file, field: `${where}.metadata.name`, message: 'is required' });
    return null;
  }
  const namespace = m.namespace === undefined ? defaultNamespace : m.namespace;
  if (typeof namespace !== 'string' || !DNS_LABEL.test(namespace)) {
    issues.push({
      file: origin.file,
      field: `${where}.metadata.namespace`,
      message: 'must be a Kubernetes namespace name',
    });
    return null;
  }
  const annotations: Record<string, string> = {};
  if (m.annotations !== undefined && m.annotations !== null && typeof m.annotations === 'object') {
    for (const [k, v] of Object.entries(m.annotations)) annotations[k] = String(v);
  }
  return { name: m.name, namespace, annotations, origin };
}
