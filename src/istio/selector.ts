/** Istio WorkloadSelector: every label in matchLabels must be on the workload with the same value. */
export function selectorMatches(
  selector: Readonly<Record<string, string>>,
  labels: Readonly<Record<string, string>>,
): boolean {
  for (const key in selector) {
    if (labels[key] !== selector[key]) return false;
  }
  return true;
}

export interface Workload {
  readonly namespace: string;
  readonly labels: Readonly<Record<string, string>>;
}

/**
 * Whether a RequestAuthentication or AuthorizationPolicy applies to a workload (Istio's scoping):
 * without a selector, to every workload in its namespace, or everywhere from the root namespace;
 * with a selector, to matching workloads in its namespace, or in every namespace from the root.
 */
export function appliesTo(
  namespace: string,
  selector: Readonly<Record<string, string>> | null,
  workload: Workload,
  rootNamespace: string,
): boolean {
  if (namespace !== workload.namespace && namespace !== rootNamespace) return false;
  return selector === null || selectorMatches(selector, workload.labels);
}
