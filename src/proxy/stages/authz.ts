import type { Logger } from 'pino';
import type { Authorizer, CompiledPolicy } from '../../authz/compile.js';
import type { ExtAuthzClient } from '../../authz/ext-authz.js';
import type { RequestContext } from '../context.js';
import { LocalReply, REPLIES } from '../local-reply.js';
import type { Stage, StageResult } from '../plan.js';

/**
 * Authorization: the compiled AuthorizationPolicy set decides, reading the attributes and
 * writing its outcome into the context's decision (both plain data made with the request), so
 * deciding allocates nothing. Present in the plan only when some policy applies to the workload. CUSTOM policies are
 * the next stage's (CustomAuthzStage).
 */
export class AuthzStage implements Stage {
  readonly name = 'authz';
  readonly authorizer: Authorizer;
  private readonly serverTiming: boolean;

  constructor(authorizer: Authorizer, opts: { serverTiming: boolean }) {
    this.authorizer = authorizer;
    this.serverTiming = opts.serverTiming;
  }

  run(ctx: RequestContext): StageResult {
    const t0 = performance.now();
    this.authorizer.decide(ctx.attrs, ctx.decision);
    ctx.authzMs = performance.now() - t0;
    if (this.serverTiming) setTiming(ctx);
    return ctx.decision.allowed ? null : REPLIES.rbacDenied;
  }
}

/** `Server-Timing: authz;dur=<ms>`: the time spent authorizing, apart from the upstream's. */
export function setTiming(ctx: RequestContext): void {
  ctx.addResponseHeader('server-timing', `authz;dur=${ctx.authzMs.toFixed(3)}`);
}

/**
 * CUSTOM policies (Istio's ext_authz): when one matches, its external authorizer must also allow.
 * Istio evaluates CUSTOM before DENY and ALLOW; here it runs after the local policies, so a request
 * they deny costs no call to the authorizer. The outcome is the same: a request passes only if all
 * of them allow. In the plan only when some CUSTOM policy applies.
 */
export class CustomAuthzStage implements Stage {
  readonly name = 'custom';
  private readonly authorizer: Authorizer;
  private readonly serverTiming: boolean;
  private readonly providers: ReadonlyMap<string, ExtAuthzClient>;
  private readonly log: Logger;

  constructor(
    authorizer: Authorizer,
    opts: { serverTiming: boolean; providers: ReadonlyMap<string, ExtAuthzClient> },
    log: Logger,
  ) {
    this.authorizer = authorizer;
    this.serverTiming = opts.serverTiming;
    this.providers = opts.providers;
    this.log = log;
  }

  run(ctx: RequestContext): StageResult | Promise<StageResult> {
    const policy = this.authorizer.matchCustom(ctx.attrs);
    return policy === null ? null : this.askProvider(ctx, policy, performance.now());
  }

  private async askProvider(ctx: RequestContext, policy: CompiledPolicy, t0: number): Promise<StageResult> {
    // The provider exists: snapshot loading refuses a CUSTOM policy naming an unknown one.
    const client = this.providers.get(policy.spec.provider as string) as ExtAuthzClient;
    const a = ctx.attrs;
    const r = await client.check({
      method: a.method,
      host: a.host,
      target: ctx.forwardTarget,
      headers: a.headers,
      xfcc: ctx.xfcc,
    });
    ctx.authzMs += performance.now() - t0;
    if (this.serverTiming) setTiming(ctx);
    if (r.error !== null) {
      this.log.warn(
        {
          provider: client.provider.name,
          policy: policy.id,
          error: r.error,
          failOpen: client.provider.failOpen,
        },
        'external authorizer did not answer',
      );
    }
    if (r.allowed) {
      for (const [n, v] of r.upstreamHeaders) ctx.addHeader(n, v);
      for (const [n, v] of r.downstreamHeaders) ctx.addResponseHeader(n, v);
      return null;
    }
    const d = ctx.decision;
    d.allowed = false;
    d.policy = policy;
    d.reason = 'denied-by-policy';
    const headers: Record<string, string[]> = {};
    for (const [n, v] of r.downstreamHeaders) (headers[n] ??= []).push(v);
    return LocalReply.refusal(
      r.status,
      r.error === null ? 'ext-authz-denied' : 'ext-authz-error',
      Buffer.from(r.body),
      headers,
    );
  }
}
