import { randomUUID } from 'node:crypto';
import { headerText } from '../authz/query.js';
import type { RequestContext } from './context.js';

/**
 * What every request gets before any stage runs, whatever the policies: its id and the original
 * client address. Both feed the audit event, so they must not depend on which stages a snapshot has
 * (remote.ip used to be computed only when a policy read it).
 */
export function prepareRequest(ctx: RequestContext, trustedProxies: number): void {
  const rid = ctx.headers['x-request-id'];
  if (typeof rid === 'string' && isRequestId(rid)) {
    ctx.requestId = rid;
  } else {
    // Envoy's behaviour: a request without a (usable) id gets one, and the upstream sees it.
    ctx.requestId = randomUUID();
    ctx.addHeader('x-request-id', ctx.requestId);
  }
  if (trustedProxies > 0)
    ctx.remoteAddress = remoteAddress(ctx.headers['x-forwarded-for'], ctx.sourceAddress, trustedProxies);
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

/**
 * The client address after `trusted` proxy hops: the addresses are X-Forwarded-For's entries
 * followed by the direct peer; counting from the right, the peer and the next `trusted - 1`
 * entries are proxies we trust, and the one before them is the client. Missing entries mean the
 * leftmost one (a client cannot push the choice past what it sent).
 */
export function remoteAddress(xff: string | string[] | undefined, peer: string, trusted: number): string {
  if (xff === undefined || trusted === 0) return peer;
  const joined = headerText(xff) as string;
  const entries = joined.split(',');
  const index = entries.length - trusted;
  const pick = entries[Math.max(index, 0)] ?? '';
  const addr = pick.trim();
  return addr === '' ? peer : addr;
}
