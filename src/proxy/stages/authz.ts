import type { Authorizer } from '../../authz/compile.js';
import type { RequestContext } from '../context.js';
import { LocalReply } from '../local-reply.js';
import type { Stage, StageResult } from '../plan.js';

/** Envoy RBAC's local reply, which mesh clients and dashboards recognise. */
export const REPLY_RBAC_DENIED = new LocalReply(403, 'rbac-denied', 'RBAC: access denied');

/**
 * Authorization: the compiled AuthorizationPolicy set decides, reading the request context and
 * writing its outcome back into it (RequestContext implements DecisionOut), so deciding allocates
 * nothing. Present in the plan only when some policy applies to the workload.
 */
export class AuthzStage implements Stage {
  readonly name = 'authz';
  readonly authorizer: Authorizer;
  private readonly trustedProxies: number;
  private readonly serverTiming: boolean;

  constructor(authorizer: Authorizer, trustedProxies: number, serverTiming: boolean) {
    this.authorizer = authorizer;
    this.trustedProxies = trustedProxies;
    this.serverTiming = serverTiming;
  }

  run(ctx: RequestContext): StageResult {
    const t0 = performance.now();
    if (this.authorizer.needsRemoteIp && this.trustedProxies > 0) {
      ctx.remoteAddress = remoteAddress(
        ctx.headers['x-forwarded-for'],
        ctx.sourceAddress,
        this.trustedProxies,
      );
    }
    this.authorizer.decide(ctx, ctx);
    ctx.authzMs = performance.now() - t0;
    if (this.serverTiming) ctx.res.setHeader('server-timing', `authz;dur=${ctx.authzMs.toFixed(3)}`);
    return ctx.allowed ? null : REPLY_RBAC_DENIED;
  }
}

/**
 * The client address after `trusted` proxy hops: the addresses are X-Forwarded-For's entries
 * followed by the direct peer; counting from the right, the peer and the next `trusted - 1`
 * entries are proxies we trust, and the one before them is the client. Missing entries mean the
 * leftmost one (a client cannot push the choice past what it sent).
 */
export function remoteAddress(xff: string | string[] | undefined, peer: string, trusted: number): string {
  if (xff === undefined || trusted === 0) return peer;
  const joined = Array.isArray(xff) ? xff.join(',') : xff;
  const entries = joined.split(',');
  const index = entries.length - trusted;
  const pick = entries[index < 0 ? 0 : index] ?? '';
  const addr = pick.trim();
  return addr === '' ? peer : addr;
}
