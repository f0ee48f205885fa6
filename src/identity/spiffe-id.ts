import { PortcullisError } from '../errors.js';

/**
 * SPIFFE IDs per the SPIFFE-ID standard (§2): `spiffe://<trust domain><path>`.
 * The grammar is deliberately narrow — no percent-encoding, no port, no userinfo, no query or
 * fragment — so that two spellings can never name the same workload. Each refusal names the rule.
 */

const SCHEME = 'spiffe://';
/** §2.1: a trust domain name is at most 255 bytes. */
export const MAX_TRUST_DOMAIN_BYTES = 255;
/** §2.3: URIs longer than 2048 bytes must be refused. */
export const MAX_SPIFFE_ID_BYTES = 2048;

// Character classes as lookup tables: one array index per character instead of a regex per ID.
const TD_CHARS = new Uint8Array(128);
const PATH_CHARS = new Uint8Array(128);
for (const c of 'abcdefghijklmnopqrstuvwxyz0123456789.-_') TD_CHARS[c.charCodeAt(0)] = 1;
for (const c of 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_')
  PATH_CHARS[c.charCodeAt(0)] = 1;

export class SpiffeId {
  /** The full ID, `spiffe://example.org/ns/default/sa/web`. */
  readonly id: string;
  readonly trustDomain: string;
  /** The path, `/ns/default/sa/web`, or '' for the trust domain's own ID. */
  readonly path: string;
  /** The ID without its scheme, as Istio writes principals: `example.org/ns/default/sa/web`. */
  readonly principal: string;
  /** The namespace from a `/ns/<ns>/…` path (Istio's convention), or '' when the path has none. */
  readonly namespace: string;

  private constructor(id: string, trustDomain: string, path: string) {
    this.id = id;
    this.trustDomain = trustDomain;
    this.path = path;
    this.principal = id.slice(SCHEME.length);
    this.namespace = namespaceOf(path);
  }

  static parse(input: string): SpiffeId {
    const problem = spiffeIdProblem(input);
    if (problem !== null) {
      throw new PortcullisError(
        'ERR_SPIFFE_ID_INVALID',
        `invalid SPIFFE ID ${JSON.stringify(clip(input))}: ${problem}`,
      );
    }
    const slash = input.indexOf('/', SCHEME.length);
    const td = slash === -1 ? input.slice(SCHEME.length) : input.slice(SCHEME.length, slash);
    const path = slash === -1 ? '' : input.slice(slash);
    return new SpiffeId(input, td, path);
  }

  toString(): string {
    return this.id;
  }
}

function clip(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** The namespace of a SPIFFE ID path (`/ns/<ns>/…`), or ''. */
export function namespaceOf(path: string): string {
  if (!path.startsWith('/ns/')) return '';
  const end = path.indexOf('/', 4);
  return end === -1 ? path.slice(4) : path.slice(4, end);
}

/**
 * Returns null when `input` is a valid SPIFFE ID, else the rule it breaks, in words.
 * Checks run in the order a reader would: scheme, trust domain, path, length.
 */
export function spiffeIdProblem(input: string): string | null {
  if (typeof input !== 'string' || input.length === 0) return 'the ID is empty';
  if (!input.startsWith(SCHEME)) {
    if (input.toLowerCase().startsWith(SCHEME)) return 'the scheme must be lowercase "spiffe://"';
    return 'the scheme must be "spiffe://"';
  }
  if (Buffer.byteLength(input, 'utf8') > MAX_SPIFFE_ID_BYTES) {
    return `the ID is longer than ${MAX_SPIFFE_ID_BYTES} bytes`;
  }
  const slash = input.indexOf('/', SCHEME.length);
  const tdEnd = slash === -1 ? input.length : slash;
  if (tdEnd === SCHEME.length) return 'the trust domain is missing';
  if (tdEnd - SCHEME.length > MAX_TRUST_DOMAIN_BYTES) {
    return `the trust domain is longer than ${MAX_TRUST_DOMAIN_BYTES} bytes`;
  }
  for (let i = SCHEME.length; i < tdEnd; i++) {
    const c = input.charCodeAt(i);
    if (c < 128 && TD_CHARS[c] === 1) continue;
    return tdCharProblem(c);
  }
  if (slash === -1) return null;
  // Path: one or more "/segment"; segments non-empty, not "." or "..", of [A-Za-z0-9._-].
  let segStart = slash + 1;
  for (let i = segStart; i <= input.length; i++) {
    const c = i === input.length ? 47 /* '/' */ : input.charCodeAt(i);
    if (c === 47) {
      const len = i - segStart;
      if (len === 0) {
        return i === input.length
          ? 'the path must not end with a slash'
          : 'the path must not contain empty segments';
      }
      if (
        (len === 1 && input.charCodeAt(segStart) === 46) ||
        (len === 2 && input.startsWith('..', segStart))
      ) {
        return 'the path must not contain "." or ".." segments';
      }
      segStart = i + 1;
      continue;
    }
    if (c < 128 && PATH_CHARS[c] === 1) continue;
    return pathCharProblem(c);
  }
  return null;
}

function tdCharProblem(c: number): string {
  if (c === 58) return 'the trust domain must not contain a port';
  if (c === 64) return 'the trust domain must not contain userinfo ("@")';
  if (c === 63) return 'the ID must not contain a query ("?")';
  if (c === 35) return 'the ID must not contain a fragment ("#")';
  if (c === 37) return 'the ID must not contain percent-encoding';
  if (c >= 65 && c <= 90) return 'the trust domain must be lowercase';
  return 'the trust domain may only contain lowercase letters, digits, ".", "-" and "_"';
}

function pathCharProblem(c: number): string {
  if (c === 63) return 'the ID must not contain a query ("?")';
  if (c === 35) return 'the ID must not contain a fragment ("#")';
  if (c === 37) return 'the ID must not contain percent-encoding';
  return 'path segments may only contain letters, digits, ".", "-" and "_"';
}

/** Validates a bare trust domain name (as used for bundle keys and `trustDomain:` in config). */
export function trustDomainProblem(td: string): string | null {
  if (td.includes('/') || td.includes(':')) {
    return 'a trust domain is a bare name such as "example.org", without scheme, port or path';
  }
  return spiffeIdProblem(SCHEME + td);
}
