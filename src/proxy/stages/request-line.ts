import { randomUUID } from 'node:crypto';
import { normalizePath, type PathNormalization } from '../../authz/normalize.js';
import type { RequestContext } from '../context.js';
import { REPLY_BAD_REQUEST } from '../local-reply.js';
import type { Stage, StageResult } from '../plan.js';

/**
 * Checks the request line and fixes the path that is both authorized and forwarded. Only
 * origin-form targets (`/path?query`, RFC 9112 §3.2.1) are proxied, plus `*` for OPTIONS;
 * absolute- and authority-form would let a client name a different host than the one authorized.
 * An encoded NUL is refused before anything decodes it (llhttp passes it through), and so is a
 * method that is not uppercase letters.
 */
export class RequestLineStage implements Stage {
  readonly name = 'request-line';
  private readonly normalization: PathNormalization;

  constructor(normalization: PathNormalization = 'BASE') {
    this.normalization = normalization;
  }

  run(ctx: RequestContext): StageResult {
    const url = ctx.req.url ?? '';
    const rid = ctx.headers['x-request-id'];
    if (typeof rid === 'string' && isRequestId(rid)) {
      ctx.requestId = rid;
    } else {
      // Envoy's behaviour: a request without a (usable) id gets one, and the upstream sees it.
      ctx.requestId = randomUUID();
      ctx.addHeader('x-request-id', ctx.requestId);
    }
    const host = ctx.headers.host;
    ctx.host = host === undefined ? '' : host.toLowerCase();
    if (!isUpperToken(ctx.method)) return REPLY_BAD_REQUEST;
    if (url === '*' && ctx.method === 'OPTIONS') {
      ctx.path = '*';
      ctx.forwardTarget = url;
      return null;
    }
    if (url.charCodeAt(0) !== 47 /* '/' */ || url.includes('#') || hasEncodedNul(url))
      return REPLY_BAD_REQUEST;
    const q = url.indexOf('?');
    const raw = q === -1 ? url : url.slice(0, q);
    const path = normalizePath(raw, this.normalization);
    ctx.path = path;
    ctx.query = q === -1 ? '' : url.slice(q + 1);
    ctx.forwardTarget = path === raw ? url : q === -1 ? path : path + url.slice(q);
    return null;
  }
}

/** 1–128 characters of [A-Za-z0-9._:-]: enough for UUIDs and trace ids, nothing that could forge a log line. */
function isRequestId(id: string): boolean {
  if (id.length === 0 || id.length > 128) return false;
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i);
    const ok =
      (c >= 48 && c <= 58) ||
      (c >= 65 && c <= 90) ||
      (c >= 97 && c <= 122) ||
      c === 45 ||
      c === 46 ||
      c === 95;
    if (!ok) return false;
  }
  return true;
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
