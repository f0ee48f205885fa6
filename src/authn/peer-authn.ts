import type { Logger } from 'pino';
import type { MtlsMode, PeerAuthentication } from '../istio/peer-authentication.js';
import { selectorMatches, type Workload } from '../istio/selector.js';

export type EffectiveMode = Exclude<MtlsMode, 'UNSET'>;

export interface PeerAuthnDecision {
  readonly mode: EffectiveMode;
  /** What decided it, for logs and `validate`: `PeerAuthentication default/strict (port 8080)`. */
  readonly source: string;
}

/**
 * Portcullis defaults to STRICT when no PeerAuthentication says otherwise. Istio defaults to
 * PERMISSIVE so that a mesh can be adopted gradually; a standalone PEP in front of a service has no
 * such migration to ease, and plaintext by default would contradict "never trust the network".
 */
export const DEFAULT_MODE: EffectiveMode = 'STRICT';

function label(pa: PeerAuthentication): string {
  return `PeerAuthentication ${pa.meta.namespace}/${pa.meta.name}`;
}

/**
 * Picks the one policy at each level (workload-specific, namespace-wide, mesh-wide in the root
 * namespace). Istio resolves a tie at one level by age, oldest first; files have no age, so the
 * first one loaded wins, and a warning names the ones ignored.
 */
function pick(candidates: PeerAuthentication[], level: string, log?: Logger): PeerAuthentication | undefined {
  if (candidates.length > 1 && log !== undefined) {
    log.warn(
      { used: label(candidates[0] as PeerAuthentication), ignored: candidates.slice(1).map(label) },
      `several ${level} PeerAuthentication policies apply; using the first loaded`,
    );
  }
  return candidates[0];
}

/**
 * Resolves the mTLS mode for one workload port, with Istio's precedence: a port-level setting of the
 * workload policy, then the workload policy, then the namespace policy, then the mesh policy; UNSET
 * at any level inherits from the next.
 */
export function resolvePeerAuthn(
  policies: readonly PeerAuthentication[],
  workload: Workload,
  rootNamespace: string,
  port: number,
  log?: Logger,
): PeerAuthnDecision {
  const workloadLevel: PeerAuthentication[] = [];
  const namespaceLevel: PeerAuthentication[] = [];
  const meshLevel: PeerAuthentication[] = [];
  for (const pa of policies) {
    if (pa.meta.namespace === workload.namespace) {
      if (pa.selector === null) namespaceLevel.push(pa);
      else if (selectorMatches(pa.selector, workload.labels)) workloadLevel.push(pa);
    }
    // A root-namespace policy without selector is mesh-wide (and also namespace-wide when the workload lives there).
    if (
      pa.meta.namespace === rootNamespace &&
      pa.selector === null &&
      pa.meta.namespace !== workload.namespace
    ) {
      meshLevel.push(pa);
    }
  }
  const wl = pick(workloadLevel, 'workload-specific', log);
  const ns = pick(namespaceLevel, 'namespace-wide', log);
  const mesh = pick(meshLevel, 'mesh-wide', log);

  const portMode = wl?.portLevel.get(port);
  if (wl !== undefined && portMode !== undefined && portMode !== 'UNSET') {
    return { mode: portMode, source: `${label(wl)} (port ${port})` };
  }
  for (const pa of [wl, ns, mesh]) {
    if (pa !== undefined && pa.mode !== 'UNSET') return { mode: pa.mode, source: label(pa) };
  }
  return { mode: DEFAULT_MODE, source: 'default (no PeerAuthentication sets a mode)' };
}
