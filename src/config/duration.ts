const UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;

/**
 * Parses a duration such as `500ms`, `5s`, `10m`, `24h`, `30d` into milliseconds (a plain number is
 * milliseconds). Returns null when the text is not a duration.
 */
export function parseDuration(input: string | number): number | null {
  if (typeof input === 'number') return Number.isFinite(input) && input >= 0 ? input : null;
  const m = DURATION.exec(input.trim());
  if (m === null) return null;
  return Math.round(Number(m[1]) * (UNITS[m[2] as string] as number));
}
