import type { RequestContext } from '../context.js';
import { REPLY_BAD_REQUEST } from '../local-reply.js';
import type { Stage, StageResult } from '../plan.js';

/**
 * Checks the request target and splits it into path and query. Only origin-form targets
 * (`/path?query`, RFC 9112 §3.2.1) are proxied, plus `*` for OPTIONS; absolute- and authority-form
 * would let a client name a different host than the one authorized. An encoded NUL is refused
 * before anything decodes it (llhttp passes it through).
 */
export class RequestLineStage implements Stage {
  readonly name = 'request-line';

  run(ctx: RequestContext): StageResult {
    const url = ctx.req.url ?? '';
    const host = ctx.headers.host;
    ctx.host = host === undefined ? '' : host.toLowerCase();
    if (url === '*' && ctx.method === 'OPTIONS') {
      ctx.path = '*';
      ctx.forwardTarget = url;
      return null;
    }
    if (url.charCodeAt(0) !== 47 /* '/' */ || url.includes('#') || hasEncodedNul(url))
      return REPLY_BAD_REQUEST;
    const q = url.indexOf('?');
    ctx.path = q === -1 ? url : url.slice(0, q);
    ctx.query = q === -1 ? '' : url.slice(q + 1);
    ctx.forwardTarget = url;
    return null;
  }
}

function hasEncodedNul(url: string): boolean {
  let i = url.indexOf('%');
  while (i !== -1) {
    if (url.charCodeAt(i + 1) === 48 /* '0' */ && url.charCodeAt(i + 2) === 48) return true;
    i = url.indexOf('%', i + 1);
  }
  return false;
}
