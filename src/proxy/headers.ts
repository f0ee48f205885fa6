/**
 * Connection-specific fields (RFC 9110 §7.6.1) are not forwarded, in either direction, and
 * neither are the fields that the Connection header names. `expect` is answered by this proxy
 * (Node sends 100 Continue) and `proxy-connection` is the non-standard ancestor of Connection.
 */
const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'expect',
]);

/**
 * Identity headers the proxy sets itself. Whatever a client sends under these names is dropped
 * first, so a caller cannot claim an identity the proxy did not verify.
 */
const PROXY_SET: ReadonlySet<string> = new Set(['x-forwarded-client-cert', 'x-forwarded-proto']);

export const XFCC = 'x-forwarded-client-cert';

/** How many times a header (lowercase name) appears in a raw header list. */
export function countHeader(raw: readonly string[], lowerName: string): number {
  let n = 0;
  const len = lowerName.length;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.length === len && name.toLowerCase() === lowerName) n++;
  }
  return n;
}

/** What the proxy itself relies on upstream: routing, framing, the request id, the forwarded chain. */
const ALWAYS_PINNED = ['host', 'content-length', 'x-request-id', 'x-forwarded-for'];

/**
 * Header names a client's `Connection` header cannot remove from what is forwarded (RFC 9110
 * §7.6.1 lets it name any field): the ones the proxy relies on, and every header a stage decided
 * on (token locations, policy conditions, what an external authorizer or Rego saw). Otherwise
 * `Connection: host` would forward a Host other than the one authorized. Built once per snapshot.
 */
export class PinnedHeaders {
  /** Every header is pinned (a stage reads all of them, e.g. Rego without a header list). */
  readonly all: boolean;
  private readonly names: ReadonlySet<string>;

  constructor(names: Iterable<string> = [], all = false) {
    this.names = new Set([...ALWAYS_PINNED, ...[...names].map((n) => n.toLowerCase())]);
    this.all = all;
  }

  has(lowerName: string): boolean {
    return this.all || this.names.has(lowerName);
  }
}

const DEFAULT_PINNED = new PinnedHeaders();

function connectionTokens(value: string | undefined): Set<string> | null {
  if (value === undefined || value === '') return null;
  // The usual values name no other field: answer without splitting (this runs on every response).
  const v = value.length <= 10 ? value.toLowerCase() : '';
  if (v === 'keep-alive' || v === 'close') return null;
  const set = new Set<string>();
  for (const t of value.split(',')) {
    const tok = t.trim().toLowerCase();
    if (tok !== '') set.add(tok);
  }
  return set.size === 0 ? null : set;
}

/** What the forwarding headers say; the request context provides it (no object per request). */
export interface ForwardedFor {
  /** Client headers not to forward (lowercase), decided per request; null when none. */
  readonly dropHeaders: readonly string[] | null;
  /** Headers to add, flat [name, value, …]; null when none. */
  readonly addHeaders: readonly string[] | null;
  /** XFCC element for the verified peer, or '' without mTLS. */
  readonly xfcc: string;
  /** Whether the client connection is TLS (X-Forwarded-Proto). */
  readonly tls: boolean;
  /** The direct peer's address, appended to X-Forwarded-For. */
  readonly sourceAddress: string;
}

/**
 * The header list sent upstream, as a flat [name, value, …] array that undici takes as is.
 * Built from rawHeaders so that names keep their case and repeated fields stay separate.
 */
export function upstreamRequestHeaders(
  rawHeaders: readonly string[],
  connection: string | undefined,
  fwd: ForwardedFor,
  pinned: PinnedHeaders = DEFAULT_PINNED,
  dropUnderscores = false,
): string[] {
  const listed = connectionTokens(connection);
  const out: string[] = [];
  let xff = '';
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    // HTTP/2 pseudo-headers (:method, :path, :authority, :scheme) are not forwarded as fields.
    if (name.charCodeAt(0) === 58 /* : */) continue;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || PROXY_SET.has(lower)) continue;
    // CGI-style upstreams read `x_forwarded_client_cert` as X-Forwarded-Client-Cert.
    if (dropUnderscores && name.indexOf('_') !== -1) continue;
    if ((listed?.has(lower) && !pinned.has(lower)) || fwd.dropHeaders?.includes(lower)) continue;
    const value = rawHeaders[i + 1] as string;
    if (lower === 'x-forwarded-for') {
      xff = xff === '' ? value : `${xff}, ${value}`;
      continue;
    }
    out.push(name, value);
  }
  out.push('x-forwarded-for', xff === '' ? fwd.sourceAddress : `${xff}, ${fwd.sourceAddress}`);
  out.push('x-forwarded-proto', fwd.tls ? 'https' : 'http');
  if (fwd.xfcc !== '') out.push(XFCC, fwd.xfcc);
  const add = fwd.addHeaders;
  if (add !== null) for (let i = 0; i < add.length; i++) out.push(add[i] as string);
  return out;
}

/**
 * An upstream response's raw headers (undici hands them over as Buffers) as the flat list sent to
 * the client, without connection-specific fields or the fields its Connection header names.
 */
export function upstreamResponseHeaders(raw: readonly Buffer[]): string[] {
  let connection = '';
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = (raw[i] as Buffer).toString('latin1');
    if (name.length === 10 && name.toLowerCase() === 'connection') {
      connection =
        connection === ''
          ? (raw[i + 1] as Buffer).toString('latin1')
          : `${connection},${(raw[i + 1] as Buffer).toString('latin1')}`;
    }
  }
  const listed = connectionTokens(connection);
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = (raw[i] as Buffer).toString('latin1');
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || listed?.has(lower)) continue;
    out.push(name, (raw[i + 1] as Buffer).toString('latin1'));
  }
  return out;
}

/**
 * Envoy's XFCC element for a verified peer: `By=<our SPIFFE ID>;Hash=<hex SHA-256 of the peer's
 * DER certificate>;URI=<peer SPIFFE ID>`. SPIFFE IDs cannot contain `;`, `,`, `"` or `=`, so no
 * quoting is needed.
 */
export function xfccElement(by: string, hash: string, uri: string): string {
  return `By=${by};Hash=${hash};URI=${uri}`;
}

/**
 * A claim as a header value: strings, numbers and booleans. A string that is not printable ASCII
 * (non-Latin-1 text, control characters such as CR LF) is sent percent-encoded (UTF-8), so it can
 * neither fail the request nor inject a header. null for anything else (objects, arrays).
 */
export function claimHeaderValue(v: unknown): string | null {
  if (typeof v === 'string') return isPrintableAscii(v) ? v : encodeURIComponent(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  return null;
}

function isPrintableAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

/**
 * A cookie's value in a Cookie header (Node joins repeated Cookie fields with "; "): undefined
 * when absent, null when the name appears more than once — two values for one credential is
 * never a choice to make (a sibling site can toss a cookie of the same name).
 */
export function cookieValue(header: string | undefined, name: string): string | null | undefined {
  if (header === undefined) return undefined;
  let found: string | undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq === -1) continue;
    if (part.slice(0, eq).trim() !== name) continue;
    if (found !== undefined) return null;
    found = part.slice(eq + 1).trim();
  }
  return found;
}
