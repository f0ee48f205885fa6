import { isIPv6 } from 'node:net';
import type { RequestContext } from '../context.js';
import { REPLIES } from '../local-reply.js';
import type { Stage, StageResult } from '../plan.js';

/**
 * Checks the request line and sets the target forwarded: the normalized path the attributes hold
 * (the one authorized) with the query as received. Only
 * origin-form targets (`/path?query`, RFC 9112 §3.2.1) are proxied, plus `*` for OPTIONS;
 * absolute- and authority-form would let a client name a different host than the one authorized.
 * An encoded NUL is refused before anything decodes it (llhttp passes it through), and so is a
 * method that is not uppercase letters.
 */
export class RequestLineStage implements Stage {
  readonly name = 'request-line';
  private readonly rejectUnderscores: boolean;
  private readonly rejectOverrides: boolean;

  constructor(opts: { rejectUnderscoreHeaders?: boolean; rejectOverrideHeaders?: boolean } = {}) {
    this.rejectUnderscores = opts.rejectUnderscoreHeaders ?? false;
    this.rejectOverrides = opts.rejectOverrideHeaders ?? false;
  }

  private headersAcceptable(raw: readonly string[], h2: boolean): boolean {
    return checkHeaderNames(raw, this.rejectUnderscores, this.rejectOverrides, h2);
  }

  run(ctx: RequestContext): StageResult {
    const a = ctx.attrs;
    const url = ctx.target;
    // HTTP/2 names the authority in :authority (RFC 9113 §8.3.1); a Host beside it must agree.
    let host = a.headers.host;
    if (ctx.http2) {
      const authority = a.headers[':authority'];
      if (typeof authority === 'string') {
        if (host !== undefined && host !== authority)
          return ctx.refuse(REPLIES.badRequest, 'Host and :authority differ');
        host = authority;
      }
    }
    if (!isUpperToken(a.method))
      return ctx.refuse(REPLIES.badRequest, 'the method is not an uppercase token');
    // Exactly one valid Host (RFC 9112 §3.2): HTTP/1.0 may omit it, but what is authorized on
    // `hosts` must be what the upstream routes on, and Node keeps only the first of two. Header
    // names the config refuses (underscores, method/URL overrides) are refused here too.
    if (host === undefined || !isHostHeader(host))
      return ctx.refuse(REPLIES.badRequest, 'no Host, or not exactly one valid Host header');
    if (!this.headersAcceptable(ctx.rawHeaders, ctx.http2))
      return ctx.refuse(REPLIES.badRequest, 'two Host headers, or a header name refused by the config');
    if (url === '*' && a.method === 'OPTIONS') {
      ctx.forwardTarget = url;
      return null;
    }
    if (url.charCodeAt(0) !== 47 /* '/' */ || url.includes('#') || hasEncodedNul(url))
      return ctx.refuse(
        REPLIES.badRequest,
        'the request target is not an origin-form path (or holds # or %00)',
      );
    // The attributes hold the normalized path (requestAttributes); forwarded is what is authorized.
    const q = url.indexOf('?');
    const rawLength = q === -1 ? url.length : q;
    const unchanged = a.path.length === rawLength && url.startsWith(a.path);
    ctx.forwardTarget = unchanged ? url : q === -1 ? a.path : a.path + url.slice(q);
    return null;
  }
}

/**
 * Headers that make common frameworks (Symfony, Laravel, ASP.NET, Express method-override, IIS URL
 * rewrite) act on another method or path than the request line's — which is what was authorized.
 */
const OVERRIDE_HEADERS: ReadonlySet<string> = new Set([
  'x-http-method-override',
  'x-http-method',
  'x-method-override',
  'x-original-url',
  'x-rewrite-url',
]);
const OVERRIDE_LENGTHS: ReadonlySet<number> = new Set([...OVERRIDE_HEADERS].map((h) => h.length));

/**
 * One pass over the raw header names: exactly one Host (HTTP/2: at most one, beside :authority),
 * and no refused names. HTTP/2 pseudo-headers (`:path`, …) are not header names here.
 */
function checkHeaderNames(
  raw: readonly string[],
  rejectUnderscores: boolean,
  rejectOverrides: boolean,
  h2: boolean,
): boolean {
  let hosts = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const len = name.length;
    if (name.charCodeAt(0) === 58 /* : */) continue;
    if (len === 4 && name.toLowerCase() === 'host') hosts++;
    else if (rejectUnderscores && name.indexOf('_') !== -1) return false;
    else if (rejectOverrides && OVERRIDE_LENGTHS.has(len) && OVERRIDE_HEADERS.has(name.toLowerCase()))
      return false;
  }
  return h2 ? hosts <= 1 : hosts === 1;
}

/**
 * RFC 3986 §3.2.2 host (reg-name, IPv4 or a bracketed IPv6 literal) with an optional port
 * (1–5 digits, at most 65535); an empty host is refused (RFC 9110 §4.2.1).
 */
function isHostHeader(v: string): boolean {
  const end = v.length;
  let i = 0;
  if (v.charCodeAt(0) === 91 /* [ */) {
    const close = v.indexOf(']');
    if (close === -1 || !isIPv6(v.slice(1, close))) return false;
    i = close + 1;
    if (i < end && v.charCodeAt(i) !== 58 /* : */) return false;
  } else {
    for (; i < end; i++) {
      const c = v.charCodeAt(i);
      if (c === 58) break;
      if (c === 37 /* % */) {
        if (!isHex(v.charCodeAt(i + 1)) || !isHex(v.charCodeAt(i + 2))) return false;
        i += 2;
      } else if (!isRegNameChar(c)) return false;
    }
    if (i === 0) return false;
  }
  if (i === end) return true;
  // ':' port
  const digits = end - i - 1;
  if (digits < 1 || digits > 5) return false;
  let port = 0;
  for (i++; i < end; i++) {
    const c = v.charCodeAt(i);
    if (c < 48 || c > 57) return false;
    port = port * 10 + (c - 48);
  }
  return port <= 65535;
}

function isHex(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102);
}

/** unreserved / sub-delims (RFC 3986 §2.2, §2.3). */
function isRegNameChar(c: number): boolean {
  return (
    (c >= 97 && c <= 122) ||
    (c >= 65 && c <= 90) ||
    (c >= 48 && c <= 57) ||
    c === 45 || // -
    c === 46 || // .
    c === 95 || // _
    c === 126 || // ~
    c === 33 || // !
    c === 36 || // $
    (c >= 38 && c <= 44) || // & ' ( ) * + ,
    c === 59 || // ;
    c === 61 // =
  );
}

function isUpperToken(m: string): boolean {
  if (m.length === 0) return false;
  for (let i = 0; i < m.length; i++) {
    const c = m.charCodeAt(i);
    if (c < 65 || c > 90) return false;
  }
  return true;
}

function hasEncodedNul(url: string): boolean {
  let i = url.indexOf('%');
  while (i !== -1) {
    if (url.charCodeAt(i + 1) === 48 /* '0' */ && url.charCodeAt(i + 2) === 48) return true;
    i = url.indexOf('%', i + 1);
  }
  return false;
}
