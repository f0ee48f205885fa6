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
