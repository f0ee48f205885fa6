/**
 * Shared pieces of the Istio resource validators: each reports problems as (field, message) and
 * keeps going, so that one run names every problem in a file.
 */
export type Report = (field: string, message: string) => void;

export function isMap(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Reports every key of `obj` not in `allowed` as an unknown field under `at`. */
export function unknownKeys(
  obj: Record<string, unknown>,
  allowed: readonly string[],
  at: string,
  report: Report,
): void {
  for (const k of Object.keys(obj)) {
    if (allowed.includes(k)) continue;
    const field = at === '' ? k : `${at}.${k}`;
    const gatewayApi = at === 'spec' && (k === 'targetRef' || k === 'targetRefs');
    report(field, gatewayApi ? 'targetRef (Gateway API) is not supported; use selector' : 'unknown field');
  }
}

/** A report that remembers whether anything was reported (the validator then returns null). */
export class Problems {
  ok = true;
  readonly report: Report;

  constructor(report: Report) {
    this.report = (field, message) => {
      this.ok = false;
      report(field, message);
    };
  }
}

/** The spec as a mapping (`{}` when absent), or null after reporting that it is not one. */
export function specMap(spec: unknown, report: Report): Record<string, unknown> | null {
  const s = spec === undefined || spec === null ? {} : spec;
  if (!isMap(s)) {
    report('spec', 'must be a mapping');
    return null;
  }
  return s;
}
