import type { Attributes } from '../authz/attributes.js';
import { Decision } from '../authz/compile.js';
import { parseQuery } from '../authz/query.js';
import type { LocalReply } from './local-reply.js';

/**
 * What the stages of one request read and write, and nothing else: the attributes (plain data),
 * the authorization decision (plain data), what the head looked like on the wire (for the checks
 * that need it), and the edits to make when forwarding. No socket, request or response: the
 * stream (stream.ts) owns those, drives the stages and applies the edits. Every field is assigned
 * in the constructor so all contexts share one shape; absent values are '' / null / 0.
 */
export class RequestContext {
  readonly attrs: Attributes;
  readonly decision: Decision;
  /** The request target as received (`/path?query`, or `*`). */
  readonly target: string;
  /** Header names and values as received, in order ([name, value, …]), for the checks that count them. */
  readonly rawHeaders: readonly string[];
  /** The request came on HTTP/2 (pseudo-headers; no Host required). */
  readonly http2: boolean;
  /** XFCC element of the connection's verified peer, or ''. */
  readonly xfcc: string;
  /** The connection's client certificate thumbprint (RFC 8705 `x5t#S256`), or '' without one. */
  readonly certThumbprint: string;

  /** The request target sent upstream (path and query), set by the request-line stage. */
  forwardTarget: string;
  /** Time spent deciding (ms, fractional), for Server-Timing and audit. */
  authzMs: number;
  /** Client headers (lowercase names) not to forward, decided per request; null when none. */
  dropHeaders: string[] | null;
  /** Headers the proxy adds upstream, flat [name, value, …]; null when none. */
  addHeaders: string[] | null;
  /** Headers for the client's response (whatever the answer), flat [name, value, …]; null when none. */
  responseHeaders: string[] | null;
  /** The stage that answered the request with a local reply ('' when none did: it was forwarded). */
  answeredBy: string;
  /** Why that stage refused, in its words, for the operator's explain (never sent to the client); or ''. */
  detail: string;

  constructor(
    attrs: Attributes,
    target: string,
    rawHeaders: readonly string[],
    http2: boolean,
    xfcc: string,
    certThumbprint: string,
  ) {
    this.attrs = attrs;
    this.decision = new Decision();
    this.target = target;
    this.rawHeaders = rawHeaders;
    this.http2 = http2;
    this.xfcc = xfcc;
    this.certThumbprint = certThumbprint;
    this.forwardTarget = '';
    this.authzMs = 0;
    this.dropHeaders = null;
    this.addHeaders = null;
    this.responseHeaders = null;
    this.answeredBy = '';
    this.detail = '';
    if (attrs.requestIdMade) this.addHeader('x-request-id', attrs.requestId);
  }

  dropHeader(lowerName: string): void {
    if (this.dropHeaders === null) this.dropHeaders = [lowerName];
    else this.dropHeaders.push(lowerName);
  }

  /** Adds a header upstream, replacing any the client sent under that name. */
  addHeader(lowerName: string, value: string): void {
    this.dropHeader(lowerName);
    if (this.addHeaders === null) this.addHeaders = [lowerName, value];
    else this.addHeaders.push(lowerName, value);
  }

  /** Adds a header to the client's response. */
  addResponseHeader(name: string, value: string): void {
    if (this.responseHeaders === null) this.responseHeaders = [name, value];
    else this.responseHeaders.push(name, value);
  }

  /** A stage's refusal: the reply, with why (in the stage's words) kept for the operator's explain. */
  refuse(reply: LocalReply, detail: string): LocalReply {
    this.detail = detail;
    return reply;
  }

  /** Removes every `name=` pair from the query forwarded upstream. */
  removeQueryParam(name: string): void {
    const a = this.attrs;
    if (a.query === '') return;
    a.query = parseQuery(a.query)
      .filter((p) => p.name !== name)
      .map((p) => p.raw)
      .join('&');
    const q = this.forwardTarget.indexOf('?');
    const base = q === -1 ? this.forwardTarget : this.forwardTarget.slice(0, q);
    this.forwardTarget = a.query === '' ? base : `${base}?${a.query}`;
  }

  /** RFC 6750 challenge naming the request URL as realm (what Envoy's jwt_authn sends). */
  bearerChallenge(): string {
    const a = this.attrs;
    return `Bearer realm="${quotedStringContent(`${a.tls ? 'https' : 'http'}://${a.host}${a.path}`)}"`;
  }
}

/** Escapes `"` and `\\` for an RFC 9110 §5.6.4 quoted-string (the Host is validated; the path may hold either). */
function quotedStringContent(s: string): string {
  if (s.indexOf('"') === -1 && s.indexOf('\\') === -1) return s;
  return s.replace(/["\\]/g, '\\$&');
}
