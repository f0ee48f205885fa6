import type { ResourceMeta } from './load.js';
import { isMap, Problems, type Report, specMap, unknownKeys } from './validate.js';

/**
 * Istio PeerAuthentication (security.istio.io/v1): which mutual-TLS mode a workload's ports
 * accept. https://istio.io/latest/docs/reference/config/security/peer_authentication/
 */
export type MtlsMode = 'UNSET' | 'DISABLE' | 'PERMISSIVE' | 'STRICT';
const MODES: ReadonlySet<string> = new Set(['UNSET', 'DISABLE', 'PERMISSIVE', 'STRICT']);

export interface PeerAuthentication {
  readonly meta: ResourceMeta;
  /** matchLabels, or null when the resource has no selector (namespace- or mesh-wide). */
  readonly selector: Readonly<Record<string, string>> | null;
  readonly mode: MtlsMode;
  readonly portLevel: ReadonlyMap<number, MtlsMode>;
}

function parseMode(raw: unknown, field: string, report: Report): MtlsMode | null {
  if (!isMap(raw)) {
    report(field, 'must be a mapping such as { mode: STRICT }');
    return null;
  }
  unknownKeys(raw, ['mode'], field, report);
  if (raw.mode === undefined) return 'UNSET';
  if (typeof raw.mode !== 'string' || !MODES.has(raw.mode)) {
    report(
      `${field}.mode`,
      `must be one of UNSET, DISABLE, PERMISSIVE, STRICT (got ${JSON.stringify(raw.mode)})`,
    );
    return null;
  }
  return raw.mode as MtlsMode;
}

export function parseSelector(
  raw: unknown,
  report: Report,
): Readonly<Record<string, string>> | null | undefined {
  if (raw === undefined || raw === null) return null;
  if (!isMap(raw)) {
    report('spec.selector', 'must be a mapping with matchLabels');
    return undefined;
  }
  unknownKeys(raw, ['matchLabels'], 'spec.selector', report);
  if (raw.matchLabels === undefined || raw.matchLabels === null) return null;
  if (!isMap(raw.matchLabels)) {
    report('spec.selector.matchLabels', 'must be a mapping of label to value');
    return undefined;
  }
  const labels: Record<string, string> = {};
  for (const [k, v] of Object.entries(raw.matchLabels)) {
    if (typeof v !== 'string') {
      report(`spec.selector.matchLabels.${k}`, 'label values are strings (quote numbers and booleans)');
      return undefined;
    }
    labels[k] = v;
  }
  // An empty matchLabels selects every workload, like no selector (Istio's WorkloadSelector).
  return Object.keys(labels).length === 0 ? null : labels;
}

/** Validates a PeerAuthentication; returns null (after reporting) when it is invalid. */
export function parsePeerAuthentication(
  meta: ResourceMeta,
  spec: unknown,
  report: Report,
): PeerAuthentication | null {
  const problems = new Problems(report);
  const fail = problems.report;
  const s = specMap(spec, fail);
  if (s === null) return null;
  unknownKeys(s, ['selector', 'mtls', 'portLevelMtls'], 'spec', fail);
  const selector = parseSelector(s.selector, fail);
  const mode = s.mtls === undefined || s.mtls === null ? 'UNSET' : parseMode(s.mtls, 'spec.mtls', fail);
  const portLevel = new Map<number, MtlsMode>();
  if (s.portLevelMtls !== undefined && s.portLevelMtls !== null) {
    if (!isMap(s.portLevelMtls)) {
      fail('spec.portLevelMtls', 'must be a mapping of port number to { mode }');
    } else {
      // Istio refuses portLevelMtls without a workload selector: a port only means something for one workload.
      if (selector === null)
        fail(
          'spec.portLevelMtls',
          'needs spec.selector (port-level settings apply to selected workloads only)',
        );
      for (const [key, value] of Object.entries(s.portLevelMtls)) {
        const port = Number(key);
        if (!/^\d+$/.test(key) || port < 1 || port > 65535) {
          fail(`spec.portLevelMtls.${key}`, 'the key must be a port number from 1 to 65535');
          continue;
        }
        const m = parseMode(value, `spec.portLevelMtls.${key}`, fail);
        if (m !== null) portLevel.set(port, m);
      }
    }
  }
  if (!problems.ok || selector === undefined || mode === null) return null;
  return { meta, selector, mode, portLevel };
}
