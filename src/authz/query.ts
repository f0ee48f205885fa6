/**
 * The request's query string and header values as the proxy reads them — one parser and one
 * joiner for every stage (JWT parameters, Rego input, audit redaction, forwarding edits), so that no
 * two of them can disagree about what a request says.
 */

/** One `name=value` pair of a query, decoded, with the text it came from. */
export interface QueryPair {
  readonly name: string;
  readonly value: string;
  /** The pair as sent (for rewriting a query without touching the other pairs). */
  readonly raw: string;
}

/**
 * application/x-www-form-urlencoded decoding of a name or value (what URLSearchParams does):
 * `+` is a space, then percent-decoding; text that does not decode is kept as sent.
 */
export function decodeQueryComponent(s: string): string {
  const plus = s.indexOf('+') === -1 ? s : s.replaceAll('+', ' ');
  if (plus.indexOf('%') === -1) return plus;
  try {
    return decodeURIComponent(plus);
  } catch {
    return plus;
  }
}

/** The pairs of a query string (without `?`), in order; empty pairs are skipped, a pair without `=` has value ''. */
export function parseQuery(query: string): QueryPair[] {
  const out: QueryPair[] = [];
  if (query === '') return out;
  for (const raw of query.split('&')) {
    if (raw === '') continue;
    const eq = raw.indexOf('=');
    out.push({
      name: decodeQueryComponent(eq === -1 ? raw : raw.slice(0, eq)),
      value: eq === -1 ? '' : decodeQueryComponent(raw.slice(eq + 1)),
      raw,
    });
  }
  return out;
}

/** A header's value as one string: repeated fields joined with ", " (RFC 9110 §5.3), absent as undefined. */
export function headerText(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v;
}

/** The query with the value of every token parameter replaced by `REDACTED` (names compared decoded). */
export function redactQuery(query: string, tokenParams: ReadonlySet<string>): string {
  const pairs = parseQuery(query);
  if (!pairs.some((p) => tokenParams.has(p.name))) return query;
  return pairs.map((p) => (tokenParams.has(p.name) ? `${p.raw.split('=', 1)[0]}=REDACTED` : p.raw)).join('&');
}
